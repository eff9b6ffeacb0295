"""A standing fuzz suite over jad's public array functions (issue 16).

Every public function of :mod:`jad.sparse`, :mod:`jad.metrics`, :mod:`jad.ops`
(including ``nearest_neighbors``), the method modules (:mod:`jad.methods`,
:mod:`jad.methods.patchcore`, :mod:`jad.methods.padim`, :mod:`jad.methods.sgfr`,
:mod:`jad.methods.psdl`) and the array entry points of :mod:`jad.pipeline` is called
on hypothesis-drawn inputs: random ranks, zero-size axes, NaN and inf, every dtype
(bool, int8..int64, uint8, float16, bfloat16, float32, float64, complex64),
mismatched shapes and out-of-range arguments. For each call:

- either it raises a documented error (``ValueError``, ``TypeError``,
  ``jad.errors.DatasetError``, ``jad.errors.WeightsError``) from jad's own code (not
  from inside jax or numpy) whose message names the function or one of its arguments;
- or it returns a result that is finite when the inputs are, that is not finite when
  an input holds a NaN or inf (a NaN never becomes a finite "normal" score), and that
  matches an independent reference where there is one (scikit-learn, scipy, numpy
  loops).

Inputs the strategy knows to be valid must be accepted; for the metrics and
``nearest_neighbors`` the expected error class is derived from the input too.

``test_every_public_function_is_fuzzed`` walks the subpackages' ``__all__``, so a new
public function fails the suite until it gets a strategy here (or a place, with its
reason, in ``NOT_FUZZED``).

Profiles (registered in ``tests/conftest.py``): ``ci``, the default, derandomized and
a few examples per function (the file runs in about a minute on 2 cores), and
``deep``, many more: ``JAD_HYPOTHESIS_PROFILE=deep pytest tests/test_robustness.py``
or ``pytest --hypothesis-profile=deep tests/test_robustness.py``. Shapes and static
arguments are drawn from small fixed sets so that XLA compiles a bounded number of
programs.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import numbers
import os
import random
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import psdl_reference
import pytest
import scipy.fft
import scipy.ndimage as ndi
from hypothesis import example, given, settings
from hypothesis import strategies as st
from references import adaptive_avg_pool_np, avg_pool_np, sgfr_maps_np, unfold_np
from skimage.measure import label as sk_label
from sklearn import metrics as skm
from sklearn.linear_model import orthogonal_mp
from sklearn.random_projection import johnson_lindenstrauss_min_dim

import jad
from jad import detector as jdet
from jad import metrics, ops, pipeline, sparse
from jad.errors import DatasetError, WeightsError
from jad.methods import padim, patchcore, psdl, sgfr

# ----------------------------------------------------------------- registry


# Modules whose ``__all__`` the suite covers, with the functions deliberately left
# out: they take no arrays (names, paths, registries), so there is nothing to fuzz.
FUZZED_MODULES = (
    "jad.sparse",
    "jad.metrics",
    "jad.ops",
    "jad.methods",
    "jad.methods.patchcore",
    "jad.methods.padim",
    "jad.methods.sgfr",
    "jad.methods.psdl",
    "jad.pipeline",
    "jad.detector",
    "jad.io",
)
NOT_FUZZED = {
    "jad.methods.make_config": "takes a method and preset name and config fields",
    "jad.methods.patchcore.init": "reads only the embeddings' shape (eval_shape)",
    "jad.methods.padim.init": "reads only the embeddings' shape (eval_shape)",
    "jad.methods.sgfr.init": "reads only the embeddings' shape (eval_shape)",
    "jad.methods.psdl.init": "reads only the embeddings' shapes (a state of zeros)",
    "jad.methods.psdl.min_images": "takes a config and a dict level -> channel count",
    "jad.methods.psdl.signal_dims": "takes a config and a dict level -> channel count",
    "jad.io.atomic_folder": "takes a path, no arrays",
    "jad.io.file_digests": "takes a path, no arrays",
    "jad.io.recover": "takes a path, no arrays",
    "jad.io.verify_digests": "takes a path, no arrays",
    "jad.io.save_pytree": "writes a folder (round trip: tests/io)",
    "jad.io.restore_pytree": "reads a folder (mismatches: tests/io)",
    "jad.io.tree_mismatches": "compares paths, shapes and dtypes (cases: tests/io)",
    "jad.metrics.as_scores": "the input check of every metric, fuzzed through each",
    "jad.metrics.as_binary": "the input check of every metric, fuzzed through each",
    "jad.methods.get_method": "takes a method name, no arrays",
    "jad.methods.list_methods": "takes nothing",
    "jad.methods.register": "takes a Method record, no arrays",
    "jad.pipeline.check_output_folder": "takes a path, no arrays",
    "jad.pipeline.load_detector": "takes a path, no arrays",
    "jad.pipeline.read_metadata": "takes a path, no arrays",
    "jad.pipeline.save_detector": "writes a folder; its arrays come from a Detector",
}
FUZZED: set[str] = set()


def fuzzes(*names: str):
    """Registers the public functions a test fuzzes (``module.function``)."""

    def register(test):
        FUZZED.update(names)
        return test

    return register


def _public_functions():
    for module_name in FUZZED_MODULES:
        module = importlib.import_module(module_name)
        for attr in module.__all__:
            if inspect.isfunction(getattr(module, attr)):
                yield f"{module_name}.{attr}"


def test_every_public_function_is_fuzzed():
    public = set(_public_functions())
    missing = sorted(public - FUZZED - set(NOT_FUZZED))
    assert not missing, f"public functions without a fuzz strategy: {missing}"
    stale = sorted((FUZZED | set(NOT_FUZZED)) - public)
    assert not stale, f"fuzz registry names that are no public function: {stale}"


# ----------------------------------------------------------------- budget


def budget(weight: float = 1.0) -> int:
    """Examples for one test: ``weight`` times the profile's ``max_examples``."""
    return max(2, round(settings.default.max_examples * weight))


# ----------------------------------------------------------------- the property

_JAD_ROOT = os.path.dirname(os.path.abspath(jad.__file__)) + os.sep
DOCUMENTED_ERRORS = (ValueError, TypeError, DatasetError, WeightsError)


def _jad_names() -> set[str]:
    """Names a message may start with: every public jad function and config."""
    names = {"PaDiM", "PatchCore"}
    for module_name in (*FUZZED_MODULES, "jad.backbones", "jad.methods.coreset"):
        module = importlib.import_module(module_name)
        short = module_name.rsplit(".", 1)[-1]
        for attr in module.__all__:
            names.update({attr, f"{short}.{attr}"})
    return names


_PREFIXES = _jad_names()


class Refused:
    """A documented error a call raised (the property holds)."""

    def __init__(self, error: BaseException):
        self.error = error

    def __repr__(self) -> str:
        return f"Refused({self.error!r})"


def _origin(err: BaseException) -> str:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename) if tb else "?"


def _mentions(message: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message) is not None


