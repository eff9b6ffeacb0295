"""Evaluation of a fitted detector on a test split: the papers' metrics and overlays.

Metrics are computed over the whole split and per defect type (each type's images
against the split's good images); overlays and PRO curve plots are written from an
:class:`Evaluation`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jad import _checks, metrics
from jad.pipeline import Detector, predict

__all__ = [
    "Evaluation",
    "evaluate",
    "overlay_indices",
    "save_overlays",
    "save_pro_curves",
]

_MAX_FPR = 0.3  # MVTec AD's PRO integration limit (Bergmann et al. 2021, sec. 4.2)


class Evaluation(NamedTuple):
    """Result of :func:`evaluate`.

    Attributes:
      metrics: ``image_auroc``, ``pixel_auroc``, ``pro`` (AUPRO up to FPR 0.3,
        normalised), ``pixel_ap``, ``seconds_per_image``, ``num_images``,
        ``num_anomalous`` (pixel metrics are ``None`` when the split has no
        anomalous pixel; image AUROC is ``None`` with a single class),
        ``pro_tolerance``: the bound on the PROs' error that :func:`evaluate` was
        given (0.0: exact),
        ``empty_masks``: the mask files of defective images whose mask is empty
        after thresholding (``jad.data.EmptyMaskWarning``; their pixels count as
        normal in the pixel metrics), and ``per_defect``: ``{defect type:
        {"num_images", "image_auroc", "pixel_auroc", "pro", "pixel_ap"}}`` (see
        :func:`evaluate`).
      maps: (N, H, W) float32 anomaly maps.
      scores: (N,) float32 image scores.
      labels: (N,) int32 (1 = anomalous).
      masks: (N, H, W) bool ground truth.
      paths: N image paths.
      defect_types: N defect types (``"good"`` for normal images, else the defect
        folder's name; see ``jad.data.SampleFile``).
    """

    metrics: dict
    maps: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    paths: tuple[str, ...]
    defect_types: tuple[str, ...]


def _metrics(maps, scores, labels, masks, pro_tolerance: float) -> dict:
    """Image AUROC, pixel AUROC, PRO and pixel AP (None where undefined)."""
    result = {"image_auroc": None, "pixel_auroc": None, "pro": None, "pixel_ap": None}
    if 0 < labels.sum() < labels.size:
        result["image_auroc"] = metrics.auroc(scores, labels)
    if masks.any() and not masks.all():
        result["pixel_auroc"] = metrics.auroc(maps, masks)
        result["pixel_ap"] = metrics.average_precision(maps, masks)
        result["pro"] = metrics.pro(
            maps, masks, max_fpr=_MAX_FPR, tolerance=pro_tolerance
        )
    return result


def _check_tolerance(fn: str, name: str, value) -> float:
    """Returns ``value`` as a float in [0, 1) (``jad.metrics.pro``'s ``tolerance``)."""
    _checks.check_real_scalar(fn, name, value)
    value = float(value)
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise ValueError(f"{fn}: {name} must be in [0, 1); got {value}.")
    return value


def _defect_subsets(labels, defect_types) -> dict[str, np.ndarray]:
    """{defect type: indices of its images followed by those of the good images}."""
    types = np.asarray(defect_types, dtype=object)
    good = np.flatnonzero(labels == 0)
    names = sorted({str(t) for t in types[labels == 1]})
    return {
        name: np.concatenate([np.flatnonzero(types == name), good]) for name in names
    }


def evaluate(
    detector: Detector,
    dataset,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = True,
    pro_tolerance: float = 0.0,
) -> Evaluation:
    """Scores a test split and computes image AUROC, pixel AUROC, PRO and pixel AP.

    Metrics are computed on the raw scores (no min-max normalisation, which changes
    none of them) by :mod:`jad.metrics` (exact, sort-based; PRO as the MVTec AD
    reference, or within ``pro_tolerance`` of it), over the whole split and per
    defect type.

    Args:
      detector: a fitted detector.
      dataset: a ``jad.data.Dataset`` test split with masks.
      batch_size: images per device batch.
      num_workers: decoding threads of the dataset's batch iterator.
      progress: show a progress bar.
      pro_tolerance: float in [0, 1). 0 (default): every PRO is the exact AUPRO.
        Otherwise each PRO (the split's and each defect type's) is guaranteed
        within ``pro_tolerance`` of the exact value, a rigorous bound and not an
        estimate (:func:`jad.metrics.pro` with ``tolerance``): the normal pixels'
        scores are counted in score bins rather than sorted, about twice as fast
        on large splits. A set of fewer than 2^22 pixels (e.g. 64 images of
        256 x 256) is computed exactly whatever the tolerance. ``1e-6`` is far
        below the 3 decimals papers report. Recorded as
        ``metrics["pro_tolerance"]``.

    Returns:
      :class:`Evaluation`.

    Raises:
      ValueError: ``pro_tolerance`` outside [0, 1) (checked before any image is
        scored).
      TypeError: ``pro_tolerance`` is not a real number.

    Note:
      Per-defect metrics (``metrics["per_defect"]``, one entry per defect type of
      the anomalous images, sorted by name) follow the usual MVTec AD / anomalib
      breakdown: each type is evaluated on a subset made of that type's images plus
      all the good (label 0) images of the split. Image AUROC is that type's
      images against the good ones (``None`` without good images); pixel AUROC,
      PRO and pixel AP are over all pixels of the subset (``None`` when it has no
      anomalous pixel). ``num_images`` counts the type's images only. The good
      images are shared by every type, so the per-type values are not independent
      and do not average to the overall ones.
    """
    pro_tolerance = _check_tolerance("evaluate", "pro_tolerance", pro_tolerance)
    labels, masks, paths, types = [], [], [], []

    stream = dataset.batches(batch_size, num_workers=num_workers)

    class Images:  # the images of each batch; a len for the progress bar's total
        def __len__(self):
            return len(stream)

        def __iter__(self):
            for batch in stream:
                labels.append(np.asarray(batch.labels, np.int32))
                masks.append(np.asarray(batch.masks, bool))
                paths.extend(batch.paths)
                types.extend(str(t) for t in batch.defect_types)
                yield batch.images

    maps, scores, seconds = predict(detector, Images(), progress=progress)
    labels_a = np.concatenate(labels)
    masks_a = np.concatenate(masks)
    result = {
        "num_images": int(labels_a.size),
        "num_anomalous": int(labels_a.sum()),
        "empty_masks": list(getattr(dataset, "empty_masks", ())),
        "seconds_per_image": float(seconds),
        "pro_tolerance": pro_tolerance,
        **_metrics(maps, scores, labels_a, masks_a, pro_tolerance),
    }
    per_defect = {}
    for name, subset in _defect_subsets(labels_a, types).items():
        per_defect[name] = {
            "num_images": int(subset.size - np.count_nonzero(labels_a == 0)),
            **_metrics(
                maps[subset],
                scores[subset],
                labels_a[subset],
                masks_a[subset],
                pro_tolerance,
            ),
        }
    result["per_defect"] = per_defect
    return Evaluation(
        result, maps, scores, labels_a, masks_a, tuple(paths), tuple(types)
    )


def overlay_indices(evaluation: Evaluation, *, limit: int | None = 16) -> np.ndarray:
    """Which images :func:`save_overlays` draws, in the order it draws them.

    The images are grouped by defect type: the anomalous images' types sorted by
    name, then the good (label 0) images. Within a group the images are ranked by
    image score, highest first (ties: dataset order). Places are dealt round-robin
    over the groups (one per group per round, skipping exhausted groups) until
    ``limit`` images are chosen, so every type and the good images are shown; a
    group given k places shows the images at k evenly spaced ranks from its
    highest to its lowest score (ranks ``round(linspace(0, n - 1, k))``: k = 1
    shows the highest-scoring image, i.e. the most confident detection of a
    defect type and the worst false alarm among the good images). The result lists
    the first round's images, then the second round's, and so on.

    Args:
      evaluation: result of :func:`evaluate`.
      limit: at most this many images, >= 1 (``None``: all).

    Returns:
      (k,) int64 indices into the evaluation's images, k = min(limit, N).

    Raises:
      ValueError: ``limit`` < 1.
      TypeError: non-int ``limit``.
    """
    labels = np.asarray(evaluation.labels)
    n = labels.size
    if limit is not None:
        n = min(n, _checks.check_int("overlay_indices", "limit", limit, low=1))
    types = np.asarray(evaluation.defect_types, dtype=object)
    scores = np.asarray(evaluation.scores)
    normal = [str(t) for t in np.unique(types[labels == 0])]
    groups = []  # (is good, type): anomalous types first, then the good images
    for is_good, names in ((False, sorted(set(types[labels == 1]))), (True, normal)):
        for name in names:
            members = np.flatnonzero((types == name) & ((labels == 0) == is_good))
            order = np.argsort(-scores[members], kind="stable")
            groups.append(members[order])
    quota = [0] * len(groups)
    for _ in range(n):  # deal the places round-robin
        open_groups = [g for g in range(len(groups)) if quota[g] < len(groups[g])]
        g = min(open_groups, key=lambda g: (quota[g], g))
        quota[g] += 1
    picks = [
        members[np.rint(np.linspace(0, len(members) - 1, k)).astype(np.intp)]
        for members, k in zip(groups, quota, strict=True)
    ]
    rounds = max(quota, default=0)
    return np.asarray(
        [p[r] for r in range(rounds) for p in picks if r < len(p)], dtype=np.int64
    )


def save_overlays(
    evaluation: Evaluation,
    dataset,
    directory,
    *,
    limit: int | None = 16,
) -> list[Path]:
    """Writes PNG overlays (image, ground-truth contour, heat map, colour bar).

    The images are chosen by :func:`overlay_indices` (round-robin over the defect
    types and the good images). Each PNG is the image blended half and half with
    its anomaly map (``jet``), the ground-truth contour in white, and on the right
    a colour bar (:func:`jad.viz.colorbar`) labelled with the scale's minimum and
    maximum. The colour scale is shared by all images of the split (its minimum and
    maximum map values), so maps are comparable across files. Files are named
    ``<index>_<defect type>_<image stem>.png`` (index: the image's position in the
    split, 4 digits).

    Args:
      evaluation: result of :func:`evaluate` on ``dataset``.
      dataset: the same ``jad.data.Dataset`` (re-read without normalisation).
      directory: output folder (created if missing).
      limit: at most this many images, >= 1 (``None``: all).

    Returns:
      The written paths, in :func:`overlay_indices` order.

    Raises:
      ValueError: ``limit`` < 1, or an evaluated image that ``dataset`` does not
        hold.
    """
    from jad import viz

    directory = Path(directory)
    order = overlay_indices(evaluation, limit=limit)
    raw = dataset.with_transform(
        dataclasses.replace(dataset.transform, normalize=False)
    )
    # by path: a dataset that skipped unreadable files has fewer evaluated images
    position = {path: i for i, path in enumerate(raw.paths)}
    vmin, vmax = float(evaluation.maps.min()), float(evaluation.maps.max())
    written = []
    for i in order:
        path = evaluation.paths[i]
        if path not in position:
            raise ValueError(
                f"save_overlays: {path} was evaluated but is not in the dataset; "
                "pass the dataset the evaluation was computed on."
            )
        sample = raw[position[path]]
        name = f"{i:04d}_{sample.defect_type}_{Path(sample.path).stem}.png"
        written.append(
            viz.save_overlay(
                directory / name,
                sample.image,
                evaluation.maps[i],
                mask=evaluation.masks[i],
                vmin=vmin,
                vmax=vmax,
                colorbar=True,
            )
        )
    return written


def save_pro_curves(evaluation: Evaluation, path, *, max_fpr: float = _MAX_FPR) -> Path:
    """Plots the PRO curves of a split and of each defect type (matplotlib).

    One curve for the whole split (``"all images"``) and one per defect type over
    the same subset as its ``per_defect`` PRO (the type's images plus the good
    images; see :func:`evaluate`), each labelled with its AUPRO, drawn by
    :func:`jad.viz.save_pro_curve` up to ``max_fpr``. Types without anomalous
    pixels are left out.

    Args:
      evaluation: result of :func:`evaluate`.
      path: file to write; the suffix picks the format (PNG, PDF, SVG...).
      max_fpr: float in (0, 1], the right end of the FPR axis (0.3 in MVTec AD).

    Returns:
      The written file's path.

    Raises:
      ValueError: the split has no anomalous pixel or no normal pixel (no PRO
        curve).
      ImportError: matplotlib is not installed.
    """
    from jad import viz

    masks = evaluation.masks
    if not masks.any() or masks.all():
        raise ValueError(
            "save_pro_curves: the split needs anomalous and normal pixels for a PRO "
            "curve."
        )
    curves = {"all images": metrics.pro_curve(evaluation.maps, masks, max_fpr=max_fpr)}
    subsets = _defect_subsets(evaluation.labels, evaluation.defect_types)
    for name, subset in subsets.items():
        if masks[subset].any():
            curves[name] = metrics.pro_curve(
                evaluation.maps[subset], masks[subset], max_fpr=max_fpr
            )
    return viz.save_pro_curve(path, curves, max_fpr=max_fpr)
