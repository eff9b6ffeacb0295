"""Exact k-nearest-neighbour search in bounded memory (chunked over bank and queries).

Every memory-bank method needs ``min_m ||f - m||``: PatchCore's patch score
(F2PAD eq. 4), its restricted form (F2PAD eq. 5), SPADE/SGFR's image kNN. The PyTorch
tools build the full (queries x bank) distance matrix and run out of memory on a real
category; here the bank is scanned in chunks of ``bank_chunk`` rows with a running
top-k, and queries are processed ``query_chunk`` at a time, so peak memory is
``query_chunk x (bank_chunk + k)`` distances plus ``query_chunk x k x D`` differences,
whatever the sizes.

Selection uses the expansion ``|q|^2 - 2 q.m + |m|^2`` (one matmul per chunk). The
returned distances are then recomputed exactly as ``sum((q - m)^2)`` for the selected
neighbours, which makes them accurate (no cancellation) and differentiable w.r.t. the
queries and the bank (the selected indices are held fixed, like an argmin).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jad import _checks

__all__ = ["nearest_neighbors"]


def _topk_chunked(queries, bank, k, bank_chunk):
    """Indices (M, k) of the k nearest bank rows of each query (no gradients).

    Ranked in float32 at least (float16/bfloat16 expansions would mis-rank
    near-ties). A query or bank row holding a NaN ranks first, so its NaN reaches
    the exact distances (NaN propagates; it is never skipped); an overflowing
    expansion (inf - inf) ranks last.
    """
    dtype = jnp.promote_types(queries.dtype, jnp.float32)
    queries, bank = queries.astype(dtype), bank.astype(dtype)
    n_bank, dim = bank.shape
    n_chunks = -(-n_bank // bank_chunk)
    pad = n_chunks * bank_chunk - n_bank
    bank_p = jnp.pad(bank, ((0, pad), (0, 0))).reshape(n_chunks, bank_chunk, dim)
    valid = (jnp.arange(n_chunks * bank_chunk) < n_bank).reshape(n_chunks, bank_chunk)
    q_sq = jnp.sum(queries * queries, axis=-1, keepdims=True)
    q_nan = jnp.isnan(q_sq)
    m = queries.shape[0]

    def step(carry, xs):
        best_d, best_i = carry
        chunk, ok, start = xs
        # HIGHEST: on GPUs the default matmul precision (TF32) could mis-rank
        # near-ties.
        cross = jnp.matmul(queries, chunk.T, precision=jax.lax.Precision.HIGHEST)
        m_sq = jnp.sum(chunk * chunk, axis=-1)
        d = q_sq - 2.0 * cross + m_sq[None]
        d = jnp.where(jnp.isnan(d), jnp.inf, jnp.maximum(d, 0.0))
        d = jnp.where(q_nan | jnp.isnan(m_sq)[None], -jnp.inf, d)
        d = jnp.where(ok[None], d, jnp.inf)
        idx = start + jnp.arange(bank_chunk, dtype=jnp.int32)
        all_d = jnp.concatenate([best_d, d], axis=1)
        all_i = jnp.concatenate([best_i, jnp.broadcast_to(idx, d.shape)], axis=1)
        neg, pos = jax.lax.top_k(-all_d, k)
        return (-neg, jnp.take_along_axis(all_i, pos, axis=1)), None

    init = (
        jnp.full((m, k), jnp.inf, queries.dtype),
        jnp.zeros((m, k), jnp.int32),
    )
    starts = jnp.arange(n_chunks, dtype=jnp.int32) * bank_chunk
    (_, best_i), _ = jax.lax.scan(step, init, (bank_p, valid, starts))
    return best_i


@functools.partial(
    jax.jit, static_argnames=("k", "squared", "bank_chunk", "query_chunk")
)
def _search(queries, bank, *, k, squared, bank_chunk, query_chunk):
    m, dim = queries.shape
    n_q = -(-m // query_chunk)
    pad = n_q * query_chunk - m
    q = jnp.pad(queries, ((0, pad), (0, 0))).reshape(n_q, query_chunk, dim)
    b = jax.lax.stop_gradient(bank)

    def chunk(qc):
        idx = _topk_chunked(jax.lax.stop_gradient(qc), b, k, bank_chunk)
        # Exact distances of the selected neighbours, per chunk so that the
        # (query_chunk, k, D) differences are the largest temporary.
        diff = qc[:, None, :] - bank[idx]
        return jnp.sum(diff * diff, axis=-1), idx

    dist, idx = jax.lax.map(chunk, q)
    dist = dist.reshape(n_q * query_chunk, k)[:m]
    idx = idx.reshape(n_q * query_chunk, k)[:m]
    if not squared:
        # Double where: sqrt's gradient is infinite at 0 (a query in the bank); there
        # the distance is 0 with gradient 0. NaN stays NaN.
        zero = dist == 0
        dist = jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, dist)))
    return dist, idx


def nearest_neighbors(
    queries,
    bank,
    k: int,
    *,
    squared: bool = True,
    bank_chunk: int = 4096,
    query_chunk: int = 1024,
):
    """The ``k`` nearest rows of ``bank`` for every query, exactly, in bounded memory.

    Args:
      queries: (..., D) float array.
      bank: (N, D) float array (the memory bank).
      k: number of neighbours, 1 <= k <= N (static).
      squared: return squared Euclidean distances (faiss ``IndexFlatL2``, F2PAD eq. 4,
        official PatchCore) or plain ones (anomalib).
      bank_chunk: bank rows compared per step (static; memory knob).
      query_chunk: queries processed per step (static; memory knob).

    Returns:
      ``(distances, indices)``: (..., k) float distances sorted ascending and (..., k)
      int32 bank indices. Ties keep the lower index first.

    Raises:
      TypeError: non-floating ``queries`` or ``bank``, non-int ``k`` or chunk sizes.
      ValueError: ``queries`` without a feature axis, ``bank`` not (N, D) with the
        queries' D, an empty bank, ``k`` outside 1..N, chunk sizes < 1, NaN or inf in
        concrete ``queries`` or ``bank``.

    Note:
      Traced inputs (under ``jit``) are not checked for NaN: a NaN in a query makes
      that query's distances NaN, and a bank row holding a NaN is every query's
      nearest neighbour at distance NaN (NaN propagates, it is never skipped).
      Ranking runs in float32 at least (also for float16/bfloat16 inputs).

    Example:
      >>> import jax.numpy as jnp
      >>> from jad.ops import nearest_neighbors
      >>> bank = jnp.array([[0.0, 0.0], [3.0, 4.0]])
      >>> dist, idx = nearest_neighbors(jnp.array([[3.0, 3.0]]), bank, 1, squared=False)
      >>> dist.tolist(), idx.tolist()
      ([[1.0]], [[1]])
    """
    fn = "nearest_neighbors"
    queries = _checks.as_float_array(fn, "queries", queries, min_rank=1)
    bank = _checks.as_float_array(fn, "bank", bank)
    _checks.check_rank(fn, "bank", bank, 2, "N, D")
    if queries.shape[-1] != bank.shape[1]:
        raise ValueError(
            f"{fn}: queries (..., {queries.shape[-1]}) and bank (N, {bank.shape[1]}) "
            "must have the same feature dimension."
        )
    if bank.shape[0] == 0:
        raise ValueError(
            f"{fn}: bank must hold at least one row; got shape {tuple(bank.shape)}."
        )
    k = _checks.check_int(fn, "k", k, low=1, high=bank.shape[0])
    bank_chunk = _checks.check_int(fn, "bank_chunk", bank_chunk, low=1)
    query_chunk = _checks.check_int(fn, "query_chunk", query_chunk, low=1)
    _checks.check_finite(fn, "queries", queries)
    _checks.check_finite(fn, "bank", bank)
    batch = queries.shape[:-1]
    # Explicit row count: reshape(-1, 0) is ambiguous for D == 0.
    flat = queries.reshape(math.prod(batch), queries.shape[-1])
    dtype = jnp.result_type(flat, bank)
    dist, idx = _search(
        flat.astype(dtype),
        bank.astype(dtype),
        k=k,
        squared=squared,
        bank_chunk=min(bank_chunk, bank.shape[0]),
        query_chunk=max(1, min(query_chunk, flat.shape[0])),
    )
    return dist.reshape(*batch, k), idx.reshape(*batch, k)
