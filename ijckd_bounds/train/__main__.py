"""``python -m ijckd_bounds.train --config F.yaml [key=value ...] [--resume] [--teacher-mode]
[--teacher-weights FILE]``: the trainer alone, without the command line.

The command line is the way to train: ``ijckd-bounds train-teacher`` / ``distill`` (under
torchrun ``python -m ijckd_bounds distill``, which also offers ``--track``). This launcher
remains only for the subprocess tests of resuming and DDP, which need the trainer's
INFO log on stderr; train/ cannot reach the command line (it never imports app/). Prints
the run directory (or the teacher file) and exits 0; a problem with the input prints one
line and exits 2.
"""

import argparse
import logging
import sys


def main(argv=None):
    """Train a teacher (``--teacher-mode``) or distill a student from the config and
    overrides in ``argv``; returns the exit code (0, or 2 with one line on stderr)."""
    parser = argparse.ArgumentParser(prog="python -m ijckd_bounds.train",
                                     description="train a teacher or distill a student")
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run directory's latest checkpoint")
    parser.add_argument("--teacher-mode", action="store_true",
                        help="train model.teacher with cross-entropy (train-teacher)")
    parser.add_argument("--teacher-weights", metavar="FILE",
                        help="distill from this torchvision-layout state dict of the "
                             "model.teacher architecture (sets model.teacher_weights)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after flags
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from ijckd_bounds.errors import IJCKDError
    from ijckd_bounds.train import TrainConfig, distill, train_teacher
    from ijckd_bounds.train.config import with_teacher_weights
    from ijckd_bounds.typed_yaml import load_config

    try:
        cfg = with_teacher_weights(load_config(TrainConfig, args.config, args.overrides),
                                   args.teacher_weights)
        run = train_teacher if args.teacher_mode else distill
        result = run(cfg, resume=args.resume)
    except IJCKDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.teacher_path or result.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
