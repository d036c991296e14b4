"""Time ``estimate_bounds`` against a straightforward reference stack.

For each configuration (n evaluation samples, feature width d, K classes) synthetic
Gaussian-class features are drawn: teacher features ``z_T``, student features ``z_S``
(the teacher's plus noise and a shift), the Bayes classifier of ``z_T`` as ``h_T``, and a
fit split of another n samples. Two stacks then estimate the same terms, each in its own
subprocess (so that ``ru_maxrss`` is the peak memory of that stack alone):

- ``ijckd_bounds``: the full report (every term, Clopper–Pearson intervals, a paired
  bootstrap with ``--bootstrap`` resamples for every composite term, the MMD permutation
  test with ``--permutations`` sign flips);
- reference: scikit-learn ``LogisticRegression`` for the student probe, the joint probe
  and the linear domain classifier, ``MLPClassifier`` for the MLP domain classifier, and a
  full-matrix numpy MMD² with a loop over permutations, debiased CKA from full kernel
  matrices. It computes point estimates and the p-value only (no bootstrap), and is
  skipped where its n×n matrices would not fit (``--reference-max-n``).

The table shows both times, their ratio and whether the reference's estimates lie in
the report's intervals (deterministic terms must agree to rounding; terms from fitted
classifiers are compared with the report's interval).

    python benchmarks/bench_estimators.py                    # quick subset
    python benchmarks/bench_estimators.py --n 10000 --d 512 --k 100
    python benchmarks/bench_estimators.py --n 1000 10000 50000 --d 64 512 --k 10 100
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

QUICK = [(1000, 64, 10), (10000, 512, 100)]

# terms both stacks compute; "exact" ones must agree to rounding
EXACT_TERMS = ("teacher_err", "student_err", "disagreement", "feat_msd", "mmd2", "feat_cka")
FITTED_TERMS = ("student_probe_err", "joint_err_T", "joint_err_S", "proxy_a_linear",
                "proxy_a_mlp")


def synthetic(n, d, k, seed=0):
    """Evaluation and fit arrays (numpy float32) for one configuration."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * (3.0 / np.sqrt(d)) * np.sqrt(np.log(k) + 1)
    shift = rng.normal(size=d) * 0.2 / np.sqrt(d)

    def draw(m):
        y = rng.integers(0, k, size=m)
        z_t = means[y] + rng.normal(size=(m, d))
        z_s = z_t + 0.5 * rng.normal(size=(m, d)) + shift
        return z_t.astype(np.float32), z_s.astype(np.float32), y

    weight = means.astype(np.float32)
    bias = (-0.5 * (means * means).sum(1)).astype(np.float32)
    z_t, z_s, y = draw(n)
    z_t_fit, z_s_fit, y_fit = draw(n)
    return {"z_t": z_t, "z_s": z_s, "y": y, "weight": weight, "bias": bias,
            "z_t_fit": z_t_fit, "z_s_fit": z_s_fit, "y_fit": y_fit}


# ----------------------------------------------------------------------------------------
# the two stacks (run inside a worker subprocess)


def run_ours(data, args):
    import torch

    from ijckd_bounds.estimators import estimate_bounds

    import scipy.stats  # noqa: F401  (imported before the clock, like the reference's sklearn)

    t = {k: torch.from_numpy(v) for k, v in data.items()}
    start = time.perf_counter()
    report = estimate_bounds(t["z_t"], t["z_s"], t["y"], t["weight"], t["bias"],
                             fit=(t["z_t_fit"], t["z_s_fit"], t["y_fit"]),
                             n_permutations=args.permutations, n_bootstrap=args.bootstrap,
                             seed=0)
    elapsed = time.perf_counter() - start
    row = report.row()
    return {"seconds": elapsed, "row": row, "stages": report.details["timings_s"]}


def _mmd_reference(t, s, n_permutations, rng, sigma):
    """Full-matrix paired MMD² U-statistic at bandwidth sigma, permutation p-value by a
    loop over sign vectors (H is formed once: n×n float64)."""
    import numpy as np

    t = t.astype(np.float64)
    s = s.astype(np.float64)

    def kernel(a, b):
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
        return np.exp(-np.maximum(d2, 0) / (2 * sigma ** 2))

    n = len(t)
    h = kernel(t, t)
    h += kernel(s, s)
    cross = kernel(t, s)
    h -= cross
    h -= cross.T
    del cross
    np.fill_diagonal(h, 0.0)
    observed = h.sum() / (n * (n - 1))
    exceed = 0
    for _ in range(n_permutations):
        eps = rng.choice([-1.0, 1.0], size=n)
        exceed += eps @ (h @ eps) / (n * (n - 1)) >= observed
    return observed, (1 + exceed) / (1 + n_permutations)


