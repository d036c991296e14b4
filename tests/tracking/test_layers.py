"""layers.csv: written online and offline with track.layers=true, one block per checkpoint,
unchanged by a re-track, filled in for runs tracked before, and off by default."""

import pandas as pd
import pytest

from ijckd_bounds import schema
from ijckd_bounds.tracking.table import collect_layers

COMMON = ["data.name=digits", "data.batch_size=64", "optim.epochs=2", "optim.lr=0.05",
          "run.device=cpu", "run.progress=false", "track.n_bootstrap=60",
          "track.n_permutations=20"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cli_setup):
    root = tmp_path_factory.mktemp("layers")
    cli_setup("train-teacher", "model.teacher=cnn_large", "method.name=ce",
              f"run.run_dir={root / 'teacher'}", *COMMON)
    teacher = root / "teacher" / "teacher.pt"
    out = {}
    for name, extra in (("online", ["--track", "track.layers=true"]),
                        ("plain", ["--track"])):
        cli_setup("distill", "method.name=fitnet", "model.student=cnn_small",
                  f"model.teacher_checkpoint={teacher}", f"run.run_dir={root / name}", *extra,
                  *COMMON)
        out[name] = root / name
    return out


def _sorted(df):
    return df.sort_values(["checkpoint", "model", "stage", "teacher_stage",
                           "student_stage"]).reset_index(drop=True)


@pytest.mark.slow
def test_online_tracking_writes_a_block_per_checkpoint(runs):
    df = pd.read_csv(runs["online"] / "layers.csv")
    assert tuple(df.columns) == schema.LAYER_COLUMNS
    assert sorted(df["checkpoint"].unique()) == ["epoch_0001.pt", "epoch_0002.pt"]
    last = df[df["checkpoint"] == "epoch_0002.pt"]
    probes = last[last["model"].notna()]
    assert sorted(probes[probes["model"] == "teacher"]["stage"]) == ["conv1", "conv2", "pool"]
    assert sorted(probes[probes["model"] == "student"]["stage"]) == ["conv1", "pool"]
    cka = last[last["teacher_stage"].notna()]
    assert len(cka) == 3 * 2
    for term in schema.LAYER_TERMS:
        rows = df[df[term].notna()]
        assert ((rows[f"{term}_lo"] <= rows[term] + 1e-12)
                & (rows[term] <= rows[f"{term}_hi"] + 1e-12)).all()
    assert (probes["n_eval"] > 0).all() and (probes["n_fit"] > 0).all()
    # the teacher is frozen: its probe rows are the same at every checkpoint
    teacher = df[df["model"] == "teacher"]
    per_ckpt = [g.sort_values("stage")["stage_probe_err"].tolist()
                for _, g in teacher.groupby("checkpoint")]
    assert per_ckpt[0] == per_ckpt[1]
    # the pooled teacher stage of a FitNet student: real values, not NaN
    assert cka["stage_cka"].notna().all()


@pytest.mark.slow
def test_layers_are_off_by_default_and_track_run_layers_adds_them(runs, tmp_path):
    import shutil

    from ijckd_bounds.tracking.layers import track_run_layers

    assert (runs["plain"] / "bounds.csv").is_file()
    assert not (runs["plain"] / "layers.csv").exists()
    run = tmp_path / "plain"
    shutil.copytree(runs["plain"], run)
    bounds = pd.read_csv(run / "bounds.csv")
    df = track_run_layers(run)
    assert sorted(df["checkpoint"].unique()) == ["epoch_0001.pt", "epoch_0002.pt"]
    assert len(df) == 2 * (3 + 2 + 6)
    pd.testing.assert_frame_equal(pd.read_csv(run / "bounds.csv"), bounds)
    assert len(track_run_layers(run)) == len(df)  # nothing left to add


