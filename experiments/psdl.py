"""PSDL's ablations (PSDL paper sec. 3.1, appendix A) redone "in kind" on real data.

The paper ablates on MVTec AD with ResNet-18 (Tables 1, 8, 9, 10; Figs. 2-5) and
picks EfficientNet-B6/B7 for MTD (Table 6). jad has neither MVTec nor those backbones
here, so every ablation is run on MTD with the real ImageNet EfficientNet-Lite0
(``jad.backbones.load_pretrained``) at 224x224, with jad's seeded MTD split
(``../shared/data/README.md``, as ``experiments/mtd.py``: seed 0, 762 training
images, 190 good and 392 defective test images). What is compared is the *direction*
of each effect, not the paper's numbers.

How it runs. The backbone levels of every training and test image are computed once
per backbone (``jad.backbones.extract_features``: levels 1-4 for Lite0, 1-3 for the
Table 6 backbones). Each setting then calls ``psdl.embed`` / ``psdl.fit`` on them and
scores the test set with ``psdl.score`` and the pipeline's post-processing
(``postprocess_config``: bicubic upsampling, sum of per-level maps, Gaussian sigma 4;
image score = max of the map) -- exactly what ``jad.pipeline.fit_detector`` and
``jad.evaluation.evaluate`` would do, without computing the features once per
setting. The per-class min-max calibration is skipped on MTD (one class: an
increasing affine map changes no metric). Metrics: ``jad.evaluation``'s own set
(image AUROC, pixel AUROC, PRO = AUPRO to FPR 0.3 normalised, pixel AP; exact).
"fit s" is ``psdl.fit`` alone (K-SVD for every location, compilation included; the
features are not counted: the backbone's ms/img is printed once). Fits are cached by
(backbone, config) within a run, so a setting shared by several parts (e.g. the
``single`` preset: Table 8's DCT = Table 9's 20 iterations = Table 10's 0.25) is
fitted and scored once.

Lite0 levels at 224: 1: 56x56x24, 2: 28x28x40, 3: 14x14x112, 4: 7x7x320. PSDL keeps
the first d^2 channels (d = floor(sqrt(C))), so m = 16, 36, 100, 289 for a single
level and 169 for the stack of levels 1-3 (176 channels). PSDL needs N >= m training
images (one m x m dictionary per location learnt from the N training vectors there):
762 images fit every setting.

Parts (``--parts``; the paper's figures are MVTec AD, ResNet-18, "Total" rows,
image / pixel AUROC, except Table 6):

- ``table1``: layer selection (PSDL Table 1). Single levels 1, 2, 3, 4
  (``levels=(l,)``), the ``official`` preset (``fusion="stack"``: levels 1, 2, 3
  average-pooled to 14x14 and concatenated before learning) and ``fusion="separate"``
  (levels 1, 2, 3, one set of dictionaries each, maps summed). Sec. 3.1.1 defines
  "1,2,3" as the maps combined in the dictionary learning phase (the last column,
  the best) and "1+2+3" as combined in the calculation: ``stack`` is "1,2,3" and
  ``separate`` is "1+2+3", though the labels read the other way round. Paper:
  layer 1 0.757 / 0.714, layer 2 0.846 / 0.875, layer 3 0.931 / 0.951, layer 4
  0.879 / 0.877, maps summed 0.900 / 0.933, levels learnt together 0.937 / 0.960.
- ``table6``: backbones (PSDL Table 2 / Table 6): EfficientNet-Lite0, -Lite1, -Lite2
  (real weights; a backbone whose weights cannot be loaded is skipped with a note),
  ``official`` preset, all at 224 (Lite1/Lite2 were trained at 240/260). Paper,
  MTD image AUROC: PSDL EN-B6 0.979, EN-B7 0.988 (PaDiM 0.872, DifferNet 0.977,
  PatchCore 0.979); Table 2 (MVTec, layer-3 depth): RN-18 0.931 / 0.951, WRN-50
  0.957 / 0.964, EN-B5 0.953 / 0.945, EN-B6 0.956 / 0.952, EN-B7 0.966 / 0.949.
- ``table8``: dictionary initialisation (PSDL Table 8): DCT without learning
  (``learn=False``), DCT, Haar, random. The ``single`` preset (level 3, 10 x 10
  dictionaries) rather than ``official``, to keep it faster (the paper also ablates
  on one level, ResNet-18 layer 3). Paper: no learning 0.586 / 0.539, DCT 0.931 /
  0.951, Haar 0.933 / 0.950, random 0.934 / 0.946.
- ``table9``: K-SVD iterations 10, 20, 50 (PSDL Table 9), ``single`` preset. Paper:
  0.932 / 0.947, 0.931 / 0.951, 0.928 / 0.951.
- ``table10``: OMP sparsity 0.25, 0.5, 0.75 of m (PSDL Table 10; the paper's 64, 128,
  192 of 256), ``single`` preset. Paper: 0.931 / 0.951, 0.864 / 0.896, 0.647 / 0.606.
- ``figs``: PSDL Figs. 2-5 from the fitted states (the ``single`` preset, fits shared
  with Tables 8-10 when they run in the same call). ``state.train_error``: the mean
  over the training signals of ``||s - D x||^2`` (summed over the m channels) after
  each K-SVD iteration, per location; the last iteration is plotted unrolled over the
  14 x 14 locations (row-major). Fig. 2: DCT without learning against learnt (paper:
  about one order of magnitude lower once learnt). Fig. 3: (a) 10, 20, 50 iterations
  (paper: lower with more iterations), (b) the 14 x 14 surface and heat map for 50
  iterations (paper: higher in the centre), (c) the mean over locations against the
  iteration. Fig. 4: sparsity 0.25 against 0.75 (paper: much lower error at 0.75).
  Fig. 5: the mean reconstruction error per location over the *test* set, normal
  against anomalous test images, for sparsity 0.25 and 0.75
  (``psdl.code_statistics``: the OMP codes ``psdl.score`` uses, error squared as
  ``config.error``); paper: at 0.75 the two curves come closer. Printed with it:
  the mean errors and the AUROC of the error alone at separating the defective
  locations (any defective pixel in the 16x16 cell) of anomalous images from the
  locations of good images.
- ``allclasses``: PSDL's all-classes mode (sec. 2.3) on jad's built-in data set
  (``jad.data.builtin_dataset``: brick, grass, gravel; 40 training, 10 good and 18
  defective test images each): one model fitted on the 120 training images of the
  three classes (``classes=(...)``, ``jad.pipeline.fit_detector`` on the chained
  training batches), each class calibrated on its own training maps
  (``psdl.calibrate_classes``) and scored with ``psdl.select_class``; against one
  model per class (``fit_detector`` per class, calibrated on its own training maps).
  Config: the ``demo`` preset (level 3, the first 36 channels: 6 x 6 dictionaries)
  for both, since a class has only 40 training images and PSDL needs N >= m (level
  3's 100 channels would need 100). Per-class and mean image / pixel AUROC and PRO,
  and the same metrics pooled over the three classes' test images (one threshold
  for all) with per-class normalised maps and with raw distances: the per-class
  metrics cannot change under the normalisation, the pooled ones can. Also pooled,
  as an option of this experiment only: the authors' evaluation, each class min-max
  normalised over its own test set.
- ``statistics``: the training statistics from the codes K-SVD ends with (the
  authors' code) against a fresh OMP with the final dictionaries (``statistics=
  "omp"``: training signals coded as test signals are), ``single`` preset. About 5
  min.

Outputs: a markdown table per part on stdout, ``<out>/<part>.json`` and PNGs
(``<out>/table1.png`` ..., ``<out>/fig2.png`` ... ``fig5.png``, ``allclasses.png``;
skipped with a note without matplotlib). ``--quick`` writes under ``<out>/quick`` and
only checks the code paths: 60 training and 40 test images (15 good, 25 defective
spread over the types), every dictionary capped at m = 49 (``max_channels=49``, since
60 images cannot fit m = 100), 3 K-SVD iterations (Table 9: 2, 3, 5); its metrics
mean nothing.

Run:  python experiments/psdl.py --quick                         (about 6 min)
      python experiments/psdl.py --parts table8,table9,table10,figs
      python experiments/psdl.py --parts table1
      python experiments/psdl.py --parts table6
      python experiments/psdl.py --parts allclasses

Expected full run times on 2 shared CPU cores. These are ESTIMATES, not measured end
to end: ``psdl.fit`` was timed on 762 random signals per location with a few
iterations and scaled linearly to 20 (or 10, 50) iterations and to the number of
locations; backbone and scoring times come from the quick run, scaled to 1344
images. Per-location K-SVD with N = 762 and 20 iterations: m = 16: ~0.015 s,
m = 36: ~0.06 s, m = 100: ~0.5 s (sparsity 0.5: ~1.5 s, 0.75: ~3 s), m = 169: ~1.5-2.5
s, m = 289: ~6.5 s. Features: about 2 min per backbone (Lite2 about 3 min).

- ``table1``: about 25 min (level 4's 49 dictionaries of 289 x 289 and the stack's
  196 of 169 x 169 about 5-8 min each; levels 1, 2, 3 and ``separate`` a few min).
- ``table6``: about 25 min alone, about 18 min after ``table1`` (its Lite0 row is
  ``table1``'s stack).
- ``table8``: about 8 min; ``table9``: about 8 min (50 iterations about 5 min; 20
  shared with ``table8``); ``table10``: about 17 min (0.75 of m about 10 min).
- ``figs``: about 1 min beyond the fits of Tables 8-10 (run alone it fits the five
  distinct configs it needs: about 20 min).
- ``allclasses``: about 3 min.

All parts in one call: about 1.5 h (allow 2-3 h on a busy machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np
from _report import padded_batches, pyplot, save_figure, write_json

from jad import backbones as bb
from jad import data, evaluation, metrics, pipeline
from jad.errors import WeightsError
from jad.methods import psdl
from jad.methods.base import max_image_score, postprocess_config

BACKBONE = "efficientnet_lite0"
LEVELS = (1, 2, 3, 4)
PARTS = ("table1", "table6", "table8", "table9", "table10", "figs", "allclasses",
         "statistics")
TABLE6_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
ITERATIONS, ITERATIONS_QUICK = (10, 20, 50), (2, 3, 5)
SPARSITIES = (0.25, 0.5, 0.75)
QUICK_TRAIN, QUICK_GOOD, QUICK_BAD = 60, 15, 25
QUICK_CHANNELS, QUICK_ITER = 49, 3
MIN_TIMED = 3  # timed scoring batches, at least

# The paper's "Total" rows (MVTec AD, ResNet-18): (image AUROC, pixel AUROC).
PAPER = {
    "table1": {"level 1": (0.757, 0.714), "level 2": (0.846, 0.875),
               "level 3": (0.931, 0.951), "level 4": (0.879, 0.877),
               "stack 1-3": (0.937, 0.960), "separate 1-3": (0.900, 0.933)},
    "table8": {"DCT, no learning": (0.586, 0.539), "DCT": (0.931, 0.951),
               "Haar": (0.933, 0.950), "random": (0.934, 0.946)},
    "table9": {10: (0.932, 0.947), 20: (0.931, 0.951), 50: (0.928, 0.951)},
    "table10": {0.25: (0.931, 0.951), 0.5: (0.864, 0.896), 0.75: (0.647, 0.606)},
    # Table 6 (MTD, image AUROC only) and Table 2 (MVTec, layer-3 depth).
    "table6_mtd": {"PSDL EN-B6": 0.979, "PSDL EN-B7": 0.988, "PaDiM": 0.872,
                   "DifferNet": 0.977, "PatchCore": 0.979},
    "table2": {"RN-18": (0.931, 0.951), "WRN-50": (0.957, 0.964),
               "EN-B5": (0.953, 0.945), "EN-B6": (0.956, 0.952),
               "EN-B7": (0.966, 0.949)},
}


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class Features:
    """Backbone levels of the MTD split for one backbone, computed once."""

    backbone: str
    train: dict  # level -> (N, h, w, C) float32 (host)
    test: dict  # level -> (M, h, w, C)
    labels: np.ndarray  # (M,) int32
    masks: np.ndarray  # (M, H, W) bool
    image_size: tuple[int, int]
    backbone_seconds: float  # per image, compiled

    @property
    def channels(self) -> dict[int, int]:
        """Channels of each level."""
        return {lv: x.shape[-1] for lv, x in self.train.items()}


def _mtd(args):
    transform = data.Transform(size=args.size)
    train = data.load_dataset("mtd", args.data, None, "train", transform=transform,
                              num_train=QUICK_TRAIN if args.quick else None)
    test = data.load_dataset("mtd", args.data, None, "test", transform=transform)
    if args.quick:
        good = [s for s in test.samples if s.label == 0][:QUICK_GOOD]
        bad = [s for s in test.samples if s.label == 1]
        keep = np.linspace(0, len(bad) - 1, QUICK_BAD).round().astype(int)
        test = dataclasses.replace(test, samples=(*good, *(bad[i] for i in keep)))
    return train, test


def _extract(dataset, backbone, variables, levels, args):
    """Levels of every image (host float32), labels, masks, backbone s/image."""
    parts, labels, masks = [], [], []
    timed, count, size, images = 0.0, 0, None, None
    for i, batch in enumerate(dataset.batches(args.batch_size,
                                              num_workers=args.workers)):
        images = np.asarray(batch.images)
        n = images.shape[0]
        size = n if size is None else size
        if n < size:  # pad: one compiled program
            images = np.concatenate([images, np.zeros((size - n, *images.shape[1:]),
                                                      images.dtype)])
        start = time.perf_counter()
        feats = jax.block_until_ready(
            bb.extract_features(backbone, variables, images, levels))
        if i > 0:
            timed += time.perf_counter() - start
            count += n
        parts.append({lv: np.asarray(x[:n], np.float32) for lv, x in feats.items()})
        labels.append(np.asarray(batch.labels, np.int32))
        masks.append(np.asarray(batch.masks, bool))
    if count == 0:  # one batch: time it again, compiled
        start = time.perf_counter()
        jax.block_until_ready(bb.extract_features(backbone, variables, images, levels))
        timed, count = time.perf_counter() - start, images.shape[0]
    feats = {lv: np.concatenate([p[lv] for p in parts]) for lv in levels}
    return feats, np.concatenate(labels), np.concatenate(masks), timed / count


# ----------------------------------------------------------------------- scoring


@functools.partial(jax.jit, static_argnums=2)
def _maps_and_scores(state, feats, image_size):
    emb = psdl.embed(state.config, feats)
    maps = postprocess_config(psdl.score(state, emb), image_size, state.config)
    return maps, max_image_score(maps)


@jax.jit
def _reconstruction_errors(state, feats):
    """Per-location reconstruction error (``config.error``): group -> (B, h, w).

    From ``psdl.code_statistics`` (the OMP codes ``psdl.score`` uses).
    """
    stats = psdl.code_statistics(state, psdl.embed(state.config, feats))
    return {group: x[..., 1] for group, x in stats.items()}


def _levels(feats: dict, config) -> dict:
    return {lv: feats[lv] for lv in config.levels}


def score_features(state, feats: Features, batch: int):
    """Test maps, image scores and PSDL ms/image (median of compiled batches)."""
    test = _levels(feats.test, state.config)
    maps, scores, times = [], [], []
    part = None
    for i, (part, n) in enumerate(padded_batches(test, batch)):
        start = time.perf_counter()
        m, s = jax.block_until_ready(_maps_and_scores(state, part, feats.image_size))
        if i > 0:
            times.append((time.perf_counter() - start) / len(s))
        maps.append(np.asarray(m[:n], np.float32))
        scores.append(np.asarray(s[:n], np.float32))
    while len(times) < MIN_TIMED:
        start = time.perf_counter()
        s = jax.block_until_ready(_maps_and_scores(state, part, feats.image_size))[1]
        times.append((time.perf_counter() - start) / len(s))
    return np.concatenate(maps), np.concatenate(scores), float(np.median(times))


def test_errors(state, feats: Features, batch: int) -> np.ndarray:
    """(M, h, w) reconstruction errors of the test images (one group)."""
    out = []
    for part, n in padded_batches(_levels(feats.test, state.config), batch):
        err = _reconstruction_errors(state, part)
        out.append(np.asarray(next(iter(err.values())))[:n])
    return np.concatenate(out)


# ------------------------------------------------------------------------ runner


@dataclasses.dataclass
class Fit:
    """A fitted state, its fit time and (once scored) its test metrics."""

    state: object
    seconds: float
    metrics: dict | None = None


class Runner:
    """Features per backbone and fits per (backbone, config), each computed once."""

    def __init__(self, args):
        self.args = args
        self._datasets = None
        self._variables = {}
        self._features = {}
        self._fits = {}

    def variables(self, backbone: str):
        """The backbone's ImageNet variables (loaded once)."""
        if backbone not in self._variables:
            self._variables[backbone] = bb.load_pretrained(backbone)
        return self._variables[backbone]

    def features(self, backbone: str = BACKBONE) -> Features:
        """The MTD split's backbone levels (computed once per backbone)."""
        if backbone not in self._features:
            if self._datasets is None:
                self._datasets = _mtd(self.args)
            train_ds, test_ds = self._datasets
            levels = LEVELS if backbone == BACKBONE else (1, 2, 3)
            variables = self.variables(backbone)
            start = time.perf_counter()
            train, _, _, _ = _extract(train_ds, backbone, variables, levels, self.args)
            test, labels, masks, seconds = _extract(test_ds, backbone, variables,
                                                    levels, self.args)
            print(f"[{backbone}] levels {levels} of {len(train_ds)} train + "
                  f"{len(test_ds)} test images ({int(labels.sum())} defective) in "
                  f"{time.perf_counter() - start:.0f} s; backbone "
                  f"{seconds * 1e3:.1f} ms/img", flush=True)
            self._features[backbone] = Features(backbone, train, test, labels, masks,
                                                tuple(masks.shape[1:]), seconds)
        return self._features[backbone]

    def drop(self, backbone: str) -> None:
        """Frees a backbone's features and fits (not Lite0's: other parts reuse it)."""
        if backbone == BACKBONE:
            return
        self._features.pop(backbone, None)
        self._variables.pop(backbone, None)
        for key in [k for k in self._fits if k[0] == backbone]:
            del self._fits[key]

    def fit(self, config, backbone: str = BACKBONE) -> Fit:
        """``psdl.fit`` on the training features (once per backbone and config)."""
        key = (backbone, config)
        if key not in self._fits:
            feats = self.features(backbone)
            need = psdl.min_images(config, feats.channels)
            n = len(next(iter(feats.train.values())))
            if n < need:
                raise ValueError(f"m = {need} needs at least {need} training images; "
                                 f"got {n}")
            train = psdl.embed(config, _levels(feats.train, config))
            start = time.perf_counter()
            state = jax.block_until_ready(
                psdl.fit(config, train, progress=not self.args.quick))
            seconds = time.perf_counter() - start
            self._fits[key] = Fit(state, seconds)
        return self._fits[key]

    def evaluate(self, config, backbone: str = BACKBONE, **extra) -> dict:
        """One table row: the metrics of (backbone, config), fitted if needed."""
        feats = self.features(backbone)
        dims = psdl.signal_dims(config, feats.channels)
        row = {**extra, "backbone": backbone,
               "m": "+".join(str(dims[g]) for g in sorted(dims)),
               "num_train": len(next(iter(feats.train.values()))),
               "num_test": len(feats.labels), "config": dataclasses.asdict(config)}
        try:
            fit = self.fit(config, backbone)
        except ValueError as err:
            row["error"] = str(err).splitlines()[0]
            print({k: v for k, v in row.items() if k != "config"}, flush=True)
            return row
        if fit.metrics is None:
            maps, scores, seconds = score_features(fit.state, feats,
                                                   self.args.batch_size)
            if not (np.isfinite(maps).all() and np.isfinite(scores).all()):
                raise ValueError("non-finite anomaly maps")
            # jad.evaluate's own metric set (PRO to FPR 0.3), not a copy of it
            fit.metrics = {**evaluation._metrics(maps, scores, feats.labels,
                                                 feats.masks, 0.0),
                           "fit_seconds": fit.seconds, "score_ms": seconds * 1e3,
                           "backbone_ms": feats.backbone_seconds * 1e3}
        row.update(fit.metrics)
        print({k: v for k, v in row.items() if k != "config"}, flush=True)
        return row


