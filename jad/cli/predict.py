"""``jad predict``: anomaly maps and scores of new images with a saved detector."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

from jad import data, pipeline
from jad.cli.common import finite_float


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jad predict``."""
    parser.add_argument("--state", required=True, help="folder written by jad fit")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument(
        "--out", default=os.path.join("results", "predict"),
        help="folder for each image's map (.npy, at the image's own size), its "
        "overlay (PNG, on the detector's common colour scale, with a colour bar) "
        "and predictions.json (scores, threshold, normal/anomalous)",
    )
    parser.add_argument(
        "--threshold", type=finite_float, default=None,
        help="image score above which an image is reported anomalous (default: "
        "the one jad fit recorded: the largest score of up to 64 training images)",
    )


def run_predict(args: argparse.Namespace) -> int:
    """``jad predict``."""
    from jad import viz

    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:  # before any output is written
        raise ValueError(f"image files not found: {', '.join(missing)}.")
    meta = pipeline.read_metadata(args.state)
    calibration = _calibration(meta.get("calibration"), args.state)
    threshold = args.threshold
    if threshold is None and calibration is not None:
        threshold = calibration.threshold
    detector = pipeline.load_detector(args.state)
    # the preprocessing recorded with the detector (unrecorded: resize to its size)
    transform = detector.transform or data.Transform(size=detector.image_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    stems = [Path(p).stem for p in args.images]
    as_read = data.Transform(size=None, normalize=False)
    for index, path in enumerate(args.images):
        original = data.load_image(path, transform=as_read)  # the file's own size
        image = data.load_image(path, transform=transform)
        maps, scores = pipeline.anomaly_maps(detector, image[None])
        amap, score = np.asarray(maps[0]), float(scores[0])
        if not (np.isfinite(amap).all() and np.isfinite(score)):
            raise ValueError(
                f"{path}: the anomaly map is not finite (the backbone's features "
                "overflowed); nothing is reported for it."
            )
        vmin, vmax = (calibration.display_range if calibration is not None
                      else (float(amap.min()), float(amap.max())))
        amap = data.map_to_input_size(amap, transform, *original.shape[:2],
                                      fill=vmin)
        stem = stems[index]
        if stems.count(stem) > 1:  # same name in different folders: keep both
            stem = f"{index:03d}_{stem}"
        np.save(out / f"{stem}_map.npy", amap)
        viz.save_overlay(out / f"{stem}_overlay.png", original, amap, vmin=vmin,
                         vmax=vmax, colorbar=True)
        anomalous = None if threshold is None else bool(score > threshold)
        results[str(path)] = {"score": score, "anomalous": anomalous}
        verdict = ("" if anomalous is None
                   else "  anomalous" if anomalous else "  normal")
        print(f"{path}: score {score:.4f}{verdict}")
    if threshold is None:
        print("no threshold: the detector has no calibration (fitted by an older "
              "jad) and --threshold was not given; scores only.")
    else:
        print(f"threshold {threshold:.4f} ("
              + ("--threshold" if args.threshold is not None else
                 f"quantile {calibration.quantile:g} of the scores of "
                 f"{calibration.num_images} nominal images recorded by jad fit")
              + ")")
    report = {"state": str(Path(args.state).absolute()), "threshold": threshold,
              "images": results}
    (out / "predictions.json").write_text(json.dumps(report, indent=2))
    print(f"wrote maps, overlays and predictions.json to {out}")
    return 0


def _calibration(values, state) -> pipeline.Calibration | None:
    """The calibration jad fit recorded, checked (finite numbers), or None."""
    if values is None:
        return None
    fields = pipeline.Calibration._fields
    if not (isinstance(values, dict) and set(values) == set(fields)
            and all(isinstance(values[f], (int, float)) and not isinstance(
                values[f], bool) and math.isfinite(values[f]) for f in fields)):
        raise ValueError(
            f"{state}: the recorded calibration must hold the finite numbers "
            f"{', '.join(fields)}; got {values!r}."
        )
    return pipeline.Calibration(**values)