@pytest.mark.slow
def test_layers_csv_survives_a_re_track_and_is_filled_in(runs, cli):
    run = runs["online"]
    before = _sorted(pd.read_csv(run / "layers.csv"))
    bounds_before = pd.read_csv(run / "bounds.csv")
    cli("track", run, "--n-bootstrap", 60, "--n-permutations", 20)
    pd.testing.assert_frame_equal(_sorted(pd.read_csv(run / "layers.csv")), before)
    pd.testing.assert_frame_equal(pd.read_csv(run / "bounds.csv"), bounds_before)

    # a run whose bounds are tracked but whose layer rows of one checkpoint are gone
    kept = before[before["checkpoint"] == "epoch_0001.pt"]
    kept.to_csv(run / "layers.csv", index=False)
    cli("track", run, "--n-bootstrap", 60, "--n-permutations", 20)
    after = _sorted(pd.read_csv(run / "layers.csv"))
    assert len(after) == len(before)
    assert sorted(after["checkpoint"].unique()) == ["epoch_0001.pt", "epoch_0002.pt"]
    pd.testing.assert_frame_equal(pd.read_csv(run / "bounds.csv"), bounds_before)
    # the same student gives the same probe rows (its cached teacher stages included)
    probe_cols = ["checkpoint", "model", "stage", "stage_probe_err"]
    pd.testing.assert_frame_equal(after[after["model"].notna()][probe_cols],
                                  before[before["model"].notna()][probe_cols])
    assert len(collect_layers([run])) == len(before)


@pytest.mark.slow
def test_image_folders_stream_the_stages_and_delete_the_students(tmp_path, imagenet_toy):
    import torch

    from ijckd_bounds.data import build_dataset
    from ijckd_bounds.models import build_model
    from ijckd_bounds.tracking.track import BoundTracker
    from ijckd_bounds.train import TrainConfig, distill
    from ijckd_bounds.typed_yaml import from_dict

    tree = imagenet_toy.write_tree(tmp_path / "tree")
    torch.manual_seed(3)
    teacher = build_model("resnet18", imagenet_toy.classes, (3, 32, 32))
    weights = imagenet_toy.save_torchvision_style(teacher.state_dict(), tmp_path, "resnet18")
    run = tmp_path / "run"
    cfg = from_dict(TrainConfig, imagenet_toy.distill_config(
        tree, run, model={"teacher": "resnet18", "teacher_weights": str(weights)},
        optim={"epochs": 1}, track={"layers": True}))
    distill(cfg, callbacks=[BoundTracker(run)])
    df = pd.read_csv(run / "layers.csv")
    assert (df["n_eval"] == 12).all() and (df["n_fit"] == 12).all()
    assert len(df) == 4 + 4 + 16
    assert (run / "teacher_stages" / "eval" / "stage_000.npy").is_file()
    assert not (run / "teacher_stages.pt").exists()
    assert not list((run / "student_features").glob("*/*"))
    # the streamed teacher stages are the teacher's own stage outputs on the images
    import numpy as np

    splits = build_dataset("imagefolder", data_dir=str(tree), **imagenet_toy.images)
    images = torch.stack([splits.eval[i][0] for i in range(len(splits.eval))])
    with torch.no_grad():
        _, want = teacher.eval().forward_stages(images)
    got = np.load(run / "teacher_stages" / "eval" / "stage_001.npy")
    np.testing.assert_allclose(got, want[1].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_plot_and_audit_show_the_layers(runs, tmp_path, cli):
    cli("plot", runs["online"], runs["plain"], "--out", tmp_path / "figures")
    for name in ("layers_cka_online.png", "layers_profile_online.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 5000
    assert not (tmp_path / "figures" / "layers_cka_plain.png").exists()

    out = tmp_path / "audit"
    cli("audit", "--student", runs["online"] / "checkpoints" / "epoch_0002.pt", "--out", out,
        "--n-bootstrap", 60)
    text = (out / "report.md").read_text()
    assert text.index("## Error budget") < text.index("## Layers")
    assert "**Where the student falls behind:**" in text
    assert "**What the student's last stage resembles:**" in text
    assert (out / "layers_cka.png").stat().st_size > 5000
    audited = pd.read_csv(out / "layers.csv")
    tracked = pd.read_csv(runs["online"] / "layers.csv")
    tracked = tracked[tracked["checkpoint"] == "epoch_0002.pt"]
    # the same student, teacher and seed: the audit's probe rows are the tracker's
    cols = ["model", "stage", "stage_probe_err"]
    pd.testing.assert_frame_equal(_sorted(audited)[cols].reset_index(drop=True),
                                  _sorted(tracked)[cols].reset_index(drop=True))
