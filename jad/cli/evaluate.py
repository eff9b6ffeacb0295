"""``jad evaluate``: the papers' metrics of a saved detector on a test split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jad import evaluation, pipeline
from jad.cli.common import (
    add_data_arguments,
    open_split,
    print_table,
    transform_from_json,
)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jad evaluate``."""
    parser.add_argument("--state", required=True,
                        help="folder written by jad fit")
    add_data_arguments(parser, required=False)
    parser.add_argument("--json", default=None, help="write the metrics here")
    parser.add_argument("--overlays", default=None,
                        help="write PNG overlays into this folder")


def run_evaluate(args: argparse.Namespace) -> int:
    """``jad evaluate``."""
    meta = pipeline.read_metadata(args.state)
    transform = transform_from_json(meta.get("transform", {}))
    for name in ("data", "kind", "category"):  # default to what the fit used
        if getattr(args, name) is None:
            setattr(args, name, meta.get(name))
    if args.data is None:
        raise ValueError("--data is required (the detector does not record it).")
    args.kind = args.kind or "mvtec"
    if args.json and Path(args.json).is_dir():
        raise ValueError(f"--json must be a file path; {args.json} is a folder.")
    detector = pipeline.load_detector(args.state)
    test = open_split(args, "test", transform)
    result = evaluation.evaluate(detector, test, batch_size=args.batch_size,
                                 num_workers=args.workers)
    row = {"method": detector.method, "backbone": detector.backbone,
           **result.metrics}
    print_table([row])
    if result.metrics["empty_masks"]:
        print(f"note: {len(result.metrics['empty_masks'])} defective image(s) have "
              "an empty mask after the > 127 threshold (listed in the JSON as "
              "empty_masks); their pixels count as normal in the pixel metrics.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(row, indent=2))
        print(f"wrote {args.json}")
    if args.overlays:
        written = evaluation.save_overlays(result, test, args.overlays)
        print(f"wrote {len(written)} overlays to {args.overlays}")
    return 0
