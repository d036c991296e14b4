"""Layer-by-layer terms (docs/theory.md "Layers"): a probe per stage and the stage CKA matrix.

Each model exposes its stages (``ZooModel.forward_stages``), every one global-average-
pooled to a vector. Two terms per checkpoint:

- ``stage_probe_err``: the error on the evaluation split of the same-recipe logistic
  probe (``LogisticProbe`` with the report's defaults, one seed for every stage of both
  models, fitted on the fit split) on each stage, teacher and student. Clopper–Pearson
  interval.
- ``stage_cka``: debiased linear CKA between every teacher stage ``i`` and student stage
  ``j`` (``cka.debiased_cka``), with the interval of ``cka.feat_cka``: the delete-one
  jackknife, ``value ± t_{n−1} · se_jack``.

The CKA matrix is batched so that it costs little more than one CKA of the concatenated
stages: every stage is centred and its own pieces (Gram matrix, ``(K̃1)``, the terms of
its own HSIC's leave-one-out values) are computed once, whichever pairs it is in; one
pass over row blocks accumulates the cross product of the concatenations
``[X_1 … X_I]ᵀ[Y_1 … Y_J]``, whose (i, j) block is the ``X_iᵀY_j`` of that pair, and a
second pass the per-sample terms ``x_kᵀ(X_iᵀY_j)y_k`` of every pair, so the whole matrix
costs O(n·D·E) for D, E the summed stage widths, where the pairs one by one cost
O(n·(I·E + J·D)·max width) and recompute every stage's own pieces at each pair. The
leave-one-out pieces are the rank-one downdates of ``cka._leave_one_out``.
"""

import math

import torch

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.cka import _hsic, _ratio
from ijckd_bounds.estimators.intervals import Estimate, check_level, derived_seed, proportion
from ijckd_bounds.estimators.probes import LogisticProbe, as_features, as_labels
from ijckd_bounds.estimators.rowwise import column_mean64, project64, row_blocks
from ijckd_bounds.schema import LEVEL

__all__ = ["stage_probe_errors", "stage_cka_matrix", "stage_cka_values", "layer_rows",
           "relative_depths"]

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
                       level=LEVEL):
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
    for index, (x_eval, x_fit) in enumerate(zip(stages_eval, stages_fit, strict=True)):
        if x_eval.shape[1] != x_fit.shape[1]:
            raise IJCKDError(f"stage {index} has width {x_eval.shape[1]} on the evaluation "
                             f"split and {x_fit.shape[1]} on the fit split")
        probe = LogisticProbe(seed=probe_seed).fit(x_fit, y_fit, num_classes=num_classes)
        wrong = probe.predict(x_eval).cpu() != y.cpu()
        out.append(proportion(wrong, level))
    return out


def _stage_pieces(x):
    """Centred float64 pieces of one stage x (n, d), in the notation of ``cka``:
    mean, squared norms ``nx`` (n), column sum ``sx`` (d), ``row = (K̃1)`` (n), Gram
    ``xtx`` (d, d), and for its own HSIC's jackknife ``q = x_kᵀ(XᵀX)x_k`` (n) and
    ``self_row = Σ_{i≠k} (K̃1)_i K_ik`` (n)."""
    n = x.shape[0]
    mean = column_mean64(x)
    options = dict(dtype=torch.float64, device=x.device)
    norms, total = torch.empty(n, **options), torch.zeros(x.shape[1], **options)
    gram = torch.zeros(x.shape[1], x.shape[1], **options)
    for rows in row_blocks(n):
        block = x[rows].to(torch.float64) - mean
        norms[rows] = (block * block).sum(dim=1)
        total += block.sum(dim=0)
        gram.addmm_(block.T, block)
    row = project64(x, total) - float(mean @ total) - norms
    quad = torch.empty(n, **options)
    back = torch.zeros(x.shape[1], **options)  # Xᵀ(K̃1)
    for rows in row_blocks(n):
        block = x[rows].to(torch.float64) - mean
        quad[rows] = ((block @ gram) * block).sum(dim=1)
        back += row[rows] @ block
    self_row = project64(x, back) - float(mean @ back) - row * norms
    return {"mean": mean, "norms": norms, "sum": total, "row": row, "gram": gram,
            "quad": quad, "self_row": self_row}


