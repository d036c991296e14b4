"""Bad input gets one readable line on stderr and exit code 2, never a traceback.

Every case goes through the command line (``ijckd_bounds.app.cli.main``): corrupt, truncated
and mismatched checkpoints, teachers and students of different datasets or class counts,
malformed feature files, overlapping/empty/single-class splits, unknown names, malformed
YAML and unknown config keys.
"""

import re

import numpy as np
import pytest
import torch

from ijckd_bounds.app.cli import main

COMMON = ["data.batch_size=64", "optim.epochs=1", "optim.lr=0.05", "run.device=cpu",
          "run.progress=false"]


@pytest.fixture(scope="module")
def runs(digits_runs, tmp_path_factory, cli_setup):
    """The shared digits runs (``teacher``, ``kd``, ``ijckd``; 2 epochs) and a second
    digits teacher ``teacher_b`` (MLP, seed 1, 1 epoch): name -> run directory."""
    other = tmp_path_factory.mktemp("bad_input") / "teacher_b"
    cli_setup("train-teacher", "model.teacher=mlp_large", "method.name=ce", "run.seed=1",
              f"run.run_dir={other}", *COMMON)
    return {**{name: digits_runs / name for name in ("teacher", "kd", "ijckd")},
            "teacher_b": other}


def _payload(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- checkpoints


def test_truncated_student_checkpoint(runs, tmp_path, cli_fails):
    data = (runs["kd"] / "checkpoints" / "epoch_0001.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    err = cli_fails("audit", "--student", bad, "--out", tmp_path / "audit")
    assert f"student checkpoint {str(bad)!r} is corrupt, truncated or not a torch file" in err


def test_garbage_teacher_checkpoint(runs, tmp_path, cli_fails):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"this is not a checkpoint")
    err = cli_fails("distill", "method.name=kd", "model.student=mlp_small",
                    f"model.teacher_checkpoint={bad}", f"run.run_dir={tmp_path / 'run'}", *COMMON)
    assert f"teacher checkpoint {str(bad)!r} is corrupt, truncated or not a torch file" in err


def test_torch_file_that_is_no_checkpoint(tmp_path, cli_fails):
    other = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    err = cli_fails("audit", "--student", other, "--out", tmp_path / "audit")
    assert f"student checkpoint {str(other)!r} is not an ijckd_bounds checkpoint" in err


def test_corrupt_checkpoint_inside_a_run_stops_track(runs, tmp_path, cli_fails):
    import shutil

    run = tmp_path / "kd"
    shutil.copytree(runs["kd"] / "checkpoints", run / "checkpoints")
    bad = run / "checkpoints" / "epoch_0002.pt"
    bad.write_bytes(b"\x80\x02\x8a\x0alf")  # a torch header cut after a few bytes
    err = cli_fails("track", run, "--n-bootstrap", 20, "--n-permutations", 10)
    assert "is corrupt, truncated or not a torch file" in err and "epoch_0002.pt" in err


def test_resume_from_a_truncated_checkpoint(runs, tmp_path, cli_fails):
    import shutil

    run = tmp_path / "kd"
    shutil.copytree(runs["kd"], run)
    # the only checkpoint left is cut short: no earlier complete one to fall back on
    (run / "checkpoints" / "epoch_0002.pt").unlink()
    latest = run / "checkpoints" / "epoch_0001.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    err = cli_fails("distill", "method.name=kd", "model.student=mlp_small",
                    f"model.teacher_checkpoint={runs['teacher'] / 'teacher.pt'}",
                    f"run.run_dir={run}", "--resume", *COMMON, "optim.epochs=2")
    assert f"{str(latest)!r} is corrupt, truncated or not a torch file" in err


def _run_with_teacher_path(runs, tmp_path, teacher_path):
    """A copy of the KD run whose checkpoints name ``teacher_path`` as their teacher."""
    run = tmp_path / "kd"
    (run / "checkpoints").mkdir(parents=True)
    for source in (runs["kd"] / "checkpoints").glob("*.pt"):
        payload = _payload(source)
        payload["teacher"]["path"] = str(teacher_path)
        torch.save(payload, run / "checkpoints" / source.name)
    return run


