r"""The README's results table: the teacher and six students, eval accuracy over seeds.

One command makes it (about 5 minutes on one CPU core)::

    OMP_NUM_THREADS=1 python experiments/results_table.py \
        --datasets digits mnist1d --seeds 0 1 2 --out experiments/results

and writes ``OUT/runs.csv`` (one row per training run), ``OUT/compare/`` (the report of
``ijckd-bounds compare`` on every run: final- and best-epoch accuracy with t-intervals,
the differences to the controls, parameter counts, one figure per dataset) and
``OUT/results_table.md`` (that report's numbers laid out as the README's table, plus the
train accuracies and parameter counts the explanation of the ordering needs). When the
bound tracker estimates ``top1_agreement`` and ``student_ece``, the final checkpoint of
every student is tracked first (``--n-bootstrap`` replicates) and the table gains them.
Checkpoints stay in ``--runs-dir`` (default ``runs/results_table``, git-ignored).

Protocol (one seed = one full replicate):

- The data split is fixed: ``data.seed`` from ``experiments/<dataset>_teacher.yaml``.
- For each seed ``s`` a teacher (``cnn_large``) is trained with ``run.seed=s``, then the six
  students (``cnn_small``: ce, kd, fitnet, srrl, simkd, ijckd) are distilled from *that*
  teacher, with ``run.seed=s``. So the std includes the teacher's own seed-to-seed
  variation, and every method of a seed learns from the same teacher.
- Hyper-parameters are those of ``experiments/<dataset>_{teacher,student}.yaml`` (every
  student of a dataset gets the same epochs, optimizer and schedule; the method weights are
  each method's reference defaults). Only ``run.*`` keys are changed here: ``ckpt_every``
  (only the final checkpoint is written), ``progress`` and ``run_dir``.
- Accuracy = the final epoch's accuracy on the eval split, never the best epoch's (choosing
  an epoch on the eval split would tune on the test data). The std is the sample std
  (ddof 1) over seeds.
- A control row (``--no-control`` drops it): ``method.name=ce_connector``, the SimKD/IJCKD
  architecture (student body + SimKD bottleneck connector + the frozen teacher classifier)
  trained with cross-entropy alone: no feature or logit matching. It tells how much of
  SimKD's/IJCKD's accuracy comes from the connector's parameters rather than from
  distillation.
- Parameter-matched rows (``--no-matched`` drops them): SimKD, IJCKD and the control with
  connector reduction ``MATCHED_REDUCTION`` = 16 instead of the methods' default 2, which
  makes the connector about as large as the student itself (at reduction 2 it is 13-17x
  larger on this zoo).

Runs already complete in ``--runs-dir`` are reused (their config must equal the one asked
for, else the command stops and names the differing key); runs cut short are resumed.
"""

import argparse
import csv
import io
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ijckd_bounds.schema import DISTILLATION_METHODS

EXPERIMENTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = EXPERIMENTS_DIR.parent
DEFAULT_RUNS_DIR = REPO_ROOT / "runs" / "results_table"
DEFAULT_OUT = EXPERIMENTS_DIR / "results"
RUNS_CSV = "runs.csv"
TABLE_MD = "results_table.md"
COMMAND = ("OMP_NUM_THREADS=1 python experiments/results_table.py --datasets digits mnist1d "
           "--seeds 0 1 2 --out experiments/results")


@dataclass(frozen=True)
class TableRow:
    """One row of the table: a trainer method (``None``: the teacher) and extra overrides."""

    name: str
    method: str | None
    label: str
    overrides: tuple[str, ...] = ()


TEACHER_ROW = TableRow("teacher", None, "teacher (`cnn_large`)")
STUDENT_ROWS = tuple(
    TableRow(method, method, "ce (`cnn_small` alone)" if method == "ce" else method)
    for method in DISTILLATION_METHODS)
