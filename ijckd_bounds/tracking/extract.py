"""Stream a model's features over a dataset split into memory-mapped arrays on disk.

At ImageNet scale a split's images never fit in memory (25,000 validation images at
224 pixels are 15 GB as float32), and its features take minutes of accelerator time, so
``extract_features``:

- reads the split through a ``DataLoader`` (workers decode the images) and keeps at
  most one chunk of outputs in memory;
- cuts the split into chunks of ``chunk_size`` consecutive samples; chunk ``c`` belongs
  to rank ``c % world_size`` of the process group (torchrun: every rank extracts its own
  chunks), and each finished chunk is written atomically to
  ``OUT_DIR/chunks/chunk_CCCCCC.npz``;
- after a barrier, rank 0 merges the chunks, in sample order, into one ``.npy`` file per
  output (written through ``numpy.lib.format.open_memmap``, so the merge holds one chunk
  in memory), marks the manifest complete and deletes the chunks;
- resumes: a killed extraction re-run with the same ``key`` recomputes only the chunks
  that have no file yet (with any number of ranks: chunks are keyed by their index, not
  by the rank that wrote them); a finished one returns at once. Another ``key`` (other
  model weights, another split) wipes ``OUT_DIR`` first.

Layout::

    OUT_DIR/manifest.json    {"key", "n", "chunk_size", "complete", "arrays", "absent"}
    OUT_DIR/<name>.npy       (n, ...) one array per output, plus "y" (n,) int64 labels
    OUT_DIR/chunks/          during extraction only

The model function ``fn(x) -> {name: tensor (b, ...) or None}`` gets a batch ``x`` (b,
*input_shape) on the CPU (moving it to a device is its business) and runs under
``torch.no_grad()``; an output that is None for the first batch is absent (None in the
result). Only rank 0 returns the arrays; the others return None.
"""

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.io import atomic_path, atomic_write_text
from ijckd_bounds.runtime import barrier, rank_and_world
from ijckd_bounds.track_config import CHUNK_SIZE

