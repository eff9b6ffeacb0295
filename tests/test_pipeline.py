"""Tests of jad.pipeline (Detector, fit, maps, save/load), jad.evaluation and the CLI.

All tests use ``efficientnet_lite0`` with its real ImageNet weights
(``load_pretrained``, converted from the installed package into a temporary cache in
about a second; ``init_variables`` takes far longer on a loaded CPU because Flax
initialises op by op) and the built-in ``brick`` data: 64x64 images for the fast
tests, 128x128 for the gradient and end-to-end tests. Expensive things are
module-scoped fixtures, and every call uses batches of 2 (fast tests) so one
compiled program serves many tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jad.backbones as bb
import jad.data
from jad import evaluation, pipeline
from jad.detector import embed_images
from jad.errors import DatasetError
from jad.methods import PaDiMConfig, PatchCoreConfig, patchcore

BACKBONE = "efficientnet_lite0"
METHODS = ("patchcore", "padim")
SMALL = 64  # fast tests
SIZE = 128  # real-weight tests


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """A private JAD_CACHE: converted weights go to ``<root>/weights``."""
    return tmp_path_factory.mktemp("jad_cache")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return jad.data.builtin_dataset(
        root=tmp_path_factory.mktemp("builtin"),
        category="brick",
        size=SIZE,
        num_train=20,
        num_test_good=6,
        num_test_defect=4,
    )


def _split(root, split, size):
    return jad.data.load_dataset(
        "mvtec", root, "brick", split, transform=jad.data.Transform(size=size)
    )


@pytest.fixture(scope="module")
def real_vars(cache_root):
    return bb.load_pretrained(
        BACKBONE, cache_dir=cache_root / "weights", progress=False
    )


@pytest.fixture(scope="module")
def small_train(data_root):
    train = _split(data_root, "train", SMALL)
    return np.stack([train[i].image for i in range(6)])


@pytest.fixture(scope="module")
def small_detectors(real_vars, small_train):
    return {
        method: pipeline.fit_detector(
            method,
            [small_train[:2], small_train[2:4], small_train[4:]],
            backbone=BACKBONE,
            variables=real_vars,
            key=jax.random.key(1),
            progress=False,
        )
        for method in METHODS
    }


@pytest.fixture(scope="module")
def real_detectors(real_vars, data_root):
    train = _split(data_root, "train", SIZE)
    return {
        method: pipeline.fit_detector(
            method,
            train.batches(10),
            backbone=BACKBONE,
            variables=real_vars,
            key=jax.random.key(0),
            progress=False,
        )
        for method in METHODS
    }


# ------------------------------------------------------------- fit, maps, jit, grad


@pytest.mark.parametrize("method", METHODS)
def test_fit_and_maps_shapes(small_detectors, small_train, method):
    detector = small_detectors[method]
    assert detector.method == method and detector.backbone == BACKBONE
    assert detector.image_size == (SMALL, SMALL)
    assert isinstance(
        detector.config, PatchCoreConfig if method == "patchcore" else PaDiMConfig
    )
    maps, scores = pipeline.anomaly_maps(detector, small_train[:2])
    assert maps.shape == (2, SMALL, SMALL) and scores.shape == (2,)
    assert maps.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(maps))) and np.all(np.isfinite(scores))


def test_patchcore_bank_size_follows_the_ratio(small_detectors):
    # 6 images, level 2 of a 64x64 image: 8x8 patches each; ratio 0.1.
    bank = small_detectors["patchcore"].state.memory_bank
    assert bank.shape == (int(6 * 8 * 8 * 0.1), 1024)


@pytest.mark.parametrize("method", METHODS)
def test_anomaly_maps_jit_equals_nojit(small_detectors, small_train, method):
    detector = small_detectors[method]
    images = jnp.asarray(small_train[:2])
    maps, scores = pipeline.anomaly_maps(detector, images)
    maps_j, scores_j = jax.jit(pipeline.anomaly_maps)(detector, images)
    # Same computation compiled in two programs: float32 rounding only.
    np.testing.assert_allclose(
        np.asarray(maps_j), np.asarray(maps), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(scores_j), np.asarray(scores), rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_predict_matches_anomaly_maps(small_detectors, small_train, method):
    detector = small_detectors[method]
    maps, scores, seconds = pipeline.predict(
        detector, [small_train[:2], small_train[2:4]], progress=False
    )
    ref_maps, ref_scores = jax.tree_util.tree_map(
        lambda *a: np.concatenate(a),
        pipeline.anomaly_maps(detector, small_train[:2]),
        pipeline.anomaly_maps(detector, small_train[2:4]),
    )
    assert maps.shape == (4, SMALL, SMALL) and maps.dtype == np.float32
    np.testing.assert_array_equal(maps, ref_maps)
    np.testing.assert_array_equal(scores, ref_scores)
    assert seconds > 0


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(
    small_detectors, small_train, real_vars, tmp_path, method
):
    detector = small_detectors[method]
    folder = tmp_path / "detector"
    pipeline.save_detector(detector, folder, metadata={"note": [1, 2]})
    with pytest.raises(ValueError, match="already holds a saved detector.*overwrite"):
        pipeline.save_detector(detector, folder, metadata={"note": [3]})
    assert pipeline.read_metadata(folder) == {"note": [1, 2]}
    pipeline.save_detector(detector, folder, metadata={"note": [3]}, overwrite=True)
    assert pipeline.read_metadata(folder) == {"note": [3]}
    assert not [p for p in tmp_path.iterdir() if p.name != "detector"]  # no debris
    # A folder that is neither empty nor a saved detector is never replaced.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a saved detector"):
        pipeline.save_detector(detector, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    pipeline.save_detector(detector, empty)
    assert (empty / "detector.json").is_file()
    for extra in (precious, empty):
        shutil.rmtree(extra)
    loaded = pipeline.load_detector(folder, variables=real_vars)
    assert (loaded.method, loaded.backbone, loaded.image_size, loaded.config) == (
        detector.method,
        detector.backbone,
        detector.image_size,
        detector.config,
    )
    for a, b in zip(
        jax.tree_util.tree_leaves(loaded.state),
        jax.tree_util.tree_leaves(detector.state),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    maps, scores = pipeline.anomaly_maps(detector, small_train[:2])
    maps2, scores2 = pipeline.anomaly_maps(loaded, small_train[:2])
    np.testing.assert_array_equal(np.asarray(maps2), np.asarray(maps))
    np.testing.assert_array_equal(np.asarray(scores2), np.asarray(scores))


def test_load_refuses_other_backbone_weights(small_detectors, real_vars, tmp_path):
    detector = small_detectors["padim"]
    folder = pipeline.save_detector(detector, tmp_path / "d")
    other = jax.tree_util.tree_map(lambda x: x * 1.01, real_vars)
    with pytest.raises(ValueError, match=r"not those .*detector.json was fitted"):
        pipeline.load_detector(folder, variables=other)
    loaded = pipeline.load_detector(folder, variables=other, check_weights=False)
    assert loaded.variables is other
    # folders saved before the digest was recorded load without the check
    meta = _as_format_1(folder)
    assert meta.pop("weights_sha256") == bb.variables_digest(real_vars)
    (folder / "detector.json").write_text(json.dumps(meta))
    assert pipeline.load_detector(folder, variables=other).variables is other


def _as_format_1(folder):
    """Rewrites a saved detector.json as jad 0.1 wrote it (no digests)."""
    meta = json.loads((folder / "detector.json").read_text())
    del meta["files"], meta["sha256"], meta["transform"], meta["num_train"]
    meta["format_version"] = 1
    (folder / "detector.json").write_text(json.dumps(meta))
    return meta


def test_load_refuses_a_state_of_another_method(small_detectors, real_vars, tmp_path):
    folder = pipeline.save_detector(small_detectors["padim"], tmp_path / "d")
    meta = _as_format_1(folder)
    meta["method"] = "patchcore"
    meta["config"] = {}
    (folder / "detector.json").write_text(json.dumps(meta))
    match = r"does not fit the expected PatchCoreState: extra: mean"
    with pytest.raises(ValueError, match=match):
        pipeline.load_detector(folder, variables=real_vars)


def test_variables_of_another_backbone_are_a_value_error(small_train, small_detectors):
    other = bb.init_variables("resnet18", key=jax.random.key(0))
    with pytest.raises(ValueError, match="do not fit 'efficientnet_lite0'"):
        pipeline.fit_detector(
            "padim",
            [small_train[:2]],
            backbone=BACKBONE,
            variables=other,
            key=jax.random.key(0),
            progress=False,
        )
    detector = small_detectors["padim"].replace(variables=other)
    with pytest.raises(ValueError, match="anomaly_maps: the backbone variables"):
        pipeline.anomaly_maps(detector, small_train[:1])


def test_save_load_anomalib_preset(small_detectors, real_vars, tmp_path, rng):
    # The anomalib config (projection_dim None, nearest upsampling ...) survives the
    # JSON round trip; the state is built by hand (no second fit needed).
    config = PatchCoreConfig.anomalib(coreset_ratio=0.05, levels=[2, 3])
    detector = small_detectors["patchcore"]
    # the bank's size follows from the number of training images (the template)
    one = np.zeros((1, *detector.image_size, 3), np.float32)
    emb = embed_images("patchcore", config, BACKBONE, real_vars, one)
    template = patchcore.init(config, emb, num_images=detector.num_train)
    size = template.memory_bank.shape[0]
    bank = rng.standard_normal((size, 152)).astype(np.float32)
    detector = detector.replace(
        state=patchcore.PatchCoreState(memory_bank=jnp.asarray(bank), config=config)
    )
    pipeline.save_detector(detector, tmp_path / "d")
    loaded = pipeline.load_detector(tmp_path / "d", variables=real_vars)
    assert loaded.config == config and loaded.config.projection_dim is None
    np.testing.assert_array_equal(np.asarray(loaded.state.memory_bank), bank)


def _white_square(image, top, left, side):
    white = (1.0 - jad.data.IMAGENET_MEAN) / jad.data.IMAGENET_STD
    out = image.copy()
    out[top : top + side, left : left + side] = white
    return out


@pytest.mark.parametrize("method", METHODS)
def test_image_score_gradient_is_largest_around_an_anomaly(
    real_detectors, data_root, method
):
    detector = real_detectors[method]
    test = _split(data_root, "test", SIZE)
    good = next(test[i].image for i in range(len(test)) if test[i].label == 0)
    side = 16
    rows, cols = np.mgrid[:SIZE, :SIZE]
    score_grad = jax.jit(
        jax.grad(lambda x: pipeline.anomaly_maps(detector, x)[1].sum())
    )
    for top, left in [(40, 70), (80, 20)]:
        image = _white_square(good, top, left, side)
        grad = np.asarray(score_grad(jnp.asarray(image[None])))[0]
        assert np.all(np.isfinite(grad))
        magnitude = np.abs(grad).sum(axis=-1)
        # Chebyshev distance to the square's centre
        dist = np.maximum(np.abs(rows - top - side / 2), np.abs(cols - left - side / 2))
        near = magnitude[dist <= side].mean()
        far = magnitude[dist >= 40].mean()
        # measured 17-33x (PaDiM), 45-68x (PatchCore); 5x leaves a wide margin
        assert near > 5 * far, (method, top, left, near / far)
        peak = np.unravel_index(np.argmax(magnitude), magnitude.shape)
        assert dist[peak] <= side + 4, (method, top, left, peak)  # measured <= 6


# -------------------------------------------------------------------- evaluation


def test_evaluate_on_builtin_equals_jad_metrics_and_detects_the_defects(
    small_detectors, data_root
):
    test = _split(data_root, "test", SMALL)
    result = evaluation.evaluate(
        small_detectors["padim"], test, batch_size=2, progress=False
    )
    m = result.metrics
    assert m["num_images"] == len(test) == 18 and m["num_anomalous"] == 12
    assert m["seconds_per_image"] > 0
    assert result.maps.shape == result.masks.shape == (18, SMALL, SMALL)
    assert result.scores.shape == result.labels.shape == (18,)
    assert len(result.paths) == 18
    # the returned ground truth is the split's, image by image
    samples = [test[i] for i in range(len(test))]
    np.testing.assert_array_equal(result.labels, [s.label for s in samples])
    np.testing.assert_array_equal(result.masks, np.stack([s.mask for s in samples]))
    # the returned metrics are jad.metrics' on the returned arrays (same function,
    # same input: equal to the bit)
    assert m["image_auroc"] == jad.metrics.auroc(result.scores, result.labels)
    assert m["pixel_auroc"] == jad.metrics.auroc(result.maps, result.masks)
    assert m["pixel_ap"] == jad.metrics.average_precision(result.maps, result.masks)
    assert m["pro"] == jad.metrics.pro(result.maps, result.masks, max_fpr=0.3)
    # The built-in defects are obvious: far better than chance even for PaDiM fitted
    # on 6 images of 64 x 64. Measured: image AUROC 0.93 (67 of the 72 anomalous /
    # normal pairs ordered), pixel AUROC 0.97, PRO 0.84.
    assert m["image_auroc"] >= 0.8
    assert m["pixel_auroc"] >= 0.9


# ---------------------------------------------------------------------- bad input


def test_bad_input(small_detectors, small_train, real_vars, tmp_path):
    key = jax.random.key(0)
    batches = [small_train[:2]]
    with pytest.raises(ValueError, match="unknown method 'spade'.*padim.*patchcore"):
        pipeline.fit_detector(
            "spade", batches, backbone=BACKBONE, variables=real_vars, key=key
        )
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'.*resnet18"):
        pipeline.fit_detector(
            "padim", batches, backbone="vgg16", variables=real_vars, key=key
        )
    with pytest.raises(TypeError, match="config must be a PatchCoreConfig"):
        pipeline.fit_detector(
            "patchcore",
            batches,
            backbone=BACKBONE,
            variables=real_vars,
            config=PaDiMConfig(),
            key=key,
        )
    def untouched():
        raise AssertionError("read before the levels were checked")
        yield

    with pytest.raises(ValueError, match=r"config.levels \(2, 9\) are not backbone"):
        pipeline.fit_detector(
            "padim", untouched(), backbone=BACKBONE, variables=real_vars,
            config=PaDiMConfig(levels=(2, 9)), key=key,
        )
    with pytest.raises(ValueError, match="training set is empty"):
        pipeline.fit_detector(
            "patchcore",
            [],
            backbone=BACKBONE,
            variables=real_vars,
            key=key,
            progress=False,
        )
    with pytest.raises(ValueError, match="fitted on 64x64"):
        pipeline.fit_detector(
            "padim",
            [small_train[:2], small_train[:2, :32, :32]],
            backbone=BACKBONE,
            variables=real_vars,
            key=key,
            progress=False,
        )
    with pytest.raises(ValueError, match=r"images must be \(B, H, W, 3\)"):
        pipeline.fit_detector(
            "padim",
            [small_train[0]],
            backbone=BACKBONE,
            variables=real_vars,
            key=key,
            progress=False,
        )
    detector = small_detectors["padim"]
    other = jax.image.resize(small_train[:1], (1, 96, 96, 3), "bilinear")
    with pytest.raises(
        ValueError,
        match=r"fitted on 64x64 images; got 96x96.*"
        r"Resize",
    ):
        pipeline.anomaly_maps(detector, other)
    with pytest.raises(ValueError, match="fitted on 64x64"):  # also under a jit
        jax.jit(pipeline.anomaly_maps)(detector, other)
    with pytest.raises(ValueError, match="fitted on 64x64"):
        pipeline.predict(detector, [np.asarray(other)], progress=False)
    with pytest.raises(TypeError, match="images must be float"):
        pipeline.anomaly_maps(detector, (small_train[:1] * 50).astype(np.uint8))
    with pytest.raises(ValueError, match="no images"):
        pipeline.predict(detector, [], progress=False)
    with pytest.raises(ValueError, match="not a saved detector"):
        pipeline.load_detector(tmp_path, variables=real_vars)
    (tmp_path / "detector.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        pipeline.load_detector(tmp_path, variables=real_vars)
    (tmp_path / "detector.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ValueError, match="corrupt"):
        pipeline.read_metadata(tmp_path)
    folder = pipeline.save_detector(detector, tmp_path / "future")
    meta = json.loads((folder / "detector.json").read_text())
    meta["format_version"] = 99
    (folder / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format 99"):
        pipeline.load_detector(folder, variables=real_vars)


# --------------------------------------------------------------------- end to end


def _cli(args, cache_root, cwd):
    env = dict(os.environ, JAD_CACHE=str(cache_root))
    return subprocess.run(
        [sys.executable, "-m", "jad.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
        timeout=600,
    )


@pytest.mark.slow
def test_end_to_end_builtin_brick_api_and_cli(
    real_detectors, data_root, cache_root, tmp_path
):
    test = _split(data_root, "test", SIZE)
    # Measured at 128 px (20 train, 18 test images): PatchCore image/pixel AUROC
    # 1.00 / 0.993, PaDiM 0.986 / 0.993 (the 256-px demo gets ~0.99 pixel AUROC).
    for method in METHODS:
        m = evaluation.evaluate(
            real_detectors[method], test, batch_size=9, progress=False
        ).metrics
        assert m["pixel_auroc"] > 0.9, (method, m)
        assert m["image_auroc"] > 0.8, (method, m)
        assert m["pro"] > 0.7, (method, m)

    # The README's CLI flow with relative paths, run from another working directory.
    work = tmp_path / "work"
    work.mkdir()
    root = os.path.relpath(data_root, work)
    fit = _cli(
        ["fit", "--method", "padim", "--kind", "mvtec", "--data", root,
         "--category", "brick", "--out", "runs/brick", "--size", str(SIZE)],
        cache_root, work,
    )
    assert fit.returncode == 0, fit.stderr
    state = work / "runs" / "brick"
    assert (state / "detector.json").is_file()
    calibration = pipeline.read_metadata(state)["calibration"]
    # --holdout 0.1 of 20 training images: 2 held out, the fit on 18
    assert calibration["num_images"] == 2 and calibration["quantile"] == 1.0
    assert pipeline.read_metadata(state)["num_train"] == 18
    assert "threshold" in fit.stdout
    ev = _cli(
        ["evaluate", "--state", "runs/brick", "--data", root, "--category", "brick",
         "--json", "metrics.json"],
        cache_root, work,
    )
    assert ev.returncode == 0, ev.stderr
    row = json.loads((work / "metrics.json").read_text())
    for name in ("image_auroc", "pixel_auroc", "pro", "pixel_ap", "seconds_per_image"):
        assert isinstance(row[name], float), name
    assert row["method"] == "padim" and row["pixel_auroc"] > 0.9, row
    # Without data options, evaluate reads the fit's data, kind and category.
    again = _cli(
        ["evaluate", "--state", "runs/brick", "--json", "again.json"], cache_root, work
    )
    assert again.returncode == 0, again.stderr
    again_row = json.loads((work / "again.json").read_text())
    for name in ("image_auroc", "pixel_auroc", "pro", "pixel_ap"):
        assert again_row[name] == row[name], name
    test_full = jad.data.load_dataset("mvtec", data_root, "brick", "test")
    defective = next(p for p in test_full.samples if p.label == 1).image_path
    good = next(p for p in test_full.samples if p.label == 0).image_path
    images = [os.path.relpath(p, work) for p in (defective, good)]
    pred = _cli(
        ["predict", "--state", "runs/brick", *images, "--out", "predicted"],
        cache_root, work,
    )
    assert pred.returncode == 0, pred.stderr
    report = json.loads((work / "predicted" / "predictions.json").read_text())
    assert report["threshold"] == calibration["threshold"]
    assert list(report["images"]) == images
    # The cut-paste defect is above the threshold and above the good image (with
    # 2 held-out images of 20 the threshold is rough: the good one may pass it).
    defect_row, good_row = (report["images"][p] for p in images)
    assert defect_row["anomalous"] is True, report
    assert defect_row["score"] > good_row["score"], report
    stem = "000_" + os.path.splitext(os.path.basename(defective))[0]  # 2 x 000.png
    amap = np.load(work / "predicted" / f"{stem}_map.npy")
    from PIL import Image

    assert amap.shape == Image.open(defective).size[::-1]  # the file's own size
    assert (work / "predicted" / f"{stem}_overlay.png").is_file()
    # nothing was written outside the working folder
    assert sorted(p.name for p in work.iterdir()) == [
        "again.json", "metrics.json", "predicted", "runs"]
    assert not (work / "results").exists()


# --------------------------------------------- non-finite input, integrity, schema


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_images_are_refused_and_never_scored_normal(
    small_detectors, small_train, real_vars, method
):
    detector = small_detectors[method]
    nan = np.full_like(small_train[:2], np.nan)
    one_inf = small_train[:2].copy()
    one_inf[1, 5, 7, 2] = np.inf
    for images in (nan, one_inf):
        with pytest.raises(ValueError, match="anomaly_maps: images contains NaN"):
            pipeline.anomaly_maps(detector, images)
        with pytest.raises(ValueError, match="predict: images contains NaN"):
            pipeline.predict(detector, [small_train[:2], images], progress=False)
        with pytest.raises(ValueError, match="fit_detector: images contains NaN"):
            pipeline.fit_detector(
                method, [small_train[:2], images], backbone=BACKBONE,
                variables=real_vars, key=jax.random.key(0), progress=False,
            )
    # Under a caller's trace nothing can be refused: NaN propagates to the maps
    # and scores (PaDiM used to turn it into the distance 0 of a normal image).
    maps, scores = jax.jit(pipeline.anomaly_maps)(detector, nan)
    assert np.isnan(np.asarray(scores)).all()
    assert np.isnan(np.asarray(maps)).all()


def test_predict_refuses_non_finite_maps_of_finite_images(small_detectors, small_train):
    # Features that overflow (a state that amplifies them to inf) are not scores.
    detector = small_detectors["padim"]
    state = detector.state.replace(whitening=detector.state.whitening * 1e30)
    with pytest.raises(ValueError, match="predict: the anomaly maps of batch 0"):
        pipeline.predict(detector.replace(state=state), [small_train[:2]],
                         progress=False)


@pytest.fixture(scope="module")
def saved_padim(small_detectors, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "padim"
    return pipeline.save_detector(small_detectors["padim"], folder,
                                  metadata={"note": "x"})


def _copy(folder, tmp_path):
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _largest_state_file(folder):
    return max((p for p in (folder / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("method", METHODS)
def test_a_flipped_or_truncated_state_file_is_refused_by_name(
    small_detectors, real_vars, tmp_path, method
):
    folder = pipeline.save_detector(small_detectors[method], tmp_path / "d")
    meta = json.loads((folder / "detector.json").read_text())
    assert meta["format_version"] == 3 and meta["files"]
    victim = _largest_state_file(folder)
    original = victim.read_bytes()
    flipped = bytearray(original)
    middle = len(flipped) // 2
    flipped[middle : middle + 64] = bytes(b ^ 0xFF for b in flipped[middle:middle + 64])
    for damaged in (bytes(flipped), original[: len(original) // 2]):
        victim.write_bytes(damaged)
        with pytest.raises(DatasetError, match=f"{victim.name} does not match"):
            pipeline.load_detector(folder, variables=real_vars)
    victim.write_bytes(original)
    assert pipeline.load_detector(folder, variables=real_vars).method == method
    victim.unlink()
    with pytest.raises(DatasetError, match=f"{victim.name} is missing"):
        pipeline.load_detector(folder, variables=real_vars)


def _edit(key, value):
    def edit(meta):
        if value is _DELETE:
            del meta[key]
        else:
            meta[key] = value
    return edit


def _edit_config(key, value):
    def edit(meta):
        meta["config"][key] = value
    return edit


_DELETE = object()
_SCHEMA_CASES = {
    "config missing": (_edit("config", _DELETE), r"field\(s\) 'config' missing"),
    "config a list": (_edit("config", [1, 2]), "field 'config' must be an object"),
    "version a string": (_edit("format_version", "2"), "'format_version' must be"),
    "version null": (_edit("format_version", None), "'format_version' must be"),
    "version bool": (_edit("format_version", True), "'format_version' must be"),
    "image_size null": (_edit("image_size", None), "'image_size' must be"),
    "image_size zero": (_edit("image_size", [0, 0]), "'image_size' must be"),
    "image_size string": (_edit("image_size", "64"), "'image_size' must be"),
    "method unknown": (_edit("method", "spade"), "'method' must be one of"),
    "backbone a number": (_edit("backbone", 3), "'backbone' must be one of"),
    "weights a number": (_edit("weights", 3), "'weights' must be null or a path"),
    "unknown field": (_edit("color", "red"), "unknown field.*'color'"),
    "files mangled": (_edit("files", {"x": "0"}), "'files' must be"),
    "digests missing": (_edit("sha256", _DELETE), r"field\(s\) 'sha256' missing"),
    "levels edited": (_edit_config("levels", [1]), "'config' does not match the dig"),
    "sigma edited": (_edit_config("sigma", 2.0), "'config' does not match the dig"),
    "levels a string": (_edit_config("levels", "12"), "field 'config': .*levels"),
    "config field unknown": (_edit_config("alpha", 1), "unknown PaDiMConfig field"),
    "metadata edited": (_edit("metadata", {"note": "y"}), "'metadata' does not match"),
    "size edited": (_edit("image_size", [64, 96]), "'image_size' does not match"),
    "version downgraded": (_edit("format_version", 1),
                           "'format_version' is 1 but the file has the digests"),
    "version 2 with format 3 fields": (_edit("format_version", 2),
                                       "unknown field.*'num_train'"),
    "num_train zero": (_edit("num_train", 0), "'num_train' must be null or a pos"),
    "num_train edited": (_edit("num_train", 7), "'num_train' does not match"),
    "num_train missing": (_edit("num_train", _DELETE), r"'num_train' missing"),
    "transform mangled": (_edit("transform", [1]), "'transform' must be an object"),
    "transform bad field": (_edit("transform", {"size": -1}), "field 'transform'"),
    "transform edited": (_edit("transform", {"size": 32}), "'transform' does not"),
}


@pytest.mark.parametrize("case", sorted(_SCHEMA_CASES))
def test_detector_json_is_validated_field_by_field(
    saved_padim, real_vars, tmp_path, case
):
    edit, message = _SCHEMA_CASES[case]
    folder = _copy(saved_padim, tmp_path)
    meta = json.loads((folder / "detector.json").read_text())
    edit(meta)
    (folder / "detector.json").write_text(json.dumps(meta))
    match = rf"detector\.json.*{message}"
    with pytest.raises(DatasetError, match=match):
        pipeline.read_metadata(folder)
    with pytest.raises(DatasetError, match=match):
        pipeline.load_detector(folder, variables=real_vars)
    # The CLI: one line on stderr naming the file, exit status 2.
    from jad.cli.main import main

    image = tmp_path / "x.png"
    image.write_bytes(b"")  # exists: predict reads the detector first
    for argv in (["evaluate", "--state", str(folder)],
                 ["predict", "--state", str(folder), str(image),
                  "--out", str(tmp_path / "out")]):
        assert main(argv) == 2


def test_cli_reports_a_bad_detector_json_in_one_line(saved_padim, tmp_path, capsys):
    from jad.cli.main import main

    folder = _copy(saved_padim, tmp_path)
    meta = json.loads((folder / "detector.json").read_text())
    meta["image_size"] = None
    (folder / "detector.json").write_text(json.dumps(meta))
    assert main(["evaluate", "--state", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "detector.json: field 'image_size'" in err[0], err


@pytest.mark.parametrize("text", ["[]", "null", '"x"', "{not json", "\xff\xfe"])
def test_detector_json_that_is_not_an_object_is_refused(
    saved_padim, tmp_path, text
):
    folder = _copy(saved_padim, tmp_path)
    (folder / "detector.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(DatasetError, match=r"detector\.json is corrupt"):
        pipeline.read_metadata(folder)


def test_a_format_2_folder_loads_with_its_transform_from_the_metadata(
    small_detectors, real_vars, tmp_path
):
    detector = small_detectors["padim"]
    folder = pipeline.save_detector(
        detector, tmp_path / "d", metadata={"transform": {"size": 64, "crop": None}}
    )
    meta = json.loads((folder / "detector.json").read_text())
    del meta["transform"], meta["num_train"]
    meta["format_version"] = 2
    meta["sha256"] = pipeline._seal(meta)
    (folder / "detector.json").write_text(json.dumps(meta))
    loaded = pipeline.load_detector(folder, variables=real_vars)
    assert loaded.transform == jad.data.Transform(size=64)
    images = np.zeros((1, *detector.image_size, 3), np.float32)
    np.testing.assert_array_equal(
        np.asarray(pipeline.anomaly_maps(loaded, images)[0]),
        np.asarray(pipeline.anomaly_maps(detector, images)[0]),
    )


def test_format_1_config_that_does_not_fit_the_state_is_refused(
    saved_padim, real_vars, tmp_path
):
    # jad 0.1 folders have no digests: the config is traced against the state.
    folder = _copy(saved_padim, tmp_path)
    meta = _as_format_1(folder)
    assert pipeline.load_detector(folder, variables=real_vars).method == "padim"
    meta["config"]["n_features"] = 7
    (folder / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="do not fit the saved state"):
        pipeline.load_detector(folder, variables=real_vars)


def test_save_and_load_with_relative_paths(
    saved_padim, small_detectors, real_vars, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    folder = pipeline.save_detector(small_detectors["padim"], "runs/bottle")
    assert folder == tmp_path / "runs" / "bottle"
    loaded = pipeline.load_detector("runs/bottle", variables=real_vars)
    assert pipeline.read_metadata("runs/bottle") == {}
    np.testing.assert_array_equal(np.asarray(loaded.state.mean),
                                  np.asarray(small_detectors["padim"].state.mean))


def test_save_refuses_a_non_finite_state_and_unserialisable_metadata(
    small_detectors, tmp_path
):
    detector = small_detectors["padim"]
    bad = detector.replace(state=detector.state.replace(
        mean=detector.state.mean.at[0, 0, 0].set(jnp.nan)))
    with pytest.raises(ValueError, match="save_detector: the state's mean contains"):
        pipeline.save_detector(bad, tmp_path / "d")
    with pytest.raises(ValueError, match="metadata must be JSON-serialisable"):
        pipeline.save_detector(detector, tmp_path / "d", metadata={"x": object()})
    assert not (tmp_path / "d").exists()


_SAVER = """
import sys
from jad import pipeline
a, b, target = sys.argv[1:4]
detectors = [pipeline.load_detector(a), pipeline.load_detector(b)]
print("ready", flush=True)
i = 0
while True:
    pipeline.save_detector(detectors[i % 2], target, metadata={"tag": i % 2},
                           overwrite=True)
    i += 1
