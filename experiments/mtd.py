"""Real benchmark: every method on the Magnetic Tile Defect dataset (MTD).

Protocol (``../shared/data/README.md``; SGFR Table IV, PSDL Table 6): the defect-free
images ``MT_Free/Imgs/*.jpg`` sorted by name are split with
``numpy.random.default_rng(0).permutation(952)``: the first 190 are test-good, the other
762 (in permutation order, so the first k are a seeded subsample) train; every defective
image is a test image (mask ``> 127``). Images are resized to 224x224 (PIL bilinear),
masks nearest; ImageNet mean/std. Backbone: the real ImageNet EfficientNet-Lite0 (the
same weights anomalib was run with for the peer figures). Metrics on raw scores:
image AUROC, pixel AUROC, PRO (AUPRO to FPR 0.3, normalised), pixel AP; fit seconds
(feature extraction + fit) and test milliseconds per image (after compilation).

Rows (``--rows``, comma-separated names), matched to the anomalib 2.7.0 rows of the
data README where a peer exists:

- ``patchcore-anomalib-300``: anomalib's PatchCore preset (levels 2+3 = blocks 2+4,
  152-d), 300 training images, 1% coreset (peer: 0.860 / 0.769 / 0.657 / 0.291, fit
  311 s, 57 ms/img);
- ``patchcore-official-300``: the official PatchCore preset on the same images;
- ``patchcore-anomalib-762-10``: all 762 training images, 10% coreset (anomalib would
  need about 6 h for this);
- ``padim-100``: PaDiM, 100 of the 176 channels of levels 1-3, 762 images (peer: 0.934
  / 0.751 / 0.736 / 0.242, fit 40 s, 60 ms/img);
- ``padim-all``: PaDiM with all 176 channels (peer: 0.946 / 0.761 / 0.730 / 0.244, fit
  45 s, 68 ms/img);
- ``sgfr-mtd``: SGFR with its ``mtd`` preset (levels 2, 3, 4 scored, level 4 samples
  M_S, s_ref 10, s 7), all 762 training images (the bank: N = 762), at ``--size``
  (default 224). Floors checked and printed (PASS/FAIL) at 224: image AUROC >= 0.90,
  pixel AUROC >= 0.78, PRO >= 0.74;
- ``sgfr-mtd-256``: the same at 256x256 (the row carries its own size, whatever
  ``--size`` says). No anomalib peer has SGFR.

- ``psdl-single``: PSDL's ``single`` preset (level 3: 112 channels, the first 100
  kept, 10 x 10 dictionaries), all 762 training images, one model of the class;
- ``psdl-official``: PSDL's ``official`` preset (levels 3, 2 and 1 average-pooled to
  14 x 14 and stacked: 176 channels, the first 169 kept). Floors for both at 224:
  image AUROC >= 0.93, pixel AUROC >= 0.74 (from a plain faithful implementation on
  these features). The paper's MTD figures (PSDL Table 6) are image AUROC 0.979
  (EfficientNet-B6) and 0.988 (B7).

For SGFR the ``bank_size`` column is N, the images in its per-level banks (PatchCore:
the coreset's patches; PaDiM: 0, it keeps no bank).

Run:  python experiments/mtd.py --data ../shared/data/mtd
      python experiments/mtd.py --data ../shared/data/mtd --rows padim-100 --quick
Writes ``experiments/results/mtd/mtd.json`` and a few overlay PNGs per row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax

from jad import backbones as bb
from jad import data, evaluation, pipeline
from jad.methods import PaDiMConfig, PatchCoreConfig, psdl, sgfr

ROWS = {
    "patchcore-anomalib-300": (
        "patchcore", PatchCoreConfig.anomalib(coreset_ratio=0.01), 300),
    "patchcore-official-300": ("patchcore", PatchCoreConfig(coreset_ratio=0.01), 300),
    "patchcore-anomalib-762-10": (
        "patchcore", PatchCoreConfig.anomalib(coreset_ratio=0.1), 762),
    "padim-100": ("padim", PaDiMConfig(n_features=100), 762),
    "padim-all": ("padim", PaDiMConfig(n_features=0), 762),
    # A fourth item is the row's own image size (default: --size).
    "sgfr-mtd": ("sgfr", sgfr.PRESETS["mtd"], 762),
    "sgfr-mtd-256": ("sgfr", sgfr.PRESETS["mtd"], 762, 256),
    "psdl-single": ("psdl", psdl.PRESETS["single"], 762),
    "psdl-official": ("psdl", psdl.PRESETS["official"], 762),
}
# Floors (metric: minimum) checked for a row at the given size.
FLOORS = {
    "sgfr-mtd": (224, dict(image_auroc=0.90, pixel_auroc=0.78, pro=0.74)),
    "psdl-single": (224, dict(image_auroc=0.93, pixel_auroc=0.74)),
    "psdl-official": (224, dict(image_auroc=0.93, pixel_auroc=0.74)),
}
PEERS = {
    "patchcore-anomalib-300": dict(image_auroc=0.860, pixel_auroc=0.769, pro=0.657,
                                   pixel_ap=0.291, fit_seconds=311, ms=57),
    "padim-100": dict(image_auroc=0.934, pixel_auroc=0.751, pro=0.736,
                      pixel_ap=0.242, fit_seconds=40, ms=60),
    "padim-all": dict(image_auroc=0.946, pixel_auroc=0.761, pro=0.730,
                      pixel_ap=0.244, fit_seconds=45, ms=68),
}
DEFAULT_ROWS = (
    "patchcore-anomalib-300,patchcore-official-300,padim-100,padim-all,sgfr-mtd,"
    "psdl-single,psdl-official"
)


def _bank_size(state) -> int:
    """PatchCore: patches in the memory bank; SGFR: images in its banks; else 0."""
    if hasattr(state, "memory_bank"):
        return int(state.memory_bank.shape[0])
    banks = getattr(state, "banks", None)
    if banks:
        return int(next(iter(banks.values())).shape[0])
    return 0


def _floor_checks(row: dict) -> list[dict] | None:
    """PASS/FAIL per floor of the row, when it has floors at the row's size."""
    size_floors = FLOORS.get(row["row"])
    if size_floors is None or size_floors[0] != row["size"]:
        return None
    return [{"metric": m, "floor": f, "value": row[m], "pass": bool(row[m] >= f)}
            for m, f in size_floors[1].items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join("..", "shared", "data", "mtd"))
    parser.add_argument("--rows", default=DEFAULT_ROWS,
                        help=f"comma-separated rows out of {', '.join(ROWS)}")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="40 training images and the first 80 test images")
    parser.add_argument("--out", default=os.path.join("experiments", "results", "mtd"))
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        if r not in ROWS:
            parser.error(f"unknown row {r!r}; valid rows: {', '.join(ROWS)}")

    tests = {}

    def test_set(size):  # loaded once per image size
        if size not in tests:
            transform = data.Transform(size=size)
            test = data.load_dataset("mtd", args.data, None, "test",
                                     transform=transform)
            if args.quick:
                import dataclasses

                test = dataclasses.replace(test, samples=test.samples[150:230])
            tests[size] = (transform, test)
        return tests[size]

    backbone = "efficientnet_lite0"
    variables = bb.load_pretrained(backbone)
    out = Path(args.out)
    results = []
    for name in rows:
        method, config, num_train, *rest = ROWS[name]
        size = rest[0] if rest else args.size
        transform, test = test_set(size)
        if args.quick:
            num_train = 40
        train = data.load_dataset("mtd", args.data, None, "train",
                                  transform=transform, num_train=num_train)
        start = time.perf_counter()
        detector = pipeline.fit_detector(
            method, train.batches(args.batch_size, num_workers=args.workers),
            backbone=backbone, variables=variables, config=config,
            key=jax.random.key(args.seed),
        )
        fit_seconds = time.perf_counter() - start
        result = evaluation.evaluate(detector, test, batch_size=args.batch_size,
                                     num_workers=args.workers)
        evaluation.save_overlays(result, test, out / "overlays" / name, limit=6)
        row = {"row": name, "method": method, "size": size,
               "num_train": len(train), "fit_seconds": fit_seconds, **result.metrics,
               "bank_size": _bank_size(detector.state)}
        checks = _floor_checks(row)
        if checks is not None:
            row["floors"] = checks
        results.append(row)
        print(json.dumps(row), flush=True)

    print()
    print("| row | size | train imgs | image AUROC | pixel AUROC | PRO@0.3 | pixel AP "
          "| fit s | test ms/img | anomalib peer (img / pix / PRO / AP, fit s, ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        peer = PEERS.get(r["row"])
        peer_text = "-" if peer is None or args.quick else (
            f"{peer['image_auroc']:.3f} / {peer['pixel_auroc']:.3f} / "
            f"{peer['pro']:.3f} / {peer['pixel_ap']:.3f}, {peer['fit_seconds']} s, "
            f"{peer['ms']} ms")
        print(f"| {r['row']} | {r['size']} | {r['num_train']} | "
              f"{r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['pro']:.3f} | "
              f"{r['pixel_ap']:.3f} | "
              f"{r['fit_seconds']:.0f} | {r['seconds_per_image'] * 1e3:.0f} | "
              f"{peer_text} |")
    for r in results:
        for c in r.get("floors", ()):
            print(f"{r['row']} ({r['size']}): {c['metric']} {c['value']:.3f} >= "
                  f"{c['floor']:.2f}: {'PASS' if c['pass'] else 'FAIL'}"
                  + (" (quick run: the floors are for the full row)"
                     if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "mtd",
        "split_seed": 0,
        "size": args.size,  # rows with their own size say so ("size" per row)
        "backbone": backbone,
        "quick": args.quick,
        "jax_backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "rows": results,
        "anomalib_peer": PEERS,
        "floors": {k: {"size": v[0], **v[1]} for k, v in FLOORS.items()},
    }
    path = out / "mtd.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path} and overlays in {out / 'overlays'}")


if __name__ == "__main__":
    main()
