"""Where jad's PSDL and its authors' loop part on real MTD, and why (OMP near-ties).

On identical features (Lite0, the ``official`` stack, m = 169, MTD's 762 training
images), at a few locations: the K-SVD dictionary jad learns in float32 (as
``psdl.fit``) and in float64 (``jax_enable_x64``) against the authors' loop in float64
(``tests/psdl_reference.py``: sparselandtools' approximate K-SVD with scikit-learn's
``orthogonal_mp(precompute=True)``, the reference the tests check jad against), and,
at every iteration, how many of the 762 signals get another OMP support from jad
(float32 and float64) than from scikit-learn *on the reference's own dictionary of
that iteration*. A float32 support that differs where the float64 one does not is a
near-tie of the greedy selection at float32 precision; one such flip changes every
later iteration of that location.

Run:  python experiments/psdl_agreement.py [--locations 0,0 9,4] (about 70 s per
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
from jad.sparse import dct_dictionary, ksvd, omp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import psdl_reference as ref  # noqa: E402


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
            history.append((np.asarray(codes), np.asarray(d)))

        ref.approx_ksvd(y64, ref.dct_init(int(round(m ** 0.5))), s, 20,
                        callback=keep)
        learnt = {}
        for name, y, d0 in (("float32", y32, init.astype(np.float32)),
                            ("float64", y64, init)):
            learnt[name] = np.asarray(ksvd(jnp.asarray(y), jnp.asarray(d0), s, 20,
                                           method="approx", monotone=False,
                                           replace_unused=False).dictionary)
        flips = {"float32": [], "float64": []}
        previous = ref.dct_init(int(round(m ** 0.5)))
        for codes, d in history:
            theirs = codes != 0
            if theirs.shape[0] != num:
                theirs = theirs.T
            for name, y, dtype in (("float32", y32, jnp.float32),
                                   ("float64", y64, jnp.float64)):
                ours = np.asarray(omp(jnp.asarray(previous, dtype), jnp.asarray(y),
                                      s).coef) != 0
                flips[name].append(int(np.sum(np.any(ours != theirs, axis=1))))
            previous = d
        row = {"location": [i, j],
               "max_abs_dict_diff_float32": float(np.abs(learnt["float32"]
                                                         - history[-1][1]).max()),
               "max_abs_dict_diff_float64": float(np.abs(learnt["float64"]
                                                         - history[-1][1]).max()),
               "support_flips_per_iteration_float32": flips["float32"],
               "support_flips_per_iteration_float64": flips["float64"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nMTD, Lite0 official stack (N = {num}, m = {m}, s = {s}), 20 iterations:")
    print("| location | max |D_jad - D_ref| float32 | float64 | OMP support flips "
          "(signals, all iterations) float32 | float64 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {tuple(r['location'])} | {r['max_abs_dict_diff_float32']:.1e} | "
              f"{r['max_abs_dict_diff_float64']:.1e} | "
              f"{sum(r['support_flips_per_iteration_float32'])} | "
              f"{sum(r['support_flips_per_iteration_float64'])} |")
    write_json(args.json, {"num_train": num, "m": m, "s": s, "rows": rows})


if __name__ == "__main__":
    main()
