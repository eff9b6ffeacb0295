"""Benchmark: jad's OMP and K-SVD against scikit-learn and the `ksvd` package.

PSDL's shapes (PSDL sec. 2.2, appendix A): one square dictionary per feature location,
C channels, N = 200 signals per location, L = 196 locations (14 x 14), sparsity C/4,
20 K-SVD iterations. Peers, timed in the same run:

- OMP: scikit-learn ``orthogonal_mp_gram`` one location at a time (what PSDL's code
  runs through sparselandtools), against ``jad.sparse.omp`` over all locations.
- K-SVD: the ``ksvd`` package's ``ApproximateKSVD`` (the NumPy K-SVD people use; it
  cannot fit a square dictionary, so it runs with C - 1 atoms on a few locations and
  few iterations and is extrapolated linearly, marked as such), against
  ``jad.sparse.ksvd(method="approx")`` over all locations and all iterations.

Run:  python experiments/bench_sparse.py            (about 5 minutes on 2 CPU cores)
      python experiments/bench_sparse.py --quick    (smoke run, seconds)
      python experiments/bench_sparse.py --channels 1024 --peer-locations 0  (GPU)
Needs the ``bench`` extra (``pip install ".[bench]"``). Writes a JSON file (``--json``).

jad runs locations ``--group`` at a time (``lax.map`` over groups of vmapped
locations): on a CPU one location per step keeps each location's working set in cache;
on a GPU use larger groups.

``--batching`` (PSDL issue: "vmap over the dictionary axis as fast as the map") times,
on ``--batching-locations`` locations (16) and ``--batching-iterations`` K-SVD
iterations (2), the same OMP and approximate K-SVD three ways in one run: ``jax.vmap``
over the dictionaries (jad's custom batching rule: mapped on CPU), ``lax.map`` over
them, and a plain vmap (the rule's accelerator branch, forced on the CPU by faking
``jax.default_backend``: what a vmap did before the rule). Only that table is printed
and written (``--json``). About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time

import jax
import numpy as np
from _report import write_json


def make_problem(seed, locations, n, c):
    """Per-location signals (L, N, C) and unit-norm dictionaries (L, C, C), float32."""
    rng = np.random.default_rng(seed)
    dictionaries = rng.standard_normal((locations, c, c)).astype(np.float32)
    dictionaries /= np.linalg.norm(dictionaries, axis=1, keepdims=True)
    signals = rng.standard_normal((locations, n, c)).astype(np.float32)
    return signals, dictionaries


def timed(fn, *args, repeat=1):
    """(compile seconds, best run seconds of ``repeat`` runs, output) of a jitted fn."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return compile_s, best, out


def _map(fn, xs, group):
    """``lax.map`` over locations, ``group`` at a time (vmapped inside a step).

    One location per step is a plain map, not a vmap of size 1, so that data-dependent
    branches inside (K-SVD's replacement of unused atoms) stay real branches.
    """
    if group == 1:
        return jax.lax.map(fn, xs)
    return jax.lax.map(fn, xs, batch_size=group)


def jad_omp_fn(s, group):
    from jad.sparse import omp

    one = functools.partial(omp, n_nonzero=s)

    def run(dictionaries, signals):
        return _map(lambda a: one(a[0], a[1]).coef, (dictionaries, signals), group)

    return jax.jit(run)


def jad_ksvd_fn(s, n_iter, group):
    from jad.sparse import ksvd

    one = functools.partial(ksvd, n_nonzero=s, n_iter=n_iter, method="approx")

    def run(signals, init):
        res = _map(lambda a: one(a[0], a[1]), (signals, init), group)
        return res.dictionary, res.errors

    return jax.jit(run)


def sklearn_omp(dictionaries, signals, s, locations):
    from sklearn.linear_model import orthogonal_mp_gram

    start = time.perf_counter()
    coefs = []
    for loc in range(locations):
        d = dictionaries[loc].astype(np.float64)
        y = signals[loc].astype(np.float64)
        coefs.append(orthogonal_mp_gram(d.T @ d, d.T @ y.T, n_nonzero_coefs=s).T)
    return time.perf_counter() - start, np.stack(coefs)


def ksvd_package(signals, c, s, locations, n_iter):
    import ksvd as ksvd_pkg

    start = time.perf_counter()
    for loc in range(locations):
        model = ksvd_pkg.ApproximateKSVD(
            n_components=c - 1, max_iter=n_iter, tol=0.0, transform_n_nonzero_coefs=s
        )
        model.fit(signals[loc].astype(np.float64))
    return time.perf_counter() - start


