"""Layer-by-layer terms: every zoo family's stages, the stage probes and the batched stage
CKA matrix against per-pair references, a copy of the teacher and a noise stage."""

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ijckd_bounds import schema
from ijckd_bounds.app.audit_layers import layer_findings, layers_markdown
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.cka import debiased_cka, feat_cka
from ijckd_bounds.estimators.intervals import Estimate
from ijckd_bounds.estimators.layers import (
    layer_rows,
    stage_cka_matrix,
    stage_cka_values,
    stage_probe_errors,
)
from ijckd_bounds.models import build_model, model_names
from ijckd_bounds.models.feature_model import FeatureModel
from ijckd_bounds.plotting.layers import plot_layer_cka, plot_layer_profile, plot_layer_profiles

# one model per family, with the input it takes and its stages
FAMILIES = {
    "mlp_large": ((1, 40), ("hidden1", "pool")),
    "cnn_large": ((1, 40), ("conv1", "conv2", "pool")),
    "resnet8x4": ((3, 16, 16), ("layer1", "layer2", "pool")),
    "wrn_16_2": ((3, 16, 16), ("block1", "block2", "block3", "pool")),
    "vgg8": ((3, 16, 16), ("stage1", "stage2", "stage3", "stage4", "pool")),
    "mobilenetv2": ((3, 32, 32), tuple(f"blocks{k}" for k in range(1, 8)) + ("pool",)),
    "shufflenetv2": ((3, 16, 16), ("layer1", "layer2", "layer3", "pool")),
    "resnet18": ((3, 32, 32), ("layer1", "layer2", "layer3", "pool")),
    "mobilenetv1": ((3, 32, 32), ("block1", "block3", "block5", "block11", "pool")),
}


def _pool(fmap):
    return fmap if fmap.dim() == 2 else fmap.flatten(2).mean(dim=2)


def _manual_first_stage(name, model, x):
    """The first stage's pooled output by a forward written out here."""
    if name in ("mlp_large", "cnn_large"):
        return _pool(model.body[:3 if name == "mlp_large" else 3](x))
    if name == "resnet8x4":
        return _pool(model.layer1(F.relu(model.bn1(model.conv1(x)))))
    if name == "wrn_16_2":
        return _pool(model.block1(model.conv1(x)))
    if name == "vgg8":
        return _pool(model.features[:3](x))
    if name == "mobilenetv2":
        return _pool(model.blocks[0](model.conv1(x)))
    if name == "shufflenetv2":
        return _pool(model.layer1(F.relu(model.bn1(model.conv1(x)))))
    if name == "resnet18":
        return _pool(model.layer1(model.maxpool(F.relu(model.bn1(model.conv1(x))))))
    return _pool(model.model[:2](x))  # mobilenetv1: stem and block 1


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_exposes_its_stages_in_one_forward(name):
    shape, stages = FAMILIES[name]
    torch.manual_seed(0)
    model = build_model(name, 7, shape).eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        logits, outputs = model.forward_stages(x)
        expected_logits, features = model(x)
        first = _manual_first_stage(name, model, x)
    assert model.stage_names == stages
    assert len(outputs) == len(stages)
    assert all(o.dim() == 2 and o.shape[0] == 3 for o in outputs)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(outputs[-1], features)
    torch.testing.assert_close(outputs[0], first)
    # hooks are gone afterwards
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.slow
def test_every_registered_model_has_stages():
    assert set(FAMILIES) >= {"mlp_large", "cnn_large"}
    for name in model_names():
        model = build_model(name, 5, (1, 40) if name[:3] in ("mlp", "cnn") else (3, 64, 64))
        assert model.stage_names[-1] == "pool"
        assert len(set(model.stage_names)) == len(model.stage_names)
        assert all(model.get_submodule(path) is not None for path in model.stage_layers.values())


