"""Implementations of the ``ijckd-bounds`` subcommands (argument parsing is in cli.py)."""

import json
import os
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
    _list_model_options()
    _list_config_keys()


def _list_model_options():
    from ijckd_bounds.models import model_names, model_options

    _echo("\nmodel options (model.teacher_options.KEY=VALUE / model.student_options.KEY=VALUE):")
    for name in model_names():
        options = model_options(name)
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "none"
        _echo(f"  {name:<22} {shown}")


def _list_config_keys():
    from ijckd_bounds.train import TrainConfig
    from ijckd_bounds.typed_yaml import to_dict

    _echo("\nconfig keys and defaults (--config FILE.yaml, or KEY=VALUE on the command line):")
    defaults = to_dict(TrainConfig())
    # a track key left at None follows the run's other sections, then its default: show that
    defaults["track"] = to_dict(TrainConfig().track.resolved(defaults))
    for section, values in defaults.items():
        for key, value in values.items():
            _echo(f"  {section}.{key} = {value!r}")


def _train_config(args):
    from ijckd_bounds.train import TrainConfig
    from ijckd_bounds.train.config import with_teacher_weights
    from ijckd_bounds.typed_yaml import load_config

    overrides = list(args.overrides)
    cfg = load_config(TrainConfig, args.config, overrides)
    return with_teacher_weights(cfg, getattr(args, "teacher_weights", None))


class _ResumeNotice:
    """The trainer's callback that says on stderr, once (rank 0), which checkpoint a
    ``--resume`` run continues from; the epoch lines stay the progress display's."""

    def __init__(self, command):
        self.command = command

    def on_resume(self, path, epoch, step):
        print(f"ijckd-bounds {self.command}: resuming from {path} (epoch {epoch}, step {step})",
              file=sys.stderr, flush=True)


def cmd_train_teacher(args):
    from ijckd_bounds.train import train_teacher

    cfg = _train_config(args)
    result = train_teacher(cfg, resume=args.resume, callbacks=[_ResumeNotice(args.command)])
    _echo(f"teacher written to {result.teacher_path}")


def cmd_distill(args):
    from ijckd_bounds.train import distill

    cfg = _train_config(args)
    callbacks = [_ResumeNotice(args.command)]
    if args.track:
        from ijckd_bounds.tracking.track import BoundTracker

        callbacks.append(BoundTracker(cfg.run.run_dir))
    result = distill(cfg, resume=args.resume, callbacks=callbacks)
    if args.track and os.environ.get("RANK", "0") == "0":
        from ijckd_bounds.tracking.track import track_run

        # a checkpoint written just before an interrupt (and so never tracked online) is
        # tracked now: bounds.csv ends with one row per checkpoint
        track_run(cfg.run.run_dir, None, data_dir=cfg.data.data_dir,
                  progress=cfg.run.progress is not False)
    _echo(f"student run in {result.run_dir} (last checkpoint {result.checkpoint})")


def _settings(args):
    """The tracking settings the flags give; a flag not given (None) follows the run's
    config (its ``track`` section), then the defaults."""
    from ijckd_bounds.track_config import TrackConfig

    return TrackConfig(n_bootstrap=getattr(args, "n_bootstrap", None),
                       n_permutations=getattr(args, "n_permutations", None),
                       seed=getattr(args, "seed", None))


# what tracking one run may write (tables, the teacher feature cache): fail before any
# estimate when the disk cannot take it
TRACK_NEED_BYTES = 32 << 20


def cmd_track(args):
    from ijckd_bounds.io import check_writable_dir
    from ijckd_bounds.tracking import table
    from ijckd_bounds.tracking.track import BOUNDS_CSV, COMPANION_CSVS, checkpoints_of, track_run

    # every run directory is checked before the first one is tracked
    for run_dir in args.run_dirs:
        if Path(run_dir).exists() and not Path(run_dir).is_dir():
            raise IJCKDError(f"{str(run_dir)!r} is a file, expected a run directory (the "
                             f"run.run_dir of a distill run, holding checkpoints/)")
        if not Path(run_dir).is_dir():
            raise IJCKDError(f"run directory {str(run_dir)!r} does not exist")
        checkpoints_of(run_dir)
        check_writable_dir(run_dir, need_bytes=TRACK_NEED_BYTES)
    for run_dir in args.run_dirs:
        # a tracker killed between writing bounds.csv and its companions left checkpoints
        # that look tracked: estimate those again
        table.drop_incomplete_checkpoints(Path(run_dir, BOUNDS_CSV),
                                          [Path(run_dir, name) for name in COMPANION_CSVS])
        df = track_run(run_dir, _settings(args))
        _echo(f"{run_dir}: {len(df)} checkpoint rows in {Path(run_dir, BOUNDS_CSV)}")


