"""``ijckd-bounds demo``: the whole workflow on the embedded default data, in minutes.

Trains a teacher and the six students (CE, KD, FitNet, SRRL, SimKD, IJCKD) on ``digits``
(or another small dataset), estimates every bound term at every checkpoint as the students
train, makes every figure, and audits the weakest student. Re-running the same command
resumes whatever a killed demo left unfinished.
"""

import time
from dataclasses import dataclass
from pathlib import Path

from ijckd_bounds.errors import IJCKDError

METHODS = ("ce", "kd", "fitnet", "srrl", "simkd", "ijckd")


@dataclass(frozen=True)
class ExperimentSettings:
    """One dataset's teacher/student pair and training recipe."""

    teacher: str
    student: str
    teacher_epochs: int
    student_epochs: int
    batch_size: int
    lr: float
    schedule: str = "cosine"
    milestones: tuple = ()
    weight_decay: float = 5e-4
    device: str = "cpu"
    amp: str = "none"
    channels_last: bool = False


EXPERIMENTS = {
    # seconds on a laptop CPU
    "digits": ExperimentSettings(teacher="cnn_large", student="cnn_small", teacher_epochs=15,
                                 student_epochs=15, batch_size=64, lr=0.05),
    # a minute or two per student on a laptop CPU
    "mnist1d": ExperimentSettings(teacher="cnn_large", student="cnn_small", teacher_epochs=15,
                                  student_epochs=40, batch_size=64, lr=0.05),
    # the CRD/SimKD CIFAR-100 protocol: 240 epochs, lr 0.05 divided by 10 at 150/180/210;
    # needs the cifar-100-python archive in --data-dir and a GPU
    "cifar100": ExperimentSettings(teacher="resnet32x4", student="resnet8x4",
                                   teacher_epochs=240, student_epochs=240, batch_size=64,
                                   lr=0.05, schedule="multistep", milestones=(150, 180, 210),
                                   device="auto", amp="bf16", channels_last=True),
}
DEMO = {name: EXPERIMENTS[name] for name in ("digits", "mnist1d")}


def _config(dataset, settings, *, run_dir, seed, teacher_mode, method="ce", teacher_ckpt=None,
            epochs=None, data_dir=None):
    from ijckd_bounds.config import from_dict
    from ijckd_bounds.train import TrainConfig

    model = {"teacher": settings.teacher, "student": settings.student}
    if teacher_ckpt is not None:
        model["teacher_checkpoint"] = str(teacher_ckpt)
    optim = {"name": "sgd", "lr": settings.lr, "momentum": 0.9,
             "weight_decay": settings.weight_decay,
             "epochs": epochs or (settings.teacher_epochs if teacher_mode
                                  else settings.student_epochs),
             "schedule": settings.schedule}
    if settings.milestones:
        optim["milestones"] = list(settings.milestones)
    return from_dict(TrainConfig, {
        "data": {"name": dataset, "seed": 0, "batch_size": settings.batch_size,
                 "data_dir": data_dir},
        "model": model,
        "optim": optim,
        "method": {"name": method},
        "run": {"run_dir": str(run_dir), "seed": seed, "ckpt_every": 1,
                "device": settings.device, "amp": settings.amp,
                "channels_last": settings.channels_last},
        "track": {"layers": True},  # layers.csv and its figures
    })


def _final_error(table):
    """Per run: the error of what the student predicts with, at its last checkpoint."""
    last = table.sort_values("epoch").groupby("run").tail(1).set_index("run")
    own = last["student_own_err"]
    return own.where(own.notna(), last["student_err"]), last


