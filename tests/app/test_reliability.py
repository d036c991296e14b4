"""Faults survived, nothing lost.

- ``ijckd-bounds track`` killed with SIGKILL (at chosen write boundaries and at seeded
  random moments) and re-run ends with the tables of an uninterrupted track: same rows, no
  duplicates, no temporary files left, every file parses.
- Two ``track`` processes on one run directory end with the same tables.
- A temporary file of a live writer survives another process's clean-up.
- A full disk or an unwritable directory fails with one line before any work; a full
  disk in the middle of a run loses no checkpoint and ``--resume`` finishes the run.
- A NaN/inf loss stops the run through the CLI naming step, term and last good checkpoint.
"""

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ijckd_bounds import io, schema
from ijckd_bounds.checkpoint import read_checkpoint
from ijckd_bounds.tracking import table
from tests.gloo_ranks import one_process_env

TRACK_SETTINGS = ["--n-bootstrap", "50", "--n-permutations", "20"]
# each table and the columns that identify one of its rows within a run
TABLE_KEYS = {"bounds.csv": ["checkpoint", "split"],
              "per_class.csv": ["checkpoint", "class"],
              "margins.csv": ["checkpoint", "sample"],
              "calibration.csv": ["checkpoint", "model", "bin"]}
COMMON = ["data.name=digits", "data.batch_size=64", "optim.lr=0.05", "run.device=cpu",
          "run.progress=false"]


def one_line(err):
    return err.count("\n") == 1 and "Traceback" not in err


def track_process(run_dir):
    return subprocess.Popen([sys.executable, "-m", "ijckd_bounds", "track", str(run_dir),
                             *TRACK_SETTINGS], env=one_process_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


# Runs `ijckd-bounds track` and SIGKILLs itself at one write boundary:
# argv[1] = "before|after:<file name>:<n>": just before / just after the n-th atomic rename
# onto <file name> (before: the temporary file is complete but not yet in place).
KILL_AT_RENAME = r"""
import os, signal, sys
from pathlib import Path

when, target, nth = sys.argv[1].split(":")
nth, seen, real_replace = int(nth), [0], os.replace

def replace(src, dst, *args, **kwargs):
    hit = False
    if Path(dst).name == target:
        seen[0] += 1
        hit = seen[0] == nth
    if hit and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst, *args, **kwargs)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
from ijckd_bounds.app.cli import main
sys.exit(main(sys.argv[2:]))
"""


def killed_at(point, *argv):
    """Run ``ijckd-bounds ARGV`` in a subprocess that SIGKILLs itself at ``point``."""
    result = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, point, *map(str, argv)],
                            env=one_process_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, (point, result.returncode, result.stderr)


def track_killed_at(run_dir, point):
    killed_at(point, "track", run_dir, *TRACK_SETTINGS)


