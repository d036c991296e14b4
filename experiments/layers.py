r"""Where do CE, FitNet and IJCKD students fall behind? Stage probes and stage CKA.

One command (a few minutes on one CPU core)::

    OMP_NUM_THREADS=1 python experiments/layers.py --datasets digits mnist1d --seed 0 \
        --out experiments/results/layers

Per dataset: the teacher of ``experiments/<dataset>_teacher.yaml`` (``cnn_large``: stages
``conv1``, ``conv2``, ``pool``) and the ce, fitnet and ijckd students of
``experiments/<dataset>_student.yaml`` (``cnn_small``: ``conv1``, ``pool``), with
``track.layers=true``; the layer terms of every checkpoint (``run.ckpt_every`` of the YAML)
are tracked (``tracking.layers.track_run_layers``: the bound terms are not needed here), and
the layer table of every run is collected into ``OUT/layers_<dataset>.csv``. Figures:
``OUT/<dataset>_cka_<method>.png`` (the CKA matrix at the last checkpoint),
``OUT/<dataset>_profile_<method>.png`` (probe errors over depth across epochs) and
``OUT/<dataset>_profiles.png`` (the three students at their last checkpoint).
``OUT/summary.md`` lists the numbers the README quotes, with their 95% intervals.

FitNet's hint here is at the *last* stage (``objectives.py``: the student's last map is
regressed onto the teacher's last map), i.e. the (teacher ``pool``, student ``pool``) cell
of the CKA matrix. One seed: the intervals are over evaluation samples (a fixed model),
not over training seeds.
"""

import argparse
import logging
import sys
from pathlib import Path

EXPERIMENTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = EXPERIMENTS_DIR.parent
METHODS = ("ce", "fitnet", "ijckd")
COMMAND = ("OMP_NUM_THREADS=1 python experiments/layers.py --datasets digits mnist1d "
           "--seed 0 --out experiments/results/layers")

log = logging.getLogger("layers")


def _config(file_name, run_dir, seed, overrides):
    from ijckd_bounds.train import TrainConfig
    from ijckd_bounds.typed_yaml import load_config

    return load_config(TrainConfig, EXPERIMENTS_DIR / file_name,
                       [*overrides, f"run.run_dir={run_dir}", f"run.seed={seed}",
                        "run.progress=false", "track.layers=true"])


def run_dataset(dataset, seed, runs_dir, out):
    """Train (or reuse) the teacher and the students of ``dataset``, track them, and write
    the dataset's table and figures; returns the collected layer table."""
    sys.path.insert(0, str(EXPERIMENTS_DIR))
    from results_table import train_or_reuse

    from ijckd_bounds.plotting.layers import plot_layer_cka, plot_layer_profile, plot_layer_profiles
    from ijckd_bounds.plotting.output import save_figure
    from ijckd_bounds.track_config import TrackConfig
    from ijckd_bounds.tracking.layers import track_run_layers
    from ijckd_bounds.tracking.table import collect_layers

    root = Path(runs_dir) / dataset / f"seed{seed}"
    teacher_cfg = _config(f"{dataset}_teacher.yaml", root / "teacher", seed, [])
    _, teacher_path, _ = train_or_reuse(teacher_cfg, teacher_mode=True)
    settings = TrackConfig(seed=seed)
    run_dirs = []
    for method in METHODS:
        cfg = _config(f"{dataset}_student.yaml", root / method, seed,
                      [f"method.name={method}", f"model.teacher_checkpoint={teacher_path}"])
        log.info("%s: %s student", dataset, method)
        train_or_reuse(cfg, teacher_mode=False)
        track_run_layers(cfg.run.run_dir, settings)  # the bound terms are not needed here
        run_dirs.append(Path(cfg.run.run_dir))
    table = collect_layers(run_dirs)
    table.insert(0, "dataset", dataset)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"layers_{dataset}.csv", index=False)
    for method in METHODS:
        save_figure(plot_layer_cka(table, run=method).figure, out / f"{dataset}_cka_{method}")
        save_figure(plot_layer_profile(table, run=method).figure,
                    out / f"{dataset}_profile_{method}")
    save_figure(plot_layer_profiles(table).figure, out / f"{dataset}_profiles")
    return table


def _last(rows):
    last = rows.sort_values("epoch")["checkpoint"].iloc[-1]
    return rows[rows["checkpoint"] == last]


