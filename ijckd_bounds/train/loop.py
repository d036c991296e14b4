"""The one training loop. It knows nothing about distillation: it calls an objective
``engine(x, y) -> (terms, logits)``, steps the optimizer, and tells callbacks.

Callbacks are duck-typed objects with any of ``on_step_end(step, epoch, values)``,
``on_epoch_end(epoch, metrics)``, ``on_checkpoint(path, epoch)``, and
``on_resume(path, epoch, step)`` (called by the runner before ``fit`` when a run continues
from a checkpoint); ``Callback`` gives no-op defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ijckd_bounds.errors import IJCKDError

if TYPE_CHECKING:  # annotation only: the loop takes what the runner builds
    from ijckd_bounds.train.distributed import Precision, RunData


class Callback:
    """The hooks ``fit`` calls (the extension API of the trainer); each does nothing unless
    a subclass overrides it. A callback need not subclass this: ``notify`` calls only the
    hooks an object has."""

    def on_step_end(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        """``values``: {term: float, "acc": float, "lr": float} of this step."""

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """``metrics``: {"train_<term>", "train_acc", "eval_acc", "best_eval_acc", ...}."""

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        """``path``: the checkpoint just written."""

    def on_resume(self, path: Path, epoch: int, step: int) -> None:
        """The run continues from checkpoint ``path``, which completed ``epoch`` epochs and
        ``step`` optimizer steps."""


@dataclass
class TrainState:
    """Progress that a checkpoint restores: epochs completed, optimizer steps taken."""

    epoch: int = 0
    step: int = 0
    best_eval_acc: float = -math.inf
    best_epoch: int = 0
    last_checkpoint: str | None = None


def notify(callbacks: Sequence[object], event: str, *args: Any) -> None:
    """Call ``event(*args)`` on every callback that has that hook."""
    for callback in callbacks:
        handler = getattr(callback, event, None)
        if handler is not None:
            handler(*args)


def check_finite(names: Sequence[str], values: Sequence[float], state: TrainState,
                 epoch: int) -> None:
    """Raise before the update if any loss term is NaN/inf (one line, with the way back).

    The components are checked before the total, so the line names the term that broke.
    ``values`` may run on past the loss terms (the step's accuracy): only ``names`` are checked.
    """
    pairs = list(zip(names, values, strict=False))
    for name, value in pairs[1:] + pairs[:1]:
        if not math.isfinite(value):
            where = state.last_checkpoint or "none yet (the run has not written one)"
            raise IJCKDError(f"loss term {name!r} is {value} at step {state.step + 1} (epoch "
                             f"{epoch}); stopped before the update. Last good checkpoint: {where}")


def fit(objective: torch.nn.Module, engine: torch.nn.Module, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler, precision: Precision, data: RunData,
        state: TrainState, callbacks: Sequence[object], *, epochs: int,
        save_checkpoint: Callable[[TrainState, dict[str, float]], Path | None]
        ) -> TrainState:
    """Train from ``state.epoch + 1`` to ``epochs``.

    ``engine`` is the objective or its DDP wrapper; ``data`` gives ``train_batches(epoch)``,
    ``to_device(x, y)``, ``reduce(tensor)`` (sum over ranks), ``evaluate(objective)`` and
    ``batches_bar(batches, epoch)``; ``save_checkpoint(state, metrics) -> path | None``
    (None: no checkpoint this epoch).
    """
    names = objective.term_names
    for epoch in range(state.epoch + 1, epochs + 1):
        objective.train()
        sums = torch.zeros(len(names) + 2, dtype=torch.float64)
        lr = optimizer.param_groups[0]["lr"]
        for x, y in data.batches_bar(data.train_batches(epoch), epoch):
            x, y = data.to_device(x, y)
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                terms, logits = engine(x, y)
            precision.backward(terms["loss"])
            n = torch.tensor(float(len(y)), device=y.device)
            local = torch.stack([*(terms[k].detach().float() * n for k in names),
                                 (logits.argmax(1) == y).sum().float(), n])
            step_sums = data.reduce(local).double().cpu()  # the one sync per step
            count = step_sums[-1].item()
            values = (step_sums[:-1] / count).tolist()
            check_finite(names, values, state, epoch)
            precision.step(optimizer)
            state.step += 1
            sums += step_sums
            notify(callbacks, "on_step_end", state.step, epoch,
                   {**dict(zip(names, values[:-1], strict=True)), "acc": values[-1], "lr": lr})
        scheduler.step()
        means = (sums[:-2] / sums[-1]).tolist()
        metrics = {f"train_{k}": v for k, v in zip(names, means, strict=True)}
        metrics.update(train_acc=(sums[-2] / sums[-1]).item(), lr=lr, step=state.step)
        metrics["eval_acc"] = data.evaluate(objective)
        if metrics["eval_acc"] > state.best_eval_acc:
            state.best_eval_acc, state.best_epoch = metrics["eval_acc"], epoch
        metrics.update(best_eval_acc=state.best_eval_acc, best_epoch=state.best_epoch)
        state.epoch = epoch
        notify(callbacks, "on_epoch_end", epoch, metrics)
        path = save_checkpoint(state, metrics)
        if path is not None:
            state.last_checkpoint = str(path)
            notify(callbacks, "on_checkpoint", path, epoch)
    return state