def make(args, base, **changes):
    """``base`` with ``changes``; in quick mode m <= 49 and few K-SVD iterations."""
    config = dataclasses.replace(base, **changes)
    if args.quick:
        quick = {"max_channels": min(config.max_channels or QUICK_CHANNELS,
                                     QUICK_CHANNELS)}
        if "n_iter" not in changes:
            quick["n_iter"] = QUICK_ITER
        config = dataclasses.replace(config, **quick)
    return config


# ------------------------------------------------------------------------ report


def _fmt(row: dict, key: str, digits: int = 3) -> str:
    value = row.get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def _paper(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return " / ".join(f"{v:.3f}" for v in value)
    return f"{value:.3f}"


def print_table(title: str, rows: list[dict], paper_header: str = "paper img / pix"):
    print(f"\n### {title}\n")
    print(f"| setting | m | image AUROC | pixel AUROC | PRO@0.3 | pixel AP | fit s | "
          f"PSDL ms/img | {paper_header} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['setting']} | {r['m']} | skipped: {r['error']} | | | | | | "
                  f"{_paper(r.get('paper'))} |")
            continue
        print(f"| {r['setting']} | {r['m']} | {_fmt(r, 'image_auroc')} | "
              f"{_fmt(r, 'pixel_auroc')} | {_fmt(r, 'pro')} | {_fmt(r, 'pixel_ap')} | "
              f"{_fmt(r, 'fit_seconds', 0)} | {_fmt(r, 'score_ms', 1)} | "
              f"{_paper(r.get('paper'))} |")


def bar_chart(rows: list[dict], title: str, path: Path) -> None:
    plt = pyplot()
    ok = [r for r in rows if "error" not in r]
    if plt is None or not ok:
        return
    keys = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"),
            ("pro", "PRO@0.3"))
    fig, ax = plt.subplots(figsize=(1.3 * len(ok) + 3, 4))
    x = np.arange(len(ok))
    width = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        ax.bar(x + (j - 1) * width, [r.get(key) or 0.0 for r in ok], width,
               label=label)
    papers = [r.get("paper") for r in ok]
    if any(isinstance(p, tuple) for p in papers):
        ax.plot(x - width, [p[0] if isinstance(p, tuple) else np.nan for p in papers],
                "k_", markersize=14, label="paper image AUROC (MVTec, RN-18)")
        ax.plot(x, [p[1] if isinstance(p, tuple) else np.nan for p in papers],
                "r_", markersize=14, label="paper pixel AUROC (MVTec, RN-18)")
    ax.set_xticks(x, [r["setting"] for r in ok], rotation=20, ha="right")
    low = min(min(r.get(k) or 1.0 for r in ok for k, _ in keys), 0.5)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set(title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)
    plt.close(fig)