def test_in_place_ops_after_a_stage_do_not_change_it():
    """mlp stage outputs are vectors captured before the next layer; vgg's ReLUs run in
    place on the conv outputs, after the hooked ReLU nothing may alter the pooled copy."""
    torch.manual_seed(1)
    model = build_model("mlp_large", 3, (1, 40), hidden_sizes=(16, 16, 16)).eval()
    x = torch.randn(4, 1, 40)
    _, outputs = model.forward_stages(x)
    body = model.body
    hidden1 = body[:3](x)
    hidden2 = body[3:5](hidden1.clone())
    torch.testing.assert_close(outputs[0], hidden1)
    torch.testing.assert_close(outputs[1], hidden2)
    assert model.stage_names == ("hidden1", "hidden2", "pool")


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu(self.conv(x))
        return self.fc(torch.flatten(self.avgpool(self.block(x)), 1))


def test_feature_model_stages_are_the_named_layers():
    torch.manual_seed(2)
    module = TinyNet().eval()
    model = FeatureModel(module, "avgpool", "fc", stage_layers=["conv", "block"])
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        logits, outputs = model.forward_stages(x)
        conv = module.conv(x)  # before the in-place ReLU that follows it
        block = module.block(F.relu(conv))
    assert model.stage_names == ("conv", "block", "pool")
    torch.testing.assert_close(outputs[0], _pool(conv))
    torch.testing.assert_close(outputs[1], _pool(block))
    torch.testing.assert_close(logits, module(x))
    assert FeatureModel(TinyNet(), "avgpool", "fc").stage_names == ("pool",)


@pytest.mark.parametrize(("layers", "match"), [(["conv", "nope"], "stage_layers"),
                                           ("conv", "list of layer names"),
                                           (["conv", "conv"], "distinct")])
def test_feature_model_bad_stage_layers_are_one_line_errors(layers, match):
    with pytest.raises(IJCKDError, match=match):
        FeatureModel(TinyNet(), "avgpool", "fc", stage_layers=layers)


# ---------------------------------------------------------------- estimators


def _stage_case(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 6, generator=g)
    xs = [base @ torch.randn(6, d, generator=g) + 0.7 * torch.randn(n, d, generator=g)
          for d in (4, 9, 15)]
    ys = [base[:, :3] @ torch.randn(3, d, generator=g) + torch.randn(n, d, generator=g)
          for d in (5, 21)]
    return xs, ys


def test_batched_cka_values_equal_per_pair_cka():
    xs, ys = _stage_case()
    values = stage_cka_values(xs, ys)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert values[i, j] == pytest.approx(debiased_cka(x, y), abs=1e-12)


def test_batched_cka_matrix_equals_per_pair_feat_cka():
    """Values and jackknife intervals equal ``feat_cka`` pair by pair."""
    xs, ys = _stage_case(n=150, seed=3)
    matrix = stage_cka_matrix(xs, ys)
    assert len(matrix) == 3 and all(len(row) == 2 for row in matrix)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            reference = feat_cka(x, y)
            got = matrix[i][j]
            assert got.value == pytest.approx(reference.value, abs=1e-9)
            assert got.lo == pytest.approx(reference.lo, abs=1e-9)
            assert got.hi == pytest.approx(reference.hi, abs=1e-9)
            assert got.hi - got.lo > 1e-3  # a real interval, not a point
            assert got.lo <= got.value <= got.hi
            assert got.method == reference.method


def test_cka_matrix_of_a_constant_stage_is_missing_only_there():
    xs, ys = _stage_case(n=60)
    ys = [ys[0], torch.ones(60, 3)]
    matrix = stage_cka_matrix(xs, ys)
    assert all(math.isnan(row[1].value) for row in matrix)
    assert all(math.isfinite(row[0].value) for row in matrix)


def test_stage_inputs_are_checked():
    xs, ys = _stage_case(n=50)
    with pytest.raises(IJCKDError, match="rows like"):
        stage_cka_values(xs, [ys[0][:40]])
    with pytest.raises(IJCKDError, match="non-empty list"):
        stage_cka_values(xs[0], ys)
    with pytest.raises(IJCKDError, match="stages of"):
        stage_probe_errors(xs, torch.zeros(50, dtype=torch.long), xs[:2],
                           torch.zeros(50, dtype=torch.long))