CONTROL_ROW = TableRow("ce_connector", "ce_connector",
                       "*control:* ce through the simkd/ijckd connector + frozen h_T")
# the connector reduction at which the bottleneck has about as many parameters as the
# cnn_small student (2,144 vs 2,786 on digits, 1,760 vs 1,730 on mnist1d; reduction 2,
# the methods' reference default, gives 17x and 13x)
MATCHED_REDUCTION = 16
MATCHED_ROWS = (
    TableRow(f"simkd_r{MATCHED_REDUCTION}", "simkd",
             f"simkd, connector reduction {MATCHED_REDUCTION} (parameter-matched)",
             (f"method.reduction={MATCHED_REDUCTION}",)),
    TableRow(f"ijckd_r{MATCHED_REDUCTION}", "ijckd",
             f"ijckd, connector reduction {MATCHED_REDUCTION} (parameter-matched)",
             (f"method.reduction={MATCHED_REDUCTION}",)),
)
MATCHED_CONTROL_ROW = TableRow(
    f"ce_connector_r{MATCHED_REDUCTION}", "ce_connector",
    f"*control:* ce through the reduction-{MATCHED_REDUCTION} connector + frozen h_T",
    (f"method.reduction={MATCHED_REDUCTION}",))

CSV_COLUMNS = ("dataset", "row", "method", "method_overrides", "seed", "data_seed", "model",
               "epochs", "eval_acc", "train_acc", "best_eval_acc", "best_epoch",
               "predict_params", "n_train", "n_eval", "train_seconds", "run_dir")

log = logging.getLogger("results_table")


# ----------------------------------------------------------------------------- configs


def teacher_config(dataset, seed, runs_dir, epochs=None):
    """The TrainConfig of seed ``seed``'s teacher on ``dataset`` (from its YAML file)."""
    return _load(f"{dataset}_teacher.yaml", runs_dir / dataset / f"seed{seed}" / "teacher",
                 seed, epochs, [])


def student_config(dataset, row, seed, teacher_path, runs_dir, epochs=None):
    """The TrainConfig of ``row`` (a TableRow) distilled from ``teacher_path``."""
    overrides = [f"method.name={row.method}", f"model.teacher_checkpoint={teacher_path}",
                 *row.overrides]
    return _load(f"{dataset}_student.yaml", runs_dir / dataset / f"seed{seed}" / row.name,
                 seed, epochs, overrides)


def _load(file_name, run_dir, seed, epochs, overrides):
    from ijckd_bounds.errors import IJCKDError
    from ijckd_bounds.train import TrainConfig
    from ijckd_bounds.typed_yaml import load_config

    path = EXPERIMENTS_DIR / file_name
    if not path.is_file():
        raise IJCKDError(f"no experiment config {str(path)!r}: --datasets must name datasets "
                         f"with experiments/<dataset>_teacher.yaml and _student.yaml")
    if epochs is not None:
        overrides = [*overrides, f"optim.epochs={epochs}"]
    cfg = load_config(TrainConfig, path, overrides)
    # Only the final checkpoint is kept: the table needs nothing else.
    return load_config(TrainConfig, path, [*overrides, f"run.run_dir={run_dir}",
                                           f"run.seed={seed}", "run.progress=false",
                                           f"run.ckpt_every={cfg.optim.epochs}"])


# -------------------------------------------------------------------------------- runs