# -------------------------------------------------------------------------- parts


def part_table1(runner: Runner, args) -> dict:
    official = psdl.PRESETS["official"]
    settings = [(f"level {lv}", make(args, official, levels=(lv,))) for lv in LEVELS]
    settings += [("stack 1-3", make(args, official)),
                 ("separate 1-3", make(args, psdl.PRESETS["separate"]))]
    rows = []
    for name, config in settings:
        rows.append(runner.evaluate(config, setting=name,
                                    paper=PAPER["table1"][name]))
    n = rows[0]["num_train"]
    print_table(
        f"Table 1 on MTD: layer selection (Lite0, {n} train images; official preset "
        "otherwise. 'stack' (levels concatenated before learning) is the paper's "
        "'1,2,3', its last and best column; 'separate' (per-level maps summed) is its "
        "'1+2+3', as sec. 3.1.1 defines them)", rows,
        "paper MVTec RN-18 img / pix")
    bar_chart(rows, "PSDL Table 1 on MTD (Lite0): layer selection",
              args.out / "table1.png")
    return {"rows": rows}


def part_table6(runner: Runner, args) -> dict:
    config = make(args, psdl.PRESETS["official"])
    rows = []
    for backbone in TABLE6_BACKBONES:
        try:
            runner.variables(backbone)
        except (FileNotFoundError, ImportError, OSError, WeightsError) as err:
            note = f"{type(err).__name__}: {str(err).splitlines()[0]}"
            print(f"note: {backbone} skipped, its weights could not be loaded ({note})")
            rows.append({"setting": backbone, "backbone": backbone, "m": "-",
                         "error": f"weights not loaded ({type(err).__name__})",
                         "detail": note})
            continue
        rows.append(runner.evaluate(config, backbone, setting=backbone))
        runner.drop(backbone)
    print_table(
        f"Table 6 on MTD: backbones (official preset: levels 1-3 stacked, "
        f"{args.size}x{args.size}). Paper, MTD image AUROC: PSDL EN-B6 0.979, EN-B7 "
        "0.988 (PaDiM 0.872, DifferNet 0.977, PatchCore 0.979)", rows, "paper")
    bar_chart(rows, "PSDL Table 6 on MTD: backbones (official preset)",
              args.out / "table6.png")
    return {"config": dataclasses.asdict(config), "rows": rows,
            "paper_mtd_image_auroc": PAPER["table6_mtd"],
            "paper_table2_mvtec": PAPER["table2"]}


