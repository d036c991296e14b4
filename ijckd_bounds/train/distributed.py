"""Processes, devices and batches: one process or many (torchrun / torch.distributed).

``torchrun`` (or any launcher) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; ``init_distributed`` joins the group (NCCL on CUDA, gloo on CPU). The data
order is one seeded permutation per epoch shared by all ranks; each global batch of
``batch_size`` samples is cut into ``world_size`` equal contiguous slices, one per rank,
so N processes see exactly the batches one process would (DDP averages the gradients of
the equal slices, i.e. the gradient of the global batch mean). Only rank 0 writes files.

Batches come from a ``DataLoader`` (``data.num_workers`` worker processes,
``data.pin_memory``, ``data.persistent_workers``, ``data.prefetch_factor``) for every split
that is not an in-memory tensor split without augmentation (image folders always). The
random augmentation of sample ``i`` in epoch ``e`` is drawn from torch's RNG seeded with
(``run.seed``, ``e``, ``i``) (``SeededItems``), so it does not depend on which worker loads
it, how many workers there are or whether they persist across epochs: a resumed run sees
the same augmented images as an uninterrupted one.
"""

import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.runtime import env_int, resolve_device


@dataclass(frozen=True)
class DistContext:
    """Where this process trains: its ``rank`` of ``world_size`` processes, its
    ``local_rank`` on the node and its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self):
        """Whether this is rank 0, the process that writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self):
        """Whether there is more than one process."""
        return self.world_size > 1