def track_to_completion(run_dir):
    result = subprocess.run([sys.executable, "-m", "ijckd_bounds", "track", str(run_dir),
                             *TRACK_SETTINGS], env=one_process_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def temp_files(run_dir):
    return sorted(p.name for p in Path(run_dir).rglob("*.tmp"))


def assert_every_file_parses(run_dir):
    """Whatever a killed tracker left under the final names is whole."""
    for name in TABLE_KEYS:
        path = Path(run_dir) / name
        if path.exists():
            df = table.read_table(path, kind=name[:-4])  # bounds.csv: schema-checked too
            assert not df.duplicated(TABLE_KEYS[name]).any(), name
    cache = Path(run_dir) / "teacher_features.pt"
    if cache.exists():
        assert torch.isfinite(io.load_torch(cache)["z_t"]).all()


def read_tables(run_dir):
    """Each table sorted by its row key (a re-estimated checkpoint's rows come last)."""
    tables = {}
    for name, key in TABLE_KEYS.items():
        df = pd.read_csv(Path(run_dir) / name)
        assert not df.duplicated(key).any(), f"duplicate rows in {name}"
        tables[name] = df.sort_values(key).reset_index(drop=True)
    return tables


def assert_same_tables(run_dir, reference):
    got = read_tables(run_dir)
    for name, want in reference.items():
        assert list(got[name].columns) == list(want.columns), name
        assert len(got[name]) == len(want), name
        pd.testing.assert_frame_equal(got[name], want, check_exact=False, rtol=0, atol=1e-12,
                                      obj=name)
    assert temp_files(run_dir) == []


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def untracked_run(digits_runs, tmp_path_factory, cli_setup):
    """A KD student (3 epochs, 3 checkpoints) of the shared digits teacher."""
    run = tmp_path_factory.mktemp("reliability") / "kd"
    cli_setup("distill", "method.name=kd", "model.student=mlp_small", "optim.epochs=3",
              f"model.teacher_checkpoint={digits_runs / 'teacher' / 'teacher.pt'}",
              f"run.run_dir={run}", *COMMON)
    return run


@pytest.fixture(scope="module")
def reference(untracked_run, tmp_path_factory, copy_run):
    """Tables of one uninterrupted track in a subprocess, and how long its writing took."""
    run_dir = copy_run(untracked_run, tmp_path_factory.mktemp("reference"))
    process = track_process(run_dir)
    first_write = _wait_for_first_write(process, run_dir, time.time())
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    return {"tables": read_tables(run_dir), "run_dir": run_dir,
            "writing_s": time.monotonic() - first_write}


def _wait_for_first_write(process, run_dir, launched, timeout=300):
    """Monotonic time at which ``process`` first wrote a file into ``run_dir``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        for path in Path(run_dir).iterdir():
            try:
                written = path.is_file() and path.stat().st_mtime >= launched
            except FileNotFoundError:  # a temporary file renamed under our feet
                continue
            if written and not path.name.endswith(".lock"):
                return time.monotonic()
        time.sleep(0.005)
    return time.monotonic()


# ------------------------------------------------------------- tracking killed and re-run


@pytest.mark.slow
def test_track_killed_at_every_write_boundary_resumes_to_identical_tables(
        untracked_run, reference, tmp_path, copy_run):
    run_dir = copy_run(untracked_run, tmp_path)

    # 1. the teacher feature cache complete in its temporary file, not yet renamed
    track_killed_at(run_dir, "before:teacher_features.pt:1")
    assert not (run_dir / "teacher_features.pt").exists()
    assert [n.startswith(".teacher_features.pt.") for n in temp_files(run_dir)] == [True]
    assert_every_file_parses(run_dir)

    # 2. the first checkpoint's per-class rows in place, its margins and bounds row not yet
    #    (bounds.csv is written last: a checkpoint listed there is complete)
    track_killed_at(run_dir, "after:per_class.csv:1")
    assert temp_files(run_dir) == []  # the dead writer's cache file was cleared
    assert not (run_dir / "bounds.csv").exists()
    assert pd.read_csv(run_dir / "per_class.csv")["checkpoint"].unique().tolist() == [
        "epoch_0001.pt"]
    assert_every_file_parses(run_dir)

    # 3. that checkpoint estimated again, killed before its margin table is in place
    track_killed_at(run_dir, "before:margins.csv:1")
    assert not (run_dir / "margins.csv").exists()
    assert not (run_dir / "bounds.csv").exists()
    assert_every_file_parses(run_dir)

    # 4. its margins written, killed before its bounds row
    track_killed_at(run_dir, "after:margins.csv:1")
    assert not (run_dir / "bounds.csv").exists()
    assert len(pd.read_csv(run_dir / "per_class.csv")["checkpoint"].unique()) == 1
    assert_every_file_parses(run_dir)

    # 5. the first checkpoint complete, killed after the second's per-class rows
    track_killed_at(run_dir, "after:per_class.csv:2")
    assert pd.read_csv(run_dir / "bounds.csv")["checkpoint"].tolist() == ["epoch_0001.pt"]
    assert len(pd.read_csv(run_dir / "per_class.csv")["checkpoint"].unique()) == 2
    assert_every_file_parses(run_dir)

    track_to_completion(run_dir)
    assert_same_tables(run_dir, reference["tables"])


@pytest.mark.slow
def test_track_killed_at_random_moments_resumes_to_identical_tables(untracked_run, reference,
                                                                    tmp_path, copy_run):
    run_dir = copy_run(untracked_run, tmp_path)
    rng = random.Random(20240611)
    kills = attempts = 0
    latest = 0.9 * reference["writing_s"]
    while attempts < 3 or (kills == 0 and attempts < 8):
        attempts += 1
        launched = time.time()
        process = track_process(run_dir)
        _wait_for_first_write(process, run_dir, launched - 1.0)
        # anywhere in the writing phase (estimates, table rewrites, renames)
        time.sleep(rng.uniform(0.0, latest))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.communicate(timeout=300)
        assert process.returncode in (0, -signal.SIGKILL)
        assert_every_file_parses(run_dir)
        if process.returncode == 0 and kills == 0:
            # the machine wrote faster than when the reference was timed: start again
            # from the untracked run with kills drawn earlier
            shutil.rmtree(run_dir)
            run_dir = copy_run(untracked_run, tmp_path)
            latest /= 2
    assert kills >= 1, "no kill landed while the tracker was running"
    track_to_completion(run_dir)
    assert_same_tables(run_dir, reference["tables"])


@pytest.mark.slow
def test_two_concurrent_trackers_write_the_tables_of_one(untracked_run, reference, tmp_path,
                                                         copy_run):
    run_dir = copy_run(untracked_run, tmp_path)
    first, second = track_process(run_dir), track_process(run_dir)
    for process in (first, second):
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0, out
    assert_same_tables(run_dir, reference["tables"])
    # and a third run finds nothing left to do
    assert "3 checkpoint rows" in track_to_completion(run_dir).stdout
    assert_same_tables(run_dir, reference["tables"])


@pytest.mark.slow
def test_training_killed_inside_a_checkpoint_write_resumes_without_leftovers(tmp_path):
    argv = ["train-teacher", "model.teacher=mlp_large", "method.name=ce", "optim.epochs=3",
            f"run.run_dir={tmp_path / 'run'}", *COMMON]
    killed_at("before:epoch_0002.pt:1", *argv)  # the checkpoint whole, not yet renamed
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.endswith(".tmp")) == [
        "epoch_0001.pt"]
    assert [n.startswith(".epoch_0002.pt.") for n in temp_files(tmp_path / "run")] == [True]
    result = subprocess.run([sys.executable, "-m", "ijckd_bounds", *argv, "--resume"],
                            env=one_process_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    assert temp_files(tmp_path / "run") == []  # rewriting epoch 2 cleared its leftover
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert read_checkpoint(tmp_path / "run" / "teacher.pt")["epoch"] == 3


def test_a_bounds_row_without_its_companions_is_estimated_again(reference, tmp_path):
    """What a tracker killed between bounds.csv and per_class.csv leaves: the checkpoint
    must not count as tracked (unit view of step 2 above)."""
    run_dir = tmp_path / "kd"
    shutil.copytree(reference["run_dir"], run_dir)
    per_class = pd.read_csv(run_dir / "per_class.csv")
    per_class[per_class["checkpoint"] != "epoch_0002.pt"].to_csv(run_dir / "per_class.csv",
                                                                   index=False)
    dropped = table.drop_incomplete_checkpoints(
        run_dir / "bounds.csv", [run_dir / "per_class.csv", run_dir / "margins.csv"])
    assert dropped == [("kd", "epoch_0002.pt")]
    assert sorted(pd.read_csv(run_dir / "bounds.csv")["checkpoint"]) == ["epoch_0001.pt",
                                                                         "epoch_0003.pt"]
    assert table.drop_incomplete_checkpoints(
        run_dir / "bounds.csv", [run_dir / "per_class.csv", run_dir / "margins.csv"]) == []


def test_upsert_replaces_rows_of_a_run_with_a_numeric_name(tmp_path):
    """A run directory named "007" is read back as 7 by pandas: its rows must still be
    replaced on a re-write, not added again."""
    path = tmp_path / "per_class.csv"
    rows = pd.DataFrame({column: [0] for column in schema.PER_CLASS_COLUMNS})
    rows["run"], rows["checkpoint"] = "007", "epoch_0001.pt"
    table.append_per_class(path, rows)
    table.append_per_class(path, rows.assign(n=5))
    written = pd.read_csv(path, dtype={"run": str})
    assert written["run"].tolist() == ["007"] and written["n"].tolist() == [5]


def test_stale_temp_cleanup_spares_live_writers(tmp_path):
    """A second tracker's clean-up must not delete the first one's file in progress."""
    host = io._host_tag()
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True).stdout)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / f".history.csv.{host}-{dead_pid}.k1ll3d.tmp"
        live = tmp_path / f".margins.csv.{host}-{sleeper.pid}.w0rk1n.tmp"
        legacy = tmp_path / ".per_class.csv.abc123.tmp"
        foreign = tmp_path / f".teacher_features.pt.h{'0' * 8}-{dead_pid}.zz.tmp"
        if host == f"h{'0' * 8}":  # pragma: no cover - a host whose tag is all zeros
            foreign = tmp_path / f".teacher_features.pt.h{'1' * 8}-{dead_pid}.zz.tmp"
        for path in (dead, live, legacy, foreign):
            path.write_text("half a table")
        target = tmp_path / "bounds.csv"
        with io.atomic_path(target) as own:  # this process's own write in progress
            own.write_text("a,b\n1,2\n")
            removed = table.remove_stale_temp_files(tmp_path)
            assert own.exists()
        assert sorted(removed) == sorted([dead, legacy])
        assert live.exists() and foreign.exists()  # a live writer; another host's, recent
        assert target.read_text() == "a,b\n1,2\n"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_rewriting_a_file_clears_its_killed_writers_temp_file(tmp_path):
    """A resumed run rewrites the checkpoint whose write was killed: that write removes
    the dead writer's half-written temporary file."""
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True).stdout)
    leftover = tmp_path / f".epoch_0002.pt.{io._host_tag()}-{dead_pid}.abcd12.tmp"
    other = tmp_path / f".epoch_0003.pt.{io._host_tag()}-{dead_pid}.abcd12.tmp"
    leftover.write_bytes(b"\x80\x02half")
    other.write_bytes(b"\x80\x02half")
    io.atomic_write_bytes(tmp_path / "epoch_0002.pt", b"whole")
    assert not leftover.exists() and other.exists()  # only that file's leftovers
    assert (tmp_path / "epoch_0002.pt").read_bytes() == b"whole"


