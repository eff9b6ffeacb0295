"""Where jad's PSDL and its authors' loop part on real MTD, and why (OMP near-ties).

On identical features (Lite0, the ``official`` stack, m = 169, MTD's 762 training
images), at a few locations, jad's K-SVD (``jad.sparse.ksvd`` as ``psdl.fit`` runs it)
in float32 and in float64 (``jax_enable_x64``) against the authors' loop in float64
(``tests/psdl_reference.py``: sparselandtools' approximate K-SVD with scikit-learn's
``orthogonal_mp(precompute=True)``, the reference the tests check jad against):

* the final dictionaries' largest difference, float32 and float64;
* per iteration, the supports of the codes (the approximate update keeps OMP's
  supports) of jad's float32 trajectory against the loop's: the first iteration
  where a signal's support differs, how many differ there, and how far apart the
  dictionaries were just before (float32 rounding, about 1e-7);
* for each such signal, the smallest relative gap between the best and the second
  best |correlation| over the steps of its pursuit, recomputed in float64 on the
  loop's dictionary: a gap near float32's resolution is a near-tie.

Run:  python experiments/psdl_agreement.py [--locations 0,0 13,13] (about 90 s per
      location on 2 CPU cores, most of it the authors' loop). Writes
      ``experiments/results/psdl_agreement.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _report import write_json  # noqa: E402

import jad.backbones as bb  # noqa: E402
from jad import data  # noqa: E402
from jad.methods import make_config  # noqa: E402
from jad.pipeline import embed_images  # noqa: E402
from jad.sparse import dct_dictionary, ksvd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import psdl_reference as ref  # noqa: E402


def _learn(y, d0, s, n_iter):
    return ksvd(jnp.asarray(y), jnp.asarray(d0), s, n_iter, method="approx",
                monotone=False, replace_unused=False)


def _min_gap(dictionary, y, s):
    """Smallest (|c1| - |c2|) / |c1| over a float64 OMP's steps (c: correlations)."""
    chosen, residual, gaps = [], y.copy(), []
    for _ in range(s):
        corr = np.abs(dictionary.T @ residual)
        corr[chosen] = -1.0
        top = np.sort(corr)[-2:]
        gaps.append(float((top[1] - top[0]) / top[1]))
        chosen.append(int(np.argmax(corr)))
        sub = dictionary[:, chosen]
        coef, *_ = np.linalg.lstsq(sub, y, rcond=None)
        residual = y - sub @ coef
    return min(gaps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join("..", "shared", "data", "mtd"))
    parser.add_argument("--locations", nargs="+",
                        default=["0,0", "4,9", "9,4", "13,13"])
    parser.add_argument("--json",
                        default=os.path.join("experiments", "results",
                                             "psdl_agreement.json"))
    args = parser.parse_args(argv)
    config = make_config("psdl", "official")
    variables = bb.load_pretrained("efficientnet_lite0", progress=False)
    train = data.load_dataset("mtd", args.data, None, "train",
                              transform=data.Transform(size=224))
    x = np.concatenate([
        np.asarray(embed_images("psdl", config, "efficientnet_lite0", variables,
                                b.images)[3])
        for b in train.batches(32, num_workers=0)]).astype(np.float32)
    num, _, _, m = x.shape
    s = round(0.25 * m)
    init = np.asarray(dct_dictionary(m, m, separable=True), np.float64)
    rows = []
    for text in args.locations:
        i, j = (int(v) for v in text.split(","))
        y32 = x[:, i, j]
        y64 = y32.astype(np.float64)
        history = []

        def keep(it, codes, d, c, history=history):
            history.append((np.asarray(c), np.asarray(d)))

        ref.approx_ksvd(y64, ref.dct_init(int(round(m ** 0.5))), s, 20,
                        callback=keep)
        row = {"location": [i, j]}
        for name, y, d0 in (("float32", y32, init.astype(np.float32)),
                            ("float64", y64, init)):
            final = np.asarray(_learn(y, d0, s, 20).dictionary)
            row[f"max_abs_dict_diff_{name}"] = float(
                np.abs(final - history[-1][1]).max())
        # float32 trajectory, iteration by iteration (a fresh run of t iterations)
        row["first_support_difference"] = None
        for t in range(1, 21):
            ours = _learn(y32, init.astype(np.float32), s, t)
            theirs_codes, theirs_dict = history[t - 1]
            theirs = theirs_codes != 0
            if theirs.shape[0] != num:
                theirs = theirs.T
            differ = np.flatnonzero(np.any((np.asarray(ours.codes) != 0) != theirs,
                                           axis=1))
            if differ.size:
                before = (ref.dct_init(int(round(m ** 0.5))) if t == 1
                          else history[t - 2][1])
                previous = (init.astype(np.float32) if t == 1 else np.asarray(
                    _learn(y32, init.astype(np.float32), s, t - 1).dictionary))
                row["first_support_difference"] = {
                    "iteration": t, "signals": differ.tolist(),
                    "dict_diff_before": float(np.abs(previous - before).max()),
                    "min_relative_gap_float64": [
                        _min_gap(before, y64[k], s) for k in differ.tolist()]}
                break
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nMTD, Lite0 official stack (N = {num}, m = {m}, s = {s}), 20 iterations:")
    print("| location | max |D_jad - D_ref| float32 | float64 | first support "
          "difference (float32) | dictionaries apart before it | smallest "
          "correlation gap (float64) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        first = r["first_support_difference"]
        where = ("none" if first is None else
                 f"iteration {first['iteration']}, {len(first['signals'])} of {num} "
                 "signals")
        before = "-" if first is None else f"{first['dict_diff_before']:.1e}"
        gap = "-" if first is None else ", ".join(
            f"{g:.1e}" for g in first["min_relative_gap_float64"])
        print(f"| {tuple(r['location'])} | {r['max_abs_dict_diff_float32']:.1e} | "
              f"{r['max_abs_dict_diff_float64']:.1e} | {where} | {before} | {gap} |")
    write_json(args.json, {"num_train": num, "m": m, "s": s, "rows": rows})


if __name__ == "__main__":
    main()
