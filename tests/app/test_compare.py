"""``ijckd-bounds compare``: known accuracies give known intervals and verdicts.

Synthetic run directories (a config.yaml and a history.csv, as the trainer writes them)
hold accuracies chosen by hand; the expected intervals are computed here from
``scipy.stats.t`` directly, and Welch's interval from ``scipy.stats.ttest_ind``.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.colors import to_hex
from scipy import stats

from ijckd_bounds.app.cli import main
from ijckd_bounds.app.compare import (
    Published,
    compare_markdown,
    compare_runs,
    parse_published,
    read_published,
)
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.intervals import t_interval, welch_interval

REPO = Path(__file__).resolve().parents[2]
T_975_2 = stats.t.ppf(0.975, 2)  # three seeds


def fake_run(root, name, *, method="kd", seed=0, accs, epochs=None, weights=None,
             dataset="digits", student="cnn_small"):
    """A run directory whose history.csv holds ``accs`` (eval accuracy per epoch, as
    fractions) and whose config.yaml plans ``epochs`` (default: len(accs))."""
    run = Path(root) / name
    run.mkdir(parents=True)
    config = {"data": {"name": dataset, "seed": 0, "options": {}},
              "model": {"teacher": "cnn_large", "student": student, "teacher_options": {},
                        "student_options": {}, "teacher_checkpoint": f"/t/seed{seed}.pt"},
              "optim": {"name": "sgd", "lr": 0.05, "epochs": epochs or len(accs)},
              "method": {"name": method, **(weights or {})},
              "run": {"run_dir": str(run), "seed": seed}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    history = pd.DataFrame({"epoch": range(1, len(accs) + 1), "eval_acc": accs,
                            "train_acc": [min(a + 0.01, 1.0) for a in accs]})
    history.to_csv(run / "history.csv", index=False)
    return run


def seeded_runs(root, method, finals, *, best_gain=0.0, **kwargs):
    """One run per final accuracy; the epoch before the last is ``best_gain`` higher."""
    return [fake_run(root, f"{method}{kwargs.get('weights', '')}_s{i}".replace(" ", ""),
                     method=method, seed=i, accs=[0.5, final + best_gain, final], **kwargs)
            for i, final in enumerate(finals)]


def markdown(comparison):
    return compare_markdown(comparison.runs, comparison.groups, comparison.verdicts,
                            comparison.controls, unused=comparison.unused)


def by_method(groups, method, setting=""):
    rows = groups[(groups["method"] == method) & (groups["setting"] == setting)]
    assert len(rows) == 1
    return rows.iloc[0]


# ----------------------------------------------------------------- intervals over seeds


def test_known_accuracies_give_the_hand_computed_t_interval(tmp_path):
    finals = [0.90, 0.92, 0.97]
    runs = seeded_runs(tmp_path, "kd", finals, best_gain=0.01)
    group = by_method(compare_runs(runs).groups, "kd")
    values = np.array(finals) * 100
    mean, sd = values.mean(), values.std(ddof=1)
    half = T_975_2 * sd / math.sqrt(3)  # 4.303 * 3.606 / 1.732 = 8.96
    assert group["n_seeds"] == 3 and group["seeds"] == "0 1 2"
    assert group["final_mean"] == pytest.approx(93.0)
    assert group["final_std"] == pytest.approx(sd) and sd == pytest.approx(3.6056, abs=1e-4)
    assert (group["final_lo"], group["final_hi"]) == pytest.approx((mean - half, mean + half))
    assert half == pytest.approx(8.957, abs=1e-3)
    # the best epoch is the one before the last, 1 point higher on every seed
    assert group["best_mean"] == pytest.approx(94.0)
    assert group["best_lo"] == pytest.approx(94.0 - half)
    assert group["best_minus_final"] == pytest.approx(1.0)


def test_t_and_welch_intervals_equal_scipy_references():
    a, b = np.array([97.1, 97.9, 98.4, 97.5]), np.array([95.0, 96.8, 96.1])
    est = t_interval(a)
    ref = stats.ttest_1samp(a, 0.0).confidence_interval(0.95)
    assert (est.lo, est.hi) == pytest.approx((ref.low, ref.high))
    assert est.value == pytest.approx(a.mean()) and est.n == 4 and est.method == "student-t"
    diff = welch_interval(a, b, 0.9)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.9)
    assert (diff.lo, diff.hi) == pytest.approx((ref.low, ref.high))
    assert diff.value == pytest.approx(a.mean() - b.mean()) and diff.n == 7
    one = welch_interval(a, b[:1])
    assert math.isnan(one.lo) and "at least two" in one.method


def test_one_seed_gives_no_interval_and_says_why(tmp_path):
    runs = seeded_runs(tmp_path, "kd", [0.91])
    comparison = compare_runs(runs, published=["kd=95"])
    group = by_method(comparison.groups, "kd")
    assert group["n_seeds"] == 1 and math.isnan(group["final_lo"])
    assert math.isnan(group["final_std"])
    assert "needs at least two" in group["final_interval"]
    final = comparison.verdicts[comparison.verdicts["accuracy"] == "final epoch"].iloc[0]
    assert final["verdict"] == "no interval"
    assert "an interval needs at least two seeds" in final["arithmetic"]
    assert "91.00 − 95.00 = −4.00" in final["arithmetic"]
    assert "none: one seed (an interval needs two)" in markdown(comparison)


def test_run_missing_its_last_epoch_is_reported_not_averaged_in(tmp_path):
    runs = seeded_runs(tmp_path, "kd", [0.90, 0.92, 0.94])
    cut = fake_run(tmp_path, "kd_cut", seed=3, accs=[0.5, 0.6], epochs=3)
    killed = fake_run(tmp_path, "kd_killed", seed=4, accs=[0.5], epochs=3)
    (killed / "history.csv").write_text("")  # killed before its first epoch ended
    comparison = compare_runs([*runs, cut, killed])
    group = by_method(comparison.groups, "kd")
    assert group["n_seeds"] == 3 and group["n_incomplete"] == 2
    assert group["final_mean"] == pytest.approx(92.0)  # 0.6 of the cut run not in it
    assert group["best_mean"] == pytest.approx(92.0)
    text = markdown(comparison)
    assert "Runs left out (missing their last epoch)" in text
    assert f"`{cut}`" in text and "history ends at epoch 2 of 3; not averaged in" in text
    assert f"`{killed}` (kd, seed 4): history ends at epoch 0 of 3" in text


# ---------------------------------------------------------------------------- verdicts


def test_published_verdicts_show_their_arithmetic(tmp_path):
    # final 93.0 [84.04, 101.96] over three seeds; best epoch 3 points higher everywhere
    runs = seeded_runs(tmp_path, "kd", [0.90, 0.92, 0.97], best_gain=0.03)
    comparison = compare_runs(runs, published=["kd=95.5", "kd=80"])
    v = comparison.verdicts.set_index(["published", "accuracy"])
    inside = v.loc[(95.5, "final epoch")]
    assert inside["verdict"] == "consistent"
    assert "t(0.975, 2) = 4.303" in inside["arithmetic"]
    assert "published 95.50 lies inside: consistent" in inside["arithmetic"]
    below = v.loc[(80.0, "final epoch")]
    half = T_975_2 * np.std([90, 92, 97], ddof=1) / math.sqrt(3)
    assert below["verdict"] == "above"  # the runs are above the published number
    assert below["gap"] == pytest.approx(13.0)
    assert (below["gap_lo"], below["gap_hi"]) == pytest.approx((13 - half, 13 + half))
    assert "gap 93.00 − 80.00 = +13.00 points [+4.04, +21.96]" in below["arithmetic"]
    assert "best-versus-last" not in below["arithmetic"]  # 13 > 3
    assert v.loc[(80.0, "best epoch")]["gap"] == pytest.approx(16.0)


def test_a_gap_within_the_best_versus_last_difference_gets_a_note(tmp_path):
    # tight seeds: final 90.0 ± 0.1, best epoch 2 points higher; published 91.5
    runs = seeded_runs(tmp_path, "kd", [0.899, 0.900, 0.901], best_gain=0.02)
    comparison = compare_runs(runs, published=["kd=91.5"])
    final = comparison.verdicts[comparison.verdicts["accuracy"] == "final epoch"].iloc[0]
    assert final["verdict"] == "below" and final["gap"] == pytest.approx(-1.5)
    assert "within the best-versus-last difference (+2.00 points" in final["arithmetic"]
    best = comparison.verdicts[comparison.verdicts["accuracy"] == "best epoch"].iloc[0]
    assert best["verdict"] == "above" and best["gap"] == pytest.approx(0.5)


def test_published_values_apply_only_to_their_pair(tmp_path):
    runs = seeded_runs(tmp_path, "kd", [0.90, 0.91])
    entries = [Published("kd", 90.5, dataset="digits", student="cnn_small"),
               Published("kd", 70.0, dataset="imagenet"),
               Published("kd", 90.5, setting="temperature=2")]
    comparison = compare_runs(runs)
    from ijckd_bounds.app.compare import verdicts

    found, unused = verdicts(comparison.groups, comparison.runs, entries)
    assert len(found) == 2 and set(found["published"]) == {90.5}
    assert [e.dataset for e in unused] == ["imagenet", None]
    text = markdown(compare_runs(runs, published=["ce=99"]))
    assert "Published ce = 99.00 (any pair) matches no group" in text


def test_published_file_is_read_safely_and_checked(tmp_path):
    good = tmp_path / "published.yaml"
    good.write_text("dataset: imagenet\nteacher: resnet34\npublished:\n"
                    "  - {method: kd, student: resnet18, value: 71.03, source: 'x'}\n")
    [entry] = read_published(good)
    assert entry == Published("kd", 71.03, dataset="imagenet", teacher="resnet34",
                              student="resnet18", source="x")
    bad = {"a.yaml": "published: [{method: kd}]",
           "b.yaml": "published: [{method: kd, value: 0.7103e3}]",
           "c.yaml": "!!python/object/apply:os.system ['true']",
           "d.yaml": "published: [{method: kd, value: 71, year: 2022}]",
           "e.yaml": "entries: []"}
    messages = {}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(IJCKDError) as info:
            read_published(tmp_path / name)
        messages[name] = str(info.value)
        assert "\n" not in messages[name]
    assert "needs 'method' and 'value'" in messages["a.yaml"]
    assert "accuracy in percent" in messages["b.yaml"]
    assert "not valid YAML" in messages["c.yaml"]  # the safe loader refuses the tag
    assert "unknown key 'year'" in messages["d.yaml"]
    assert "a list under 'published:'" in messages["e.yaml"]
    with pytest.raises(IJCKDError, match="METHOD=VALUE"):
        parse_published(["kd"])
    with pytest.raises(IJCKDError, match="must be a number"):
        parse_published(["kd=seventy"])


@pytest.mark.parametrize("recipe", ["imagenet", "cifar100"])
def test_recipe_published_files_parse_and_cite_their_source(recipe):
    entries = read_published(REPO / "experiments" / recipe / "published.yaml")
    assert entries
    for entry in entries:
        assert entry.dataset == recipe and (entry.teacher or entry.student)
        assert entry.source and "http" in entry.source


# ---------------------------------------------------------------------------- controls


def test_control_difference_is_welchs_interval_at_the_same_reduction(tmp_path):
    ijckd = seeded_runs(tmp_path, "ijckd", [0.97, 0.975, 0.98])
    control = seeded_runs(tmp_path, "ce_connector", [0.95, 0.97, 0.96])
    other = seeded_runs(tmp_path, "ce_connector", [0.50, 0.52], weights={"reduction": 16})
    simkd16 = seeded_runs(tmp_path, "simkd", [0.60, 0.64], weights={"reduction": 16})
    comparison = compare_runs([*ijckd, *control, *other, *simkd16])
    rows = comparison.controls.set_index("group")
    ref = stats.ttest_ind([97, 97.5, 98], [95, 97, 96], equal_var=False).confidence_interval()
    row = rows.loc["ijckd"]
    assert row["control"] == "ce_connector"
    assert row["diff"] == pytest.approx(1.5)
    assert (row["diff_lo"], row["diff_hi"]) == pytest.approx((ref.low, ref.high))
    assert row["sentence"].startswith(
        f"The feature/logit losses add +1.5 points [{ref.low:+.1f}, {ref.high:+.1f}]"
        .replace("-", "\u2212") + " over the connector alone")
    assert rows.loc["simkd (reduction=16)"]["control"] == "ce_connector (reduction=16)"
    assert rows.loc["simkd (reduction=16)"]["diff"] == pytest.approx(11.0)
    assert "ce_connector" not in rows.index  # a control has no control


@pytest.mark.parametrize("student_name", ["cnn_small", "mlp_small"])
def test_control_gradients_reach_only_the_student_and_the_connector(student_name):
    """ce_connector: every parameter of the student body and of the connector gets a
    gradient; the teacher (its classifier h_T included) and the student's unused own head
    get none, and the trainable parameters are IJCKD's at the same reduction."""
    import torch

    from ijckd_bounds.models import build_model
    from ijckd_bounds.train.config import MethodConfig
    from ijckd_bounds.train.objectives import build_objective

    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    built = {}
    for method in ("ce_connector", "ijckd"):
        student = build_model(student_name, 10, (1, 8, 8))
        teacher = build_model("cnn_large", 10, (1, 8, 8))
        built[method] = (build_objective(MethodConfig(name=method, reduction=4), student,
                                         teacher, x[:2]), student, teacher)
    control, student, teacher = built["ce_connector"]
    control.train()
    terms, logits = control(x, y)
    assert set(terms) == {"loss", "ce"} and logits.shape == (8, 10)
    terms["loss"].backward()
    body = [p for name, p in student.named_parameters() if not name.startswith("classifier")]
    trained = body + list(control.connector.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    assert {id(p) for p in control.trainable_parameters()} == {id(p) for p in trained}
    assert all(p.grad is None for p in teacher.parameters())  # teacher.classifier is h_T
    assert all(p.grad is None for p in student.classifier.parameters())
    ijckd = built["ijckd"][0]
    assert ([tuple(p.shape) for p in control.trainable_parameters()]
            == [tuple(p.shape) for p in ijckd.trainable_parameters()])


# -------------------------------------------------------------------------- the figure


def test_plot_compare_draws_each_seed_the_interval_and_the_published_mark(tmp_path):
    from ijckd_bounds.app.compare import figure_frame
    from ijckd_bounds.plotting.compare import PUBLISHED_COLOUR, plot_compare

    runs = [*seeded_runs(tmp_path, "kd", [0.90, 0.92, 0.97]),
            *seeded_runs(tmp_path, "ce", [0.91])]
    comparison = compare_runs(runs, published=["kd=95"])
    frame = figure_frame(comparison.runs, comparison.groups, comparison.verdicts)
    ax = plot_compare(frame)
    offsets = [c.get_offsets() for c in ax.collections]
    points = np.concatenate([o for o in offsets if len(o)])
    # 4 seeds x (final, best) + 1 published mark
    assert len(points) == 9
    published = [c for c in ax.collections if len(c.get_offsets()) and len(c.get_facecolor())
                 and to_hex(c.get_facecolor()[0]) == PUBLISHED_COLOUR]
    assert len(published) == 1 and published[0].get_offsets()[0][0] == pytest.approx(95.0)
    texts = [t.get_text() for t in ax.texts]
    assert "1 seed: no interval" in texts
    labels = [t.get_text() for t in ax.get_yticklabels()]
    ticks = [tick for tick in ax.get_yticks()]
    assert dict(zip(labels, ticks, strict=True)) == {"kd  (n=3)": 1, "ce  (n=1)": 0}  # kd on top
    lo, hi = comparison.groups.set_index("method").loc["kd", ["final_lo", "final_hi"]]
    interval = [ln for ln in ax.lines if list(ln.get_xdata()) == [lo, hi]]
    assert len(interval) == 1


# ------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """A teacher, two ijckd seeds and two ce_connector seeds, 2 epochs each."""
    root = tmp_path_factory.mktemp("compare")
    common = ["data.name=digits", "optim.epochs=2", "run.device=cpu", "run.progress=false"]
    assert main(["train-teacher", "model.teacher=mlp_large", f"run.run_dir={root / 't'}",
                 *common]) == 0
    runs = [root / "t"]
    for method in ("ijckd", "ce_connector"):
        for seed in (0, 1):
            run = root / f"{method}{seed}"
            assert main(["distill", f"method.name={method}", "model.student=mlp_small",
                         f"model.teacher_checkpoint={root / 't' / 'teacher.pt'}",
                         f"run.seed={seed}", f"run.run_dir={run}", *common]) == 0
            runs.append(run)
    return runs


@pytest.mark.slow
def test_cli_compare_on_real_runs(real_runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", *map(str, real_runs), "--published", "ijckd=99.5",
                 "--out", str(out)]) == 0
    for name in ("compare.md", "compare.csv", "compare_runs.csv", "compare_published.csv",
                 "compare_digits.png", "compare_digits.pdf"):
        assert (out / name).is_file(), name
    groups = pd.read_csv(out / "compare.csv").set_index("group")
    assert list(groups.index) == ["teacher (mlp_large)", "ijckd", "ce_connector"]
    ijckd, control = groups.loc["ijckd"], groups.loc["ce_connector"]
    history = [pd.read_csv(r / "history.csv") for r in real_runs[1:3]]
    assert ijckd["final_mean"] == pytest.approx(np.mean([100 * h["eval_acc"].iloc[-1]
                                                         for h in history]))
    # the same trainable parts: student body + connector, h_T frozen on top
    for column in ("student_params", "connector_params", "trained_params", "predict_params"):
        assert ijckd[column] == control[column] > 0, column
    assert ijckd["predict_params"] > ijckd["trained_params"]  # + the frozen h_T
    assert groups.loc["teacher (mlp_large)", "connector_params"] == 0
    assert ijckd["control"] == "ce_connector" and np.isfinite(ijckd["control_diff_lo"])
    text = (out / "compare.md").read_text()
    assert "over the connector alone" in text and "published 99.50" in text