"""


@pytest.mark.slow
def test_killing_a_save_at_random_points_leaves_the_old_or_the_new_detector(
    small_detectors, real_vars, cache_root, tmp_path
):
    import random
    import signal

    detectors = [small_detectors["padim"], small_detectors["patchcore"]]
    sources = [pipeline.save_detector(d, tmp_path / f"src{i}")
               for i, d in enumerate(detectors)]
    target = tmp_path / "work" / "detector"
    pipeline.save_detector(detectors[0], target, metadata={"tag": 0})
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    env = dict(os.environ, JAD_CACHE=str(cache_root))
    rng = random.Random(0)
    seen = set()
    for trial in range(8):
        process = subprocess.Popen(
            [sys.executable, str(script), *map(str, sources), str(target)],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        if trial < 6:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        else:
            # A Ctrl-C that lands in a finaliser (a gc callback of XLA) is swallowed
            # by Python and the loop goes on: press it again, as a user would.
            for _ in range(10):
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=15)
                    break
                except subprocess.TimeoutExpired:
                    pass
            assert process.wait(timeout=60) is not None
        process.stdout.close()
        tag = pipeline.read_metadata(target)["tag"]
        loaded = pipeline.load_detector(target, variables=real_vars)
        assert loaded.method == detectors[tag].method
        for a, b in zip(jax.tree_util.tree_leaves(loaded.state),
                        jax.tree_util.tree_leaves(detectors[tag].state), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert sorted(p.name for p in target.parent.iterdir()) == ["detector"]
        seen.add(tag)
    assert seen


def test_evaluate_reports_empty_masks(small_detectors, data_root, tmp_path, capsys):
    # A defective image whose mask is stored as 0/1 has no pixel above 127: it is
    # warned about and named in the metrics and in the CLI's summary.
    from PIL import Image

    from jad.cli.main import main

    root = Path(shutil.copytree(data_root, tmp_path / "data"))
    mask_path = root / "brick" / "ground_truth" / "color" / "000_mask.png"
    mask = np.asarray(Image.open(mask_path))
    Image.fromarray((mask > 127).astype(np.uint8)).save(mask_path)
    test = _split(root, "test", SMALL)
    with pytest.warns(jad.data.EmptyMaskWarning, match="000_mask.png"):
        result = evaluation.evaluate(small_detectors["padim"], test, batch_size=2,
                                     progress=False)
    assert result.metrics["empty_masks"] == [str(mask_path)]
    import dataclasses

    transform = dataclasses.asdict(jad.data.Transform(size=SMALL))
    folder = pipeline.save_detector(small_detectors["padim"], tmp_path / "d",
                                    metadata={"transform": transform})
    out = tmp_path / "m.json"
    with pytest.warns(jad.data.EmptyMaskWarning):
        assert main(["evaluate", "--state", str(folder), "--data", str(root),
                     "--category", "brick", "--json", str(out)]) == 0
    assert "1 defective image(s) have an empty mask" in capsys.readouterr().out
    assert json.loads(out.read_text())["empty_masks"] == [str(mask_path)]


def test_calibrate_takes_the_quantile_of_nominal_scores(small_detectors, small_train):
    detector = small_detectors["padim"]
    batches = [small_train[:2], small_train[2:4], small_train[4:]]
    maps, scores, _ = pipeline.predict(detector, batches, progress=False)
    for q in (1.0, 0.5):
        cal = pipeline.calibrate(detector, batches, quantile=q, progress=False)
        assert cal.threshold == pytest.approx(float(np.quantile(scores, q)))
        assert (cal.map_min, cal.map_max) == (float(maps.min()), float(maps.max()))
        assert cal.num_images == len(small_train) and cal.quantile == q
    low, high = cal.display_range
    assert low == cal.map_min and high - cal.map_max == cal.map_max - cal.map_min
    with pytest.raises(ValueError, match="calibrate: quantile must be in"):
        pipeline.calibrate(detector, batches, quantile=1.5)


def test_predict_cli_maps_at_the_files_size_and_the_threshold(
    small_detectors, small_train, tmp_path, capsys
):

    from PIL import Image

    from jad.cli.main import main

    # fitted at 64x64 through a resize to 80 (shorter side) and a 64 crop
    transform = jad.data.Transform(size=80, keep_aspect_ratio=True, crop=64)
    calibration = pipeline.Calibration(1.0, 1.0, 0.0, 2.0, 5)
    folder = pipeline.save_detector(
        small_detectors["padim"].replace(transform=transform), tmp_path / "d",
        metadata={"calibration": calibration._asdict()},
    )
    rgb = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    out = tmp_path / "out"
    for threshold, expected in ((None, 1.0), ("1e9", 1e9)):
        extra = [] if threshold is None else ["--threshold", threshold]
        assert main(["predict", "--state", str(folder), str(tmp_path / "wide.png"),
                     "--out", str(out), *extra]) == 0
        report = json.loads((out / "predictions.json").read_text())
        assert report["threshold"] == expected
        (row,) = report["images"].values()
        assert row["anomalous"] == (row["score"] > expected)
    assert "normal" in capsys.readouterr().out
    amap = np.load(out / "wide_map.npy")
    assert amap.shape == (90, 120)
    # outside the 64-pixel crop (of the 80x106 frame) nothing was scored: the fill
    # is the detector's nominal minimum, 0
    assert amap[45, 0] == 0.0 and amap[45, 60] != 0.0
    assert Image.open(out / "wide_overlay.png").size[1] == 90


def test_empty_batches_are_refused_and_embed_images_gives_empty_embeddings(
    small_detectors, small_train, real_vars
):
    empty = small_train[:0]
    for method, detector in small_detectors.items():
        with pytest.raises(ValueError, match="anomaly_maps: images must hold at least"):
            pipeline.anomaly_maps(detector, empty)  # was a ZeroDivisionError
        with pytest.raises(ValueError, match="predict: images must hold at least one"):
            pipeline.predict(detector, [empty], progress=False)
        with pytest.raises(ValueError, match="predict: images must hold at least one"):
            pipeline.predict(detector, [small_train[:2], empty], progress=False)
        embedded = pipeline.embed_images(
            method, detector.config, BACKBONE, real_vars, empty
        )
        full = pipeline.embed_images(
            method, detector.config, BACKBONE, real_vars, small_train[:2]
        )
        assert embedded.shape == (0, *full.shape[1:])


def test_calibrate_refuses_a_quantile_that_is_not_a_real_number(
    small_detectors, small_train
):
    detector = small_detectors["patchcore"]
    for quantile in (None, "0.5", True, 0.5j):
        with pytest.raises(TypeError, match="calibrate: quantile must be a real"):
            pipeline.calibrate(detector, [small_train[:2]], quantile=quantile,
                               progress=False)
    with pytest.raises(ValueError, match="calibrate: quantile must be a scalar"):
        pipeline.calibrate(detector, [small_train[:2]],
                           quantile=np.array([0.5, 1.0]), progress=False)
    with pytest.raises(ValueError, match="calibrate: quantile must be in"):
        pipeline.calibrate(detector, [small_train[:2]], quantile=float("nan"))
    cal = pipeline.calibrate(detector, [small_train[:2]], quantile=np.float32(0.5),
                             progress=False)
    assert cal.quantile == 0.5 and isinstance(cal.quantile, float)


def test_overwrite_refuses_a_detector_folder_holding_other_files(
    small_detectors, tmp_path
):
    folder = pipeline.save_detector(small_detectors["padim"], tmp_path / "d")
    (folder / "metrics.json").write_text("{}")  # the user's file
    with pytest.raises(ValueError, match=r"other files \(metrics.json\)"):
        pipeline.save_detector(small_detectors["padim"], folder, overwrite=True)
    assert (folder / "metrics.json").is_file()


def test_predict_refuses_a_nan_threshold_and_a_bad_recorded_calibration(
    small_detectors, tmp_path, capsys
):
    import dataclasses

    from PIL import Image

    from jad.cli.main import main

    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    transform = dataclasses.asdict(jad.data.Transform(size=SMALL))
    bad = {"threshold": float("nan"), "quantile": 1.0, "map_min": 0.0,
           "map_max": 1.0, "num_images": 3}
    folder = pipeline.save_detector(
        small_detectors["padim"], tmp_path / "d",
        metadata={"transform": transform, "calibration": bad},
    )
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--state", str(folder), str(image), "--threshold", "nan"])
    assert exc.value.code == 2
    assert "--threshold: expected a finite number" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["predict", "--state", str(folder), str(image), "--out",
                 str(out)]) == 2
    assert "the recorded calibration must hold the finite numbers" in (
        capsys.readouterr().err)
    assert not (out / "predictions.json").exists()