def test_track_when_the_teacher_file_is_gone(runs, tmp_path, cli_fails):
    gone = tmp_path / "moved" / "teacher.pt"
    run = _run_with_teacher_path(runs, tmp_path, gone)
    err = cli_fails("track", run, "--n-bootstrap", 20, "--n-permutations", 10)
    assert f"{str(gone)!r} does not exist" in err


def test_track_when_the_teacher_file_was_replaced(runs, tmp_path, cli_fails):
    import shutil

    replaced = tmp_path / "teacher.pt"
    shutil.copy(runs["teacher_b"] / "teacher.pt", replaced)  # retrained in place
    run = _run_with_teacher_path(runs, tmp_path, replaced)
    err = cli_fails("track", run, "--n-bootstrap", 20, "--n-permutations", 10)
    assert f"{str(replaced)!r} has changed since the student was distilled from it" in err


def test_checkpoint_of_another_model(runs, tmp_path, cli_fails):
    payload = _payload(runs["kd"] / "checkpoints" / "epoch_0001.pt")
    payload["model"]["name"] = "cnn_small"
    other = tmp_path / "other_model.pt"
    torch.save(payload, other)
    err = cli_fails("audit", "--student", other, "--out", tmp_path / "audit")
    assert err.endswith(f"student checkpoint {str(other)!r} does not fit model 'cnn_small': "
                        f"key 'body.0.weight' of the model is missing from the checkpoint")


def test_checkpoint_of_another_width(runs, tmp_path, cli_fails):
    payload = _payload(runs["kd"] / "checkpoints" / "epoch_0001.pt")
    payload["model"]["options"] = {"hidden_sizes": [48]}
    wider = tmp_path / "wider.pt"
    torch.save(payload, wider)
    err = cli_fails("audit", "--student", wider, "--out", tmp_path / "audit")
    assert err.endswith(f"student checkpoint {str(wider)!r} does not fit model 'mlp_small': "
                        f"'body.1.weight' has shape (32, 64) in the checkpoint, (48, 64) in the "
                        f"model (another width?)")


@pytest.mark.parametrize(("override", "changed"), [
    ("model.student_options={hidden_sizes: [48]}",
     "config key model.student_options was {}, now {'hidden_sizes': [48]}"),
    ("model.student=mlp_large", "config key model.student was 'mlp_small', now 'mlp_large'"),
])
def test_resume_with_another_model_or_width_than_the_checkpoint(runs, tmp_path,
                                                                 override, changed, cli_fails):
    import shutil

    run = tmp_path / "kd"
    shutil.copytree(runs["kd"], run)
    err = cli_fails("distill", "method.name=kd", "model.student=mlp_small",
                    f"model.teacher_checkpoint={runs['teacher'] / 'teacher.pt'}",
                    f"run.run_dir={run}", "--resume", *COMMON, "optim.epochs=2", override)
    assert f"cannot resume from {str(run / 'checkpoints' / 'epoch_0002.pt')!r}: {changed}" \
           in err


def test_teacher_checkpoint_of_another_model_than_configured(runs, tmp_path, cli_fails):
    teacher = runs["teacher"] / "teacher.pt"
    err = cli_fails("distill", "method.name=kd", "model.student=mlp_small",
                    "model.teacher=cnn_large", f"model.teacher_checkpoint={teacher}",
                    f"run.run_dir={tmp_path / 'run'}", *COMMON)
    assert err.endswith(f"model.teacher is 'cnn_large' but teacher checkpoint {str(teacher)!r} "
                        f"holds a 'mlp_large'")


# ------------------------------------------------------- datasets and class counts differ


def test_distill_on_another_dataset_than_the_teacher(runs, tmp_path, cli_fails):
    teacher = runs["teacher"] / "teacher.pt"
    err = cli_fails("distill", "method.name=kd", "model.student=mlp_small",
                    f"model.teacher_checkpoint={teacher}", f"run.run_dir={tmp_path / 'run'}",
                    *COMMON, "data.name=mnist1d", "data.options={num_samples: 200}")
    assert err.endswith(f"teacher checkpoint {str(teacher)!r} was trained on dataset 'digits', "
                        f"this run distills on 'mnist1d'")