def _cka_reference(x, y):
    import numpy as np

    def hsic(k, l):
        n = len(k)
        k = k.copy()
        l = l.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        kl_rows = k.sum(1) @ l.sum(1)
        return ((k * l).sum() + k.sum() * l.sum() / ((n - 1) * (n - 2))
                - 2 / (n - 2) * kl_rows) / (n * (n - 3))

    x = x.astype(np.float64)
    y = y.astype(np.float64)
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def run_reference(data, args):
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    stages = {}
    start = clock = time.perf_counter()

    def stop(stage):
        nonlocal clock
        now = time.perf_counter()
        stages[stage] = round(now - clock, 4)
        clock = now

    z_t, z_s, y = data["z_t"], data["z_s"], data["y"]
    w, b = data["weight"].astype(np.float64), data["bias"].astype(np.float64)
    pred_t = (z_t @ w.T + b).argmax(1)
    pred_s = (z_s @ w.T + b).argmax(1)
    row = {"teacher_err": np.mean(pred_t != y), "student_err": np.mean(pred_s != y),
           "disagreement": np.mean(pred_t != pred_s),
           "feat_msd": np.mean(((z_s.astype(np.float64) - z_t) ** 2).sum(1))}

    def logistic():
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=200))

    stop("classifier and feature terms")
    probe = logistic().fit(data["z_s_fit"], data["y_fit"])
    row["student_probe_err"] = np.mean(probe.predict(z_s) != y)
    stop("student probe")

    # joint probe on a part of the fit split, compared with h_T on the rest
    idx_fit, idx_held = train_test_split(np.arange(len(data["y_fit"])), test_size=0.25,
                                         random_state=0, stratify=data["y_fit"])
    tf, sf, yf = data["z_t_fit"], data["z_s_fit"], data["y_fit"]
    joint = logistic().fit(np.concatenate([tf[idx_fit], sf[idx_fit]]),
                           np.concatenate([yf[idx_fit], yf[idx_fit]]))

    def joint_error(predict, idx):
        return np.mean(predict(tf[idx]) != yf[idx]) + np.mean(predict(sf[idx]) != yf[idx])

    def teacher(x):
        return (x @ w.T + b).argmax(1)

    better = joint.predict if joint_error(joint.predict, idx_held) < joint_error(
        teacher, idx_held) else teacher
    row["joint_err_T"] = np.mean(better(z_t) != y)
    row["joint_err_S"] = np.mean(better(z_s) != y)
    stop("joint probe")

    domain_x = np.concatenate([tf, sf])
    domain_y = np.r_[np.zeros(len(tf)), np.ones(len(sf))]
    for name, clf in (("linear", logistic()),
                      ("mlp", make_pipeline(StandardScaler(), MLPClassifier(
                          hidden_layer_sizes=(64,), max_iter=200, random_state=0)))):
        clf.fit(domain_x, domain_y)
        err = 0.5 * (np.mean(clf.predict(z_t) != 0) + np.mean(clf.predict(z_s) != 1))
        row[f"proxy_a_{name}"] = float(np.clip(2 * (1 - 2 * err), 0, 2))
        stop(f"domain classifier ({name})")

    row["mmd2"], row["mmd_p"] = _mmd_reference(z_t, z_s, args.permutations, rng,
                                               args.bandwidth)
    stop("MMD²")
    row["feat_cka"] = _cka_reference(z_t, z_s)
    stop("CKA")
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "row": {k: float(v) for k, v in row.items()},
            "stages": stages}