def attempt(label: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` (blocked on), or :class:`Refused` for a documented error.

    Fails the test for any other exception, for a documented type raised from inside
    a dependency (jax, numpy, scipy), and for a message that names neither the
    function nor one of its arguments.
    """
    try:
        return jax.block_until_ready(fn(*args, **kwargs))
    except DOCUMENTED_ERRORS as err:
        message = str(err)
        origin = _origin(err)
        where = f"{label}: {type(err).__name__}({message!r}) raised in {origin}"
        assert origin.startswith(_JAD_ROOT), f"raw error from a dependency: {where}"
        names = {fn.__name__, *inspect.signature(fn).parameters}
        prefix = re.match(r"^\s*([\w.]+):", message)
        named = any(_mentions(message, name) for name in names) or (
            prefix is not None and prefix.group(1) in _PREFIXES
        )
        assert named, f"message names neither function nor argument: {where}"
        return Refused(err)
    except Exception as err:  # noqa: BLE001 (any other type breaks the property)
        pytest.fail(
            f"{label}: undocumented {type(err).__module__}.{type(err).__name__}: "
            f"{err} (raised in {_origin(err)})"
        )


def _is_array_like(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array, np.generic))


def _finite(x) -> bool:
    """All values finite (True for non-float data)."""
    if not _is_array_like(x):
        return not (isinstance(x, float) and not math.isfinite(x))
    a = np.asarray(x)
    if a.dtype.kind in "fc" or a.dtype == jnp.bfloat16:
        with np.errstate(invalid="ignore", over="ignore"):
            return bool(np.isfinite(a.astype(np.complex128)).all())
    return True


def _float_leaves(out) -> list[np.ndarray]:
    leaves = []
    for leaf in jax.tree_util.tree_leaves(out):
        if isinstance(leaf, (float, np.floating)):
            leaves.append(np.asarray(leaf))
        elif _is_array_like(leaf):
            a = np.asarray(leaf)
            if a.dtype.kind in "fc" or a.dtype == jnp.bfloat16:
                leaves.append(a)
    return leaves


def check_result(label: str, out, inputs, *, propagates: bool = True) -> None:
    """Finite output from finite inputs; non-finite inputs leave a trace in it.

    ``propagates=False`` for functions where a non-finite input may legitimately be
    dropped (a channel subset, a nearest-neighbour resize); their reference decides.
    """
    finite_in = all(_finite(x) for x in inputs)
    finite_out = all(_finite(leaf) for leaf in _float_leaves(out))
    if finite_in:
        assert finite_out, f"{label}: finite inputs gave a NaN or inf (silently)"
    elif propagates and _float_leaves(out):
        assert not finite_out, (
            f"{label}: a NaN/inf input gave an all-finite result (it must raise or "
            "propagate)"
        )


def close(actual, expected, *, dtype="float32", label="", scale=1.0) -> None:
    """``actual`` == ``expected`` within the rounding of ``dtype`` (NaN == NaN)."""
    # Fuzzed values are O(1) (or O(1e4) with "large"); sums over a few terms.
    rtol = {"float16": 2e-2, "bfloat16": 5e-2, "float64": 1e-10}.get(str(dtype), 2e-4)
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (label, actual.shape, expected.shape)
    np.testing.assert_allclose(
        actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True, err_msg=label
    )


# ----------------------------------------------------------------- array strategies

ALL_DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# Mostly valid data (so the references run), sometimes every other dtype.
SCORE_DTYPES = ("float32",) * 6 + ("float64",) * 2 + ALL_DTYPES
KINDS = ("normal",) * 6 + ("zeros", "ties", "large", "nan", "inf", "-inf")


def _dtype(name: str):
    return jnp.dtype(name)


def is_float(dtype) -> bool:
    return jnp.issubdtype(jnp.dtype(dtype), jnp.floating)


def make_array(shape, dtype, kind="normal", seed=0, *, container="numpy"):
    """A numpy (or JAX) array of ``shape`` and ``dtype``; ``kind`` sets its values."""
    rng = np.random.default_rng(seed)
    x = np.array(rng.standard_normal(shape))
    if kind == "zeros":
        x = np.zeros(shape)
    elif kind == "ties":
        x = np.round(x)
    elif kind == "large":
        x = x * 1e4
    elif kind in ("nan", "inf", "-inf") and x.size:
        x.flat[rng.integers(x.size)] = float(kind)
    dt = _dtype(dtype)
    if dt == np.bool_:
        a = x > 0
    elif jnp.issubdtype(dt, jnp.integer):
        info = np.iinfo(dt)
        x = np.where(np.isfinite(x), x, 0.0)
        a = np.clip(np.round(x * 2), info.min, info.max).astype(dt)
    elif jnp.issubdtype(dt, jnp.complexfloating):
        a = (x + 0.5j).astype(dt)
    else:
        with np.errstate(over="ignore"):
            a = x.astype(dt)
    return jnp.asarray(a) if container == "jax" else a


@st.composite
def arrays(draw, shapes, dtypes=SCORE_DTYPES, kinds=KINDS, containers=("numpy",)):
    """An array from ``shapes`` x ``dtypes`` x value ``kinds``."""
    shape = draw(st.sampled_from(shapes))
    return make_array(
        shape,
        draw(st.sampled_from(dtypes)),
        draw(st.sampled_from(kinds)),
        draw(st.integers(0, 7)),
        container=draw(st.sampled_from(containers)),
    )


def dtype_name(x) -> str:
    return str(np.asarray(x).dtype) if _is_array_like(x) else type(x).__name__


def is_real_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def is_static_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


# Scalars for fraction-like arguments: valid, out of range, NaN, wrong types.
FRACTIONS = (
    0.3,
    0.3,
    1.0,
    0.05,
    np.float32(0.25),
    np.int64(1),
    1e-9,
    0.0,
    -0.1,
    1.5,
    float("nan"),
    float("inf"),
    "0.3",
    True,
    None,
)


# ================================================================= jad.metrics

RANKING = (
    "auroc",
    "average_precision",
    "f1_optimal_threshold",
    "roc_curve",
    "precision_recall_curve",
)
SCORE_SHAPES = ((), (1,), (8,), (8,), (2, 5), (2, 5), (3, 0), (0,), (2, 2, 3))
LABEL_KINDS = ("binary",) * 5 + ("all0", "all1", "255", "two", "half", "nan", "neg")
LABEL_DTYPES = ("bool",) * 4 + ("int64", "uint8") + ALL_DTYPES


def make_labels(shape, dtype, kind, seed):
    """Labels of ``kind``: binary, one class only, 0/255, non-binary values."""
    rng = np.random.default_rng(seed + 100)
    x = np.array(rng.random(shape) < 0.4, np.float64)
    if x.size >= 2 and kind == "binary":
        x.flat[0], x.flat[-1] = 1.0, 0.0  # both classes
    if kind == "all0":
        x[...] = 0
    elif kind == "all1":
        x[...] = 1
    elif kind == "255":
        x *= 255
    elif kind == "two":
        x *= 2
    elif kind == "half":
        x *= 0.5
    elif kind == "neg":
        x *= -1
    elif kind == "nan" and x.size:
        x.flat[0] = np.nan
    dt = _dtype(dtype)
    if dt == np.bool_:
        return x != 0
    if jnp.issubdtype(dt, jnp.integer):
        x = np.where(np.isfinite(x), x, 0.0)
        info = np.iinfo(dt)
        return np.clip(x, info.min, info.max).astype(dt)
    return x.astype(dt)


def _binary_problems(labels) -> set:
    """Expected error types of ``labels`` given as a metric's binary argument."""
    if not _is_array_like(labels):
        return {TypeError}
    dt = np.asarray(labels).dtype
    if jnp.issubdtype(dt, jnp.complexfloating):
        return {TypeError}
    a = np.asarray(labels).astype(np.float64)
    if a.size and not np.isin(a, (0.0, 1.0)).all():
        return {ValueError}
    return set()


def _score_problems(scores) -> set:
    if not _is_array_like(scores) or not is_float(np.asarray(scores).dtype):
        return {TypeError}
    return set() if _finite(scores) else {ValueError}


def expect(label: str, out, problems: set) -> bool:
    """Checks ``out`` against the expected errors; True when a result came."""
    if problems:
        assert isinstance(out, Refused), (
            f"{label}: accepted invalid input (expected {problems}); got {out!r}"
        )
        assert isinstance(out.error, tuple(problems)), (
            f"{label}: expected {problems}, got {type(out.error).__name__}: {out.error}"
        )
        return False
    assert not isinstance(out, Refused), f"{label}: refused valid input: {out.error}"
    return True


def sk_f1_best(labels, scores) -> float:
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(
            precision + recall > 0, 2 * precision * recall / (precision + recall), 0
        )
    return float(np.max(f1))


@fuzzes(*(f"jad.metrics.{name}" for name in RANKING))
@pytest.mark.parametrize("name", RANKING)
@settings(max_examples=budget(1.0))
@given(data=st.data())
def test_ranking_metrics(name, data):
    fn = getattr(metrics, name)
    scores = data.draw(arrays(SCORE_SHAPES, containers=("numpy", "jax")), "scores")
    shape = np.shape(scores)
    if data.draw(st.integers(0, 5), "other_shape") == 0:
        shape = data.draw(st.sampled_from(SCORE_SHAPES), "label_shape")
    labels = make_labels(
        shape,
        data.draw(st.sampled_from(LABEL_DTYPES), "label_dtype"),
        data.draw(st.sampled_from(LABEL_KINDS), "label_kind"),
        data.draw(st.integers(0, 7), "label_seed"),
    )
    out = attempt(name, fn, scores, labels)

    problems = _score_problems(scores) | _binary_problems(labels)
    if not problems and np.shape(scores) != np.shape(labels):
        problems = {ValueError}
    if not problems:
        y = np.asarray(labels).astype(np.float64).reshape(-1) == 1
        if not y.any() or (name in ("auroc", "roc_curve") and y.all()):
            problems = {ValueError}
    if not expect(name, out, problems):
        return
    # The curves' first threshold is inf by definition (as in scikit-learn).
    check_result(name, out[:2] if name == "roc_curve" else out, [scores, labels])
    s = np.asarray(scores).astype(np.float64).reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn: "no negative samples"
        if name == "auroc":
            assert isinstance(out, float)
            close(out, skm.roc_auc_score(y, s), dtype="float64", label=name)
        elif name == "average_precision":
            close(out, skm.average_precision_score(y, s), dtype="float64", label=name)
        elif name == "f1_optimal_threshold":
            best = sk_f1_best(y, s)
            close(out.f1, best, dtype="float64", label=name)
            predicted = s >= out.threshold
            tp = np.sum(predicted & y)
            f1_at = 2 * tp / (predicted.sum() + y.sum())
            close(f1_at, best, dtype="float64", label=f"{name} at its threshold")
            # The lowest threshold reaching the maximum (scikit-learn's argmax).
            lower = s[s < out.threshold]
            if lower.size:
                below = s >= lower.max()
                f1_below = 2 * np.sum(below & y) / (below.sum() + y.sum())
                assert f1_below < best - 1e-12, name
        elif name == "roc_curve":
            ref = skm.roc_curve(y, s, drop_intermediate=False)
            for got, want in zip(out, ref, strict=True):
                close(got, want, dtype="float64", label=name)
        else:
            ref = skm.precision_recall_curve(y, s)
            for got, want in zip(out, ref, strict=True):
                close(got, want, dtype="float64", label=name)


# --- PRO

MAP_SHAPES = (
    (4, 4),
    (2, 3, 4),
    (2, 3, 4),
    (1, 5, 5),
    (2, 0, 3),
    (3,),
    (),
    (2, 1, 2, 3),
)


def make_masks(shape, dtype, kind, seed):
    """Blob-free random masks (regions of every size); kinds as for labels."""
    return make_labels(shape, dtype, kind, seed)


def ref_pro_point(maps, masks, threshold):
    """(FPR, PRO) of ``maps >= threshold``, by brute force (scikit-image regions)."""
    detected = maps >= threshold
    fpr = np.sum(detected & ~masks) / np.sum(~masks)
    overlaps = []
    for image, mask in zip(detected, masks, strict=True):
        regions = sk_label(mask, connectivity=2)
        for r in range(1, regions.max() + 1):
            region = regions == r
            overlaps.append(np.sum(image & region) / np.sum(region))
    return fpr, float(np.mean(overlaps))


def ref_aupro(maps, masks, max_fpr):
    """Exact AUPRO: the polyline through every distinct score, integrated to max_fpr."""
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        points.append(ref_pro_point(maps, masks, t))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x1 <= x0 or x0 >= max_fpr:
            continue
        x_end = min(x1, max_fpr)
        y_end = y0 + (y1 - y0) * (x_end - x0) / (x1 - x0)
        area += (x_end - x0) * (y0 + y_end) / 2
    return area / max_fpr


def _fraction_problems(value, *, low_open=True) -> set:
    if not is_real_number(value):
        return {TypeError}
    v = float(value)
    ok = (0.0 < v <= 1.0) if low_open else (0.0 <= v < 1.0)
    return set() if ok else {ValueError}


@st.composite
def pro_inputs(draw):
    maps = draw(arrays(MAP_SHAPES, containers=("numpy", "jax")), "maps")
    shape = np.shape(maps)
    if draw(st.integers(0, 5)) == 0:
        shape = draw(st.sampled_from(MAP_SHAPES), "mask_shape")
    masks = make_masks(
        shape,
        draw(st.sampled_from(LABEL_DTYPES), "mask_dtype"),
        draw(st.sampled_from(LABEL_KINDS), "mask_kind"),
        draw(st.integers(0, 7)),
    )
    return maps, masks


def _pro_problems(maps, masks) -> set:
    problems = _score_problems(maps) | _binary_problems(masks)
    if problems:
        return problems
    if np.shape(maps) != np.shape(masks) or np.ndim(maps) < 2:
        return {ValueError}
    m = np.asarray(masks).astype(np.float64) == 1
    if not m.any() or m.all():
        return {ValueError}
    return set()


def _as_images(maps, masks):
    maps = np.asarray(maps).astype(np.float64)
    h, w = maps.shape[-2:]
    masks = np.asarray(masks).astype(np.float64) == 1
    return maps.reshape(-1, h, w), masks.reshape(-1, h, w)


@fuzzes("jad.metrics.pro")
@settings(max_examples=budget(1.0))
@given(
    inputs=pro_inputs(),
    max_fpr=st.sampled_from(FRACTIONS),
    tolerance=st.sampled_from((0.0, 0.0, 1e-6, 0.5, -1.0, 1.0, float("nan"), "0")),
)
# Found by this suite: empty images were a reshape error.
@example(
    inputs=(np.zeros((2, 0, 3), np.float32), np.zeros((2, 0, 3), bool)),
    max_fpr=0.3,
    tolerance=0.0,
)
def test_pro(inputs, max_fpr, tolerance):
    maps, masks = inputs
    out = attempt("pro", metrics.pro, maps, masks, max_fpr=max_fpr, tolerance=tolerance)
    problems = (
        _pro_problems(maps, masks)
        | _fraction_problems(max_fpr)
        | _fraction_problems(tolerance, low_open=False)
    )
    if not expect("pro", out, problems):
        return
    check_result("pro", out, [maps])
    assert isinstance(out, float) and 0.0 <= out <= 1.0
    close(out, ref_aupro(*_as_images(maps, masks), float(max_fpr)), dtype="float64")


@fuzzes("jad.metrics.pro_curve")
@settings(max_examples=budget(1.0))
@given(inputs=pro_inputs(), max_fpr=st.sampled_from(FRACTIONS))
def test_pro_curve(inputs, max_fpr):
    maps, masks = inputs
    out = attempt("pro_curve", metrics.pro_curve, maps, masks, max_fpr=max_fpr)
    if not expect(
        "pro_curve", out, _pro_problems(maps, masks) | _fraction_problems(max_fpr)
    ):
        return
    check_result("pro_curve", out[:2], [maps])  # thresholds[0] is inf
    fpr, pro, thresholds = out
    assert fpr.shape == pro.shape == thresholds.shape and fpr.ndim == 1
    assert fpr[0] == 0 and pro[0] == 0 and thresholds[0] == np.inf
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    assert np.all(np.diff(thresholds) < 0)
    assert fpr[-1] >= max_fpr and pro[-1] <= 1.0
    if max_fpr < 1:  # it stops at its first point with fpr >= max_fpr
        assert fpr.size < 2 or fpr[-2] < max_fpr
    else:  # the whole curve, to (1, 1)
        close(pro[-1], 1.0, dtype="float64")
    images, image_masks = _as_images(maps, masks)
    for x, y, t in zip(fpr[1:], pro[1:], thresholds[1:], strict=True):
        close((x, y), ref_pro_point(images, image_masks, t), dtype="float64")


def _curves(draw):
    """A PRO curve to integrate: a real one, or a malformed one."""
    rng = np.random.default_rng(draw(st.integers(0, 7)))
    masks = rng.random((2, 4, 4)) < 0.3
    masks[0, 0, 0], masks[0, 0, 1] = True, False
    maps = rng.random((2, 4, 4)) + masks
    curve = metrics.pro_curve(maps, masks)
    kind = draw(
        st.sampled_from(
            ("real",) * 4
            + (
                "nan",
                "inf",
                "reversed",
                "short",
                "2d",
                "empty",
                "tuple",
                "none",
                "lists",
                "start",
            )
        )
    )
    fpr, pro = curve.fpr.copy(), curve.pro.copy()
    if kind == "nan":
        fpr[1] = np.nan
    elif kind == "inf":
        pro[-1] = np.inf
    elif kind == "reversed":
        fpr = fpr[::-1].copy()
    elif kind == "short":
        pro = pro[:-1]
    elif kind == "2d":
        fpr, pro = fpr[None], pro[None]
    elif kind == "empty":
        fpr, pro = fpr[:0], pro[:0]
    elif kind == "start":
        fpr, pro = fpr[2:], pro[2:]
    if kind == "tuple":
        return kind, (fpr, pro), (maps, masks)
    if kind == "none":
        return kind, None, (maps, masks)
    if kind == "lists":
        return (
            kind,
            metrics.PROCurve(fpr.tolist(), pro.tolist(), curve.thresholds),
            (
                maps,
                masks,
            ),
        )
    return kind, metrics.PROCurve(fpr, pro, curve.thresholds[: fpr.size]), (maps, masks)


@fuzzes("jad.metrics.pro_area")
@settings(max_examples=budget(1.0))
@given(data=st.data(), max_fpr=st.sampled_from(FRACTIONS))
def test_pro_area(data, max_fpr):
    kind, curve, (maps, masks) = _curves(data.draw)
    out = attempt("pro_area", metrics.pro_area, curve, max_fpr=max_fpr)
    problems = _fraction_problems(max_fpr)
    if kind in ("tuple", "none"):
        problems |= {TypeError}
    elif kind == "start" and not problems:
        problems = {ValueError} if curve.fpr[0] > max_fpr else set()
    elif kind not in ("real", "lists", "start"):
        problems |= {ValueError}
    if not expect("pro_area", out, problems):
        return
    check_result("pro_area", out, [])
    if kind in ("real", "lists"):
        close(out, ref_aupro(maps, masks, float(max_fpr)), dtype="float64")


# --- IoU and DICE (jad/metrics/masks.py)

REDUCTIONS = ("pooled", "pooled", "mean", "none", "sum", None, 3)


@fuzzes("jad.metrics.iou", "jad.metrics.dice")
@pytest.mark.parametrize("name", ["iou", "dice"])
@settings(max_examples=budget(1.0))
@given(inputs=pro_inputs(), reduction=st.sampled_from(REDUCTIONS), data=st.data())
def test_iou_and_dice(name, inputs, reduction, data):
    _, gt = inputs
    pred = make_labels(
        data.draw(st.sampled_from((np.shape(gt),) * 4 + MAP_SHAPES), "pred_shape"),
        data.draw(st.sampled_from(LABEL_DTYPES), "pred_dtype"),
        data.draw(st.sampled_from(LABEL_KINDS), "pred_kind"),
        data.draw(st.integers(0, 7), "pred_seed"),
    )
    fn = getattr(metrics, name)
    out = attempt(name, fn, pred, gt, reduction=reduction)
    problems = _binary_problems(pred) | _binary_problems(gt)
    if not problems and (np.shape(pred) != np.shape(gt) or np.ndim(gt) < 2):
        problems = {ValueError}
    if reduction not in ("pooled", "mean", "none"):
        problems |= {ValueError}
    if not problems and np.size(gt) == 0:
        # Masks without a pixel: a documented refusal, or the both-empty score.
        if isinstance(out, Refused):
            assert isinstance(out.error, ValueError), out
            return
    elif not expect(name, out, problems):
        return
    check_result(name, out, [])
    image_shape = (math.prod(np.shape(gt)[:-2]), *np.shape(gt)[-2:])
    p = (np.asarray(pred).astype(np.float64) == 1).reshape(image_shape)
    g = (np.asarray(gt).astype(np.float64) == 1).reshape(p.shape)
    score = skm.jaccard_score if name == "iou" else skm.f1_score

    def ref(a, b):
        if not a.any() and not b.any():
            return 100.0
        return 100.0 * score(b.reshape(-1), a.reshape(-1), zero_division=0.0)

    if reduction == "pooled":
        close(out, ref(p, g), dtype="float64", label=name)
    else:
        per_image = np.array([ref(a, b) for a, b in zip(p, g, strict=True)])
        if reduction == "mean":
            close(out, per_image.mean() if per_image.size else np.nan, dtype="float64")
        else:
            close(out, per_image.reshape(np.shape(gt)[:-2]), dtype="float64")


# ================================================================= jad.ops.neighbors

QUERY_SHAPES = ((5, 3), (5, 3), (2, 3, 3), (3,), (0, 3), (), (5, 2))
BANK_SHAPES = ((4, 3), (4, 3), (1, 3), (0, 3), (3,), (2, 2, 3), (4, 2))


def _static_int_problems(value, low, high=None) -> set:
    if not is_static_int(value):
        return {TypeError}
    if value < low or (high is not None and value > high):
        return {ValueError}
    return set()


@fuzzes("jad.ops.nearest_neighbors")
@settings(max_examples=budget(2.0))
@given(
    queries=arrays(QUERY_SHAPES, containers=("numpy", "jax")),
    bank=arrays(BANK_SHAPES),
    k=st.sampled_from((1, 1, 2, 4, np.int32(2), 0, -1, 5, 2.0, True, None)),
    squared=st.booleans(),
    bank_chunk=st.sampled_from((4096, 4096, 2, 0, 2.5)),
    query_chunk=st.sampled_from((1024, 1024, 4, -3)),
)
# Found by this suite: sqrt(tiny) for an exact float16 match; D = 0; a NaN bank.
@example(
    queries=np.full((2, 3), 0.3457, np.float16),
    bank=np.full((1, 3), 0.3457, np.float16),
    k=1,
    squared=False,
    bank_chunk=4096,
    query_chunk=1024,
)
@example(
    queries=np.ones((3, 0), np.float32),
    bank=np.ones((2, 0), np.float32),
    k=2,
    squared=True,
    bank_chunk=4096,
    query_chunk=1024,
)
@example(
    queries=np.ones((3, 2), np.float32),
    bank=np.array([[0.0, np.nan], [1.0, 1.0]], np.float32),
    k=1,
    squared=True,
    bank_chunk=4096,
    query_chunk=1024,
)
def test_nearest_neighbors(queries, bank, k, squared, bank_chunk, query_chunk):
    label = "nearest_neighbors"
    out = attempt(
        label,
        ops.nearest_neighbors,
        queries,
        bank,
        k,
        squared=squared,
        bank_chunk=bank_chunk,
        query_chunk=query_chunk,
    )
    # Any of the input's problems may be the one reported.
    problems = _static_int_problems(bank_chunk, 1) | _static_int_problems(
        query_chunk, 1
    )
    for x in (queries, bank):
        if not is_float(np.asarray(x).dtype):
            problems |= {TypeError}
        elif not _finite(x):
            problems |= {ValueError}
    if (
        np.ndim(queries) < 1
        or np.ndim(bank) != 2
        or np.shape(queries)[-1] != np.shape(bank)[-1]
        or np.shape(bank)[0] == 0
    ):
        problems |= {ValueError}
        if not is_static_int(k):
            problems |= {TypeError}
    else:
        problems |= _static_int_problems(k, 1, np.shape(bank)[0])
    if not expect(label, out, problems):
        return
    check_result(label, out, [queries, bank])
    dist, idx = out
    q = np.asarray(queries).astype(np.float64)
    b = np.asarray(bank).astype(np.float64)
    assert dist.shape == idx.shape == (*q.shape[:-1], k) and idx.dtype == jnp.int32
    sq = np.sum((q[..., None, :] - b) ** 2, axis=-1)  # (..., N)
    want = np.sort(sq, axis=-1)[..., :k]
    picked = np.take_along_axis(sq, np.asarray(idx, np.int64), axis=-1)
    if not squared:
        want, picked = np.sqrt(want), np.sqrt(picked)
    dtype = str(jnp.result_type(queries, bank))
    scale = max(1.0, float(np.max(want, initial=0.0)))
    close(dist, want, dtype=dtype, label=f"{label} distances", scale=scale)
    close(
        dist,
        picked,
        dtype=dtype,
        label=f"{label} distances of the indices",
        scale=scale,
    )
    flat = np.asarray(idx).reshape(-1, k)
    assert all(len(set(row)) == k for row in flat.tolist()), "repeated neighbours"


# ================================================================= jad.ops

# jad mode -> scipy.ndimage mode (the vocabularies differ; see jad/ops/filters.py).
SCIPY_MODE = {
    "symmetric": "reflect",
    "reflect": "mirror",
    "edge": "nearest",
    "constant": "constant",
    "wrap": "wrap",
}
BLUR_SHAPES = ((5, 6), (5, 6), (2, 5, 6), (6,), (), (0, 5), (5, 0), (2, 1, 3, 4))
SIGMAS = (
    1.0,
    1.0,
    0.5,
    2,
    np.float32(1.5),
    0.0,
    -1.0,
    float("nan"),
    float("inf"),
    "1",
    None,
    np.array([1.0, 2.0]),
)


def _floats_ok(*xs) -> bool:
    return all(_is_array_like(x) and is_float(np.asarray(x).dtype) for x in xs)


def _has_empty(x, axes=(-2, -1)) -> bool:
    return np.ndim(x) >= len(axes) and any(np.shape(x)[a] == 0 for a in axes)


def _lowest_precision(*xs) -> str:
    """The least precise of the dtypes JAX computes ``xs`` in (for tolerances)."""
    names = {_tolerance_dtype(x) for x in xs}
    for name in ("bfloat16", "float16", "float32"):
        if name in names:
            return name
    return "float64"


def _tolerance_dtype(x) -> str:
    """The dtype JAX computes ``x`` in (float64 is float32 without x64)."""
    return str(jnp.asarray(x).dtype)


def refuse_or_succeed(label, out, valid) -> bool:
    """``valid``: True (must succeed), False (must raise) or None (either)."""
    if valid is True:
        assert not isinstance(out, Refused), f"{label}: refused valid input: {out}"
    elif valid is False:
        assert isinstance(out, Refused), f"{label}: accepted invalid input: {out!r}"
    return not isinstance(out, Refused)


@fuzzes("jad.ops.gaussian_blur")
@settings(max_examples=budget(0.75))
@given(
    maps=arrays(BLUR_SHAPES, containers=("numpy", "jax")),
    sigma=st.sampled_from(SIGMAS),
    radius=st.sampled_from((None, None, 0, 2, 7, -1, 2.5)),
    mode=st.sampled_from((*SCIPY_MODE, "mirror")),
)
def test_gaussian_blur(maps, sigma, radius, mode):
    label = "gaussian_blur"
    out = attempt(label, ops.gaussian_blur, maps, sigma, radius=radius, mode=mode)
    sigma_ok = is_real_number(sigma) and math.isfinite(sigma) and sigma > 0
    valid = (
        _floats_ok(maps)
        and np.ndim(maps) >= 2
        and sigma_ok
        and (radius is None or (is_static_int(radius) and radius >= 0))
        and mode in SCIPY_MODE
    )
    if valid and _has_empty(maps):
        valid = None  # an empty map may be returned or refused
    if not refuse_or_succeed(label, out, valid):
        return
    assert out.shape == np.shape(maps) and out.dtype == jnp.asarray(maps).dtype
    check_result(label, out, [maps])
    if _finite(maps) and np.size(maps):
        x = np.asarray(maps).astype(np.float64)
        r = int(4 * float(sigma) + 0.5) if radius is None else radius
        ref = np.empty_like(x)
        for index in np.ndindex(x.shape[:-2]):
            ref[index] = ndi.gaussian_filter(
                x[index], float(sigma), mode=SCIPY_MODE[mode], radius=r
            )
        close(out, ref, dtype=_tolerance_dtype(maps), label=label)


RESIZE_IN = ((4, 5), (4, 5), (2, 4, 5), (4, 5, 3), (5,), (), (0, 4), (4, 0))
RESIZE_OUT = (
    (8, 10),
    (8, 10),
    (2, 3),
    (4, 5),
    (1, 1),
    [6, 7],
    (0, 3),
    (3,),
    (2.0, 3),
    (-1, 2),
    "ab",
    None,
)


def _keys(t, a=-0.75):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def resize_matrix(n_in, n_out, method, align_corners):
    """(n_out, n_in) interpolation weights of PyTorch's rules, one pixel at a time."""
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        if method == "nearest":
            w[i, min(int(np.float32(i) * np.float32(n_in / n_out)), n_in - 1)] = 1
            continue
        if align_corners:
            src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = (i + 0.5) * n_in / n_out - 0.5
        if method == "bilinear":
            src = max(src, 0.0) if not align_corners else src
            i0 = min(math.floor(src), n_in - 1)
            i1, t = min(i0 + 1, n_in - 1), src - i0
            w[i, i0] += 1 - t
            w[i, i1] += t
        else:
            i0 = math.floor(src)
            for a in range(-1, 3):
                w[i, min(max(i0 + a, 0), n_in - 1)] += _keys(src - (i0 + a))
    return w


@fuzzes("jad.ops.resize")
@settings(max_examples=budget(1.5))
@given(
    maps=arrays(RESIZE_IN, containers=("numpy", "jax")),
    shape=st.sampled_from(RESIZE_OUT),
    method=st.sampled_from(("bilinear", "bilinear", "bicubic", "nearest", "area")),
    align_corners=st.sampled_from((False, False, True)),
    antialias=st.sampled_from((False, False, True)),
    channels_last=st.sampled_from((False, False, True)),
)
def test_resize(maps, shape, method, align_corners, antialias, channels_last):
    label = "resize"
    out = attempt(
        label,
        ops.resize,
        maps,
        shape,
        method=method,
        align_corners=align_corners,
        antialias=antialias,
        channels_last=channels_last,
    )
    rank = 3 if channels_last else 2
    axes = (-3, -2) if channels_last else (-2, -1)
    shape_ok = (
        isinstance(shape, (tuple, list))
        and len(shape) == 2
        and all(is_static_int(n) and n >= 1 for n in shape)
    )
    if method == "nearest":
        flags_ok = not (align_corners or antialias)
        dtype_ok = True
    else:
        flags_ok = not (align_corners and antialias)
        dtype_ok = _floats_ok(maps)
    valid = (
        method in ("bilinear", "bicubic", "nearest")
        and shape_ok
        and flags_ok
        and dtype_ok
        and np.ndim(maps) >= rank
        and not _has_empty(maps, axes)
    )
    if not refuse_or_succeed(label, out, valid):
        return
    in_h, in_w = (np.shape(maps)[a] for a in axes)
    expected_shape = list(np.shape(maps))
    expected_shape[axes[0]], expected_shape[axes[1]] = shape
    assert out.shape == tuple(expected_shape), label
    assert out.dtype == jnp.asarray(maps).dtype, label
    nearest = method == "nearest"
    check_result(label, out, [maps], propagates=not nearest)
    if antialias or not (nearest or _finite(maps)):
        return  # no reference for antialiasing; NaN spreads along rows and columns
    x = np.asarray(jnp.asarray(maps))  # float64 runs as float32, int64 as int32
    wh = resize_matrix(in_h, shape[0], method, align_corners)
    ww = resize_matrix(in_w, shape[1], method, align_corners)
    if nearest:  # a gather of any dtype: exact, NaN where it was
        rows, cols = np.argmax(wh, 1), np.argmax(ww, 1)
        if channels_last:
            ref = x[..., rows, :, :][..., cols, :]
        else:
            ref = x[..., rows, :][..., cols]
        np.testing.assert_array_equal(np.asarray(out), ref, label)
        return
    x = x.astype(np.float64)
    if channels_last:
        ref = np.einsum("oh,...hwc,pw->...opc", wh, x, ww)
    else:
        ref = np.einsum("oh,...hw,pw->...op", wh, x, ww)
    close(out, ref, dtype=_tolerance_dtype(maps), label=label, scale=10.0)


MORPHOLOGY = ("dilate", "erode", "opening", "closing")
MASK_SHAPES = ((5, 6), (5, 6), (2, 5, 6), (6,), (), (0, 5, 6), (5, 0))
MASK_DTYPES = ("bool",) * 6 + ALL_DTYPES


def _footprint(kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "random":
        fp = rng.random((3, 3)) < 0.5
        fp[1, 1] = True
        return fp
    return {
        None: None,
        "1x3": np.ones((1, 3), bool),
        "even": np.ones((2, 3), bool),
        "empty": np.zeros((3, 3), bool),
        "int": np.ones((3, 3), np.int32),
    }[kind]


def ref_morphology(name, masks, footprint, border):
    """scipy.ndimage per image; opening/closing composed (each op its border)."""
    dilate_value = {"zero": 0, "one": 1, "ignore": 0}[border]
    erode_value = {"zero": 0, "one": 1, "ignore": 1}[border]

    def dil(m):
        return ndi.binary_dilation(m, structure=footprint, border_value=dilate_value)

    def ero(m):
        return ndi.binary_erosion(m, structure=footprint, border_value=erode_value)

    ops_of = {
        "dilate": dil,
        "erode": ero,
        "opening": lambda m: dil(ero(m)),
        "closing": lambda m: ero(dil(m)),
    }
    out = np.empty_like(masks)
    for index in np.ndindex(masks.shape[:-2]):
        out[index] = ops_of[name](masks[index])
    return out


@fuzzes(*(f"jad.ops.{name}" for name in MORPHOLOGY))
@pytest.mark.parametrize("name", MORPHOLOGY)
@settings(max_examples=budget(0.75))
@given(
    masks=arrays(MASK_SHAPES, dtypes=MASK_DTYPES, containers=("numpy", "jax")),
    size=st.sampled_from((None, None, 1, 3, (3, 5), (1, 3), 2, 0, -1, (3,), 3.0, "3")),
    footprint=st.sampled_from((None, None, "random", "1x3", "even", "empty", "int")),
    border=st.sampled_from(("zero", "zero", "one", "ignore", "reflect")),
    seed=st.integers(0, 3),
)
def test_morphology(name, masks, size, footprint, border, seed):
    fp = _footprint(footprint, seed)
    out = attempt(
        name, getattr(ops, name), masks, size=size, footprint=fp, border=border
    )
    if size is None:
        size_ok = True
    elif isinstance(size, tuple):
        size_ok = len(size) == 2 and all(is_static_int(n) and n % 2 == 1 for n in size)
    else:
        size_ok = is_static_int(size) and size >= 1 and size % 2 == 1
    fp_ok = fp is None or (
        fp.dtype == bool and fp.shape[0] % 2 == 1 and fp.shape[1] % 2 == 1 and fp.any()
    )
    valid = (
        np.asarray(masks).dtype == bool
        and np.ndim(masks) >= 2
        and size_ok
        and fp_ok
        and not (size is not None and fp is not None)
        and border in ("zero", "one", "ignore")
    )
    if valid and _has_empty(masks):
        valid = None
    if not refuse_or_succeed(name, out, valid):
        return
    assert out.shape == np.shape(masks) and out.dtype == bool
    if not np.size(masks):
        return
    if fp is None:
        fp = np.ones((size, size) if isinstance(size, int) else size or (3, 3), bool)
    ref = ref_morphology(name, np.asarray(masks), fp, border)
    np.testing.assert_array_equal(np.asarray(out), ref, err_msg=name)


# ------------------------------------------------- jad.ops: adaptive pooling


@fuzzes("jad.ops.adaptive_avg_pool")
@settings(max_examples=budget(1.0))
@given(
    x=arrays(((2, 6), (2, 6), (3, 4, 5), (7,), (), (2, 0))),
    size=st.sampled_from((1, 3, 3, 6, 8, 0, -1, 2.0, None)),
)
@example(
    x=make_array((2, 6), "float32"),
    size=None,
)
def test_adaptive_avg_pool(x, size):
    label = "adaptive_avg_pool"
    out = attempt(label, ops.adaptive_avg_pool, x, size)
    valid = (
        _floats_ok(x)
        and np.ndim(x) >= 1
        and is_static_int(size)
        and size >= 1
        and np.shape(x)[-1] >= 1
    )
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, out, [x])
    close(
        out,
        adaptive_avg_pool_np(np.asarray(x).astype(np.float64), size),
        dtype=_tolerance_dtype(x),
        label=label,
    )


# ----------------------------------------------------------- jad.ops: patches


def _overflows(values, dtype) -> bool:
    """Whether float64 ``values`` leave ``dtype``'s finite range (then inf is right)."""
    big = float(np.max(np.abs(values), initial=0.0)) if np.size(values) else 0.0
    return math.isfinite(big) and big > float(jnp.finfo(_dtype(dtype)).max) / 2


def _per_image(ref_fn, x, size):
    """A (B, h, w, C) numpy reference over the leading axes of (..., h, w, C)."""
    x = np.asarray(x).astype(np.float64)
    out = ref_fn(x.reshape(-1, *x.shape[-3:]), size)
    return out.reshape(*x.shape[:-3], *out.shape[1:])


PATCH_SHAPES = ((2, 4, 5, 3),) * 3 + (
    (1, 3, 3, 2),
    (2, 2, 3, 3, 1),
    (4, 5, 3),
    (4, 5),
    (),
    (1, 0, 3, 2),
)
PATCH_SIZES = (3, 3, 1, 5, 2, 0, -1, 3.0, None, np.int64(3))


@fuzzes("jad.ops.unfold", "jad.ops.avg_pool")
@pytest.mark.parametrize("name", ["unfold", "avg_pool"])
@settings(max_examples=budget(0.75))
@given(
    x=arrays(PATCH_SHAPES, containers=("numpy", "jax")),
    size=st.sampled_from(PATCH_SIZES),
)
def test_patch_ops(name, x, size):
    out = attempt(name, getattr(ops, name), x, size)
    valid = (
        _floats_ok(x)
        and np.ndim(x) >= 3
        and not _has_empty(x, (-3, -2))
        and is_static_int(size)
        and size >= 1
        and (name == "avg_pool" or size % 2 == 1)
    )
    if not refuse_or_succeed(name, out, valid):
        return
    assert out.dtype == jnp.asarray(x).dtype, name
    ref = _per_image(unfold_np if name == "unfold" else avg_pool_np, x, size)
    assert out.shape == ref.shape, (name, out.shape, ref.shape)
    dtype = _tolerance_dtype(x)
    # avg_pool sums a window before dividing: float16 sums of "large" values
    # overflow to inf (as any float16 sum would).
    if name == "avg_pool" and _overflows(ref * size * size, dtype):
        return
    check_result(name, out, [x])
    # unfold is a copy (NaN exactly where it was); avg_pool spreads NaN and inf over
    # the windows as the numpy sums do, and its sums cancel: error relative to the
    # largest term.
    x64 = np.asarray(x).astype(np.float64)
    scale = max(1.0, float(np.max(np.abs(x64[np.isfinite(x64)]), initial=0.0)))
    close(out, ref, dtype=dtype, label=name, scale=scale)


LEVEL_SHAPES = (
    ((2, 4, 4, 3),) * 3
    + ((2, 2, 2, 5),) * 2
    + (
        (2, 4, 4, 1),
        (1, 2, 2, 2),
        (4, 4),
        (2, 0, 2, 2),
    )
)


@st.composite
def level_lists(draw):
    """Levels for ``align_levels``: a list or tuple of maps, or not a sequence."""
    count = draw(st.sampled_from((1, 2, 2, 3, 0)))
    levels = [
        draw(arrays(LEVEL_SHAPES, containers=("numpy", "jax"))) for _ in range(count)
    ]
    container = draw(st.sampled_from(("list", "list", "tuple", "array", "dict")))
    if container == "tuple":
        return tuple(levels)
    if container == "array":
        return make_array((2, 4, 4, 3), "float32")
    if container == "dict":
        return dict(enumerate(levels))
    return levels


@fuzzes("jad.ops.align_levels")
@settings(max_examples=budget(0.75))
@given(
    levels=level_lists(),
    method=st.sampled_from(
        ("bilinear", "bilinear", "nearest", "bicubic", "area", None)
    ),
)
def test_align_levels(levels, method):
    label = "align_levels"
    out = attempt(label, ops.align_levels, levels, method=method)
    valid = (
        isinstance(levels, (list, tuple))
        and len(levels) >= 1
        and method in ("bilinear", "nearest", "bicubic")
        and all(
            _floats_ok(f) and np.ndim(f) >= 3 and not _has_empty(f, (-3, -2))
            for f in levels
        )
        and len({np.shape(f)[:-3] for f in levels}) == 1
    )
    if not refuse_or_succeed(label, out, valid):
        return
    assert isinstance(out, list) and len(out) == len(levels)
    check_result(label, out, list(levels), propagates=method != "nearest")
    grid = np.shape(levels[0])[-3:-1]
    for f, got in zip(levels, out, strict=True):
        assert got.shape == (*np.shape(f)[:-3], *grid, np.shape(f)[-1]), label
        assert got.dtype == jnp.asarray(f).dtype, label
        x = np.asarray(jnp.asarray(f))  # float64 runs as float32 without x64
        if np.shape(f)[-3:-1] == grid:
            np.testing.assert_array_equal(np.asarray(got), x, label)
            continue
        if not _finite(f):
            continue  # NaN spreads along rows and columns (see test_resize)
        wh = resize_matrix(x.shape[-3], grid[0], method, False)
        ww = resize_matrix(x.shape[-2], grid[1], method, False)
        ref = np.einsum("oh,...hwc,pw->...opc", wh, x.astype(np.float64), ww)
        close(got, ref, dtype=_tolerance_dtype(f), label=label, scale=10.0)


# --------------------------------------------------------- jad.ops: gaussians

WHITENING_SHAPES = ((2, 3, 3),) * 3 + ((3, 3), (1, 3, 3), (3, 2), (3,), (2, 0, 0))
MEAN_SHAPES = ((2, 3),) * 3 + ((3,), (2, 2), ())
POINT_SHAPES = ((4, 2, 3),) * 3 + ((3,), (2, 3), (4, 3, 3), (2,), ())


@fuzzes("jad.ops.mahalanobis")
@settings(max_examples=budget(1.0))
@given(
    whitening=arrays(WHITENING_SHAPES, containers=("numpy", "jax")),
    mean=arrays(MEAN_SHAPES),
    x=arrays(POINT_SHAPES, containers=("numpy", "jax")),
    squared=st.sampled_from((False, False, True, 1, None)),
)
def test_mahalanobis(whitening, mean, x, squared):
    label = "mahalanobis"
    out = attempt(label, ops.mahalanobis, whitening, mean, x, squared=squared)
    w_shape, m_shape, x_shape = np.shape(whitening), np.shape(mean), np.shape(x)
    shapes_ok = (
        len(w_shape) >= 2
        and len(m_shape) >= 1
        and len(x_shape) >= 1
        and w_shape[-1] == w_shape[-2] == m_shape[-1] == x_shape[-1] >= 1
    )
    if shapes_ok:
        try:
            np.broadcast_shapes(w_shape[:-2], m_shape[:-1], x_shape[:-1])
        except ValueError:
            shapes_ok = False
    valid = _floats_ok(whitening, mean, x) and shapes_ok and isinstance(squared, bool)
    if not refuse_or_succeed(label, out, valid):
        return
    w, m, p = (
        np.asarray(jnp.asarray(a)).astype(np.float64) for a in (whitening, mean, x)
    )
    z = np.einsum("...ij,...j->...i", w, p - m)
    sq = np.sum(z * z, axis=-1)
    assert out.shape == sq.shape, (label, out.shape, sq.shape)
    dtype = _lowest_precision(whitening, mean, x)
    if _overflows(sq, dtype):
        return  # the squared distance leaves the dtype's range: inf is right
    check_result(label, out, [whitening, mean, x])
    if not all(_finite(a) for a in (whitening, mean, x)):
        return
    got = np.asarray(out, np.float64)
    assert np.all(got >= 0), label
    # Compared squared: sqrt of a rounded near-zero square is not relatively close.
    bound = np.sum(np.einsum("...ij,...j->...i", np.abs(w), np.abs(p - m)) ** 2, -1)
    scale = max(1.0, float(np.max(bound, initial=0.0)))
    close(got if squared else got**2, sq, dtype=dtype, label=label, scale=scale)


COVARIANCE_SHAPES = (
    ((2, 3, 3),) * 3
    + ((3, 3), (1, 1), (0, 3, 3))
    + (
        (3, 2),
        (3,),
        (),
        (2, 0, 0),
    )
)


@st.composite
def covariances(draw):
    """(covariance, kind): SPD matrices mostly, else singular, indefinite, NaN, inf."""
    shape = draw(st.sampled_from(COVARIANCE_SHAPES))
    dtype = draw(st.sampled_from(SCORE_DTYPES))
    kind = draw(st.sampled_from(("spd",) * 4 + ("zeros", "indefinite", "nan", "inf")))
    seed = draw(st.integers(0, 7))
    square = len(shape) >= 2 and shape[-1] == shape[-2]
    if not (is_float(dtype) and square):
        return make_array(shape, dtype, "normal", seed), kind
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape)
    x = a @ np.swapaxes(a, -1, -2) + shape[-1] * np.eye(shape[-1])  # well conditioned
    if kind == "zeros":
        x = np.zeros(shape)
    elif kind == "indefinite":
        x = -x
    elif kind in ("nan", "inf") and x.size:
        x.flat[rng.integers(x.size)] = float(kind)
    return jnp.asarray(x.astype(_dtype(dtype))), kind


@fuzzes("jad.ops.cholesky_whitening")
@settings(max_examples=budget(0.75))
@given(drawn=covariances())
def test_cholesky_whitening(drawn):
    covariance, kind = drawn
    label = "cholesky_whitening"
    out = attempt(label, ops.cholesky_whitening, covariance)
    shape = np.shape(covariance)
    valid = _floats_ok(covariance) and len(shape) >= 2 and shape[-1] == shape[-2] >= 1
    if not refuse_or_succeed(label, out, valid):
        return
    whitening, chol = out
    dtype = jnp.asarray(covariance).dtype
    assert whitening.shape == chol.shape == shape, label
    assert whitening.dtype == chol.dtype == dtype, label
    if not np.size(covariance):
        return
    if kind in ("zeros", "indefinite"):  # documented: not positive definite -> NaN
        assert not _finite(whitening) and not _finite(chol), label
        return
    check_result(label, out, [covariance])
    if kind != "spd":
        return
    x = np.asarray(covariance).astype(np.float64)
    ref = np.linalg.cholesky((x + np.swapaxes(x, -1, -2)) / 2)
    close(chol, ref, dtype=str(dtype), label=f"{label} cholesky")
    close(whitening, np.linalg.inv(ref), dtype=str(dtype), label=label)


# ------------------------------------------------------- jad.ops: projections


PROJECTION_KEYS = ("key", "key", "raw", 0, None, "floats", "keys")
PROJECTION_INTS = (1, 4, 4, 16, np.int64(5), 0, -1, 2.0, "4", None, True)


def _projection_key(name):
    return {
        "key": jax.random.key(0),
        "raw": jax.random.PRNGKey(0),
        "floats": np.zeros(2, np.float32),
        "keys": jax.random.split(jax.random.key(0), 2),
    }.get(name, name)


def _valid_key(key) -> bool:
    return isinstance(key, jax.Array) and (
        (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ())
        or (key.dtype == jnp.uint32 and key.shape == (2,))
    )


@fuzzes("jad.ops.dense_random_projection", "jad.ops.sparse_random_projection")
@pytest.mark.parametrize(
    "name", ["dense_random_projection", "sparse_random_projection"]
)
@settings(max_examples=budget(0.75))
@given(
    key=st.sampled_from(PROJECTION_KEYS),
    dim_in=st.sampled_from(PROJECTION_INTS),
    dim_out=st.sampled_from(PROJECTION_INTS),
)
def test_random_projections(name, key, dim_in, dim_out):
    key = _projection_key(key)
    out = attempt(name, getattr(ops, name), key, dim_in, dim_out)
    valid = (
        is_static_int(dim_in)
        and is_static_int(dim_out)
        and dim_in >= 1
        and dim_out >= 1
        and _valid_key(key)
    )
    if not refuse_or_succeed(name, out, valid):
        return
    check_result(name, out, [])
    assert out.shape == (dim_in, dim_out) and out.dtype == jnp.float32, name
    values = np.abs(np.asarray(out, np.float64))
    if name == "dense_random_projection":  # torch nn.Linear init: U(+-1/sqrt(D))
        assert np.all(values <= 1 / math.sqrt(dim_in) * (1 + 1e-6)), name
    else:  # scikit-learn: +-sqrt(1 / density) / sqrt(n_components), or 0
        value = math.sqrt(math.sqrt(dim_in)) / math.sqrt(dim_out)
        nonzero = values[values != 0]
        close(nonzero, np.full_like(nonzero, value), label=name)


@fuzzes("jad.ops.johnson_lindenstrauss_dim")
@settings(max_examples=budget(1.0))
@given(
    n_samples=st.sampled_from((1, 2, 10, 5000, np.int64(7), 0, -3, 2.5, None, "9")),
    eps=st.sampled_from(
        (
            0.9,
            0.9,
            0.1,
            0.5,
            np.float64(0.3),
            0.0,
            1.0,
            -0.5,
            float("nan"),
            "0.5",
            None,
            True,
        )
    ),
)
def test_johnson_lindenstrauss_dim(n_samples, eps):
    label = "johnson_lindenstrauss_dim"
    out = attempt(label, ops.johnson_lindenstrauss_dim, n_samples, eps=eps)
    valid = (
        is_static_int(n_samples)
        and n_samples >= 1
        and is_real_number(eps)
        and 0 < eps < 1
    )
    if not refuse_or_succeed(label, out, valid):
        return
    assert isinstance(out, int)
    assert out == int(johnson_lindenstrauss_min_dim(int(n_samples), eps=float(eps)))


# ------------------------------------------------------------- jad.ops: image

IMAGE_RGB_SHAPES = ((2, 4, 3),) * 3 + ((3,), (1, 2, 2, 3), (2, 4), (), (0, 3))
_MEAN = np.array([0.485, 0.456, 0.406])
_STD = np.array([0.229, 0.224, 0.225])


@fuzzes("jad.ops.normalize_imagenet", "jad.ops.denormalize_imagenet")
@pytest.mark.parametrize("name", ["normalize_imagenet", "denormalize_imagenet"])
@settings(max_examples=budget(0.5))
@given(images=arrays(IMAGE_RGB_SHAPES, containers=("numpy", "jax")))
def test_imagenet_normalisation(name, images):
    out = attempt(name, getattr(ops, name), images)
    valid = _floats_ok(images) and np.ndim(images) >= 1 and np.shape(images)[-1] == 3
    if not refuse_or_succeed(name, out, valid):
        return
    # numpy in, numpy out; jax in, jax out
    assert isinstance(out, jax.Array) == isinstance(images, jax.Array), name
    assert out.dtype == images.dtype and out.shape == np.shape(images), name
    x = np.asarray(images).astype(np.float64)
    ref = (x - _MEAN) / _STD if name == "normalize_imagenet" else x * _STD + _MEAN
    dtype = str(images.dtype)
    if _overflows(ref, dtype):
        return
    check_result(name, out, [images])
    # The constants are float32 (torchvision's values rounded), cast to the images'
    # dtype: float32 accuracy at best, relative 1e-3 in float16.
    dtype = "float32" if dtype == "float64" else dtype
    close(
        out,
        ref,
        dtype=dtype,
        label=name,
        scale=max(1.0, float(np.max(np.abs(x[np.isfinite(x)]), initial=0))),
    )


# ================================================================= jad.sparse

# Valid draws concentrate on one shape and sparsity: each new batch shape, sparsity
# or dtype compiles the pursuit again (seconds); "deep" reaches the others.
DICT_SHAPES = ((4, 6),) * 5 + ((4, 4), (3, 6), (4,), (4, 0), (0, 6))
SIGNAL_SHAPES = ((3, 4),) * 4 + ((4,), (2, 2, 4), (0, 4), (5,), ())
TOLS = (
    0.0,
    0.0,
    0.0,
    0.1,
    -1.0,
    float("nan"),
    float("inf"),
    "a",
    np.float32(0.1),
    np.array([0.1, 0.2]),
)
NONZEROS = (2, 2, 2, 1, 4, np.int64(2), 0, 7, -1, 2.0, None)


def _atom_mask(kind, batch, num_atoms, seed):
    rng = np.random.default_rng(seed)
    if kind is None:
        return None
    if kind == "per_signal":
        mask = rng.random((*batch, num_atoms)) < 0.6
        mask[..., :1] = True
        return mask
    return {
        "all": np.ones(num_atoms, bool),
        "int": np.ones(num_atoms, np.int32),
        "wrong": np.ones(num_atoms + 1, bool),
    }[kind]


def _omp_checks(label, out, dictionary, signals, n_nonzero, mask, tol):
    """Shapes, sparsity, the residual's definition and the atom mask."""
    d = np.asarray(dictionary).astype(np.float64)
    y = np.asarray(signals).astype(np.float64)
    coef = np.asarray(out.coef).astype(np.float64)
    batch, num_atoms = y.shape[:-1], d.shape[1]
    assert coef.shape == (*batch, num_atoms), label
    assert out.support.shape == (*batch, n_nonzero), label
    assert np.all(np.count_nonzero(coef, axis=-1) <= n_nonzero), label
    support = np.asarray(out.support)
    assert np.all((support >= -1) & (support < num_atoms)), label
    if mask is not None:
        allowed = np.broadcast_to(np.asarray(mask, bool), coef.shape)
        assert np.all(coef[~allowed] == 0), f"{label}: a masked atom was used"
    if out.residual_norm is not None and d.shape[0] == y.shape[-1]:
        residual = np.linalg.norm(y - coef @ d.T, axis=-1)
        scale = max(1.0, float(np.max(np.abs(y), initial=0.0)))
        close(
            out.residual_norm,
            residual,
            dtype=_lowest_precision(out.coef, dictionary, signals),
            label=label,
            scale=scale,
        )


@fuzzes("jad.sparse.omp")
@settings(max_examples=budget(0.75))
@given(
    dictionary=arrays(DICT_SHAPES, containers=("numpy", "jax")),
    signals=arrays(SIGNAL_SHAPES),
    n_nonzero=st.sampled_from(NONZEROS),
    tol=st.sampled_from(TOLS),
    mask=st.sampled_from((None,) * 5 + ("all", "per_signal", "int", "wrong")),
    selection=st.sampled_from(("abs",) * 4 + ("signed", "max")),
)
@example(
    dictionary=np.ones((4, 0), np.float32),
    signals=np.ones((3, 4), np.float32),
    n_nonzero=2,
    tol=0.0,
    mask="per_signal",
    selection="abs",
)
def test_omp(dictionary, signals, n_nonzero, tol, mask, selection):
    label = "omp"
    shape_ok = (
        np.ndim(dictionary) == 2
        and np.ndim(signals) >= 1
        and np.shape(signals)[-1] == np.shape(dictionary)[0]
    )
    num_atoms = np.shape(dictionary)[-1] if np.ndim(dictionary) else 0
    atom_mask = _atom_mask(
        mask, np.shape(signals)[:-1] if shape_ok else (), num_atoms, 0
    )
    out = attempt(
        label,
        sparse.omp,
        dictionary,
        signals,
        n_nonzero,
        tol=tol,
        atom_mask=atom_mask,
        selection=selection,
    )
    tol_ok = is_real_number(tol) and tol >= 0 and not math.isnan(tol)
    valid = (
        _floats_ok(dictionary, signals)
        and shape_ok
        and _finite(dictionary)
        and _finite(signals)
        and is_static_int(n_nonzero)
        and 1 <= n_nonzero <= num_atoms
        and tol_ok
        and mask in (None, "all", "per_signal")
        and selection in ("abs", "signed")
    )
    if valid and (math.isinf(tol) or 0 in np.shape(dictionary)):
        valid = None
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, out, [dictionary, signals])
    _omp_checks(label, out, dictionary, signals, n_nonzero, atom_mask, tol)


@fuzzes("jad.sparse.omp_gram")
@settings(max_examples=budget(0.75))
@given(
    dictionary=arrays(DICT_SHAPES),
    signals=arrays(SIGNAL_SHAPES),
    n_nonzero=st.sampled_from(NONZEROS),
    tol=st.sampled_from(TOLS),
    norms=st.sampled_from(("given", "given", None, "wrong")),
    gram_kind=st.sampled_from(("gram", "gram", "gram", "random", "rectangular")),
    selection=st.sampled_from(("abs", "signed")),
)
def test_omp_gram(dictionary, signals, n_nonzero, tol, norms, gram_kind, selection):
    label = "omp_gram"
    d = np.real(np.asarray(dictionary)).astype(np.float64)
    y = np.real(np.asarray(signals)).astype(np.float64)
    dtype = np.asarray(dictionary).dtype
    if d.ndim == 2 and y.ndim >= 1 and y.shape[-1] == d.shape[0]:
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf inputs
            gram, xy = d.T @ d, y @ d
    else:
        gram, xy = np.ones((3, 3)), np.ones(np.shape(signals))
    if gram_kind == "random":
        gram = np.random.default_rng(1).standard_normal(gram.shape)
    elif gram_kind == "rectangular":
        gram = gram[:, 1:]
    norms_squared = {
        "given": np.sum(y * y, axis=-1) if y.ndim else None,
        None: None,
        "wrong": np.ones(3),
    }[norms]
    with np.errstate(over="ignore", invalid="ignore"):
        gram, xy = gram.astype(dtype), xy.astype(np.asarray(signals).dtype)
        if norms_squared is not None:
            norms_squared = np.asarray(norms_squared).astype(dtype)
    out = attempt(
        label,
        sparse.omp_gram,
        gram,
        xy,
        n_nonzero,
        norms_squared=norms_squared,
        tol=tol,
        selection=selection,
    )
    if isinstance(out, Refused):
        valid = not (
            _floats_ok(gram, xy)
            and gram.ndim == 2
            and np.ndim(xy) >= 1
            and gram.shape[0] == gram.shape[1] == np.shape(xy)[-1] > 0
            and _finite(gram)
            and _finite(xy)
            and (
                norms_squared is None
                or (norms_squared.shape == xy.shape[:-1] and _finite(norms_squared))
            )
            and is_static_int(n_nonzero)
            and 1 <= n_nonzero <= gram.shape[0]
            and is_real_number(tol)
            and tol == 0
            and gram_kind == "gram"
        )
        assert valid, f"{label}: refused valid input: {out}"
        return
    inputs = [gram, xy] + ([norms_squared] if norms_squared is not None else [])
    if gram_kind == "gram":
        check_result(label, out, inputs)
        _omp_checks(label, out, dictionary, signals, n_nonzero, None, tol)
    else:  # not a Gram matrix (not PSD): any finite result, or a refusal
        check_result(label, out, inputs)


@fuzzes("jad.sparse.ksvd")
@settings(max_examples=budget(0.5))
@given(
    signals=arrays(((6, 4), (6, 4), (6, 4), (0, 4), (6, 3), (4,), (1, 4))),
    init=arrays(((4, 5), (4, 5), (4, 4), (3, 5), (4,))),
    n_nonzero=st.sampled_from((1, 2, 2, 0, 6, 2.0)),
    n_iter=st.sampled_from((1, 2, 2, 0, -1, 1.5)),
    method=st.sampled_from(("exact", "approx", "svd")),
    key=st.sampled_from((None, None, "key", "raw", 3, "a")),
    monotone=st.booleans(),
)
@example(
    signals=make_array((6, 4), "float32"),
    init=make_array((4, 5), "float32"),
    n_nonzero=1,
    n_iter=1,
    method="exact",
    key=None,
    monotone=False,
)
def test_ksvd(signals, init, n_nonzero, n_iter, method, key, monotone):
    label = "ksvd"
    key = {"key": jax.random.key(0), "raw": jax.random.PRNGKey(0)}.get(key, key)
    out = attempt(
        label,
        sparse.ksvd,
        signals,
        init,
        n_nonzero,
        n_iter,
        method=method,
        key=key,
        monotone=monotone,
    )
    valid = (
        _floats_ok(signals, init)
        and np.ndim(signals) == 2
        and np.ndim(init) == 2
        and np.shape(signals)[1] == np.shape(init)[0]
        and np.shape(signals)[0] >= 1
        and _finite(signals)
        and _finite(init)
        and is_static_int(n_nonzero)
        and 1 <= n_nonzero <= np.shape(init)[1]
        and is_static_int(n_iter)
        and n_iter >= 1
        and method in ("exact", "approx")
        and (key is None or isinstance(key, jax.Array))
    )
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, out, [signals, init])
    d = np.asarray(out.dictionary).astype(np.float64)
    codes = np.asarray(out.codes).astype(np.float64)
    y = np.asarray(signals).astype(np.float64)
    assert d.shape == np.shape(init) and codes.shape == (y.shape[0], d.shape[1])
    assert out.errors.shape == (n_iter,)
    norms = np.linalg.norm(d, axis=0)
    tol = (
        5e-2
        if str(d.dtype) != "float64" and dtype_name(init) in ("float16", "bfloat16")
        else 1e-4
    )
    assert np.all((np.abs(norms - 1) < tol) | (norms == 0)), (
        f"{label}: atom norms {norms}"
    )
    assert np.all(np.count_nonzero(codes, axis=1) <= n_nonzero), label
    rms = np.sqrt(np.mean(np.sum((y - codes @ d.T) ** 2, axis=1)))
    close(
        out.errors[-1],
        rms,
        dtype=str(np.asarray(out.codes).dtype),
        label=label,
        scale=max(1.0, float(np.max(np.abs(y), initial=0.0))),
    )
    if monotone:
        errors = np.asarray(out.errors, np.float64)
        assert np.all(np.diff(errors) <= 1e-3 * (1 + errors[:-1])), label


DICT_INTS = (1, 2, 4, 4, 6, 9, 16, np.int64(4), 0, -1, 2.0, "4", None, True)


@fuzzes("jad.sparse.dct_dictionary", "jad.sparse.haar_dictionary")
@pytest.mark.parametrize("name", ["dct_dictionary", "haar_dictionary"])
@settings(max_examples=budget(1.0))
@given(
    m=st.sampled_from(DICT_INTS),
    num_atoms=st.sampled_from(DICT_INTS),
    separable=st.booleans(),
)
def test_analytic_dictionaries(name, m, num_atoms, separable):
    fn = getattr(sparse, name)
    out = attempt(name, fn, m, num_atoms, separable=separable)
    valid = is_static_int(m) and is_static_int(num_atoms) and 1 <= m <= num_atoms
    if valid and separable:
        valid = math.isqrt(m) ** 2 == m and math.isqrt(num_atoms) ** 2 == num_atoms
    if not refuse_or_succeed(name, out, valid):
        return
    check_result(name, out, [])
    d = np.asarray(out, np.float64)
    assert d.shape == (m, num_atoms) and out.dtype == jnp.float32
    close(np.linalg.norm(d, axis=0), np.ones(num_atoms), label=f"{name} atom norms")
    if m == num_atoms:  # an orthonormal basis
        close(d.T @ d, np.eye(m), label=f"{name} orthonormal", scale=1.0)
        if name == "dct_dictionary" and not separable:  # the orthonormal DCT-II
            close(d, scipy.fft.idct(np.eye(m), norm="ortho", axis=0), label=name)


@fuzzes("jad.sparse.random_dictionary")
@settings(max_examples=budget(1.0))
@given(
    key=st.sampled_from(("key", "key", "raw", 0, None, "a", "floats", "keys")),
    m=st.sampled_from(DICT_INTS),
    num_atoms=st.sampled_from(DICT_INTS),
)
def test_random_dictionary(key, m, num_atoms):
    label = "random_dictionary"
    key = {
        "key": jax.random.key(0),
        "raw": jax.random.PRNGKey(0),
        "floats": np.zeros(2, np.float32),
        "keys": jax.random.split(jax.random.key(0), 2),
    }.get(key, key)
    out = attempt(label, sparse.random_dictionary, key, m, num_atoms)
    valid = (
        is_static_int(m)
        and is_static_int(num_atoms)
        and m >= 1
        and num_atoms >= 1
        and isinstance(key, jax.Array)
        and (
            (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ())
            or (key.dtype == jnp.uint32 and key.shape == (2,))
        )
    )
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, out, [])
    assert out.shape == (m, num_atoms) and out.dtype == jnp.float32
    close(np.linalg.norm(np.asarray(out, np.float64), axis=0), np.ones(num_atoms))


# ================================================================= jad.methods

PC_OFFICIAL = patchcore.PatchCoreConfig(
    levels=(1, 2),
    pretrain_dim=8,
    target_dim=8,
    coreset_ratio=1.0,
    num_neighbors=2,
    sigma=1.0,
)
PC_ANOMALIB = patchcore.PatchCoreConfig.anomalib(
    levels=(1, 2), coreset_ratio=1.0, num_neighbors=2, sigma=1.0
)
PD_CONFIG = padim.PaDiMConfig(levels=(0, 1), n_features=5, sigma=1.0)
CHANNELS = {0: 3, 1: 4, 2: 6}  # of the tiny fuzzed "backbone" levels
GRID = {0: (4, 4), 1: (4, 4), 2: (2, 2)}


def _train(shape=(3, 2, 2, 8), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


_STATES = {}


def state(name):
    """Fitted states on fixed training embeddings (built once)."""
    if name not in _STATES:
        if name == "padim":
            _STATES[name] = padim.fit(PD_CONFIG, _train((4, 2, 2, 5)))
        else:
            config = PC_OFFICIAL if name == "official" else PC_ANOMALIB
            _STATES[name] = patchcore.fit(config, _train(), key=jax.random.key(0))
    return _STATES[name]


def _patchcore_state(kind):
    """A state to score with: official, anomalib, or a wrong type."""
    return {
        "official": state("official"),
        "anomalib": state("anomalib"),
        "padim": state("padim"),
        "none": None,
    }[kind]


PC_STATES = ("official", "official", "anomalib", "anomalib", "padim", "none")
EMBED_SHAPES = (
    (2, 2, 2, 8),
    (2, 2, 2, 8),
    (2, 2, 2, 8),
    (1, 3, 3, 8),
    (8,),
    (),
    (0, 2, 2, 8),
    (2, 0, 2, 8),
    (2, 2, 2, 5),
)


def ref_knn(queries, bank):
    """(..., N) squared distances and the bank order, float64."""
    q = np.asarray(queries).astype(np.float64)
    b = np.asarray(bank).astype(np.float64)
    return np.sum((q[..., None, :] - b) ** 2, axis=-1)


@fuzzes("jad.methods.patchcore.score")
@settings(max_examples=budget(0.75))
@given(kind=st.sampled_from(PC_STATES), embeddings=arrays(EMBED_SHAPES))
def test_patchcore_score(kind, embeddings):
    label = "patchcore.score"
    st_ = _patchcore_state(kind)
    out = attempt(label, patchcore.score, st_, embeddings)
    valid = (
        kind in ("official", "anomalib")
        and _floats_ok(embeddings)
        and np.ndim(embeddings) >= 1
        and np.shape(embeddings)[-1] == 8
    )
    if valid and not _finite(embeddings):
        valid = None  # refused (concrete) or propagated
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, out, [embeddings])
    sq = ref_knn(embeddings, st_.memory_bank)
    if kind == "official":  # mean of the 2 smallest squared distances
        ref = np.mean(np.sort(sq, axis=-1)[..., :2], axis=-1)
    else:
        ref = np.sqrt(np.min(sq, axis=-1))
    close(out, ref, dtype=_tolerance_dtype(embeddings), label=label, scale=10.0)


@fuzzes("jad.methods.patchcore.image_score")
@settings(max_examples=budget(0.75))
@given(
    kind=st.sampled_from(PC_STATES),
    embeddings=arrays(EMBED_SHAPES[:4] + EMBED_SHAPES[6:]),
    patch_map=st.sampled_from(
        ("score", "score", "score", "transposed", "flat", "int", "nan")
    ),
)
@example(
    kind="anomalib",
    embeddings=make_array((2, 2, 2, 8), "float32"),
    patch_map="flat",
)
def test_patchcore_image_score(kind, embeddings, patch_map):
    label = "patchcore.image_score"
    st_ = _patchcore_state(kind)
    emb = np.asarray(embeddings).astype(np.float32)
    valid = kind in ("official", "anomalib") and np.ndim(emb) == 4
    if valid and np.shape(emb)[-1] == 8 and _finite(emb) and np.size(emb):
        pmap = np.asarray(patchcore.score(st_, emb))
    else:
        pmap = np.ones(np.shape(emb)[:-1], np.float32)
    if patch_map == "transposed":
        pmap = np.swapaxes(pmap, 0, -1)
    elif patch_map == "flat":
        pmap = pmap.reshape(-1)
    elif patch_map == "int":
        pmap = pmap.astype(np.int32)
    elif patch_map == "nan" and pmap.size:
        pmap = pmap.copy()
        pmap.flat[-1] = np.nan
    out = attempt(label, patchcore.image_score, st_, embeddings, pmap)
    valid = (
        valid
        and _floats_ok(embeddings)
        and np.shape(embeddings)[-1] == 8
        and np.asarray(pmap).shape == np.shape(embeddings)[:-1]
        and is_float(pmap.dtype)
        and _finite(embeddings)
    )
    if valid and not (_finite(pmap) and np.size(pmap)):
        valid = None
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, out, [embeddings, pmap])
    if not valid:
        return
    flat = pmap.reshape(pmap.shape[0], -1).astype(np.float64)
    top = flat.max(axis=1)
    if kind == "anomalib":  # eq. 7: 1 - softmax over the support of m*
        bank = np.asarray(st_.memory_bank, np.float64)
        best = flat.argmax(axis=1)
        patches = emb.reshape(emb.shape[0], -1, emb.shape[-1])[
            np.arange(len(best)), best
        ]
        m_star = bank[np.argmin(ref_knn(patches, bank), axis=-1)]
        support = np.argsort(ref_knn(m_star, bank), axis=-1, kind="stable")[:, :2]
        dist = np.sqrt(np.sum((patches[:, None] - bank[support]) ** 2, axis=-1))
        soft = np.exp(dist - dist.max(1, keepdims=True))
        top = top * (1 - soft[:, 0] / soft.sum(1))
    close(out, top, dtype=_tolerance_dtype(embeddings), label=label, scale=10.0)


@fuzzes("jad.methods.patchcore.candidate_indices")
@settings(max_examples=budget(1.0))
@given(
    kind=st.sampled_from(PC_STATES),
    embeddings=arrays(EMBED_SHAPES),
    num_candidates=st.sampled_from((1, 3, 3, 50, 0, -1, 2.0, None)),
)
def test_patchcore_candidate_indices(kind, embeddings, num_candidates):
    label = "patchcore.candidate_indices"
    st_ = _patchcore_state(kind)
    out = attempt(
        label,
        patchcore.candidate_indices,
        st_,
        embeddings,
        num_candidates=num_candidates,
    )
    valid = (
        kind in ("official", "anomalib")
        and _floats_ok(embeddings)
        and np.ndim(embeddings) >= 1
        and np.shape(embeddings)[-1] == 8
        and is_static_int(num_candidates)
        and num_candidates >= 1
    )
    if valid and not _finite(embeddings):
        valid = None
    if not refuse_or_succeed(label, out, valid):
        return
    sq = ref_knn(embeddings, st_.memory_bank)
    k = min(num_candidates, sq.shape[-1])
    assert out.shape == (*np.shape(embeddings)[:-1], k)
    assert jnp.issubdtype(out.dtype, jnp.integer)
    picked = np.take_along_axis(sq, np.asarray(out, np.int64), axis=-1)
    close(
        np.sort(picked, axis=-1),
        np.sort(sq, axis=-1)[..., :k],
        dtype=_tolerance_dtype(embeddings),
        label=label,
        scale=10.0,
    )


@fuzzes("jad.methods.patchcore.restricted_score")
@settings(max_examples=budget(1.0))
@given(
    kind=st.sampled_from(PC_STATES),
    embeddings=arrays(EMBED_SHAPES),
    candidates=st.sampled_from(
        (
            "ok",
            "ok",
            "ok",
            "int8",
            "float",
            "bool",
            "range",
            "negative",
            "shape",
            "scalar",
        )
    ),
)
@example(
    kind="official",
    embeddings=make_array((2, 2, 2, 8), "bool"),
    candidates="ok",
)
def test_patchcore_restricted_score(kind, embeddings, candidates):
    label = "patchcore.restricted_score"
    st_ = _patchcore_state(kind)
    batch = np.shape(embeddings)[:-1]
    cands = np.random.default_rng(0).integers(0, 8, (*batch, 3)).astype(np.int32)
    cands = {
        "int8": cands.astype(np.int8),
        "float": cands.astype(np.float32),
        "bool": cands > 3,
        "range": cands + 8,
        "negative": cands - 8,
        "shape": cands[..., :1, :] if len(batch) else cands[None, None],
        "scalar": np.int32(1),
    }.get(candidates, cands)
    out = attempt(label, patchcore.restricted_score, st_, embeddings, cands)
    valid = (
        kind in ("official", "anomalib")
        and _floats_ok(embeddings)
        and np.ndim(embeddings) >= 1
        and np.shape(embeddings)[-1] == 8
        and candidates in ("ok", "int8")
    )
    if candidates == "shape" and valid:
        valid = None  # broadcastable or not, depending on the shape
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, out, [embeddings])
    if valid:
        sq = ref_knn(embeddings, st_.memory_bank)
        ref = np.min(np.take_along_axis(sq, cands.astype(np.int64), axis=-1), axis=-1)
        close(out, ref, dtype=_tolerance_dtype(embeddings), label=label, scale=10.0)


def _features(draw, config):
    """A features dict for ``config``: valid, or with one thing wrong."""
    levels = config.levels
    batch = draw(st.sampled_from((2, 2, 1, 0)))
    dtype = draw(st.sampled_from(SCORE_DTYPES))
    kind = draw(st.sampled_from(KINDS))
    fault = draw(
        st.sampled_from((None,) * 4 + ("missing", "rank", "batch", "list", "grid"))
    )
    features = {
        level: make_array((batch, *GRID[level], CHANNELS[level]), dtype, kind, level)
        for level in levels
    }
    if fault == "missing":
        del features[levels[-1]]
    elif fault == "rank":
        features[levels[0]] = features[levels[0]][0]
    elif fault == "batch":
        features[levels[-1]] = features[levels[-1]][:1]
    elif fault == "list":
        features = list(features.values())
    elif fault == "grid":
        features[levels[0]] = np.repeat(features[levels[0]], 2, axis=1)
    return features, fault


def ref_bilinear_channels_last(x, grid):
    wh = resize_matrix(x.shape[1], grid[0], "bilinear", False)
    ww = resize_matrix(x.shape[2], grid[1], "bilinear", False)
    return np.einsum("oh,bhwc,pw->bopc", wh, x, ww)


def ref_patchcore_embed(config, features):
    """PatchCore's aggregation in numpy (zero-padded neighbourhoods, torch pools)."""
    first = config.levels[0]
    grid = features[first].shape[1:3]
    per_level = []
    for level in config.levels:
        f = np.asarray(features[level]).astype(np.float64)
        size, pad = config.patch_size, config.patch_size // 2
        padded = np.pad(f, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        h, w = f.shape[1:3]
        shifts = [
            padded[:, i : i + h, j : j + w] for i in range(size) for j in range(size)
        ]
        if config.preset == "official":
            unfolded = np.stack(shifts, -1).reshape(*f.shape[:3], -1)
            f = adaptive_avg_pool_np(unfolded, config.pretrain_dim)
        else:
            f = np.mean(shifts, axis=0)
        if f.shape[1:3] != grid:
            f = ref_bilinear_channels_last(f, grid)
        per_level.append(f)
    out = np.concatenate(per_level, -1)
    return (
        adaptive_avg_pool_np(out, config.target_dim)
        if config.preset == "official"
        else out
    )


def ref_padim_embed(config, features):
    first = config.levels[0]
    grid = features[first].shape[1:3]
    parts = []
    for level in config.levels:
        f = np.asarray(features[level]).astype(np.float64)
        if f.shape[1:3] != grid:
            rows = [int(i * f.shape[1] / grid[0]) for i in range(grid[0])]
            cols = [int(j * f.shape[2] / grid[1]) for j in range(grid[1])]
            f = f[:, rows][:, :, cols]
        parts.append(f)
    concat = np.concatenate(parts, -1)
    rng = random.Random()
    rng.seed(config.seed)
    return concat[..., rng.sample(range(concat.shape[-1]), config.n_features)]



@fuzzes("jad.methods.patchcore.loss_context", "jad.methods.patchcore.feature_loss")
@settings(max_examples=budget(0.5))
@given(kind=st.sampled_from(PC_STATES), embeddings=arrays(EMBED_SHAPES))
def test_patchcore_feature_loss(kind, embeddings):
    # F2PAD eq. 5 through the protocol hooks: the same as candidate_indices with the
    # config's num_candidates, then restricted_score (or the same refusal).
    label = "patchcore.feature_loss"
    st_ = _patchcore_state(kind)
    context = attempt(label, patchcore.loss_context, st_, embeddings)
    k = 50 if st_ is None or kind == "padim" else st_.config.num_candidates
    ref = attempt(label, patchcore.candidate_indices, st_, embeddings,
                  num_candidates=k)
    assert isinstance(context, Refused) == isinstance(ref, Refused), label
    if isinstance(context, Refused):
        return
    np.testing.assert_array_equal(context, ref)
    out = attempt(label, patchcore.feature_loss, st_, embeddings, context)
    expected = attempt(label, patchcore.restricted_score, st_, embeddings, context)
    assert isinstance(out, Refused) == isinstance(expected, Refused), label
    if not isinstance(out, Refused):
        np.testing.assert_array_equal(out, expected)
        check_result(label, out, [embeddings])


@fuzzes("jad.methods.padim.feature_loss")
@settings(max_examples=budget(0.5))
@given(
    kind=st.sampled_from(("padim", "padim", "official", "none")),
    embeddings=arrays(((2, 2, 2, 5), (1, 2, 2, 5), (2, 2, 2, 4), (2, 2, 5))),
)
def test_padim_feature_loss(kind, embeddings):
    # F2PAD eq. 7: the squared Mahalanobis distance, whatever config.squared
    label = "padim.feature_loss"
    st_ = _patchcore_state(kind)
    out = attempt(label, padim.feature_loss, st_, embeddings, None)
    squared = st_
    if kind == "padim":
        squared = st_.replace(
            config=padim.PaDiMConfig(**{**PD_CONFIG.__dict__, "squared": True})
        )
    expected = attempt(label, padim.score, squared, embeddings)
    assert isinstance(out, Refused) == isinstance(expected, Refused), label
    if not isinstance(out, Refused):
        np.testing.assert_array_equal(out, expected)
        check_result(label, out, [embeddings])

@fuzzes("jad.methods.patchcore.embed", "jad.methods.padim.embed")
@pytest.mark.parametrize("name", ["patchcore.official", "patchcore.anomalib", "padim"])
@settings(max_examples=budget(0.5))
@given(data=st.data())
def test_method_embed(name, data):
    config = {
        "patchcore.official": PC_OFFICIAL,
        "patchcore.anomalib": PC_ANOMALIB,
        "padim": PD_CONFIG,
    }[name]
    module = padim if name == "padim" else patchcore
    features, fault = _features(data.draw, config)
    label = f"{name}.embed"
    out = attempt(label, module.embed, config, features)
    arrays_ = list(features.values()) if isinstance(features, dict) else features
    valid = fault is None and _floats_ok(*arrays_) and arrays_[0].shape[0] > 0
    if fault is None and arrays_[0].shape[0] == 0 and _floats_ok(*arrays_):
        valid = None  # an empty batch: empty embeddings or a refusal
    if fault == "grid":
        valid = None  # a finer first level is just another grid
    if not refuse_or_succeed(label, out, valid):
        return
    if not valid:
        return
    ref = (ref_padim_embed if name == "padim" else ref_patchcore_embed)(
        config, features
    )
    # padim drops channels (and a NaN with them): its reference decides.
    check_result(label, out, arrays_, propagates=name != "padim")
    if name == "padim" or _finite(*arrays_[:1]) and all(_finite(a) for a in arrays_):
        close(out, ref, dtype=_tolerance_dtype(arrays_[0]), label=label, scale=10.0)


FIT_SHAPES = (
    (3, 2, 2, 8),
    (3, 2, 2, 8),
    (3, 2, 2, 8),
    (1, 3, 3, 8),
    (0, 2, 2, 8),
    (2, 2, 8),
    (3, 2, 2, 0),
)


@fuzzes("jad.methods.patchcore.fit")
@settings(max_examples=budget(1.0))
@given(
    config=st.sampled_from(("all", "all", "half", "anomalib", "padim")),
    embeddings=arrays(FIT_SHAPES),
    key=st.sampled_from(("key", "key", "raw", None, 0)),
)
def test_patchcore_fit(config, embeddings, key):
    label = "patchcore.fit"
    cfg = {
        "all": PC_OFFICIAL,
        "half": PC_OFFICIAL.__class__(**{**PC_OFFICIAL.__dict__, "coreset_ratio": 0.5}),
        "anomalib": PC_ANOMALIB.__class__(
            **{**PC_ANOMALIB.__dict__, "coreset_ratio": 0.5}
        ),
        "padim": PD_CONFIG,
    }[config]
    key = {"key": jax.random.key(0), "raw": jax.random.PRNGKey(0)}.get(key, key)
    out = attempt(label, patchcore.fit, cfg, embeddings, key=key)
    valid = (
        config != "padim"
        and isinstance(key, jax.Array)
        and _floats_ok(embeddings)
        and np.ndim(embeddings) == 4
        and np.size(embeddings) > 0
        and _finite(embeddings)
    )
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, out, [embeddings])
    flat = (
        np.asarray(embeddings).astype(np.float32).reshape(-1, np.shape(embeddings)[-1])
    )
    bank = np.asarray(out.memory_bank)
    if cfg.coreset_ratio == 1.0:
        np.testing.assert_array_equal(bank, flat)
    else:
        assert bank.shape == (max(1, int(len(flat) * cfg.coreset_ratio)), flat.shape[1])
        assert all((flat == row).all(axis=1).any() for row in bank), "not a subset"


@fuzzes("jad.methods.padim.fit")
@settings(max_examples=budget(1.0))
@given(
    config=st.sampled_from(("padim", "padim", "padim", "patchcore")),
    embeddings=arrays(
        (
            (4, 2, 2, 5),
            (4, 2, 2, 5),
            (2, 1, 1, 3),
            (1, 2, 2, 5),
            (0, 2, 2, 5),
            (3, 2, 5),
            (3, 2, 2, 0),
        )
    ),
)
@example(
    config="padim",
    embeddings=np.ones((3, 2, 2, 0), np.float32),
)
def test_padim_fit(config, embeddings):
    label = "padim.fit"
    cfg = PD_CONFIG if config == "padim" else PC_OFFICIAL
    out = attempt(label, padim.fit, cfg, embeddings)
    valid = (
        config == "padim"
        and _floats_ok(embeddings)
        and np.ndim(embeddings) == 4
        and np.shape(embeddings)[0] >= 2
        and _finite(embeddings)
    )
    if valid and (0 in np.shape(embeddings) or _ill_conditioned(embeddings)):
        valid = None
    if not refuse_or_succeed(label, out, valid):
        return
    check_padim_state(label, out, embeddings)


def _ill_conditioned(embeddings) -> bool:
    """Few images of O(1e4) values: Sigma + 0.01 I has a condition number (~1e10)
    beyond float32's Cholesky, which padim refuses with a documented error."""
    return float(np.max(np.abs(np.asarray(embeddings, np.float64)), initial=0)) > 1e3


def check_padim_state(label, out, embeddings):
    """Means and whitenings of ``out`` against numpy's mean and cov (+ 0.01 I)."""
    check_result(label, out, [embeddings])
    x = np.asarray(embeddings).astype(np.float64)
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    close(
        out.mean,
        x.mean(0).reshape(h, w, d),
        dtype=_tolerance_dtype(embeddings),
        label=f"{label} mean",
        scale=10.0,
    )
    whitening = np.asarray(out.whitening, np.float64).reshape(h * w, d, d)
    for loc in range(h * w):
        cov = np.cov(x[:, loc], rowvar=False).reshape(d, d) + 0.01 * np.eye(d)
        assert np.allclose(np.triu(whitening[loc], 1), 0), "not lower triangular"
        if _ill_conditioned(x):
            continue  # float32 cannot invert it to any useful accuracy
        # W Sigma W^T = I, from a float32 Cholesky factor.
        close(
            whitening[loc] @ cov @ whitening[loc].T,
            np.eye(d),
            dtype="float16",
            label=f"{label} whitening",
        )


@fuzzes("jad.methods.padim.fit_batches")
@settings(max_examples=budget(0.75))
@given(
    embeddings=arrays(((5, 2, 2, 5),) * 4 + ((3, 1, 1, 3), (1, 2, 2, 5))),
    batching=st.sampled_from(
        (
            "split",
            "split",
            "whole",
            "empty_batch",
            "none",
            "mismatch",
            "int",
            "nan",
            "scalar",
            "generator",
        )
    ),
)
def test_padim_fit_batches(embeddings, batching):
    label = "padim.fit_batches"
    x = np.asarray(embeddings)
    batches = {
        "split": [x[:2], x[2:]],
        "whole": [x],
        "empty_batch": [x[:2], x[2:2], x[2:]],
        "none": [],
        "mismatch": [x[:2], np.repeat(x[2:], 2, axis=1)],
        "int": [x[:2], x[2:].astype(np.int32)],
        "nan": [x[:2], np.full_like(x[2:], np.nan)],
        "scalar": [x[:2], np.float32(1.0)],
        "generator": (b for b in [x[:2], x[2:]]),
    }[batching]
    out = attempt(label, padim.fit_batches, PD_CONFIG, batches)
    valid = (
        batching in ("split", "whole", "empty_batch", "generator")
        and _floats_ok(x)
        and x.shape[0] >= 2
    )
    if valid and not _finite(x):
        valid = False  # refused (NaN/inf in a batch)
    if batching == "nan" and x.shape[0] >= 3:
        valid = False
    if valid and _ill_conditioned(x):
        valid = None
    if not refuse_or_succeed(label, out, valid):
        return
    check_padim_state(label, out, x)


@fuzzes("jad.methods.padim.score")
@settings(max_examples=budget(1.0))
@given(
    kind=st.sampled_from(("padim", "padim", "padim", "official", "none")),
    embeddings=arrays(
        (
            (2, 2, 2, 5),
            (2, 2, 2, 5),
            (1, 2, 2, 5),
            (2, 3, 2, 5),
            (2, 2, 2, 4),
            (2, 2, 5),
            (0, 2, 2, 5),
        )
    ),
    squared=st.booleans(),
)
@example(
    kind="padim",
    embeddings=make_array((2, 2, 2, 5), "bool"),
    squared=False,
)
def test_padim_score(kind, embeddings, squared):
    label = "padim.score"
    st_ = _patchcore_state(kind)
    if kind == "padim" and squared:
        st_ = st_.replace(
            config=padim.PaDiMConfig(**{**PD_CONFIG.__dict__, "squared": True})
        )
    out = attempt(label, padim.score, st_, embeddings)
    valid = (
        kind == "padim"
        and _floats_ok(embeddings)
        and np.ndim(embeddings) == 4
        and np.shape(embeddings)[1:] == (2, 2, 5)
    )
    if valid and not _finite(embeddings):
        valid = None
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, out, [embeddings])
    train = _train((4, 2, 2, 5)).astype(np.float64).reshape(4, 4, 5)
    e = np.asarray(embeddings).astype(np.float64)
    ref = np.empty(e.shape[:-1])
    for loc in range(4):
        i, j = divmod(loc, 2)
        cov = np.cov(train[:, loc], rowvar=False) + 0.01 * np.eye(5)
        diff = e[:, i, j] - train[:, loc].mean(0)
        ref[:, i, j] = np.sum(diff * np.linalg.solve(cov, diff.T).T, axis=-1)
    if not squared:
        ref = np.sqrt(ref)
    close(out, ref, dtype=_tolerance_dtype(embeddings), label=label, scale=10.0)


@fuzzes("jad.methods.padim.channel_subset")
@settings(max_examples=budget(1.0))
@given(
    total=st.sampled_from((7, 7, 448, 1, 0, -1, 7.0, "7")),
    n_features=st.sampled_from((None, 3, 3, 7, 1, 0, 8, -1, 2.0)),
    seed=st.sampled_from((1024, 1024, 0, -3, 1.5, None, "a")),
)
@example(
    total="7",
    n_features=None,
    seed=1024,
)
def test_padim_channel_subset(total, n_features, seed):
    label = "padim.channel_subset"
    out = attempt(label, padim.channel_subset, total, n_features, seed=seed)
    n = n_features
    if is_static_int(total) and n is None:
        n = {448: 100, 1792: 550}.get(total, min(100, total))
    valid = (
        is_static_int(total)
        and total >= 1
        and is_static_int(n)
        and 1 <= n <= total
        and is_static_int(seed)
    )
    if (
        valid is False
        and is_static_int(total)
        and total >= 1
        and is_static_int(n)
        and 1 <= n <= total
    ):
        valid = None  # other seeds (None, float, str) Python's random accepts too
    if not refuse_or_succeed(label, out, valid):
        return
    if valid:
        rng = random.Random()
        rng.seed(seed)
        assert out == tuple(rng.sample(range(total), n)), label


@fuzzes("jad.methods.postprocess")
@settings(max_examples=budget(1.0))
@given(
    patch_map=arrays(
        ((2, 4, 4), (2, 4, 4), (4, 4), (2, 4, 4, 1), (0, 4, 4), (2, 0, 4))
    ),
    image_size=st.sampled_from(
        ((8, 8), (8, 8), (4, 4), (0, 8), (8,), "ab", None, (8.0, 8))
    ),
    upsample=st.sampled_from(("bilinear", "bilinear", "nearest", "bicubic", "area")),
    sigma=st.sampled_from((1.0, 1.0, 0.0, -1.0, float("nan"), "1")),
    blur_mode=st.sampled_from(("symmetric", "reflect", "mirror")),
)
@example(
    patch_map=make_array((2, 4, 4), "float32"),
    image_size=(8, 8),
    upsample="bilinear",
    sigma=-1.0,
    blur_mode="symmetric",
)
def test_postprocess(patch_map, image_size, upsample, sigma, blur_mode):
    label = "postprocess"
    out = attempt(
        label,
        jad.methods.postprocess,
        patch_map,
        image_size,
        upsample=upsample,
        sigma=sigma,
        blur_mode=blur_mode,
    )
    valid = (
        _floats_ok(patch_map)
        and np.ndim(patch_map) >= 2
        and isinstance(image_size, tuple)
        and len(image_size) == 2
        and all(is_static_int(n) and n >= 1 for n in image_size)
        and upsample in ("bilinear", "nearest", "bicubic")
        and is_real_number(sigma)
        and sigma >= 0
        and blur_mode in SCIPY_MODE
    )
    if valid and _has_empty(patch_map):
        valid = None
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, out, [patch_map], propagates=upsample != "nearest")
    if not (valid and _finite(patch_map)):
        return
    x = np.asarray(patch_map).astype(np.float64)
    wh = resize_matrix(x.shape[-2], image_size[0], upsample, False)
    ww = resize_matrix(x.shape[-1], image_size[1], upsample, False)
    ref = np.einsum("oh,...hw,pw->...op", wh, x, ww)
    if sigma > 0:
        for index in np.ndindex(ref.shape[:-2]):
            ref[index] = ndi.gaussian_filter(
                ref[index],
                float(sigma),
                mode=SCIPY_MODE[blur_mode],
                radius=int(4 * float(sigma) + 0.5),
            )
    close(out, ref, dtype=_tolerance_dtype(patch_map), label=label, scale=10.0)


# ================================================================= jad.pipeline

BACKBONE = "efficientnet_lite0"
SIZE = 32
DETECTOR_CONFIGS = {"patchcore": PC_OFFICIAL, "padim": PD_CONFIG}
IMAGE_SHAPES = ((1, SIZE, SIZE, 3),) * 6 + (
    (1, SIZE, SIZE, 1),
    (SIZE, SIZE, 3),
    (1, 16, 16, 3),
    (0, SIZE, SIZE, 3),
    (1, 3, SIZE, SIZE),
)
# Images cost one compilation per dtype: the low-precision floats (float16,
# bfloat16) and extra methods' programs run in the "deep" profile only.
_DEEP = settings.default.max_examples >= 100
IMAGE_DTYPES = (
    SCORE_DTYPES
    if _DEEP
    else tuple(d for d in SCORE_DTYPES if d not in ("float16", "bfloat16"))
)


class Tiny:
    """A holder with a short repr: hypothesis prints a failing test's arguments,
    and the backbone's variables would fill megabytes."""

    def __init__(self, value, name: str):
        self.value, self.name = value, name

    def __repr__(self) -> str:
        return f"<{self.name}>"


@pytest.fixture(scope="module")
def backbone_variables(tmp_path_factory):
    import jad.backbones as bb

    variables = bb.load_pretrained(
        BACKBONE, cache_dir=tmp_path_factory.mktemp("weights"), progress=False
    )
    return Tiny(variables, f"{BACKBONE} variables")


@pytest.fixture(scope="module")
def detectors(backbone_variables):
    """A tiny detector per method: 32 x 32 images, shallow levels, 3 images."""
    images = _train((3, SIZE, SIZE, 3))
    fitted = {
        method: pipeline.fit_detector(
            method,
            [images[i : i + 1] for i in range(3)],
            backbone=BACKBONE,
            variables=backbone_variables.value,
            config=config,
            key=jax.random.key(0),
            progress=False,
        )
        for method, config in DETECTOR_CONFIGS.items()
    }
    return Tiny(fitted, "tiny detectors")


def _images_valid(images, *, any_size=False) -> bool | None:
    """(B, SIZE, SIZE, 3) float images (any H, W >= 1 with ``any_size``)."""
    valid = (
        _floats_ok(images)
        and np.ndim(images) == 4
        and np.shape(images)[-1] == 3
        and (
            min(np.shape(images)[1:3]) >= 1
            if any_size
            else np.shape(images)[1:3] == (SIZE, SIZE)
        )
    )
    if valid and not (_finite(images) and np.shape(images)[0] > 0):
        return None  # refused, or propagated / empty maps
    return valid


@fuzzes("jad.detector.anomaly_maps")
@pytest.mark.parametrize(
    "method",
    [
        "patchcore",
        "padim",
    ],
)
@settings(max_examples=budget(0.5))
@given(images=arrays(IMAGE_SHAPES, dtypes=IMAGE_DTYPES))
@example(
    images=np.zeros((0, SIZE, SIZE, 3), np.float32),
)
def test_anomaly_maps(detectors, method, images):
    label = "anomaly_maps"
    out = attempt(label, jdet.anomaly_maps, detectors.value[method], images)
    if not refuse_or_succeed(label, out, _images_valid(images)):
        return
    maps, scores = out
    batch = np.shape(images)[0]
    assert maps.shape == (batch, SIZE, SIZE) and scores.shape == (batch,)
    check_result(label, out, [images])
    if not batch or not _finite(images):
        return
    top = np.max(np.asarray(maps, np.float64), axis=(1, 2))
    if method == "padim":  # the image score is the map's maximum
        close(scores, top, label=label)
    else:  # the maximum patch score, before upsampling and blur (which lower it)
        assert np.all(np.asarray(scores) >= top - 1e-5 * np.abs(top)), label


@fuzzes("jad.detector.embed_images")
@settings(max_examples=budget(0.75))
@given(
    method=st.sampled_from(("patchcore", "patchcore", "padim", "nope")),
    backbone=st.sampled_from((BACKBONE,) * 4 + ("nope",)),
    variables=st.sampled_from(("real",) * 4 + ("empty", "none")),
    images=arrays(IMAGE_SHAPES, dtypes=IMAGE_DTYPES),
)
@example(
    method="patchcore",
    backbone=BACKBONE,
    variables="real",
    images=np.zeros((0, SIZE, SIZE, 3), np.float32),
)
def test_embed_images(backbone_variables, method, backbone, variables, images):
    label = "embed_images"
    config = DETECTOR_CONFIGS.get(method, PC_OFFICIAL)
    var = {"real": backbone_variables.value, "empty": {}, "none": None}[variables]
    out = attempt(label, jdet.embed_images, method, config, backbone, var, images)
    valid = method != "nope" and backbone != "nope" and variables == "real"
    valid = valid and _images_valid(images, any_size=True)
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, out, [images], propagates=method != "padim")
    assert out.shape[0] == np.shape(images)[0]



@fuzzes("jad.detector.loss_context", "jad.detector.feature_loss")
@pytest.mark.parametrize("method", ["patchcore", "padim"])
@settings(max_examples=budget(0.5))
@given(images=arrays(IMAGE_SHAPES, dtypes=IMAGE_DTYPES))
def test_detector_feature_loss(detectors, method, images):
    label = "feature_loss"
    det = detectors.value[method]
    context = attempt(label, jdet.loss_context, det, images)
    if not refuse_or_succeed(label, context, _images_valid(images)):
        return
    out = attempt(label, jdet.feature_loss, det, images, context)
    assert not isinstance(out, Refused), f"{label}: {out}"
    check_result(label, out, [images])
    assert out.shape[0] == np.shape(images)[0] and out.ndim == 3
    if _finite(images) and method == "padim":  # the squared distance
        emb = jdet.embed_images(method, det.config, det.backbone, det.variables,
                                images)
        close(out, padim.feature_loss(det.state, emb, None), label=label)

@fuzzes("jad.pipeline.fit_detector")
@settings(max_examples=budget(0.5))
@given(
    method=st.sampled_from(("patchcore", "padim", "nope")),
    batches=st.sampled_from(
        ("ok", "ok", "empty", "mixed", "int", "nan", "channels", "batch")
    ),
    config=st.sampled_from(("own", "own", "other")),
)
def test_fit_detector(backbone_variables, method, batches, config):
    label = "fit_detector"
    images = _train((3, SIZE, SIZE, 3), seed=1)
    train = {
        "ok": [images[i : i + 1] for i in range(3)],
        "empty": [],
        "mixed": [images[:1], images[1:2, :16, :16]],
        "int": [images[:1].astype(np.int32)] * 2,
        "nan": [np.where(images[:1] > 2, np.nan, images[:1])] * 2,
        "channels": [images[:1, ..., :1]] * 2,
        "batch": [images[:1], images[1:3]],
    }[batches]
    cfg = DETECTOR_CONFIGS.get(method, PC_OFFICIAL)
    if config == "other":
        cfg = PD_CONFIG if method == "patchcore" else PC_OFFICIAL
    out = attempt(
        label,
        pipeline.fit_detector,
        method,
        train,
        backbone=BACKBONE,
        variables=backbone_variables.value,
        config=cfg,
        key=jax.random.key(0),
        progress=False,
    )
    valid = method != "nope" and config == "own" and batches in ("ok", "batch")
    if not refuse_or_succeed(label, out, valid):
        return
    assert isinstance(out, pipeline.Detector) and out.image_size == (SIZE, SIZE)
    check_result(label, out.state, [])


@fuzzes("jad.pipeline.predict")
@settings(max_examples=budget(0.5))
@given(
    method=st.sampled_from(tuple(DETECTOR_CONFIGS)),
    batches=st.lists(arrays(IMAGE_SHAPES, dtypes=IMAGE_DTYPES), min_size=0, max_size=2),
)
@example(
    method="patchcore",
    batches=[np.zeros((0, SIZE, SIZE, 3), np.float32)],
)
def test_predict(detectors, method, batches):
    label = "predict"
    out = attempt(
        label, pipeline.predict, detectors.value[method], batches, progress=False
    )
    valid = bool(batches) and all(_images_valid(b) is True for b in batches)
    if not valid and batches and all(_images_valid(b) is not False for b in batches):
        valid = None
    if not refuse_or_succeed(label, out, valid):
        return
    maps, scores, seconds = out
    total = sum(np.shape(b)[0] for b in batches)
    assert maps.shape == (total, SIZE, SIZE) and scores.shape == (total,)
    check_result(label, (maps, scores), batches)
    assert seconds >= 0


@fuzzes("jad.pipeline.calibrate")
@settings(max_examples=budget(0.5))
@given(
    method=st.sampled_from(tuple(DETECTOR_CONFIGS)),
    batches=st.sampled_from(("ok", "ok", "ok", "none", "int", "nan", "size")),
    quantile=st.sampled_from(
        (1.0, 1.0, 0.5, 0.0, np.float32(0.9), -0.1, 1.5, float("nan"), "0.5", None)
    ),
)
@example(method="patchcore", batches="ok", quantile=None)
def test_calibrate(detectors, method, batches, quantile):
    label = "calibrate"
    images = _train((2, SIZE, SIZE, 3), seed=2)
    kind = batches
    batches = {
        "ok": [images[:1], images[1:]],
        "none": [],
        "int": [images[:1].astype(np.int32)],
        "nan": [np.where(images[:1] > 2, np.nan, images[:1])],
        "size": [images[:1, :16, :16]],
    }[kind]
    out = attempt(
        label,
        pipeline.calibrate,
        detectors.value[method],
        batches,
        quantile=quantile,
        progress=False,
    )
    valid = kind == "ok" and is_real_number(quantile) and 0.0 <= quantile <= 1.0
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, out, [])
    maps, scores, _ = pipeline.predict(detectors.value[method], batches, progress=False)
    close(
        out.threshold,
        np.quantile(scores.astype(np.float64), float(quantile)),
        label=label,
    )
    close((out.map_min, out.map_max), (maps.min(), maps.max()), label=label)


# ================================================================= jad.methods.sgfr

SG_CONFIG = sgfr.SGFRConfig(score_levels=(1,), ref_level=2, s_ref=3, s=2, sigma=1.0)
SG_SHAPES = {1: (2, 2, 3), 2: (1, 1, 4)}


def _sgfr_bank(n=6):
    return {lv: _train((n, *shape), seed=lv) for lv, shape in SG_SHAPES.items()}


def _sgfr_state():
    if "sgfr" not in _STATES:
        _STATES["sgfr"] = sgfr.fit(SG_CONFIG, _sgfr_bank())
    return _STATES["sgfr"]


SG_FIRST = ((2, 2, 2, 3), (2, 2, 2, 3), (2, 2, 2, 3), (1, 2, 2, 3), (2, 2, 3),
            (2, 1, 2, 3), (0, 2, 2, 3))


@st.composite
def sgfr_embeddings(draw):
    """dict {1: (B, 2, 2, 3), 2: (B, 1, 1, 4)} with faults: shapes, dtypes, values,
    a missing level, a batch that differs between levels, not a dict."""
    first = draw(arrays(SG_FIRST))
    batch = np.shape(first)[0] if np.ndim(first) == 4 else 2
    second = draw(arrays(((batch, 1, 1, 4),) * 4 + ((batch + 1, 1, 1, 4),),
                         dtypes=("float32",), kinds=("normal",) * 4 + ("nan",)))
    form = draw(st.sampled_from(("dict",) * 6 + ("missing", "list")))
    if form == "missing":
        return {1: first}
    if form == "list":
        return [first, second]
    return {1: first, 2: second}


def _sgfr_valid(embeddings):
    """True / False for concrete inputs (non-finite is refused at the boundary)."""
    if not isinstance(embeddings, dict) or set(embeddings) != {1, 2}:
        return False
    a, b = embeddings[1], embeddings[2]
    return (_floats_ok(a, b) and np.ndim(a) == 4 and np.shape(a)[1:] == (2, 2, 3)
            and np.shape(a)[0] == np.shape(b)[0] and _finite(a) and _finite(b))


@fuzzes("jad.methods.sgfr.score", "jad.methods.sgfr.loss_context",
        "jad.methods.sgfr.feature_loss", "jad.methods.sgfr.representation_error")
@settings(max_examples=budget(1.0))
@given(kind=st.sampled_from(("sgfr",) * 5 + ("padim", "none")),
       embeddings=sgfr_embeddings())
def test_sgfr_score(kind, embeddings):
    label = "sgfr.score"
    st_ = _sgfr_state() if kind == "sgfr" else _patchcore_state(kind)
    out = attempt(label, sgfr.score, st_, embeddings)
    valid = kind == "sgfr" and _sgfr_valid(embeddings)
    if valid and 0 in np.shape(embeddings[1]):
        valid = None  # an empty batch: empty maps or a refusal
    if not refuse_or_succeed(label, out, valid):
        return
    context = attempt("sgfr.loss_context", sgfr.loss_context, st_, embeddings)
    loss = attempt("sgfr.feature_loss", sgfr.feature_loss, st_, embeddings, context)
    error = attempt("sgfr.representation_error", sgfr.representation_error, st_,
                    embeddings)
    if not valid:
        return
    check_result(label, out[1], list(embeddings.values()))
    ref = sgfr_maps_np(st_.banks, embeddings, (1,), 2, 3, 2)
    close(out[1], ref[1], dtype=_tolerance_dtype(embeddings[1]), label=label,
          scale=10.0)
    # F2PAD's loss with M_S from the same images is the score; eq. 9's
    # reconstruction error is the mean of the L2 map.
    np.testing.assert_allclose(loss[1], out[1], rtol=1e-6, atol=1e-6)
    close(error.reconstruction, np.mean(ref[1], axis=(1, 2)),
          dtype=_tolerance_dtype(embeddings[1]), label="representation_error",
          scale=10.0)
    assert np.all(np.isfinite(error.matching)) and np.all(error.matching >= 0)


def test_sgfr_traced_nan_gives_nan_maps_for_that_image_only():
    state = _sgfr_state()
    test = {lv: _train((2, *shape), seed=5) for lv, shape in SG_SHAPES.items()}
    test[2][1, 0, 0, 0] = np.nan  # the sampling level of image 1
    maps = jax.jit(lambda e: sgfr.score(state, e))(test)[1]
    assert np.all(np.isfinite(maps[0])) and np.all(np.isnan(maps[1]))
    with pytest.raises(ValueError, match="sgfr.score: embeddings.2. contains NaN"):
        sgfr.score(state, test)


@fuzzes("jad.methods.sgfr.fit", "jad.methods.sgfr.embed")
@settings(max_examples=budget(0.75))
@given(
    config=st.sampled_from(("sgfr",) * 4 + ("padim",)),
    first=arrays(((6, 2, 2, 3), (6, 2, 2, 3), (3, 2, 2, 3), (5, 2, 2, 3), (6, 2, 3),
                  (0, 2, 2, 3))),
)
def test_sgfr_fit(config, first):
    label = "sgfr.fit"
    cfg = SG_CONFIG if config == "sgfr" else PD_CONFIG
    n = np.shape(first)[0] if np.ndim(first) else 0
    embeddings = {1: first, 2: _train((6, 1, 1, 4), seed=2)}
    out = attempt(label, sgfr.fit, cfg, embeddings)
    valid = (config == "sgfr" and _floats_ok(first) and np.ndim(first) == 4
             and n == 6 and _finite(first))
    if not refuse_or_succeed(label, out, valid):
        return
    for lv in (1, 2):
        flat = np.asarray(embeddings[lv], np.float64).reshape(6, -1)
        close(out.grams[lv], flat @ flat.T, dtype=_tolerance_dtype(first),
              label=label, scale=10.0)
    emb = attempt("sgfr.embed", sgfr.embed, cfg, {0: first, **embeddings})
    assert not isinstance(emb, Refused) and set(emb) == {1, 2}
    with pytest.raises(ValueError, match="sgfr.embed"):
        sgfr.embed(cfg, {1: first})


# ================================================================= jad.methods.psdl

# One level, m = 4 channels (a 2 x 2 DCT start), OMP sparsity 2 and two K-SVD
# sweeps on a 2 x 2 grid: PSDL needs N >= m = 4 training images.
PS_CONFIG = psdl.PSDLConfig(
    levels=(1,), max_channels=4, n_iter=2, sparsity=0.5, sigma=1.0
)
PS_VARIANTS = {
    "psdl": PS_CONFIG,
    "classes": dataclasses.replace(PS_CONFIG, classes=("a", "b")),
    "off": dataclasses.replace(PS_CONFIG, normalize=False),
}
PS_GRID = (2, 2, 4)  # (h, w, m) of the fuzzed signals
PS_S = 2  # OMP sparsity: round(0.5 * 4)


def _psdl_signals(n, seed):
    return _train((n, *PS_GRID), seed=seed)


def _psdl_state(kind="psdl"):
    """States fitted (uncalibrated) on one training set; ``classes``: two classes;
    ``off``: ``normalize=False``; ``padim`` and ``none``: not a PSDLState."""
    if kind in ("padim", "none"):
        return _patchcore_state(kind)
    name = f"psdl.{kind}"
    if name not in _STATES:  # one program: the fit's jit key ignores these fields
        _STATES[name] = psdl.fit(PS_VARIANTS[kind], {1: _psdl_signals(6, 11)})
    return _STATES[name]


def _psdl_test():
    """Fixed (2, 2, 2, 4) test signals (the shape the fuzzed scores compile for)."""
    return {1: _psdl_signals(2, 5)}


PS_SHAPES = ((2, 2, 2, 4),) * 4 + (
    (1, 2, 2, 4),
    (2, 2, 4),
    (2, 2, 2, 3),
    (2, 2, 3, 4),
    (0, 2, 2, 4),
)
PS_CONTEXTS = ("own",) * 5 + ("float", "batch", "missing", "none")


@st.composite
def psdl_embeddings(draw):
    """dict {1: (B, 2, 2, 4)} with faults: shapes, dtypes, values, another group,
    not a dict."""
    x = draw(arrays(PS_SHAPES))
    form = draw(st.sampled_from(("dict",) * 6 + ("group", "list", "array")))
    return {"dict": {1: x}, "group": {2: x}, "list": [x], "array": x}[form]


def _psdl_valid(embeddings) -> bool:
    if not isinstance(embeddings, dict) or 1 not in embeddings:
        return False
    x = embeddings[1]
    return (_floats_ok(x) and np.ndim(x) == 4 and np.shape(x)[1:] == PS_GRID
            and _finite(x))


def ref_psdl_statistics(state, x):
    """PSDL's per-location statistics in float64 from the state's dictionaries.

    scikit-learn's OMP codes (``orthogonal_mp(precompute=True)``, what the authors'
    code calls) give (‖x‖₁, ‖D x - s‖²) and their Mahalanobis distance ``‖W (f -
    mean)‖`` (W the state's inverse Cholesky factor). Returns (B, h, w, 2)
    statistics, (B, h, w) distances and a (B, h, w) mask of the signals whose
    greedy OMP path has no near tie (float32 may break a tie the other way).
    """
    dictionaries = np.asarray(state.dictionaries[1], np.float64)
    x = np.asarray(x).astype(np.float32).astype(np.float64)  # what psdl computes on
    b, h, w, m = x.shape
    feats = np.zeros((b, h, w, 2))
    clear = np.ones((b, h, w), bool)

    def codes(dictionary, y, s):
        coef = orthogonal_mp(dictionary, y, n_nonzero_coefs=s, precompute=True)
        return np.asarray(coef).reshape(m, b)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ended prematurely" for zero signals
        for i in range(h):
            for j in range(w):
                dictionary, y = dictionaries[i, j], x[:, i, j].T  # (m, m), (m, B)
                code = codes(dictionary, y, PS_S)
                resid = y - dictionary @ code
                feats[:, i, j, 0] = np.abs(code).sum(0)
                feats[:, i, j, 1] = (resid**2).sum(0)
                size = np.linalg.norm(y, axis=0)
                for step in range(PS_S):  # the winner of each step must be clear
                    r = y - dictionary @ codes(dictionary, y, step) if step else y
                    corr = np.sort(np.abs(dictionary.T @ r), axis=0)
                    tie = (corr[-1] - corr[-2] <= 1e-4 * size) & (
                        np.linalg.norm(r, axis=0) > 1e-4 * size)
                    clear[:, i, j] &= ~tie
    delta = feats - np.asarray(state.mean[1], np.float64)
    whitening = np.asarray(state.whitening[1], np.float64)
    dist = np.linalg.norm(np.einsum("hwij,bhwj->bhwi", whitening, delta), axis=-1)
    return feats, dist, clear


def _psdl_close(actual, expected, label):
    """float32 agreement, the tolerance scaled by the values' magnitude."""
    expected = np.asarray(expected, np.float64)
    big = float(np.max(np.abs(expected), initial=1.0))
    close(actual, expected, label=label, scale=10.0 * big)


@fuzzes("jad.methods.psdl.score", "jad.methods.psdl.code_statistics",
        "jad.methods.psdl.loss_context", "jad.methods.psdl.feature_loss")
@settings(max_examples=budget(1.0))
@given(kind=st.sampled_from(("psdl",) * 5 + ("padim", "none")),
       embeddings=psdl_embeddings(), context=st.sampled_from(PS_CONTEXTS))
@example(kind="psdl", embeddings={1: np.zeros((0, 2, 2, 4), np.float32)},
         context="own")
@example(kind="psdl", embeddings=_psdl_test(), context="missing")
@example(kind="psdl", embeddings=_psdl_test(), context="none")
def test_psdl_score(kind, embeddings, context):
    label = "psdl.score"
    st_ = _psdl_state(kind)
    out = attempt(label, psdl.score, st_, embeddings)
    valid = kind == "psdl" and _psdl_valid(embeddings)
    if valid and np.shape(embeddings[1])[0] == 0:
        valid = None  # an empty batch: empty maps or a refusal
    stats = attempt("psdl.code_statistics", psdl.code_statistics, st_, embeddings)
    ctx = attempt("psdl.loss_context", psdl.loss_context, st_, embeddings)
    for name, result in (("code_statistics", stats), ("loss_context", ctx)):
        assert isinstance(result, Refused) == isinstance(out, Refused), (
            f"psdl.{name} and psdl.score disagree on {embeddings!r}: {result!r}")
    if not refuse_or_succeed(label, out, valid):
        return
    b = np.shape(embeddings[1])[0]
    support = np.asarray(ctx[1])
    assert support.dtype == np.int32 and support.shape == (b, 2, 2, PS_S)
    assert np.all((support >= -1) & (support < PS_GRID[-1]))
    for row in support.reshape(-1, PS_S):
        chosen = row[row >= 0]
        assert len(set(chosen.tolist())) == len(chosen), support
    arg = {
        "own": ctx,
        "float": {1: support.astype(np.float32)},
        "batch": {1: np.full((b + 1, 2, 2, PS_S), -1, np.int32)},
        "missing": {},
        "none": None,
    }[context]
    loss = attempt("psdl.feature_loss", psdl.feature_loss, st_, embeddings, arg)
    refuse_or_succeed("psdl.feature_loss", loss,
                      valid if context == "own" else False)
    if not valid:
        return
    inputs = [embeddings[1]]
    check_result(label, out, inputs)
    check_result("psdl.code_statistics", stats, inputs)
    feats, dist, clear = ref_psdl_statistics(st_, embeddings[1])
    _psdl_close(np.asarray(stats[1])[clear], feats[clear], "psdl.code_statistics")
    _psdl_close(np.asarray(out)[clear], dist[clear], label)
    if context == "own":
        # Least squares on OMP's own supports is OMP's code: the loss is the score.
        check_result("psdl.feature_loss", loss, inputs)
        _psdl_close(loss, out, "psdl.feature_loss")


def test_psdl_traced_nan_gives_nan_at_that_location_only():
    state = _psdl_state()
    test = _psdl_test()
    test[1][1, 0, 1, 2] = np.nan
    test[1][0, 1, 0, 3] = np.inf
    poisoned = np.zeros((2, 2, 2), bool)
    poisoned[1, 0, 1] = poisoned[0, 1, 0] = True
    maps = np.asarray(jax.jit(lambda e: psdl.score(state, e))(test))
    assert not np.any(np.isfinite(maps[poisoned]))
    assert np.all(np.isfinite(maps[~poisoned]))
    stats = np.asarray(jax.jit(lambda e: psdl.code_statistics(state, e))(test)[1])
    assert not np.any(np.all(np.isfinite(stats[poisoned]), axis=-1))
    assert np.all(np.isfinite(stats[~poisoned]))
    with pytest.raises(ValueError,
                       match=r"psdl.score: embeddings\[1\] contains NaN"):
        psdl.score(state, test)


PS_TRAIN_SHAPES = ((6, 2, 2, 4),) * 3 + (
    (4, 2, 2, 4),
    (3, 2, 2, 4),
    (1, 2, 2, 1),
    (6, 2, 4),
    (6, 0, 2, 4),
)


@fuzzes("jad.methods.psdl.fit")
@settings(max_examples=budget(1.0))
@given(
    config=st.sampled_from(("psdl",) * 5 + ("padim",)),
    shape=st.sampled_from(PS_TRAIN_SHAPES),
    dtype=st.sampled_from(SCORE_DTYPES),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 7),
    form=st.sampled_from(("dict",) * 6 + ("list", "empty")),
)
@example(config="psdl", shape=(3, 2, 2, 4), dtype="float32", kind="normal", seed=0,
         form="dict")
@example(config="psdl", shape=(4, 2, 2, 4), dtype="float32", kind="normal", seed=1,
         form="dict")  # N = m: the fewest images accepted
def test_psdl_fit(config, shape, dtype, kind, seed, form):
    label = "psdl.fit"
    train = make_array(shape, dtype, kind, seed)
    embeddings = {"dict": {1: train}, "list": [train], "empty": {}}[form]
    cfg = PS_CONFIG if config == "psdl" else PD_CONFIG
    out = attempt(label, psdl.fit, cfg, embeddings)
    well_formed = (config == "psdl" and form == "dict" and _floats_ok(train)
                   and len(shape) == 4 and min(shape[1:]) >= 1)
    n, m = (shape[0], shape[-1]) if len(shape) == 4 else (0, 0)
    if well_formed and n < max(m, 2):
        # Refused before any work, saying how many images it needs.
        assert isinstance(out, Refused), f"{label}: accepted N = {n} < m = {m}"
        message = str(out.error)
        assert f"at least {max(m, 2)} training images" in message, message
        assert f"got {n}" in message, message
    valid = well_formed and n >= max(m, 2) and _finite(train)
    if not refuse_or_succeed(label, out, valid):
        return
    check_result(label, [out.dictionaries, out.grams, out.mean, out.whitening,
                         out.train_error], [train])
    assert out.dictionaries[1].shape == (2, 2, 4, 4)
    assert out.train_error[1].shape == (PS_CONFIG.n_iter, 2, 2)
    d = np.asarray(out.dictionaries[1], np.float64)
    np.testing.assert_allclose(out.grams[1], np.swapaxes(d, -1, -2) @ d,
                               atol=1e-5, err_msg=label)
    if kind not in ("normal", "large"):
        return  # ties (of zeros, rounded values) may go either way
    # The authors' code (float64), on the values psdl computes on.
    signals = np.asarray(train).astype(np.float32).astype(np.float64)
    fitted = psdl_reference.fit_official(signals, n_iter=PS_CONFIG.n_iter,
                                         sparsity=PS_CONFIG.sparsity)
    np.testing.assert_allclose(d, fitted["dictionary"], atol=1e-4, err_msg=label)
    _psdl_close(out.mean[1], fitted["mean"], f"{label}: mean")
    whitening = np.asarray(out.whitening[1], np.float64)
    cov = np.linalg.inv(np.swapaxes(whitening, -1, -2) @ whitening)
    _psdl_close(cov, fitted["cov"], f"{label}: covariance")


PS_STACK = psdl.PSDLConfig(levels=(1, 2), channels="all", sigma=1.0)
PS_LEVEL1 = ((2, 4, 4, 3),) * 3 + (
    (2, 5, 5, 3),
    (2, 2, 2, 3),
    (2, 3, 3, 3),
    (1, 4, 4, 3),
    (2, 4, 4),
    (2, 4, 4, 0),
)


def ref_psdl_embed(config, features):
    """The code's [level 2, avgpool(level 1)] (floored windows) or the first m
    channels of one level (float64)."""
    first = np.asarray(features[1]).astype(np.float64)
    if config.levels == (1,):
        m = math.isqrt(min(first.shape[-1], config.max_channels)) ** 2
        return {1: first[..., :m]}
    coarse = np.asarray(features[2], np.float64)
    f = max(1, first.shape[1] // coarse.shape[1])
    b, h, w, c = first.shape
    hh, ww = h // f, w // f
    pooled = first[:, : hh * f, : ww * f].reshape(b, hh, f, ww, f, c).mean((2, 4))
    return {2: np.concatenate([coarse, pooled], axis=-1)}


@fuzzes("jad.methods.psdl.embed")
@settings(max_examples=budget(1.0))
@given(
    config=st.sampled_from(("stack", "stack", "stack", "one", "padim")),
    first=arrays(PS_LEVEL1),
    form=st.sampled_from(("dict",) * 5 + ("missing", "list")),
)
@example(config="padim", first=make_array((2, 4, 4, 3), "float32"), form="dict")
def test_psdl_embed(config, first, form):
    label = "psdl.embed"
    cfg = {
        "stack": PS_STACK,
        "one": PS_CONFIG,
        "padim": padim.PaDiMConfig(levels=(1, 2), n_features=5, sigma=1.0),
    }[config]
    second = _train((2, 2, 2, 4), seed=3)
    features = {
        "dict": {1: first, 2: second},
        "missing": {2: second},
        "list": [first, second],
    }[form]
    out = attempt(label, psdl.embed, cfg, features)
    shape = np.shape(first)
    valid = (config != "padim" and form == "dict" and _floats_ok(first)
             and len(shape) == 4 and min(shape[1:]) >= 1)
    if valid and config == "stack":  # one batch; level 1 pools onto the 2 x 2 grid
        f = max(1, shape[1] // 2)
        valid = shape[0] == 2 and (shape[1] // f, shape[2] // f) == (2, 2)
    if not refuse_or_succeed(label, out, valid):
        return
    ref = ref_psdl_embed(cfg, features)
    assert set(out) == set(ref), (label, set(out))
    for group, want in ref.items():
        finite = want[np.isfinite(want)]
        big = float(np.max(np.abs(finite), initial=1.0))
        close(out[group], want, dtype=_lowest_precision(first), label=label,
              scale=10.0 * big)


CAL_SHAPES = ((2, 4, 4),) * 4 + ((1, 4, 4), (4, 4), (), (0, 4, 4))


def _calibration_valid(maps):
    """True / False / None (either) for maps given to a calibration."""
    if 0 in np.shape(maps) or (_is_array_like(maps)
                               and np.asarray(maps).dtype.kind == "c"):
        return False  # no min or max of nothing; an imaginary part to drop
    if _floats_ok(maps) and np.ndim(maps) == 3 and _finite(maps):
        return True
    return None  # integers, other ranks, NaN: refused, or cast, reduced, propagated


def _psdl_raw_maps():
    """The uncalibrated state's (2, 2, 2) maps of the fixed test signals."""
    if "psdl.raw" not in _STATES:
        maps = psdl.score(_psdl_state("psdl"), _psdl_test())
        _STATES["psdl.raw"] = np.asarray(maps, np.float64)
    return _STATES["psdl.raw"]


def _check_normalised(label, state, low, high):
    """Scores of the fixed test signals with ``state``: finite and the raw maps
    normalised by (low, high). Returns them."""
    maps = psdl.score(state, _psdl_test())
    check_result(label, maps, [])
    _psdl_close(maps, (_psdl_raw_maps() - low) / (high - low), label)
    return maps


@fuzzes("jad.methods.psdl.calibrate")
@settings(max_examples=budget(1.0))
@given(kind=st.sampled_from(("psdl",) * 4 + ("classes", "off", "padim")),
       maps=arrays(CAL_SHAPES))
@example(kind="psdl", maps=np.full((2, 4, 4), 3.0, np.float32))
@example(kind="psdl", maps=np.zeros((0, 4, 4), np.float32))
def test_psdl_calibrate(kind, maps):
    label = "psdl.calibrate"
    st_ = _psdl_state(kind)
    out = attempt(label, psdl.calibrate, st_, maps)
    valid = {"padim": False, "off": None}.get(kind, _calibration_valid(maps))
    if not refuse_or_succeed(label, out, valid):
        return
    if kind == "off":
        assert out is st_, f"{label}: normalize=False must leave the state as is"
        return
    check_result(label, (out.norm_low, out.norm_high), [maps])
    if not _finite(maps):
        return
    values = np.asarray(maps).astype(np.float32)
    low, high = float(values.min()), float(values.max())
    np.testing.assert_array_equal(out.norm_low, np.full(out.norm_low.shape, low))
    assert np.all(np.asarray(out.norm_high) >= high), (label, out.norm_high, high)
    maps = _check_normalised(f"{label}: scores", out, out.norm_low[0],
                             out.norm_high[0])
    # Maps scored with a calibrated state are de-normalised before the min-max.
    raw = _psdl_raw_maps()
    again = psdl.calibrate(out, maps)
    _psdl_close(again.norm_low, np.full(again.norm_low.shape, raw.min()), label)
    _psdl_close(again.norm_high, np.full(again.norm_high.shape, raw.max()), label)


PS_OTHER_MAPS = _train((2, 4, 4), seed=9) * 3 + 5  # another class's training maps


@fuzzes("jad.methods.psdl.calibrate_classes", "jad.methods.psdl.select_class")
@settings(max_examples=budget(1.0))
@given(
    kind=st.sampled_from(("classes",) * 4 + ("psdl", "off", "padim")),
    names=st.sampled_from((("a",), ("a", "b"), ("b", "a"), ("a", "c"), (3,), ())),
    maps=arrays(CAL_SHAPES),
    form=st.sampled_from(("dict",) * 5 + ("list",)),
    pick=st.sampled_from(("a", "b", "a", "b", "c", 0, None)),
)
@example(kind="classes", names=("a",), maps=np.ones((2, 4, 4), np.float32),
         form="list", pick="a")
def test_psdl_calibrate_classes(kind, names, maps, form, pick):
    label = "psdl.calibrate_classes"
    st_ = _psdl_state(kind)
    by_class = {name: maps if i == 0 else PS_OTHER_MAPS
                for i, name in enumerate(names)}
    arg = by_class if form == "dict" else list(by_class.items())
    out = attempt(label, psdl.calibrate_classes, st_, arg)
    if kind != "classes" or form == "list":
        valid = kind == "psdl" and not names and form == "dict"
    elif any(name not in ("a", "b") for name in names):
        valid = False
    else:
        valid = _calibration_valid(maps) if names else True
    refuse_or_succeed(label, out, valid)
    calibrated = valid is True and not isinstance(out, Refused)
    if calibrated:
        check_result(label, (out.norm_low, out.norm_high), list(by_class.values()))
        for i, name in enumerate(("a", "b")):
            if name in by_class:
                values = np.asarray(by_class[name]).astype(np.float32)
                assert float(out.norm_low[i]) == values.min(), (label, name)
                assert float(out.norm_high[i]) >= values.max(), (label, name)
            else:  # untouched
                assert (out.norm_low[i], out.norm_high[i]) == (0, 1), (label, name)
    base = out if calibrated else st_
    chosen = attempt("psdl.select_class", psdl.select_class, base, pick)
    if not refuse_or_succeed("psdl.select_class", chosen,
                             kind == "classes" and pick in ("a", "b")):
        return
    index = ("a", "b").index(pick)
    assert int(chosen.active) == index
    if calibrated and _finite(maps):
        _check_normalised(f"{label}: class {pick}", chosen,
                          chosen.norm_low[index], chosen.norm_high[index])
