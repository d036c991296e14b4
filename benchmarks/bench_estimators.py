r"""Time ``estimate_bounds`` against a reference stack doing the same job with well-known
libraries, and check that both give the same estimates within their intervals.

Data. For each configuration (n evaluation samples, feature width d, K classes)
synthetic Gaussian-class features are drawn: teacher features ``z_T`` (class means at a
separation that gives the Bayes teacher an error near 15%), student features
``z_S = z_T + 0.5·noise + shift``, the Bayes classifier of ``z_T`` as ``h_T``, and a fit
split of another n samples. Both stacks get the same float32 arrays, each in its own
subprocess (so that ``ru_maxrss`` is the peak memory of that stack alone), with
``--threads`` threads for torch, BLAS and OpenMP. Only the estimation is timed (not the
imports nor the data); each stack runs ``--repeats`` times in fresh processes and the
table shows the best and the median. Beside each stack's stages the CPU time of its best
run is printed (``time.process_time``, all threads): on a machine shared with other jobs
the wall time measures the share of the cores a stack got, the CPU time the work it did.

``ijckd_bounds``: ``estimate_bounds`` with ``--bootstrap`` paired-bootstrap resamples and
``--permutations`` MMD sign flips: every term, bound and interval of the report.

Reference: ``ijckd_bounds.estimators.reference.reference_report`` (numpy float64, scipy,
scikit-learn), the same job written plainly (its docstring lists how): scikit-learn
probes with the same L2 grid, held-out choice and refit for the three same-recipe probes
and the joint probe, ĥ* chosen on the evaluation split in every replicate, scikit-learn
domain classifiers, the full n×n MMD matrix, the CKA jackknife from n×n kernel matrices,
and a Python loop over the bootstrap replicates. Only the import of scikit-learn and the
reference module happen before the clock, as torch's for ours.

The matrix-vector products with ``H`` (200 + ``--bootstrap`` of them, each reading the
n×n matrix from memory) are most of the reference's time at n = 10,000. ``--batched``
makes it a less straightforward reference that does them as two matrix products
``H·[ε_1 … ε_B]`` and ``H·[w_1 … w_B]`` (what ours does block by block).

The reference is skipped where its n×n float64 matrices would not fit
(``--reference-max-n``). The check compares every term both stacks estimate: terms with
one definition and no fitting (errors, feature and logit distances, MMD², CKA, the
coupled bound) must agree to 1e-4 relative; the other terms (fitted classifiers with
different optimisers and held-out splits; margins, where ties round differently) must
have each stack's estimate inside the other's 95% interval, except the MLP domain
classifier's (proxy_a_mlp and bound_ben_david), whose intervals must overlap: after 50
iterations it depends on its initialisation (sklearn's Glorot or ours, nn.Linear's)
beyond the sampling noise; the two MMD p-values (different random sign vectors) must
agree within their Monte-Carlo error.

    python benchmarks/bench_estimators.py                    # quick subset
    python benchmarks/bench_estimators.py --n 10000 --d 512 --k 100 --repeats 3
    python benchmarks/bench_estimators.py --n 1000 10000 50000 --d 64 512 --k 10 100 \
        --repeats 3 --markdown benchmarks/results/estimators.md
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

QUICK = [(1000, 64, 10), (10000, 512, 100)]
LEVEL = 0.95

# one definition, no fitting: must agree to rounding
EXACT_TERMS = ("teacher_err", "student_err", "disagreement", "feat_msd", "feat_rel",
               "logit_msd", "bound_coupled", "ijc_lambda", "mmd2", "feat_cka")
# fitted classifiers or tie-sensitive margins: each estimate inside the other's interval
INTERVAL_TERMS = ("delta_gamma", "bound_margin", "bound_feat_markov", "bound_logit_markov",
                  "teacher_probe_err", "student_probe_err", "connected_probe_err",
                  "joint_err_T", "joint_err_S", "ideal_joint",
                  "ijc_gap", "pair_disc", "bound_ideal_joint", "proxy_a_linear")
# the MLP domain classifier stops after 50 iterations, where its result depends on its
# initialisation (sklearn: Glorot; ours: nn.Linear's, narrower) beyond the sampling
# noise: the intervals must overlap
OVERLAP_TERMS = ("proxy_a_mlp", "bound_ben_david")


def synthetic(n, d, k, seed=0):
    """Evaluation and fit arrays (numpy float32 features) for one configuration."""
    import numpy as np

    rng = np.random.default_rng(seed)
    # class means at a separation where the Bayes teacher errs on about 15% (K = 10 or
    # 100, d = 64 or 512) and the noisier student on about 20-27%
    means = rng.normal(size=(k, d)) * (1.5 / np.sqrt(d)) * np.sqrt(np.log(k) + 1)
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
    # the student's own features: z_S with its columns in another order (the same
    # information in another basis), so that all three probes are fitted
    columns = rng.permutation(d)
    return {"z_t": z_t, "z_s": z_s, "y": y, "weight": weight, "bias": bias,
            "z_t_fit": z_t_fit, "z_s_fit": z_s_fit, "y_fit": y_fit,
            "s": np.ascontiguousarray(z_s[:, columns]),
            "s_fit": np.ascontiguousarray(z_s_fit[:, columns])}


class StageClock:
    """Seconds per stage."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.stages = {}

    def stop(self, stage):
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 4)
        self.last = now

    def total(self):
        return time.perf_counter() - self.start