def init_distributed(device_spec="auto"):
    """Join the process group when WORLD_SIZE > 1; return this process's DistContext."""
    world_size = env_int("WORLD_SIZE", 1)
    rank = env_int("RANK", 0)
    local_rank = env_int("LOCAL_RANK", 0)
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed(ctx):
    """Leave the process group ``ctx`` joined, if any."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


class ShardedBatchSampler:
    """Index batches of one epoch for one rank.

    A permutation of ``range(n)`` from a generator seeded with (seed, epoch); global
    batches of ``batch_size`` (the last incomplete one dropped, so every rank takes every
    step with equal slices); this rank takes slice ``rank`` of ``world_size`` equal
    contiguous slices of each.
    """

    def __init__(self, n, batch_size, *, seed, epoch, rank=0, world_size=1):
        if batch_size % world_size:
            raise IJCKDError(f"data.batch_size ({batch_size}) must be divisible by the number of "
                             f"processes ({world_size})")
        if n < batch_size:
            raise IJCKDError(f"data.batch_size ({batch_size}) exceeds the training split size "
                             f"({n}); lower it")
        self.n, self.batch_size = n, batch_size
        self.seed, self.epoch = seed, epoch
        self.rank, self.world_size = rank, world_size

    def __len__(self):
        return self.n // self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        per_rank = self.batch_size // self.world_size
        for b in range(len(self)):
            start = b * self.batch_size + self.rank * per_rank
            yield order[start:start + per_rank].tolist()


class Precision:
    """Mixed precision on CUDA (bf16/fp16 autocast, a GradScaler for fp16); on other
    devices the flag is ignored with a warning and everything runs in float32."""

    def __init__(self, amp, device):
        if amp != "none" and device.type != "cuda":
            warnings.warn(f"run.amp={amp} is ignored on {device.type}: training in float32",
                          stacklevel=2)
            amp = "none"
        self.amp, self.device = amp, device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None

    def autocast(self):
        """The autocast context of the forward pass (a no-op context in float32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss):
        """Backpropagate ``loss`` (scaled for fp16)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer):
        """Step ``optimizer`` (through the scaler for fp16, which then updates its scale)."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self):
        """The grad scaler's state, or None without one (the checkpoint keeps it)."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state):
        """Restore the grad scaler's state from ``state`` (ignored without a scaler)."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def item_seed(seed, epoch, index):
    """The RNG seed of sample ``index``'s augmentation in ``epoch`` (a 63-bit integer)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (1 << 63)


class SeededItems(torch.utils.data.Dataset):
    """``dataset`` indexed by ``(epoch, index)``: item ``index`` with torch's CPU RNG seeded
    by ``item_seed(seed, epoch, index)`` while it is loaded (and restored afterwards, so the
    caller's random stream is untouched when loading runs in the main process)."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        generator = torch.random.default_generator
        saved = generator.get_state()
        generator.manual_seed(item_seed(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(saved)


class EpochBatches:
    """A batch sampler whose epoch is set before each pass: yields this rank's
    ``ShardedBatchSampler`` batches as lists of ``(epoch, index)`` keys for ``SeededItems``.
    One object serves every epoch, so a DataLoader with persistent workers keeps them."""

    def __init__(self, n, batch_size, *, seed, rank, world_size):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def _sampler(self):
        return ShardedBatchSampler(self.n, self.batch_size, seed=self.seed, epoch=self.epoch,
                                   rank=self.rank, world_size=self.world_size)

    def __len__(self):
        return len(self._sampler())

    def __iter__(self):
        epoch = self.epoch
        for batch in self._sampler():
            yield [(epoch, index) for index in batch]


class RunData:
    """Batches, device moves, cross-rank sums and evaluation for ``loop.fit``."""

    def __init__(self, splits, data_cfg, ctx, *, seed, channels_last=False, progress=None):
        self.splits, self.cfg, self.ctx = splits, data_cfg, ctx
        self.seed = seed
        self.channels_last = channels_last
        self.progress = progress
        self.pin = (ctx.device.type == "cuda" if data_cfg.pin_memory is None
                    else bool(data_cfg.pin_memory))
        # Fail now, not at the first epoch, if the batch does not fit the data or ranks.
        ShardedBatchSampler(len(splits.train), data_cfg.batch_size, seed=seed, epoch=0,
                            world_size=ctx.world_size)
        self._train_batches = EpochBatches(len(splits.train), data_cfg.batch_size, seed=seed,
                                           rank=ctx.rank, world_size=ctx.world_size)
        self._loaders = {}  # built once: persistent workers outlive an epoch

    def _in_memory_fast_path(self):
        train = self.splits.train
        return (self.cfg.num_workers == 0 and getattr(train, "transform", True) is None
                and isinstance(getattr(train, "inputs", None), torch.Tensor))

    def _loader(self, name, build):
        if name not in self._loaders:
            self._loaders[name] = build()
        return self._loaders[name]

    def train_batches(self, epoch):
        """This rank's ``(x, y)`` batches of ``epoch``'s shuffled training set."""
        train = self.splits.train
        if self._in_memory_fast_path():
            # In-memory split without augmentation: index the tensors directly, the same
            # batches a DataLoader would collate, without per-sample Python calls.
            sampler = ShardedBatchSampler(len(train), self.cfg.batch_size, seed=self.seed,
                                          epoch=epoch, rank=self.ctx.rank,
                                          world_size=self.ctx.world_size)
            return ((train.inputs[idx], train.labels[idx]) for idx in map(torch.tensor, sampler))
        self._train_batches.epoch = epoch
        # The loader's own generator only seeds its workers' base seed, which SeededItems
        # overrides per sample; being explicit keeps it off the global RNG.
        return self._loader("train", lambda: torch.utils.data.DataLoader(
            SeededItems(train, self.seed), batch_sampler=self._train_batches,
            pin_memory=self.pin, generator=torch.Generator().manual_seed(self.seed),
            **self.cfg.loader_options()))

    def to_device(self, x, y):
        """``(x, y)`` on this rank's device (channels-last for image batches when asked)."""
        x = x.to(self.ctx.device, non_blocking=self.pin)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.ctx.device, non_blocking=self.pin)

    def reduce(self, tensor):
        """Sum ``tensor`` over ranks (identity in one process)."""
        if self.ctx.distributed:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def _eval_loader(self, split):
        dataset = getattr(self.splits, split)
        n = len(dataset)
        lo = n * self.ctx.rank // self.ctx.world_size
        hi = n * (self.ctx.rank + 1) // self.ctx.world_size
        shard = torch.utils.data.Subset(dataset, range(lo, hi))
        # Without persistent workers each pass draws the loader's base seed from the global
        # RNG, as this loop always has, so runs made before keep their random streams.
        # Persistent workers draw it once per process, which a resumed run would not
        # repeat; their seed comes from a generator of their own.
        generator = (torch.Generator().manual_seed(self.seed) if self.cfg.persistent_workers
                     else None)
        return torch.utils.data.DataLoader(shard, batch_size=self.cfg.eval_batch_size,
                                           pin_memory=self.pin, generator=generator,
                                           **self.cfg.loader_options())

    def evaluate(self, objective, split="eval"):
        """Accuracy of ``objective.predict`` on a split (each rank a contiguous shard)."""
        loader = self._loader(f"eval:{split}", lambda: self._eval_loader(split))
        objective.eval()
        counts = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        with torch.no_grad():
            for x, y in loader:
                x, y = self.to_device(x, y)
                logits = objective.predict(x)
                counts += torch.stack([(logits.argmax(1) == y).sum().double(),
                                       torch.tensor(float(len(y)), device=y.device,
                                                    dtype=torch.float64)])
        counts = self.reduce(counts).cpu()
        return (counts[0] / counts[1]).item() if counts[1] > 0 else float("nan")

    def batches_bar(self, batches, epoch):
        """``batches`` wrapped in the progress bar, if the run shows one."""
        if self.progress is None:
            return batches
        return self.progress.batches(batches, epoch)