def _table8_configs(args):
    single = psdl.PRESETS["single"]
    return [("DCT, no learning", make(args, single, learn=False)),
            ("DCT", make(args, single)),
            ("Haar", make(args, single, init="haar")),
            ("random", make(args, single, init="random"))]


def _table9_configs(args):
    single = psdl.PRESETS["single"]
    return [(k, make(args, single, n_iter=k))
            for k in (ITERATIONS_QUICK if args.quick else ITERATIONS)]


def _table10_configs(args):
    single = psdl.PRESETS["single"]
    return [(s, make(args, single, sparsity=s)) for s in SPARSITIES]


def part_table8(runner: Runner, args) -> dict:
    rows = [runner.evaluate(config, setting=name, paper=PAPER["table8"][name])
            for name, config in _table8_configs(args)]
    print_table(
        f"Table 8 on MTD: dictionary initialisation (single preset: Lite0 level 3, "
        f"kept instead of official to be faster; {rows[0]['num_train']} train images)",
        rows, "paper MVTec RN-18 img / pix")
    bar_chart(rows, "PSDL Table 8 on MTD: initialisation", args.out / "table8.png")
    return {"rows": rows}


def part_table9(runner: Runner, args) -> dict:
    rows = []
    for (k, config), paper in zip(_table9_configs(args), PAPER["table9"].values(),
                                  strict=True):  # quick: 2, 3, 5 stand for 10, 20, 50
        rows.append(runner.evaluate(config, setting=f"{k} iterations", n_iter=k,
                                    paper=paper))
    print_table(f"Table 9 on MTD: K-SVD iterations (single preset; "
                f"{rows[0]['num_train']} train images)", rows,
                "paper MVTec RN-18 img / pix")
    bar_chart(rows, "PSDL Table 9 on MTD: K-SVD iterations", args.out / "table9.png")
    return {"rows": rows}


