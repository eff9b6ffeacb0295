"""Tests of jad.ops.image: ImageNet normalisation and its inverse.

Reference: the torchvision formula ``(x - mean) / std`` in float64 with torchvision's
constants; the re-exports of :mod:`jad.data` and :mod:`jad.backbones` are the same
objects.
"""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jad.ops.image
from jad import backbones, data, ops
from jad.ops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize_imagenet,
    normalize_imagenet,
)


def test_normalize_imagenet_matches_formula_and_round_trips(rng):
    x = rng.random((2, 5, 4, 3)).astype(np.float32)
    ref = (x.astype(np.float64) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    out = normalize_imagenet(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)  # float32 arithmetic
    np.testing.assert_allclose(denormalize_imagenet(out), x, atol=1e-6)
    assert normalize_imagenet(x.astype(np.float64)).dtype == np.float64
    np.testing.assert_array_equal(IMAGENET_MEAN, np.float32([0.485, 0.456, 0.406]))
    np.testing.assert_array_equal(IMAGENET_STD, np.float32([0.229, 0.224, 0.225]))


@pytest.mark.parametrize("transform", [lambda f: f, jax.jit])
def test_normalize_imagenet_on_jax_arrays(transform, rng):
    x = jnp.asarray(rng.random((3, 3)).astype(np.float32))
    out = transform(normalize_imagenet)(x)
    assert isinstance(out, jax.Array) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, normalize_imagenet(np.asarray(x)), atol=1e-6)


def test_normalize_imagenet_rejects_integers_and_wrong_channels():
    with pytest.raises(TypeError, match="normalize_imagenet: images"):
        normalize_imagenet(np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        denormalize_imagenet(np.zeros((2, 4), np.float32))


def test_data_and_backbones_re_export_the_same_objects():
    for module in (data, backbones):
        assert module.normalize_imagenet is ops.normalize_imagenet
        assert module.IMAGENET_MEAN is ops.IMAGENET_MEAN
        assert module.IMAGENET_STD is ops.IMAGENET_STD
    assert data.denormalize_imagenet is ops.denormalize_imagenet


def test_normalize_imagenet_gradient_float64(x64, rng):
    x = jnp.asarray(rng.random((2, 3)))
    check_grads(normalize_imagenet, (x,), order=1, modes=("fwd", "rev"))
    check_grads(denormalize_imagenet, (x,), order=1, modes=("fwd", "rev"))


def test_docstring_examples():
    failed, attempted = doctest.testmod(jad.ops.image)
    assert attempted > 0 and failed == 0
