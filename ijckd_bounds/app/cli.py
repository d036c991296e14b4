"""The ``ijckd-bounds`` command line: wires data, models, trainer, estimators, tracking,
plotting and the audit together. The only module that imports all of them."""

import argparse
import sys
import warnings

from ijckd_bounds import __version__
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.schema import N_BOOTSTRAP, N_PERMUTATIONS
from ijckd_bounds.track_config import SEED


def _add_overrides(parser):
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override any config key, e.g. optim.lr=0.05 method.name=kd")


def _add_estimator_flags(parser, *, from_run=False, permutations=True):
    """--n-bootstrap, --n-permutations, --seed; ``from_run``: not given, they follow each
    run's own ``track`` section (what ``distill --track`` used)."""
    def default(key, value):
        if from_run:
            return f" (default: the run's track.{key}, else {value})"
        return f" (default {value})"

    parser.add_argument("--n-bootstrap", type=int, default=None if from_run else N_BOOTSTRAP,
                        metavar="N", help="paired-bootstrap resamples of every interval"
                                          + default("n_bootstrap", N_BOOTSTRAP))
    if permutations:
        parser.add_argument("--n-permutations", type=int,
                            default=None if from_run else N_PERMUTATIONS, metavar="N",
                            help="sign flips of the MMD² permutation test"
                                 + default("n_permutations", N_PERMUTATIONS))
    parser.add_argument("--seed", type=int, default=None if from_run else SEED,
                        help="seed of the bootstrap, permutations and fitted probes"
                             + default("seed", SEED))


def build_parser():
    """The ``ijckd-bounds`` argument parser, one subcommand per workflow."""
    parser = argparse.ArgumentParser(
        prog="ijckd-bounds",
        description="Train distillation students and measure the bound terms of the ideal "
                    "joint classifier view (docs/theory.md) across checkpoints.")
    parser.add_argument("--version", action="version", version=f"ijckd_bounds {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train-teacher", help="train a teacher with cross-entropy")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    _add_overrides(p)

    p = sub.add_parser("distill", help="distill a student from a trained teacher")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--track", action="store_true",
                   help="estimate the bound terms online at every checkpoint")
    p.add_argument("--teacher-weights", metavar="FILE",
                   help="torchvision-layout weights of the model.teacher architecture, "
                        "instead of model.teacher_checkpoint")
    _add_overrides(p)

    p = sub.add_parser("track", help="estimate every bound term at every checkpoint of a run")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    _add_estimator_flags(p, from_run=True)

    p = sub.add_parser("collect", help="concatenate the bounds tables of several runs")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--out", required=True, help="output CSV")

    p = sub.add_parser("plot", help="make every figure from tracked runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="output directory for PNG/PDF figures")

    p = sub.add_parser("audit", help="explain why a student underperforms (error budget)")
    p.add_argument("--teacher", help="teacher checkpoint (.pt), or the weights file the "
                   "student was distilled from (default: the teacher the student records)")
    p.add_argument("--student", help="student checkpoint (.pt)")
    p.add_argument("--dataset", help="dataset name (default: the student's own)")
    p.add_argument("--data-dir", help="where dataset files live")
    p.add_argument("--features", help="feature file (.npz/.pt) instead of checkpoints")
    p.add_argument("--out", required=True, help="output directory for report.md")
    p.add_argument("--allow-other-teacher", action="store_true",
                   help="audit against a --teacher that is not the student's recorded "
                        "teacher (or is itself a student); the report says so")
    _add_estimator_flags(p)

    p = sub.add_parser("estimate", help="estimate the bound terms from a feature file")
    p.add_argument("features", help=".npz/.pt with z_t, z_s, y, weight, bias [, *_fit, s, s_fit]")
    p.add_argument("--out", help="write the row as JSON here (default: print)")
    _add_estimator_flags(p)

    p = sub.add_parser("demo", help="teacher + six students on digits, tracked, plotted, audited")
    # choices listed, checked by run_demo (one-line error naming the valid ones)
    from ijckd_bounds.app.demo import DEMO

    p.add_argument("--dataset", default="digits", metavar="{" + ",".join(DEMO) + "}",
                   help=f"dataset of the demo: {' or '.join(DEMO)} (default digits)")
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default per dataset)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the students' training and of the estimates (default 0)")

    p = sub.add_parser("list", help="list registered datasets, models (with their options), "
                                    "methods and every config key")

    # compare: seeds, controls and published numbers
    p = sub.add_parser("compare", help="is the gain real? group runs by method over seeds; "
                       "intervals, controls and published numbers")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--published", nargs="+", metavar="METHOD=VALUE",
                   help="a published top-1 accuracy in percent, e.g. kd=71.03")
    p.add_argument("--published-file", metavar="F.yaml",
                   help="published numbers with their sources (e.g. "
                        "experiments/imagenet/published.yaml)")
    p.add_argument("--columns", nargs="+", metavar="COLUMN",
                   help="tracked bounds.csv columns to aggregate at the final epoch, e.g. "
                        "top1_agreement student_ece")
    p.add_argument("--out", required=True, help="output directory for compare.md, "
                   "compare.csv and the figures")
    return parser


def _subparser(parser, command):
    """The parser of subcommand ``command`` (the top-level parser without one)."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if command in getattr(action, "choices", {}):
            return action.choices[command]
    return parser


def _one_line_warning(command):
    """``warnings.showwarning`` for the command line: one line, no source location."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"ijckd-bounds {command}: warning: {message}", file=sys.stderr, flush=True)

    return show


def _how_to_continue(args, argv):
    """The interrupt line's hint: the command that continues what was interrupted."""
    import shlex

    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    if args.command in ("train-teacher", "distill"):
        again = argv if "--resume" in argv else [*argv, "--resume"]
        return f"continue with: ijckd-bounds {shlex.join(again)}"
    if args.command in ("track", "demo"):
        return (f"run the same command again to finish (what is done is kept): "
                f"ijckd-bounds {shlex.join(argv)}")
    return "no file is left half-written; run the command again"


def main(argv=None):
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code:
    0 done, 2 a problem with the input (one line on stderr), 1 an OS error, 130 interrupted."""
    parser = build_parser()
    # `distill --config F a=1 --resume b=2`: overrides after a flag arrive as extras
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            # a flag typo gets the subcommand's usage, not the top-level one
            command_parser = _subparser(parser, args.command)
            command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        from ijckd_bounds.app import commands

        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            return getattr(commands, "cmd_" + args.command.replace("-", "_"))(args) or 0
    except IJCKDError as exc:
        print(f"ijckd-bounds {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a full disk or a vanished directory mid-run: say which file, not a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"ijckd-bounds {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ijckd-bounds {args.command}: interrupted; {_how_to_continue(args, argv)}",
              file=sys.stderr)
        return 130

