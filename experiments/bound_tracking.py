"""The full bound-tracking experiment: a teacher and the six students per dataset, every
docs/theory.md term tracked at every checkpoint, every figure, and an audit of the weakest student.

    python experiments/bound_tracking.py --datasets digits mnist1d --seeds 0 1 2 --out runs/bounds
    python experiments/bound_tracking.py --datasets cifar100 --data-dir ~/data --out runs/bounds

digits and mnist1d run on a laptop CPU (minutes); cifar100 (resnet32x4 -> resnet8x4, the
CRD/SimKD 240-epoch protocol) needs the cifar-100-python archive in --data-dir and a GPU.
Re-running the same command resumes every unfinished run. The figures of the README's
reference run are regenerated from the tables this writes by the scripts in figures/.
"""

import argparse
import sys

from ijckd_bounds.app.demo import EXPERIMENTS, run_experiment
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.schema import DISTILLATION_METHODS as METHODS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"],
                        choices=sorted(EXPERIMENTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", default="runs/bounds")
    parser.add_argument("--data-dir", default=None, help="where cifar-100-python lives")
    parser.add_argument("--epochs", type=int, default=None, help="override student epochs")
    args = parser.parse_args(argv)
    try:
        for dataset in args.datasets:
            run_experiment(dataset, f"{args.out}/{dataset}", seeds=tuple(args.seeds),
                           epochs=args.epochs, data_dir=args.data_dir,
                           methods=tuple(args.methods))
    except IJCKDError as exc:
        print(f"bound_tracking: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