def _labelled_inputs(n, seed, classes=4):
    """Sequences (n, 1, 40): a bump at a random place whose width tells the class (a
    global average of a conv map keeps widths, not places), plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    t = torch.linspace(0, 1, 40)
    centres = 0.3 + 0.4 * torch.rand(n, generator=g)
    widths = 0.03 * 2.0 ** torch.arange(classes)
    signal = torch.exp(-((t[None] - centres[:, None]) / widths[y][:, None]) ** 2)
    return (3.0 * signal + 0.3 * torch.randn(n, 40, generator=g))[:, None], y


class NoiseStage(nn.Module):
    """Replaces a layer by noise of the shape it would output (fixed seed)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        out = self.layer(x)
        g = torch.Generator().manual_seed(123)
        return torch.randn(out.shape, generator=g)


def _layer_terms(teacher, student, n_eval=300, n_fit=300):
    x_eval, y = _labelled_inputs(n_eval, seed=10)
    x_fit, y_fit = _labelled_inputs(n_fit, seed=11)
    with torch.no_grad():
        _, t_eval = teacher.eval().forward_stages(x_eval)
        _, t_fit = teacher.forward_stages(x_fit)
        _, s_eval = student.eval().forward_stages(x_eval)
        _, s_fit = student.forward_stages(x_fit)
    probes_t = stage_probe_errors(t_eval, y, t_fit, y_fit, num_classes=4, seed=5)
    probes_s = stage_probe_errors(s_eval, y, s_fit, y_fit, num_classes=4, seed=5)
    cka = stage_cka_matrix(t_eval, s_eval)
    return probes_t, probes_s, cka


@pytest.mark.slow
def test_a_copy_of_the_teacher_has_cka_one_and_equal_probe_profiles():
    torch.manual_seed(0)
    teacher = build_model("cnn_large", 4, (1, 40))
    student = copy.deepcopy(teacher)
    probes_t, probes_s, cka = _layer_terms(teacher, student)
    for i in range(3):
        assert cka[i][i].value == pytest.approx(1.0, abs=1e-6)
        assert cka[i][i].hi <= 1.0 + 1e-6 and cka[i][i].lo >= 0.99
        # equal profiles: each student interval holds the teacher's value and vice versa
        assert probes_s[i].lo <= probes_t[i].value <= probes_s[i].hi
        assert probes_t[i].lo <= probes_s[i].value <= probes_t[i].hi
    # the probes see class information at every stage: well below chance (0.75)
    assert max(p.value for p in probes_t) < 0.4
    # a copy's matrix is symmetric (CKA is), with its largest entries on the diagonal
    for i in range(3):
        for j in range(3):
            assert cka[i][j].value == pytest.approx(cka[j][i].value, abs=1e-9)
            assert cka[i][j].value <= cka[i][i].value + 1e-9


def test_a_noise_stage_shows_the_drop_at_that_stage():
    torch.manual_seed(0)
    teacher = build_model("cnn_large", 4, (1, 40))
    student = copy.deepcopy(teacher)
    student.body[3] = NoiseStage(student.body[3])  # the conv of stage "conv2"
    probes_t, probes_s, cka = _layer_terms(teacher, student)
    # stage conv1 is untouched
    assert cka[0][0].value == pytest.approx(1.0, abs=1e-6)
    assert probes_s[0].value == pytest.approx(probes_t[0].value)
    # from conv2 on the student's stages hold noise: chance-level probes, CKA near 0
    for stage in (1, 2):
        assert probes_s[stage].lo > probes_t[stage].hi
        assert probes_s[stage].value > 0.6
        assert abs(cka[stage][stage].value) < 0.1