MANIFEST = "manifest.json"
CHUNK_DIR = "chunks"
LABELS = "y"
ABSENT_KEY = "_absent"  # names of outputs that fn returned as None, inside each chunk file


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]``: consecutive chunks of ``chunk_size`` samples covering
    ``range(n)`` (the last one shorter)."""
    return [(lo, min(n, lo + chunk_size)) for lo in range(0, n, chunk_size)]


def split_fingerprint(split: torch.utils.data.Dataset) -> str:
    """A short digest of what a split holds (image paths or inputs, labels, sample
    indices, transform), so that cached features of another split are never reused."""
    digest = hashlib.sha256()
    digest.update(f"{type(split).__name__}:{len(split)}".encode())
    for name in ("relative_paths", "labels", "indices"):
        value = getattr(split, name, None)
        if value is None:
            continue
        if torch.is_tensor(value):
            value = value.numpy()
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    for name in ("root", "transform", "source"):
        value = getattr(split, name, None)
        if value is not None:
            digest.update(f"{name}={value!r}".encode())
    inputs = getattr(split, "inputs", None)
    if torch.is_tensor(inputs):
        digest.update(inputs.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _chunk_path(out_dir, chunk):
    return Path(out_dir) / CHUNK_DIR / f"chunk_{chunk:06d}.npz"


def _read_manifest(out_dir):
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a foreign or damaged file: start over


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise IJCKDError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)


def _prepare(out_dir, key, n, chunk_size):
    """Rank 0: wipe ``out_dir`` if it holds another extraction, drop half-written chunk
    files, and write the manifest. Returns the manifest."""
    manifest = _read_manifest(out_dir)
    same = (manifest is not None and manifest.get("key") == key and manifest.get("n") == n
            and manifest.get("chunk_size") == chunk_size)
    if not same:
        if Path(out_dir).exists():
            shutil.rmtree(out_dir)
        manifest = {"key": key, "n": n, "chunk_size": chunk_size, "complete": False}
        atomic_write_text(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=1))
    chunk_dir = Path(out_dir) / CHUNK_DIR
    chunk_dir.mkdir(parents=True, exist_ok=True)
    for stale in chunk_dir.glob(".*.tmp"):  # a rank killed while writing a chunk
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    return manifest


def _write_chunk(path, outputs, labels, absent):
    arrays = {name: torch.cat(parts).numpy() for name, parts in outputs.items()}
    arrays[LABELS] = torch.cat(labels).numpy().astype(np.int64)
    arrays[ABSENT_KEY] = np.array(sorted(absent), dtype=str)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _as_cpu(name, value, rows):
    if not torch.is_tensor(value) or value.dim() < 1 or value.shape[0] != rows:
        got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
        raise IJCKDError(f"feature function output {name!r} must be a tensor with one row per "
                         f"sample ({rows}, ...), got {got}")
    value = value.detach().cpu()
    # float32 on disk whatever the model computed in (bf16/fp16 autocast included)
    return value.float() if value.is_floating_point() else value


@torch.no_grad()
def _extract_chunks(fn, dataset, out_dir, chunks, bounds, *, batch_size, num_workers,
                    pin_memory, progress):
    """Compute and write the given chunks (this rank's missing ones)."""
    batches, owner = [], []
    for chunk in chunks:
        lo, hi = bounds[chunk]
        for start in range(lo, hi, batch_size):
            batches.append(list(range(start, min(hi, start + batch_size))))
            owner.append(chunk)
    if not batches:
        return
    # An explicit generator: the loader's base seed must not come from (and advance) the
    # global RNG, which a training run around this extraction relies on.
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches,
                                         num_workers=num_workers, pin_memory=pin_memory,
                                         generator=torch.Generator().manual_seed(0))
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, total=len(batches), desc=f"features -> {Path(out_dir).name}",
                      unit="batch", leave=False)
    outputs, labels, absent, names = {}, [], set(), None
    for index, (x, y) in enumerate(loader):
        result = fn(x)
        if not isinstance(result, dict):
            raise IJCKDError(f"the feature function must return a dict of named tensors, "
                             f"got {type(result).__name__}")
        if names is None:
            names = sorted(result)
            absent = {name for name in names if result[name] is None}
        if sorted(result) != names:
            raise IJCKDError(f"the feature function returned outputs {sorted(result)} for one "
                             f"batch and {names} for another")
        for name in names:
            if name in absent:
                continue
            outputs.setdefault(name, []).append(_as_cpu(name, result[name], len(y)))
        labels.append(y.reshape(-1).to(torch.int64))
        last_of_chunk = index + 1 == len(batches) or owner[index + 1] != owner[index]
        if last_of_chunk:
            _write_chunk(_chunk_path(out_dir, owner[index]), outputs, labels, absent)
            outputs, labels = {}, []


def _merge(out_dir, n, bounds):
    """Rank 0: the chunk files, in sample order, into one ``.npy`` per output."""
    out_dir = Path(out_dir)
    missing = [c for c in range(len(bounds)) if not _chunk_path(out_dir, c).is_file()]
    if missing:
        raise IJCKDError(f"feature extraction in {str(out_dir)!r} is missing chunk(s) "
                         f"{missing[:5]} after every rank finished; re-run to resume it")
    with np.load(_chunk_path(out_dir, 0), allow_pickle=False) as first:
        absent = sorted(str(a) for a in first[ABSENT_KEY])
        specs = {name: (first[name].dtype, first[name].shape[1:]) for name in first.files
                 if name != ABSENT_KEY}
    arrays, temps = {}, {}
    for name, (dtype, tail) in specs.items():
        temps[name] = out_dir / f".{name}.npy.tmp"
        arrays[name] = np.lib.format.open_memmap(temps[name], mode="w+", dtype=dtype,
                                                 shape=(n, *tail))
    for chunk, (lo, hi) in enumerate(bounds):
        with np.load(_chunk_path(out_dir, chunk), allow_pickle=False) as part:
            for name, target in arrays.items():
                block = part[name]
                expected = (hi - lo, *target.shape[1:])
                if block.shape != expected:
                    raise IJCKDError(f"chunk {chunk} of {str(out_dir)!r} holds {name!r} of "
                                     f"shape {block.shape}, expected {expected}")
                target[lo:hi] = block
    for target in arrays.values():
        target.flush()
    arrays.clear()  # closes the maps before the files are renamed into place
    for name, temp in temps.items():
        os.replace(temp, out_dir / f"{name}.npy")
    return {name: {"shape": [n, *map(int, tail)], "dtype": str(np.dtype(dtype))}
            for name, (dtype, tail) in specs.items()}, absent


