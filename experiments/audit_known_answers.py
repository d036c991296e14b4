"""The audit on students whose defect is known by construction (docs/theory.md, "Audit").

Teacher features are k isotropic Gaussian classes in d dimensions and h_T is their Bayes
classifier, so every probe fitted on the fit split loses against h_T (the fit piece). The
students:

- ``perfect``: s = z_S = z_T (teacher-limited or undetermined, never anything else);
- ``perfect_rotated_s``: z_S = z_T and s a rotation of z_T (the same information in other
  coordinates);
- ``connector_destroyed``: s a rotation of z_T, z_S its projection on one direction;
- ``misaligned``: z_S = s a rotation of z_T (separable, outside h_T's decision regions).

    python experiments/audit_known_answers.py --seeds 60 --n-fit 300

prints, per student, how often each diagnosis was named over the seeds and the mean of each
piece. The tests (tests/app/test_audit_known_answers.py) use the same students.
"""

import argparse
from collections import Counter

import numpy as np

KINDS = ("perfect", "perfect_rotated_s", "connector_destroyed", "misaligned")
D, K = 50, 10


def teacher_features(rng, n, d=D, k=K, scale=0.5):
    """(z_t (n, d), y (n,), weight (k, d), bias (k,)): k isotropic Gaussian classes with
    random means (scale·N(0, 1) per coordinate) and h_T their Bayes classifier (equal
    priors, identity covariance): w_k = mu_k, b_k = -||mu_k||²/2."""
    means = rng.normal(size=(k, d)) * scale
    y = rng.integers(0, k, size=n)
    z_t = means[y] + rng.normal(size=(n, d))
    return z_t, y, means, -0.5 * (means ** 2).sum(axis=1)


def rotation(rng, d=D):
    """A uniformly random orthogonal (d, d) matrix."""
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def student_features(kind, z_t, rng, rot):
    """(z_s, s) of a student of ``kind`` for teacher features z_t (n, d)."""
    if kind == "perfect":
        return z_t.copy(), z_t.copy()
    if kind == "perfect_rotated_s":
        return z_t.copy(), z_t @ rot
    if kind == "connector_destroyed":
        s = z_t @ rot
        direction = rng.normal(size=(z_t.shape[1], 1))
        return (s @ direction) @ direction.T / z_t.shape[1], s
    if kind == "misaligned":
        z_s = z_t @ rot
        return z_s, z_s.copy()
    raise ValueError(f"unknown student kind {kind!r}; valid: {', '.join(KINDS)}")


def feature_arrays(kind, seed, n_eval=600, n_fit=300):
    """The arrays of a feature file (``estimate_bounds_from_file``) for one student."""
    rng = np.random.default_rng(seed)
    z_t, y, weight, bias = teacher_features(rng, n_eval + n_fit)
    z_s, s = student_features(kind, z_t, rng, rotation(np.random.default_rng(1000 + seed)))
    e, f = slice(0, n_eval), slice(n_eval, None)
    return {"z_t": z_t[e], "z_s": z_s[e], "y": y[e], "s": s[e], "z_t_fit": z_t[f],
            "z_s_fit": z_s[f], "y_fit": y[f], "s_fit": s[f], "weight": weight, "bias": bias}


def audit_budget(kind, seed, *, n_eval=600, n_fit=300, n_bootstrap=200):
    """(ErrorBudget, BoundsReport) of one student of ``kind``."""
    from ijckd_bounds.app.audit import budgets_from_report
    from ijckd_bounds.estimators import estimate_bounds

    a = feature_arrays(kind, seed, n_eval=n_eval, n_fit=n_fit)
    report = estimate_bounds(a["z_t"], a["z_s"], a["y"], a["weight"], a["bias"],
                             fit=(a["z_t_fit"], a["z_s_fit"], a["y_fit"]), s=a["s"],
                             s_fit=a["s_fit"], n_bootstrap=n_bootstrap, n_permutations=10,
                             seed=seed)
    (budget,) = budgets_from_report(report)
    return budget, report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seeds", type=int, default=60)
    parser.add_argument("--n-eval", type=int, default=600)
    parser.add_argument("--n-fit", type=int, default=300)
    args = parser.parse_args(argv)
    print(f"d = {D}, K = {K}, n_eval = {args.n_eval}, n_fit = {args.n_fit}, "
          f"{args.seeds} seeds per student")
    print("| student | diagnoses (runs) | teacher | fit | capacity | connector | alignment |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for kind in args.kinds:
        names, values = Counter(), []
        for seed in range(args.seeds):
            budget, _ = audit_budget(kind, seed, n_eval=args.n_eval, n_fit=args.n_fit)
            names[budget.diagnosis] += 1
            values.append([p.value for p in budget.pieces])
        means = np.mean(values, axis=0)
        named = ", ".join(f"{name} {count}" for name, count in names.most_common())
        print(f"| {kind} | {named} | " + " | ".join(f"{100 * m:+.1f}%" for m in means) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
