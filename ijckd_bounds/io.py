"""Safe, atomic file input/output.

Files are written to a temporary file in the same directory, flushed, fsynced and
renamed into place, so a killed process never leaves a partial file under the final
name. The temporary file is named ``.<name>.<host>-<pid>.<random>.tmp``: a killed writer's
leftovers can be told from a live writer's file in progress (``remove_stale_temp_files``).
Files from users are loaded without running code (``weights_only=True``,
``allow_pickle=False``).
"""

import contextlib
import glob
import os
import re
import socket
import tempfile
import time
import zlib
from pathlib import Path

from ijckd_bounds.errors import IJCKDError

# .<name>.h<crc32 of the host name>-<pid>.<mkstemp's random letters>.tmp
_TEMP_NAME = re.compile(r"^\..+\.(?P<host>h[0-9a-f]{8})-(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")
# a temporary file of another host is only removed once this old (we cannot see its writer)
FOREIGN_TEMP_AGE_S = 24 * 3600


def _host_tag():
    return f"h{zlib.crc32(socket.gethostname().encode()):08x}"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a writer of this file killed earlier (a resumed run rewrites the checkpoint whose
    # write was cut) left its temporary file: clear it now that the file is written again
    remove_stale_temp_files(path.parent, pattern=f".{glob.escape(path.name)}.*.tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host_tag()}-{os.getpid()}.",
                               suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(directory, pattern=".*.tmp"):
    """Delete the temporary files (matching ``pattern``) that killed writers left in
    ``directory``.

    Only files whose writer is gone: a temporary file of a live process on this host (a
    concurrent tracker, a trainer writing its history) is in use and stays; one written
    on another host (a shared file system) is removed only when older than
    ``FOREIGN_TEMP_AGE_S``. Temporary files without a writer tag (older versions) go.
    Returns the paths removed.
    """
    removed = []
    host = _host_tag()
    for tmp in Path(directory).glob(pattern):
        match = _TEMP_NAME.match(tmp.name)
        if match is not None:
            if match["host"] == host:
                if _process_alive(int(match["pid"])):
                    continue
            else:
                try:
                    if time.time() - tmp.stat().st_mtime < FOREIGN_TEMP_AGE_S:
                        continue
                except OSError:
                    continue
        with contextlib.suppress(OSError):
            os.unlink(tmp)
            removed.append(tmp)
    return removed


def _fsync_dir(directory):
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def save_torch(obj, path):
    """``torch.save`` through a temporary file and an atomic rename."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def require_file(path, what, expected):
    """``path`` as a Path if it is a regular file; else one line saying what it is instead
    (missing, or a directory) and what was expected (e.g. "a .pt file")."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise IJCKDError(f"{what} {str(path)!r} is a directory, expected {expected}")
    if path.exists():
        raise IJCKDError(f"{what} {str(path)!r} is not a regular file, expected {expected}")
    raise IJCKDError(f"{what} {str(path)!r} does not exist")


def _first_sentences(message, limit=300):
    """The start of an exception's message, whole sentences only: its first line, cut
    after the last full stop before ``limit`` characters when longer."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    if len(first) <= limit:
        return first
    cut = first.rfind(". ", 0, limit)
    return first[:cut + 1] if cut > 0 else first[:limit].rsplit(" ", 1)[0] + " ..."


def load_torch(path, *, what="checkpoint"):
    """Load a ``.pt`` file without running code; one-line error when it is unreadable."""
    import torch

    path = require_file(path, what, "a .pt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/truncated files
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        refused = re.search(r"WeightsUnpickler error: (.*?\.)(\s|$)", message)
        if refused:  # a whole file that holds objects a safe load does not build
            raise IJCKDError(
                f"{what} {str(path)!r} holds Python objects that a safe load "
                f"(weights_only=True) refuses: {refused.group(1)} Save tensors, dicts, "
                f"lists, strings and numbers only") from None
        first = _first_sentences(message) or type(exc).__name__
        raise IJCKDError(
            f"{what} {str(path)!r} is corrupt, truncated or not a torch file ({first})"
        ) from None


def load_arrays(path, *, what="feature file"):
    """Load a ``.npz`` or ``.pt`` file of named arrays into a dict of numpy arrays."""
    import zipfile

    import numpy as np

    path = require_file(path, what, "a .npz or .pt file")
    if path.suffix == ".npz":
        # numpy calls any non-zip bytes "pickled data" and suggests loading them unsafely
        if not zipfile.is_zipfile(path):
            raise IJCKDError(f"{what} {str(path)!r} is not a readable .npz file (no zip "
                             f"structure: corrupt, truncated or another format); write it "
                             f"with numpy.savez")
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except Exception as exc:
            raise IJCKDError(f"{what} {str(path)!r} is not a readable .npz file "
                             f"({_first_sentences(str(exc)) or type(exc).__name__})") from None
    if path.suffix in (".pt", ".pth"):
        obj = load_torch(path, what=what)
        if not isinstance(obj, dict):
            raise IJCKDError(f"{what} {str(path)!r} must hold a dict of named arrays, "
                             f"got {type(obj).__name__}")
        out = {}
        for key, value in obj.items():
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            out[str(key)] = np.asarray(value)
        return out
    raise IJCKDError(f"{what} {str(path)!r} must be a .npz or .pt file")


def check_writable_dir(directory, *, need_bytes=1 << 20):
    """Fail early (before any work is spent) if ``directory`` cannot take our files."""
    import shutil

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IJCKDError(f"cannot create directory {str(directory)!r}: {exc.strerror}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise IJCKDError(f"directory {str(directory)!r} is not writable: {exc.strerror}") from None
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise IJCKDError(
            f"directory {str(directory)!r} has {free / 2**20:.1f} MiB free, "
            f"need at least {need_bytes / 2**20:.1f} MiB"
        )
