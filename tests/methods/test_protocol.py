"""The method protocol: properties every registered method inherits by registering.

Parametrised over :func:`jad.methods.list_methods` plus two toy methods registered
here (``toy_methods.py``): a multi-level one (pytree embeddings, per-level maps, a
nested state, a calibration hook) and one that reads images (no backbone, extra fit
inputs, a checkpoint folder). A new method gets every test below by registering.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_methods

import jad.backbones as bb
import jad.data
from jad import detector as jdet
from jad import evaluation, pipeline
from jad.methods import base

TOYS = toy_methods.register_toys()
METHODS = tuple(sorted(set(base.list_methods()) | set(TOYS)))
BACKBONE = "efficientnet_lite0"
SIZE = 64
NUM_TRAIN = 6


@pytest.fixture(scope="module")
def variables():
    return bb.init_variables(BACKBONE, key=jax.random.key(0), image_size=SIZE)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    base_image = rng.standard_normal((1, SIZE, SIZE, 3)).astype(np.float32)
    noise = 0.1 * rng.standard_normal((NUM_TRAIN + 3, SIZE, SIZE, 3))
    return (base_image + noise).astype(np.float32)


def _backbone(method, variables):
    if base.get_method(method).inputs == "images":
        return {"backbone": None, "variables": None}
    return {"backbone": BACKBONE, "variables": variables}


def _fit(method, variables, images, tmp_path_factory=None, **options):
    train = images[:NUM_TRAIN]
    config = None
    if method == "patchcore":  # keep every patch: no coreset on a toy set
        config = base.make_config("patchcore", coreset_ratio=1.0)
    if method == "sgfr":  # s_ref <= the 6 training images
        config = base.make_config("sgfr", s_ref=4, s=2)
    if method == "psdl":  # 2 x 2 dictionaries: m <= the 6 training images
        config = base.make_config("psdl", "single", max_channels=4, n_iter=2)
    extra = {}
    if method == "toy_images":
        extra["inputs"] = {"textures": np.full((2, 8, 8, 3), 0.25, np.float32)}
    return pipeline.fit_detector(
        method, [train[:3], train[3:]], config=config, key=jax.random.key(1),
        transform=jad.data.Transform(size=SIZE), progress=False,
        **_backbone(method, variables), **extra, **options,
    )


@pytest.fixture(scope="module")
def detectors(variables, images):
    return {method: _fit(method, variables, images) for method in METHODS}


def _test_images(images):
    return jnp.asarray(images[NUM_TRAIN:])


def _plain(leaf):
    """A PRNG key's data (numpy cannot compare typed keys), other leaves as they are."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(leaf)
    return leaf


def _embed(detector, x):
    spec = base.get_method(detector.method)
    return jdet._embed(spec, detector.config, detector.backbone,
                       detector.variables, x)


# ---------------------------------------------------------------- every method


