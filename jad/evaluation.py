"""Evaluation of a fitted detector on a test split: the papers' metrics and overlays."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jad import metrics
from jad.pipeline import Detector, predict

__all__ = ["Evaluation", "evaluate", "save_overlays"]


class Evaluation(NamedTuple):
    """Result of :func:`evaluate`.

    Attributes:
      metrics: ``image_auroc``, ``pixel_auroc``, ``pro`` (AUPRO up to FPR 0.3,
        normalised), ``pixel_ap``, ``seconds_per_image``, ``num_images``,
        ``num_anomalous`` (pixel metrics are ``None`` when the split has no
        anomalous pixel; image AUROC is ``None`` with a single class), and
        ``empty_masks``: the mask files of defective images whose mask is empty
        after thresholding (``jad.data.EmptyMaskWarning``; their pixels count as
        normal in the pixel metrics).
      maps: (N, H, W) float32 anomaly maps.
      scores: (N,) float32 image scores.
      labels: (N,) int32 (1 = anomalous).
      masks: (N, H, W) bool ground truth.
      paths: image paths.
    """

    metrics: dict
    maps: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    paths: tuple[str, ...]


def evaluate(
    detector: Detector,
    dataset,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = True,
) -> Evaluation:
    """Scores a test split and computes image AUROC, pixel AUROC, PRO and pixel AP.

    Metrics are computed on the raw scores (no min-max normalisation, which changes
    none of them) by :mod:`jad.metrics` (exact, sort-based; PRO as the MVTec AD
    reference).

    Args:
      detector: a fitted detector.
      dataset: a ``jad.data.Dataset`` test split with masks.
      batch_size: images per device batch.
      num_workers: decoding threads of the dataset's batch iterator.
      progress: show a progress bar.

    Returns:
      :class:`Evaluation`.
    """
    labels, masks, paths = [], [], []

    def batches():
        for batch in dataset.batches(batch_size, num_workers=num_workers):
            labels.append(np.asarray(batch.labels, np.int32))
            masks.append(np.asarray(batch.masks, bool))
            paths.extend(batch.paths)
            yield batch.images

    maps, scores, seconds = predict(detector, batches(), progress=progress)
    labels_a = np.concatenate(labels)
    masks_a = np.concatenate(masks)
    result = {
        "num_images": int(labels_a.size),
        "num_anomalous": int(labels_a.sum()),
        "empty_masks": list(getattr(dataset, "empty_masks", ())),
        "seconds_per_image": float(seconds),
        "image_auroc": None,
        "pixel_auroc": None,
        "pro": None,
        "pixel_ap": None,
    }
    if 0 < labels_a.sum() < labels_a.size:
        result["image_auroc"] = metrics.auroc(scores, labels_a)
    if masks_a.any() and not masks_a.all():
        result["pixel_auroc"] = metrics.auroc(maps, masks_a)
        result["pixel_ap"] = metrics.average_precision(maps, masks_a)
        result["pro"] = metrics.pro(maps, masks_a, max_fpr=0.3)
    return Evaluation(result, maps, scores, labels_a, masks_a, tuple(paths))


def save_overlays(
    evaluation: Evaluation,
    dataset,
    directory,
    *,
    limit: int | None = 16,
) -> list[Path]:
    """Writes PNG overlays (image, ground-truth contour, heat map) of an evaluation.

    Anomalous images come first, then good ones. The colour scale is shared by all
    images of the split (its minimum and maximum map values), so maps are comparable.

    Args:
      evaluation: result of :func:`evaluate` on ``dataset``.
      dataset: the same ``jad.data.Dataset`` (re-read without normalisation).
      directory: output folder.
      limit: at most this many images (``None``: all).

    Returns:
      The written paths.
    """
    from jad import viz

    directory = Path(directory)
    order = np.argsort(-evaluation.labels, kind="stable")
    if limit is not None:
        order = order[:limit]
    raw = dataset.with_transform(
        dataclasses.replace(dataset.transform, normalize=False)
    )
    vmin, vmax = float(evaluation.maps.min()), float(evaluation.maps.max())
    written = []
    for i in order:
        sample = raw[int(i)]
        name = f"{i:04d}_{sample.defect_type}_{Path(sample.path).stem}.png"
        written.append(
            viz.save_overlay(
                directory / name, sample.image, evaluation.maps[i],
                mask=evaluation.masks[i], vmin=vmin, vmax=vmax,
            )
        )
    return written