def train_or_reuse(cfg, *, teacher_mode, train=True):
    """Train the run of ``cfg``, or reuse it when its run directory already holds it.

    Returns ``(metrics, final_checkpoint_path, reused)``; ``metrics`` are the final epoch's
    (train_acc, eval_acc, best_eval_acc, best_epoch, ...). With ``train=False`` a run not
    already complete returns None instead of being trained. A directory holding a run of
    another config, or distilled from another teacher file, raises IJCKDError.
    """
    from ijckd_bounds.checkpoint import read_checkpoint, sha256_file
    from ijckd_bounds.errors import IJCKDError
    from ijckd_bounds.train import distill, latest_checkpoint, train_teacher
    from ijckd_bounds.train.runner import TEACHER_FILE, check_resume_config
    from ijckd_bounds.typed_yaml import to_dict

    run_dir = Path(cfg.run.run_dir)
    final = run_dir / TEACHER_FILE if teacher_mode else None
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        payload = read_checkpoint(latest)
        try:
            check_resume_config(payload.get("config") or {}, to_dict(cfg), latest)
        except IJCKDError as exc:
            raise IJCKDError(f"{exc} (here: pass another --runs-dir)") from None
        teacher_sha = (payload.get("teacher") or {}).get("sha256")
        if teacher_sha is not None and teacher_sha != sha256_file(cfg.model.teacher_checkpoint):
            raise IJCKDError(f"run {str(run_dir)!r} was distilled from another teacher file than "
                             f"{cfg.model.teacher_checkpoint!r}; pass another --runs-dir")
        done = payload["epoch"] == cfg.optim.epochs and (final is None or final.is_file())
        if done:
            return dict(payload["metrics"]), final or latest, True
    if not train:
        return None
    run = train_teacher if teacher_mode else distill
    result = run(cfg, resume=latest is not None)
    return dict(result.metrics), result.teacher_path or result.checkpoint, False


def train_seconds(run_dir):
    """Training time of a run: the sum of its history.csv ``seconds`` (start-up excluded)."""
    path = Path(run_dir) / "history.csv"
    with open(path, newline="") as fh:
        return round(sum(float(row["seconds"]) for row in csv.DictReader(fh)), 2)


def _absolute(run_dir):
    path = Path(run_dir)
    return path if path.is_absolute() else REPO_ROOT / path


def track_final_checkpoints(records, n_bootstrap):
    """Estimate the bound terms (the fidelity columns among them) at the final checkpoint
    of every student run that has no row for it yet (``track_run`` skips tracked ones)."""
    from ijckd_bounds.track_config import TrackConfig
    from ijckd_bounds.tracking.track import track_run

    settings = TrackConfig(n_bootstrap=n_bootstrap, n_permutations=20, seed=0)
    students = [r for r in records if r["row"] != TEACHER_ROW.name]
    for i, record in enumerate(students, 1):
        started = time.perf_counter()
        track_run(_absolute(record["run_dir"]), settings, progress=False)
        log.info("[track %d/%d] %s seed %d %s (%.1f s)", i, len(students), record["dataset"],
                 record["seed"], record["row"], time.perf_counter() - started)


def _relative(path):
    path = Path(path).absolute()  # symlinks kept: the path the table was asked for
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def run_record(dataset, row, seed, cfg, metrics, checkpoint, sizes):
    """One CSV row (a dict keyed by CSV_COLUMNS)."""
    from ijckd_bounds.app.compare import parameter_counts

    model = cfg.model.teacher if row.method is None else cfg.model.student
    return {
        "dataset": dataset, "row": row.name, "method": row.method or "ce",
        "method_overrides": " ".join(row.overrides), "seed": seed,
        "data_seed": cfg.data.seed, "model": model, "epochs": cfg.optim.epochs,
        "eval_acc": round(metrics["eval_acc"], 6), "train_acc": round(metrics["train_acc"], 6),
        "best_eval_acc": round(metrics["best_eval_acc"], 6),
        "best_epoch": int(metrics["best_epoch"]),
        "predict_params": parameter_counts(checkpoint)["predict_params"],
        "n_train": sizes["train"], "n_eval": sizes["eval"],
        "train_seconds": train_seconds(cfg.run.run_dir),
        "run_dir": _relative(cfg.run.run_dir),
    }


# ------------------------------------------------------------------------------ tables
# The statistics come from ``ijckd-bounds compare`` (ijckd_bounds/app/compare.py); this file
# only lays them out as the README's table.

