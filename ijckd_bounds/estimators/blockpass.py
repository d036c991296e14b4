"""One pass over the pairwise matrices of paired features, block by block.

MMD² (a Gaussian kernel on the pooled sample), its permutation test and its bootstrap
need quadratic forms ``vᵀ H v`` of the n×n matrix H built from the Gram products of
``t`` and ``s``. Forming them would take O(n²) memory (20 GB at n = 50,000), so this pass
walks over row blocks of the upper triangle (symmetric matrices: each off-diagonal block
counts twice), computing the Gram products of the block once and handing every
quadratic form all its vectors at once as one matrix product. Memory is O(block·n).

The big products run in the dtype of the inputs (float32 for float32 features: they
dominate the cost, and the inputs arrive centred, which keeps the squared distances
``‖a‖² + ‖b‖² − 2a·b`` from cancelling); sums are accumulated in float64. Every product
goes through ``matmul_nt`` (oneDNN for float32 on the CPU, see there).
"""

from dataclasses import dataclass

import torch

__all__ = ["PassSums", "default_block_rows", "matmul_nt", "paired_block_pass"]

_BLOCK_BYTES = 30 * 2 ** 20  # one (2·rows, n) float32 Gram block
_onednn_checked = None  # whether the oneDNN product is usable; decided at first use


def _onednn_usable():
    """Whether ``torch.ops.mkldnn._linear_pointwise`` exists and agrees with ``torch.mm``
    on a small check product (strided operands and a bias included)."""
    global _onednn_checked
    if _onednn_checked is None:
        _onednn_checked = False
        try:
            if torch.backends.mkldnn.is_available():
                generator = torch.Generator().manual_seed(0)
                a = torch.randn(37, 50, generator=generator)
                b = torch.randn(50, 29, generator=generator).T  # a strided (29, 50) view
                bias = torch.randn(29, generator=generator)
                got = torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")
                expected = torch.addmm(bias, a, b.T)
                _onednn_checked = bool(got.shape == expected.shape and torch.allclose(
                    got, expected, rtol=1e-5, atol=1e-4))
        except (AttributeError, RuntimeError, TypeError):
            _onednn_checked = False
    return _onednn_checked


def _dense(x):
    """A 2-D tensor laid out row-major or column-major without gaps."""
    return x.dim() == 2 and (x.is_contiguous() or x.T.is_contiguous())


def matmul_nt(a, b, bias=None):
    """``a @ bᵀ (+ bias)``: a (m, k), b (n, k), bias (n,) or None -> (m, n).

    Float32 CPU tensors go through oneDNN (``torch.ops.mkldnn._linear_pointwise``, the
    kernel torch.compile uses for linear layers on the CPU) when it is available and
    passes a check product; anything else through ``torch.mm``/``torch.addmm``. Why:
    torch.mm calls MKL's sgemm, which on AMD CPUs runs its AVX2 code, while oneDNN uses
    AVX-512: on an AMD EPYC (Zen 5) it does the shapes of this package (n×512 by 512×100,
    n×512 by 512×n, n×n by n×1200) at 160-240 instead of 80-110 GFlop/s per core, and
    these products are most of the cost of the probes and the block pass. Operands must
    be contiguous or transposes of contiguous tensors to take the oneDNN path: a slice
    whose rows are longer than its width sends oneDNN to a reference kernel a thousand
    times slower, so those go to torch.mm.
    """
    if (a.dtype == torch.float32 and b.dtype == torch.float32 and a.device.type == "cpu"
            and b.device.type == "cpu" and a.numel() and b.numel() and _dense(a)
            and _dense(b) and _onednn_usable()):
        return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")
    if bias is None:
        return a @ b.T
    return torch.addmm(bias, a, b.T)


@dataclass(frozen=True)
class PassSums:
    """Results of ``paired_block_pass`` (float64 CPU tensors; mmd_quad None without
    vectors).

    mmd_total: scalar ``Σ_{i≠j} H_ij``; mmd_quad (V,): ``v_cᵀ H v_c`` (zero diagonal) per
    column of ``mmd_vectors``.
    """

    mmd_total: torch.Tensor | None
    mmd_quad: torch.Tensor | None