def load_extracted(out_dir: str | Path) -> dict[str, np.ndarray | None]:
    """The arrays of a finished extraction: ``{name: array (n, ...) or None}`` (memory
    mapped copy-on-write: pages are read when touched, writes stay private)."""
    manifest = _read_manifest(out_dir)
    if manifest is None or not manifest.get("complete"):
        raise IJCKDError(f"{str(out_dir)!r} holds no finished feature extraction")
    out = {name: np.load(Path(out_dir) / f"{name}.npy", mmap_mode="c", allow_pickle=False)
           for name in manifest["arrays"]}
    out.update({name: None for name in manifest.get("absent", [])})
    return out


def extract_features(fn: Callable[[torch.Tensor], Mapping[str, torch.Tensor | None]],
                     dataset: torch.utils.data.Dataset, out_dir: str | Path, *, key: str,
                     batch_size: int = 256, chunk_size: int = CHUNK_SIZE, num_workers: int = 0,
                     pin_memory: bool = False,
                     group: torch.distributed.ProcessGroup | None = None,
                     progress: bool = False) -> dict[str, np.ndarray | None] | None:
    """Features of every sample of ``dataset``, streamed to ``out_dir`` (module docstring).

    Args:
        fn: ``x (b, *input_shape) -> {name: tensor (b, ...) or None}``.
        dataset: yields ``(x, y)`` with ``y`` an integer label.
        out_dir: folder of the manifest, the chunks and the merged arrays.
        key: identifies what is extracted (model hash, split fingerprint, ...); an
            existing extraction with another key is wiped.
        batch_size, num_workers, pin_memory: of the ``DataLoader``; batches never straddle
            two chunks.
        chunk_size: samples per chunk: the unit of sharding, resumption and memory.
        group: the process group to shard over (default: the default group when
            torch.distributed is initialised).

    Returns:
        On rank 0, ``{name: array (n, ...) or None}`` with every output of ``fn`` (float32
        for floating outputs) and ``"y"`` (n,) int64, memory-mapped from ``out_dir``; on
        other ranks None.
    """
    batch_size = _check_positive(batch_size, "batch_size")
    chunk_size = _check_positive(chunk_size, "chunk_size")
    n = len(dataset)
    if n == 0:
        raise IJCKDError("cannot extract features of an empty split")
    out_dir = Path(out_dir)
    key = str(key)
    rank, world = rank_and_world(group)
    bounds = chunk_bounds(n, chunk_size)
    if rank == 0:
        _prepare(out_dir, key, n, chunk_size)
    barrier(group)
    manifest = _read_manifest(out_dir)
    if manifest is None or manifest.get("key") != key:
        raise IJCKDError(f"{str(out_dir)!r} is not shared by every rank (rank {rank} sees "
                         f"no manifest for this extraction); put it on a shared filesystem")
    if not manifest.get("complete"):
        mine = [c for c in range(len(bounds))
                if c % world == rank and not _chunk_path(out_dir, c).is_file()]
        _extract_chunks(fn, dataset, out_dir, mine, bounds, batch_size=batch_size,
                        num_workers=num_workers, pin_memory=pin_memory,
                        progress=progress and rank == 0)
        barrier(group)
        if rank == 0:
            arrays, absent = _merge(out_dir, n, bounds)
            manifest = {**manifest, "complete": True, "arrays": arrays, "absent": absent}
            atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1))
            shutil.rmtree(out_dir / CHUNK_DIR, ignore_errors=True)
        barrier(group)
    return load_extracted(out_dir) if rank == 0 else None


__all__ = ["chunk_bounds", "extract_features", "load_extracted", "split_fingerprint"]
