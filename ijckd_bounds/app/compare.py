"""``ijckd-bounds compare``: is the gain real? Seeds, controls and published numbers.

Reads finished training runs (their ``config.yaml``, ``history.csv``, last checkpoint and,
where tracked, ``bounds.csv``), groups them by dataset, teacher, student, method and
method setting (the weights that differ from the method's defaults), and reports per
group, for the *final*-epoch and the *best*-epoch eval accuracy (both, labelled):

- mean, sample std (ddof 1) and a 95% Student-t interval of the mean over seeds (with one
  seed: no interval, and the report says an interval needs two);
- parameter counts: the student (what of it trains), the connector, everything that
  trains, and everything on the path from input to prediction (a frozen ``h_T`` included);
- for each published value that applies, a verdict with its arithmetic: "consistent" when
  the value lies in the interval, otherwise the gap and its interval, with a note when the
  gap is no larger than the mean best-minus-final difference (a paper that reports the
  best epoch would explain it);
- the difference to the group's control, with a Welch interval: SimKD/IJCKD-style methods
  (prediction through a connector and the frozen teacher classifier) against
  ``ce_connector`` at the same connector reduction; methods with a training-only
  connector (FitNet, SRRL) against ``ce`` on the same student.

Runs whose history stops before their configured last epoch are listed, never averaged
in. Accuracies are reported in percent.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.intervals import check_level, t_interval, welch_interval
from ijckd_bounds.schema import LEVEL

HISTORY_CSV = "history.csv"
CONFIG_YAML = "config.yaml"
BOUNDS_CSV = "bounds.csv"
GROUP_KEYS = ("dataset", "teacher", "student", "method", "setting")
KINDS = ("final", "best")
KIND_LABELS = {"final": "final epoch", "best": "best epoch"}
PARAM_COLUMNS = ("student_params", "connector_params", "trained_params", "predict_params")
TEACHER_METHOD = "teacher"  # the method name of teacher runs (trained with CE alone)
# Config keys that never change what a run trains; every other key must agree between
# the seeds of one group for them to be replicates.
_FREE_KEYS = {"run.run_dir", "run.seed", "run.device", "run.progress", "run.ckpt_every",
              "run.amp", "run.channels_last", "run.sync_bn", "data.num_workers",
              "data.pin_memory", "data.persistent_workers", "data.prefetch_factor",
              "data.eval_batch_size", "data.data_dir", "model.teacher_checkpoint",
              "model.teacher_weights"}
_FREE_SECTIONS = ("track.", "method.")  # method weights are in the group's setting
# What a method adds over its control, for the plain sentence.
_ADDED_LOSSES = {"simkd": "the feature loss", "ijckd": "the feature/logit losses",
                 "fitnet": "the hint loss", "srrl": "the feature/logit/KL losses"}


# ------------------------------------------------------------------------- reading runs


def _flatten(tree, prefix=""):
    out = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict) and not key.endswith("options"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_config(run_dir):
    import yaml

    path = run_dir / CONFIG_YAML
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise IJCKDError(f"{str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(config, dict) or not isinstance(config.get("optim"), dict):
        raise IJCKDError(f"{str(path)!r} is not a training run's config (no optim section)")
    return config


def _read_history(run_dir):
    path = run_dir / HISTORY_CSV
    try:
        history = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        history = pd.DataFrame()
    missing = {"epoch", "eval_acc"} - set(history.columns)
    if missing and len(history.columns):
        raise IJCKDError(f"{str(path)!r} has no column {sorted(missing)[0]!r}: not a "
                         f"history.csv written by the trainer")
    if not len(history.columns):  # a run killed before its first epoch ended
        return pd.DataFrame({"epoch": pd.Series(dtype=int), "eval_acc": pd.Series(dtype=float)})
    if len(history):
        history = history.dropna(subset=["epoch", "eval_acc"])
        history = history.astype({"epoch": int, "eval_acc": float}).sort_values("epoch")
    return history


def _method_setting(method_cfg):
    """``(method, weights, setting, predicts_with)``: the weights set in the config,
    resolved against the method's defaults, the text of those that differ from the
    defaults, and what the method predicts with (None for a method not registered)."""
    from ijckd_bounds.train.objectives import METHODS

    name = str(method_cfg.get("name"))
    known = name in METHODS.names()
    given = {k: v for k, v in method_cfg.items() if k != "name" and v is not None}
    defaults = dict(METHODS.get(name).defaults) if known else {}
    weights = {**defaults, **given}
    changed = {k: v for k, v in given.items() if k not in defaults or defaults[k] != v}
    setting = ", ".join(f"{k}={_number(v)}" for k, v in sorted(changed.items()))
    return name, weights, setting, METHODS.get(name).predicts_with if known else None


def _number(value):
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parameter_counts(checkpoint):
    """Parameter counts of the model in ``checkpoint`` (a training run's checkpoint or a
    teacher.pt): ``student_params`` (the student's parameters that train: its own head
    left out when it predicts with the teacher classifier), ``connector_params``,
    ``trained_params`` (their sum: everything the optimizer updates) and
    ``predict_params`` (everything on the path from input to prediction: for students
    predicting with ``h_T``, body + connector + the frozen teacher classifier; for the
    others the student alone, a training-only connector not counted)."""
    from ijckd_bounds.checkpoint import load_student

    loaded = load_student(checkpoint)
    model = sum(p.numel() for p in loaded.model.parameters())
    head = sum(p.numel() for p in loaded.model.classifier.parameters())
    connector = (0 if loaded.connector is None
                 else sum(p.numel() for p in loaded.connector.parameters()))
    if loaded.predicts_with == "teacher_classifier":
        student = model - head
        h_t = loaded.teacher_weight.numel() + loaded.teacher_bias.numel()
        predict = student + connector + h_t
    else:
        student, predict = model, model
    return {"student_params": int(student), "connector_params": int(connector),
            "trained_params": int(student + connector), "predict_params": int(predict)}


def _bounds_values(run_dir, epoch, columns):
    """``({column: value at the final epoch}, notes)`` from RUN_DIR/bounds.csv (eval split)."""
    values = {c: math.nan for c in columns}
    if not columns:
        return values, []
    path = run_dir / BOUNDS_CSV
    if not path.is_file():
        return values, [f"no {BOUNDS_CSV} (run `ijckd-bounds track` on it for "
                        f"{', '.join(columns)})"]
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        return values, [f"{BOUNDS_CSV} is unreadable ({str(exc).splitlines()[0]})"]
    rows = table
    if "split" in table.columns:
        rows = rows[rows["split"].astype(str) == "eval"]
    rows = rows[rows["epoch"] == epoch] if "epoch" in rows.columns else rows.iloc[0:0]
    if rows.empty:
        return values, [f"{BOUNDS_CSV} has no eval row of epoch {epoch}"]
    notes = []
    for column in columns:
        if column in rows.columns:
            values[column] = float(rows[column].iloc[-1])
        else:
            notes.append(f"{BOUNDS_CSV} has no column {column!r}")
    return values, notes


def read_run(run_dir, columns=()):
    """One row (dict) describing the training run in ``run_dir``.

    Keys: the GROUP_KEYS, ``run_dir``, ``seed``, ``kind`` (teacher/student),
    ``predicts_with``, ``reduction`` (connector reduction or None), ``epochs`` (configured),
    ``last_epoch`` (in history.csv), ``complete``, ``final_acc`` (eval accuracy at the
    configured last epoch, percent; NaN when incomplete), ``final_train_acc`` (the running
    train accuracy of that epoch), ``best_acc``/``best_epoch``
    (over the epochs run), the PARAM_COLUMNS, ``signature`` (the training config without
    seed-free keys, to tell replicates apart), ``notes``, and every name in ``columns``
    (that column of the run's bounds.csv at the final epoch, eval split; NaN if absent).
    """
    from ijckd_bounds.train.runner import TEACHER_FILE, latest_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise IJCKDError(f"run directory {str(run_dir)!r} does not exist")
    for name in (CONFIG_YAML, HISTORY_CSV):
        if not (run_dir / name).is_file():
            raise IJCKDError(f"{str(run_dir)!r} is not a training run: it has no {name}")
    config = _read_config(run_dir)
    history = _read_history(run_dir)
    method, weights, setting, predicts_with = _method_setting(config.get("method") or {})
    epochs = config["optim"].get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise IJCKDError(f"{str(run_dir / CONFIG_YAML)!r}: optim.epochs must be a positive "
                         f"integer, got {epochs!r}")
    checkpoint = latest_checkpoint(run_dir)
    teacher_file = run_dir / TEACHER_FILE
    meta = {}
    if checkpoint is not None or teacher_file.is_file():
        from ijckd_bounds.checkpoint import read_checkpoint

        payload = read_checkpoint(checkpoint or teacher_file)
        meta = {"kind": payload.get("kind"), "predicts_with": payload.get("predicts_with"),
                "teacher": (payload.get("teacher") or {}).get("name"),
                "model": (payload.get("model") or {}).get("name")}
    model_cfg = config.get("model") or {}
    kind = meta.get("kind") or ("teacher" if teacher_file.is_file() else "student")
    last_epoch = int(history["epoch"].max()) if len(history) else 0
    complete = last_epoch >= epochs and bool((history["epoch"] == epochs).any())
    final = history[history["epoch"] == epochs]
    run_part = history[history["epoch"] <= epochs]
    best = run_part.loc[run_part["eval_acc"].idxmax()] if len(run_part) else None
    if kind == "teacher":
        group = {"teacher": meta.get("model") or model_cfg.get("teacher"), "student": "—",
                 "method": TEACHER_METHOD, "setting": ""}
    else:
        group = {"teacher": meta.get("teacher") or model_cfg.get("teacher") or "—",
                 "student": meta.get("model") or model_cfg.get("student"), "method": method,
                 "setting": setting}
    flat = _flatten(config)
    signature = tuple(sorted((k, repr(v)) for k, v in flat.items()
                             if k not in _FREE_KEYS and not k.startswith(_FREE_SECTIONS)))
    notes = []
    counts = dict.fromkeys(PARAM_COLUMNS, math.nan)
    if checkpoint is not None or teacher_file.is_file():
        counts = parameter_counts(checkpoint or teacher_file)
    else:
        notes.append("no checkpoint: parameter counts unknown")
    extra, extra_notes = _bounds_values(run_dir, epochs, tuple(columns))
    if complete and kind != "teacher":  # the tracked columns describe students only
        notes += extra_notes
    return {
        "dataset": str((config.get("data") or {}).get("name")), **group,
        "run_dir": str(run_dir), "seed": int((config.get("run") or {}).get("seed", 0)),
        "kind": kind,
        "predicts_with": meta.get("predicts_with") or predicts_with or "own_head",
        "reduction": weights.get("reduction"),
        "epochs": epochs, "last_epoch": last_epoch, "complete": complete,
        "final_acc": 100 * float(final["eval_acc"].iloc[-1]) if complete else math.nan,
        "final_train_acc": (100 * float(final["train_acc"].iloc[-1])
                            if complete and "train_acc" in final.columns else math.nan),
        "best_acc": math.nan if best is None else 100 * float(best["eval_acc"]),
        "best_epoch": -1 if best is None else int(best["epoch"]),
        **counts, "signature": signature, "notes": "; ".join(notes), **extra,
    }


def read_runs(run_dirs, columns=()):
    """A DataFrame, one row per run (``read_run``), in the order given."""
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise IJCKDError("give at least one RUN_DIR")
    resolved = [d.resolve() for d in run_dirs]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise IJCKDError(f"run directory {str(run_dirs[i])!r} is given twice")
    return pd.DataFrame([read_run(d, columns) for d in run_dirs])


# ------------------------------------------------------------------------ the statistics


def group_label(row):
    """'ijckd (reduction=16)': method and setting; the teacher runs are 'teacher (arch)'."""
    if row["method"] == TEACHER_METHOD:
        return f"teacher ({row['teacher']})"
    return row["method"] + (f" ({row['setting']})" if row["setting"] else "")


def _verb(what):
    return "adds" if what.endswith("loss") else "add"


def summarize(runs, *, columns=(), level=LEVEL):
    """One row per group of ``runs`` (``read_runs``): seeds, the final- and best-epoch
    accuracy statistics (``<kind>_mean``, ``_std``, ``_lo``, ``_hi``, ``_interval``: how
    the interval was made, or why there is none), ``best_minus_final`` (mean over seeds
    of best − final), ``train_mean``/``train_std`` (final-epoch train accuracy), the
    parameter counts, ``replicates`` (False when the seeds' training
    configs differ beyond the seed) and ``<column>_mean``/``_std`` of each bounds column.
    Only complete runs enter the statistics; ``n_incomplete`` counts the others."""
    level = check_level(level)
    rows = []
    is_teacher = runs["method"] == TEACHER_METHOD
    runs = pd.concat([runs[is_teacher], runs[~is_teacher]])  # the teachers first
    for key, members in runs.groupby(list(GROUP_KEYS), sort=False, dropna=False):
        done = members[members["complete"]].sort_values("seed")
        row = dict(zip(GROUP_KEYS, key, strict=True))
        row["group"] = group_label(row)
        row["n_seeds"] = len(done)
        row["n_incomplete"] = int((~members["complete"]).sum())
        row["seeds"] = " ".join(str(s) for s in done["seed"])
        row["run_dirs"] = ";".join(members["run_dir"])
        row["reduction"] = members["reduction"].iloc[0]
        row["predicts_with"] = members["predicts_with"].iloc[0]
        for kind in KINDS:
            values = done[f"{kind}_acc"].to_numpy(float)
            if len(values):
                est = t_interval(values, level)
                std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
                row.update({f"{kind}_mean": est.value, f"{kind}_std": std,
                            f"{kind}_lo": est.lo, f"{kind}_hi": est.hi,
                            f"{kind}_interval": est.method})
            else:
                row.update({f"{kind}_mean": math.nan, f"{kind}_std": math.nan,
                            f"{kind}_lo": math.nan, f"{kind}_hi": math.nan,
                            f"{kind}_interval": "no complete run"})
        train = done["final_train_acc"].to_numpy(float)
        row["train_mean"] = float(train.mean()) if len(train) else math.nan
        row["train_std"] = float(train.std(ddof=1)) if len(train) > 1 else math.nan
        diff = (done["best_acc"] - done["final_acc"]).to_numpy(float)
        row["best_minus_final"] = float(diff.mean()) if len(diff) else math.nan
        source = done if len(done) else members
        for column in PARAM_COLUMNS:
            row[column] = source[column].iloc[0]
        row["replicates"] = done["signature"].nunique() <= 1
        for column in columns:
            values = done[column].to_numpy(float) if column in done else np.array([])
            values = values[np.isfinite(values)]
            row[f"{column}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            row[f"{column}_n"] = int(len(values))
        row["level"] = level
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------- published numbers


@dataclass(frozen=True)
class Published:
    """A published top-1 accuracy (percent) for ``method``; ``dataset``, ``teacher``,
    ``student``, ``setting`` (None: any; setting None means the method's defaults)
    restrict which groups it applies to."""

    method: str
    value: float
    dataset: str | None = None
    teacher: str | None = None
    student: str | None = None
    setting: str | None = None
    source: str | None = None

    def applies_to(self, group):
        """Whether this published number belongs to ``group`` (a row of the grouped runs):
        same method and setting, and every restriction that is not None matches."""
        if group["method"] != self.method:
            return False
        if (self.setting or "") != (group["setting"] or ""):
            return False
        return all(getattr(self, key) in (None, group[key])
                   for key in ("dataset", "teacher", "student"))


def _published_value(value, where):
    if isinstance(value, bool):
        raise IJCKDError(f"{where}: the published value must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise IJCKDError(f"{where}: the published value must be a number (percent), got "
                         f"{value!r}") from None
    if not 0 < number <= 100:
        raise IJCKDError(f"{where}: the published value must be an accuracy in percent "
                         f"(0, 100], got {value!r}")
    return number


def parse_published(pairs):
    """``--published METHOD=VALUE`` strings to ``Published`` entries (VALUE in percent)."""
    entries = []
    for text in pairs:
        method, sep, value = str(text).partition("=")
        if not sep or not method.strip():
            raise IJCKDError(f"--published takes METHOD=VALUE (e.g. kd=71.03), got {text!r}")
        entries.append(Published(method.strip(), _published_value(value, f"--published "
                                                                          f"{text}")))
    return entries


_ENTRY_KEYS = {"method", "value", "dataset", "teacher", "student", "setting", "source"}


def read_published(path):
    """``Published`` entries of a YAML file (safe loader)::

    dataset: imagenet          # optional defaults for every entry
    teacher: resnet34
    published:
      - {method: kd, student: resnet18, value: 71.03, source: "…"}
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise IJCKDError(f"published file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise IJCKDError(f"published file {str(path)!r} is not valid YAML: "
                         f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("published"), list):
        raise IJCKDError(f"published file {str(path)!r} must hold a list under 'published:'")
    defaults = {k: data[k] for k in ("dataset", "teacher", "student") if k in data}
    unknown = set(data) - {"published", "dataset", "teacher", "student", "description"}
    if unknown:
        raise IJCKDError(f"published file {str(path)!r}: unknown key {sorted(unknown)[0]!r}; "
                         f"valid: dataset, description, published, student, teacher")
    entries = []
    for i, entry in enumerate(data["published"]):
        where = f"published file {str(path)!r}, entry {i + 1}"
        if not isinstance(entry, dict) or "method" not in entry or "value" not in entry:
            raise IJCKDError(f"{where}: each entry needs 'method' and 'value'")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise IJCKDError(f"{where}: unknown key {sorted(unknown)[0]!r}; valid: "
                             f"{', '.join(sorted(_ENTRY_KEYS))}")
        merged = {**defaults, **entry}
        entries.append(Published(
            method=str(merged["method"]), value=_published_value(merged["value"], where),
            **{k: None if merged.get(k) is None else str(merged[k])
               for k in ("dataset", "teacher", "student", "setting", "source")}))
    return entries


def _fmt(value, digits=2, sign=False):
    if value is None or not np.isfinite(value):
        return "–"
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return text.replace("-", "\u2212")  # a typographic minus in the report


def verdict(group, runs, published, kind):
    """The verdict of ``published`` (a Published) against ``group``'s ``kind`` accuracy
    ("final"/"best"): a dict with ``verdict`` (consistent / below / above / no interval),
    ``gap`` (mean − published, points), ``gap_lo``/``gap_hi`` and ``arithmetic`` (the
    sentence that shows the computation)."""
    from scipy.stats import t as student_t

    mean, lo, hi = group[f"{kind}_mean"], group[f"{kind}_lo"], group[f"{kind}_hi"]
    value, n = published.value, int(group["n_seeds"])
    label = KIND_LABELS[kind]
    out = {"group": group["group"], "dataset": group["dataset"], "teacher": group["teacher"],
           "student": group["student"], "method": group["method"],
           "setting": group["setting"], "accuracy": label, "published": value,
           "source": published.source or "", "mean": mean, "n_seeds": n,
           "gap": mean - value if n else math.nan, "gap_lo": lo - value, "gap_hi": hi - value}
    if n == 0:
        out.update(verdict="no complete run", arithmetic=f"{label}: no complete run to compare")
        return out
    seeds = ", ".join(_fmt(v) for v in runs[f"{kind}_acc"])
    if n < 2:
        out.update(verdict="no interval", arithmetic=(
            f"{label}: one seed ({seeds}); an interval needs at least two seeds, so no "
            f"verdict; gap {_fmt(mean)} − {_fmt(value)} = {_fmt(mean - value, sign=True)} "
            f"points"))
        return out
    level = group["level"]
    t_crit = float(student_t.ppf((1 + level) / 2, n - 1))
    std = group[f"{kind}_std"]
    steps = (f"{label}: seeds {seeds}; mean {_fmt(mean)}, s = {_fmt(std)}; "
             f"t({(1 + level) / 2:.3f}, {n - 1}) = {t_crit:.3f}; half-width {t_crit:.3f} × "
             f"{_fmt(std)} / √{n} = {_fmt(t_crit * std / math.sqrt(n))} → "
             f"[{_fmt(lo)}, {_fmt(hi)}]")
    if lo <= value <= hi:
        out.update(verdict="consistent",
                   arithmetic=f"{steps}; published {_fmt(value)} lies inside: consistent")
        return out
    gap = mean - value
    text = (f"{steps}; published {_fmt(value)} lies {'above' if gap < 0 else 'below'} it: "
            f"gap {_fmt(mean)} − {_fmt(value)} = {_fmt(gap, sign=True)} points "
            f"[{_fmt(lo - value, sign=True)}, {_fmt(hi - value, sign=True)}]")
    spread = group["best_minus_final"]
    if np.isfinite(spread) and abs(gap) <= abs(spread):
        text += (f"; the gap is within the best-versus-last difference "
                 f"({_fmt(spread, sign=True)} points on average)")
    out.update(verdict="below" if gap < 0 else "above", arithmetic=text)
    return out


def verdicts(groups, runs, published):
    """Every applicable verdict, final and best epoch, as a DataFrame (empty if none);
    a published entry that applies to no group is returned in the second value."""
    rows, unused = [], []
    for entry in published:
        matched = False
        for _, group in groups.iterrows():
            if not entry.applies_to(group):
                continue
            matched = True
            members = _members(runs, group)
            for kind in KINDS:
                rows.append(verdict(group, members, entry, kind))
        if not matched:
            unused.append(entry)
    return pd.DataFrame(rows), unused


def _members(runs, group):
    mask = np.ones(len(runs), dtype=bool)
    for key in GROUP_KEYS:
        mask &= (runs[key] == group[key]).to_numpy()
    members = runs[mask]
    return members[members["complete"]].sort_values("seed")


# ------------------------------------------------------------------------------ controls


def control_of(group, groups):
    """The control group of ``group`` (a row of ``summarize``), or None: ``ce_connector``
    at the same dataset, teacher, student and connector reduction for methods predicting
    through a connector and ``h_T``; ``ce`` on the same dataset and student (the same
    teacher preferred) for methods whose connector trains only (FitNet, SRRL)."""
    if group["method"] in (TEACHER_METHOD, "ce", "ce_connector"):
        return None
    same = groups[(groups["dataset"] == group["dataset"])
                  & (groups["student"] == group["student"])]
    if group["predicts_with"] == "teacher_classifier":
        candidates = same[(same["method"] == "ce_connector")
                          & (same["teacher"] == group["teacher"])
                          & (same["reduction"] == group["reduction"])]
    elif group["connector_params"] > 0:
        candidates = same[(same["method"] == "ce") & (same["setting"] == "")]
        preferred = candidates[candidates["teacher"] == group["teacher"]]
        candidates = preferred if len(preferred) else candidates
    else:
        return None
    return candidates.iloc[0] if len(candidates) else None


def control_differences(groups, runs):
    """For every group with a control: the final-epoch difference (points) with its
    Welch interval and the sentence saying it, as a DataFrame (empty if none)."""
    rows = []
    for _, group in groups.iterrows():
        control = control_of(group, groups)
        if control is None:
            continue
        mine = _members(runs, group)["final_acc"].to_numpy(float)
        theirs = _members(runs, control)["final_acc"].to_numpy(float)
        what = _ADDED_LOSSES.get(group["method"], f"{group['method']}'s distillation losses")
        alone = ("the connector alone" if control["method"] == "ce_connector"
                 else "the student trained with cross-entropy alone")
        row = {"dataset": group["dataset"], "teacher": group["teacher"],
               "student": group["student"], "group": group["group"],
               "control": control["group"], "n_seeds": len(mine),
               "n_control_seeds": len(theirs)}
        if len(mine) == 0 or len(theirs) == 0:
            row.update(diff=math.nan, diff_lo=math.nan, diff_hi=math.nan,
                       sentence=f"{group['group']}: no complete run to compare with "
                                f"{control['group']}")
            rows.append(row)
            continue
        est = welch_interval(mine, theirs, group["level"])
        row.update(diff=est.value, diff_lo=est.lo, diff_hi=est.hi)
        if np.isfinite(est.lo):
            where = ("the interval contains 0: no gain shown" if est.lo <= 0 <= est.hi
                     else "a gain" if est.lo > 0 else "a loss")
            sentence = (f"{what} {_verb(what)} {_fmt(est.value, 1, sign=True)} points "
                        f"[{_fmt(est.lo, 1, sign=True)}, {_fmt(est.hi, 1, sign=True)}] over "
                        f"{alone} ({group['group']} vs {control['group']}, final epoch, "
                        f"Welch {group['level']:.0%}: {where}; trained parameters "
                        f"{_count(group['trained_params'])} vs "
                        f"{_count(control['trained_params'])})")
        else:
            sentence = (f"{what} {_verb(what)} {_fmt(est.value, 1, sign=True)} points over "
                        f"{alone} ({group['group']} vs {control['group']}, final epoch); "
                        f"{est.method}")
        row["sentence"] = sentence[0].upper() + sentence[1:]
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------- outputs


def _pct_cell(group, kind):
    mean, std = group[f"{kind}_mean"], group[f"{kind}_std"]
    if not np.isfinite(mean):
        return "–"
    return _fmt(mean) + (f" ± {_fmt(std)}" if np.isfinite(std) else "")


def _interval_cell(group, kind):
    if np.isfinite(group[f"{kind}_lo"]):
        return f"[{_fmt(group[f'{kind}_lo'])}, {_fmt(group[f'{kind}_hi'])}]"
    if group["n_seeds"] == 1:
        return "none: one seed (an interval needs two)"
    return "–"


def _count(value):
    return "–" if not np.isfinite(value) else f"{int(value):,}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def compare_markdown(runs, groups, verdict_df, controls, *, columns=(), unused=()):
    """The text of compare.md."""
    level = float(groups["level"].iloc[0])
    lines = ["# Compare: seeds, controls and published numbers", "",
             f"Eval accuracy (%) over seeds: mean ± sample std, and the {level:.0%} "
             "Student-t interval of the mean, at the **final epoch** (the configured last "
             "one) and at the **best epoch** (the best of each run's eval accuracies: "
             "choosing it on the eval split is optimistic). `best − final`: mean over seeds. "
             "Parameters: `student` (what of the student trains), `connector`, `trained` "
             "(everything the optimizer updates), `predict` (everything from input to "
             "prediction, a frozen teacher classifier included).", ""]
    for dataset, block in groups.groupby("dataset", sort=False):
        lines += [f"## `{dataset}`", ""]
        rows = []
        for _, g in block.iterrows():
            rows.append([g["group"], g["teacher"], g["student"], g["n_seeds"],
                         _pct_cell(g, "final"), _interval_cell(g, "final"),
                         _pct_cell(g, "best"), _interval_cell(g, "best"),
                         _fmt(g["best_minus_final"], sign=True),
                         *(_count(g[c]) for c in PARAM_COLUMNS)])
        lines += _table(["method", "teacher", "student", "seeds", "final epoch",
                         "final 95% CI", "best epoch", "best 95% CI", "best − final",
                         "student", "connector", "trained", "predict"], rows)
        lines.append("")
        present = [c for c in columns if block[f"{c}_n"].sum() > 0]
        if present:
            lines += [f"Tracked at the final epoch (eval split, from each run's "
                      f"`{BOUNDS_CSV}`), mean ± std over seeds:", ""]
            rows = [[g["group"], *(_mean_std(g, c) + (f" (n={g[f'{c}_n']})"
                                                       if 0 < g[f"{c}_n"] < g["n_seeds"] else "")
                                   for c in present)]
                    for _, g in block.iterrows()]
            lines += _table(["method", *present], rows)
            lines.append("")
        mine = controls[controls["dataset"] == dataset] if len(controls) else controls
        if len(mine):
            lines += ["Against the controls (final epoch, Welch 95% interval of the "
                      "difference in points):", ""]
            lines += [f"- {s}" for s in mine["sentence"]]
            lines.append("")
        odd = block[~block["replicates"]]
        for _, g in odd.iterrows():
            lines += [f"Note: the runs of {g['group']} differ in more than the seed "
                      f"(their training configs are not the same); they are not replicates.",
                      ""]
    if len(verdict_df):
        lines += ["## Published numbers", ""]
        for (group, dataset, value), block in verdict_df.groupby(
                ["group", "dataset", "published"], sort=False):
            first = block.iloc[0]
            source = f" (source: {first['source']})" if first["source"] else ""
            lines.append(f"- **{group}** on `{dataset}` ({first['teacher']} → "
                         f"{first['student']}), published {_fmt(value)}{source}:")
            for _, v in block.iterrows():
                lines.append(f"  - **{v['verdict']}** — {v['arithmetic']}")
        lines.append("")
    for entry in unused:
        where = ", ".join(f"{key} {getattr(entry, key)}" for key in ("dataset", "teacher",
                                                                     "student")
                          if getattr(entry, key)) or "any pair"
        lines += [f"Published {entry.method} = {_fmt(entry.value)} ({where}) matches no "
                  "group of these runs: no number is claimed for a run not made.", ""]
    incomplete = runs[~runs["complete"]]
    if len(incomplete):
        lines += ["## Runs left out (missing their last epoch)", ""]
        lines += [f"- `{r['run_dir']}` ({group_label(r)}, seed {r['seed']}): history ends at "
                  f"epoch {r['last_epoch']} of {r['epochs']}; not averaged in"
                  for _, r in incomplete.iterrows()]
        lines.append("")
    noted = runs[(runs["notes"] != "") & runs["complete"]]
    if len(noted):
        lines += ["## Notes", ""]
        lines += [f"- `{r['run_dir']}`: {r['notes']}" for _, r in noted.iterrows()]
        lines.append("")
    return "\n".join(lines)


def _mean_std(group, column):
    mean, std = group[f"{column}_mean"], group[f"{column}_std"]
    if not np.isfinite(mean):
        return "–"
    digits = 4 if abs(mean) < 1 else 2
    return _fmt(mean, digits) + (f" ± {_fmt(std, digits)}" if np.isfinite(std) else "")


def figure_frame(runs, groups, verdict_df):
    """The DataFrame ``plotting.compare.plot_compare`` draws: one ``kind == "seed"`` row
    per complete run (``final_acc``, ``best_acc``) and one ``kind == "published"`` row per
    published value, each with its group's ``group``, ``dataset``, ``method``, ``order``
    and final-epoch statistics (``final_mean``, ``final_lo``, ``final_hi``, ``n_seeds``)."""
    stats = groups[[*GROUP_KEYS, "group", "final_mean", "final_lo", "final_hi", "n_seeds"]]
    stats = stats.assign(order=range(len(stats)))
    done = runs[runs["complete"]]
    seeds = done[[*GROUP_KEYS, "seed", "final_acc", "best_acc"]].merge(
        stats, on=list(GROUP_KEYS)).assign(kind="seed")
    frames = [seeds]
    if len(verdict_df):
        pub = verdict_df.drop_duplicates(["group", "dataset", "published"])
        pub = pub[["dataset", "group", "published"]].merge(stats, on=["dataset", "group"])
        frames.append(pub.assign(kind="published"))
    return pd.concat(frames, ignore_index=True).sort_values(["order", "kind"],
                                                            kind="stable")


@dataclass(frozen=True)
class Comparison:
    """Everything ``compare`` finds: ``runs`` (one row per run), ``groups`` (one row per
    group, ``summarize``), ``verdicts`` (one row per published value × final/best),
    ``controls`` (one row per group with a control) and ``unused`` (published entries
    that match no group)."""

    runs: pd.DataFrame
    groups: pd.DataFrame
    verdicts: pd.DataFrame
    controls: pd.DataFrame
    unused: tuple
    columns: tuple


def compare_runs(run_dirs, *, published=(), published_file=None, columns=(), level=LEVEL):
    """Read and compare ``run_dirs``; ``published``: METHOD=VALUE strings,
    ``published_file``: a YAML file of ``read_published``; ``columns``: bounds.csv columns
    to aggregate at the final epoch. Returns a ``Comparison``."""
    level = check_level(level)
    columns = tuple(dict.fromkeys(columns))
    entries = parse_published(published)
    if published_file is not None:
        entries += read_published(published_file)
    runs = read_runs(run_dirs, columns)
    groups = summarize(runs, columns=columns, level=level)
    verdict_df, unused = verdicts(groups, runs, entries)
    controls = control_differences(groups, runs)
    return Comparison(runs, groups, verdict_df, controls, tuple(unused), columns)


def write_comparison(comparison, out_dir):
    """Write compare.md, compare.csv (one row per group), compare_runs.csv (one row per
    run), compare_published.csv (when there are published values) and
    compare_<dataset>.png/.pdf to ``out_dir``; returns the written paths."""
    from ijckd_bounds.io import atomic_write_text, check_writable_dir
    from ijckd_bounds.plotting.compare import plot_compare
    from ijckd_bounds.plotting.output import _safe_name, save_figure
    from ijckd_bounds.plotting.style import paper_style

    out_dir = Path(out_dir)
    check_writable_dir(out_dir)
    runs, groups, controls = comparison.runs, comparison.groups, comparison.controls
    verdict_df = comparison.verdicts
    text = compare_markdown(runs, groups, verdict_df, controls, columns=comparison.columns,
                            unused=comparison.unused)
    written = [out_dir / "compare.md", out_dir / "compare.csv", out_dir / "compare_runs.csv"]
    atomic_write_text(written[0], text)
    table = groups
    if len(controls):
        renamed = controls[["dataset", "group", "control", "diff", "diff_lo", "diff_hi"]].rename(
            columns={"diff": "control_diff", "diff_lo": "control_diff_lo",
                     "diff_hi": "control_diff_hi"})
        table = groups.merge(renamed, on=["dataset", "group"], how="left")
    atomic_write_text(written[1], table.to_csv(index=False))
    atomic_write_text(written[2], runs.drop(columns=["signature"]).to_csv(index=False))
    if len(verdict_df):
        written.append(out_dir / "compare_published.csv")
        atomic_write_text(written[-1], verdict_df.to_csv(index=False))
    frame = figure_frame(runs, groups, verdict_df)
    for dataset in groups["dataset"].unique():
        mine = frame[frame["dataset"] == dataset]
        if not (mine["kind"] == "seed").any():
            continue
        with paper_style():
            ax = plot_compare(mine)
            ax.set_title(f"{dataset}: eval accuracy over seeds", loc="left", pad=30)
        written += save_figure(ax.figure, out_dir / f"compare_{_safe_name(dataset)}")
    return written


def run_compare(run_dirs, out_dir, *, published=(), published_file=None, columns=(),
                level=LEVEL):
    """``compare_runs`` then ``write_comparison``: what ``ijckd-bounds compare`` does."""
    comparison = compare_runs(run_dirs, published=published, published_file=published_file,
                              columns=columns, level=level)
    return write_comparison(comparison, out_dir)
