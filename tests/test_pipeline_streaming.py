"""``fit_detector`` streams embeddings into methods that fit from batches (PaDiM).

Uses ``efficientnet_lite0`` with its real weights (converted into a temporary cache)
on 64x64 crops of the built-in ``brick`` data, as ``tests/test_pipeline.py`` does.
"""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

import jad.backbones as bb
import jad.data
from jad import pipeline
from jad.methods import PaDiMConfig, get_method, padim
from jad.methods import base as methods_base

BACKBONE = "efficientnet_lite0"
SIZE = 64
CONFIG = PaDiMConfig(levels=(1, 2), n_features=20)


@pytest.fixture(scope="module")
def variables(tmp_path_factory):
    return bb.load_pretrained(
        BACKBONE, cache_dir=tmp_path_factory.mktemp("weights"), progress=False
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = jad.data.builtin_dataset(
        root=tmp_path_factory.mktemp("builtin"), category="brick", size=SIZE,
        num_train=8, num_test_good=1, num_test_defect=1,
    )
    train = jad.data.load_dataset(
        "mvtec", root, "brick", "train", transform=jad.data.Transform(size=SIZE)
    )
    return np.stack([train[i].image for i in range(8)])


@pytest.fixture
def spy(monkeypatch):
    """Registers a PaDiM whose ``fit`` must not run and whose ``fit_batches`` logs."""
    calls = types.SimpleNamespace(stream=None, shapes=[])

    def fit(*args, **kwargs):
        raise AssertionError("fit_detector gathered all embeddings for padim.fit")

    def fit_batches(config, batches, **kwargs):
        calls.stream = batches

        def logged():
            for batch in batches:
                calls.shapes.append(tuple(batch.shape))
                yield batch

        return padim.fit_batches(config, logged(), **kwargs)

    spec = get_method("padim")
    monkeypatch.setitem(
        methods_base._REGISTRY, "padim", spec._replace(fit=fit, fit_batches=fit_batches)
    )
    return calls


def _fit(batches, variables, **kwargs):
    return pipeline.fit_detector(
        "padim", batches, backbone=BACKBONE, variables=variables, config=CONFIG,
        key=jax.random.key(0), **{"progress": False, **kwargs},
    )


def test_only_padim_registers_fit_batches():
    assert get_method("padim").fit_batches is padim.fit_batches
    assert get_method("patchcore").fit_batches is None


def test_padim_is_fitted_from_a_stream_of_batch_embeddings(spy, images, variables):
    # 3 + 3 + 2 images: the short last batch is padded for the backbone, and only
    # its 2 real embeddings reach the fit.
    detector = _fit([images[:3], images[3:6], images[6:]], variables)
    assert not isinstance(spy.stream, (list, tuple, np.ndarray))  # a generator
    h = w = SIZE // 4
    assert spy.shapes == [(3, h, w, 20), (3, h, w, 20), (2, h, w, 20)]
    assert detector.image_size == (SIZE, SIZE)
    # the same state as padim.fit on all the embeddings at once
    embeddings = np.concatenate([
        np.asarray(pipeline.embed_images("padim", CONFIG, BACKBONE, variables, b))
        for b in (images[:3], images[3:6], images[6:])
    ])
    ref = padim.fit(CONFIG, embeddings)
    np.testing.assert_allclose(
        np.asarray(detector.state.mean), np.asarray(ref.mean), rtol=1e-5, atol=1e-5
    )  # float32 merge vs one pass over the same values
    # Sigma = inv(W) inv(W)^T: 8 images in 20 dimensions give covariances of rank 7
    # + 0.01 I, whose whitening is too ill-conditioned to compare entry by entry.
    sigma, sigma_ref = (
        np.linalg.inv(np.asarray(s.whitening, np.float64))
        for s in (detector.state, ref)
    )
    sigma = sigma @ np.swapaxes(sigma, -1, -2)
    sigma_ref = sigma_ref @ np.swapaxes(sigma_ref, -1, -2)
    scale = np.abs(sigma_ref).max()
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-4, atol=1e-5 * scale)


def test_streamed_fit_reports_features_and_fit_time(images, variables, capsys):
    _fit([images[:4], images[4:]], variables, progress=True)
    captured = capsys.readouterr()
    assert "padim: features and fit of 8 images in" in captured.out
    assert "padim: features" in captured.err and "padim: fit" in captured.err


def test_streamed_fit_refuses_overflowing_embeddings_by_batch(
    spy, images, variables, monkeypatch
):
    embed = pipeline.embed_images

    def overflowing(method, config, backbone, variables, batch):
        emb = embed(method, config, backbone, variables, batch)
        third = batch[0, 0, 0, 0] == images[4, 0, 0, 0]  # training batch 2
        return emb.at[0, 0, 0, 0].set(np.inf) if third else emb

    monkeypatch.setattr(pipeline, "embed_images", overflowing)
    with pytest.raises(ValueError, match="embeddings of training batch 2 .*overflowed"):
        _fit([images[:2], images[2:4], images[4:6], images[6:]], variables)
    assert len(spy.shapes) == 2  # refused before it reached the fit


def test_streamed_fit_bad_training_sets(images, variables):
    with pytest.raises(ValueError, match="fit_detector: the training set is empty"):
        _fit([], variables)
    with pytest.raises(ValueError, match="padim.fit_batches: need at least 2"):
        _fit([images[:1]], variables)
    with pytest.raises(ValueError, match="fit_detector: images contains NaN"):
        _fit([images[:2], np.full_like(images[:2], np.nan)], variables)
    with pytest.raises(ValueError, match="fitted on 64x64"):
        _fit([images[:2], images[2:4, :32, :32]], variables)


@pytest.mark.parametrize("announced", [None, 2, 3, 5])
def test_gather_fills_one_array(announced):
    from jad.pipeline import _gather

    rng = np.random.default_rng(0)
    parts = [rng.random((3, 2, 2, 4)).astype(np.float32),
             rng.random((3, 2, 2, 4)).astype(np.float32),
             rng.random((1, 2, 2, 4)).astype(np.float32)]
    got = _gather(iter(parts), announced)  # fewer, exactly or more than announced
    np.testing.assert_array_equal(got, np.concatenate(parts))
