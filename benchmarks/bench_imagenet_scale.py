"""Time and peak memory of ``estimate_bounds`` at ImageNet scale, on the CPU.

ImageNet's validation set gives n = 50,000 evaluation samples (25,000 when half of it is
the fit split), K = 1,000 classes and teacher features of width d = 512 (ResNet-18/34)
or 2,048 (ResNet-50). For each (n, d, K) this script draws synthetic Gaussian-class
features in float32 (teacher ``z_T``, student ``z_S`` = teacher + noise + shift, the
Bayes classifier of ``z_T`` as ``h_T``, student features ``s`` of width d, a fit split of
``--fit-n`` samples) and runs the full report in a fresh subprocess, which records:

- ``seconds``: wall time of ``estimate_bounds`` alone, and its per-stage timings;
- ``peak_rss_gb``: the subprocess's ``ru_maxrss``: its peak resident memory, the pages of
  the feature files it touched included;
- ``peak_anon_gb``: the peak of its private (anonymous) resident memory, sampled every
  20 ms: what the estimators allocate, beside file pages the kernel can drop and re-read;
- the options it ran with (bootstrap resamples, MMD permutations, ``mmd_max_n``).

``--inputs mmap`` (the default) hands ``estimate_bounds`` the features as copy-on-write
memory maps of ``.npy`` files, as ``ijckd_bounds.tracking`` does with the features it
streams to disk; ``--inputs memory`` as arrays in memory (then ``peak_rss_gb`` includes
the 6·n·d·4 bytes of features).

    python benchmarks/bench_imagenet_scale.py                        # n=50k, d=512 and 2048
    python benchmarks/bench_imagenet_scale.py --mmd-max-n 10000 --permutations 100
    python benchmarks/bench_imagenet_scale.py --n 5000 --d 512 --k 1000 --json out.json

The O(n·d) terms and the fitted probes see all n samples; only MMD² (and the CKA interval)
use a subsample when ``--mmd-max-n`` is below n (the report says so in its notes).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GB = 1024 ** 3


def synthetic(n, n_fit, d, k, seed=0, folder=None):
    """Float32 arrays: eval (z_t, z_s, s, y), fit (z_t_fit, z_s_fit, s_fit, y_fit), and the
    teacher classifier (weight (K, d), bias (K,)). Drawn in blocks, so no float64 (n, d)
    temporary inflates the peak memory. With ``folder`` the (n, d) arrays are ``.npy``
    files there, returned as copy-on-write memory maps."""
    import numpy as np

    rng = np.random.default_rng(seed)
    made = []

    def empty(m, name):
        if folder is None:
            return np.empty((m, d), np.float32)
        path = os.path.join(folder, f"{name}_{len(made)}.npy")
        made.append(path)
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(m, d))

    def reopen(array):
        if folder is None:
            return array
        array.flush()
        return np.load(array.filename, mmap_mode="c")

    # class means at a distance that gives a teacher error of a few tens of percent at
    # K = 1,000, like an ImageNet teacher
    means = (rng.standard_normal((k, d), dtype=np.float32)
             * np.float32(1.4 * np.sqrt(np.log(k) + 1) / np.sqrt(d)))
    shift = rng.standard_normal(d, dtype=np.float32) * np.float32(0.2 / np.sqrt(d))
    mix = rng.standard_normal((d, d), dtype=np.float32) / np.float32(np.sqrt(d))

    def draw(m):
        y = rng.integers(0, k, size=m)
        z_t, z_s, s = empty(m, "z_t"), empty(m, "z_s"), empty(m, "s")
        for lo in range(0, m, 8192):
            hi = min(m, lo + 8192)
            z_t[lo:hi] = means[y[lo:hi]] + rng.standard_normal((hi - lo, d), dtype=np.float32)
            z_s[lo:hi] = (z_t[lo:hi] + 0.5 * rng.standard_normal((hi - lo, d),
                                                                  dtype=np.float32) + shift)
            # the student's own features: an invertible mix of z_s (the connector's input)
            s[lo:hi] = z_s[lo:hi] @ mix
        return reopen(z_t), reopen(z_s), reopen(s), y

    weight = means
    bias = -0.5 * (means * means).sum(1)
    return draw(n), draw(n_fit), weight, bias


def anonymous_rss():
    """This process's private resident memory in bytes (RssAnon of /proc/self/status)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class AnonymousPeak:
    """Samples ``anonymous_rss`` every 20 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self):
        import threading

        self.peak = anonymous_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, anonymous_rss())

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anonymous_rss())
        return self.peak


def worker(args):
    """Run one configuration in this process and print one JSON line."""
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    from ijckd_bounds.estimators import estimate_bounds

    folder = tempfile.mkdtemp(prefix="bench_imagenet_") if args.inputs == "mmap" else None
    try:
        run_worker(args, folder, torch, estimate_bounds)
    finally:
        if folder is not None:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


def run_worker(args, folder, torch, estimate_bounds):
    (z_t, z_s, s, y), (z_t_fit, z_s_fit, s_fit, y_fit), weight, bias = synthetic(
        args.n[0], args.fit_n or args.n[0], args.d[0], args.k[0], seed=args.seed,
        folder=folder)
    t = torch.from_numpy
    after_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    anon = AnonymousPeak()
    start = time.perf_counter()
    report = estimate_bounds(
        t(z_t), t(z_s), t(y), t(weight), t(bias), fit=(t(z_t_fit), t(z_s_fit), t(y_fit)),
        s=t(s), s_fit=t(s_fit), n_bootstrap=args.bootstrap, n_permutations=args.permutations,
        mmd_max_n=args.mmd_max_n, seed=args.seed)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    peak_anon = anon.stop()
    row = report.row()
    exact_hold = all(row["student_err"] <= row[b] + 1e-12 for b in
                     ("bound_coupled", "bound_margin", "bound_feat_markov",
                      "bound_logit_markov", "bound_ideal_joint"))
    print(json.dumps({
        "n": args.n[0], "n_fit": args.fit_n or args.n[0], "d": args.d[0], "k": args.k[0],
        "bootstrap": args.bootstrap, "permutations": args.permutations,
        "mmd_max_n": args.mmd_max_n, "mmd_pairs": report.details["mmd_pairs"],
        "threads": args.threads, "inputs": args.inputs, "seconds": round(seconds, 1),
        "peak_rss_gb": round(peak / GB, 2), "peak_anon_gb": round(peak_anon / GB, 2),
        "data_rss_gb": round(after_data / GB, 2),
        "timings_s": report.details["timings_s"], "teacher_err": row["teacher_err"],
        "student_err": row["student_err"], "exact_bounds_hold": exact_hold,
    }))


def run_config(n, d, k, args):
    command = [sys.executable, __file__, "--worker", "--n", str(n), "--d", str(d), "--k",
               str(k), "--threads", str(args.threads), "--bootstrap", str(args.bootstrap),
               "--permutations", str(args.permutations), "--seed", str(args.seed),
               "--inputs", args.inputs]
    if args.fit_n:
        command += ["--fit-n", str(args.fit_n)]
    if args.mmd_max_n:
        command += ["--mmd-max-n", str(args.mmd_max_n)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker failed for n={n} d={d} K={k}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[50_000],
                        help="evaluation samples")
    parser.add_argument("--fit-n", type=int, default=0, help="fit samples (default: n)")
    parser.add_argument("--d", type=int, nargs="+", default=[512, 2048], help="feature widths")
    parser.add_argument("--k", type=int, nargs="+", default=[1000], help="class counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--mmd-max-n", type=int, default=0,
                        help="MMD²/CKA-interval subsample (0: all n pairs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inputs", choices=("mmap", "memory"), default="mmap",
                        help="features as memory-mapped .npy files (as tracking passes them) "
                             "or in memory")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.mmd_max_n = args.mmd_max_n or None
    if args.worker:
        worker(args)
        return
    results = []
    header = (f"{'n':>7} {'n_fit':>7} {'d':>5} {'K':>5} {'boot':>5} {'perm':>5} "
              f"{'mmd_pairs':>9} {'inputs':>6} {'seconds':>8} {'peak GB':>8} {'anon GB':>8}"
              f"  slowest stages")
    print(header, flush=True)
    for n in args.n:
        for d in args.d:
            for k in args.k:
                result = run_config(n, d, k, args)
                results.append(result)
                stages = sorted(result["timings_s"].items(), key=lambda kv: -kv[1])[:3]
                slow = ", ".join(f"{name} {sec:.0f}s" for name, sec in stages)
                print(f"{n:>7} {result['n_fit']:>7} {d:>5} {k:>5} {args.bootstrap:>5} "
                      f"{args.permutations:>5} {result['mmd_pairs']:>9} {args.inputs:>6} "
                      f"{result['seconds']:>8.1f} {result['peak_rss_gb']:>8.2f} "
                      f"{result['peak_anon_gb']:>8.2f}  {slow}",
                      flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
