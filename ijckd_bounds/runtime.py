"""Where this process runs: its device, its place among the launcher's processes, a
barrier, and how it shows progress.

Shared by ``train/`` and ``tracking/`` so that tracking never imports the trainer. A
launcher such as ``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; joining the process
group is the trainer's job (``train.distributed.init_distributed``).
"""

import os
import sys

import torch
import torch.distributed as dist

from ijckd_bounds.errors import IJCKDError


def env_int(name, default):
    """The integer in environment variable ``name``, ``default`` when unset or empty."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise IJCKDError(f"environment variable {name} must be an integer, got {raw!r}") from None


def resolve_device(spec, local_rank=None, *, what="run.device",
                   fix="; use run.device=cpu or auto"):
    """``"auto"`` -> cuda:LOCAL_RANK when CUDA is available, else cpu; ``"cuda"`` ->
    cuda:LOCAL_RANK; anything else as ``torch.device`` reads it. ``local_rank`` defaults to
    the LOCAL_RANK environment variable (0 when unset); ``what`` names the setting in
    errors, ``fix`` ends the CUDA one."""
    if local_rank is None:
        local_rank = env_int("LOCAL_RANK", 0)
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise IJCKDError(f"{what} must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                         f"got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise IJCKDError(f"{what} is {spec!r} but CUDA is not available here{fix}")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def rank_and_world(group=None):
    """``(rank, world_size)`` of this process in ``group`` (default group), or (0, 1)
    outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def barrier(group=None):
    """Wait for every rank of ``group``; a no-op in one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.barrier(group=group)


def progress_modes(setting):
    """``(bars, lines)`` for ``run.progress`` = ``setting``: tqdm bars on stderr (None: when
    stderr is a terminal; True: always), one plain line per epoch or checkpoint on stdout
    when stdout is not a terminal (a log file or a pipe). False: neither."""
    if setting is False:
        return False, False
    bars = True if setting else sys.stderr.isatty()
    return bars, not sys.stdout.isatty()
