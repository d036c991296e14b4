"""Callbacks of the training loop: per-epoch history and per-step log files, progress bars.

``history.csv``: one row per epoch: epoch, step, lr, train_<term> for every loss term,
train_acc, eval_acc, best_eval_acc, best_epoch, seconds. Rewritten atomically each epoch.
``steps.csv``: one row per optimizer step: epoch, step, lr, every loss term, acc;
appended at each epoch's end. On resume, rows past the checkpoint's epoch are dropped
from both. ``TensorBoardLogger`` (``run.tensorboard=true``) shows the same numbers and the
tracked bound terms in TensorBoard.
"""

import csv
import io
import logging
import time
from pathlib import Path

from ijckd_bounds.io import atomic_write_text
from ijckd_bounds.runtime import progress_modes
from ijckd_bounds.train.loop import Callback

log = logging.getLogger("ijckd_bounds.train")

HISTORY_CSV = "history.csv"
STEPS_CSV = "steps.csv"


def _read_rows(path):
    path = Path(path)
    if not path.is_file():
        return [], None
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [row for row in reader if None not in row and None not in row.values()]
        return rows, reader.fieldnames


def _csv_text(rows, columns):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def truncate_logs(run_dir, last_epoch):
    """Drop history/steps rows of epochs after ``last_epoch`` (the resumed checkpoint's);
    rows cut short by a kill are dropped too."""
    for name in (HISTORY_CSV, STEPS_CSV):
        path = Path(run_dir) / name
        rows, columns = _read_rows(path)
        if columns is None:
            continue
        kept = [row for row in rows if _int(row.get("epoch")) is not None
                and _int(row["epoch"]) <= last_epoch]
        atomic_write_text(path, _csv_text(kept, columns))


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


class HistoryWriter(Callback):
    """Writes ``history.csv`` and ``steps.csv`` in the run directory (rank 0 only)."""

    def __init__(self, run_dir, term_names):
        self.run_dir = Path(run_dir)
        self.history_columns = (["epoch", "step", "lr"] + [f"train_{t}" for t in term_names]
                                + ["train_acc", "eval_acc", "best_eval_acc", "best_epoch",
                                   "seconds"])
        self.step_columns = ["epoch", "step", "lr", *term_names, "acc"]
        self.history, _ = _read_rows(self.run_dir / HISTORY_CSV)
        self.pending_steps = []
        self.started = time.perf_counter()

    def on_step_end(self, step, epoch, values):
        """Keep this step's values for ``steps.csv`` (written at the end of the epoch)."""
        self.pending_steps.append({"epoch": epoch, "step": step, **values})

    def on_epoch_end(self, epoch, metrics):
        """Rewrite ``history.csv`` with this epoch's row, append the epoch's steps to
        ``steps.csv`` and log the epoch's line."""
        row = {"epoch": epoch, "seconds": round(time.perf_counter() - self.started, 3),
               **metrics}
        self.history.append(row)
        atomic_write_text(self.run_dir / HISTORY_CSV,
                          _csv_text(self.history, self.history_columns))
        steps_path = self.run_dir / STEPS_CSV
        text = _csv_text(self.pending_steps, self.step_columns)
        if steps_path.is_file() and steps_path.stat().st_size > 0:
            text = text.split("\n", 1)[1]  # the header is already there
        with open(steps_path, "a", newline="") as fh:
            fh.write(text)
        self.pending_steps = []
        self.started = time.perf_counter()
        terms = ", ".join(f"{k[6:]} {v:.4g}" for k, v in metrics.items()
                          if k.startswith("train_") and k != "train_acc")
        log.info("epoch %d: %s, train acc %.4f, eval acc %.4f (best %.4f at epoch %d)", epoch,
                 terms, metrics["train_acc"], metrics["eval_acc"], metrics["best_eval_acc"],
                 metrics["best_epoch"])


def epoch_line(epoch, epochs, metrics, seconds):
    """``epoch 3/15: loss 0.51, ce 0.3, kl 0.21, train acc 0.9123, eval acc 0.8811, 1.2 s``."""
    terms = ", ".join(f"{k[6:]} {v:.4g}" for k, v in metrics.items()
                      if k.startswith("train_") and k != "train_acc")
    return (f"epoch {epoch}/{epochs}: {terms}, train acc {metrics['train_acc']:.4f}, "
            f"eval acc {metrics['eval_acc']:.4f}, {seconds:.1f} s")


