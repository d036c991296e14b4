import os

import numpy as np
import pytest
import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.io import (
    atomic_path,
    atomic_write_text,
    check_writable_dir,
    load_arrays,
    load_torch,
    save_torch,
)
from ijckd_bounds.registry import Registry


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):  # noqa: PT012 - the write is killed inside the block
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_torch_roundtrip_and_corrupt_file(tmp_path):
    path = tmp_path / "c.pt"
    save_torch({"w": torch.arange(3.0)}, path)
    assert torch.equal(load_torch(path)["w"], torch.arange(3.0))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(IJCKDError, match="corrupt, truncated"):
        load_torch(path)
    with pytest.raises(IJCKDError, match="does not exist"):
        load_torch(tmp_path / "missing.pt")


def test_load_torch_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(IJCKDError, match="corrupt, truncated or not a torch file"):
        load_torch(path)


def test_load_arrays_npz_and_pt(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.ones((2, 3)))
    torch.save({"x": torch.ones(2, 3)}, tmp_path / "a.pt")
    assert load_arrays(tmp_path / "a.npz")["x"].shape == (2, 3)
    assert load_arrays(tmp_path / "a.pt")["x"].shape == (2, 3)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    os.rename(tmp_path / "obj.npy", tmp_path / "obj.npz")
    with pytest.raises(IJCKDError):
        load_arrays(tmp_path / "obj.npz")
    with pytest.raises(IJCKDError, match=r"must be a \.npz or \.pt"):
        load_arrays(tmp_path / "a.txt") if (tmp_path / "a.txt").write_text("x") else None


def test_unwritable_directory_fails_early(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(IJCKDError, match="cannot create directory"):
        check_writable_dir(blocked / "run")
    with pytest.raises(IJCKDError, match="MiB free"):
        check_writable_dir(tmp_path, need_bytes=1 << 62)


def test_registry_lists_valid_names():
    reg = Registry("widget")
    reg.register("alpha")(lambda: 1)
    reg.register("beta")(lambda: 2)
    assert reg.get("alpha")() == 1
    with pytest.raises(IJCKDError, match=r"unknown widget 'alpah' \(did you mean 'alpha'\?\); "
                                         r"valid: alpha, beta"):
        reg.get("alpah")


def test_atomic_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "p.txt", "x")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "p.txt").st_mode & 0o777) == 0o644
