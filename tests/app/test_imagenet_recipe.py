"""The reference ImageNet recipe at toy scale: a generated ImageFolder tree, a teacher from a
torchvision-layout weights file, ResNet-34 -> ResNet-18 IJCKD at 32 pixels, checkpoints,
resumption, streamed bound tracking online and offline, and the recipe's files."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ijckd_bounds.app import cli
from ijckd_bounds.checkpoint import load_student, load_teacher_from, load_teacher_weights
from ijckd_bounds.data import build_dataset
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models import build_model
from ijckd_bounds.schema import EXACT_BOUNDS
from ijckd_bounds.tracking.track import BOUNDS_CSV, BoundTracker, teacher_features
from ijckd_bounds.train import DataConfig, TrainConfig, distill
from ijckd_bounds.train.distributed import DistContext, RunData
from ijckd_bounds.typed_yaml import from_dict, load_config
from tests.gloo_ranks import free_port, run_two_ranks

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "experiments" / "imagenet"


@pytest.fixture(scope="module")
def tree(tmp_path_factory, imagenet_toy):
    return imagenet_toy.write_tree(tmp_path_factory.mktemp("imagenet_tree"))


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory, imagenet_toy):
    torch.manual_seed(1)
    model = build_model("resnet18", imagenet_toy.classes, (3, 32, 32))
    return imagenet_toy.save_torchvision_style(model.state_dict(), tmp_path_factory.mktemp("w18"),
                                               "resnet18")


# ----------------------------------------------------------------------- teacher weights


def test_teacher_weights_file_loads_into_the_named_architecture(tree, resnet18_weights,
                                                                imagenet_toy):
    teacher = load_teacher_weights(resnet18_weights, "resnet18", imagenet_toy.classes,
                                   (3, 32, 32))
    model = build_model("resnet18", imagenet_toy.classes, (3, 32, 32))
    model.load_state_dict(torch.load(resnet18_weights, weights_only=True))
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    logits, z_t = teacher(x)
    want_logits, want_z = model(x)
    torch.testing.assert_close(z_t, want_z)
    torch.testing.assert_close(logits, want_logits)
    assert teacher.sha256 == imagenet_toy.sha256(resnet18_weights)
    assert not any(p.requires_grad for p in teacher.model.parameters())
    # the description a student checkpoint stores rebuilds the same teacher
    entry = teacher.describe()
    assert entry["source"] == "torchvision_weights" and entry["name"] == "resnet18"
    rebuilt = load_teacher_from(entry)
    torch.testing.assert_close(rebuilt(x)[1], z_t)


def test_a_teacher_file_changed_since_distillation_is_refused(resnet18_weights, tmp_path,
                                                              imagenet_toy):
    import shutil

    path = tmp_path / "teacher.pth"
    shutil.copy(resnet18_weights, path)
    entry = load_teacher_weights(path, "resnet18", imagenet_toy.classes, (3, 32, 32)).describe()
    torch.manual_seed(5)
    torch.save(build_model("resnet18", imagenet_toy.classes, (3, 32, 32)).state_dict(), path)
    with pytest.raises(IJCKDError, match="has changed since the student was distilled"):
        load_teacher_from(entry)
    with pytest.raises(IJCKDError, match="unknown source 'onnx'"):
        load_teacher_from({**entry, "source": "onnx"})


def test_bad_weights_files_fail_with_one_line_through_the_cli(tree, resnet18_weights,
                                                              tmp_path, imagenet_toy, cli_fails):
    config = tmp_path / "student.yaml"
    config.write_text(yaml.safe_dump(imagenet_toy.distill_config(tree, tmp_path / "run")))
    state = torch.load(resnet18_weights, weights_only=True)

    renamed = dict(state)
    renamed["head.weight"] = renamed.pop("fc.weight")
    bad_key = imagenet_toy.save_torchvision_style(renamed, tmp_path, "resnet18")
    err = cli_fails("distill", "--config", str(config), "--teacher-weights",
                    str(bad_key))
    assert "missing key 'fc.weight'" in err and str(bad_key) in err

    torch.manual_seed(0)
    ten_classes = build_model("resnet18", 10, (3, 32, 32)).state_dict()
    bad_shape = imagenet_toy.save_torchvision_style(ten_classes, tmp_path, "resnet18")
    err = cli_fails("distill", "--config", str(config), "--teacher-weights",
                    str(bad_shape))
    assert "'fc.weight' has shape (10, 512) in the file but (4, 512) in the model" in err

    wrong_hash = tmp_path / "resnet18-00000000.pth"
    os.symlink(resnet18_weights, wrong_hash)
    err = cli_fails("distill", "--config", str(config), "--teacher-weights",
                    str(wrong_hash))
    assert "named for sha256 00000000" in err

    err = cli_fails("distill", "--config", str(config), "--teacher-weights",
                    str(resnet18_weights), "model.teacher=resnet34")
    assert "missing key" in err or "unexpected key" in err  # another architecture

    err = cli_fails("distill", "--config", str(config), "--teacher-weights",
                    str(resnet18_weights), "model.teacher=null")
    assert "model.teacher_weights needs model.teacher" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


def test_teacher_checkpoint_and_weights_together_are_refused(tree, tmp_path, imagenet_toy):
    tree_cfg = imagenet_toy.distill_config(tree, tmp_path)
    tree_cfg["model"].update(teacher_weights="a.pth", teacher_checkpoint="teacher.pt")
    with pytest.raises(IJCKDError, match="not both"):
        from_dict(TrainConfig, tree_cfg)


# -------------------------------------------------------------------- DataLoader options


def test_loader_options_are_checked():
    with pytest.raises(IJCKDError, match="persistent_workers needs worker processes"):
        DataConfig(persistent_workers=True)
    with pytest.raises(IJCKDError, match="prefetch_factor needs worker processes"):
        DataConfig(prefetch_factor=4)
    options = DataConfig(num_workers=3, persistent_workers=True, prefetch_factor=4)
    assert options.loader_options() == {"num_workers": 3, "persistent_workers": True,
                                        "prefetch_factor": 4}


def test_image_batches_depend_on_seed_epoch_and_sample_not_on_workers(tree, imagenet_toy):
    splits = build_dataset("imagefolder", data_dir=str(tree), **imagenet_toy.images)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

    def epochs(**loader):
        data = RunData(splits, DataConfig(batch_size=8, **loader), ctx, seed=3)
        return [[(x.clone(), y.clone()) for x, y in data.train_batches(epoch)]
                for epoch in (1, 2)]

    main = epochs()
    workers = epochs(num_workers=2, persistent_workers=True, pin_memory=False)
    assert len(main[0]) == 32 // 8
    for epoch_main, epoch_workers in zip(main, workers, strict=True):
        for (x0, y0), (x1, y1) in zip(epoch_main, epoch_workers, strict=True):
            assert x0.shape == (8, 3, 32, 32)
            assert torch.equal(x0, x1) and torch.equal(y0, y1)
    # a new epoch: a new order and new random crops of the same images
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(main[0], main[1], strict=True))


def test_tracking_settings_come_from_the_run_unless_given():
    from ijckd_bounds.track_config import TrackConfig

    config = {"data": {"eval_batch_size": 64, "num_workers": 6},
              "track": {"n_bootstrap": 300, "mmd_max_n": 5000, "device": "cpu",
                        "batch_size": None, "num_workers": None, "chunk_size": 128}}
    online = TrackConfig().resolved(config)
    assert (online.n_bootstrap, online.mmd_max_n, online.device) == (300, 5000, "cpu")
    assert (online.batch_size, online.num_workers, online.chunk_size) == (64, 6, 128)
    # explicit settings (the track command's flags) win; None fields follow the run
    given = TrackConfig(n_bootstrap=50, batch_size=8, mmd_max_n=0).resolved(config)
    assert (given.n_bootstrap, given.batch_size, given.mmd_max_n) == (50, 8, 0)  # 0: all pairs
    assert given.resolved(config) == given  # resolving again keeps the explicit choices
    assert (given.num_workers, given.chunk_size) == (6, 128)
    # a run without a track section (made before it existed): the defaults
    old = TrackConfig().resolved({"data": {}})
    assert (old.n_bootstrap, old.batch_size, old.device, old.mmd_max_n) == (1000, 512,
                                                                           "auto", 0)


# ------------------------------------------------------------------------ the recipe


class CrashAfterCheckpoint:
    """Simulates a crash right after the checkpoint of ``epoch`` was written."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_checkpoint(self, path, epoch):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resnet34_to_resnet18_distills_resumes_and_tracks_exact_bounds(tree, tmp_path,
                                                                        capsys, imagenet_toy):
    torch.manual_seed(2)
    teacher_model = build_model("resnet34", imagenet_toy.classes, (3, 32, 32))
    weights = imagenet_toy.save_torchvision_style(teacher_model.state_dict(), tmp_path,
                                                  "resnet34")
    tree_cfg = imagenet_toy.distill_config(
        tree, tmp_path / "cut", model={"teacher": "resnet34", "teacher_weights": str(weights)})
    cfg = from_dict(TrainConfig, tree_cfg)

    # interrupted after epoch 1 (tracked online), then resumed
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, callbacks=[BoundTracker(cfg.run.run_dir), CrashAfterCheckpoint(1)])
    resumed = distill(cfg, resume=True, callbacks=[BoundTracker(cfg.run.run_dir)])
    assert resumed.checkpoint.name == "epoch_0002.pt"

    # the same run uninterrupted, untracked, with worker processes: the same weights
    full_run = {**tree_cfg["run"], "run_dir": str(tmp_path / "full")}
    full_data = {**tree_cfg["data"], "num_workers": 2, "persistent_workers": True}
    full_cfg = from_dict(TrainConfig, {**tree_cfg, "run": full_run, "data": full_data})
    full = distill(full_cfg)
    cut_state = torch.load(resumed.checkpoint, weights_only=True)
    full_state = torch.load(full.checkpoint, weights_only=True)
    for part in ("model", "connector"):
        for key, value in full_state[part]["state_dict"].items():
            assert torch.equal(cut_state[part]["state_dict"][key], value), (part, key)
    assert not torch.equal(cut_state["model"]["state_dict"]["conv1.weight"],
                           build_model("resnet18", imagenet_toy.classes, (3, 32, 32)).conv1.weight)

    # the student checkpoint describes its teacher: file, hash, architecture, classifier
    teacher = cut_state["teacher"]
    assert teacher["source"] == "torchvision_weights" and teacher["name"] == "resnet34"
    assert teacher["sha256"] == imagenet_toy.sha256(weights)
    assert Path(teacher["path"]) == weights.resolve()
    assert teacher["num_classes"] == imagenet_toy.classes and teacher["input_shape"] == [3, 32, 32]
    assert torch.equal(teacher["weight"], teacher_model.fc.weight)
    assert torch.equal(teacher["bias"], teacher_model.fc.bias)

    # online tracking: one row per checkpoint, the exact bounds hold
    online = pd.read_csv(tmp_path / "cut" / BOUNDS_CSV).sort_values("epoch")
    assert list(online["epoch"]) == [1, 2]
    assert (online["n_eval"] == 12).all() and (online["n_fit"] == 12).all()
    assert (online["dim"] == 512).all() and (online["n_classes"] == imagenet_toy.classes).all()
    for bound in EXACT_BOUNDS:
        assert (online["student_err"] <= online[bound] + 1e-12).all(), bound
    # image folders: streamed features, never a cache of inputs
    assert not (tmp_path / "cut" / "teacher_features.pt").exists()
    assert (tmp_path / "cut" / "teacher_features" / "eval" / "z_t.npy").is_file()
    assert not list((tmp_path / "cut" / "student_features").glob("*/*"))

    # offline tracking through the CLI rebuilds the teacher from the checkpoint alone
    code = cli.main(["track", str(tmp_path / "full"), "--n-bootstrap", "50",
                     "--n-permutations", "20"])
    assert code == 0, capsys.readouterr().err
    offline = pd.read_csv(tmp_path / "full" / BOUNDS_CSV).sort_values("epoch")
    assert list(offline["epoch"]) == [1, 2]
    for bound in EXACT_BOUNDS:
        assert (offline["student_err"] <= offline[bound] + 1e-12).all(), bound
    # same weights, same settings: the same estimates
    for column in ("teacher_err", "student_err", "disagreement", "feat_msd", "mmd2",
                   "bound_coupled", "bound_ideal_joint"):
        np.testing.assert_allclose(offline[column].to_numpy(), online[column].to_numpy(),
                                   rtol=1e-6, atol=1e-9, err_msg=column)

    # the audit rebuilds the teacher from the student's record of its weights file, or
    # takes that file as --teacher
    for name, extra in (("recorded", []), ("given", ["--teacher", str(weights)])):
        out = tmp_path / f"audit_{name}"
        code = cli.main(["audit", "--student", str(resumed.checkpoint), "--out", str(out),
                         "--n-bootstrap", "50", *extra])
        assert code == 0, capsys.readouterr().err
        audited = json.loads((out / "bounds.json").read_text())["terms"]
        last = online.iloc[-1]
        assert audited["student_err"] == pytest.approx(last["student_err"])
        assert audited["teacher_err"] == pytest.approx(last["teacher_err"])

    # the teacher features are the teacher's own outputs on the evaluation images
    splits = build_dataset("imagefolder", data_dir=str(tree), **imagenet_toy.images)
    cache = teacher_features(load_student(resumed.checkpoint).meta["teacher_source"], splits,
                             tmp_path / "cut" / "teacher_features.pt")
    images = torch.stack([splits.eval[i][0] for i in range(len(splits.eval))])
    with torch.no_grad():
        want = teacher_model.eval()(images)[1]
    torch.testing.assert_close(cache["z_t"], want, rtol=1e-4, atol=1e-5)
    assert "x_eval" not in cache


