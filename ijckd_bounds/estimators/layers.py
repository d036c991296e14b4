"""Layer-by-layer terms (THEORY "Layers"): a probe per stage and the stage CKA matrix.

Each model exposes its stages (``ZooModel.forward_stages``), every one global-average-
pooled to a vector. Two terms per checkpoint:

- ``stage_probe_err``: the error on the evaluation split of the same-recipe logistic
  probe (``LogisticProbe`` with the report's defaults, one seed for every stage of both
  models, fitted on the fit split) on each stage, teacher and student. Clopper–Pearson
  interval.
- ``stage_cka``: debiased linear CKA between every teacher stage ``i`` and student stage
  ``j`` (``cka.debiased_cka``), with the paired-bootstrap interval of ``cka.feat_cka``.

The CKA matrix is batched so that it costs little more than one CKA of the widest pair:

- values: every stage is centred once and one pass over row blocks accumulates the
  cross products of the concatenated stages, ``[X_1 … X_I]ᵀ[Y_1 … Y_J]``, whose (i, j)
  block is the ``X_iᵀY_j`` that ``hsic_terms`` needs for that pair, and each stage's own
  ``X_iᵀX_i``; the four HSIC pieces of every pair come from these (as in ``hsic_terms``);
- interval: one set of bootstrap weights for all pairs and one pass over the upper
  triangle of the n×n Gram matrices (as ``blockpass`` does for one pair): each stage's
  Gram block is computed once per row block, and the quadratic forms ``wᵀ(K_i∘L_j)w``,
  ``wᵀ(K_i∘K_i)w`` and ``wᵀ(L_j∘L_j)w`` of every pair and stage are one matrix product
  with the weights; ``cka.cka_replicates`` turns them into the replicates of each pair.
"""

import math

import torch

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.blockpass import _upper_quadratic, matmul_nt
from ijckd_bounds.estimators.cka import (
    CKA_BOOTSTRAP,
    _hsic,
    _ratio,
    cka_method,
    cka_replicate_count,
    cka_replicates,
)
from ijckd_bounds.estimators.intervals import (
    Estimate,
    PairedBootstrap,
    derived_seed,
    proportion,
)
from ijckd_bounds.estimators.probes import LogisticProbe, as_features, as_labels
from ijckd_bounds.estimators.rowwise import column_mean64, row_blocks

__all__ = ["stage_probe_errors", "stage_cka_matrix", "stage_cka_values", "layer_rows",
           "relative_depths"]

# the Gram products of one row block of the CKA-matrix pass: about this many bytes
_PASS_BYTES = 96 * 2 ** 20


def _check_stages(stages, name, n=None):
    """A non-empty list of (n, d_i) float tensors with one row count; returns it."""
    if isinstance(stages, torch.Tensor) or not isinstance(stages, (list, tuple)) or not stages:
        raise IJCKDError(f"`{name}` must be a non-empty list of (n, d) stage features, "
                         f"got {type(stages).__name__}")
    out = []
    for index, x in enumerate(stages):
        x = as_features(x, f"{name}[{index}]")
        if n is None:
            n = x.shape[0]
        if x.shape[0] != n:
            raise IJCKDError(f"`{name}[{index}]` must have {n} rows like the other stages "
                             f"(paired samples), got {x.shape[0]}")
        out.append(x)
    return out


def relative_depths(count):
    """Relative depth ``(k + 1) / count`` of each of ``count`` stages: the last is 1."""
    return [(k + 1) / count for k in range(count)]