class ProgressBars(Callback):
    """tqdm bars over epochs and batches with the loss terms in the batch bar, and one
    line per epoch (``epoch_line``) on stdout when stdout is not a terminal.

    ``enabled``: ``run.progress`` (see ``runtime.progress_modes``).
    """

    def __init__(self, first_epoch, epochs, enabled=None):
        from tqdm.auto import tqdm

        self.tqdm = tqdm
        bars, self.lines = progress_modes(enabled)
        self.disable = not bars
        self.epochs = epochs
        self.epoch_bar = tqdm(total=epochs, initial=first_epoch - 1, desc="epochs",
                              unit="epoch", disable=self.disable, dynamic_ncols=True)
        self.batch_bar = None
        self.started = time.perf_counter()

    def batches(self, batches, epoch):
        """``batches`` wrapped in this epoch's batch bar."""
        self.started = time.perf_counter()
        self.batch_bar = self.tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False,
                                   disable=self.disable, dynamic_ncols=True)
        return self.batch_bar

    def on_step_end(self, step, epoch, values):
        """Show this step's loss terms on the batch bar."""
        if not self.disable and self.batch_bar is not None:
            self.batch_bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k != "lr"},
                                       refresh=False)

    def on_epoch_end(self, epoch, metrics):
        """Advance the epoch bar (and print the epoch's line in line mode)."""
        if not self.disable:
            self.epoch_bar.update(1)
            self.epoch_bar.set_postfix(loss=f"{metrics['train_loss']:.4g}",
                                       eval_acc=f"{metrics['eval_acc']:.4f}")
        if self.lines:
            print(epoch_line(epoch, self.epochs, metrics, time.perf_counter() - self.started),
                  flush=True)

    def close(self):
        """Close the bars."""
        if self.batch_bar is not None:
            self.batch_bar.close()
        self.epoch_bar.close()


TENSORBOARD_DIR = "tensorboard"


class TensorBoardLogger(Callback):
    """``run.tensorboard=true``: every loss term, the accuracies and the learning rate per
    epoch, and every bound term that tracking wrote for a checkpoint (its ``bounds.csv``
    row, so this callback comes after the tracker), as TensorBoard scalars in
    RUN_DIR/tensorboard. The CSV tables stay the record; this is a view of them.

    Needs the ``tensorboard`` package (``pip install 'ijckd_bounds[tensorboard]'``), imported
    only when the callback is made; without it, one line says so.
    """

    def __init__(self, run_dir, first_epoch=1):
        from ijckd_bounds.errors import IJCKDError

        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise IJCKDError("run.tensorboard=true needs the tensorboard package: pip install "
                             "'ijckd_bounds[tensorboard]' (or tensorboard)") from None
        self.run_dir = Path(run_dir)
        # a resumed run rewrites the epochs after its checkpoint: drop their old events
        self.writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=first_epoch)

    def on_epoch_end(self, epoch, metrics):
        """Log the epoch's train terms, eval accuracy and learning rate."""
        for key, value in metrics.items():
            if key.startswith("train_"):
                self.writer.add_scalar(f"train/{key[6:]}", value, epoch)
        for key in ("eval_acc", "lr"):
            self.writer.add_scalar(f"epoch/{key}", metrics[key], epoch)
        self.writer.flush()

    def on_checkpoint(self, path, epoch):
        """Log the bound terms of the checkpoint at ``path`` from ``bounds.csv``, if it has
        been tracked."""
        import math

        from ijckd_bounds import schema

        bounds = self.run_dir / "bounds.csv"
        rows, _ = _read_rows(bounds)
        row = next((r for r in reversed(rows) if r.get("checkpoint") == Path(path).name), None)
        if row is None:
            return  # not tracked
        for term in schema.INTERVAL_TERMS + schema.BOUNDS:
            value = _float(row.get(term))
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(f"bounds/{term}", value, epoch)
        self.writer.flush()

    def close(self):
        """Close the event writer."""
        self.writer.close()


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