@pytest.mark.slow
def test_two_gloo_ranks_track_online_like_one_process_offline(tree, resnet18_weights,
                                                             tmp_path, imagenet_toy):
    import shutil
    import sys

    from ijckd_bounds.tracking.track import track_run

    tree_cfg = imagenet_toy.distill_config(tree, tmp_path / "two", model={"student": "resnet20"},
                                           optim={"epochs": 1}, run={"ckpt_every": 1})
    config = tmp_path / "student.yaml"
    config.write_text(yaml.safe_dump(tree_cfg))
    run_two_ranks([sys.executable, "-m", "ijckd_bounds", "distill", "--config",
                   str(config), "--track", "--teacher-weights", str(resnet18_weights)],
                  cwd=REPO, timeout=300)

    online = pd.read_csv(tmp_path / "two" / BOUNDS_CSV)
    assert list(online["checkpoint"]) == ["epoch_0001.pt"]  # rank 0 alone wrote the row
    for bound in EXACT_BOUNDS:
        assert (online["student_err"] <= online[bound] + 1e-12).all(), bound
    # the same checkpoint tracked by one process, from scratch
    (tmp_path / "one" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "two" / "checkpoints" / "epoch_0001.pt",
                tmp_path / "one" / "checkpoints")
    offline = track_run(tmp_path / "one", progress=False)
    for column in ("teacher_err", "student_err", "disagreement", "feat_msd", "feat_cka",
                   "mmd2", "ideal_joint", "bound_margin", "bound_ben_david"):
        np.testing.assert_allclose(offline[column].to_numpy(), online[column].to_numpy(),
                                   rtol=1e-6, atol=1e-9, err_msg=column)