# ----------------------------------------------------- full disk, unwritable directories


def _full_disk(monkeypatch):
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: type(usage)(usage.total, usage.total, 0))


def _forbid(monkeypatch, module, name):
    """Make ``module.name`` fail the test if the command gets as far as calling it."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f"{module.__name__}.{name} ran before the output was checked")

    monkeypatch.setattr(module, name, forbidden)


def _command(kind, tmp_path, reference, monkeypatch, out):
    """argv of ``kind`` writing to ``out``, with its expensive first step forbidden."""
    import ijckd_bounds.app.audit as audit_module
    import ijckd_bounds.data as data_module
    import ijckd_bounds.plotting as plotting_module
    import ijckd_bounds.tracking.track as track_module
    import ijckd_bounds.train as train_module

    if kind == "train-teacher":
        _forbid(monkeypatch, data_module, "build_dataset")
        return ["train-teacher", "model.teacher=mlp_large", "method.name=ce",
                f"run.run_dir={out}", *COMMON]
    if kind == "distill":
        _forbid(monkeypatch, data_module, "build_dataset")
        return ["distill", "method.name=kd", "model.student=mlp_small",
                f"model.teacher_checkpoint={tmp_path / 'teacher.pt'}", f"run.run_dir={out}",
                *COMMON]
    if kind == "track":
        _forbid(monkeypatch, track_module, "teacher_features")
        _forbid(monkeypatch, track_module, "load_student")
        return ["track", out, *TRACK_SETTINGS]
    if kind == "plot":
        _forbid(monkeypatch, plotting_module, "make_all_figures")
        return ["plot", reference["run_dir"], "--out", out]
    if kind == "audit":
        _forbid(monkeypatch, audit_module, "_feature_inputs")
        return ["audit", "--features", tmp_path / "features.npz", "--out", out]
    if kind == "demo":
        _forbid(monkeypatch, train_module, "train_teacher")
        return ["demo", "--out", out]
    raise ValueError(kind)


COMMANDS = ("train-teacher", "distill", "track", "plot", "audit", "demo")


@pytest.mark.parametrize("kind", COMMANDS)
def test_full_disk_fails_before_any_work(kind, tmp_path, reference, monkeypatch, run_cli,
                                         copy_run):
    out = tmp_path / "out"
    if kind == "track":  # tracking needs an existing run directory with checkpoints
        out = copy_run(reference["run_dir"], tmp_path)
    argv = _command(kind, tmp_path, reference, monkeypatch, out)
    _full_disk(monkeypatch)
    code, _, err = run_cli(*argv)
    assert code == 2
    assert f"ijckd-bounds {kind}: error: directory {str(out)!r} has 0.0 MiB free, need at " \
           f"least" in err
    assert one_line(err)


@pytest.mark.parametrize("kind", COMMANDS)
def test_unwritable_directory_fails_before_any_work(kind, tmp_path, reference, monkeypatch,
                                                    run_cli, copy_run):
    # tests run as root, whom chmod does not stop: refuse the write probe instead (what a
    # read-only mount or another user's directory does)
    out = tmp_path / "out"
    if kind == "track":
        out = copy_run(reference["run_dir"], tmp_path)
    argv = _command(kind, tmp_path, reference, monkeypatch, out)
    real_mkstemp = io.tempfile.mkstemp

    def refused(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == out:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(io.tempfile, "mkstemp", refused)
    code, _, err = run_cli(*argv)
    assert code == 2
    assert f"error: directory {str(out)!r} is not writable: Permission denied" in err
    assert one_line(err)


@pytest.mark.parametrize("kind", ["train-teacher", "distill", "plot", "audit", "demo"])
def test_directory_under_a_regular_file_fails_before_any_work(kind, tmp_path, reference,
                                                              monkeypatch, run_cli):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = blocker / "out"
    argv = _command(kind, tmp_path, reference, monkeypatch, out)
    code, _, err = run_cli(*argv)
    assert code == 2
    assert f"error: cannot create directory {str(out)!r}: Not a directory" in err
    assert one_line(err)


def test_track_of_a_missing_run_directory_creates_nothing(tmp_path, run_cli):
    code, _, err = run_cli("track", tmp_path / "nope", *TRACK_SETTINGS)
    assert code == 2 and one_line(err)
    assert f"run directory {str(tmp_path / 'nope')!r} does not exist" in err
    assert not (tmp_path / "nope").exists()


def test_disk_full_mid_run_loses_no_checkpoint_and_resume_finishes(tmp_path, monkeypatch, cli,
                                                                   run_cli):
    argv = ["train-teacher", "model.teacher=mlp_large", "method.name=ce", "optim.epochs=3",
            *COMMON]
    cli(*argv, f"run.run_dir={tmp_path / 'full'}")

    real_save = torch.save
    saves = {"n": 0}

    def disk_full_at_second_checkpoint(obj, path, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == "ijckd_bounds.checkpoint":
            saves["n"] += 1
            if saves["n"] == 2:
                with open(path, "wb") as fh:  # half written, then the disk is full
                    fh.write(b"\x80\x02partial")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(obj, path, *args, **kwargs)

    cut = tmp_path / "cut"
    monkeypatch.setattr(torch, "save", disk_full_at_second_checkpoint)
    code, _, err = run_cli(*argv, f"run.run_dir={cut}")
    assert code == 1 and one_line(err)
    assert err.startswith("ijckd-bounds train-teacher: error: No space left on device")
    assert sorted(os.listdir(cut / "checkpoints")) == ["epoch_0001.pt"]  # no partial file
    monkeypatch.setattr(torch, "save", real_save)

    cli(*argv, f"run.run_dir={cut}", "--resume")
    got = read_checkpoint(cut / "teacher.pt")["model"]["state_dict"]
    want = read_checkpoint(tmp_path / "full" / "teacher.pt")["model"]["state_dict"]
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert temp_files(cut) == []


# -------------------------------------------------------------------------- NaN losses


def test_diverging_run_stops_before_writing_nan_weights(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    # 1e12 without a dot: YAML 1.1 reads it as text, the config loader as the number
    code, _, err = run_cli("train-teacher", "model.teacher=mlp_large", "method.name=ce",
                           *COMMON, "optim.lr=1e12", "optim.momentum=0", "optim.epochs=2",
                           f"run.run_dir={run_dir}")
    assert code == 2 and one_line(err)
    assert err.startswith("ijckd-bounds train-teacher: error: loss term 'ce' is ")
    assert "stopped before the update. Last good checkpoint: none yet" in err
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    assert not (run_dir / "teacher.pt").exists()


def test_nan_loss_through_the_cli_names_step_term_and_checkpoint(untracked_run, tmp_path,
                                                                 poison_kd_loss, cli, run_cli,
                                                                 digits_runs):
    history = pd.read_csv(untracked_run / "history.csv")  # same data and batch size
    steps_per_epoch = int(history.loc[history["epoch"] == 1, "step"].iloc[0])
    poison_at = steps_per_epoch + 2
    cure = poison_kd_loss(poison_at, float("inf"))
    run_dir = tmp_path / "run"
    teacher = digits_runs / "teacher" / "teacher.pt"
    argv = ["distill", "method.name=kd", "model.student=mlp_small", "optim.epochs=3",
            f"model.teacher_checkpoint={teacher}", f"run.run_dir={run_dir}", *COMMON]
    code, _, err = run_cli(*argv)
    good = run_dir / "checkpoints" / "epoch_0001.pt"
    assert code == 2 and one_line(err)
    assert err == (f"ijckd-bounds distill: error: loss term 'kl' is inf at step {poison_at} "
                   f"(epoch 2); stopped before the update. Last good checkpoint: {good}\n")
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["epoch_0001.pt"]
    state = read_checkpoint(good)["model"]["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())

    cure()
    cli(*argv, "--resume")  # the way back: resume from the named checkpoint
    assert sorted(os.listdir(run_dir / "checkpoints")) == [
        "epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    assert np.isfinite(pd.read_csv(run_dir / "history.csv")["train_loss"]).all()
