"""jad.backbones._xla: per-computation CPU kernel options and their fallbacks."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jad.backbones import _xla


def _net(w, x):
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.einsum("nhwc,cd->nhwd", jax.nn.relu(y), w[0, 0, :, :].T @ w[0, 0])


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((3, 3, 8, 8)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((2, 12, 12, 8)), jnp.float32)
    return w, x


def test_conv_jit_matches_plain_jit_and_is_differentiable(inputs):
    w, x = inputs
    fast = _xla.conv_jit(_net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the options must be accepted here
        got = fast(w, x)
        # inside grad and jit the call is inlined; no option error, no warning
        grad = jax.grad(lambda w: fast(w, x).sum())(w)
        inner = jax.jit(lambda w: fast(w, x))(w)
    want = jax.jit(_net)(w, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(inner, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        grad, jax.grad(lambda w: _net(w, x).sum())(w), rtol=1e-4, atol=1e-4
    )


def test_rejected_option_warns_once_and_falls_back(inputs, monkeypatch):
    w, x = inputs
    monkeypatch.setitem(_xla._state, "enabled", True)
    monkeypatch.setattr(_xla, "CONV_COMPILER_OPTIONS", {"xla_cpu_no_such_option": "1"})
    fn = _xla.conv_jit(_net)
    with pytest.warns(RuntimeWarning, match="xla_cpu_no_such_option"):
        got = fn(w, x)
    assert _xla._state["enabled"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = fn(w, x)  # no second warning
    np.testing.assert_allclose(got, jax.jit(_net)(w, x), rtol=1e-6)
    np.testing.assert_array_equal(again, got)


def test_other_errors_are_not_swallowed(inputs):
    w, x = inputs
    fn = _xla.conv_jit(_net)
    with pytest.raises((TypeError, ValueError)):
        fn(w, x[..., :5])  # channel mismatch: a tracing error, re-raised as is
    assert _xla._state["enabled"] is True


def test_disabled_state_uses_plain_jit(inputs, monkeypatch):
    w, x = inputs
    monkeypatch.setitem(_xla._state, "enabled", False)
    fn = _xla.conv_jit(_net)
    np.testing.assert_array_equal(fn(w, x), fn.plain(w, x))