def _hsic_pieces(gram, norms_a, norms_b, sum_a, sum_b, row_a, row_b):
    """Full-sample pieces ``(tr(K̃L̃), 1ᵀK̃1, 1ᵀL̃1, 1ᵀK̃L̃1)``; gram = AᵀB."""
    return (float((gram * gram).sum()) - float((norms_a * norms_b).sum()),
            float(sum_a @ sum_a - norms_a.sum()), float(sum_b @ sum_b - norms_b.sum()),
            float((row_a * row_b).sum()))


def _without_one(full, quad, norms_a, norms_b, row_a, row_b, a_b, b_a):
    """The pieces without sample k (each (n,)), from the rank-one downdates of
    ``cka._leave_one_out``."""
    tr, sum_a, sum_b, sum_ab = full
    cross = quad - norms_a * norms_b  # Σ_{i≠k} K_ik L_ik
    return (tr - 2.0 * cross, sum_a - 2.0 * row_a, sum_b - 2.0 * row_b,
            sum_ab - row_a * row_b - a_b - b_a + cross)


def _stage_cka_jackknife(xs, ys):
    """Debiased CKA (I, J) float64 of every teacher stage and student stage, and its
    leave-one-out values (I, J, n), from one pass over the concatenated stages."""
    n = xs[0].shape[0]
    if n < 5:
        raise IJCKDError(f"the jackknife of debiased CKA needs at least 5 samples, got {n}")
    px = [_stage_pieces(x) for x in xs]
    py = [_stage_pieces(y) for y in ys]
    device = xs[0].device
    col_x = [0, *torch.tensor([x.shape[1] for x in xs]).cumsum(0).tolist()]
    col_y = [0, *torch.tensor([y.shape[1] for y in ys]).cumsum(0).tolist()]

    def centred(stages, pieces, rows):
        return torch.cat([z[rows].to(torch.float64) - p["mean"]
                          for z, p in zip(stages, pieces, strict=True)], dim=1)

    # one cross product of the concatenations: its (i, j) block is X_iᵀY_j
    cross = torch.zeros(col_x[-1], col_y[-1], dtype=torch.float64, device=device)
    for rows in row_blocks(n):
        cross.addmm_(centred(xs, px, rows).T, centred(ys, py, rows))
    rows_k = torch.stack([p["row"] for p in px], dim=1)  # (n, I)
    rows_l = torch.stack([p["row"] for p in py], dim=1)  # (n, J)
    # x_kᵀ(X_iᵀY_j)y_k (I, J, n); Y_jᵀ(K̃_i1) (E, I) and X_iᵀ(L̃_j1) (D, J)
    quad = torch.empty(len(xs), len(ys), n, dtype=torch.float64, device=device)
    y_back = torch.zeros(col_y[-1], len(xs), dtype=torch.float64, device=device)
    x_back = torch.zeros(col_x[-1], len(ys), dtype=torch.float64, device=device)
    for rows in row_blocks(n):
        bx, by = centred(xs, px, rows), centred(ys, py, rows)
        y_back += by.T @ rows_k[rows]
        x_back += bx.T @ rows_l[rows]
        for i in range(len(xs)):
            mapped = bx[:, col_x[i]:col_x[i + 1]] @ cross[col_x[i]:col_x[i + 1]]  # (b, E)
            for j in range(len(ys)):
                part = slice(col_y[j], col_y[j + 1])
                quad[i, j, rows] = (mapped[:, part] * by[:, part]).sum(dim=1)
    # y_k·Y_jᵀ(K̃_i1) (n, I, J) and x_k·X_iᵀ(L̃_j1) (n, I, J), in a third pass
    y_proj = torch.empty(n, len(xs), len(ys), dtype=torch.float64, device=device)
    x_proj = torch.empty(n, len(xs), len(ys), dtype=torch.float64, device=device)
    for rows in row_blocks(n):
        bx, by = centred(xs, px, rows), centred(ys, py, rows)
        for j in range(len(ys)):
            part = slice(col_y[j], col_y[j + 1])
            y_proj[rows, :, j] = by[:, part] @ y_back[part]
        for i in range(len(xs)):
            part = slice(col_x[i], col_x[i + 1])
            x_proj[rows, i, :] = bx[:, part] @ x_back[part]

    def own(p):
        full = _hsic_pieces(p["gram"], p["norms"], p["norms"], p["sum"], p["sum"], p["row"],
                            p["row"])
        loo = _without_one(full, p["quad"], p["norms"], p["norms"], p["row"], p["row"],
                           p["self_row"], p["self_row"])
        return _hsic(*full, n), _hsic(*loo, n - 1)

    own_x, own_y = [own(p) for p in px], [own(p) for p in py]
    values = torch.full((len(xs), len(ys)), math.nan, dtype=torch.float64)
    loo = torch.full((len(xs), len(ys), n), math.nan, dtype=torch.float64)
    for i, p in enumerate(px):
        for j, q in enumerate(py):
            block = cross[col_x[i]:col_x[i + 1], col_y[j]:col_y[j + 1]]
            full = _hsic_pieces(block, p["norms"], q["norms"], p["sum"], q["sum"], p["row"],
                                q["row"])
            # Σ_{i'≠k} (K̃1)_i' L_i'k and Σ_{i'≠k} K_i'k (L̃1)_i'
            k_l = y_proj[:, i, j] - p["row"] * q["norms"]
            l_k = x_proj[:, i, j] - q["row"] * p["norms"]
            dropped = _without_one(full, quad[i, j], p["norms"], q["norms"], p["row"],
                                   q["row"], k_l, l_k)
            values[i, j] = _ratio(_hsic(*full, n), own_x[i][0], own_y[j][0])
            loo[i, j] = _ratio(_hsic(*dropped, n - 1), own_x[i][1], own_y[j][1]).cpu()
    return values, loo


