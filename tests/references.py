"""Independent reference implementations, written once, as plain numpy loops.

Each reads like the paper or the public code it reproduces and shares no code with
jad; the tests compare jad's kernels with them (import with ``from references import
...``: ``tests/`` is on ``sys.path`` through ``conftest.py``). They are slow by design
(float64, Python loops): keep the inputs tiny.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "adaptive_avg_pool_np",
    "anomalib_greedy_np",
    "avg_pool_np",
    "mahalanobis_np",
    "official_greedy_np",
    "omp_loop",
    "unfold_np",
]


# ----------------------------------------------------------------- greedy coreset


def _distances_to(points: np.ndarray, index: int) -> np.ndarray:
    """(N,) Euclidean distances of every point to ``points[index]``."""
    return np.sqrt(np.sum((points - points[index]) ** 2, axis=-1))


def official_greedy_np(points, n_select, starts) -> list[int]:
    """Official PatchCore's ``ApproximateGreedyCoresetSampler`` selection loop.

    amazon-science/patchcore-inspection (``sampler.py``): the running distance (the
    "anchor") starts as the mean distance to the start points, which are not
    selected; each step takes the farthest point and lowers every distance to its
    distance to that point.

    Args:
      points: (N, d) projected points.
      n_select: number of picks.
      starts: start indices (official: 10 random points).

    Returns:
      List of ``n_select`` indices in selection order.
    """
    points = np.asarray(points, np.float64)
    anchor = np.mean(
        np.stack([_distances_to(points, s) for s in starts], axis=1), axis=1
    )
    selected = []
    for _ in range(n_select):
        idx = int(np.argmax(anchor))
        selected.append(idx)
        anchor = np.minimum(anchor, _distances_to(points, idx))
    return selected


def anomalib_greedy_np(points, n_select, first) -> list[int]:
    """anomalib's ``KCenterGreedy``: the random first point is selected first.

    Args:
      points: (N, d) projected points.
      n_select: number of picks.
      first: index of the first (random) pick.

    Returns:
      List of ``n_select`` indices in selection order, ``first`` first.
    """
    points = np.asarray(points, np.float64)
    min_distances = None
    selected = []
    idx = int(first)
    for _ in range(n_select):
        d = _distances_to(points, idx)
        min_distances = d if min_distances is None else np.minimum(min_distances, d)
        selected.append(idx)
        min_distances[idx] = 0.0
        idx = int(np.argmax(min_distances))
    return selected


# ------------------------------------------------------------------------ patches


def adaptive_avg_pool_np(x, size: int) -> np.ndarray:
    """Torch's ``adaptive_avg_pool1d`` over the last axis, one bin at a time.

    Bin i averages ``x[..., floor(i L / n) : ceil((i + 1) L / n)]``.
    """
    x = np.asarray(x, np.float64)
    length = x.shape[-1]
    out = np.empty(x.shape[:-1] + (size,))
    for i in range(size):
        start = (i * length) // size
        end = -((-(i + 1) * length) // size)
        out[..., i] = x[..., start:end].mean(axis=-1)
    return out


def unfold_np(x, size: int) -> np.ndarray:
    """(B, h, w, C) -> (B, h, w, C * size**2): torch ``Unfold(size, padding=size//2)``.

    Output entry ``(c, di, dj)`` (flattened in that order, as torch's rows) of
    location (i, j) is ``x[i + di - size // 2, j + dj - size // 2, c]``, zero
    outside the map.
    """
    x = np.asarray(x, np.float64)
    b, h, w, c = x.shape
    r = size // 2
    out = np.zeros((b, h, w, c, size, size))
    for i in range(h):
        for j in range(w):
            for di in range(size):
                for dj in range(size):
                    ii, jj = i + di - r, j + dj - r
                    if 0 <= ii < h and 0 <= jj < w:
                        out[:, i, j, :, di, dj] = x[:, ii, jj, :]
    return out.reshape(b, h, w, c * size * size)


def avg_pool_np(x, size: int) -> np.ndarray:
    """(B, h, w, C): torch ``AvgPool2d(size, 1, size // 2)``, count_include_pad.

    Each output is the sum of its window (zeros outside the map) over size**2.
    """
    x = np.asarray(x, np.float64)
    b, h, w, c = x.shape
    p = size // 2
    padded = np.zeros((b, h + 2 * p, w + 2 * p, c))
    padded[:, p : p + h, p : p + w] = x
    oh, ow = h + 2 * p - size + 1, w + 2 * p - size + 1
    out = np.zeros((b, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = padded[:, i : i + size, j : j + size].sum(axis=(1, 2))
    return out / (size * size)


# ---------------------------------------------------------------------- gaussians


def mahalanobis_np(covariance, mean, x) -> float:
    """Mahalanobis distance of one point, ``sqrt((x - mu)^T Sigma^-1 (x - mu))``.

    Through a linear solve with Sigma (not a Cholesky factor).
    """
    diff = np.asarray(x, np.float64) - np.asarray(mean, np.float64)
    sq = float(diff @ np.linalg.solve(np.asarray(covariance, np.float64), diff))
    return float(np.sqrt(max(sq, 0.0)))


# ----------------------------------------------------------------- SGFR


def omp_loop(X, y, s, eps, allowed=None):
    """SGFR Algorithm 1 as written: X (m, N) columns, signed argmax, LS, residual.

    Returns the ordered support and the residual e (SGFR eq. 5).
    """
    allowed = np.arange(X.shape[1]) if allowed is None else np.asarray(allowed)
    support, e = [], y.copy()
    while len(support) < s and np.linalg.norm(e) > eps:
        candidates = [j for j in allowed if j not in support]
        if not candidates:
            break
        corr = X[:, candidates].T @ e  # SGFR eq. 3: no absolute value
        support.append(candidates[int(np.argmax(corr))])
        q, r = np.linalg.qr(X[:, support])  # eq. 4: least squares by QR
        coef = np.linalg.solve(r, q.T @ y)
        e = y - X[:, support] @ coef  # eq. 5
    return support, e


def sgfr_maps_np(banks, test, score_levels, ref_level, s_ref, s, eps=1e-6):
    """SGFR Algorithm 2 in float64: per image M_S at ``ref_level``, then per-level
    per-location L2 norms of e_l from OMP over M_S. banks/test: level -> (N|B, h, w, c).
    """
    n = len(banks[ref_level])
    X = {lv: np.asarray(b, np.float64).reshape(n, -1).T for lv, b in banks.items()}
    out = {lv: [] for lv in score_levels}
    for b in range(len(test[ref_level])):
        m_s, _ = omp_loop(X[ref_level], np.asarray(test[ref_level][b], np.float64)
                          .reshape(-1), s_ref, eps)
        for lv in score_levels:
            y = np.asarray(test[lv][b], np.float64)
            _, e = omp_loop(X[lv], y.reshape(-1), s, eps, allowed=m_s)
            out[lv].append(np.linalg.norm(e.reshape(y.shape), axis=-1))
    return {lv: np.stack(maps) for lv, maps in out.items()}