def run_experiment(dataset="digits", out="demo_out", *, seeds=(0,), epochs=None, data_dir=None,
                   methods=METHODS, audit=True):
    """Teacher (trained once, seed ``seeds[0]``) and every method's student per seed, bound
    terms tracked online at every checkpoint, every figure, and an audit of the weakest
    student. Re-running resumes whatever is unfinished. Returns a summary dict."""
    from ijckd_bounds.audit import run_audit
    from ijckd_bounds.io import check_writable_dir
    from ijckd_bounds.plotting import make_all_figures
    from ijckd_bounds.plotting.layers import make_layer_figures
    from ijckd_bounds.tracking.table import collect, collect_layers
    from ijckd_bounds.tracking.track import BoundTracker, EstimatorSettings, track_run
    from ijckd_bounds.train import distill, latest_checkpoint, train_teacher

    if dataset not in EXPERIMENTS:
        raise IJCKDError(f"no experiment settings for dataset {dataset!r}; known: "
                         f"{', '.join(EXPERIMENTS)}")
    settings = EXPERIMENTS[dataset]
    out = Path(out)
    check_writable_dir(out, need_bytes=200 << 20)
    started = time.perf_counter()
    timings = {"train": 0.0, "track": 0.0}

    teacher_dir = out / "teacher"
    print(f"[{dataset}] teacher {settings.teacher} -> {teacher_dir}", flush=True)
    t0 = time.perf_counter()
    teacher_cfg = _config(dataset, settings, run_dir=teacher_dir, seed=seeds[0],
                          teacher_mode=True, data_dir=data_dir)
    if not (teacher_dir / "teacher.pt").is_file():
        train_teacher(teacher_cfg, resume=latest_checkpoint(teacher_dir) is not None)
    timings["train"] += time.perf_counter() - t0
    teacher_ckpt = teacher_dir / "teacher.pt"

    run_dirs = []
    jobs = [(seed, method) for seed in seeds for method in methods]
    for i, (seed, method) in enumerate(jobs, 1):
        estimator = EstimatorSettings(seed=seed)
        run_dir = out / "students" / f"{method}-s{seed}"
        run_dirs.append(run_dir)
        print(f"[{dataset}] student {i}/{len(jobs)}: {method} ({settings.student}, seed {seed})"
              f" -> {run_dir}", flush=True)
        cfg = _config(dataset, settings, run_dir=run_dir, seed=seed, teacher_mode=False,
                      method=method, teacher_ckpt=teacher_ckpt, epochs=epochs,
                      data_dir=data_dir)
        tracker = _TimedTracker(BoundTracker(run_dir, estimator, data_dir=data_dir))
        t0 = time.perf_counter()
        last = latest_checkpoint(run_dir)
        if last is None or _epoch_of(last) < cfg.optim.epochs:
            distill(cfg, resume=last is not None, callbacks=[tracker])
        timings["train"] += time.perf_counter() - t0 - tracker.seconds
        timings["track"] += tracker.seconds
        t0 = time.perf_counter()
        # checkpoints that a killed run left untracked
        track_run(run_dir, estimator, data_dir=data_dir, progress=False)
        timings["track"] += time.perf_counter() - t0

    print(f"[{dataset}] figures", flush=True)
    bounds = collect(run_dirs)
    per_class = collect(run_dirs, kind="per_class")
    margins = collect(run_dirs, kind="margins")
    figures = make_all_figures(bounds, per_class, margins, out / "figures")
    figures += make_layer_figures(collect_layers(run_dirs, missing_ok=True), out / "figures")

    errors, last = _final_error(bounds)
    report = None
    if audit:
        weakest = errors.idxmax()
        weakest_ckpt = (out / "students" / weakest / "checkpoints"
                        / last.loc[weakest, "checkpoint"])
        print(f"[{dataset}] audit of the weakest student: {weakest}", flush=True)
        report = run_audit(teacher=str(teacher_ckpt), student=str(weakest_ckpt),
                           data_dir=data_dir, out=out / "audit", seed=seeds[0])

    total = time.perf_counter() - started
    print("", flush=True)
    print(f"final student error (what each student predicts with), {dataset}:")
    for run, err in errors.sort_values().items():
        print(f"  {run:<12} {100 * err:5.1f}%   (student_err under h_T "
              f"{100 * last.loc[run, 'student_err']:5.1f}%, teacher "
              f"{100 * last.loc[run, 'teacher_err']:4.1f}%)")
    share = timings["track"] / max(timings["train"], 1e-9)
    print(f"\ntime: {total:.0f} s in all; training {timings['train']:.0f} s, bound tracking "
          f"{timings['track']:.0f} s ({100 * share:.0f}% of training)")
    print(f"bounds tables: {out / 'students'}/*/bounds.csv")
    print(f"figures:       {out / 'figures'} ({len(figures)} files)")
    if report is not None:
        print(f"audit:         {report}")
    return {"figures": figures, "report": report, "timings": timings, "errors": errors,
            "run_dirs": run_dirs}


def run_demo(dataset="digits", out="demo_out", epochs=None, seed=0):
    """The README's main command: ``run_experiment`` on a small dataset, one seed."""
    if dataset not in DEMO:
        raise IJCKDError(f"the demo runs on {', '.join(DEMO)}, got {dataset!r}; for larger "
                         f"data use experiments/bound_tracking.py")
    return run_experiment(dataset, out, seeds=(seed,), epochs=epochs)


def _epoch_of(path):
    try:
        return int(Path(path).stem.split("_")[-1])
    except ValueError:
        return -1


class _TimedTracker:
    """Wraps a callback and adds up the time spent in it (tracking cost vs training)."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = 0.0

    def on_checkpoint(self, path, epoch=None):
        t0 = time.perf_counter()
        self.inner.on_checkpoint(path, epoch)
        self.seconds += time.perf_counter() - t0

    def on_epoch_end(self, epoch, metrics):
        pass

    def on_step_end(self, step, epoch, values):
        pass
