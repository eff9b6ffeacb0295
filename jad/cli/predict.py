"""``jad predict``: anomaly maps and scores of new images with a saved detector."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from jad import data, pipeline
from jad.cli.common import transform_from_json


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jad predict``."""
    parser.add_argument("--state", required=True, help="folder written by jad fit")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--out", default=os.path.join("results", "predict"),
                        help="folder for the maps (PNG, .npy) and scores.json")


def run_predict(args: argparse.Namespace) -> int:
    """``jad predict``."""
    from jad import viz

    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:  # before any output is written
        raise ValueError(f"image files not found: {', '.join(missing)}.")
    meta = pipeline.read_metadata(args.state)
    transform = transform_from_json(meta.get("transform", {}))
    raw_transform = dataclasses.replace(transform, normalize=False)
    detector = pipeline.load_detector(args.state)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    stems = [Path(p).stem for p in args.images]
    for index, path in enumerate(args.images):
        raw = data.load_image(path, transform=raw_transform)  # decoded once
        image = data.normalize_imagenet(raw) if transform.normalize else raw
        maps, scores = pipeline.anomaly_maps(detector, image[None])
        amap = np.asarray(maps[0])
        if not (np.isfinite(amap).all() and np.isfinite(float(scores[0]))):
            raise ValueError(
                f"{path}: the anomaly map is not finite (the backbone's features "
                "overflowed); nothing is reported for it."
            )
        stem = stems[index]
        if stems.count(stem) > 1:  # same name in different folders: keep both
            stem = f"{index:03d}_{stem}"
        np.save(out / f"{stem}_map.npy", amap)
        viz.save_overlay(out / f"{stem}_overlay.png", raw, amap)
        results[str(path)] = float(scores[0])
        print(f"{path}: score {float(scores[0]):.4f}")
    (out / "scores.json").write_text(json.dumps(results, indent=2))
    print(f"wrote maps, overlays and scores.json to {out}")
    return 0