def stage_probe_errors(stages_eval, y, stages_fit, y_fit, *, num_classes=None, seed=0,
                       level=0.95):
    """``stage_probe_err`` of each stage: ``[Estimate]``, one per stage.

    stages_eval: list of (n, d_k) evaluation features; y (n,) labels; stages_fit: the
    same stages (m, d_k) on the fit split, y_fit (m,). Every stage gets the same probe
    recipe: ``LogisticProbe`` with the report's L2 grid and nested selection, one seed
    (derived from ``seed``), fitted on all fit rows; so probes of the teacher's and the
    student's stages (called with the same ``seed``) differ only in their features.
    """
    stages_eval = _check_stages(stages_eval, "stages_eval")
    stages_fit = _check_stages(stages_fit, "stages_fit")
    if len(stages_fit) != len(stages_eval):
        raise IJCKDError(f"`stages_fit` must hold the {len(stages_eval)} stages of "
                         f"`stages_eval`, got {len(stages_fit)}")
    y = as_labels(y, "y", stages_eval[0].shape[0], num_classes=num_classes)
    y_fit = as_labels(y_fit, "y_fit", stages_fit[0].shape[0], num_classes=num_classes)
    if num_classes is None:
        num_classes = int(max(int(y.max()), int(y_fit.max()))) + 1
    # the seed of the report's same-recipe probes (teacher/student/connected_probe_err)
    probe_seed = derived_seed(seed, "probes") % 2 ** 31
    out = []
    for index, (x_eval, x_fit) in enumerate(zip(stages_eval, stages_fit)):
        if x_eval.shape[1] != x_fit.shape[1]:
            raise IJCKDError(f"stage {index} has width {x_eval.shape[1]} on the evaluation "
                             f"split and {x_fit.shape[1]} on the fit split")
        probe = LogisticProbe(seed=probe_seed).fit(x_fit, y_fit, num_classes=num_classes)
        wrong = probe.predict(x_eval).cpu() != y.cpu()
        out.append(proportion(wrong, level))
    return out


def _stage_sums(stages, means):
    """Per stage: centred squared norms (n,) and column sums (d,), float64; a second pass
    gives ``(K̃1)_r = x_r·Σx − ‖x_r‖²`` (n,) as in ``hsic_terms``."""
    n = stages[0].shape[0]
    norms, sums = [], []
    for x, mean in zip(stages, means):
        norm = torch.empty(n, dtype=torch.float64, device=x.device)
        total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        for rows in row_blocks(n):
            block = x[rows].to(torch.float64) - mean
            norm[rows] = (block * block).sum(dim=1)
            total += block.sum(dim=0)
        norms.append(norm)
        sums.append(total)
    row_sums = []
    for x, mean, total, norm in zip(stages, means, sums, norms):
        row = torch.empty(n, dtype=torch.float64, device=x.device)
        for rows in row_blocks(n):
            row[rows] = ((x[rows].to(torch.float64) - mean) * total).sum(dim=1)
        row_sums.append(row - norm)
    return norms, sums, row_sums


def stage_cka_values(teacher_stages, student_stages):
    """Debiased linear CKA (I, J) float64 of every teacher stage i (n, d_i) and student
    stage j (n, e_j): the values ``debiased_cka`` gives pair by pair, from one pass over
    the concatenated, centred stages (NaN where a stage is constant)."""
    xs = _check_stages(teacher_stages, "teacher_stages")
    ys = _check_stages(student_stages, "student_stages", xs[0].shape[0])
    n = xs[0].shape[0]
    if n < 4:
        raise IJCKDError(f"debiased CKA needs at least 4 samples, got {n}")
    device = xs[0].device
    mean_x = [column_mean64(x) for x in xs]
    mean_y = [column_mean64(y) for y in ys]
    dx = [x.shape[1] for x in xs]
    dy = [y.shape[1] for y in ys]
    cross = torch.zeros(sum(dx), sum(dy), dtype=torch.float64, device=device)
    own_x = [torch.zeros(d, d, dtype=torch.float64, device=device) for d in dx]
    own_y = [torch.zeros(d, d, dtype=torch.float64, device=device) for d in dy]
    for rows in row_blocks(n):
        bx = [x[rows].to(torch.float64) - m for x, m in zip(xs, mean_x)]
        by = [y[rows].to(torch.float64) - m for y, m in zip(ys, mean_y)]
        cross.addmm_(torch.cat(bx, dim=1).T, torch.cat(by, dim=1))
        for gram, block in zip(own_x + own_y, bx + by):
            gram.addmm_(block.T, block)
    nx, sx, rx = _stage_sums(xs, mean_x)
    ny, sy, ry = _stage_sums(ys, mean_y)

    def frob2(prod):
        return float((prod * prod).sum())

    def self_hsic(gram, norm, total, row):
        sum_k = float(total @ total - norm.sum())
        return _hsic(frob2(gram) - float((norm * norm).sum()), sum_k, sum_k,
                     float((row * row).sum()), n), sum_k

    kk = [self_hsic(*args) for args in zip(own_x, nx, sx, rx)]
    ll = [self_hsic(*args) for args in zip(own_y, ny, sy, ry)]
    out = torch.full((len(xs), len(ys)), math.nan, dtype=torch.float64)
    col_x = [0, *torch.tensor(dx).cumsum(0).tolist()]
    col_y = [0, *torch.tensor(dy).cumsum(0).tolist()]
    for i in range(len(xs)):
        for j in range(len(ys)):
            block = cross[col_x[i]:col_x[i + 1], col_y[j]:col_y[j + 1]]
            hsic_kl = _hsic(frob2(block) - float((nx[i] * ny[j]).sum()), kk[i][1], ll[j][1],
                            float((rx[i] * ry[j]).sum()), n)
            out[i, j] = _ratio(hsic_kl, kk[i][0], ll[j][0])
    return out