def cmd_collect(args):
    from ijckd_bounds.io import atomic_path, check_writable_dir
    from ijckd_bounds.tracking.table import collect

    check_writable_dir(Path(args.out).parent)
    table = collect(args.dirs)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    _echo(f"{len(table)} rows from {table['run'].nunique()} runs written to {args.out}")


def _tables(run_dirs):
    import pandas as pd

    from ijckd_bounds.tracking.table import collect

    bounds = collect(run_dirs, kind="bounds")
    frames = {}
    for kind in ("per_class", "margins", "calibration"):
        try:
            frames[kind] = collect(run_dirs, kind=kind)
        except IJCKDError:
            frames[kind] = pd.DataFrame()
    return bounds, frames["per_class"], frames["margins"], frames["calibration"]


def cmd_plot(args):
    from ijckd_bounds.io import check_writable_dir
    from ijckd_bounds.plotting import make_all_figures

    # cheap: the figures are the work
    bounds, per_class, margins, calibration = _tables(args.run_dirs)
    check_writable_dir(args.out, need_bytes=8 << 20)
    paths = make_all_figures(bounds, per_class, margins, args.out,
                             calibration_df=calibration)
    paths += _layer_figures(args.run_dirs, args.out)
    for path in paths:
        _echo(str(path))


def _layer_figures(run_dirs, out):
    """The layer figures of the runs that have a ``layers.csv`` (none: no figures)."""
    from ijckd_bounds.plotting.layers import make_layer_figures
    from ijckd_bounds.tracking.table import collect_layers

    return make_layer_figures(collect_layers(run_dirs, missing_ok=True), out)


def cmd_estimate(args):
    from ijckd_bounds.estimators import estimate_bounds_from_file
    from ijckd_bounds.io import check_writable_dir

    if args.out:
        if Path(args.out).is_dir():
            raise IJCKDError(f"--out {args.out!r} is a directory, expected the path of a "
                             f"JSON file to write (e.g. {str(Path(args.out, 'bounds.json'))!r})")
        check_writable_dir(Path(args.out).parent)
    report = estimate_bounds_from_file(args.features, n_bootstrap=args.n_bootstrap,
                                       n_permutations=args.n_permutations, seed=args.seed)
    for note in report.notes:  # how the numbers were made: e.g. the file had no fit split
        print(f"ijckd-bounds estimate: note: {note}", file=sys.stderr, flush=True)
    text = json.dumps(report.to_dict()["row"], indent=2)
    if args.out:
        from ijckd_bounds.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        _echo(f"bound terms written to {args.out}")
    else:
        _echo(text)


def cmd_audit(args):
    from ijckd_bounds.app.audit import run_audit

    path = run_audit(teacher=args.teacher, student=args.student, dataset=args.dataset,
                     data_dir=args.data_dir, features=args.features, out=args.out,
                     n_bootstrap=args.n_bootstrap, n_permutations=args.n_permutations,
                     seed=args.seed, allow_other_teacher=args.allow_other_teacher)
    _echo(f"audit written to {path}")


def cmd_demo(args):
    from ijckd_bounds.app.demo import run_demo

    run_demo(dataset=args.dataset, out=args.out, epochs=args.epochs, seed=args.seed)


__all__ = [name for name in dir(sys.modules[__name__]) if name.startswith("cmd_")]


# ------------------------------------------------------------------------------ compare


def cmd_compare(args):
    from ijckd_bounds.app.compare import run_compare

    written = run_compare(args.run_dirs, args.out, published=args.published or (),
                          published_file=args.published_file, columns=args.columns or ())
    _echo(f"wrote {', '.join(str(p) for p in written)}")