@pytest.mark.slow
def test_untracked_runs_are_noted_for_students_only(real_runs):
    # the tracked columns describe a student against its teacher: a teacher run has none
    # to miss, a student without bounds.csv is told how to get them
    comparison = compare_runs(real_runs[:2], columns=("top1_agreement",))
    notes = dict(zip(comparison.runs["kind"], comparison.runs["notes"], strict=True))
    assert "ijckd-bounds track" not in str(notes["teacher"])
    assert "no bounds.csv (run `ijckd-bounds track` on it for top1_agreement)" in \
        str(notes["student"])


def test_cli_compare_bad_input_is_one_line_exit_2(tmp_path, capsys):
    run = seeded_runs(tmp_path, "kd", [0.9])[0]
    cases = [[str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
             [str(tmp_path), "--out", str(tmp_path / "o")],
             [str(run), "--published", "kd", "--out", str(tmp_path / "o")],
             [str(run), "--published-file", str(tmp_path / "none.yaml"), "--out",
              str(tmp_path / "o")],
             [str(run), str(run), "--out", str(tmp_path / "o")]]
    expected = ["does not exist", "is not a training run", "METHOD=VALUE",
                "published file", "given twice"]
    for argv, message in zip(cases, expected, strict=True):
        assert main(["compare", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ijckd-bounds compare: error: ") and message in err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
