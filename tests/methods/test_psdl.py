"""PSDL (jad.methods.psdl) against its authors' code, numpy and its own invariants.

The reference (``tests/psdl_reference.py``) is a float64 NumPy/scikit-learn
transcription of the authors' per-location loop (sparselandtools' approximate K-SVD
with ``orthogonal_mp(precompute=True)``, ``np.cov`` + 0.01 I, scipy-style Mahalanobis);
it does not import jad.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import psdl_reference as ref
import pytest
from sklearn.linear_model import orthogonal_mp

from jad.methods import make_config, psdl
from jad.methods.base import postprocess_config


def _structured(rng, n, shape, base=None):
    """Signals with a common mean and correlated channels (not white noise)."""
    *grid, c = shape
    if base is None:
        base = rng.standard_normal((1, *grid, c))
    mix = rng.standard_normal((c, c)) * 0.3
    return (base + 0.5 * rng.standard_normal((n, *grid, c)) @ mix).astype(np.float32)


def _levels(rng, n):
    """Three levels on 8x12, 4x6 and 2x3 grids (17 + 9 + 11 = 37 channels -> 36)."""
    return {1: _structured(rng, n, (8, 12, 17)), 2: _structured(rng, n, (4, 6, 9)),
            3: _structured(rng, n, (2, 3, 11))}


def _compare(state, fitted, group, test_emb, ref_test):
    """Fraction of locations within 1e-6, and the maps' worst relative error."""
    d = np.asarray(state.dictionaries[group], np.float64)
    close = np.all(np.abs(d - fitted["dictionary"]) <= 1e-6, axis=(-2, -1))
    ours = np.asarray(psdl.score(state, test_emb))
    theirs = ref.score_official(fitted, ref_test)
    return close.mean(), np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))


def test_official_preset_equals_the_authors_code():
    rng = np.random.default_rng(0)
    train, test = _levels(rng, 60), _levels(rng, 6)
    config = make_config("psdl", "official", normalize=False)
    emb, test_emb = psdl.embed(config, train), psdl.embed(config, test)
    # [level 3, avgpool2(level 2), avgpool4(level 1)], the surplus cut from level 1
    signals = ref.official_channels({k: v.astype(np.float64) for k, v in train.items()},
                                    multi=True)
    np.testing.assert_allclose(emb[3], signals, rtol=1e-6, atol=1e-6)
    state = psdl.fit(config, emb)
    fitted = ref.fit_official(signals, n_iter=20)
    ref_test = ref.official_channels(
        {k: v.astype(np.float64) for k, v in test.items()}, multi=True)
    close, worst = _compare(state, fitted, 3, test_emb, ref_test)
    assert close >= 0.99, close
    assert worst <= 1e-5, worst
    np.testing.assert_allclose(state.mean[3], fitted["mean"], rtol=1e-5)


MTD_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "mtd"


@pytest.fixture(scope="module")
def mtd_signals(tmp_path_factory):
    """Official-preset signals (m = 169) of 170 MTD training and 12 test images."""
    import dataclasses

    import jad.backbones as bb
    from jad import data
    from jad.pipeline import embed_images

    if not MTD_ROOT.is_dir():
        pytest.skip(f"real MTD is not at {MTD_ROOT}")
    transform = data.Transform(size=224)
    variables = bb.load_pretrained(
        "efficientnet_lite0", cache_dir=tmp_path_factory.mktemp("w"), progress=False)
    config = make_config("psdl", "official")

    def embed(dataset):
        parts = [embed_images("psdl", config, "efficientnet_lite0", variables,
                              batch.images)[3]
                 for batch in dataset.batches(32, num_workers=0)]
        return np.concatenate([np.asarray(p) for p in parts])

    train = data.load_dataset("mtd", MTD_ROOT, None, "train", transform=transform,
                              num_train=170)
    test = data.load_dataset("mtd", MTD_ROOT, None, "test", transform=transform)
    pick = np.sort(np.random.default_rng(0).choice(len(test), 12, False))
    test = dataclasses.replace(test, samples=[test.samples[i] for i in pick])
    return embed(train), embed(test)


def test_official_preset_equals_the_authors_code_on_real_mtd(mtd_signals):
    train, test = mtd_signals
    # Three locations of the middle row (each location is independent).
    rows, cols = slice(7, 8), slice(3, 12, 4)
    train, test = train[:, rows, cols], test[:, rows, cols]
    config = make_config("psdl", "official", normalize=False)
    state = psdl.fit(config, {3: jnp.asarray(train)})
    fitted = ref.fit_official(train.astype(np.float64), n_iter=20)
    close, worst = _compare(state, fitted, 3, {3: jnp.asarray(test)},
                            test.astype(np.float64))
    print(f"real MTD (m = 169, N = 170): {close:.0%} of locations within 1e-6; "
          f"maps within {worst:.1e} relative")
    assert close >= 0.99
    assert worst <= 1e-5