# -------------------------------------------------------------------- recipe files


@pytest.mark.parametrize(("name", "teacher", "student", "batch", "lr"), [
    ("resnet34_resnet18.yaml", "resnet34", "resnet18", 256, 0.1),
    ("resnet50_mobilenetv1.yaml", "resnet50", "mobilenetv1", 512, 0.2),
])
def test_reference_configurations(name, teacher, student, batch, lr):
    cfg = load_config(TrainConfig, RECIPE / name)
    assert (cfg.data.name, cfg.model.teacher, cfg.model.student) == ("imagenet", teacher,
                                                                     student)
    assert cfg.data.batch_size == batch and cfg.optim.lr == lr
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.9, 1e-4)
    assert (cfg.optim.schedule, cfg.optim.milestones, cfg.optim.gamma) == (
        "multistep", (30, 60, 90), 0.1)
    assert cfg.optim.epochs == 100
    assert (cfg.method.name, cfg.method.ce_weight, cfg.method.logit_weight,
            cfg.method.feat_weight) == (
        "ijckd", 1.0, 1.0, 1.0)
    assert cfg.model.teacher_checkpoint is None
    assert cfg.data.num_workers > 0 and cfg.run.ckpt_every >= 1


def test_run_script_is_valid_bash_and_checks_its_inputs(tmp_path):
    script = RECIPE / "run.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(script), "resnet34_resnet18"], env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "DATA_DIR" in done.stderr
    done = subprocess.run(["bash", str(script), "nope"], capture_output=True, text=True,
                          env={**env, "DATA_DIR": str(tmp_path),
                               "TEACHER_WEIGHTS": str(tmp_path / "w.pth")})
    assert done.returncode != 0 and "resnet34_resnet18" in done.stderr