def stage_cka_values(teacher_stages, student_stages):
    """Debiased linear CKA (I, J) float64 of every teacher stage i (n, d_i) and student
    stage j (n, e_j): the values ``debiased_cka`` gives pair by pair, from one pass over
    the concatenated, centred stages (NaN where a stage is constant)."""
    xs = _check_stages(teacher_stages, "teacher_stages")
    ys = _check_stages(student_stages, "student_stages", xs[0].shape[0])
    return _stage_cka_jackknife(xs, ys)[0]


def stage_cka_matrix(teacher_stages, student_stages, *, level=LEVEL):
    """``stage_cka`` of every teacher stage i and student stage j: an I×J list of lists of
    ``Estimate``, each the debiased linear CKA with the interval of ``feat_cka`` (the
    delete-one jackknife, ``value ± t_{n−1} · se_jack``), all pairs from one pass.

    teacher_stages: list of (n, d_i); student_stages: list of (n, e_j), rows paired.
    """
    from scipy.special import stdtrit

    level = check_level(level)
    xs = _check_stages(teacher_stages, "teacher_stages")
    ys = _check_stages(student_stages, "student_stages", xs[0].shape[0])
    n = xs[0].shape[0]
    values, loo = _stage_cka_jackknife(xs, ys)
    se = ((n - 1) / n * ((loo - loo.mean(dim=2, keepdim=True)) ** 2).sum(dim=2)).sqrt()
    half = float(stdtrit(n - 1, 0.5 + level / 2)) * se
    method = f"delete-one jackknife (n={n}), t interval"
    out = []
    for i in range(len(xs)):
        row = []
        for j in range(len(ys)):
            value = float(values[i, j])
            if math.isnan(value) or not bool(torch.isfinite(loo[i, j]).all()):
                row.append(Estimate.missing(n, level, "a stage is constant"))
            else:
                width = float(half[i, j])
                row.append(Estimate(value, value - width, value + width, n, method, level))
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
                zip(probes, names, dims, relative_depths(len(names)), strict=True)):
            row = dict(blank, model=model, stage=name, stage_index=index, depth=depth,
                       n_eval=n_eval, n_fit=n_fit, dim=dim)
            row.update(zip(schema.interval_columns("stage_probe_err"),
                           (estimate.value, estimate.lo, estimate.hi), strict=True))
            rows.append(row)
    for i, name_t in enumerate(teacher_stages):
        for j, name_s in enumerate(student_stages):
            estimate = cka[i][j]
            row = dict(blank, teacher_stage=name_t, teacher_index=i, student_stage=name_s,
                       student_index=j, n_eval=n_eval, n_fit=n_fit,
                       dim=max(teacher_dims[i], student_dims[j]))
            row.update(zip(schema.interval_columns("stage_cka"),
                           (estimate.value, estimate.lo, estimate.hi), strict=True))
            rows.append(row)
    return rows