def worker(args):
    """Run one stack on one configuration; print JSON with the peak RSS."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    data = synthetic(args.n[0], args.d[0], args.k[0])
    result = run_ours(data, args) if args.stack == "ours" else run_reference(data, args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result, default=float))


# ----------------------------------------------------------------------------------------
# the driver


def run_stack(stack, n, d, k, args, bandwidth=None):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    command = [sys.executable, __file__, "--worker", stack, "--n", str(n), "--d", str(d),
               "--k", str(k), "--threads", str(args.threads), "--bootstrap",
               str(args.bootstrap), "--permutations", str(args.permutations)]
    if bandwidth is not None:
        command += ["--bandwidth", repr(float(bandwidth))]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{stack} failed on n={n}, d={d}, K={k}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _reference_interval(term, value, n):
    """Clopper–Pearson interval of a reference proportion (proxy A: of its domain error
    over 2n predictions, mapped through 2(1 − 2·err))."""
    from ijckd_bounds.estimators.intervals import clopper_pearson

    if term.startswith("proxy_a"):
        err = (1 - value / 2) / 2  # exact unless the clip at 0 was active
        lo, hi = clopper_pearson(round(err * 2 * n), 2 * n)
        return max(0.0, 2 * (1 - 2 * hi)), min(2.0, 2 * (1 - 2 * lo))
    return clopper_pearson(round(value * n), n)


def compare(ours, reference, n):
    """'ok' when both stacks agree: exact terms to 1e-4 relative and inside the report's
    interval; terms of fitted classifiers (different fitting code) with overlapping
    intervals. Otherwise the terms that disagree."""
    bad = []
    for term in EXACT_TERMS + FITTED_TERMS:
        value = reference[term]
        lo, hi = ours[f"{term}_lo"], ours[f"{term}_hi"]
        if term in EXACT_TERMS:
            agree = lo - 1e-9 <= value <= hi + 1e-9 and \
                abs(value - ours[term]) <= 1e-4 * max(1.0, abs(value))
        else:
            ref_lo, ref_hi = _reference_interval(term, value, n)
            agree = ref_lo <= hi and lo <= ref_hi
        if not agree:
            bad.append(f"{term} ref={value:.4g} ours={ours[term]:.4g} [{lo:.4g}, {hi:.4g}]")
    return "ok" if not bad else "; ".join(bad)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", help="evaluation samples (fit: as many)")
    parser.add_argument("--d", type=int, nargs="+", help="feature widths")
    parser.add_argument("--k", type=int, nargs="+", help="class counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--reference-max-n", type=int, default=20000,
                        help="skip the reference above this n (its n×n float64 matrices)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", choices=("ours", "reference"), dest="stack",
                        help=argparse.SUPPRESS)
    parser.add_argument("--bandwidth", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stack:
        return worker(args)

    if args.n or args.d or args.k:
        configs = list(itertools.product(args.n or [1000], args.d or [64], args.k or [10]))
    else:
        configs = QUICK
    header = (f"{'n':>6} {'d':>4} {'K':>4} | {'ours s':>7} {'peak MB':>8} | "
              f"{'ref s':>7} {'peak MB':>8} | {'ratio':>6} | check")
    print(f"threads={args.threads}, bootstrap={args.bootstrap}, "
          f"permutations={args.permutations}; fit split = n more samples")
    print(header)
    print("-" * len(header))
    results = []
    for n, d, k in configs:
        ours = run_stack("ours", n, d, k, args)
        line = f"{n:>6} {d:>4} {k:>4} | {ours['seconds']:>7.2f} {ours['peak_rss_mb']:>8.0f} | "
        entry = {"n": n, "d": d, "K": k, "ours": ours}
        if args.no_reference or n > args.reference_max_n:
            line += f"{'-':>7} {'-':>8} | {'-':>6} | reference skipped"
        else:
            # the same MMD bandwidth (ours: median of a seeded subsample) for both
            ref = run_stack("reference", n, d, k, args, ours["row"]["mmd_bandwidth"])
            ratio = ref["seconds"] / ours["seconds"]
            check = compare(ours["row"], ref["row"], n)
            line += (f"{ref['seconds']:>7.2f} {ref['peak_rss_mb']:>8.0f} | {ratio:>6.1f} | "
                     f"{check}")
            entry.update({"reference": ref, "ratio": ratio, "check": check})
        print(line)
        for name, result in (("ours", ours), ("reference", entry.get("reference"))):
            if result:
                stages = ", ".join(f"{k} {v:.2f}" for k, v in result["stages"].items())
                print(f"{'':>17}{name} stages (s): {stages}")
        results.append(entry)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=float)


if __name__ == "__main__":
    main()