# ----------------------------------------------------------------------------------------
# ijckd_bounds


def run_ours(data, args):
    import scipy.optimize  # noqa: F401  (imported before the clock, like the reference's)
    import scipy.stats  # noqa: F401
    import torch

    from ijckd_bounds import schema
    from ijckd_bounds.estimators import estimate_bounds

    tensors = {k: torch.from_numpy(v) for k, v in data.items()}
    start, cpu_start = time.perf_counter(), time.process_time()
    report = estimate_bounds(tensors["z_t"], tensors["z_s"], tensors["y"], tensors["weight"],
                             tensors["bias"],
                             fit=(tensors["z_t_fit"], tensors["z_s_fit"], tensors["y_fit"]),
                             s=tensors["s"], s_fit=tensors["s_fit"],
                             n_permutations=args.permutations, n_bootstrap=args.bootstrap,
                             seed=0)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    row = report.row()
    terms = {name: [row[name], row[f"{name}_lo"], row[f"{name}_hi"]]
             for name in schema.INTERVAL_TERMS + schema.BOUNDS}
    details = {k: report.details[k] for k in ("joint_chosen", "joint_probe_share",
                                              "joint_l2", "probe_l2")}
    return {"seconds": elapsed, "cpu_seconds": cpu, "terms": terms, "mmd_p": row["mmd_p"],
            "mmd_bandwidth": row["mmd_bandwidth"], "details": details,
            "stages": report.details["timings_s"]}


# ----------------------------------------------------------------------------------------
# the reference stack