# Tracked at the final checkpoint of each student when the estimators provide them.
FIDELITY_COLUMNS = ("top1_agreement", "student_ece", "teacher_ece")
FIDELITY_LABELS = {"top1_agreement": "top-1 agreement", "student_ece": "ECE",
                   "teacher_ece": "teacher ECE"}
COMPARE_DIR = "compare"


def available_fidelity_columns():
    """The FIDELITY_COLUMNS the bounds table of this version has (none before they exist)."""
    from ijckd_bounds import schema

    return tuple(c for c in FIDELITY_COLUMNS if c in schema.TABLE_COLUMNS)


def format_pct(mean, std):
    """'97.2 ± 0.4' (percent values, one decimal); the std left out when it is NaN."""
    if math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {std:.1f}"


def _markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def group_rows(records, groups):
    """{(dataset, table row name): the compare group (a Series) holding that row's runs}."""
    group_of_dir = {}
    for _, group in groups.iterrows():
        for run_dir in group["run_dirs"].split(";"):
            group_of_dir[Path(run_dir).resolve()] = group
    index = {}
    for record in records:
        group = group_of_dir.get(_absolute(record["run_dir"]).resolve())
        if group is not None:
            index.setdefault((record["dataset"], record["row"]), group)
    return index


def results_markdown(records, datasets, table_rows, seeds, groups, controls, columns=(),
                     missing=()):
    """The Markdown of ``results_table.md`` from the run records (dicts of CSV_COLUMNS)
    and ``compare``'s groups (with a ``run_dirs`` column) and control differences;
    ``missing``: the runs not made (``--no-train``), listed below the table."""
    stats = group_rows(records, groups)

    def first(dataset, row_name, column):
        return next(r[column] for r in records
                    if r["dataset"] == dataset and r["row"] == row_name)

    def cell(dataset, row, column="final"):
        group = stats.get((dataset, row.name))
        if group is None:
            return "–"
        fewer = f" (n={group['n_seeds']})" if group["n_seeds"] < len(seeds) else ""
        if column in ("final", "train"):
            return format_pct(group[f"{column}_mean"], group[f"{column}_std"]) + fewer
        mean, std = group.get(f"{column}_mean", math.nan), group.get(f"{column}_std", math.nan)
        if column == "top1_agreement":  # a proportion: percent
            return format_pct(100 * mean, 100 * std)
        if math.isnan(mean):
            return "–"
        return f"{mean:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")

    header = ["model", *datasets]
    for column in columns:
        header += [f"{d} {FIDELITY_LABELS[column]}" for d in datasets]
    main = _markdown(header, [[row.label, *(cell(d, row) for d in datasets),
                               *(cell(d, row, c) for c in columns for d in datasets)]
                              for row in table_rows])
    header = ["model"]
    for dataset in datasets:
        header += [f"{dataset} train", f"{dataset} train − eval", f"{dataset} best − final",
                   f"{dataset} trained params", f"{dataset} predict params"]
    diag_rows = []
    for row in table_rows:
        cells = [row.label]
        for dataset in datasets:
            group = stats.get((dataset, row.name))
            if group is None:
                cells += ["–"] * 5
                continue
            cells += [cell(dataset, row, "train"),
                      f"{group['train_mean'] - group['final_mean']:+.1f}",
                      f"{group['best_minus_final']:+.1f}",
                      f"{int(group['trained_params']):,}", f"{int(group['predict_params']):,}"]
        diag_rows.append(cells)
    diag = _markdown(header, diag_rows)

    setup = []
    for dataset in datasets:
        teacher_epochs = first(dataset, TEACHER_ROW.name, "epochs")
        student_epochs = sorted({r["epochs"] for r in records
                                 if r["dataset"] == dataset and r["row"] != TEACHER_ROW.name})
        setup.append(f"`{dataset}`: n_train = {first(dataset, 'teacher', 'n_train')}, n_eval = "
                     f"{first(dataset, 'teacher', 'n_eval')}, data.seed = "
                     f"{first(dataset, 'teacher', 'data_seed')}; teacher {teacher_epochs} "
                     f"epochs, every student {', '.join(map(str, student_epochs))} epochs")
    ordering = []
    for dataset in datasets:
        ranked = sorted((row for row in table_rows if (dataset, row.name) in stats),
                        key=lambda row: -stats[(dataset, row.name)]["final_mean"])
        ordering.append(f"`{dataset}`: " + " > ".join(row.name for row in ranked))
    control_lines = [f"`{c['dataset']}`: {c['sentence']}" for _, c in controls.iterrows()]
    fidelity_note = ("Top-1 agreement with the teacher and the student's ECE (15 bins) at the "
                     "final checkpoint, eval split, tracked with `ijckd-bounds track`; mean ± "
                     "std over seeds." if columns else
                     "Top-1 agreement and ECE: not in this table (the bound tracker of this "
                     "version does not estimate them).")
    seed_text = ", ".join(map(str, seeds))
    return "\n".join([
        "# Results: teacher and six students",
        "",
        f"Eval accuracy (%), mean ± sample std over seeds {seed_text}: the final epoch's "
        "accuracy on the eval split (never the best epoch's; the best epoch's is in "
        f"`{COMPARE_DIR}/compare.md`, with 95% t-intervals). Made by",
        "",
        f"    {COMMAND}",
        "",
        main,
        "",
        *([f"Not made (so not in the means; `(n=k)`: a row over k seeds only): "
           f"{', '.join(missing)}.", ""] if missing else []),
        fidelity_note,
        "",
        "Each seed trains its own teacher and distils every student from it (both with "
        "`run.seed` = the seed); the data split is fixed. Hyper-parameters: "
        "`experiments/<dataset>_{teacher,student}.yaml` (SGD, momentum 0.9, lr 0.05, cosine "
        "schedule, weight decay 5e-4, batch 64), each method with its reference loss weights "
        "(`ijckd_bounds/train/objectives.py`); the controls are `method.name=ce_connector`.",
        "",
        *[f"- {line}" for line in setup],
        "",
        "Ordering by mean eval accuracy:",
        "",
        *[f"- {line}" for line in ordering],
        "",
        "Against the controls (`ijckd-bounds compare`, final epoch, Welch 95% interval):",
        "",
        *[f"- {line}" for line in control_lines],
        "",
        "## Diagnostics",
        "",
        "`train`: the running train accuracy of the final epoch (train-mode batch norm, "
        "averaged over the epoch's batches), mean ± std over seeds. `best − final`: mean over "
        "seeds of the best epoch's eval accuracy minus the final one's. `trained params`: "
        "everything the optimizer updates (student + connector; the unused own head of "
        "simkd, ijckd and the controls left out). `predict params`: parameters on the path "
        "from input to prediction (for simkd, ijckd and the controls: student body + "
        "connector + the frozen teacher classifier; the connectors of fitnet and srrl are "
        "used in training only).",
        "",
        diag,
        "",
    ])


