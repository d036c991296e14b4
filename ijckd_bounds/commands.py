"""Implementations of the ``ijckd-bounds`` subcommands (argument parsing is in cli.py)."""

import json
import math
import sys
from pathlib import Path

from ijckd_bounds.errors import IJCKDError


def _echo(text):
    print(text, flush=True)


def cmd_list(args):
    from ijckd_bounds.data import dataset_names
    from ijckd_bounds.models import model_names
    from ijckd_bounds.train import method_names

    _echo("datasets: " + ", ".join(dataset_names()))
    _echo("models:   " + ", ".join(model_names()))
    _echo("methods:  " + ", ".join(method_names()))


def _train_config(args, *, teacher):
    from ijckd_bounds.config import load_config
    from ijckd_bounds.train import TrainConfig

    overrides = list(args.overrides)
    return load_config(TrainConfig, args.config, overrides)


def cmd_train_teacher(args):
    from ijckd_bounds.train import train_teacher

    cfg = _train_config(args, teacher=True)
    result = train_teacher(cfg, resume=args.resume)
    _echo(f"teacher written to {result.teacher_path}")


def cmd_distill(args):
    from ijckd_bounds.train import distill

    cfg = _train_config(args, teacher=False)
    callbacks = []
    if args.track:
        from ijckd_bounds.tracking.track import BoundTracker

        callbacks.append(BoundTracker(cfg.run.run_dir))
    result = distill(cfg, resume=args.resume, callbacks=callbacks)
    _echo(f"student run in {result.run_dir} (last checkpoint {result.checkpoint})")


def _settings(args):
    from ijckd_bounds.tracking.track import EstimatorSettings

    return EstimatorSettings(n_bootstrap=getattr(args, "n_bootstrap", 1000),
                             n_permutations=getattr(args, "n_permutations", 200),
                             seed=getattr(args, "seed", 0))


def cmd_track(args):
    from ijckd_bounds.tracking.track import track_run

    for run_dir in args.run_dirs:
        df = track_run(run_dir, _settings(args))
        _echo(f"{run_dir}: {len(df)} checkpoint rows in {Path(run_dir, 'bounds.csv')}")


def cmd_collect(args):
    from ijckd_bounds.io import atomic_path
    from ijckd_bounds.tracking.table import collect

    table = collect(args.dirs)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    _echo(f"{len(table)} rows from {table['run'].nunique()} runs written to {args.out}")


def _tables(run_dirs):
    import pandas as pd

    from ijckd_bounds.tracking.table import collect

    bounds = collect(run_dirs, kind="bounds")
    frames = {}
    for kind in ("per_class", "margins"):
        try:
            frames[kind] = collect(run_dirs, kind=kind)
        except IJCKDError:
            frames[kind] = pd.DataFrame()
    return bounds, frames["per_class"], frames["margins"]


def cmd_plot(args):
    from ijckd_bounds.plotting import make_all_figures

    bounds, per_class, margins = _tables(args.run_dirs)
    paths = make_all_figures(bounds, per_class, margins, args.out)
    for path in paths:
        _echo(str(path))


def cmd_estimate(args):
    from ijckd_bounds.estimators import estimate_bounds_from_file

    report = estimate_bounds_from_file(args.features, n_bootstrap=args.n_bootstrap,
                                       n_permutations=args.n_permutations, seed=args.seed)
    text = json.dumps(_jsonable(report.row()), indent=2)
    if args.out:
        from ijckd_bounds.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        _echo(f"bound terms written to {args.out}")
    else:
        _echo(text)


def _jsonable(row):
    out = {}
    for key, value in row.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def cmd_audit(args):
    from ijckd_bounds.audit import run_audit

    path = run_audit(teacher=args.teacher, student=args.student, dataset=args.dataset,
                     data_dir=args.data_dir, features=args.features, out=args.out,
                     n_bootstrap=args.n_bootstrap, seed=args.seed)
    _echo(f"audit written to {path}")


def cmd_demo(args):
    from ijckd_bounds.demo import run_demo

    run_demo(dataset=args.dataset, out=args.out, epochs=args.epochs, seed=args.seed)


__all__ = [name for name in dir(sys.modules[__name__]) if name.startswith("cmd_")]