def _reference_module():
    """``ijckd_bounds/estimators/reference.py`` loaded from its file: importing it through
    the package would import torch (``ijckd_bounds.estimators``), which the reference's
    process must not hold (its peak memory is measured)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "ijckd_bounds" / "estimators" / "reference.py"
    spec = importlib.util.spec_from_file_location("reference_stack", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_reference(data, args):
    import scipy.stats  # noqa: F401  (imported before the clock, like ours)

    reference_report = _reference_module().reference_report
    clock = StageClock()
    cpu_start = time.process_time()
    result = reference_report(data, bandwidth=args.bandwidth, n_bootstrap=args.bootstrap,
                              n_permutations=args.permutations, batched=args.batched,
                              clock=clock)
    return {"seconds": clock.total(), "cpu_seconds": time.process_time() - cpu_start,
            "terms": result["terms"], "mmd_p": result["mmd_p"],
            "details": result["details"], "stages": clock.stages}


def worker(args):
    """Run one stack on one configuration; print JSON with the peak RSS."""
    import resource

    if args.stack == "ours":  # the reference never imports torch
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
    if args.batched:
        command.append("--batched")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{stack} failed on n={n}, d={d}, K={k}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _inside(value, interval, slack=1e-9):
    lo, hi = interval
    return lo - slack <= value <= hi + slack


def compare(ours, reference, n_permutations):
    """'ok (m terms)' when the stacks agree (see the module docstring), else the terms
    that disagree."""
    import math

    bad = []
    compared = 0
    for term in EXACT_TERMS + INTERVAL_TERMS + OVERLAP_TERMS:
        if term not in reference["terms"]:
            continue
        compared += 1
        value, lo, hi = ours["terms"][term]
        ref_value, ref_lo, ref_hi = reference["terms"][term]
        if term in EXACT_TERMS:
            agree = abs(ref_value - value) <= 1e-4 * max(1e-3, abs(value))
        elif term in INTERVAL_TERMS:
            agree = _inside(ref_value, (lo, hi)) and _inside(value, (ref_lo, ref_hi))
        else:
            agree = ref_lo <= hi and lo <= ref_hi
        if not agree:
            bad.append(f"{term} ref={ref_value:.4g} [{ref_lo:.4g}, {ref_hi:.4g}] "
                       f"ours={value:.4g} [{lo:.4g}, {hi:.4g}]")
    # two Monte-Carlo estimates of one permutation p-value
    p, ref_p = ours["mmd_p"], reference["mmd_p"]
    pooled = min(max(0.5 * (p + ref_p), 1.0 / n_permutations), 0.5)
    tolerance = 4 * math.sqrt(2 * pooled * (1 - pooled) / n_permutations) + 2 / n_permutations
    compared += 1
    if abs(p - ref_p) > tolerance:
        bad.append(f"mmd_p ref={ref_p:.4g} ours={p:.4g}")
    return f"ok ({compared} terms)" if not bad else "; ".join(bad)


def _summary(runs):
    times = [r["seconds"] for r in runs]
    best = min(runs, key=lambda r: r["seconds"])
    return {"best": min(times), "median": statistics.median(times), "times": times,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "best_run": best}


def _machine():
    import sklearn
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs; python {platform.python_version()}, "
            f"torch {torch.__version__}, scikit-learn {sklearn.__version__}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", help="evaluation samples (fit: as many)")
    parser.add_argument("--d", type=int, nargs="+", help="feature widths")
    parser.add_argument("--k", type=int, nargs="+", help="class counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1,
                        help="fresh runs of each stack per configuration (best and median)")
    parser.add_argument("--reference-repeats", type=int,
                        help="runs of the reference (default: --repeats)")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--batched", action="store_true",
                        help="reference: MMD sign flips and bootstrap forms as one matrix "
                             "product each instead of a loop of matrix-vector products")
    parser.add_argument("--reference-max-n", type=int, default=20000,
                        help="skip the reference above this n (its n×n float64 matrix)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--markdown", help="also write the table (markdown) to this file")
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
    reference_repeats = args.reference_repeats or args.repeats
    setting = (f"threads={args.threads}, bootstrap={args.bootstrap}, "
               f"permutations={args.permutations}, repeats={args.repeats} "
               f"(reference {reference_repeats}{', batched MMD forms' if args.batched else ''})"
               "; fit split = n more samples")
    header = (f"{'n':>6} {'d':>4} {'K':>4} | {'ours best':>9} {'median':>7} {'peak MB':>8} | "
              f"{'ref best':>9} {'median':>7} {'peak MB':>8} | {'ratio':>6} | check")
    lines = [setting, header, "-" * len(header)]
    print("\n".join(lines), flush=True)
    load_before = os.getloadavg()
    results = []
    for n, d, k in configs:
        ours = _summary([run_stack("ours", n, d, k, args) for _ in range(args.repeats)])
        line = (f"{n:>6} {d:>4} {k:>4} | {ours['best']:>9.2f} {ours['median']:>7.2f} "
                f"{ours['peak_rss_mb']:>8.0f} | ")
        entry = {"n": n, "d": d, "K": k, "ours": ours}
        reference = None
        if args.no_reference:
            line += f"{'-':>9} {'-':>7} {'-':>8} | {'-':>6} | reference not run"
        elif n > args.reference_max_n:
            gigabytes = 3 * 8 * n * n / 1e9
            line += (f"{'-':>9} {'-':>7} {'-':>8} | {'-':>6} | reference skipped "
                     f"(n×n matrix would need {gigabytes:.0f} GB)")
        else:
            # the same MMD bandwidth (ours: median of a seeded subsample) for both
            bandwidth = ours["best_run"]["mmd_bandwidth"]
            reference = _summary([run_stack("reference", n, d, k, args, bandwidth)
                                  for _ in range(reference_repeats)])
            ratio = reference["best"] / ours["best"]
            check = compare(ours["best_run"], reference["best_run"], args.permutations)
            line += (f"{reference['best']:>9.2f} {reference['median']:>7.2f} "
                     f"{reference['peak_rss_mb']:>8.0f} | {ratio:>6.1f} | {check}")
            entry.update({"reference": reference, "ratio": ratio, "check": check})
        print(line, flush=True)
        lines.append(line)
        for name, result in (("ours", ours), ("reference", reference)):
            if result:
                stages = ", ".join(f"{stage} {seconds:.2f}"
                                   for stage, seconds in result["best_run"]["stages"].items())
                stage_line = (f"{'':>17}{name} stages (s): {stages}; CPU time of the "
                              f"best run (all threads) {result['best_run']['cpu_seconds']:.2f} s")
                print(stage_line, flush=True)
                lines.append(stage_line)
        results.append(entry)
    load = (f"load average (1/5/15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
            f"after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(load)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=float)
    if args.markdown:
        command = "python benchmarks/bench_estimators.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]))
        with open(args.markdown, "w") as fh:
            fh.write("# estimate_bounds vs. a reference stack\n\n")
            fh.write(f"`{command}`\n\n{_machine()}; {load}\n\n```\n")
            fh.write("\n".join(lines) + "\n```\n\n")
            fh.write("Seconds of the estimation alone (best and median of the fresh runs), "
                     "peak resident memory of the stack's process, ratio = reference best / "
                     "ours best, check = whether the two stacks agree on every term they "
                     "both estimate (see the docstring of benchmarks/bench_estimators.py); "
                     "stages are those of the best run.\n")


if __name__ == "__main__":
    main()