def _tensors_file(path, n_classes, seed):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), 40)
    x = (rng.normal(size=(len(y), 6)) + y[:, None]).astype(np.float32)
    np.savez(path, x=x, y=y)
    return path


def test_distill_with_a_teacher_of_another_class_count(tmp_path, cli, cli_fails):
    three = _tensors_file(tmp_path / "three.npz", 3, 0)
    four = _tensors_file(tmp_path / "four.npz", 4, 1)
    cli("train-teacher", "model.teacher=mlp_large", "method.name=ce", "data.name=tensors",
        f"data.options={{path: {three}}}", f"run.run_dir={tmp_path / 'teacher'}", *COMMON)
    teacher = tmp_path / "teacher" / "teacher.pt"
    err = cli_fails("distill", "method.name=kd", "model.student=mlp_small",
                    "data.name=tensors", f"data.options={{path: {four}}}",
                    f"model.teacher_checkpoint={teacher}", f"run.run_dir={tmp_path / 'run'}",
                    *COMMON)
    assert err.endswith(f"teacher checkpoint {str(teacher)!r} predicts 3 classes, dataset "
                        f"'tensors' has 4")


def test_audit_teacher_and_student_of_different_datasets(runs, tmp_path, cli_fails):
    payload = _payload(runs["teacher"] / "teacher.pt")
    payload["dataset"] = dict(payload["dataset"], name="mnist1d", input_shape=[1, 40])
    foreign = tmp_path / "mnist1d_teacher.pt"
    torch.save(payload, foreign)
    student = runs["kd"] / "checkpoints" / "epoch_0001.pt"
    err = cli_fails("audit", "--teacher", foreign, "--student", student,
                    "--out", tmp_path / "audit")
    assert err.endswith(f"teacher checkpoint {str(foreign)!r} was trained on dataset 'mnist1d', "
                        f"student checkpoint {str(student)!r} on 'digits'; pass a teacher of "
                        f"the student's dataset (or --dataset to evaluate both on another)")
    assert not (tmp_path / "audit" / ".cache").exists()  # nothing computed


def test_audit_on_a_dataset_the_student_cannot_read(runs, tmp_path, cli_fails):
    student = runs["kd"] / "checkpoints" / "epoch_0001.pt"
    err = cli_fails("audit", "--student", student, "--dataset", "tensors",
                    "--data-dir", _tensors_file(tmp_path / "t.npz", 3, 0),
                    "--out", tmp_path / "audit")
    assert err.endswith(f"student checkpoint {str(student)!r} takes inputs of shape (1, 8, 8) "
                        f"(dataset 'digits'), dataset 'tensors' gives (6,)")


def test_audit_with_another_teacher_than_the_student_was_distilled_from(runs, tmp_path, cli_fails):
    student = runs["ijckd"] / "checkpoints" / "epoch_0001.pt"
    other = runs["teacher_b"] / "teacher.pt"
    err = cli_fails("audit", "--teacher", other, "--student", student,
                    "--out", tmp_path / "audit")
    assert re.search(rf"student checkpoint {re.escape(repr(str(student)))} was distilled from "
                     rf"a teacher file with sha256 [0-9a-f]{{12}}\.\.\., teacher checkpoint "
                     rf"{re.escape(repr(str(other)))} has [0-9a-f]{{12}}\.\.\.: its connector "
                     rf"maps into the other teacher's feature space$", err), err


# ------------------------------------------------------------------------- feature files