def _batching_rows(args):
    """Seconds of vmap (the rule), lax.map and a plain vmap on the same problem."""
    from jad.sparse import dct_dictionary, ksvd, omp

    rows = []
    for c in args.channels:
        s = c // 4
        signals, dictionaries = make_problem(
            0, args.batching_locations, args.signals, c)
        init = np.asarray(dct_dictionary(c, c))
        kernels = {
            "omp": (lambda d, y, s=s: omp(d, y, s).coef, (dictionaries, signals)),
            "ksvd": (lambda y, d, s=s: ksvd(
                y, d, s, args.batching_iterations, method="approx",
                monotone=False, replace_unused=False).dictionary,
                (signals, np.broadcast_to(init, dictionaries.shape))),
        }
        for name, (fn, xs) in kernels.items():
            row = {"kernel": name, "C": c, "locations": args.batching_locations,
                   "N": args.signals, "s": s}
            row["vmap_s"] = timed(jax.jit(jax.vmap(fn)), *xs, repeat=3)[1]
            row["map_s"] = timed(jax.jit(lambda *a, fn=fn: jax.lax.map(
                lambda t: fn(*t), a)), *xs, repeat=3)[1]
            real = jax.default_backend
            try:  # the rule's accelerator branch: a plain vmap, run on this CPU
                jax.clear_caches()
                jax.default_backend = lambda: "gpu"
                row["plain_vmap_s"] = timed(jax.jit(jax.vmap(fn)), *xs, repeat=3)[1]
            finally:
                jax.default_backend = real
                jax.clear_caches()
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'kernel':>6} {'C':>5} {'vmap (rule) s':>14} {'lax.map s':>10} "
          f"{'plain vmap s':>13}")
    for r in rows:
        print(f"{r['kernel']:>6} {r['C']:>5} {r['vmap_s']:>14.3f} {r['map_s']:>10.3f} "
              f"{r['plain_vmap_s']:>13.3f}")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--locations", type=int, default=196)
    parser.add_argument("--signals", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument(
        "--group", type=int, default=1, help="locations per lax.map step"
    )
    parser.add_argument(
        "--peer-locations",
        type=int,
        default=None,
        help="locations for the scikit-learn OMP peer (default: all)",
    )
    parser.add_argument("--ksvd-peer-locations", type=int, default=2)
    parser.add_argument("--ksvd-peer-iterations", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--batching", action="store_true",
                        help="only time vmap (rule) / lax.map / plain vmap")
    parser.add_argument("--batching-locations", type=int, default=16)
    parser.add_argument("--batching-iterations", type=int, default=2)
    parser.add_argument("--json", default="experiments/results/bench_sparse.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.channels, args.locations, args.signals, args.iterations = [16], 4, 40, 2
        args.ksvd_peer_locations, args.ksvd_peer_iterations = 1, 1
    peer_locs = args.locations if args.peer_locations is None else args.peer_locations
    if args.batching:
        rows = _batching_rows(args)
        write_json(args.json, {"device": str(jax.devices()[0]),
                               "platform": platform.platform(),
                               "cpu_count": os.cpu_count(), "jax": jax.__version__,
                               "args": vars(args), "batching": rows})
        return

    rows = []
    for c in args.channels:
        s = c // 4
        signals, dictionaries = make_problem(0, args.locations, args.signals, c)
        row = {"C": c, "locations": args.locations, "N": args.signals, "s": s}
        # --- OMP ---
        omp_fn = jad_omp_fn(s, args.group)
        row["jad_omp_compile_s"], row["jad_omp_s"], coef = timed(
            omp_fn, dictionaries, signals, repeat=3
        )
        if peer_locs > 0:
            t, ref = sklearn_omp(dictionaries, signals, s, peer_locs)
            row["sklearn_omp_s"] = t * args.locations / peer_locs
            row["sklearn_omp_extrapolated"] = peer_locs < args.locations
            row["omp_speedup"] = row["sklearn_omp_s"] / row["jad_omp_s"]
            # float32 (jad) vs float64 (scikit-learn): near-ties in the argmax may
            # pick another atom, so report how many supports agree and the largest
            # coefficient difference among those.
            ours = np.asarray(coef[:peer_locs])
            same = np.all((ours != 0) == (ref != 0), axis=-1)
            row["omp_same_support_fraction"] = float(np.mean(same))
            row["omp_max_abs_diff_same_support"] = float(
                np.max(np.abs(ours[same] - ref[same])) if same.any() else np.nan
            )
        # --- K-SVD ---
        from jad.sparse import dct_dictionary

        init = np.broadcast_to(np.asarray(dct_dictionary(c, c)), dictionaries.shape)
        ksvd_fn = jad_ksvd_fn(s, args.iterations, args.group)
        row["jad_ksvd_compile_s"], row["jad_ksvd_s"], (_, errors) = timed(
            ksvd_fn, signals, init
        )
        row["jad_ksvd_errors_first_last"] = [
            float(np.mean(errors[:, 0])),
            float(np.mean(errors[:, -1])),
        ]
        if args.ksvd_peer_locations > 0:
            t = ksvd_package(
                signals, c, s, args.ksvd_peer_locations, args.ksvd_peer_iterations
            )
            scale = (args.locations / args.ksvd_peer_locations) * (
                args.iterations / args.ksvd_peer_iterations
            )
            row["ksvd_package_s_extrapolated"] = t * scale
            row["ksvd_speedup"] = row["ksvd_package_s_extrapolated"] / row["jad_ksvd_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    device = jax.devices()[0]
    print(
        f"\ndevice: {device.platform} ({device.device_kind}), cores: {os.cpu_count()}"
    )
    header = (
        f"{'C':>5} {'jad OMP s':>10} {'sklearn s':>10} {'ratio':>7} "
        f"{'jad K-SVD s':>12} {'ksvd pkg s*':>12} {'ratio':>7}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['C']:>5} {r['jad_omp_s']:>10.2f}"
            f" {r.get('sklearn_omp_s', float('nan')):>10.2f}"
            f" {r.get('omp_speedup', float('nan')):>7.1f} {r['jad_ksvd_s']:>12.2f}"
            f" {r.get('ksvd_package_s_extrapolated', float('nan')):>12.1f}"
            f" {r.get('ksvd_speedup', float('nan')):>7.1f}"
        )
    print(
        "* ksvd package: C-1 atoms (it cannot fit a square dictionary), extrapolated"
        " from a few locations and iterations."
    )
    out = {
        "device": str(device),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "args": vars(args),
        "rows": rows,
    }
    write_json(args.json, out)


if __name__ == "__main__":
    main()
