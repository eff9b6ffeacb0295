"""PSDL as its authors' public code runs it: a NumPy/scikit-learn reference.

Patchwise Sparse Dictionary Learning (Samele and Matteucci, "Patchwise Sparse
Dictionary Learning from Pre-Trained Neural Network Activation Maps"; ICLR 2022
submission, published at ICPR 2022). Written from the authors' repository
``StefanoSamele-PoliMi/PSDL-Anomaly-Detection`` (commit 4253b7f) and from the
``sparselandtools`` package it imports (``fubel/sparselandtools``, release 1.0.2;
the files used here are the same at the repository's head), without importing
either and without importing jad: the tests compare jad's JAX implementation with
this module, and the benchmark times it as "the authors' approach".

What follows which part of the authors' code:

- :func:`official_channels`: ``train.py`` ``train_single_layer`` (the first
  ``floor(sqrt(C))**2`` channels, ``torch.index_select`` with ``range(0, d*d)``) and
  ``train_multiple_layers`` / ``evaluate.py`` ``evaluate_multiple_layers`` (the
  "MULTIPLE" embedding: layer1 cut to its first ``C1 - surplus`` channels, then
  ``cat([layer3, avg_pool2d(layer2, 2), avg_pool2d(layer1, 4)])``, or the plain
  concatenation when layer2 and layer3 have the same height).
- :func:`dct_init`: sparselandtools ``dictionaries/__init__.py`` ``DCTDictionary(n,
  n)`` -> ``dictionaries/utils.py`` ``unitary_idctii_dictionary`` ->
  ``dictionary_from_transform(dctii, n, n, inverse=False)`` = ``kron(H.T, H.T)``
  with ``H`` the orthonormal DCT-II matrix (atoms are the columns).
- :func:`omp_codes`: sparselandtools ``pursuits.py`` ``OrthogonalMatchingPursuit
  .fit`` = scikit-learn ``orthogonal_mp(D, Y, n_nonzero_coefs=s, tol=None,
  precompute=True)`` with the signals as columns of ``Y``.
- :func:`approx_ksvd_update`, :func:`approx_ksvd`: sparselandtools ``learning.py``
  ``ApproximateKSVD.dictionary_update`` and ``KSVD.fit`` (also frozen, unchanged,
  in the authors' ``sparse_tools_v2/__init__.py``, which their scripts do not
  import).
- :func:`fit_location`, :func:`fit_official`: ``train.py`` (the per-location loop
  ``for i in range(H * W)``: sparsity ``round(d*d*config.SPARSE)`` with ``SPARSE =
  0.25`` and ``K_SVD_ITERATIONS = 20`` from ``config.py``; l1 norm and squared
  reconstruction error of the codes ``ApproximateKSVD.fit`` returns; mean and
  ``np.cov(..., rowvar=False) + 0.01 * I``).
- :func:`score_location`, :func:`score_official`: ``evaluate.py`` (a fresh OMP with
  the learned dictionary, the same two statistics, ``scipy.spatial.distance
  .mahalanobis`` with ``np.linalg.inv(cov)``).
- :func:`official_maps`: ``evaluate.py`` (``F.interpolate(..., mode='bicubic',
  align_corners=False)`` to the image size, ``gaussian_filter(sigma=4)`` per image,
  min-max over the class's whole test set).

Precision: the authors' signals are float32 torch activations but the DCT
dictionary is float64, so scikit-learn's OMP, the update and the statistics all run
in float64 (NumPy upcasts); float64 here (the default) is therefore their arithmetic.
``dtype=np.float32`` casts dictionary and signals to float32 (the benchmark's float32
runs), which the authors' code never does.

Layout: signals are rows here, ``(N, m)``, and codes ``(N, K)``; internally, as in
sparselandtools, signals are the columns of ``Y (m, N)`` and codes ``A (K, N)``.
Slow by design (Python loops, per-sample scipy calls): keep the inputs small.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import mahalanobis
from sklearn.linear_model import orthogonal_mp

__all__ = [
    "approx_ksvd",
    "approx_ksvd_update",
    "bicubic_resize_np",
    "dct_init",
    "fit_location",
    "fit_official",
    "n_nonzero_coefs",
    "official_channels",
    "official_maps",
    "omp_codes",
    "score_location",
    "score_official",
]

COV_REGULARISATION = 0.01  # train.py: np.cov(...) + 0.01 * I
SPARSE = 0.25  # config.py: SPARSE
K_SVD_ITERATIONS = 20  # config.py: K_SVD_ITERATIONS
GAUSSIAN_SIGMA = 4  # evaluate.py: gaussian_filter(score_map[i], sigma=4)


# ------------------------------------------------------------------------ channels


def _side(m: int) -> int:
    """``d`` with ``d * d == m``; refuses a non-square signal length."""
    d = math.isqrt(int(m))
    if d * d != m:
        raise ValueError(f"signal length {m} is not a perfect square")
    return d


def _avg_pool(x: np.ndarray, k: int) -> np.ndarray:
    """``F.avg_pool2d(x, kernel_size=[k, k])`` on channels-last ``(N, h, w, C)``.

    Stride equals the kernel and there is no padding (floor mode): trailing rows and
    columns that do not fill a window are dropped, as PyTorch does.
    """
    n, h, w, c = x.shape
    ho, wo = h // k, w // k
    x = x[:, : ho * k, : wo * k]
    return x.reshape(n, ho, k, wo, k, c).mean(axis=(2, 4))


def official_channels(
    features: Mapping[int, np.ndarray] | np.ndarray,
    multi: bool,
    dtype=np.float64,
) -> np.ndarray:
    """The signals PSDL learns from, ``(N, h, w, d*d)``, channels last.

    Single layer (``train_single_layer``): ``d = floor(sqrt(C))`` and the first
    ``d*d`` channels. Multi-level (``train_multiple_layers``): ``C = C1 + C2 + C3``,
    ``d = floor(sqrt(C))``, ``surplus = C - d*d`` channels dropped from the END of
    layer1 (its first ``C1 - surplus`` are kept, before pooling); then channels are
    ``[layer3, avgpool2(layer2), avgpool4(layer1)]`` when layer2's height differs
    from layer3's (only the heights are compared, and layer1 is then pooled by 4
    whatever its size), else the plain concatenation ``[layer3, layer2, layer1]``.

    Args:
      features: channels-last ``(N, h, w, C)`` activations; an array or a one-entry
        mapping for the single-layer mode, a mapping with levels 1, 2, 3 (layer1,
        layer2, layer3) for the multi-level mode.
      multi: the authors' ``TYPE = "MULTIPLE"``.
      dtype: output dtype.

    Returns:
      ``(N, h, w, d*d)`` signals (layer3's resolution in the multi-level mode).
    """
    if not multi:
        if isinstance(features, Mapping):
            if len(features) != 1:
                raise ValueError("single-layer mode takes one array (or one level)")
            (features,) = features.values()
        x = np.asarray(features, dtype)
        d = math.isqrt(x.shape[-1])
        return x[..., : d * d]
    if not isinstance(features, Mapping) or sorted(features) != [1, 2, 3]:
        raise ValueError("multi-level mode takes a mapping with levels 1, 2, 3")
    f1, f2, f3 = (np.asarray(features[k], dtype) for k in (1, 2, 3))
    total = f1.shape[-1] + f2.shape[-1] + f3.shape[-1]
    d = math.isqrt(total)
    surplus = total - d * d
    if surplus >= f1.shape[-1]:
        raise ValueError("the surplus channels exceed layer1's channels")
    f1 = f1[..., : f1.shape[-1] - surplus]
    if f2.shape[1] != f3.shape[1]:
        parts = [f3, _avg_pool(f2, 2), _avg_pool(f1, 4)]
    else:
        parts = [f3, f2, f1]
    out = np.concatenate(parts, axis=-1)
    assert out.shape[-1] == d * d
    return out


# ------------------------------------------------------------------ dictionary


def dct_init(d: int, dtype=np.float64) -> np.ndarray:
    """sparselandtools' ``DCTDictionary(d, d).matrix``: ``(d*d, d*d)``, orthonormal.

    ``dctii`` applied to the unit vectors gives ``H[k, i] = c_k sqrt(2/d) cos((i +
    1/2) k pi / d)`` (``c_0 = 1/sqrt 2``, else 1): the orthonormal DCT-II matrix,
    frequency by row. ``dictionary_from_transform(..., inverse=False)`` returns
    ``kron(H.T, H.T)``: atoms (columns) are the separable 2-D IDCT-II basis images,
    flattened row-major, atom ``k1 * d + k2`` with frequency ``k1`` along the slow
    index. Computed here from the cosine formula, as sparselandtools does (with
    NumPy's vectorised cosine instead of its Python sum).
    """
    i = np.arange(d)
    k = np.arange(d)[:, None]
    h = np.sqrt(2.0 / d) * np.cos((i + 0.5) * k * np.pi / d)
    h[0] /= np.sqrt(2.0)
    return np.kron(h.T, h.T).astype(dtype)


def n_nonzero_coefs(m: int, sparsity: float = SPARSE) -> int:
    """``round(d*d*config.SPARSE)``: Python's ``round`` (half to even) of a float."""
    d = _side(m)
    return round(d * d * sparsity)


# ---------------------------------------------------------------- sparse coding


def omp_codes(dictionary: np.ndarray, y: np.ndarray, n_nonzero: int) -> np.ndarray:
    """sparselandtools' ``OrthogonalMatchingPursuit(D, sparsity=s).fit(Y)``.

    Args:
      dictionary: ``(m, K)``.
      y: ``(m, N)`` signals as columns.
      n_nonzero: exact target sparsity (``tol=None``).

    Returns:
      ``(K, N)`` codes. scikit-learn squeezes a single signal to ``(K,)``; the shape
      is restored here.
    """
    codes = orthogonal_mp(
        dictionary, y, n_nonzero_coefs=n_nonzero, tol=None, precompute=True
    )
    return np.asarray(codes).reshape(dictionary.shape[1], y.shape[1])


def approx_ksvd_update(dictionary: np.ndarray, codes: np.ndarray, y: np.ndarray):
    """One sweep of ``ApproximateKSVD.dictionary_update``, in place.

    For atoms ``k = 0 .. K-1`` in order (Gauss-Seidel: atoms and code rows already
    updated in this sweep are used by the later ones): ``w`` = the signals whose
    current code ``codes[k]`` is nonzero; an atom without users is skipped (left as
    it is, never replaced). Otherwise ``D[:, k] = 0``; ``g = codes[k, w]``; ``E =
    D @ codes[:, w]`` (atom k now contributes nothing); ``d = Y_w g - E g``; ``d /=
    ||d||`` (no guard: a zero ``d`` gives NaN, as in sparselandtools); ``g = Y_wᵀ d
    - Eᵀ d``; ``D[:, k] = d``; ``codes[k, w] = g``. The support never changes.

    Args:
      dictionary: ``(m, K)``, overwritten.
      codes: ``(K, N)``, overwritten.
      y: ``(m, N)`` signals as columns.

    Returns:
      ``(dictionary, codes)``, the same arrays.
    """
    for k in range(dictionary.shape[1]):
        w = np.nonzero(codes[k, :])[0]
        if len(w) == 0:
            continue
        dictionary[:, k] = 0
        g = codes[k, w]
        yw = y[:, w]
        e = dictionary @ codes[:, w]
        atom = yw @ g - e @ g
        atom = atom / np.linalg.norm(atom)
        g = yw.T @ atom - e.T @ atom
        dictionary[:, k] = atom
        codes[k, w] = g
    return dictionary, codes


def _rms(dictionary: np.ndarray, codes: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((dictionary @ codes - y) ** 2)))


def approx_ksvd(
    signals,
    init_dict,
    n_nonzero: int,
    n_iter: int,
    dtype=np.float64,
    callback: Callable | None = None,
):
    """sparselandtools' ``ApproximateKSVD(D0, OrthogonalMatchingPursuit, s).fit(Y, n)``.

    ``KSVD.fit``: each of the ``n_iter`` iterations codes ALL signals by OMP with the
    current dictionary (``sparse_coding``), then runs one approximate update sweep
    (:func:`approx_ksvd_update`). It returns the last dictionary and the codes as the
    last sweep left them (post-update codes, not a fresh OMP). ``init_dict`` is
    copied (``Dictionary.__init__`` does ``np.array(matrix)``), never modified; no
    normalisation other than the per-atom one in the sweep.

    Args:
      signals: ``(N, m)`` training signals (rows).
      init_dict: ``(m, K)`` initial dictionary.
      n_nonzero: OMP sparsity.
      n_iter: iterations.
      dtype: working dtype (float64: the authors' arithmetic).
      callback: called as ``callback(iteration, omp_codes, dictionary, codes)``
        after each iteration with copies: the iteration's OMP codes ``(N, K)`` and
        the dictionary ``(m, K)`` and codes ``(N, K)`` after its sweep.

    Returns:
      ``(dictionary (m, K), codes (N, K), errors (n_iter,))``; ``errors[t]`` is the
      root-mean-square entry of ``D A - Y`` after iteration ``t``'s sweep.
    """
    y = np.asarray(signals, dtype).T
    dictionary = np.array(init_dict, dtype)
    codes = np.zeros((dictionary.shape[1], y.shape[1]), dtype)
    errors = np.empty(n_iter)
    for it in range(n_iter):
        codes = omp_codes(dictionary, y, n_nonzero)
        coded = codes.copy() if callback is not None else None
        approx_ksvd_update(dictionary, codes, y)
        errors[it] = _rms(dictionary, codes, y)
        if callback is not None:
            callback(it, coded.T, dictionary.copy(), codes.T.copy())
    return dictionary, codes.T, errors


# ------------------------------------------------------------------ statistics


def _statistics(dictionary: np.ndarray, codes: np.ndarray, y: np.ndarray):
    """``(l1, recon_err)``, each ``(N,)``: ``sum |a|`` and ``sum (D a - y)**2``."""
    l1 = np.abs(codes).sum(0)
    recon = np.square(np.dot(dictionary, codes) - y).sum(axis=0)
    return l1, recon


def fit_location(
    signals,
    n_iter: int = K_SVD_ITERATIONS,
    sparsity: float = SPARSE,
    stats: str = "ksvd",
    dtype=np.float64,
) -> dict:
    """One location of ``train.py``'s loop.

    A fresh ``ApproximateKSVD`` from the ``DCTDictionary(d, d)`` initialisation,
    ``round(d*d*sparsity)`` nonzeros, ``n_iter`` iterations; then the bivariate
    Gaussian of (l1 norm, squared reconstruction error) over the N training signals:
    mean and ``np.cov(rowvar=False)`` (ddof 1) ``+ 0.01 I``.

    Args:
      signals: ``(N, m)``, ``m = d*d``.
      n_iter: K-SVD iterations (authors: 20).
      sparsity: fraction of ``d*d`` (authors: 0.25).
      stats: ``"ksvd"`` (the authors': the codes ``fit`` returns) or ``"omp"``
        (fresh OMP codes with the final dictionary, what a test signal gets).
      dtype: working dtype of the K-SVD.

    Returns:
      ``dict(dictionary (m, m), mean (2,), cov (2, 2), inv_cov (2, 2), errors
      (n_iter,), n_nonzero)``.
    """
    if stats not in ("ksvd", "omp"):
        raise ValueError(f"stats must be 'ksvd' or 'omp', not {stats!r}")
    signals = np.asarray(signals, dtype)
    m = signals.shape[1]
    d = _side(m)
    s = n_nonzero_coefs(m, sparsity)
    dictionary, codes, errors = approx_ksvd(signals, dct_init(d), s, n_iter, dtype)
    y = signals.T
    codes = codes.T if stats == "ksvd" else omp_codes(dictionary, y, s)
    l1, recon = _statistics(dictionary, codes, y)
    mean = np.array([np.mean(l1), np.mean(recon)])
    cov = np.cov(np.vstack([l1, recon]).transpose(), rowvar=False)
    cov = cov + COV_REGULARISATION * np.identity(2)
    return dict(
        dictionary=dictionary,
        mean=mean,
        cov=cov,
        inv_cov=np.linalg.inv(cov),
        errors=errors,
        n_nonzero=s,
    )


def score_location(fitted: Mapping, signals) -> np.ndarray:
    """One location of ``evaluate.py``'s loop: ``(B,)`` Mahalanobis distances.

    OMP with the learned dictionary (same sparsity), l1 norm and squared
    reconstruction error, then ``scipy.spatial.distance.mahalanobis(sample, mean,
    inv(cov))`` per sample (the square root of the quadratic form).

    Args:
      fitted: one location of :func:`fit_location`'s result (``dictionary``,
        ``mean``, ``cov``, ``n_nonzero``; ``inv_cov`` is recomputed from ``cov``
        with ``np.linalg.inv`` as the authors do at test time).
      signals: ``(B, m)``.
    """
    dictionary = np.asarray(fitted["dictionary"])
    y = np.asarray(signals, dictionary.dtype).T
    codes = omp_codes(dictionary, y, int(fitted["n_nonzero"]))
    l1, recon = _statistics(dictionary, codes, y)
    inv_cov = np.linalg.inv(fitted["cov"])
    samples = np.vstack([l1, recon]).transpose()
    mean = np.asarray(fitted["mean"])
    return np.array([mahalanobis(sample, mean, inv_cov) for sample in samples])


# ---------------------------------------------------------------- whole maps


def fit_official(
    train,
    n_iter: int = K_SVD_ITERATIONS,
    sparsity: float = SPARSE,
    stats: str = "ksvd",
    locations: Iterable[tuple[int, int]] | None = None,
    progress: bool = False,
    dtype=np.float64,
) -> dict:
    """``train.py``: one :func:`fit_location` per spatial location.

    Args:
      train: ``(N, h, w, m)`` signals (:func:`official_channels`).
      n_iter, sparsity, stats, dtype: as :func:`fit_location`.
      locations: ``(i, j)`` pairs to fit (timing and extrapolation); the others are
        left NaN and ``fitted`` (h, w) marks the fitted ones. Default: all, in the
        authors' order (row-major, ``i * w + j``).
      progress: print one line per location (seconds) to stderr.

    Returns:
      Stacked arrays: ``dictionary (h, w, m, m)``, ``mean (h, w, 2)``, ``cov`` and
      ``inv_cov (h, w, 2, 2)``, ``errors (h, w, n_iter)``, ``fitted (h, w)`` bool,
      ``seconds (h, w)`` (fit time, NaN where not fitted) and ``n_nonzero``.
    """
    train = np.asarray(train)
    _, h, w, m = train.shape
    if locations is None:
        locations = [(i, j) for i in range(h) for j in range(w)]
    locations = list(locations)
    out = dict(
        dictionary=np.full((h, w, m, m), np.nan, dtype),
        mean=np.full((h, w, 2), np.nan),
        cov=np.full((h, w, 2, 2), np.nan),
        inv_cov=np.full((h, w, 2, 2), np.nan),
        errors=np.full((h, w, n_iter), np.nan),
        fitted=np.zeros((h, w), bool),
        seconds=np.full((h, w), np.nan),
        n_nonzero=n_nonzero_coefs(m, sparsity),
    )
    for count, (i, j) in enumerate(locations):
        start = time.perf_counter()
        loc = fit_location(train[:, i, j], n_iter, sparsity, stats, dtype)
        seconds = time.perf_counter() - start
        for key in ("dictionary", "mean", "cov", "inv_cov", "errors"):
            out[key][i, j] = loc[key]
        out["fitted"][i, j] = True
        out["seconds"][i, j] = seconds
        if progress:
            print(
                f"psdl_reference: location ({i}, {j}) {count + 1}/{len(locations)}"
                f" {seconds:.3f} s",
                file=sys.stderr,
            )
    return out


def _location(fitted: Mapping, i: int, j: int) -> dict:
    return dict(
        dictionary=fitted["dictionary"][i, j],
        mean=fitted["mean"][i, j],
        cov=fitted["cov"][i, j],
        n_nonzero=fitted["n_nonzero"],
    )


def score_official(fitted: Mapping, test) -> np.ndarray:
    """``evaluate.py``'s distance map before post-processing: ``(B, h, w)``.

    Locations that :func:`fit_official` skipped score NaN.
    """
    test = np.asarray(test)
    b, h, w, _ = test.shape
    scores = np.full((b, h, w), np.nan)
    mask = fitted.get("fitted", np.ones((h, w), bool))
    for i in range(h):
        for j in range(w):
            if mask[i, j]:
                scores[:, i, j] = score_location(_location(fitted, i, j), test[:, i, j])
    return scores


# ---------------------------------------------------------- map post-processing


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """PyTorch's ``get_cubic_upsample_coefficients`` (Keys, ``A = -0.75``), (4, n)."""

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)])


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of PyTorch's bicubic, ``align_corners=False``.

    Source coordinate ``(dst + 0.5) * n_in / n_out - 0.5``, not clamped for cubic;
    the four taps ``floor - 1 .. floor + 2`` are clamped to the border.
    """
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    weights = _cubic_weights(src - base)
    mat = np.zeros((n_out, n_in))
    for tap in range(4):
        idx = np.clip(base.astype(int) - 1 + tap, 0, n_in - 1)
        np.add.at(mat, (np.arange(n_out), idx), weights[tap])
    return mat


def bicubic_resize_np(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """NumPy twin of ``F.interpolate(x[:, None], size, mode="bicubic",
    align_corners=False)[:, 0]`` for ``(B, h, w)`` float64 (separable)."""
    x = np.asarray(x, np.float64)
    rows = _bicubic_matrix(x.shape[1], size[0])
    cols = _bicubic_matrix(x.shape[2], size[1])
    return np.einsum("Hh,bhw,Ww->bHW", rows, x, cols)


def official_maps(scores, image_size, backend: str = "auto") -> np.ndarray:
    """``evaluate.py``'s post-processing of the ``(B, h, w)`` distance maps.

    ``F.interpolate(torch.tensor(scores[:, None]), size=image_size, mode='bicubic',
    align_corners=False)`` (float64, as the authors' NumPy maps are), then
    ``scipy.ndimage.gaussian_filter(sigma=4)`` per image (scipy's defaults: mode
    ``"reflect"``, truncate 4), then ``(s - min) / (max - min)`` over the whole batch
    (the authors' batch is one class's test set). The authors ``.squeeze()`` the
    upsampled tensor, which breaks a batch of one; the batch axis is kept here.

    Args:
      scores: ``(B, h, w)``.
      image_size: ``H`` or ``(H, W)`` (the authors: 224, the crop size).
      backend: ``"torch"``, ``"numpy"`` (:func:`bicubic_resize_np`) or ``"auto"``
        (torch when importable).

    Returns:
      ``(B, H, W)`` float64 maps in ``[0, 1]``.
    """
    if np.ndim(image_size) == 0:
        image_size = (int(image_size), int(image_size))
    size = (int(image_size[0]), int(image_size[1]))
    scores = np.asarray(scores, np.float64)
    if backend not in ("auto", "torch", "numpy"):
        raise ValueError(f"unknown backend {backend!r}")
    torch = None
    if backend != "numpy":
        try:
            import torch
            import torch.nn.functional as functional
        except ImportError:
            if backend == "torch":
                raise
    if torch is not None:
        up = functional.interpolate(
            torch.tensor(scores[:, None]),
            size=size,
            mode="bicubic",
            align_corners=False,
        )[:, 0].numpy()
    else:
        up = bicubic_resize_np(scores, size)
    up = np.array(up)
    for i in range(up.shape[0]):
        up[i] = gaussian_filter(up[i], sigma=GAUSSIAN_SIGMA)
    lo, hi = up.min(), up.max()
    return (up - lo) / (hi - lo)