def test_gaussian_and_mahalanobis_equal_numpy():
    rng = np.random.default_rng(1)
    train = _structured(rng, 30, (2, 2, 9))
    test = _structured(rng, 5, (2, 2, 9))
    config = make_config("psdl", "single", n_iter=4, statistics="omp",
                         normalize=False)
    state = psdl.fit(config, {3: jnp.asarray(train)})
    s = round(9 * 0.25)
    for j in range(2):
        d = np.asarray(state.dictionaries[3][1, j], np.float64)
        y = train[:, 1, j].astype(np.float64)
        codes = orthogonal_mp(d, y.T, n_nonzero_coefs=s, precompute=True).T
        feats = np.stack([np.abs(codes).sum(1),
                          ((codes @ d.T - y) ** 2).sum(1)], axis=1)
        cov = np.cov(feats, rowvar=False) + 0.01 * np.eye(2)
        np.testing.assert_allclose(state.mean[3][1, j], feats.mean(0), rtol=1e-5)
        inv = np.linalg.inv(cov)
        yt = test[:, 1, j].astype(np.float64)
        ct = orthogonal_mp(d, yt.T, n_nonzero_coefs=s, precompute=True).T
        ft = np.stack([np.abs(ct).sum(1), ((ct @ d.T - yt) ** 2).sum(1)], axis=1)
        delta = ft - feats.mean(0)
        want = np.sqrt(np.einsum("bi,ij,bj->b", delta, inv, delta))
        got = np.asarray(psdl.score(state, {3: jnp.asarray(test)}))[:, 1, j]
        np.testing.assert_allclose(got, want, rtol=1e-4)


def test_chunked_fit_equals_one_chunk():
    rng = np.random.default_rng(2)
    emb = {3: jnp.asarray(_structured(rng, 60, (2, 7, 36)))}
    config = make_config("psdl", "single", n_iter=4)
    whole = psdl.fit(config, emb)
    # 1 MiB holds 5 of these locations: chunks of 5, the last one overlapping.
    small = make_config("psdl", "single", n_iter=4, fit_memory_mib=1)
    assert psdl._chunk_size(small, 60, 36, 14) == 5
    chunked = psdl.fit(small, emb)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_too_few_images_are_refused_before_any_work():
    emb = {3: jnp.ones((20, 2, 2, 25), jnp.float32)}
    with pytest.raises(ValueError, match="needs at least 25 training images; got 20"):
        psdl.fit(make_config("psdl", "single"), emb)
    assert psdl.min_images(make_config("psdl"), {1: 24, 2: 40, 3: 112}) == 169
    assert psdl.min_images(make_config("psdl", "demo"), {3: 112}) == 36


def test_all_classes_mode_with_one_class_equals_per_class_fitting():
    rng = np.random.default_rng(3)
    emb = {3: jnp.asarray(_structured(rng, 30, (2, 2, 9)))}
    test = {3: jnp.asarray(_structured(rng, 4, (2, 2, 9)))}
    plain = psdl.fit(make_config("psdl", "single", n_iter=4), emb)
    named = psdl.fit(make_config("psdl", "single", n_iter=4, classes=("tile",)), emb)
    train_maps = np.asarray(psdl.score(plain, emb))
    plain = psdl.calibrate(plain, train_maps)
    named = psdl.select_class(psdl.calibrate_classes(named, {"tile": train_maps}),
                              "tile")
    np.testing.assert_array_equal(psdl.score(plain, test), psdl.score(named, test))
    # Calibrated: the training maps span [0, 1].
    calibrated = np.asarray(psdl.score(plain, emb))
    np.testing.assert_allclose([calibrated.min(), calibrated.max()], [0, 1],
                               atol=1e-6)


def test_per_class_normalisation_of_an_all_classes_model():
    rng = np.random.default_rng(4)
    a = _structured(rng, 15, (2, 2, 9))
    b = _structured(rng, 15, (2, 2, 9), base=5 * rng.standard_normal((1, 2, 2, 9)))
    config = make_config("psdl", "single", n_iter=4, classes=("a", "b"))
    state = psdl.fit(config, {3: jnp.asarray(np.concatenate([a, b]))})
    raw = {k: np.asarray(psdl.score(state, {3: jnp.asarray(v)}))
           for k, v in (("a", a), ("b", b))}
    state = psdl.calibrate_classes(state, raw)
    for name, x in (("a", a), ("b", b)):
        maps = np.asarray(psdl.score(psdl.select_class(state, name),
                                     {3: jnp.asarray(x)}))
        want = (raw[name] - raw[name].min()) / (raw[name].max() - raw[name].min())
        np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown class 'c'"):
        psdl.select_class(state, "c")


