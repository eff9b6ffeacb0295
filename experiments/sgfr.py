"""SGFR's analyses (SGFR paper sec. IV-C: Fig. 5, 6, 7, Table V) redone on MTD.

Data. MTD with jad's seeded split (``../shared/data/README.md``: seed 0, 190 test-good
and 392 defective test images, 762 training images in permutation order, so the first
k are a seeded subsample), 224x224, ImageNet mean/std; and, as a second tiny data set,
jad's built-in one (``jad.data.builtin_dataset``, category ``brick``: 40 training, 10
good and 18 defective test images, loaded at the same size). Backbone: the real
ImageNet EfficientNet-Lite0 (``jad.backbones.load_pretrained``).

How it runs. Levels 2, 3 and 4 of every training and test image are computed once
(``jad.detector.embed_images``, exactly what ``jad.pipeline.fit_detector`` feeds the
method); each setting then calls ``sgfr.fit`` / ``sgfr.score`` on them, post-processes
the maps as the pipeline does (``jad.methods.base.postprocess_config``: bilinear
upsampling of each level to the image, mean, Gaussian sigma 4; image score = max of
the map) and computes the metrics with ``jad.evaluation``'s own metric set
(image AUROC, pixel AUROC, PRO = AUPRO to FPR 0.3 normalised, pixel AP; exact).
Time per image = the backbone's (measured once, compiled, levels 2-4) + SGFR's
scoring and post-processing (jitted; the median over the test batches after the
first, which compiles, of the batch's time over its size), so it is close to what
``jad.pipeline.predict`` would report for the whole detector. On a shared 2-core CPU
the times are noisy (tens of percent on the few batches of a quick run); compare
within a table, not across runs.

Base settings. MTD: ``sgfr.PRESETS["mtd"]`` (levels 2, 3, 4 scored, level 4 samples,
s_ref 10, s 7). Built-in: the paper's MVTec setting (levels 2, 3 scored, level 4
samples) with s_ref 20, s 10, since with its 40 training images the default s_ref 40
would select the whole bank.

Parts (``--parts``):

- ``fig5``: sampling ablation (SGFR Fig. 5). s_ref in {10, 20, 30, 40, 50} (only those
  <= the number of training images), s = s_ref // 2 as in the paper, for
  ``sampling="subspace"`` (eq. 6-7), ``"random"`` (s_ref entries drawn at fit time;
  seeds 0, 1, 2: mean and std) and ``"none"`` (OMP over the whole bank, with the same
  s). One fitted state serves subspace and none (``state.replace(config=...)``);
  random is refitted for each (s_ref, seed). The paper's claim: subspace within about
  0.5 PRO point of none, clearly better than random for small s_ref, at about
  random's time.
- ``fig6``: representation error of out-of-bank nominal data (SGFR Fig. 6, eq. 9):
  the test-good images against the whole training bank, for each scored level and
  each s_ref (s = s_ref // 2): mean per-location ``||x - x*||`` for SGFR's
  reconstruction from M_S (subspace sampling), the same reconstruction over the whole
  bank (sampling none, a reference), and SPADE-style matching (the nearest patch
  among all locations of the s_ref nearest bank images, ``sgfr.representation_error``
  explains why). The mean per-location feature norm ``||x||`` is given for scale.
- ``fig7``: which levels are scored and which one samples (SGFR Fig. 7): score
  levels (2,), (3,), (4,), (2, 3), (3, 4), (2, 3, 4) with the reference level 3 or 4,
  subspace sampling, the base s_ref and s.
- ``fewshot``: N in {10, 50, 200, 762} nominal images (the first N of the training
  order; for the built-in set {10, 20, 40}), s_ref clamped to <= N (and s to <=
  s_ref), subspace and none.
- ``table5``: time per image of each backbone of ``jad.backbones.list_backbones()``
  (SGFR Table V): the full pipeline, ``jad.pipeline.fit_detector("sgfr", ...)`` then
  ``jad.pipeline.predict`` (backbone + SGFR + post-processing; compilation excluded),
  with and without sampling, the paper's MVTec setting (levels 2, 3 scored, 4 samples,
  s_ref 40, s 17) on ``--t5-train`` training and ``--t5-test`` test images of the
  first data set of ``--datasets``; the best of three ``predict`` passes (each
  already excludes its first batch). The backbone alone (``embed_images``, best
  batch) is given to split the total. EfficientNet-Lite0 runs with its real weights, the
  others with random ones (``jad.backbones.init_variables``: no ImageNet ResNet
  weights here; timing does not depend on the values), so only the times mean
  anything, and no metric is reported.

Outputs: a markdown table per part and data set on stdout, ``<out>/<part>_<data
set>.json`` and ``<out>/<part>_<data set>.png`` (matplotlib; skipped with a note if
it is not installed). ``--quick`` writes under ``<out>/quick`` (so that it never
overwrites a full run) and uses 40 training images, 30 good and 40 defective MTD test
images (every type, evenly spaced), s_ref in {10, 20}, Fig. 6 on the first scored
level only, three Fig. 7 settings, N in {10, 40} and two backbones with 40 training
and 16 timed test images. Every setting compiles its own program (the config is
static), a few seconds each on 2 CPU cores: that, not the scoring, is most of a quick
run.

Results on the full MTD split (762 train, 582 test images; 2 CPU cores shared with
other jobs, so times are indicative only):

- Fig. 5 (rerun on the final code): subspace sampling stays within 0.5 PRO point of
  no sampling at every s_ref (0.760-0.763 against 0.764-0.765; image AUROC
  0.938-0.942 against 0.937-0.942), random sampling is clearly worse (PRO 0.723 +-
  0.008 at s_ref 10 up to 0.740 at 50, image AUROC 0.77-0.82), and subspace costs
  about twice random's SGFR time (2.2-4.9 against 1.0-2.0 ms per image), 4-8x less
  than no sampling (13.7-20.4 ms; the backbone adds 18.6 ms): the paper's claims hold.
- Fig. 6: at level 2 matching represents held-out nominal features better than SGFR's
  reconstruction (20.0-20.9 against 22.6-23.3, mean ||x|| 44); at levels 3 and 4 the
  reconstruction is better (24.2-24.8 against 26.3-26.7; 13.7-14.1 against 16.5-16.7)
  for 94-99 % of the images. On the built-in textures (quick run) matching wins at
  level 2 by far. The paper's claim (reconstruction better) holds at the deeper levels.
- Fig. 7: level 4 alone localises poorly (PRO 0.554), as in the paper; 2+3 and 2+3+4
  are best (0.760-0.766); ref level 3 or 4 makes little difference.
- Few-shot: PRO 0.699 / 0.737 / 0.750 / 0.760 with 10 / 50 / 200 / 762 images
  (s_ref 10), none within 0.5 point of subspace at each N.
- Table V (100 train, 32 test images, s_ref 40): w/ against w/o sampling, ms per
  image: resnet18 36 / 43, resnet50 89 / 107, wide_resnet50_2 163 / 185,
  efficientnet_lite0 17 / 17 (backbone alone 27, 58, 138, 13): sampling saves 1.0-1.2x
  with a 100-image bank, where the backbone dominates (the paper: 1.5x on MVTec AD
  with a GPU). With a bank no larger than s_ref (e.g. ``--quick``: 40 images)
  sampling cannot save anything and costs a second OMP.

Run:  python experiments/sgfr.py --quick                       (a few minutes)
      python experiments/sgfr.py --parts fig5 --datasets mtd   (full MTD Fig. 5)
      python experiments/sgfr.py --parts table5 --backbones resnet18,efficientnet_lite0
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np
from _report import padded_batches, pyplot, save_figure, write_json

from jad import backbones as bb
from jad import data, evaluation, pipeline
from jad.detector import embed_images
from jad.methods import sgfr
from jad.methods.base import max_image_score, postprocess_config

BACKBONE = "efficientnet_lite0"
FEATURES = sgfr.SGFRConfig(score_levels=(2, 3, 4), ref_level=4, s_ref=1, s=1)
PARTS = ("fig5", "fig6", "fig7", "fewshot", "table5")
DATASETS = ("mtd", "builtin")
BASE = {
    "mtd": sgfr.PRESETS["mtd"],
    "builtin": dataclasses.replace(sgfr.PRESETS["mvtec"], s_ref=20, s=10),
}
S_REFS, S_REFS_QUICK = (10, 20, 30, 40, 50), (10, 20)
SEEDS = (0, 1, 2)
MIN_TIMED = 3  # timed batches per setting, at least
FEWSHOT = {"mtd": (10, 50, 200, 762), "builtin": (10, 20, 40)}
FEWSHOT_QUICK = (10, 40)
FIG7 = [((2,), 4), ((3,), 4), ((4,), 4), ((2, 3), 4), ((3, 4), 4), ((2, 3, 4), 4),
        ((2,), 3), ((3,), 3), ((4,), 3), ((2, 3), 3), ((3, 4), 3), ((2, 3, 4), 3)]
FIG7_QUICK = [((2,), 4), ((2, 3), 4), ((2, 3), 3)]
T5_QUICK_BACKBONES = ("resnet18", "efficientnet_lite0")
T5_REPEATS = 3


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class Split:
    """Features of one data set, computed once."""

    name: str
    train: dict  # level -> (N, h, w, c) float32
    test: dict  # level -> (M, h, w, c)
    labels: np.ndarray  # (M,) int32
    masks: np.ndarray  # (M, H, W) bool
    image_size: tuple[int, int]
    backbone_seconds: float  # per image, compiled
    train_dataset: object
    test_dataset: object


def _datasets(name: str, args):
    transform = data.Transform(size=args.size)
    if name == "mtd":
        train = data.load_dataset("mtd", args.data, None, "train", transform=transform,
                                  num_train=40 if args.quick else None)
        test = data.load_dataset("mtd", args.data, None, "test", transform=transform)
        if args.quick:
            good = [s for s in test.samples if s.label == 0][:30]
            bad = [s for s in test.samples if s.label == 1]
            keep = np.linspace(0, len(bad) - 1, 40).round().astype(int)
            test = dataclasses.replace(test, samples=(*good, *(bad[i] for i in keep)))
        return train, test
    root = data.builtin_dataset(category="brick")
    train = data.load_dataset("mvtec", root, "brick", "train", transform=transform)
    test = data.load_dataset("mvtec", root, "brick", "test", transform=transform)
    return train, test


def _embed(dataset, variables, args):
    """Levels 2-4 of every image (host arrays), labels, masks, backbone s/image."""
    parts, labels, masks = [], [], []
    timed, count, size = 0.0, 0, None
    for i, batch in enumerate(dataset.batches(args.batch_size,
                                              num_workers=args.workers)):
        images = np.asarray(batch.images)
        n = images.shape[0]
        size = n if size is None else size
        if n < size:  # pad: one compiled program
            images = np.concatenate([images, np.zeros((size - n, *images.shape[1:]),
                                                      images.dtype)])
        start = time.perf_counter()
        emb = jax.block_until_ready(
            embed_images("sgfr", FEATURES, BACKBONE, variables, images))
        if i > 0:
            timed += time.perf_counter() - start
            count += n
        parts.append({lv: np.asarray(x[:n], np.float32) for lv, x in emb.items()})
        labels.append(np.asarray(batch.labels, np.int32))
        masks.append(np.asarray(batch.masks, bool))
    if count == 0:  # one batch: time it again, compiled
        start = time.perf_counter()
        jax.block_until_ready(embed_images("sgfr", FEATURES, BACKBONE, variables,
                                           images))
        timed, count = time.perf_counter() - start, images.shape[0]
    feats = {lv: np.concatenate([p[lv] for p in parts]) for lv in FEATURES.levels}
    return feats, np.concatenate(labels), np.concatenate(masks), timed / count


def load_split(name: str, variables, args) -> Split:
    train_ds, test_ds = _datasets(name, args)
    start = time.perf_counter()
    train, _, _, s_train = _embed(train_ds, variables, args)
    test, labels, masks, s_test = _embed(test_ds, variables, args)
    print(f"[{name}] features of {len(train_ds)} train + {len(test_ds)} test images "
          f"({int(labels.sum())} defective) in {time.perf_counter() - start:.0f} s; "
          f"backbone {s_test * 1e3:.1f} ms/img", flush=True)
    return Split(name, train, test, labels, masks, tuple(masks.shape[1:]),
                 s_test, train_ds, test_ds)


def _levels(emb: dict, config, n: int | None = None) -> dict:
    return {lv: emb[lv][:n] if n else emb[lv] for lv in config.levels}


# ----------------------------------------------------------------------- scoring


@functools.partial(jax.jit, static_argnums=2)
def _maps_and_scores(state, emb, image_size):
    maps = postprocess_config(sgfr.score(state, emb), image_size, state.config)
    return maps, max_image_score(maps)


def score_split(state, split: Split, batch: int):
    """Maps, image scores and SGFR seconds per image (compiled) of the test set.

    The time is the median over the batches after the first (its compilation) of
    the batch's time over its (padded) size, so that a busy shared CPU disturbs it
    less; with fewer than ``MIN_TIMED`` such batches the last one is run again.
    """
    emb = _levels(split.test, state.config)
    maps, scores, times = [], [], []
    for i, (part, n) in enumerate(padded_batches(emb, batch)):
        start = time.perf_counter()
        m, s = jax.block_until_ready(_maps_and_scores(state, part, split.image_size))
        if i > 0:
            times.append((time.perf_counter() - start) / len(s))
        maps.append(np.asarray(m[:n], np.float32))
        scores.append(np.asarray(s[:n], np.float32))
    while len(times) < MIN_TIMED:
        start = time.perf_counter()
        s = jax.block_until_ready(_maps_and_scores(state, part, split.image_size))[1]
        times.append((time.perf_counter() - start) / len(s))
    return np.concatenate(maps), np.concatenate(scores), float(np.median(times))


def evaluate_state(state, split: Split, batch: int) -> dict:
    """jad.evaluation's metrics of one SGFR state on the split's test set."""
    maps, scores, seconds = score_split(state, split, batch)
    if not (np.isfinite(maps).all() and np.isfinite(scores).all()):
        raise ValueError("non-finite anomaly maps")
    # jad.evaluate's own metric set (PRO to FPR 0.3), not a copy of it
    return {
        **evaluation._metrics(maps, scores, split.labels, split.masks, 0.0),
        "sgfr_ms": seconds * 1e3,
        "total_ms": (seconds + split.backbone_seconds) * 1e3,
    }


def _with(state, **changes):
    return state.replace(config=dataclasses.replace(state.config, **changes))


def _mean_std(rows: list[dict], keys) -> dict:
    out = {}
    for k in keys:
        values = np.array([r[k] for r in rows], float)
        out[k] = float(values.mean())
        out[k + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


METRIC_KEYS = ("image_auroc", "pixel_auroc", "pro", "pixel_ap", "sgfr_ms", "total_ms")


def _fmt(row: dict, key: str, digits: int = 3) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    if row.get(key + "_std"):
        text += f" ± {row[key + '_std']:.{digits}f}"
    return text


def _metric_cells(row: dict) -> str:
    return (f"{_fmt(row, 'image_auroc')} | {_fmt(row, 'pixel_auroc')} | "
            f"{_fmt(row, 'pro')} | {_fmt(row, 'pixel_ap')} | "
            f"{_fmt(row, 'sgfr_ms', 1)} | {_fmt(row, 'total_ms', 1)}")


METRIC_HEADER = ("image AUROC | pixel AUROC | PRO@0.3 | pixel AP | SGFR ms/img | "
                 "total ms/img")


# -------------------------------------------------------------------------- plots


# -------------------------------------------------------------------------- parts


def part_fig5(split: Split, args) -> dict:
    base = BASE[split.name]
    n_train = len(split.train[base.ref_level])
    s_refs = [k for k in (S_REFS_QUICK if args.quick else S_REFS) if k <= n_train]
    train = _levels(split.train, base)
    fitted = sgfr.fit(base, train)
    rows = []
    for k in s_refs:
        for sampling in ("subspace", "none"):
            state = _with(fitted, s_ref=k, s=k // 2, sampling=sampling)
            row = {"s_ref": k, "s": k // 2, "sampling": sampling,
                   **evaluate_state(state, split, args.batch_size)}
            rows.append(row)
            print(row, flush=True)
        runs = []
        for seed in SEEDS:
            config = dataclasses.replace(base, s_ref=k, s=k // 2, sampling="random",
                                         sampling_seed=seed)
            # The subset is fit's draw for this seed; the seed in the (static)
            # config is reset so that every seed reuses one compiled program
            # (score reads the subset, never the seed).
            state = _with(sgfr.fit(config, train), sampling_seed=SEEDS[0])
            runs.append(evaluate_state(state, split, args.batch_size))
        row = {"s_ref": k, "s": k // 2, "sampling": "random", "seeds": list(SEEDS),
               **_mean_std(runs, METRIC_KEYS), "runs": runs}
        rows.append(row)
        print({key: v for key, v in row.items() if key != "runs"}, flush=True)

    print(f"\n### Fig. 5 on {split.name}: sampling ablation ({n_train} train images, "
          f"score levels {base.score_levels}, ref level {base.ref_level}, s = s_ref//2,"
          f" backbone {split.backbone_seconds * 1e3:.1f} ms/img)\n")
    print(f"| s_ref | s | sampling | {METRIC_HEADER} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['s_ref']} | {r['s']} | {r['sampling']} | {_metric_cells(r)} |")

    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for sampling, marker in (("subspace", "o"), ("random", "s"), ("none", "^")):
            sel = [r for r in rows if r["sampling"] == sampling]
            x = [r["s_ref"] for r in sel]
            for ax, key in zip(axes, ("pro", "total_ms"), strict=True):
                ax.errorbar(x, [r[key] for r in sel],
                            yerr=[r.get(key + "_std", 0.0) for r in sel],
                            marker=marker, capsize=3, label=sampling)
        axes[0].set(xlabel="s_ref", ylabel="PRO (FPR <= 0.3)", title="(a) PRO")
        axes[1].set(xlabel="s_ref", ylabel="ms per image (backbone + SGFR)",
                    title="(b) time per image")
        for ax in axes:
            ax.legend()
            ax.grid(alpha=0.3)
        fig.suptitle(f"SGFR Fig. 5 on {split.name} ({n_train} train images)")
        save_figure(fig, args.out / f"fig5_{split.name}.png")
        plt.close(fig)
    return {"base_config": dataclasses.asdict(base), "num_train": n_train,
            "rows": rows}


def _representation_errors(state, emb, level, batch):
    recon, match = [], []
    for part, n in padded_batches(emb, batch):
        result = sgfr.representation_error(state, part, level=level)
        recon.append(np.asarray(result.reconstruction[:n]))
        match.append(np.asarray(result.matching[:n]))
    return np.concatenate(recon), np.concatenate(match)


def part_fig6(split: Split, args) -> dict:
    base = BASE[split.name]
    n_train = len(split.train[base.ref_level])
    s_refs = [k for k in (S_REFS_QUICK if args.quick else S_REFS) if k <= n_train]
    fitted = sgfr.fit(base, _levels(split.train, base))
    good = split.labels == 0
    emb = {lv: x[good] for lv, x in _levels(split.test, base).items()}
    scale = {lv: float(np.linalg.norm(emb[lv], axis=-1).mean())
             for lv in base.score_levels}
    levels = base.score_levels[:1] if args.quick else base.score_levels
    rows = []
    for level in levels:
        for k in s_refs:
            state = _with(fitted, s_ref=k, s=k // 2)
            recon, match = _representation_errors(state, emb, level, args.batch_size)
            recon_none, _ = _representation_errors(_with(state, sampling="none"), emb,
                                                   level, args.batch_size)
            row = {"level": level, "s_ref": k, "s": k // 2,
                   "reconstruction": float(recon.mean()),
                   "reconstruction_std": float(recon.std()),
                   "reconstruction_none": float(recon_none.mean()),
                   "matching": float(match.mean()),
                   "matching_std": float(match.std()),
                   "feature_norm": scale[level],
                   "reconstruction_wins": float(np.mean(recon < match))}
            rows.append(row)
            print(row, flush=True)

    print(f"\n### Fig. 6 / eq. 9 on {split.name}: representation error of "
          f"{int(good.sum())} held-out nominal images ({n_train} bank images, "
          f"ref level {base.ref_level}, s = s_ref//2)\n")
    print("| level | s_ref | SGFR reconstruction (subspace) | reconstruction over the "
          "whole bank | matching (s_ref nearest images) | images where reconstruction"
          " < matching | mean ‖x‖ |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['level']} | {r['s_ref']} | {r['reconstruction']:.3f} ± "
              f"{r['reconstruction_std']:.3f} | {r['reconstruction_none']:.3f} | "
              f"{r['matching']:.3f} ± {r['matching_std']:.3f} | "
              f"{r['reconstruction_wins']:.0%} | {r['feature_norm']:.3f} |")

    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, len(levels), figsize=(4.5 * len(levels), 4),
                                 squeeze=False)
        for ax, level in zip(axes[0], levels, strict=True):
            sel = [r for r in rows if r["level"] == level]
            x = [r["s_ref"] for r in sel]
            ax.plot(x, [r["reconstruction"] for r in sel], "o-",
                    label="SGFR reconstruction (subspace)")
            ax.plot(x, [r["reconstruction_none"] for r in sel], "^--",
                    label="reconstruction, whole bank")
            ax.plot(x, [r["matching"] for r in sel], "s-",
                    label="matching (s_ref nearest images)")
            ax.set(xlabel="s_ref", ylabel="mean ||x - x*||", title=f"level {level}")
            ax.grid(alpha=0.3)
        axes[0][0].legend()
        fig.suptitle(f"SGFR Fig. 6 on {split.name}: out-of-bank nominal images")
        save_figure(fig, args.out / f"fig6_{split.name}.png")
        plt.close(fig)
    return {"base_config": dataclasses.asdict(base), "num_train": n_train,
            "num_held_out": int(good.sum()), "rows": rows}


def part_fig7(split: Split, args) -> dict:
    base = BASE[split.name]
    n_train = len(split.train[4])
    rows = []
    for score_levels, ref in (FIG7_QUICK if args.quick else FIG7):
        config = dataclasses.replace(base, score_levels=score_levels, ref_level=ref,
                                     levels=())
        state = sgfr.fit(config, _levels(split.train, config))
        row = {"score_levels": list(score_levels), "ref_level": ref,
               **evaluate_state(state, split, args.batch_size)}
        rows.append(row)
        print(row, flush=True)

    print(f"\n### Fig. 7 on {split.name}: scored and sampling levels ({n_train} train "
          f"images, subspace sampling, s_ref {base.s_ref}, s {base.s})\n")
    print(f"| score levels | ref level | {METRIC_HEADER} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'+'.join(map(str, r['score_levels']))} | {r['ref_level']} | "
              f"{_metric_cells(r)} |")

    plt = pyplot()
    if plt is not None:
        names = list(dict.fromkeys("+".join(map(str, r["score_levels"])) for r in rows))
        refs = sorted({r["ref_level"] for r in rows})
        width = 0.8 / len(refs)
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 4))
        for j, ref in enumerate(refs):
            xs, ys = [], []
            for i, name in enumerate(names):
                for r in rows:
                    if (r["ref_level"] == ref
                            and "+".join(map(str, r["score_levels"])) == name):
                        xs.append(i + (j - (len(refs) - 1) / 2) * width)
                        ys.append(r["pro"])
            ax.bar(xs, ys, width, label=f"ref level {ref}")
        ax.set_xticks(range(len(names)), names)
        ax.set(xlabel="scored levels", ylabel="PRO (FPR <= 0.3)",
               title=f"SGFR Fig. 7 on {split.name}")
        ax.set_ylim(max(0.0, min(r["pro"] for r in rows) - 0.1), 1.0)
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        save_figure(fig, args.out / f"fig7_{split.name}.png")
        plt.close(fig)
    return {"base_config": dataclasses.asdict(base), "num_train": n_train,
            "rows": rows}


def part_fewshot(split: Split, args) -> dict:
    base = BASE[split.name]
    n_train = len(split.train[base.ref_level])
    sizes = FEWSHOT_QUICK if args.quick else FEWSHOT[split.name]
    sizes = sorted({min(n, n_train) for n in sizes})
    rows = []
    for n in sizes:
        s_ref = min(base.s_ref, n)
        config = dataclasses.replace(base, s_ref=s_ref, s=min(base.s, s_ref))
        fitted = sgfr.fit(config, _levels(split.train, config, n))
        for sampling in ("subspace", "none"):
            row = {"num_train": n, "s_ref": s_ref, "s": config.s, "sampling": sampling,
                   **evaluate_state(_with(fitted, sampling=sampling), split,
                                    args.batch_size)}
            rows.append(row)
            print(row, flush=True)

    print(f"\n### Few-shot on {split.name}: the first N training images (score levels "
          f"{base.score_levels}, ref level {base.ref_level}, s_ref = min({base.s_ref},"
          f" N), s = min({base.s}, s_ref))\n")
    print(f"| N | s_ref | s | sampling | {METRIC_HEADER} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['num_train']} | {r['s_ref']} | {r['s']} | {r['sampling']} | "
              f"{_metric_cells(r)} |")

    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for sampling, marker in (("subspace", "o"), ("none", "^")):
            sel = [r for r in rows if r["sampling"] == sampling]
            x = [r["num_train"] for r in sel]
            axes[0].plot(x, [r["pro"] for r in sel], marker + "-", label=sampling)
            axes[1].plot(x, [r["image_auroc"] for r in sel], marker + "-",
                         label=sampling)
        axes[0].set(ylabel="PRO (FPR <= 0.3)")
        axes[1].set(ylabel="image AUROC")
        for ax in axes:
            ax.set(xlabel="nominal training images N", xscale="log")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.suptitle(f"SGFR few-shot on {split.name}")
        save_figure(fig, args.out / f"fewshot_{split.name}.png")
        plt.close(fig)
    return {"base_config": dataclasses.asdict(base), "rows": rows}


def part_table5(name: str, args) -> dict:
    train_ds, test_ds = _datasets(name, args)
    n_train = min(args.t5_train, len(train_ds))
    train_ds = dataclasses.replace(train_ds, samples=train_ds.samples[:n_train])
    index = np.linspace(0, len(test_ds) - 1, min(args.t5_test, len(test_ds)))
    test_ds = dataclasses.replace(
        test_ds, samples=tuple(test_ds.samples[i] for i in index.round().astype(int)))
    config = sgfr.SGFRConfig()  # the paper's MVTec setting
    names = args.backbones or (T5_QUICK_BACKBONES if args.quick
                               else bb.list_backbones())
    rows = []
    for backbone in names:
        row = {"backbone": backbone, "num_train": n_train, "num_test": len(test_ds)}
        try:
            if backbone == BACKBONE:
                variables, row["weights"] = bb.load_pretrained(backbone), "ImageNet"
            else:
                variables = bb.init_variables(backbone, key=jax.random.key(0),
                                              image_size=64)
                row["weights"] = "random"
            start = time.perf_counter()
            detector = pipeline.fit_detector(
                "sgfr", train_ds.batches(args.batch_size, num_workers=args.workers),
                backbone=backbone, variables=variables, config=config,
                key=jax.random.key(args.seed), progress=False)
            row["fit_seconds"] = time.perf_counter() - start
            for sampling in ("subspace", "none"):
                det = detector.replace(state=_with(detector.state, sampling=sampling))
                seconds = min(  # best of T5_REPEATS passes: a busy CPU adds noise
                    pipeline.predict(
                        det, test_ds.batches(args.batch_size, num_workers=args.workers),
                        progress=False)[2]
                    for _ in range(T5_REPEATS))
                row[f"{sampling}_ms"] = seconds * 1e3
            # The backbone alone (same batches), to split the total.
            times = []
            for _ in range(T5_REPEATS):
                for batch in test_ds.batches(args.batch_size,
                                             num_workers=args.workers):
                    images = np.asarray(batch.images)
                    if len(images) < args.batch_size and times:
                        break  # a smaller last batch would recompile
                    start = time.perf_counter()
                    jax.block_until_ready(
                        embed_images("sgfr", config, backbone, variables, images))
                    times.append((time.perf_counter() - start) / len(images))
            # The first call compiles; the best batch, as for the totals.
            row["backbone_ms"] = min(times[1:] or times) * 1e3
        except (ValueError, RuntimeError, MemoryError) as err:
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        rows.append(row)
        print(row, flush=True)

    print(f"\n### Table V on {name}: time per image, full pipeline (fit_detector + "
          f"predict; {n_train} train, {len(test_ds)} test images, score levels 2+3, "
          "ref 4, s_ref 40, s 17)\n")
    print("| backbone | weights | backbone ms/img | w/o sampling ms/img | w/ sampling "
          "ms/img | speed-up | fit s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['backbone']} | {r.get('weights', '-')} | {r['error']} "
                  "| | | | |")
            continue
        print(f"| {r['backbone']} | {r['weights']} | {r['backbone_ms']:.1f} | "
              f"{r['none_ms']:.1f} | {r['subspace_ms']:.1f} | "
              f"{r['none_ms'] / r['subspace_ms']:.2f}x | {r['fit_seconds']:.0f} |")

    plt = pyplot()
    ok = [r for r in rows if "error" not in r]
    if plt is not None and ok:
        fig, ax = plt.subplots(figsize=(1.1 * len(ok) + 3, 4))
        x = np.arange(len(ok))
        ax.bar(x - 0.2, [r["none_ms"] for r in ok], 0.4, label="w/o sampling")
        ax.bar(x + 0.2, [r["subspace_ms"] for r in ok], 0.4, label="w/ sampling")
        ax.plot(x, [r["backbone_ms"] for r in ok], "k_", markersize=20,
                label="backbone alone")
        ax.set_xticks(x, [r["backbone"] for r in ok], rotation=30, ha="right")
        ax.set(ylabel="ms per image (full pipeline)",
               title=f"SGFR Table V timing on {name} ({jax.default_backend()})")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        save_figure(fig, args.out / f"table5_{name}.png")
        plt.close(fig)
    return {"config": dataclasses.asdict(config), "rows": rows}


# --------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join("..", "shared", "data", "mtd"))
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts out of {', '.join(PARTS)}")
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help="comma-separated: mtd, builtin (table5 runs on the first)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--t5-train", type=int, default=100,
                        help="table5: training images (quick: 40)")
    parser.add_argument("--t5-test", type=int, default=32,
                        help="table5: test images timed (quick: 16)")
    parser.add_argument("--backbones", default="",
                        help="table5: comma-separated backbones (default: all; "
                             "quick: resnet18, efficientnet_lite0)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sets and sweeps (a few minutes on 2 CPU cores)")
    parser.add_argument("--out", default=os.path.join("experiments", "results", "sgfr"))
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for p in parts:
        if p not in PARTS:
            parser.error(f"unknown part {p!r}; valid parts: {', '.join(PARTS)}")
    for d in names:
        if d not in DATASETS:
            parser.error(f"unknown data set {d!r}; valid: {', '.join(DATASETS)}")
    args.backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    for b in args.backbones:
        bb.registry.check_name("sgfr.py", b)
    if args.quick:
        args.t5_train, args.t5_test = min(args.t5_train, 40), min(args.t5_test, 16)
    args.out = Path(args.out) / "quick" if args.quick else Path(args.out)
    meta = {"size": args.size, "backbone": BACKBONE, "quick": args.quick,
            "split_seed": 0, "jax_backend": jax.default_backend(),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}

    started = time.perf_counter()
    feature_parts = [p for p in parts if p != "table5"]
    if feature_parts:
        variables = bb.load_pretrained(BACKBONE)
        for name in names:
            split = load_split(name, variables, args)
            for part in feature_parts:
                start = time.perf_counter()
                result = globals()[f"part_{part}"](split, args)
                result.update(meta, dataset=name, part=part,
                              backbone_ms=split.backbone_seconds * 1e3,
                              num_test=len(split.labels),
                              num_defective=int(split.labels.sum()),
                              seconds=time.perf_counter() - start)
                write_json(str(args.out / f"{part}_{name}.json"), result)
            del split
    if "table5" in parts and names:
        start = time.perf_counter()
        result = part_table5(names[0], args)
        result.update(meta, dataset=names[0], part="table5",
                      seconds=time.perf_counter() - start)
        write_json(str(args.out / f"table5_{names[0]}.json"), result)
    print(f"\ndone in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