def _features(n=60, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 4.0
    y = np.tile(np.arange(k), 2 * n // k + 1)[: 2 * n]
    z = means[y] + rng.normal(size=(2 * n, d))
    return {"z_t": z[:n], "z_s": z[:n] + 0.1 * rng.normal(size=(n, d)), "y": y[:n],
            "weight": means, "bias": np.zeros(k), "z_t_fit": z[n:],
            "z_s_fit": z[n:] + 0.1 * rng.normal(size=(n, d)), "y_fit": y[n:]}


def _with(change):
    arrays = _features()
    change(arrays)
    return arrays


def _set(key, value):
    return lambda a: a.__setitem__(key, value(a) if callable(value) else value)


def _poke(key, row, col, value):
    def change(arrays):
        arrays[key] = arrays[key].astype(np.float64).copy()
        arrays[key][row, col] = value
    return change


def _set_y(key, value):
    def change(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key][0] = value
    return change


FEATURE_CASES = {
    "missing array": (lambda a: a.pop("weight"),
                      "is missing array(s) weight; it holds bias, y, y_fit, z_s, z_s_fit, z_t, "
                      "z_t_fit"),
    "missing fit array": (lambda a: a.pop("y_fit"),
                          "has z_t_fit, z_s_fit but not y_fit: the fit split needs all three"),
    "wrong width": (_set("z_s", lambda a: a["z_s"][:, :2]),
                    "`z_s` must have shape (n, 4) like `z_t`, got (n, 2)"),
    "wrong rows": (_set("z_s", lambda a: a["z_s"][:50]),
                   "`z_s` must have 60 rows like `z_t` (paired samples), got 50"),
    "3-d features": (_set("z_t", lambda a: a["z_t"][:, :, None]),
                     "`z_t` must be 2-D with shape (n, d), got shape (60, 4, 1)"),
    "wrong bias": (_set("bias", np.zeros(2)),
                   "`bias` must have shape (3,) like the rows of `weight`, got (2,)"),
    "nan": (_poke("z_t", 3, 1, np.nan), "`z_t` has NaN or infinite values in 1 of 60 rows"),
    "inf": (_poke("z_s_fit", 7, 0, np.inf),
            "`z_s_fit` has NaN or infinite values in 1 of 60 rows"),
    "nan weight": (_poke("weight", 0, 0, np.nan),
                   "`weight` has NaN or infinite values in 1 of 3 rows"),
    "label too large": (_set_y("y", 7), "`y` must hold class indices in [0, 3) (one per row "
                                        "of `weight`), got values from 0 to 7"),
    "negative label": (_set_y("y_fit", -1), "`y_fit` must hold class indices in [0, 3)"),
    "fractional labels": (_set("y", lambda a: a["y"] + 0.5),
                          "`y` must hold integer class indices, got non-integer values"),
    "text labels": (_set("y", lambda a: a["y"].astype(str)),
                    "array `y` of feature file"),
    "fit is the eval split": (lambda a: a.update(z_t_fit=a["z_t"], z_s_fit=a["z_s"],
                                                 y_fit=a["y"]),
                              "the fit split overlaps the evaluation split: 60 of the 60 "
                              "evaluation rows of `z_t` also appear in `z_t_fit`"),
    "fit overlaps eval": (lambda a: a.update(z_t_fit=np.concatenate([a["z_t_fit"][:50],
                                                                     a["z_t"][:10]])),
                          "the fit split overlaps the evaluation split: 10 of the 60 "
                          "evaluation rows"),
    "empty eval split": (lambda a: a.update(z_t=a["z_t"][:0], z_s=a["z_s"][:0], y=a["y"][:0]),
                         "`z_t` is empty (shape (0, 4))"),
    "empty fit split": (lambda a: a.update(z_t_fit=a["z_t_fit"][:0], z_s_fit=a["z_s_fit"][:0],
                                           y_fit=a["y_fit"][:0]),
                        "`z_t_fit` is empty (shape (0, 4))"),
    "single-class eval split": (_set("y", lambda a: np.full_like(a["y"], 2)),
                                "`y` must hold at least 2 classes, got only class 2 in all 60 "
                                "evaluation samples"),
    "single-class fit split": (_set("y_fit", lambda a: np.zeros_like(a["y_fit"])),
                               "`y_fit` must hold at least 2 classes, got only class 0 in all "
                               "60 fit samples"),
}


@pytest.mark.parametrize("case", sorted(FEATURE_CASES))
def test_bad_feature_file(case, tmp_path, cli_fails):
    change, message = FEATURE_CASES[case]
    path = tmp_path / "features.npz"
    np.savez(path, **_with(change))
    err = cli_fails("estimate", path, "--n-bootstrap", 20, "--n-permutations", 10)
    assert message in err
    if case == "text labels":
        assert "must hold numbers, got dtype <U" in err


@pytest.mark.parametrize("case", ["nan", "single-class fit split", "missing array"])
def test_bad_feature_file_in_the_audit(case, tmp_path, cli_fails):
    change, message = FEATURE_CASES[case]
    path = tmp_path / "features.npz"
    np.savez(path, **_with(change))
    err = cli_fails("audit", "--features", path, "--out", tmp_path / "audit",
                    "--n-bootstrap", 20)
    assert message in err
    assert not (tmp_path / "audit" / "report.md").exists()


def test_unreadable_feature_files(tmp_path, cli_fails):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    err = cli_fails("estimate", garbage)
    assert f"feature file {str(garbage)!r} is not a readable .npz file" in err
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], listed)
    err = cli_fails("estimate", listed)
    assert err.endswith(f"feature file {str(listed)!r} must hold a dict of named arrays, got list")
    text = tmp_path / "features.csv"
    text.write_text("z_t\n1\n")
    assert cli_fails("estimate", text).endswith("must be a .npz or .pt file")


