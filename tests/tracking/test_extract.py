"""Streamed feature extraction (tracking.extract): chunked, memory-mapped, resumable and
sharded over the ranks of a process group, against a plain loop over the samples."""

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from ijckd_bounds.data import build_dataset
from ijckd_bounds.data.splits import TensorSplit
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.tracking.extract import (
    MANIFEST,
    chunk_bounds,
    extract_features,
    load_extracted,
    split_fingerprint,
)

REPO = Path(__file__).resolve().parents[2]
# 3 classes of JPEGs of 20-33 pixels: 2 train and 7 val images each
TREE = {"classes": 3, "per_split": {"train": 2, "val": 7}, "sizes": (20, 33)}


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 5, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten()).eval()


class Features:
    """fn for extract_features: pooled conv features, a linear head, and an absent output;
    counts the batches it saw (and can fail after ``fail_after`` batches)."""

    def __init__(self, net, fail_after=None):
        self.net, self.fail_after, self.batches = net, fail_after, 0
        self.head = nn.Linear(5, 2)

    def __call__(self, x):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("killed mid-extraction")
        self.batches += 1
        feat = self.net(x)
        return {"feat": feat, "logits": self.head(feat), "missing": None}


def reference(fn, dataset):
    """One sample at a time, no chunks, no files."""
    with torch.no_grad():
        rows = [(fn(x[None]), int(y)) for x, y in (dataset[i] for i in range(len(dataset)))]
    return {"feat": torch.cat([r["feat"] for r, _ in rows]).numpy(),
            "logits": torch.cat([r["logits"] for r, _ in rows]).numpy(),
            "y": np.array([y for _, y in rows], dtype=np.int64)}


@pytest.fixture(scope="module")
def splits(tmp_path_factory, image_tree):
    root = image_tree(tmp_path_factory.mktemp("tree"), **TREE)
    return build_dataset("imagefolder", data_dir=str(root), image_size=16, resize=18,
                         fit_fraction=0.5)


def test_chunks_cover_the_split_in_order():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(3, 8) == [(0, 3)]