@pytest.mark.parametrize("method", METHODS)
def test_jit_equals_no_jit(detectors, images, method):
    # The method's part (score, post-processing, image score) op by op against its
    # jitted form; the backbone's own jit == no-jit is tested in tests/backbones.
    detector, x = detectors[method], _test_images(images)
    spec = base.get_method(method)
    emb = _embed(detector, x)

    def method_part(state, emb):
        return jdet._maps_and_scores(spec, state, emb, x.shape[1:3])

    maps, scores = jax.jit(method_part)(detector.state, emb)
    whole = jdet.anomaly_maps(detector, x)[0]  # the same, fused with the backbone
    np.testing.assert_allclose(maps, whole, rtol=1e-4,
                               atol=1e-4 * float(jnp.max(jnp.abs(whole))))
    with jax.disable_jit():
        maps_eager, scores_eager = method_part(detector.state, emb)
    scale = float(jnp.max(jnp.abs(maps_eager))) + 1e-12
    # float32 with other fusion orders: 1e-4 relative to the map's scale
    np.testing.assert_allclose(maps, maps_eager, atol=1e-4 * scale, rtol=1e-4)
    np.testing.assert_allclose(scores, scores_eager, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("method", METHODS)
def test_vmap_equals_loop(detectors, images, method):
    detector, x = detectors[method], _test_images(images)
    batched = jax.vmap(lambda one: jdet.anomaly_maps(detector, one[None]))(x)
    for i in range(x.shape[0]):
        maps, scores = jdet.anomaly_maps(detector, x[i : i + 1])
        np.testing.assert_allclose(batched[0][i], maps, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batched[1][i], scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_image_score_gradient_is_finite_and_not_zero(detectors, images, method):
    detector, x = detectors[method], _test_images(images)[:1]
    grad = jax.grad(lambda im: jdet.anomaly_maps(detector, im)[1].sum())(x)
    assert grad.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0


@pytest.mark.parametrize("method", METHODS)
def test_feature_loss_is_differentiable_wrt_the_images(detectors, images, method):
    detector, x = detectors[method], _test_images(images)[:1]
    context = jdet.loss_context(detector, x)
    loss = jdet.feature_loss(detector, x + 0.05, context)
    for leaf in jax.tree.leaves(loss):
        assert leaf.shape[0] == 1 and leaf.ndim == 3
        assert bool(jnp.all(jnp.isfinite(leaf)))

    def total(im):
        return sum(jnp.sum(m) for m in
                   jax.tree.leaves(jdet.feature_loss(detector, im, context)))

    grad = jax.grad(total)(x + 0.05)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
    # a directional finite difference agrees with the gradient (float32: 5 %)
    direction = jax.random.normal(jax.random.key(3), x.shape)
    direction = direction / jnp.linalg.norm(direction)
    eps = 1e-2
    numeric = (total(x + 0.05 + eps * direction)
               - total(x + 0.05 - eps * direction)) / (2 * eps)
    analytic = jnp.vdot(grad, direction)
    np.testing.assert_allclose(analytic, numeric, rtol=0.05,
                               atol=1e-3 * abs(float(numeric)) + 1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_gives_identical_maps(
    detectors, images, variables, tmp_path, method
):
    detector, x = detectors[method], _test_images(images)
    folder = pipeline.save_detector(detector, tmp_path / "d")
    loaded = pipeline.load_detector(
        folder, variables=None if detector.variables is None else variables
    )
    assert loaded.config == detector.config
    assert loaded.transform == detector.transform == jad.data.Transform(size=SIZE)
    assert loaded.num_train == NUM_TRAIN
    assert jax.tree.structure(loaded.state) == jax.tree.structure(detector.state)
    for a, b in zip(jax.tree.leaves(loaded.state), jax.tree.leaves(detector.state),
                    strict=True):
        np.testing.assert_array_equal(_plain(a), _plain(b))
    for a, b in zip(jdet.anomaly_maps(loaded, x), jdet.anomaly_maps(detector, x),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_a_state_of_another_method_is_refused(detectors, images, method):
    detector = detectors[method]
    spec = base.get_method(method)
    emb = _embed(detector, _test_images(images))
    for other in METHODS:
        if other == method:
            continue
        state = detectors[other].state
        with pytest.raises(TypeError, match=r"state must be a"):
            spec.score(state, emb)
        for hook in (spec.loss_context, spec.image_score):
            if hook is spec.image_score and hook is not None:
                with pytest.raises(TypeError, match=r"state must be a"):
                    hook(state, emb, jnp.zeros(emb.shape[:3]), maps=None)
            elif hook is not None:
                with pytest.raises(TypeError, match=r"state must be a"):
                    hook(state, emb)
        if spec.feature_loss is not None:
            with pytest.raises(TypeError, match=r"state must be a"):
                spec.feature_loss(state, emb, None)


@pytest.mark.parametrize("method", METHODS)
def test_score_shapes(detectors, images, method):
    detector, x = detectors[method], _test_images(images)
    spec = base.get_method(method)
    patch_maps = spec.score(detector.state, _embed(detector, x))
    for leaf in jax.tree.leaves(patch_maps):
        assert leaf.ndim == 3 and leaf.shape[0] == x.shape[0]
        assert jnp.issubdtype(leaf.dtype, jnp.floating)
    maps, scores = jdet.anomaly_maps(detector, x)
    assert maps.shape == (x.shape[0], SIZE, SIZE) and scores.shape == (x.shape[0],)


@pytest.mark.parametrize("method", METHODS)
def test_a_second_call_with_the_same_shapes_does_not_recompile(
    detectors, images, method, caplog
):
    detector, x = detectors[method], _test_images(images)
    jax.block_until_ready(jdet.anomaly_maps(detector, x))  # compiled here
    other = jax.block_until_ready(x + 1.0)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        caplog.clear()
        jax.block_until_ready(jdet.anomaly_maps(detector, other))
        # a detector rebuilt from its parts (same static facts) is the same program
        same = dataclasses.replace(detector)
        jax.block_until_ready(jdet.anomaly_maps(same, x))
    compiles = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    assert not compiles, compiles
    # ...and the log does record a compilation when the shapes change
    pair = jax.block_until_ready(x[:2])  # a batch size no other test uses
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        caplog.clear()
        jax.block_until_ready(jdet.anomaly_maps(detector, pair))
    assert any("Compiling jit(_anomaly_maps)" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("method", METHODS)
def test_config_round_trips_through_json(detectors, method):
    config = detectors[method].config
    text = json.dumps(dataclasses.asdict(config))
    back = pipeline._config_from_json(type(config), json.loads(text), "x.json")
    assert back == config and hash(back) == hash(config)
    for name, preset in base.get_method(method).presets.items():
        values = json.loads(json.dumps(dataclasses.asdict(preset)))
        assert pipeline._config_from_json(type(preset), values, name) == preset


# ---------------------------------------------------------------- the toys


@pytest.mark.parametrize(
    "post",
    [dict(combine="mean"), dict(combine="sum"), dict(combine="max"),
     dict(combine="mean", align_corners=True), dict(upsample="bicubic", sigma=0.0),
     dict(upsample="nearest", combine="sum", sigma=2.0)],
)
def test_per_level_maps_are_upsampled_once_then_combined_then_blurred(
    detectors, images, post
):
    detector = detectors["toy_levels"]
    config = dataclasses.replace(detector.config, **post)
    detector = detector.replace(state=detector.state.replace(config=config))
    x = _test_images(images)
    features = bb.extract_features(BACKBONE, detector.variables, x, config.levels)
    expected = toy_methods.numpy_levels_maps(detector.state, features, (SIZE, SIZE),
                                             config)
    maps, scores = jdet.anomaly_maps(detector, x)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(scores, expected.max(axis=(1, 2)), rtol=1e-4,
                               atol=1e-5 * scale)


def test_upsampling_each_level_once_differs_from_upsampling_twice(
    detectors, images
):
    # The coarse level upsampled to the fine grid and then to the image is not the
    # same map: the protocol must resize each level once, straight to the image.
    detector = detectors["toy_levels"]
    x = _test_images(images)
    patch = base.get_method("toy_levels").score(detector.state, _embed(detector, x))
    fine, coarse = patch[1], patch[2]
    once = base.postprocess((fine, coarse), (SIZE, SIZE), sigma=0.0)
    from jad import ops

    twice_coarse = ops.resize(ops.resize(coarse, fine.shape[1:]), (SIZE, SIZE))
    twice = (ops.resize(fine, (SIZE, SIZE)) + twice_coarse) / 2
    assert float(jnp.max(jnp.abs(once - twice))) > 1e-3 * float(jnp.max(once))


def test_calibration_hook_sees_the_training_maps(detectors, images):
    detector = detectors["toy_levels"]
    train = jnp.asarray(images[:NUM_TRAIN])
    maps, _ = jdet.anomaly_maps(detector, train)
    # calibrate divided the maps by their largest training value
    np.testing.assert_allclose(float(maps.max()), 1.0, rtol=1e-5)


def test_image_method_has_no_backbone_and_sums_the_final_map(detectors, images):
    detector = detectors["toy_images"]
    assert detector.backbone is None and detector.variables is None
    x = _test_images(images)
    maps, scores = jdet.anomaly_maps(detector, x)
    np.testing.assert_allclose(scores, np.asarray(maps).sum(axis=(1, 2)), rtol=1e-5)
    # the extra fit input reached fit
    np.testing.assert_allclose(float(detector.state.texture_mean), 0.25)


def test_image_method_refuses_a_backbone_and_feature_methods_need_one(
    variables, images
):
    with pytest.raises(ValueError, match="reads images"):
        pipeline.fit_detector("toy_images", [images[:2]], backbone=BACKBONE,
                              variables=variables, key=jax.random.key(0))
    with pytest.raises(ValueError, match="reads images"):
        pipeline.fit_detector("toy_images", [images[:2]], weights="w.pth",
                              key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"inputs\['textures'\] contains NaN"):
        pipeline.fit_detector("toy_images", [images[:2]], key=jax.random.key(0),
                              inputs={"textures": np.full((1, 2, 2, 3), np.nan)})
    with pytest.raises(ValueError, match="backbone and variables are required"):
        pipeline.fit_detector("toy_levels", [images[:2]], key=jax.random.key(0))
    with pytest.raises(ValueError, match="takes no input"):
        pipeline.fit_detector("toy_levels", [images[:2]], backbone=BACKBONE,
                              variables=variables, key=jax.random.key(0),
                              inputs={"textures": images})
    with pytest.raises(ValueError, match="does not train"):
        pipeline.fit_detector("toy_levels", [images[:2]], backbone=BACKBONE,
                              variables=variables, key=jax.random.key(0),
                              checkpoint_dir="x")


def test_a_training_method_resumes_from_its_checkpoint_folder(
    images, tmp_path
):
    first = _fit("toy_images", None, images, checkpoint_dir=tmp_path / "ckpt")
    # a second fit on other images finds the finished run and resumes it
    second = _fit("toy_images", None, images[::-1].copy(),
                  checkpoint_dir=tmp_path / "ckpt")
    np.testing.assert_array_equal(first.state.mean, second.state.mean)
    fresh = _fit("toy_images", None, images[::-1].copy())
    assert not np.array_equal(fresh.state.mean, first.state.mean)


def test_a_restored_state_that_does_not_fit_the_template_lists_the_differences(
    detectors, variables, tmp_path
):
    detector = detectors["toy_levels"]
    stats = dict(detector.state.stats)
    del stats[2]
    broken = detector.replace(state=detector.state.replace(stats=stats))
    folder = pipeline.save_detector(broken, tmp_path / "d")
    with pytest.raises(jad.errors.DatasetError, match=r"missing: stats/2/"):
        pipeline.load_detector(folder, variables=variables)


# ---------------------------------------------------------------- CLI round trip


@pytest.fixture(scope="module")
def builtin_root(tmp_path_factory):
    return jad.data.builtin_dataset(
        root=tmp_path_factory.mktemp("builtin"), category="brick", size=SIZE,
        num_train=6, num_test_good=3, num_test_defect=3,
    )


@pytest.mark.parametrize("method", TOYS)
def test_cli_fit_evaluate_predict_round_trip(
    builtin_root, tmp_path, method, monkeypatch
):
    from jad.cli.main import main

    monkeypatch.setenv("JAD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "det"
    extra = ["--set", "groups=[[1],[0,2]]"] if method == "toy_levels" else []
    if method == "toy_images":  # an extra fit input read from a folder
        textures = tmp_path / "textures"
        textures.mkdir()
        for i, value in enumerate((0, 255)):
            from PIL import Image

            Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(
                textures / f"{i}.png")
        extra = ["--input", f"textures={textures}"]
    assert main(["fit", "--method", method, "--data", str(builtin_root),
                 "--category", "brick", "--size", str(SIZE), "--out", str(out),
                 "--holdout", "0", *extra]) == 0
    loaded = pipeline.load_detector(out)
    assert loaded.transform == jad.data.Transform(size=SIZE)
    if method == "toy_levels":
        assert loaded.config.groups == ((1,), (0, 2))
    else:
        assert loaded.backbone is None
        # the textures reached fit: the mean of black and white, normalised
        white = (1 - np.asarray(jad.data.IMAGENET_MEAN)) / jad.data.IMAGENET_STD
        black = -np.asarray(jad.data.IMAGENET_MEAN) / jad.data.IMAGENET_STD
        np.testing.assert_allclose(float(loaded.state.texture_mean),
                                   float(np.mean((white + black) / 2)), rtol=1e-5)
        # a training method checkpoints beside --out (jad fit resumes from there)
        assert (tmp_path / "det.train" / "done").is_dir()
    report = tmp_path / "metrics.json"
    assert main(["evaluate", "--state", str(out), "--json", str(report)]) == 0
    metrics = json.loads(report.read_text())
    # the CLI's numbers are those of the API on the same detector and split
    test = jad.data.load_dataset("mvtec", builtin_root, "brick", "test",
                                 transform=loaded.transform)
    expected = evaluation.evaluate(loaded, test, progress=False).metrics
    assert metrics["num_images"] == len(test) == 12
    for name in ("image_auroc", "pixel_auroc", "pro", "pixel_ap"):
        assert metrics[name] == pytest.approx(expected[name], abs=1e-12), name
    image = next((builtin_root / "brick" / "test").rglob("*.png"))
    assert main(["predict", "--state", str(out), str(image),
                 "--out", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "predictions.json").is_file()


def test_an_image_method_is_loaded_without_variables(detectors, variables, tmp_path):
    folder = pipeline.save_detector(detectors["toy_images"], tmp_path / "d")
    with pytest.raises(ValueError, match="has no backbone; variables must be None"):
        pipeline.load_detector(folder, variables=variables)


def test_a_metadata_key_named_transform_is_the_user_s_own(detectors, tmp_path):
    # format 3 records the transform itself; metadata["transform"] is just data
    detector = detectors["toy_images"].replace(transform=None)
    folder = pipeline.save_detector(detector, tmp_path / "d",
                                    metadata={"transform": "resized by hand"})
    loaded = pipeline.load_detector(folder)
    assert loaded.transform is None
    assert pipeline.read_metadata(folder) == {"transform": "resized by hand"}


def test_an_unknown_number_of_training_images_saves_and_loads(
    detectors, images, tmp_path
):
    # a detector restored from format 1 does not know it: saved as null, and the
    # state's paths (not its data-dependent shapes) are checked on loading
    detector = detectors["toy_images"].replace(num_train=0)
    folder = pipeline.save_detector(detector, tmp_path / "d")
    assert json.loads((folder / "detector.json").read_text())["num_train"] is None
    loaded = pipeline.load_detector(folder)
    x = _test_images(images)
    np.testing.assert_array_equal(jdet.anomaly_maps(loaded, x)[0],
                                  jdet.anomaly_maps(detector, x)[0])


def test_register_refuses_methods_that_would_fail_later():
    good = toy_methods.TOY_LEVELS
    with pytest.raises(ValueError, match="needs an embed function"):
        base.register(good._replace(name="bad", embed=None))
    with pytest.raises(ValueError, match="config field levels"):
        base.register(good._replace(name="bad", config_type=toy_methods.ImagesConfig,
                                    presets={}))
    with pytest.raises(ValueError, match="first preset .* must be its default"):
        base.register(good._replace(name="bad",
                                    presets={"max": toy_methods.LevelsConfig(
                                        combine="max")}))
    with pytest.raises(TypeError, match="needs a callable init"):
        base.register(good._replace(name="bad", init=None))
    assert "bad" not in base.list_methods()