def part_table10(runner: Runner, args) -> dict:
    rows = []
    for s, config in _table10_configs(args):
        rows.append(runner.evaluate(config, setting=f"sparsity {s}", sparsity=s,
                                    paper=PAPER["table10"][s]))
    print_table(f"Table 10 on MTD: OMP sparsity as a fraction of m (single preset; "
                f"{rows[0]['num_train']} train images)", rows,
                "paper MVTec RN-18 img / pix")
    bar_chart(rows, "PSDL Table 10 on MTD: sparsity", args.out / "table10.png")
    return {"rows": rows}


def part_statistics(runner: Runner, args) -> dict:
    """The issue's question: training statistics from K-SVD's codes or a fresh OMP."""
    single = psdl.PRESETS["single"]
    rows = [runner.evaluate(make(args, single, statistics=name),
                            setting=f"statistics={name}")
            for name in ("ksvd", "omp")]
    print_table(
        "Training statistics on MTD (single preset): the codes K-SVD ends with (the "
        "authors' code: training and test signals are coded differently) against a "
        "fresh OMP with the final dictionaries (coded as test signals are)", rows)
    return {"rows": rows}


def _train_curve(fit: Fit) -> np.ndarray:
    """(T, h, w) mean training error per K-SVD iteration (one group)."""
    return np.asarray(next(iter(fit.state.train_error.values())))