def write_csv(records, path):
    from ijckd_bounds.io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(path, buffer.getvalue())


# -------------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python experiments/results_table.py",
        description="train the teacher and the six students per dataset and seed; write "
                    "runs.csv and results_table.md")
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"],
                        help="datasets with experiments/<name>_{teacher,student}.yaml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="run.seed of each replicate (teacher and students)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where runs.csv and results_table.md go")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR,
                        help="where the training runs (checkpoints) go")
    parser.add_argument("--teacher-epochs", type=int, default=None,
                        help="override every teacher's optim.epochs (default: the YAML's)")
    parser.add_argument("--student-epochs", type=int, default=None,
                        help="override every student's optim.epochs (default: the YAML's)")
    parser.add_argument("--no-control", action="store_true",
                        help="leave out the ce-through-the-connector control row")
    parser.add_argument("--no-matched", action="store_true",
                        help="leave out the parameter-matched simkd/ijckd rows (connector "
                             f"reduction {MATCHED_REDUCTION})")
    parser.add_argument("--no-track", action="store_true",
                        help="do not track the final checkpoints (top-1 agreement, ECE)")
    parser.add_argument("--n-bootstrap", type=int, default=200,
                        help="bootstrap replicates when tracking the final checkpoints")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: make the table from the runs already complete "
                             "in --runs-dir and list the missing ones")
    parser.add_argument("--verbose", action="store_true", help="log every epoch")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter
    logging.getLogger("ijckd_bounds.train").setLevel(
        logging.INFO if args.verbose else logging.WARNING)

    from ijckd_bounds.data import build_dataset
    from ijckd_bounds.errors import IJCKDError

    table_rows = (TEACHER_ROW, *STUDENT_ROWS, *(() if args.no_control else (CONTROL_ROW,)),
                  *(() if args.no_matched else
                    (*MATCHED_ROWS, *(() if args.no_control else (MATCHED_CONTROL_ROW,)))))
    total = len(args.datasets) * len(args.seeds) * len(table_rows)
    records, missing, started = [], [], time.perf_counter()
    try:
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
            raise IJCKDError(f"--seeds must be distinct non-negative integers, got {args.seeds}")
        for dataset in args.datasets:
            for seed in args.seeds:
                t_cfg = teacher_config(dataset, seed, args.runs_dir, args.teacher_epochs)
                sizes = build_dataset(t_cfg.data.name, seed=t_cfg.data.seed,
                                      data_dir=t_cfg.data.data_dir, **t_cfg.data.options).sizes
                teacher_path = None
                for row in table_rows:
                    if row.method is None:
                        cfg = t_cfg
                    else:
                        cfg = student_config(dataset, row, seed, teacher_path, args.runs_dir,
                                             args.student_epochs)
                    if row.method is not None and teacher_path is None:
                        missing.append(f"{dataset} seed {seed} {row.name}")
                        continue
                    done = train_or_reuse(cfg, teacher_mode=row.method is None,
                                          train=not args.no_train)
                    if done is None:
                        missing.append(f"{dataset} seed {seed} {row.name}")
                        continue
                    metrics, checkpoint, reused = done
                    if row.method is None:
                        teacher_path = checkpoint
                    records.append(run_record(dataset, row, seed, cfg, metrics, checkpoint,
                                              sizes))
                    args.out.mkdir(parents=True, exist_ok=True)
                    write_csv(records, args.out / RUNS_CSV)
                    log.info("[%d/%d] %s seed %d %-12s eval %.1f%%  train %.1f%%  %s", len(records),
                             total, dataset, seed, row.name, 100 * metrics["eval_acc"],
                             100 * metrics["train_acc"],
                             "(reused)" if reused else f"({records[-1]['train_seconds']} s)")
        columns = () if args.no_track else available_fidelity_columns()
        if columns:
            track_final_checkpoints(records, args.n_bootstrap)
        from ijckd_bounds.app.compare import compare_runs, write_comparison

        # paths relative to the working directory, so the published report names
        # runs/results_table/... rather than where this checkout happens to live
        comparison = compare_runs([os.path.relpath(_absolute(r["run_dir"])) for r in records],
                                  columns=columns)
        written = write_comparison(comparison, args.out / COMPARE_DIR)
        log.info("wrote %s", ", ".join(_relative(p) for p in written))
        text = results_markdown(records, args.datasets, table_rows, args.seeds,
                                comparison.groups, comparison.controls, columns, missing)
    except IJCKDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ijckd_bounds.io import atomic_write_text

    atomic_write_text(args.out / TABLE_MD, text)
    log.info("wrote %s and %s in %.0f s", args.out / RUNS_CSV, args.out / TABLE_MD,
             time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