def test_separate_levels_and_dct_without_learning():
    rng = np.random.default_rng(5)

    def levels(n):  # small grids: each level is learnt at its own resolution
        return {1: _structured(rng, n, (4, 4, 17)), 2: _structured(rng, n, (2, 2, 9)),
                3: _structured(rng, n, (2, 3, 11))}

    train, test = levels(30), levels(3)
    config = make_config("psdl", "separate", n_iter=4)
    emb = psdl.embed(config, train)
    assert {k: v.shape[1:] for k, v in emb.items()} == {
        1: (4, 4, 16), 2: (2, 2, 9), 3: (2, 3, 9)}
    state = psdl.fit(config, emb)
    maps = psdl.score(state, psdl.embed(config, test))
    assert set(maps) == {1, 2, 3} and maps[1].shape == (3, 4, 4)
    # Per-level maps combined after upsampling, then calibrated: the training
    # maps span [0, 1] whatever the rule, and calibrating again changes nothing.
    for combine in ("sum", "max"):
        st = state.replace(config=dataclasses.replace(state.config, combine=combine))

        def final(st):
            return np.asarray(jax.jit(lambda st, e: postprocess_config(
                psdl.score(st, e), (8, 12), st.config))(st, emb))

        st = psdl.calibrate(st, final(st))
        np.testing.assert_allclose([final(st).min(), final(st).max()], [0, 1],
                                   atol=1e-5)
        again = psdl.calibrate(st, final(st))
        np.testing.assert_allclose(again.norm_low, st.norm_low, rtol=1e-5)
        np.testing.assert_allclose(again.norm_high, st.norm_high, rtol=1e-5)
    fixed = psdl.fit(make_config("psdl", "single", learn=False), {3: emb[3]})
    # init gives exactly the shapes and dtypes fit gives (the restore template)
    for st in (state, fixed):
        template = psdl.init(st.config, jax.tree.map(lambda a: a[:1], (
            emb if st is state else {3: emb[3]})))
        assert jax.tree.map(lambda a: (a.shape, a.dtype), template) == jax.tree.map(
            lambda a: (a.shape, a.dtype), st)
    init = np.asarray(psdl._initial(fixed.config, 9))
    np.testing.assert_array_equal(fixed.dictionaries[3][1, 2], init)
    assert fixed.train_error[3].shape == (1, 2, 3)
    assert state.train_error[3].shape == (4, 2, 3)  # level 3 learnt alone
    # PSDL Fig. 2: learning lowers the training reconstruction error everywhere.
    assert np.all(np.asarray(state.train_error[3][-1])
                  < np.asarray(fixed.train_error[3][0]))


def test_feature_loss_at_the_initial_image_equals_the_score():
    rng = np.random.default_rng(6)
    emb = {3: jnp.asarray(_structured(rng, 30, (2, 2, 9)))}
    test = {3: jnp.asarray(_structured(rng, 3, (2, 2, 9)))}
    state = psdl.fit(make_config("psdl", "single", n_iter=4, normalize=False), emb)
    context = psdl.loss_context(state, test)
    assert context[3].shape == (3, 2, 2, 2) and context[3].dtype == jnp.int32
    np.testing.assert_allclose(psdl.feature_loss(state, test, context),
                               psdl.score(state, test), rtol=1e-4, atol=1e-5)
    grad = jax.grad(lambda x: jnp.sum(psdl.feature_loss(state, {3: x}, context)))(
        test[3])
    assert grad.shape == test[3].shape and bool(jnp.all(jnp.isfinite(grad)))


def test_configs_are_validated():
    with pytest.raises(ValueError, match="fusion"):
        psdl.PSDLConfig(fusion="sum")
    with pytest.raises(ValueError, match="sparsity"):
        psdl.PSDLConfig(sparsity=0.0)
    with pytest.raises(TypeError, match="classes"):
        psdl.PSDLConfig(classes="abc")
    with pytest.raises(ValueError, match="repeat"):
        psdl.PSDLConfig(levels=(3, 3))
    with pytest.raises(ValueError, match="NaN|finite"):
        psdl.fit(make_config("psdl", "single"),
                 {3: jnp.full((20, 1, 1, 9), jnp.nan, jnp.float32)})


def test_cli_fit_evaluate_round_trip_and_the_early_image_count_check(
        tmp_path, monkeypatch, capsys):
    from jad import data, pipeline
    from jad.cli.main import main

    monkeypatch.setenv("JAD_CACHE", str(tmp_path / "cache"))
    root = data.builtin_dataset(root=tmp_path / "builtin", category="brick", size=64,
                                num_train=6, num_test_good=2, num_test_defect=2)
    common = ["fit", "--method", "psdl", "--data", str(root), "--category", "brick",
              "--size", "64", "--holdout", "0"]
    # The official preset needs 169 images: refused before any feature is read.
    assert main([*common, "--out", str(tmp_path / "no")]) != 0
    assert "needs at least 169 training images" in capsys.readouterr().err
    out = tmp_path / "det"
    assert main([*common, "--preset", "demo", "--set", "max_channels=4",
                 "--set", "n_iter=2", "--out", str(out)]) == 0
    loaded = pipeline.load_detector(out)
    assert loaded.config == make_config("psdl", "demo", max_channels=4, n_iter=2)
    assert loaded.state.dictionaries[3].shape[-1] == 4
    assert main(["evaluate", "--state", str(out), "--json",
                 str(tmp_path / "m.json")]) == 0