def test_layer_rows_follow_the_schema():
    xs, ys = _stage_case(n=80)
    y = torch.arange(80) % 3
    probes_t = stage_probe_errors(xs, y, xs, y, seed=1)
    probes_s = stage_probe_errors(ys, y, ys, y, seed=1)
    cka = stage_cka_matrix(xs, ys)
    rows = layer_rows(probes_t, probes_s, cka, teacher_stages=["a", "b", "pool"],
                      student_stages=["c", "pool"], teacher_dims=[4, 9, 15],
                      student_dims=[5, 21], n_eval=80, n_fit=80)
    assert len(rows) == 3 + 2 + 6
    assert all(tuple(row) == schema.LAYER_ESTIMATE_COLUMNS for row in rows)
    probe_rows = [r for r in rows if r["model"]]
    assert [r["depth"] for r in probe_rows] == pytest.approx([1 / 3, 2 / 3, 1, 0.5, 1])
    cka_rows = [r for r in rows if r["teacher_stage"]]
    assert cka_rows[-1]["teacher_stage"] == "pool" and cka_rows[-1]["dim"] == 21
    assert all(math.isnan(r["stage_cka"]) for r in probe_rows)
    assert all(math.isnan(r["stage_probe_err"]) for r in cka_rows)


# ---------------------------------------------------------------- audit findings, figures


def _table(teacher, student, cka, *, run="r", method="fitnet", epoch=3, checkpoint="c3"):
    """layers.csv rows from (stage, err, lo, hi) lists and a {(i, j): (v, lo, hi)} dict."""
    probes_t = [Estimate(e, lo, hi, 100, "cp", 0.95) for _, e, lo, hi in teacher]
    probes_s = [Estimate(e, lo, hi, 100, "cp", 0.95) for _, e, lo, hi in student]
    matrix = [[Estimate(*cka[i, j], 100, "bs", 0.95) for j in range(len(student))]
              for i in range(len(teacher))]
    rows = layer_rows(probes_t, probes_s, matrix, teacher_stages=[t[0] for t in teacher],
                      student_stages=[s[0] for s in student], teacher_dims=[4] * len(teacher),
                      student_dims=[4] * len(student), n_eval=100, n_fit=100)
    keys = {"run": run, "method": method, "epoch": epoch, "checkpoint": checkpoint,
            "split": "eval"}
    return pd.DataFrame([{**keys, **row} for row in rows])


TEACHER = [("t1", 0.30, 0.25, 0.35), ("t2", 0.20, 0.15, 0.25), ("t3", 0.10, 0.07, 0.13),
           ("pool", 0.05, 0.03, 0.08)]


def _cka(best_last=3, separated=True):
    cka = {(i, j): (0.2, 0.1, 0.3) for i in range(4) for j in range(3)}
    cka[best_last, 2] = (0.9, 0.85, 0.95)
    cka[(best_last + 3) % 4, 2] = (0.7, 0.6, 0.8) if separated else (0.88, 0.8, 0.93)
    return cka


def test_findings_name_the_first_stage_behind_by_more_than_the_intervals():
    # depths: student 1/3, 2/3, 1 -> the nearest teacher stages t1 (0.25), t3 (0.75), pool
    student = [("s1", 0.24, 0.18, 0.30),  # below t1's 0.30: not behind
               ("s2", 0.25, 0.20, 0.30),  # lo 0.20 > t3's hi 0.13: behind
               ("pool", 0.30, 0.25, 0.35)]
    found = layer_findings(_table(TEACHER, student, _cka()))
    assert [c["teacher"]["stage"] for c in found["comparisons"]] == ["t1", "t3", "pool"]
    assert [c["behind"] for c in found["comparisons"]] == [False, True, True]
    assert found["behind"]["student"]["stage"] == "s2"
    assert found["resembles"]["stage"] == "pool" and found["resembles"]["separated"]
    assert found["resembles"]["cka"] == pytest.approx(0.9)


