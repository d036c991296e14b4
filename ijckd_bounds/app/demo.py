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
from ijckd_bounds.schema import DISTILLATION_METHODS as METHODS


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
    from ijckd_bounds.train import TrainConfig
    from ijckd_bounds.typed_yaml import from_dict

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
    from ijckd_bounds.app.audit import run_audit
    from ijckd_bounds.io import check_writable_dir
    from ijckd_bounds.plotting import make_all_figures
    from ijckd_bounds.plotting.layers import make_layer_figures
    from ijckd_bounds.track_config import TrackConfig
    from ijckd_bounds.tracking.table import collect, collect_layers
    from ijckd_bounds.tracking.track import BoundTracker, track_run
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
    teacher_ckpt = teacher_dir / "teacher.pt"
    teacher_cfg = _config(dataset, settings, run_dir=teacher_dir, seed=seeds[0],
                          teacher_mode=True, data_dir=data_dir)
    jobs = [(seed, method) for seed in seeds for method in methods]
    student_cfgs = {job: _config(dataset, settings, seed=job[0], method=job[1],
                                 run_dir=out / "students" / f"{job[1]}-s{job[0]}",
                                 teacher_mode=False, teacher_ckpt=teacher_ckpt, epochs=epochs,
                                 data_dir=data_dir) for job in jobs}
    # a folder of another demo's runs would show that demo's results as this one's
    _check_existing_runs(out, {teacher_dir: teacher_cfg,
                               **{Path(c.run.run_dir): c for c in student_cfgs.values()}})

    print(f"[{dataset}] teacher {settings.teacher} -> {teacher_dir}", flush=True)
    t0 = time.perf_counter()
    if not teacher_ckpt.is_file():
        train_teacher(teacher_cfg, resume=latest_checkpoint(teacher_dir) is not None)
    timings["train"] += time.perf_counter() - t0

    run_dirs = []
    for i, (seed, method) in enumerate(jobs, 1):
        estimator = TrackConfig(seed=seed)
        run_dir = out / "students" / f"{method}-s{seed}"
        run_dirs.append(run_dir)
        print(f"[{dataset}] student {i}/{len(jobs)}: {method} ({settings.student}, seed {seed})"
              f" -> {run_dir}", flush=True)
        cfg = student_cfgs[(seed, method)]
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
    calibration = collect(run_dirs, kind="calibration")
    figures = make_all_figures(bounds, per_class, margins, out / "figures",
                               calibration_df=calibration)
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

    index = write_index(out)
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
    first = [out / "figures" / "final_comparison.png"] + ([report] if report else [])
    print(f"\nopen first: {index} (every figure and table, one line each), then "
          + " and ".join(str(p) for p in first if Path(p).is_file()))
    return {"figures": figures, "report": report, "timings": timings, "errors": errors,
            "run_dirs": run_dirs, "index": index}


# one line per file stem of the demo's folder; a figure or table without an entry (one a
# newer version adds) is listed by its name
DESCRIPTIONS = {
    "final_comparison": "final student error per method with its interval, next to the "
                        "teacher's: open this first",
    "final_table": "the numbers of the final comparison as a table",
    "terms": "every bound term across epochs, one panel per term",
    "bounds": "each bound on the student error across epochs, against the error itself",
    "decomposition": "the student error split into the terms of docs/theory.md's budget",
    "per_class": "teacher-student disagreement per class at each epoch, one run",
    "margins": "teacher margin against the feature distance per evaluation sample, one run",
    "report": "the audit of the weakest student: its error budget and what to try",
    "bounds.json": "the audit's numbers, machine-readable",
    "bounds.csv": "one row per checkpoint: every term with its 95% interval",
    "per_class.csv": "per class and checkpoint: disagreement and errors",
    "margins.csv": "per evaluation sample and checkpoint: teacher margin, feature distance",
    "history.csv": "per epoch: every loss term and the accuracies",
    "steps.csv": "per optimizer step: every loss term",
}


def _describe(path):
    """The index line's description of ``path``: by its name, its stem, or the longest
    described stem it starts or ends with (``per_class_kd-s0``, ``digits_terms``)."""
    for key in (path.name, path.stem):
        if key in DESCRIPTIONS:
            return DESCRIPTIONS[key]
    stems = [k for k in DESCRIPTIONS if "." not in k
             and (path.stem.startswith(k + "_") or path.stem.endswith("_" + k))]
    return DESCRIPTIONS[max(stems, key=len)] if stems else None


def write_index(out):
    """``OUT/index.md``: every figure (PNG, with its PDF) and table in the demo's folder,
    one line each, from the files actually there. Returns its path."""
    from ijckd_bounds.io import atomic_write_text

    out = Path(out)
    sections = {"Figures": [], "Tables": [], "Audit": []}
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue  # caches and temporary files
        if relative.parts[0] == "audit" and path.suffix in (".md", ".json", ".png"):
            section = "Audit"
        elif path.suffix == ".png":
            section = "Figures"
        elif path.suffix in (".csv", ".md") and relative != Path("index.md"):
            section = "Tables"
        else:
            continue  # PDFs and .tex (beside their PNG / .md), checkpoints, configs
        text = _describe(path)
        also = [s for s in (".pdf", ".tex") if path.with_suffix(s).is_file()]
        extra = f" (and {', '.join(also)})" if also else ""
        line = f"- [`{relative.as_posix()}`]({relative.as_posix()}){extra}"
        sections[section].append(line + (f": {text}" if text else ""))
    lines = ["# What this folder holds", "",
             "Generated by `ijckd-bounds demo` from the files written. Start with "
             "`figures/final_comparison.png`, then `audit/report.md`.", ""]
    for title, entries in sections.items():
        if entries:
            lines += [f"## {title}", "", *entries, ""]
    atomic_write_text(out / "index.md", "\n".join(lines))
    return out / "index.md"


def run_demo(dataset="digits", out="demo_out", epochs=None, seed=0):
    """The README's main command: ``run_experiment`` on a small dataset, one seed."""
    if dataset not in DEMO:
        raise IJCKDError(f"the demo runs on {', '.join(DEMO)}, got {dataset!r}; for larger "
                         f"data use experiments/bound_tracking.py")
    return run_experiment(dataset, out, seeds=(seed,), epochs=epochs)


# a setting that differs from an earlier demo's in the same folder, and the flag giving it
_DEMO_FLAGS = {"optim.epochs": "--epochs"}


def _check_existing_runs(out, configs):
    """Refuse (before any work) a folder holding runs made with other settings: their old
    results would otherwise be shown as this command's. ``configs``: run dir -> the
    TrainConfig this command would train there."""
    import yaml

    from ijckd_bounds.train.runner import CONFIG_FILE, absolute_data_paths, config_difference
    from ijckd_bounds.typed_yaml import to_dict

    for run_dir, cfg in configs.items():
        saved_path = Path(run_dir) / CONFIG_FILE
        if not saved_path.is_file():
            continue
        try:
            saved = yaml.safe_load(saved_path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # training reports what is wrong with it
        difference = config_difference(saved, to_dict(absolute_data_paths(cfg)))
        if difference is None:
            continue
        key, old, new = difference
        flag = _DEMO_FLAGS.get(key)
        again = f"pass {flag} {old} to show it" if flag else "repeat its options to show it"
        raise IJCKDError(f"{str(out)!r} holds a demo made with {key}={old!r} "
                         f"({str(run_dir)!r}), this command asks for {new!r}; {again}, or "
                         f"choose another --out (or delete {str(out)!r}) to start over")


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