def test_valid_feature_file_still_works(tmp_path):
    """The feature-file cases above are one change away from this working file."""
    path = tmp_path / "features.npz"
    np.savez(path, **_features())
    assert main(["estimate", str(path), "--n-bootstrap", "20", "--n-permutations", "10",
                 "--out", str(tmp_path / "row.json")]) == 0
    assert (tmp_path / "row.json").stat().st_size > 100


# ----------------------------------------------------------------- splits of a dataset


def _explicit(path, fit_is_eval=False, eval_size=30, eval_classes=2):
    rng = np.random.default_rng(0)

    def part(n, classes):
        y = np.arange(n) % classes
        return (rng.normal(size=(n, 5)) + y[:, None]).astype(np.float32), y

    x_train, y_train = part(60, 2)
    x_fit, y_fit = part(30, 2)
    x_eval, y_eval = part(eval_size, eval_classes)
    if fit_is_eval:
        x_fit, y_fit = x_eval.copy(), y_eval.copy()
    np.savez(path, x_train=x_train, y_train=y_train, x_fit=x_fit, y_fit=y_fit,
             x_eval=x_eval, y_eval=y_eval)
    return path


@pytest.mark.parametrize(("layout", "message"), [
    ({"fit_is_eval": True}, "the fit split overlaps the eval split: 30 of the 30 samples of "
                            "`x_eval` also appear in `x_fit`"),
    ({"eval_size": 0}, "`x_eval` must be a non-empty numeric array of shape (n, ...), got "
                       "float32 (0, 5)"),
    ({"eval_classes": 1}, "the eval split must hold >= 2 classes, got only class 0 "
                          "(30 samples)"),
])
def test_bad_dataset_splits_fail_before_training(layout, message, tmp_path, cli_fails):
    data = _explicit(tmp_path / "data.npz", **layout)
    err = cli_fails("train-teacher", "model.teacher=mlp_large", "method.name=ce",
                    "data.name=tensors", f"data.options={{path: {data}}}",
                    f"run.run_dir={tmp_path / 'run'}", *COMMON)
    assert message in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_split_fractions_that_leave_eval_empty(tmp_path, cli_fails):
    err = cli_fails("train-teacher", "model.teacher=mlp_large", "method.name=ce",
                    "data.options={fractions: [0.6, 0.2, 0.0001]}",
                    f"run.run_dir={tmp_path / 'run'}", *COMMON)
    assert err.endswith("split part 2 of [0.6, 0.2, 0.0001] would be empty with only 1797 "
                        "samples")


# ------------------------------------------------------------------------ unknown names