def test_findings_when_the_student_keeps_up_and_the_best_match_is_tied():
    student = [("s1", 0.20, 0.14, 0.26), ("pool", 0.06, 0.03, 0.09)]
    cka = {(i, j): (0.2, 0.1, 0.3) for i in range(4) for j in range(2)}
    cka[2, 1] = (0.9, 0.85, 0.95)  # t3, the best match of the last stage
    cka[1, 1] = (0.88, 0.8, 0.93)  # t2, its interval overlaps t3's
    df = _table(TEACHER, student, cka)
    found = layer_findings(df)
    assert found["behind"] is None
    assert [c["teacher"]["stage"] for c in found["comparisons"]] == ["t2", "pool"]
    assert found["resembles"]["stage"] == "t3"
    assert not found["resembles"]["separated"]
    assert found["resembles"]["runner_up"]["teacher_stage"] == "t2"
    text = layers_markdown(df)
    assert "nowhere by more than the intervals" in text
    assert "not separable from `t2`" in text
    assert text.count("\n| `") == 2 + 4  # two profile rows, four CKA rows


def test_the_section_reads_the_rows_of_a_csv_round_trip(tmp_path):
    student = [("s1", 0.24, 0.18, 0.30), ("s2", 0.25, 0.20, 0.30), ("pool", 0.3, 0.25, 0.35)]
    df = _table(TEACHER, student, _cka())
    df.to_csv(tmp_path / "layers.csv", index=False)
    back = pd.read_csv(tmp_path / "layers.csv")
    assert layers_markdown(back) == layers_markdown(df)
    assert "at stage `s2` (depth 0.67)" in layers_markdown(back)


def test_cka_heatmap_annotates_every_cell_with_its_interval():
    student = [("s1", 0.24, 0.18, 0.30), ("s2", 0.25, 0.20, 0.30), ("pool", 0.3, 0.25, 0.35)]
    df = pd.concat([_table(TEACHER, student, _cka(), epoch=1, checkpoint="c1"),
                    _table(TEACHER, student, _cka(best_last=1), epoch=3, checkpoint="c3")])
    ax = plot_layer_cka(df)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 4 * 3
    assert "0.90\n[0.85, 0.95]" in texts
    assert [t.get_text() for t in ax.get_yticklabels()] == ["t1", "t2", "t3", "pool"]
    image = ax.images[0].get_array()
    assert image[1, 2] == pytest.approx(0.9)  # the last checkpoint: t2 best for pool
    image = plot_layer_cka(df, checkpoint="c1").images[0].get_array()
    assert image[3, 2] == pytest.approx(0.9)
    with pytest.raises(IJCKDError, match="pass run="):
        plot_layer_cka(pd.concat([df, df.assign(run="other")]))


def _profile_lines(ax):
    """The drawn profiles (not the interval caps, which are markers without a line)."""
    return [line for line in ax.get_lines() if line.get_linestyle() not in ("None", "")]


def test_profile_draws_the_teacher_and_every_checkpoint():
    student = [("s1", 0.24, 0.18, 0.30), ("pool", 0.3, 0.25, 0.35)]
    cka = {(i, j): (0.5, 0.4, 0.6) for i in range(4) for j in range(2)}
    df = pd.concat([_table(TEACHER, student, cka, epoch=e, checkpoint=f"c{e}")
                    for e in (1, 2, 3)])
    ax = plot_layer_profile(df)
    lines = _profile_lines(ax)
    assert len(lines) == 3 + 1  # one per checkpoint and the teacher
    teacher = [line for line in lines if line.get_linestyle() == ":"][0]
    assert list(teacher.get_xdata()) == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert list(teacher.get_ydata()) == pytest.approx([30, 20, 10, 5])
    several = pd.concat([df, df.assign(run="r2", method="ce")])
    ax = plot_layer_profiles(several)
    lines = _profile_lines(ax)
    assert len(lines) == 2 + 1


def test_make_layer_figures_of_an_empty_table_writes_nothing(tmp_path):
    from ijckd_bounds.plotting.layers import make_layer_figures

    assert make_layer_figures(pd.DataFrame(columns=list(schema.LAYER_COLUMNS)), tmp_path) == []
    assert not list(tmp_path.iterdir())
