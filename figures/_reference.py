"""Shared by the figure scripts: where the reference run's tables are, where figures go.

The reference run is ``experiments/bound_tracking.py --datasets digits mnist1d --seeds 0``;
``experiments/reference/<dataset>/`` holds its collected tables (``bounds.csv``,
``per_class.csv``, ``calibration.csv``, and ``margins.csv`` for the last checkpoint of each
run), written by
``python figures/_reference.py --from runs/bounds`` after a run.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "experiments" / "reference"
OUT = ROOT / "figures"


def calibration_table(dataset):
    """The reliability bins (calibration.csv) of the reference run on ``dataset``."""
    path = REFERENCE / dataset / "calibration.csv"
    if not path.is_file():
        sys.exit(f"no calibration table at {path}; refresh the reference tables with "
                 f"python figures/_reference.py --from RUN_OUT")
    return pd.read_csv(path)


def tables(dataset):
    """(bounds, per_class, margins) DataFrames of the reference run on ``dataset``."""
    folder = REFERENCE / dataset
    if not (folder / "bounds.csv").is_file():
        sys.exit(f"no reference tables in {folder}; run experiments/bound_tracking.py and "
                 f"python figures/_reference.py --from RUN_OUT first")
    return tuple(pd.read_csv(folder / f"{name}.csv") for name in ("bounds", "per_class",
                                                                  "margins"))


def arguments(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist1d"])
    parser.add_argument("--out", default=str(OUT))
    return parser.parse_args()


def output(args, name):
    return Path(args.out) / f"{args.dataset}_{name}"


def refresh(run_out):
    """Copy the collected tables of an experiment output into experiments/reference/."""
    from ijckd_bounds.tracking.table import collect

    for dataset_dir in sorted(Path(run_out).iterdir()):
        students = dataset_dir / "students"
        if not students.is_dir():
            continue
        runs = sorted(p for p in students.iterdir() if p.is_dir())
        bounds = collect(runs)
        per_class = collect(runs, kind="per_class")
        margins = collect(runs, kind="margins")
        last = bounds.groupby("run")["checkpoint"].max()
        margins = margins[margins["checkpoint"] == margins["run"].map(last)]
        calibration = collect(runs, kind="calibration")
        target = REFERENCE / dataset_dir.name
        target.mkdir(parents=True, exist_ok=True)
        bounds.to_csv(target / "bounds.csv", index=False)
        per_class.to_csv(target / "per_class.csv", index=False)
        margins.to_csv(target / "margins.csv", index=False, float_format="%.6g")
        calibration.to_csv(target / "calibration.csv", index=False, float_format="%.6g")
        print(f"{target}: {len(bounds)} checkpoint rows from {len(runs)} runs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="refresh experiments/reference/ from a run")
    parser.add_argument("--from", dest="run_out", required=True)
    refresh(parser.parse_args().run_out)