@pytest.mark.parametrize(("argv", "message"), [
    (["train-teacher", "model.teacher=mlp_large", "data.name=mnist_1d"],
     "unknown dataset 'mnist_1d' (did you mean 'mnist1d'?); valid: "),
    (["train-teacher", "model.teacher=mlp_larg"],
     "unknown model 'mlp_larg' (did you mean 'mlp_large'?); valid: "),
    (["distill", "method.name=fitnett", "model.student=mlp_small"],
     "unknown method 'fitnett' (did you mean 'fitnet'?); valid: "),
    (["distill", "method.name=kd", "model.student=mlp_smal",
      "model.teacher_checkpoint=PLACEHOLDER"],
     "unknown model 'mlp_smal' (did you mean 'mlp_small'?)"),
    (["train-teacher", "model.teacher=mlp_large", "optim.name=adamw"],
     "optim.name must be one of 'sgd', 'adam', got 'adamw' (did you mean 'adam'?)"),
    (["train-teacher", "model.teacher=mlp_large", "data.options={fractionz: [0.5, 0.2, 0.2]}"],
     "dataset 'digits' got unknown option(s) 'fractionz' (did you mean 'fractions'?); valid: "
     "fractions"),
    (["train-teacher", "model.teacher=mlp_large", "model.teacher_options={hidden_size: [8]}"],
     "model 'mlp_large' has no option 'hidden_size'"),
])
def test_unknown_names_in_training(argv, message, runs, tmp_path, cli_fails):
    argv = [a.replace("PLACEHOLDER", str(runs["teacher"] / "teacher.pt")) for a in argv]
    err = cli_fails(*argv, f"run.run_dir={tmp_path / 'run'}", *COMMON[:1])
    assert message in err


def test_unknown_dataset_in_audit_and_demo(runs, tmp_path, cli_fails):
    student = runs["kd"] / "checkpoints" / "epoch_0001.pt"
    err = cli_fails("audit", "--student", student, "--dataset", "digitz",
                    "--out", tmp_path / "audit")
    assert "unknown dataset 'digitz' (did you mean 'digits'?)" in err
    err = cli_fails("demo", "--dataset", "mnist-1d", "--out", tmp_path / "demo")
    assert "the demo runs on digits, mnist1d, got 'mnist-1d'" in err
    assert not (tmp_path / "demo").exists()


# ---------------------------------------------------------------------- YAML configs


@pytest.mark.parametrize(("text", "message"), [
    ("optim:\n  lr: [0.1\n", "is malformed YAML at line 3, column 1: "),
    ("optim:\n\tlr: 0.1\n", "is malformed YAML at line 2, column 1: found character '\\t' "
                            "that cannot start any token"),
    ("model: {teacher: mlp_large\n", "is malformed YAML at line 2"),
    ("- data\n- optim\n", "must hold a mapping of keys, got list"),
    ("optim: 3\n", "optim must be a mapping, got 3"),
    ("optimizer:\n  lr: 0.1\n", "unknown config key 'optimizer' (did you mean 'optim'?); "
                                "valid keys: data, method, model, optim, run"),
    ("optim:\n  lrr: 0.1\n", "unknown config key 'optim.lrr' (did you mean 'lr'?); valid "
                             "keys: epochs, gamma, lr, milestones, momentum, name, nesterov, "
                             "schedule, weight_decay"),
    ("optim:\n  epochs: many\n", "optim.epochs must be an integer, got 'many'"),
    ("optim:\n  lr: .nan\n", "optim.lr must be a finite number, got nan"),
])
def test_bad_yaml_config(text, message, tmp_path, cli_fails):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    err = cli_fails("train-teacher", "--config", config,
                    f"run.run_dir={tmp_path / 'run'}")
    assert message in err
    assert not (tmp_path / "run").exists()


def test_config_that_is_not_text(tmp_path, cli_fails):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"\xff\xfe\x00\x81binary")
    err = cli_fails("distill", "--config", config)
    assert err.endswith(f"config file {str(config)!r} is not UTF-8 text (byte 0xff at "
                        f"offset 0)")
    err = cli_fails("distill", "--config", tmp_path / "missing.yaml")
    assert err.endswith(f"config file {str(tmp_path / 'missing.yaml')!r} does not exist")


def test_unknown_key_in_yaml_names_the_closest_and_a_run_ckpt_typo(tmp_path, cli_fails):
    config = tmp_path / "config.yaml"
    config.write_text("run:\n  ckpt_evry: 2\n")
    err = cli_fails("train-teacher", "--config", config)
    assert "unknown config key 'run.ckpt_evry' (did you mean 'ckpt_every'?)" in err


def test_exponent_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads 1e-3 as text; the config loader takes it as the number it means."""
    from ijckd_bounds.train import TrainConfig
    from ijckd_bounds.typed_yaml import load_config

    config = tmp_path / "config.yaml"
    config.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5E-4\n")
    cfg = load_config(TrainConfig, config, ["optim.gamma=2e-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.gamma) == (1e-3, 5e-4, 0.2)