def default_block_rows(n):
    """Rows per block: each (2·rows, n) float32 Gram block just under 32 MB, the size up
    to which glibc's allocator reuses freed memory (larger blocks are mapped, page-faulted
    in and unmapped at every step).

    Smaller blocks keep more of a step in the cache, larger ones make fewer parallel ops,
    each of which waits for its slowest thread. The pass at n = 10,000, d = 512 with
    1,200 + 3·200 quadratic forms, for 196-, 393- and 786-row blocks: 2.1, 2.35 and 2.8 s
    on one core; 14, 7.5 and 5.4 s with two threads on two cores shared with one other
    busy process. 393 rows (this rule at n = 10,000) is the compromise.
    """
    return int(max(64, min(4096, _BLOCK_BYTES // (8 * max(n, 1)))))


def _upper_quadratic(block, vectors, start, stop):
    """Contribution of one row block to ``v_cᵀ M v_c`` for a symmetric matrix M.

    block (b, m), contiguous: rows start..stop-1 of M, columns start..n-1 (upper
    triangle); vectors (n, C). The diagonal block counts once, the blocks right of it
    twice (for their mirror images): the diagonal block is halved in place (exact in
    binary) and the whole row block doubled, which makes it one product instead of two.
    Returns (C,) float64.
    """
    b = stop - start
    block[:, :b] *= 0.5
    near = matmul_nt(block, vectors[start:].T)
    return 2.0 * (near * vectors[start:stop]).sum(dim=0, dtype=torch.float64)


def paired_block_pass(t, s, *, bandwidth, mmd_vectors=None, block_rows=None):
    """Walk the upper triangle of the MMD matrix H of t, s (n, d), paired by row.

    Args:
        t, s: (n, d) features, same dtype and device (centred by the caller).
        bandwidth: Gaussian kernel bandwidth σ:
            ``H_ij = k(t_i,t_j) + k(s_i,s_j) − k(t_i,s_j) − k(s_i,t_j)``, ``H_ii = 0``,
            ``k(a, b) = exp(−‖a − b‖²/(2σ²))``.
        mmd_vectors: (n, V) vectors for the quadratic forms of H (sign vectors of the
            permutation test, bootstrap count weights), or None.
        block_rows: rows per block (default ``default_block_rows(n)``).

    Returns:
        ``PassSums``.
    """
    n = t.shape[0]
    block_rows = block_rows or default_block_rows(n)
    dtype = t.dtype
    scale = 1.0 / (2.0 * float(bandwidth) ** 2)
    norms_t = (t * t).sum(dim=1)
    norms_s = (s * s).sum(dim=1)
    mmd_total = torch.zeros((), dtype=torch.float64, device=t.device)
    if mmd_vectors is not None:
        mmd_vectors = mmd_vectors.to(device=t.device, dtype=dtype).contiguous()
        mmd_quad = torch.zeros(mmd_vectors.shape[1], dtype=torch.float64, device=t.device)

    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        b = stop - start
        rows = torch.cat([t[start:stop], s[start:stop]])  # (2b, d)
        gram_t = matmul_nt(rows, t[start:])  # [t_i·t_j ; s_i·t_j], j >= start: (2b, m)
        gram_s = matmul_nt(rows, s[start:])  # [t_i·s_j ; s_i·s_j]
        row_norms = torch.cat([norms_t[start:stop], norms_s[start:stop]])
        left = torch.stack([row_norms, torch.ones_like(row_norms)], dim=1)  # (2b, 2)
        for gram, col_norms in ((gram_t, norms_t[start:]), (gram_s, norms_s[start:])):
            # −(‖a‖² + ‖b‖² − 2ab)/(2σ²) in one pass: the norms enter as a rank-2
            # update; the clamp guards rounding below 0 before the exp
            right = torch.stack([torch.ones_like(col_norms), col_norms])  # (2, m)
            gram.addmm_(left, right, beta=2.0 * scale, alpha=-scale)
            gram.clamp_(max=0.0).exp_()
        h = gram_t[:b]  # H = k(t,t) + k(s,s) − k(t,s) − k(s,t), in place
        h += gram_s[b:]
        h -= gram_s[:b]
        h -= gram_t[b:]
        h.diagonal().zero_()
        mmd_total += h[:, :b].sum(dtype=torch.float64) \
            + 2.0 * h[:, b:].sum(dtype=torch.float64)
        if mmd_vectors is not None:
            mmd_quad += _upper_quadratic(h, mmd_vectors, start, stop)
        del gram_t, gram_s

    return PassSums(mmd_total=mmd_total.cpu(),
                    mmd_quad=mmd_quad.cpu() if mmd_vectors is not None else None)