@pytest.mark.slow
def test_run_script_launches_torchrun_resumes_and_tracks(tree, resnet18_weights, tmp_path):
    import sys

    run_dir = tmp_path / "run"
    env = {**os.environ, "DATA_DIR": str(tree), "TEACHER_WEIGHTS": str(resnet18_weights),
           "NGPUS": "1", "MASTER_PORT": str(free_port()), "RUN_DIR": str(run_dir),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    # the recipe, shrunk to the toy tree: 4 classes, 32 pixels, CPU, one epoch per call
    toy = ["data.name=imagefolder", "data.options.image_size=32", "data.options.resize=36",
           "data.batch_size=8", "data.eval_batch_size=16", "data.num_workers=0",
           "data.persistent_workers=false", "model.teacher=resnet18", "model.student=resnet20",
           "run.device=cpu", "run.ckpt_every=1", "track.n_bootstrap=50",
           "track.n_permutations=20", "track.device=cpu"]
    command = ["bash", str(RECIPE / "run.sh"), "resnet34_resnet18", *toy, "optim.epochs=2",
               "optim.milestones=[1]"]

    def launch():
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    launch()
    last = run_dir / "checkpoints" / "epoch_0002.pt"
    finished = torch.load(last, weights_only=True)["model"]["state_dict"]
    last.unlink()  # as if the job had died during epoch 2
    launch()  # the same command resumes from epoch 1
    resumed = torch.load(last, weights_only=True)["model"]["state_dict"]
    assert finished.keys() == resumed.keys()
    assert all(torch.equal(finished[key], resumed[key]) for key in finished)
    rows = pd.read_csv(run_dir / BOUNDS_CSV).sort_values("epoch")
    assert list(rows["epoch"]) == [1, 2]
    for bound in EXACT_BOUNDS:
        assert (rows["student_err"] <= rows[bound] + 1e-12).all(), bound