def _interval(row, term, percent):
    factor, unit = (100.0, "%") if percent else (1.0, "")
    digits = 1 if percent else 3
    return (f"{factor * row[term]:.{digits}f}{unit} [{factor * row[term + '_lo']:.{digits}f}, "
            f"{factor * row[term + '_hi']:.{digits}f}]")


def summary_markdown(tables):
    """The README's numbers: per dataset and method, at the last checkpoint, the probe
    error of every stage and the CKA matrix, each with its interval, and the audit's two
    findings."""
    from ijckd_bounds.app.audit_layers import layer_findings

    parts = ["# Layer probes and CKA: CE, FitNet and IJCKD students", "",
             f"Made by `{COMMAND}`.", ""]
    for dataset, table in tables.items():
        parts += [f"## {dataset}", ""]
        first = table.iloc[0]
        parts += [f"n_eval = {int(first['n_eval'])}, n_fit = {int(first['n_fit'])}; last "
                  "checkpoint of each run; 95% intervals (Clopper–Pearson for probe errors, "
                  "delete-one jackknife for CKA).", ""]
        teacher = _last(table[table["run"] == METHODS[0]])
        teacher = teacher[teacher["model"] == "teacher"].sort_values("stage_index")
        parts += ["| model | " + " | ".join(f"probe err `{s}`" for s in teacher["stage"])
                  + " |", "|---|" + "---|" * len(teacher),
                  "| teacher | " + " | ".join(_interval(r, "stage_probe_err", True)
                                              for _, r in teacher.iterrows()) + " |"]
        for method in METHODS:
            mine = _last(table[table["run"] == method])
            student = mine[mine["model"] == "student"].sort_values("stage_index")
            cells = [f"`{r['stage']}`: " + _interval(r, "stage_probe_err", True)
                     for _, r in student.iterrows()]
            parts.append(f"| {method} (epoch {int(mine['epoch'].iloc[0])}) | "
                         + " | ".join(cells) + " |" * (len(teacher) - len(cells) + 1))
        parts += ["", "CKA (teacher stage × student stage) at the last checkpoint:", "",
                  "| method | " + " | ".join(
                      f"`{t}`×`{s}`" for t, s in _pairs(table)) + " |",
                  "|---|" + "---|" * len(_pairs(table))]
        for method in METHODS:
            mine = _last(table[table["run"] == method])
            cka = mine[mine["teacher_stage"].notna()].sort_values(["teacher_index",
                                                                   "student_index"])
            parts.append(f"| {method} | " + " | ".join(_interval(r, "stage_cka", False)
                                                       for _, r in cka.iterrows()) + " |")
        parts += ["", "Audit findings at the last checkpoint:", ""]
        for method in METHODS:
            found = layer_findings(_last(table[table["run"] == method]))
            behind = found["behind"]
            where = ("nowhere" if behind is None else
                     f"`{behind['student']['stage']}` (vs teacher `{behind['teacher']['stage']}`)")
            resembles = found["resembles"]
            parts.append(f"- {method}: first stage behind: {where}; last stage closest to "
                         f"teacher `{resembles['stage']}` (CKA {resembles['cka']:.3f} "
                         f"[{resembles['lo']:.3f}, {resembles['hi']:.3f}], "
                         f"{'separated from' if resembles['separated'] else 'tied with'} "
                         f"`{resembles['runner_up']['teacher_stage']}`)")
        parts.append("")
    return "\n".join(parts)


def _pairs(table):
    cka = table[table["teacher_stage"].notna()].drop_duplicates(["teacher_index",
                                                                 "student_index"])
    cka = cka.sort_values(["teacher_index", "student_index"])
    return list(zip(cka["teacher_stage"], cka["student_stage"], strict=True))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", default=str(REPO_ROOT / "runs" / "layers"))
    parser.add_argument("--out", default=str(EXPERIMENTS_DIR / "results" / "layers"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    from ijckd_bounds.errors import IJCKDError
    from ijckd_bounds.io import atomic_write_text

    out = Path(args.out)
    try:
        tables = {dataset: run_dataset(dataset, args.seed, args.runs_dir, out)
                  for dataset in args.datasets}
    except IJCKDError as exc:
        print(f"layers: error: {exc}", file=sys.stderr)
        return 2
    atomic_write_text(out / "summary.md", summary_markdown(tables))
    print(f"summary: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