def _cells(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(M, h, w) bool: the feature cells holding a defective pixel."""
    m, hh, ww = masks.shape
    h, w = grid
    fy, fx = hh // h, ww // w
    return masks[:, : h * fy, : w * fx].reshape(m, h, fy, w, fx).any(axis=(2, 4))


def part_figs(runner: Runner, args) -> dict:
    feats = runner.features()
    nolearn, learnt = (c for _, c in _table8_configs(args)[:2])
    iters = _table9_configs(args)
    sparse = {s: c for s, c in _table10_configs(args) if s in (0.25, 0.75)}
    result = {}

    # Fig. 2: DCT without learning against learnt DCT (last iteration).
    fig2 = {name: _train_curve(runner.fit(c))[-1].ravel()
            for name, c in (("DCT, no learning", nolearn), ("DCT, learnt", learnt))}
    result["fig2"] = {k: v.tolist() for k, v in fig2.items()}
    ratio = float(np.mean(fig2["DCT, no learning"] / fig2["DCT, learnt"]))
    # Fig. 3: iterations.
    curves = {k: _train_curve(runner.fit(c)) for k, c in iters}
    last_k = iters[-1][0]
    surface = curves[last_k][-1]
    result["fig3"] = {"last_iteration": {str(k): v[-1].ravel().tolist()
                                         for k, v in curves.items()},
                      "mean_per_iteration": {str(k): v.mean(axis=(1, 2)).tolist()
                                             for k, v in curves.items()},
                      "surface_iterations": last_k, "surface": surface.tolist()}
    # Fig. 4 and Fig. 5: sparsity 0.25 against 0.75, training and test errors.
    fig4 = {s: _train_curve(runner.fit(c))[-1].ravel() for s, c in sparse.items()}
    result["fig4"] = {str(s): v.tolist() for s, v in fig4.items()}
    good = feats.labels == 0
    fig5, summary = {}, []
    for s, config in sparse.items():
        err = test_errors(runner.fit(config).state, feats, args.batch_size)
        grid = err.shape[1:]
        cells = _cells(feats.masks, grid)
        fig5[s] = {"normal": err[good].mean(axis=0).ravel(),
                   "anomalous": err[~good].mean(axis=0).ravel()}
        normal_cells = err[good].ravel()
        defect_cells = err[~good][cells[~good]]
        auroc = metrics.auroc(
            np.concatenate([normal_cells, defect_cells]),
            np.concatenate([np.zeros(normal_cells.size, bool),
                            np.ones(defect_cells.size, bool)]))
        summary.append({
            "sparsity": s, "train_error": float(fig4[s].mean()),
            "test_normal": float(err[good].mean()),
            "test_anomalous": float(err[~good].mean()),
            "test_defective_cells": float(defect_cells.mean()),
            "num_defective_cells": int(defect_cells.size),
            "defective_over_normal": float(defect_cells.mean() / normal_cells.mean()),
            "cell_auroc": float(auroc)})
    result["fig5"] = {str(s): {k: v.tolist() for k, v in d.items()}
                      for s, d in fig5.items()}
    result["fig5_summary"] = summary

    n_train = len(next(iter(feats.train.values())))
    print(f"\n### Figs. 2-5 on MTD (single preset, Lite0 level 3, {n_train} train, "
          f"{len(feats.labels)} test images): mean ||s - Dx||^2 per location\n")
    print("| figure | setting | mean over locations | min | max |")
    print("|---|---|---|---|---|")
    for name, v in fig2.items():
        print(f"| 2 (train) | {name} | {v.mean():.4g} | {v.min():.4g} | "
              f"{v.max():.4g} |")
    for k, v in curves.items():
        last = v[-1]
        print(f"| 3a (train) | {k} iterations | {last.mean():.4g} | {last.min():.4g} | "
              f"{last.max():.4g} |")
    for s, v in fig4.items():
        print(f"| 4 (train) | sparsity {s} | {v.mean():.4g} | {v.min():.4g} | "
              f"{v.max():.4g} |")
    for s, d in fig5.items():
        for name, v in d.items():
            print(f"| 5 (test) | sparsity {s}, {name} images | {v.mean():.4g} | "
                  f"{v.min():.4g} | {v.max():.4g} |")
    h, w = surface.shape
    centre = surface[h // 4: h - h // 4, w // 4: w - w // 4].mean()
    border = (surface.sum() - surface[h // 4: h - h // 4, w // 4: w - w // 4].sum()) / (
        surface.size - surface[h // 4: h - h // 4, w // 4: w - w // 4].size)
    print(f"\nFig. 2: no learning / learnt error, mean ratio over locations "
          f"{ratio:.2f}x (paper: about one order of magnitude).")
    print(f"Fig. 3b ({last_k} iterations): centre half {centre:.4g} against border "
          f"{border:.4g} (paper: higher in the centre).")
    result["fig2_ratio"] = ratio
    result["fig3_centre_border"] = [float(centre), float(border)]
    print("\nFig. 5 summary (test set; defective cells: 16x16 cells of anomalous "
          "images holding a defective pixel; cell AUROC: the error alone, defective "
          "cells against every cell of the good images):\n")
    print("| sparsity | train | test, good images | test, anomalous images | "
          "defective cells | defective / good | cell AUROC |")
    print("|---|---|---|---|---|---|---|")
    for r in summary:
        print(f"| {r['sparsity']} | {r['train_error']:.4g} | {r['test_normal']:.4g} | "
              f"{r['test_anomalous']:.4g} | {r['test_defective_cells']:.4g} | "
              f"{r['defective_over_normal']:.2f} | {r['cell_auroc']:.3f} |")

    plt = pyplot()
    if plt is not None:
        x = np.arange(surface.size)
        fig, ax = plt.subplots(figsize=(9, 3.5))
        for name, v in fig2.items():
            ax.plot(x, v, label=name)
        ax.set(yscale="log", xlabel="spatial location index (14x14 unrolled)",
               ylabel="mean training ||s - Dx||^2",
               title="PSDL Fig. 2 on MTD: DCT without learning vs learnt")
        ax.legend()
        ax.grid(alpha=0.3)
        save_figure(fig, args.out / "fig2.png")
        plt.close(fig)

        fig = plt.figure(figsize=(15, 4.5))
        ax = fig.add_subplot(1, 4, (1, 2))
        for k, v in curves.items():
            ax.plot(x, v[-1].ravel(), label=f"{k} iterations")
        ax.set(xlabel="spatial location index (unrolled)",
               ylabel="mean training ||s - Dx||^2", title="(a) per location")
        ax.legend()
        ax.grid(alpha=0.3)
        ax3 = fig.add_subplot(1, 4, 3, projection="3d")
        yy, xx = np.mgrid[0:h, 0:w]
        ax3.plot_surface(xx, yy, surface, cmap="viridis")
        ax3.set(title=f"(b) {last_k} iterations, {h}x{w}", xlabel="x", ylabel="y")
        ax4 = fig.add_subplot(1, 4, 4)
        for k, v in curves.items():
            ax4.plot(np.arange(1, len(v) + 1), v.mean(axis=(1, 2)),
                     label=f"{k} iterations")
        ax4.set(xlabel="K-SVD iteration", ylabel="mean over locations",
                title="(c) training error per iteration")
        ax4.legend()
        ax4.grid(alpha=0.3)
        fig.suptitle("PSDL Fig. 3 on MTD: K-SVD iterations")
        save_figure(fig, args.out / "fig3.png")
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(9, 3.5))
        for s, v in fig4.items():
            ax.plot(x, v, label=f"sparsity {s}")
        ax.set(xlabel="spatial location index (unrolled)",
               ylabel="mean training ||s - Dx||^2",
               title="PSDL Fig. 4 on MTD: sparsity 0.25 vs 0.75")
        ax.legend()
        ax.grid(alpha=0.3)
        save_figure(fig, args.out / "fig4.png")
        plt.close(fig)

        fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        for ax, (s, d) in zip(axes, fig5.items(), strict=True):
            ax.plot(x, d["normal"], label="normal test images")
            ax.plot(x, d["anomalous"], label="anomalous test images")
            ax.set(ylabel="mean test ||s - Dx||^2", title=f"sparsity {s}")
            ax.legend()
            ax.grid(alpha=0.3)
        axes[-1].set(xlabel="spatial location index (unrolled)")
        fig.suptitle("PSDL Fig. 5 on MTD: test reconstruction error")
        save_figure(fig, args.out / "fig5.png")
        plt.close(fig)
    result["configs"] = {
        "fig2": [dataclasses.asdict(nolearn), dataclasses.asdict(learnt)],
        "fig3": [dataclasses.asdict(c) for _, c in iters],
        "fig4_fig5": [dataclasses.asdict(c) for c in sparse.values()]}
    return result


def _raw(maps: np.ndarray, state, index: int) -> np.ndarray:
    """Undoes the per-class min-max of class ``index`` (affine: exact after blur)."""
    low = float(state.norm_low[index])
    return maps * (float(state.norm_high[index]) - low) + low


def part_allclasses(runner: Runner, args) -> dict:
    names = tuple(data.BUILTIN_CATEGORIES)
    root = data.builtin_dataset(category=names)
    transform = data.Transform(size=args.size)
    sets = {c: (data.load_dataset("mvtec", root, c, "train", transform=transform),
                data.load_dataset("mvtec", root, c, "test", transform=transform))
            for c in names}
    variables = runner.variables(BACKBONE)
    base = make(args, psdl.PRESETS["demo"])
    m = psdl.min_images(base, bb.backbone_info(BACKBONE).channels)
    n_train = {c: len(sets[c][0]) for c in names}
    print(f"\nall-classes: {base.levels=} max_channels={base.max_channels}: m = {m} "
          f"<= {min(n_train.values())} training images per class (PSDL needs N >= m; "
          "level 3's 100 channels would need 100 per class). The all-classes model "
          "uses the same config on the 120 images of the three classes, so the only "
          "difference is one model against three.")

    def batches(c, split):
        return sets[c][split].batches(args.batch_size, num_workers=args.workers)

    def fit(config, train_batches):
        start = time.perf_counter()
        det = pipeline.fit_detector("psdl", train_batches, backbone=BACKBONE,
                                    variables=variables, config=config,
                                    key=jax.random.key(args.seed), progress=False)
        jax.block_until_ready(det.state)
        return det, time.perf_counter() - start

    # One model of every class: fit_detector calibrates every class on the pooled
    # training maps; calibrate_classes then gives each class its own range.
    joint, joint_seconds = fit(
        dataclasses.replace(base, classes=names),
        itertools.chain.from_iterable(batches(c, 0) for c in names))
    start = time.perf_counter()
    train_maps = {c: pipeline.predict(joint, batches(c, 0), progress=False)[0]
                  for c in names}
    state = psdl.calibrate_classes(joint.state, train_maps)
    calib_seconds = time.perf_counter() - start
    pooled = {k: ([], [], [], []) for k in ("all-classes, per-class normalised",
                                            "all-classes, test-set min-max (the code)",
                                            "all-classes, raw",
                                            "per-class models, own normalisation",
                                            "per-class models, raw")}

    def add(key, ev, maps):
        scores = maps.reshape(len(maps), -1).max(axis=1)
        for lst, v in zip(pooled[key], (maps, scores, ev.labels, ev.masks),
                          strict=True):
            lst.append(v)

    rows = []
    for i, c in enumerate(names):
        det = joint.replace(state=psdl.select_class(state, c))
        ev = evaluation.evaluate(det, sets[c][1], batch_size=args.batch_size,
                                 num_workers=args.workers, progress=False)
        add("all-classes, per-class normalised", ev, ev.maps)
        raw = _raw(ev.maps, state, i)
        add("all-classes, raw", ev, raw)
        # the authors' evaluate.py: min-max over the class's whole test set
        add("all-classes, test-set min-max (the code)", ev,
            (raw - raw.min()) / (raw.max() - raw.min()))
        rows.append({"class": c, "model": "all-classes", "num_train": sum(
            n_train.values()), "fit_seconds": joint_seconds, **_keep(ev.metrics)})
        single, seconds = fit(base, batches(c, 0))
        ev = evaluation.evaluate(single, sets[c][1], batch_size=args.batch_size,
                                 num_workers=args.workers, progress=False)
        add("per-class models, own normalisation", ev, ev.maps)
        add("per-class models, raw", ev, _raw(ev.maps, single.state, 0))
        rows.append({"class": c, "model": "per-class", "num_train": n_train[c],
                     "fit_seconds": seconds, **_keep(ev.metrics)})
        print(rows[-2], rows[-1], sep="\n", flush=True)
    for model in ("all-classes", "per-class"):
        sel = [r for r in rows if r["model"] == model]
        mean = {k: float(np.mean([r[k] for r in sel]))
                for k in ("image_auroc", "pixel_auroc", "pro", "pixel_ap")}
        fit_total = (joint_seconds if model == "all-classes"
                     else sum(r["fit_seconds"] for r in sel))
        rows.append({"class": "mean", "model": model, "num_train": sum(
            n_train.values()), "fit_seconds": fit_total, **mean})
    pooled_rows = []
    for key, (maps, scores, labels, masks) in pooled.items():
        pooled_rows.append({"maps": key, **evaluation._metrics(
            np.concatenate(maps), np.concatenate(scores), np.concatenate(labels),
            np.concatenate(masks), 0.0)})
    ranges = {c: [float(state.norm_low[i]), float(state.norm_high[i])]
              for i, c in enumerate(names)}

    print(f"\n### All-classes mode on the built-in data ({', '.join(names)}; demo "
          f"preset: level 3, m = {m}; Lite0 {args.size}x{args.size}; fit s includes "
          "the features and the pooled calibration)\n")
    print("| class | model | train imgs | image AUROC | pixel AUROC | PRO@0.3 | "
          "pixel AP | fit s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['class']} | {r['model']} | {r['num_train']} | "
              f"{_fmt(r, 'image_auroc')} | {_fmt(r, 'pixel_auroc')} | {_fmt(r, 'pro')} "
              f"| {_fmt(r, 'pixel_ap')} | {_fmt(r, 'fit_seconds', 1)} |")
    print(f"\nPer-class calibration of the all-classes model (calibrate_classes on "
          f"each class's training maps, {calib_seconds:.1f} s): raw training-map "
          "ranges " + ", ".join(f"{c} [{lo:.3g}, {hi:.3g}]"
                                for c, (lo, hi) in ranges.items()))
    print("\n### Pooled over the three classes' test images (one threshold for all; "
          "threshold-free metrics, so only the relative scale of the classes' maps "
          "matters)\n")
    print("| maps | image AUROC | pixel AUROC | PRO@0.3 | pixel AP |")
    print("|---|---|---|---|---|")
    for r in pooled_rows:
        print(f"| {r['maps']} | {_fmt(r, 'image_auroc')} | {_fmt(r, 'pixel_auroc')} | "
              f"{_fmt(r, 'pro')} | {_fmt(r, 'pixel_ap')} |")
    print("(fit_detector's own calibration of the all-classes model -- every class on "
          "the pooled training maps -- is one affine map for all, so it pools as raw.)")

    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        cls = [*names, "mean"]
        x = np.arange(len(cls))
        for j, model in enumerate(("all-classes", "per-class")):
            sel = {r["class"]: r for r in rows if r["model"] == model}
            axes[0].bar(x + (j - 0.5) * 0.4, [sel[c]["pixel_auroc"] for c in cls], 0.4,
                        label=model)
        axes[0].set_xticks(x, cls)
        axes[0].set(ylabel="pixel AUROC", title="per class")
        axes[0].set_ylim(0.5, 1.0)
        axes[0].legend()
        xs = np.arange(len(pooled_rows))
        axes[1].bar(xs - 0.2, [r["pixel_auroc"] for r in pooled_rows], 0.4,
                    label="pixel AUROC")
        axes[1].bar(xs + 0.2, [r["image_auroc"] for r in pooled_rows], 0.4,
                    label="image AUROC")
        axes[1].set_xticks(xs, [r["maps"].replace(", ", ",\n") for r in pooled_rows],
                           fontsize=7)
        axes[1].set(title="pooled over the classes")
        axes[1].set_ylim(0.5, 1.0)
        axes[1].legend()
        for ax in axes:
            ax.grid(alpha=0.3, axis="y")
        fig.suptitle("PSDL all-classes mode on jad's built-in data")
        save_figure(fig, args.out / "allclasses.png")
        plt.close(fig)
    return {"config": dataclasses.asdict(base), "m": m, "classes": list(names),
            "num_train": n_train, "rows": rows, "pooled": pooled_rows,
            "calibration_ranges": ranges, "calibration_seconds": calib_seconds}


def _keep(result_metrics: dict) -> dict:
    keys = ("image_auroc", "pixel_auroc", "pro", "pixel_ap", "seconds_per_image")
    return {k: result_metrics.get(k) for k in keys}


# --------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join("..", "shared", "data", "mtd"))
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts out of {', '.join(PARTS)}")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="60 train / 40 test images, m <= 49, 3 K-SVD iterations:"
                             " only checks the code paths")
    parser.add_argument("--out", default=os.path.join("experiments", "results", "psdl"))
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for p in parts:
        if p not in PARTS:
            parser.error(f"unknown part {p!r}; valid parts: {', '.join(PARTS)}")
    args.out = Path(args.out) / "quick" if args.quick else Path(args.out)
    meta = {"size": args.size, "backbone": BACKBONE, "quick": args.quick,
            "split_seed": 0, "jax_backend": jax.default_backend(),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}

    runner = Runner(args)
    started = time.perf_counter()
    for part in PARTS:  # in a fixed order: figs reuses the tables' fits
        if part not in parts:
            continue
        start = time.perf_counter()
        result = globals()[f"part_{part}"](runner, args)
        result.update(meta, part=part, seconds=time.perf_counter() - start)
        if part != "allclasses":
            feats = runner.features()
            result.update(dataset="mtd", num_test=len(feats.labels),
                          num_defective=int(feats.labels.sum()),
                          backbone_ms=feats.backbone_seconds * 1e3)
        else:
            result["dataset"] = "builtin"
        write_json(str(args.out / f"{part}.json"), result)
    print(f"\ndone in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
