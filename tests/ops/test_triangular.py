"""jad.ops._triangular: substitution solves against scipy, under jit/vmap/grad, and
two independent OMP calls in one jit (the CPU deadlock they replace)."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.test_util import check_grads

from jad.ops._triangular import _substitute, cho_solve, solve_lower


def _factor(rng, s):
    a = rng.standard_normal((s, s))
    chol = np.linalg.cholesky(a @ a.T + s * np.eye(s))
    # Junk in the upper triangle must not be read.
    return chol + np.triu(rng.standard_normal((s, s)), 1), chol


@pytest.mark.parametrize("transpose", [False, True])
def test_solve_lower_matches_scipy(transpose):
    rng = np.random.default_rng(0)
    noisy, chol = _factor(rng, 9)
    b = rng.standard_normal(9)
    want = scipy.linalg.solve_triangular(chol, b, lower=True, trans=int(transpose))
    got = _substitute(jnp.asarray(noisy, jnp.float32), jnp.asarray(b, jnp.float32),
                      transpose=transpose)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        solve_lower(jnp.asarray(chol, jnp.float32), jnp.asarray(b, jnp.float32),
                    transpose=transpose), want, rtol=1e-5, atol=1e-6)


def test_cho_solve_matches_scipy_jit_vmap_and_grad():
    rng = np.random.default_rng(1)
    chols = np.stack([_factor(rng, 6)[1] for _ in range(4)]).astype(np.float32)
    bs = rng.standard_normal((4, 6)).astype(np.float32)
    pairs = list(zip(chols, bs, strict=True))
    want = np.stack([scipy.linalg.cho_solve((c, True), b) for c, b in pairs])
    batched = jax.vmap(cho_solve)(chols, bs)
    looped = np.stack([jax.jit(cho_solve)(c, b) for c, b in pairs])
    np.testing.assert_allclose(batched, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(looped, batched, rtol=1e-6, atol=1e-6)
    with jax.enable_x64():
        chol = jnp.asarray(chols[0], jnp.float64)
        b0 = jnp.asarray(bs[0], jnp.float64)
        check_grads(lambda c, b: _substitute(c, b, transpose=False), (chol, b0),
                    order=1, modes=("fwd", "rev"))
        check_grads(lambda b: _substitute(chol, b, transpose=True),
                    (jnp.asarray(bs[1], jnp.float64),), order=2)


_TWO_OMPS = textwrap.dedent("""
    import jax, jax.numpy as jnp
    from jad.sparse import omp
    def setup(key, k, n):
        a, b = jax.random.split(key)
        d = jax.random.normal(a, (k, k))
        return d / jnp.linalg.norm(d, axis=0), jax.random.normal(b, (n, k))
    d1, y1 = setup(jax.random.key(1), 64, 3000)
    d2, y2 = setup(jax.random.key(2), 48, 3000)
    f = jax.jit(lambda d1, y1, d2, y2: (omp(d1, y1, 16).coef, omp(d2, y2, 12).coef))
    for _ in range(3):
        jax.block_until_ready(f(d1, y1, d2, y2))
    print("ok")
""")


def test_two_independent_omps_in_one_jit_do_not_deadlock():
    # With XLA's batched CPU triangular solve inside OMP this hung every time
    # (jaxlib 0.10, 2 cores); it takes ~5 s when it runs.
    done = subprocess.run([sys.executable, "-c", _TWO_OMPS], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
