"""One pass over the pairwise matrices of paired features, block by block.

MMD² (a Gaussian kernel on the pooled sample) and the bootstrap of debiased linear CKA
both need quadratic forms ``vᵀ M v`` of n×n matrices built from the Gram products of
``t`` and ``s``. Forming them would take O(n²) memory (20 GB at n = 50,000), so this pass
walks over row blocks of the upper triangle (symmetric matrices: each off-diagonal block
counts twice), computing the Gram products of the block once and handing every
quadratic form all its vectors at once as one matrix product. Memory is O(block·n).

The big products run in the dtype of the inputs (float32 for float32 features: they
dominate the cost, and the inputs arrive centred, which keeps the squared distances
``‖a‖² + ‖b‖² − 2a·b`` from cancelling); sums are accumulated in float64.
"""

from dataclasses import dataclass

import torch

__all__ = ["PassSums", "default_block_rows", "paired_block_pass"]


@dataclass(frozen=True)
class PassSums:
    """Results of ``paired_block_pass`` (float64 CPU tensors or None).

    mmd_total: scalar ``Σ_{i≠j} H_ij``; mmd_quad (V,): ``v_cᵀ H v_c`` (zero diagonal) per
    column of ``mmd_vectors``; cka_quad (3, C): ``w_cᵀ (K∘L) w_c``, ``w_cᵀ (K∘K) w_c``,
    ``w_cᵀ (L∘L) w_c`` with ``K = t tᵀ``, ``L = s sᵀ`` (diagonals included).
    """

    mmd_total: torch.Tensor | None
    mmd_quad: torch.Tensor | None
    cka_quad: torch.Tensor | None


def default_block_rows(n):
    """Rows per block: the two (2·rows, n) Gram blocks stay near 128 MB in float32."""
    return int(max(64, min(4096, 2 ** 23 // max(n, 1))))


def _upper_quadratic(blocks, vectors, start, stop, *, groups):
    """Contribution of one row block to ``v_cᵀ M v_c`` for symmetric matrices M.

    blocks (groups·b, m): rows start..stop-1 of each of ``groups`` matrices, columns
    start..n-1 (upper triangle); vectors (n, C). The diagonal block counts once, the
    blocks right of it twice (for their mirror images). Returns (groups, C) float64.
    """
    b = stop - start
    near = blocks[:, :b] @ vectors[start:stop]
    if blocks.shape[1] > b:
        near += 2.0 * (blocks[:, b:] @ vectors[stop:])
    near = near.view(groups, b, -1)
    return (near * vectors[start:stop][None]).sum(dim=1, dtype=torch.float64)


def paired_block_pass(t, s, *, bandwidth=None, mmd_vectors=None, cka_weights=None,
                      block_rows=None):
    """Walk the upper triangle of the pairwise matrices of t, s (n, d), paired by row.

    Args:
        t, s: (n, d) features, same dtype and device (centred by the caller).
        bandwidth: Gaussian kernel bandwidth σ; ``None`` skips the MMD part.
            ``H_ij = k(t_i,t_j) + k(s_i,s_j) − k(t_i,s_j) − k(s_i,t_j)``, ``H_ii = 0``,
            ``k(a, b) = exp(−‖a − b‖²/(2σ²))``.
        mmd_vectors: (n, V) vectors for the quadratic forms of H (sign vectors of the
            permutation test, bootstrap count weights), or None.
        cka_weights: (n, C) count weights for the quadratic forms of the linear-kernel
            products, or None (skips the CKA part).
        block_rows: rows per block (default ``default_block_rows(n)``).

    Returns:
        ``PassSums``.
    """
    n = t.shape[0]
    block_rows = block_rows or default_block_rows(n)
    dtype = t.dtype
    do_mmd = bandwidth is not None
    do_cka = cka_weights is not None
    if do_mmd:
        scale = 1.0 / (2.0 * float(bandwidth) ** 2)
        norms_t = (t * t).sum(dim=1)
        norms_s = (s * s).sum(dim=1)
        mmd_total = torch.zeros((), dtype=torch.float64, device=t.device)
        if mmd_vectors is not None:
            mmd_vectors = mmd_vectors.to(device=t.device, dtype=dtype)
            mmd_quad = torch.zeros(mmd_vectors.shape[1], dtype=torch.float64, device=t.device)
    if do_cka:
        cka_weights = cka_weights.to(device=t.device, dtype=dtype)
        cka_quad = torch.zeros(3, cka_weights.shape[1], dtype=torch.float64, device=t.device)

    # one buffer per matrix for the whole pass: fresh (2b, m) allocations per block would
    # page-fault their memory in again every time
    gram_t_buffer = torch.empty(2 * block_rows * n, dtype=dtype, device=t.device)
    gram_s_buffer = torch.empty(2 * block_rows * n, dtype=dtype, device=t.device)
    if do_cka:
        product_buffer = torch.empty(3 * block_rows * n, dtype=dtype, device=t.device)

    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        b, m = stop - start, n - start
        rows = torch.cat([t[start:stop], s[start:stop]])  # (2b, d)
        gram_t = gram_t_buffer[:2 * b * m].view(2 * b, m)
        gram_s = gram_s_buffer[:2 * b * m].view(2 * b, m)
        torch.mm(rows, t[start:].T, out=gram_t)  # [t_i·t_j ; s_i·t_j], j >= start
        torch.mm(rows, s[start:].T, out=gram_s)  # [t_i·s_j ; s_i·s_j]

        if do_cka:
            linear_t, linear_s = gram_t[:b], gram_s[b:]
            products = product_buffer[:3 * b * m].view(3 * b, m)
            torch.mul(linear_t, linear_s, out=products[:b])
            torch.mul(linear_t, linear_t, out=products[b:2 * b])
            torch.mul(linear_s, linear_s, out=products[2 * b:])
            cka_quad += _upper_quadratic(products, cka_weights, start, stop, groups=3)

        if do_mmd:
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
                mmd_quad += _upper_quadratic(h, mmd_vectors, start, stop, groups=1)[0]

    return PassSums(
        mmd_total=mmd_total.cpu() if do_mmd else None,
        mmd_quad=mmd_quad.cpu() if do_mmd and mmd_vectors is not None else None,
        cka_quad=cka_quad.cpu() if do_cka else None,
    )
