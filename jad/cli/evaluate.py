"""``jad evaluate``: the papers' metrics of a saved detector on a test split."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from pathlib import Path

from jad import __version__, data, evaluation, pipeline
from jad.cli.common import (
    add_data_arguments,
    float_type,
    non_negative_int,
    open_split,
    print_table,
)

_EPILOG = (
    "Prints a table of the metrics over the test split (image AUROC, pixel AUROC, "
    "PRO = normalised AUPRO up to FPR 0.3, pixel AP, ms per image) and a second "
    "table with one row per defect type, where each type's images are evaluated "
    "together with all the good images (the MVTec AD / anomalib breakdown). --json "
    "writes the same metrics (per_defect included) with the detector, data, split, "
    "image size, jad version and UTC time that produced them. --overlays DIR writes "
    "--num-overlays overlay PNGs and pro_curve.png into DIR (see --overlays)."
)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jad evaluate``."""
    parser.epilog = _EPILOG
    parser.add_argument("--state", required=True,
                        help="folder written by jad fit")
    add_data_arguments(parser, required=False)
    parser.add_argument(
        "--json", default=None,
        help="write the metrics, per-defect metrics and their provenance (detector, "
        "data, split, image size, jad version, time) to this JSON file",
    )
    parser.add_argument(
        "--overlays", default=None, metavar="DIR",
        help="write into DIR: (1) --num-overlays PNGs named INDEX_TYPE_STEM.png "
        "(INDEX: the image's position in the test split, TYPE: its defect type or "
        "good), each the test image blended with its anomaly map (jet colours on "
        "one scale shared by the whole split), its ground-truth contour in white, "
        "and on the right a colour bar labelled with the scale's min and max; the "
        "images are picked round-robin over the defect types (by name) and then "
        "the good images, and within a type at evenly spaced ranks from the "
        "highest to the lowest image score (one per type: the highest); (2) "
        "pro_curve.png, the PRO curves up to FPR 0.3 of the whole split and of "
        "each defect type (needs matplotlib; skipped with a note without it)",
    )
    parser.add_argument(
        "--num-overlays", type=non_negative_int, default=None, metavar="N",
        help="number of overlay PNGs written by --overlays (default: 16; 0: every "
        "test image)",
    )
    parser.add_argument(
        "--pro-tolerance", default=0.0, metavar="T",
        type=float_type("a number in [0, 1)", lambda value: 0.0 <= value < 1.0),
        help="compute each PRO within T of the exact AUPRO, a guaranteed bound "
        "(score bins instead of a sort: about twice as fast on splits of 2^22 "
        "pixels or more; smaller ones stay exact); 1e-6 is far below the 3 "
        "decimals papers report; recorded in --json as pro_tolerance (default: "
        "0, exact)",
    )


def _provenance(args, meta: dict, detector: pipeline.Detector) -> dict:
    """What produced the metrics: detector, data, split, image size, version, time."""
    return {
        "detector": {
            "folder": str(Path(args.state).absolute()),
            "method": detector.method,
            "backbone": detector.backbone,
            "weights": detector.weights,
            "config": dataclasses.asdict(detector.config),
            "transform": (None if detector.transform is None
                          else dataclasses.asdict(detector.transform)),
            "num_train": meta.get("num_train"),
        },
        "data": {
            "root": str(Path(args.data).absolute()),
            "kind": args.kind,
            "category": args.category,
            "split": "test",
        },
        "image_size": [int(s) for s in detector.image_size],
        "jad_version": __version__,
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
    }


def run_evaluate(args: argparse.Namespace) -> int:
    """``jad evaluate``."""
    if args.num_overlays is not None and not args.overlays:
        raise ValueError("--num-overlays applies with --overlays DIR only.")
    meta = pipeline.read_metadata(args.state)
    for name in ("data", "kind", "category"):  # default to what the fit used
        if getattr(args, name) is None:
            setattr(args, name, meta.get(name))
    if args.data is None:
        raise ValueError("--data is required (the detector does not record it).")
    args.kind = args.kind or "mvtec"
    if args.json and Path(args.json).is_dir():
        raise ValueError(f"--json must be a file path; {args.json} is a folder.")
    if args.overlays and Path(args.overlays).is_file():
        raise ValueError(f"--overlays must be a folder; {args.overlays} is a file.")
    detector = pipeline.load_detector(args.state)
    # the preprocessing recorded with the detector (unrecorded: resize to its size)
    transform = detector.transform or data.Transform(size=detector.image_size)
    test = open_split(args, "test", transform)
    result = evaluation.evaluate(detector, test, batch_size=args.batch_size,
                                 num_workers=args.workers,
                                 pro_tolerance=args.pro_tolerance)
    row = {"method": detector.method, "backbone": detector.backbone,
           **result.metrics}
    print_table([row])
    per_defect = result.metrics["per_defect"]
    if per_defect:
        print(f"\nper defect type (each type's images with the "
              f"{row['num_images'] - row['num_anomalous']} good images):")
        print_table([{"defect_type": name, **values}
                     for name, values in per_defect.items()],
                    label="defect_type", counts=True)
    if result.metrics["empty_masks"]:
        print(f"note: {len(result.metrics['empty_masks'])} defective image(s) have "
              "an empty mask after the > 127 threshold (listed in the JSON as "
              "empty_masks); their pixels count as normal in the pixel metrics.")
    if args.json:
        record = {**row, **_provenance(args, meta, detector)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2))
        print(f"wrote {args.json}")
    if args.overlays:
        limit = 16 if args.num_overlays is None else args.num_overlays or None
        written = evaluation.save_overlays(result, test, args.overlays, limit=limit)
        print(f"wrote {len(written)} overlays to {args.overlays}")
        if result.metrics["pro"] is None:
            print("note: no pro_curve.png (the split has no anomalous pixel).")
        else:
            try:
                path = evaluation.save_pro_curves(
                    result, Path(args.overlays) / "pro_curve.png"
                )
            except ImportError as err:
                print(f"note: no pro_curve.png ({err})")
            else:
                print(f"wrote {path}")
    return 0