def test_streamed_features_equal_a_plain_loop(splits, tmp_path):
    fn = Features(small_net())
    split = splits.fit  # 11 images: chunks of 4 (4, 4, 3), batches of 3 inside them
    got = extract_features(fn, split, tmp_path / "out", key="k", batch_size=3, chunk_size=4)
    assert fn.batches == 2 + 2 + 1  # batches never straddle chunks: (3+1), (3+1), (3)
    want = reference(fn, split)
    assert set(got) == {"feat", "logits", "missing", "y"}
    assert got["missing"] is None
    assert isinstance(got["feat"], np.memmap) and got["feat"].dtype == np.float32
    np.testing.assert_allclose(got["feat"], want["feat"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["y"], split.labels.numpy())
    np.testing.assert_array_equal(got["y"], want["y"])
    # the chunks were merged and removed; the manifest records the result
    assert not (tmp_path / "out" / "chunks").exists()
    assert (tmp_path / "out" / MANIFEST).is_file()


def test_a_finished_extraction_is_reused_and_another_key_recomputes(splits, tmp_path):
    fn = Features(small_net())
    first = extract_features(fn, splits.eval, tmp_path, key="a", batch_size=4, chunk_size=5)
    first = {k: None if v is None else np.array(v) for k, v in first.items()}
    seen = fn.batches
    again = extract_features(fn, splits.eval, tmp_path, key="a", batch_size=4, chunk_size=5)
    assert fn.batches == seen  # nothing recomputed
    np.testing.assert_array_equal(again["feat"], first["feat"])
    other = Features(small_net(seed=1))
    changed = extract_features(other, splits.eval, tmp_path, key="b", batch_size=4,
                               chunk_size=5)
    assert other.batches > 0
    assert not np.allclose(changed["feat"], first["feat"])
    assert load_extracted(tmp_path)["feat"].shape == first["feat"].shape


def test_a_killed_extraction_resumes_its_missing_chunks_only(splits, tmp_path):
    split = splits.fit  # 11 samples, chunks of 2: 6 chunks of one batch each
    killed = Features(small_net(), fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        extract_features(killed, split, tmp_path, key="k", batch_size=2, chunk_size=2)
    assert len(list((tmp_path / "chunks").glob("chunk_*.npz"))) == 4
    with pytest.raises(IJCKDError, match="no finished feature extraction"):
        load_extracted(tmp_path)
    resumed = Features(small_net())
    got = extract_features(resumed, split, tmp_path, key="k", batch_size=2, chunk_size=2)
    assert resumed.batches == 2  # chunks 4 and 5 only
    fresh = extract_features(Features(small_net()), split, tmp_path / "fresh", key="k",
                             batch_size=2, chunk_size=2)
    np.testing.assert_array_equal(got["feat"], fresh["feat"])
    np.testing.assert_array_equal(got["y"], fresh["y"])


def test_bad_feature_functions_fail_with_one_line(splits, tmp_path):
    with pytest.raises(IJCKDError, match="one row per sample"):
        extract_features(lambda x: {"z": torch.zeros(1, 3)}, splits.eval, tmp_path / "a",
                         key="k", batch_size=4)
    with pytest.raises(IJCKDError, match="dict of named tensors"):
        extract_features(lambda x: torch.zeros(len(x), 3), splits.eval, tmp_path / "b",
                         key="k", batch_size=4)
    with pytest.raises(IJCKDError, match="`chunk_size` must be a positive integer"):
        extract_features(lambda x: {}, splits.eval, tmp_path / "c", key="k", chunk_size=0)


def test_fingerprints_tell_splits_apart(splits):
    assert split_fingerprint(splits.fit) != split_fingerprint(splits.eval)
    assert split_fingerprint(splits.eval) == split_fingerprint(splits.eval.subset(
        np.arange(len(splits.eval))))
    a = TensorSplit(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    b = TensorSplit(torch.ones(4, 2), torch.tensor([0, 1, 0, 1]))
    assert split_fingerprint(a) != split_fingerprint(b)


WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_extract import Features, small_net
    from ijckd_bounds.data import build_dataset
    from ijckd_bounds.tracking.extract import extract_features

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    splits = build_dataset("imagefolder", data_dir={root!r}, image_size=16, resize=18,
                           fit_fraction=0.5)
    fn = Features(small_net())
    out = extract_features(fn, splits.fit, {out!r}, key="k", batch_size=2, chunk_size=3,
                           num_workers={workers})
    rank = dist.get_rank()
    with open(os.path.join({log!r}, f"rank{{rank}}.json"), "w") as fh:
        json.dump({{"batches": fn.batches, "returned": out is not None}}, fh)
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_two_gloo_ranks_shard_and_rank0_merges_what_one_process_extracts(tmp_path, image_tree):
    import json

    # here, not at the top: the ranks' worker script imports this module without the
    # repository on its path
    from tests.gloo_ranks import run_two_ranks

    root = image_tree(tmp_path / "tree", **TREE)
    script = tmp_path / "worker.py"
    here = Path(__file__).resolve().parent  # the worker imports this module's helpers
    script.write_text(WORKER.format(tests=str(here), root=str(root), out=str(tmp_path / "two"),
                                    log=str(tmp_path), workers=1))
    run_two_ranks([sys.executable, str(script)], cwd=REPO)

    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # 11 fit images in chunks of 3 -> chunks 0..3; rank 0 takes 0 and 2 (3 + 3 samples,
    # 4 batches), rank 1 takes 1 and 3 (3 + 2 samples, 3 batches)
    assert [log["batches"] for log in logs] == [4, 3]
    assert [log["returned"] for log in logs] == [True, False]

    splits = build_dataset("imagefolder", data_dir=str(root), image_size=16, resize=18,
                           fit_fraction=0.5)
    single = extract_features(Features(small_net()), splits.fit, tmp_path / "one", key="k",
                              batch_size=2, chunk_size=3)
    merged = load_extracted(tmp_path / "two")
    assert set(merged) == set(single)
    # the ranks run single-threaded and the in-process extraction may not: the float
    # features agree up to summation order, the labels exactly
    for name in ("feat", "logits"):
        np.testing.assert_allclose(merged[name], single[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(merged["y"], single["y"])
    np.testing.assert_array_equal(merged["y"], splits.fit.labels.numpy())
