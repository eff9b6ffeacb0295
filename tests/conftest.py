"""Shared fixtures and helpers for the jad test suite.

x64 is never switched on globally: a float64 test enters ``jax.enable_x64(True)`` in
its body (directly, through :func:`x64_if`, or through the ``x64`` fixture), so float32
tests run with JAX's default dtypes whatever ran before them.

Hypothesis profiles (the property tests of ``test_robustness.py``): ``ci``, the
default, is derandomized (the same examples on every run, no example database) and
small; ``deep`` runs many more examples and shrinks failures. Select one with the
environment variable ``JAD_HYPOTHESIS_PROFILE=deep`` or hypothesis's own
``--hypothesis-profile=deep`` option.
"""

from __future__ import annotations

import contextlib
import gc
import os

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings

_HEALTH = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
]
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=_HEALTH)
settings.register_profile(
    "ci",
    max_examples=8,
    derandomize=True,
    # No shrinking: a failure is reported as drawn (rerun with "deep" to shrink it).
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    **_COMMON,
)
settings.register_profile("deep", max_examples=400, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("JAD_HYPOTHESIS_PROFILE", "ci"))


def random_dictionary_np(rng: np.random.Generator, m: int, K: int) -> np.ndarray:
    """(m, K) float64 Gaussian dictionary with unit-norm columns (atoms)."""
    dictionary = rng.standard_normal((m, K))
    return dictionary / np.linalg.norm(dictionary, axis=0, keepdims=True)


def x64_if(dtype) -> contextlib.AbstractContextManager:
    """``jax.enable_x64(True)`` for float64 tests, a no-op context for float32 ones."""
    if np.dtype(dtype) == np.float64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def loosen(tolerance: float, factor: float = 10.0) -> float:
    """``tolerance`` on CPU; ``factor`` times looser on GPU/TPU (other reductions)."""
    return tolerance if jax.default_backend() == "cpu" else tolerance * factor


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drops JAX's compiled programs after each test module.

    Every program XLA compiles for the CPU maps a few memory regions (about 3.3),
    which stay while jax caches the program. The suite compiles thousands of them in
    one process; past Linux's default ``vm.max_map_count`` (65530) XLA's compiler
    crashes with a segmentation fault. Modules share few programs, so clearing the
    caches between them costs little.
    """
    yield
    jax.clear_caches()
    gc.collect()


_MAPS = "/proc/self/maps"


@pytest.fixture(autouse=True)
def _free_compiled_programs_when_maps_run_high():
    """Within a long module too: clears the caches past 40,000 memory maps."""
    yield
    if os.path.exists(_MAPS):
        with open(_MAPS, "rb") as maps:
            if sum(1 for _ in maps) > 40_000:
                jax.clear_caches()
                gc.collect()


@pytest.fixture
def rng() -> np.random.Generator:
    """Seeded numpy generator (a fresh one per test)."""
    return np.random.default_rng(0)


@pytest.fixture
def key() -> jax.Array:
    """Seeded JAX key."""
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Runs the test body with float64 enabled (only for that test)."""
    with jax.enable_x64(True):
        yield