def _centred(x, dtype):
    return (x.to(torch.float64) - column_mean64(x)).to(dtype)


def _matrix_quads(xs, ys, weights, *, block_rows=None):
    """Quadratic forms of every pair and stage in one pass over the Gram matrices.

    xs, ys: centred stages (n, d_i), (n, e_j), one dtype; weights (C, n). Returns
    ``(pair (I, J, C), own_x (I, C), own_y (J, C))`` float64 on the CPU: ``w_cᵀ(K_i∘L_j)w_c``,
    ``w_cᵀ(K_i∘K_i)w_c``, ``w_cᵀ(L_j∘L_j)w_c`` with ``K_i = X_i X_iᵀ``, ``L_j = Y_j Y_jᵀ``.
    """
    n, n_x, n_y = xs[0].shape[0], len(xs), len(ys)
    groups = n_x * n_y + n_x + n_y
    dtype = xs[0].dtype
    if block_rows is None:
        per_row = (groups + n_x + n_y) * n * torch.finfo(dtype).bits // 8
        block_rows = int(max(16, min(4096, _PASS_BYTES // max(per_row, 1))))
    vectors = weights.to(device=xs[0].device, dtype=dtype).T.contiguous()  # (n, C)
    total = torch.zeros(groups, vectors.shape[1], dtype=torch.float64, device=xs[0].device)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        b = stop - start
        grams_x = [matmul_nt(x[start:stop], x[start:]) for x in xs]  # (b, n - start) each
        grams_y = [matmul_nt(y[start:stop], y[start:]) for y in ys]
        products = torch.empty(groups * b, n - start, dtype=dtype, device=xs[0].device)
        slot = 0
        for gram_x in grams_x:
            for gram_y in grams_y:
                torch.mul(gram_x, gram_y, out=products[slot * b:(slot + 1) * b])
                slot += 1
        for gram in grams_x + grams_y:
            torch.mul(gram, gram, out=products[slot * b:(slot + 1) * b])
            slot += 1
        del grams_x, grams_y
        total += _upper_quadratic(products, vectors, start, stop, groups=groups)
        del products
    total = total.cpu()
    pair = total[:n_x * n_y].view(n_x, n_y, -1)
    return pair, total[n_x * n_y:n_x * n_y + n_x], total[n_x * n_y + n_x:]


def stage_cka_matrix(teacher_stages, student_stages, *, level=0.95, bootstrap=None,
                     n_bootstrap=1000, seed=0, max_bootstrap=CKA_BOOTSTRAP, block_rows=None):
    """``stage_cka`` of every teacher stage i and student stage j: an I×J list of lists of
    ``Estimate``, each the debiased linear CKA with the paired-bootstrap interval of
    ``feat_cka`` (the first ``max_bootstrap`` resamples of ``bootstrap``, one set of
    resamples for all pairs).

    teacher_stages: list of (n, d_i); student_stages: list of (n, e_j), rows paired.
    """
    xs = _check_stages(teacher_stages, "teacher_stages")
    ys = _check_stages(student_stages, "student_stages", xs[0].shape[0])
    n = xs[0].shape[0]
    if bootstrap is None:
        bootstrap = PairedBootstrap(n, n_bootstrap, seed, level=level, device=xs[0].device)
    elif bootstrap.n != n:
        raise IJCKDError(f"`bootstrap` resamples {bootstrap.n} samples, the stages have {n}")
    values = stage_cka_values(xs, ys)
    count = cka_replicate_count(bootstrap.n_bootstrap, max_bootstrap)
    dtype = torch.float64 if all(x.dtype == torch.float64 for x in xs + ys) else torch.float32
    cxs = [_centred(x, dtype) for x in xs]
    cys = [_centred(y, dtype) for y in ys]
    weights = bootstrap.weights[:count]
    pair, own_x, own_y = _matrix_quads(cxs, cys, weights, block_rows=block_rows)
    method = cka_method(bootstrap, count)
    out = []
    for i, x in enumerate(cxs):
        row = []
        for j, y in enumerate(cys):
            value = float(values[i, j])
            if math.isnan(value):
                row.append(Estimate.missing(n, bootstrap.level, "a stage is constant"))
                continue
            quad = torch.stack([pair[i, j], own_x[i], own_y[j]])
            replicates = cka_replicates(x, y, weights, quad)
            row.append(bootstrap.estimate(value, replicates, method=method))
        out.append(row)
    return out


def layer_rows(teacher_probe, student_probe, cka, *, teacher_stages, student_stages,
               teacher_dims, student_dims, n_eval, n_fit):
    """The rows of ``layers.csv`` for one checkpoint, without its key columns.

    teacher_probe, student_probe: ``[Estimate]`` per stage (``stage_probe_errors``); cka:
    I×J ``Estimate`` (``stage_cka_matrix``); *_stages: stage names; *_dims: stage widths.
    Probe rows carry ``model``, ``stage``, ``stage_index``, ``depth`` (relative depth);
    CKA rows ``teacher_stage``/``student_stage`` with their indices, and as ``dim`` the
    wider of the two stages (``n_eval ≫ dim`` is what a CKA needs).
    """
    rows = []
    blank = {c: math.nan for c in schema.LAYER_ESTIMATE_COLUMNS}
    # text columns a row does not use are None: empty in the CSV, NaN when read back
    blank.update({"model": None, "stage": None, "teacher_stage": None, "student_stage": None})
    for model, probes, names, dims in (("teacher", teacher_probe, teacher_stages, teacher_dims),
                                       ("student", student_probe, student_stages, student_dims)):
        if not len(probes) == len(names) == len(dims):
            raise IJCKDError(f"{model}: {len(probes)} probe results for {len(names)} stages")
        for index, (estimate, name, dim, depth) in enumerate(
                zip(probes, names, dims, relative_depths(len(names)))):
            row = dict(blank, model=model, stage=name, stage_index=index, depth=depth,
                       n_eval=n_eval, n_fit=n_fit, dim=dim)
            row.update(zip(schema.interval_columns("stage_probe_err"),
                           (estimate.value, estimate.lo, estimate.hi)))
            rows.append(row)
    for i, name_t in enumerate(teacher_stages):
        for j, name_s in enumerate(student_stages):
            estimate = cka[i][j]
            row = dict(blank, teacher_stage=name_t, teacher_index=i, student_stage=name_s,
                       student_index=j, n_eval=n_eval, n_fit=n_fit,
                       dim=max(teacher_dims[i], student_dims[j]))
            row.update(zip(schema.interval_columns("stage_cka"),
                           (estimate.value, estimate.lo, estimate.hi)))
            rows.append(row)
    return rows
