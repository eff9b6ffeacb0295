"""The method protocol shared by every detector in jad (protocol v2).

A method is a set of pure functions around a frozen config and a state pytree,
registered as a :class:`Method` (:func:`register`); the pipeline, the CLI and the
demo then run it with no special case. Required:

* ``fit(config, embeddings, *, key, progress=False, **inputs) -> state``: from the
  training embeddings, any pytree of arrays with leading axis N (one (N, h, w, D)
  array, or a dict of per-level arrays); ``progress`` shows a bar for long fits
  (which stop between steps on Ctrl-C). ``inputs`` are the extra arrays named in
  ``Method.fit_inputs`` (PAE's textures: methods never read files), plus
  ``checkpoint_dir`` for a method with ``trains=True`` (it checkpoints there and
  resumes). States are ``flax.struct`` dataclasses: pytrees (arrays, nested dicts of
  per-level arrays, Flax parameter trees, optimiser states; jit, vmap, orbax) with
  the config as static metadata.
* ``score(state, embeddings) -> maps``: one (B, h, w) map, or a tuple/dict of
  per-level maps at their own resolutions, differentiable w.r.t. the embeddings
  (hence, through the backbone, w.r.t. the image).
* ``init(config, embeddings, *, num_images, key) -> state``: a state of the shapes
  ``fit`` gives for ``num_images`` training images (values irrelevant): saved
  states are restored into ``jax.eval_shape`` of it, which lists anything missing,
  extra or misshaped.

Optional:

* ``embed(config, inputs) -> embeddings``: backbone features (a dict level ->
  (B, h, w, C)) or, for ``inputs="images"``, the images, to the representation the
  method models (any pytree; the identity on images when ``None``).
* ``inputs``: ``"features"`` (default: the detector runs a pretrained backbone at
  ``config.levels``) or ``"images"`` (no backbone, no weights: PAE).
* ``presets``: name -> config, the first one the default (:func:`make_config`).
* ``image_score(state, embeddings, patch_map, *, maps) -> (B,)``: the method's own
  image score, from the patch maps (official PatchCore: their maximum before
  upsampling) or the final (upsampled, combined, blurred) ``maps`` (PAE: their
  sum); default: the maximum of the final map (:func:`max_image_score`).
* ``fit_batches(config, batches, *, key, progress=False) -> state``: the same fit
  from an iterable of embedding batches, in memory independent of their number,
  for methods whose statistics are sums (PaDiM). The pipeline then streams.
* ``loss_context(state, embeddings0) -> context`` and ``feature_loss(state,
  embeddings, context) -> (B, h, w)`` (or per-level maps): F2PAD's feature loss
  of a refined image, with what it fixes from the initial image (PatchCore, F2PAD
  eq. 5: the candidate bank entries; PaDiM, F2PAD eq. 7: nothing). Default: no
  context and ``score``.
* ``min_images(config, channels) -> int``: the fewest training images the
  method can fit with backbone levels of ``channels`` (level -> C); ``jad fit``
  checks it before extracting any feature (PSDL: N >= its dictionary size).
* ``calibrate(state, train_maps) -> state``: constants measured on the training
  images' final maps (N, H, W) (a per-class normalisation, CFLOW-AD's maximum),
  stored in the state and applied by ``score``. They must be affine in the map
  (upsampling and blur commute with them). Test-set normalisation is never the
  default.

Every config carries the shared post-processing fields, validated by
:func:`check_postprocess`: ``upsample`` (``"bilinear"`` | ``"nearest"`` |
``"bicubic"``), ``align_corners`` (torch's flag; CFLOW-AD), ``combine`` (per-level
maps after upsampling: ``"mean"`` as SPADE and SGFR, ``"sum"`` as CFLOW-AD,
``"max"``), ``sigma`` (Gaussian blur, 4 in every seed; 0 disables it) and
``blur_mode`` (``"symmetric"`` = scipy's default ``reflect``, ``"reflect"`` =
torch's); methods that read features also have ``levels`` (backbone levels).
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks, ops

__all__ = [
    "Method",
    "check_config_fields",
    "check_instance",
    "check_levels",
    "check_postprocess",
    "get_method",
    "list_methods",
    "make_config",
    "max_image_score",
    "postprocess",
    "postprocess_config",
    "register",
    "unregister",
]

INPUTS = ("features", "images")
UPSAMPLE_METHODS = ("bilinear", "nearest", "bicubic")
BLUR_MODES = ("symmetric", "reflect", "edge", "constant", "wrap")
COMBINE_RULES = ("mean", "sum", "max")


class Method(NamedTuple):
    """A registered method: its name, config and state types, and pure functions.

    Required: ``name``, ``config_type``, ``state_type``, ``fit``, ``score`` and
    ``init``; the rest are optional hooks (see the module docstring for each
    signature). ``presets`` maps a preset's name to its config; the first one is
    the default (equal to ``config_type()``).
    """

    name: str
    config_type: type
    state_type: type
    fit: Callable[..., Any]
    score: Callable[[Any, Any], Any]
    init: Callable[..., Any]
    embed: Callable[[Any, Any], Any] | None = None
    inputs: str = "features"
    presets: Mapping[str, Any] = types.MappingProxyType({})
    image_score: Callable[..., jax.Array] | None = None
    fit_batches: Callable[..., Any] | None = None
    loss_context: Callable[[Any, Any], Any] | None = None
    feature_loss: Callable[[Any, Any, Any], jax.Array] | None = None
    calibrate: Callable[[Any, Any], Any] | None = None
    min_images: Callable[[Any, Any], int] | None = None
    fit_inputs: tuple[str, ...] = ()
    trains: bool = False


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds ``method`` to the registry used by the pipeline and the CLI.

    Args:
      method: the :class:`Method` to register under ``method.name`` (a name
        already registered is replaced: a module reloaded, or a test's method).

    Returns:
      ``method`` unchanged.

    Raises:
      ValueError: ``inputs`` not ``"features"`` or ``"images"``, a features
        method without ``embed`` or a ``levels`` config field, a preset that is
        not a ``config_type``, or presets whose first one is not the default config.
      TypeError: a required function missing.
    """
    fn = "register"
    _checks.check_choice(fn, "inputs", method.inputs, INPUTS)
    for name in ("fit", "score", "init"):
        if not callable(getattr(method, name)):
            raise TypeError(f"{fn}: method {method.name!r} needs a callable {name}.")
    fields = {f.name for f in dataclasses.fields(method.config_type)}
    if method.inputs == "features" and not (
        callable(method.embed) and "levels" in fields
    ):
        raise ValueError(
            f"{fn}: method {method.name!r} reads backbone features: it needs an "
            "embed function and a config field levels (the backbone levels)."
        )
    for name, config in method.presets.items():
        if not isinstance(config, method.config_type):
            raise ValueError(
                f"{fn}: preset {name!r} of {method.name!r} must be a "
                f"{method.config_type.__name__}; got {type(config).__name__}."
            )
    if method.presets and next(iter(method.presets.values())) != method.config_type():
        raise ValueError(
            f"{fn}: the first preset of {method.name!r} must be its default config."
        )
    method = method._replace(presets=types.MappingProxyType(dict(method.presets)))
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Removes a registered method (a test's toy method, for example).

    Args:
      name: a name from :func:`list_methods`.

    Returns:
      None.
    """
    get_method(name)
    del _REGISTRY[name]


def make_config(method: str, preset: str | None = None, /, **overrides):
    """A method's config: a named preset with some fields replaced.

    Args:
      method: a name from :func:`list_methods`.
      preset: one of the method's presets (``get_method(method).presets``);
        ``None``: its default config. Positional-only, so that a config field
        of the same name (PatchCore's ``preset``, which selects the aggregation
        only) can be overridden.
      **overrides: config fields to change (validated by the config class).

    Returns:
      The config.

    Raises:
      ValueError: unknown method or preset (the message lists the valid ones),
        or a field value the config refuses. TypeError: an unknown field name.

    Example:
      >>> make_config("patchcore", "anomalib", coreset_ratio=0.01).num_neighbors
      9
    """
    spec = get_method(method)
    if preset is None:
        config = spec.config_type()
    elif preset in spec.presets:
        config = spec.presets[preset]
    else:
        valid = ", ".join(spec.presets) or "none"
        raise ValueError(
            f"unknown preset {preset!r} for method {method!r}; its presets are {valid}."
        )
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(
            f"{spec.config_type.__name__} has no field(s) {', '.join(unknown)}; "
            f"its fields are {', '.join(sorted(fields))}."
        )
    return dataclasses.replace(config, **overrides) if overrides else config


def list_methods() -> tuple[str, ...]:
    """Names of the registered methods.

    Returns:
      The names :func:`get_method` accepts, sorted.
    """
    return tuple(sorted(_REGISTRY))


def get_method(name: str) -> Method:
    """The registered method called ``name``.

    Args:
      name: a name from :func:`list_methods`.

    Returns:
      The :class:`Method`.

    Raises:
      ValueError: unknown name (the message lists the valid ones).
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown method {name!r}; valid methods are {', '.join(list_methods())}."
        )
    return _REGISTRY[name]


def check_instance(fn: str, name: str, value, expected: type) -> None:
    """Raises ``TypeError`` unless ``value`` is an instance of ``expected``.

    For example a state or config that belongs to another method.

    Args:
      fn: the caller, for the message.
      name: the argument's name, for the message.
      value: the argument.
      expected: the class it must be an instance of.

    Returns:
      None.
    """
    if not isinstance(value, expected):
        raise TypeError(
            f"{fn}: {name} must be a {expected.__name__}; got {type(value).__name__}."
        )


def check_config_fields(fn: str, config, *, ints=(), floats=(), bools=()) -> None:
    """Type checks of a config's fields (at construction): ints, numbers, bools.

    ``levels`` (when the config has it) must be a sequence of ints (not a string).
    Values are not converted, so a string never reaches a method's ``fit``.

    Args:
      fn: the config's name, for the message.
      config: the config to check.
      ints: names of fields that must be ints.
      floats: names of fields that must be real numbers.
      bools: names of fields that must be bools.

    Returns:
      None; raises ``TypeError`` naming the field otherwise.
    """
    levels = getattr(config, "levels", ())  # methods that read images have none
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise TypeError(f"{fn}: levels must be a sequence of ints; got {levels!r}.")
    for level in levels:
        _checks.check_int(fn, "levels", level, low=0)
    for name in ints:
        _checks.check_int(fn, name, getattr(config, name))
    for name in floats:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"{fn}: {name} must be a number; got {value!r}.")
    for name in bools:
        if not isinstance(getattr(config, name), (bool, np.bool_)):
            raise TypeError(
                f"{fn}: {name} must be a bool; got {getattr(config, name)!r}."
            )


def check_levels(fn: str, config, features) -> None:
    """Raises unless ``features`` holds every level of ``config``, well formed.

    Each level of ``config.levels`` must be a floating (B, h, w, C) array with
    h, w, C >= 1 and the same B (0 allowed) as the other levels. Shapes and dtypes
    only, so the check also runs on tracers (under a caller's ``jit``).

    Args:
      fn: the caller, for the message.
      config: a method config with ``levels``.
      features: dict level -> (B, h, w, C) from the backbone.

    Returns:
      None.

    Raises:
      TypeError: ``features`` not a dict, a level not a floating array.
      ValueError: a missing level, a level not (B, h, w, C) with h, w, C >= 1, or
        levels of different batch sizes.
    """
    if not isinstance(features, dict):
        raise TypeError(
            f"{fn}: features must be a dict level -> (B, h, w, C); got "
            f"{type(features).__name__}."
        )
    missing = [level for level in config.levels if level not in features]
    if missing:
        raise ValueError(
            f"{fn}: features lack level(s) {', '.join(map(str, missing))} of "
            f"config.levels {tuple(config.levels)}; got levels "
            f"{', '.join(map(str, sorted(features))) or 'none'}."
        )
    batch = None
    for level in config.levels:
        f, name = features[level], f"features[{level}]"
        dtype = None
        if not (f is None or isinstance(f, (str, bytes))):
            try:
                dtype = jnp.result_type(f)
            except TypeError:
                pass
        if dtype is None:
            raise TypeError(
                f"{fn}: {name} must be a floating (B, h, w, C) array; got "
                f"{type(f).__name__}."
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{fn}: {name} must have a floating dtype; got {dtype}.")
        shape = tuple(np.shape(f))
        if len(shape) != 4 or min(shape[1:]) < 1:
            raise ValueError(
                f"{fn}: {name} must be (B, h, w, C) with h, w, C >= 1; got shape "
                f"{shape}."
            )
        if batch is None:
            batch = (level, shape[0])
        elif shape[0] != batch[1]:
            raise ValueError(
                f"{fn}: every level of features must hold the same batch; "
                f"features[{batch[0]}] has B = {batch[1]}, {name} has B = {shape[0]}."
            )


def check_postprocess(fn: str, config) -> None:
    """Validates a config's shared post-processing fields (at construction).

    Args:
      fn: the config's name, for the message.
      config: a method config with ``upsample``, ``sigma``, ``blur_mode``,
        ``combine`` and ``align_corners`` (and ``levels`` if it reads features).

    Returns:
      None; raises ``ValueError`` (a value) or ``TypeError`` (a type) naming the
      field otherwise.
    """
    _checks.check_choice(fn, "upsample", config.upsample, UPSAMPLE_METHODS)
    _checks.check_choice(fn, "blur_mode", config.blur_mode, BLUR_MODES)
    _checks.check_choice(fn, "combine", config.combine, COMBINE_RULES)
    check_config_fields(fn, config, floats=("sigma",), bools=("align_corners",))
    if not float(config.sigma) >= 0:
        raise ValueError(f"{fn}: sigma must be >= 0; got {config.sigma}.")
    if config.align_corners and config.upsample == "nearest":
        raise ValueError(
            f"{fn}: align_corners applies to bilinear and bicubic upsampling, not "
            "nearest."
        )
    if hasattr(config, "levels") and not config.levels:
        raise ValueError(f"{fn}: levels must not be empty.")


def postprocess(
    patch_map,
    image_size: tuple[int, int],
    *,
    upsample: str = "bilinear",
    sigma: float = 4.0,
    blur_mode: str = "symmetric",
    combine: str = "mean",
    align_corners: bool = False,
) -> jax.Array:
    """Shared post-processing: upsample each map to the image size, combine, blur.

    A method's ``score`` returns one map or several at their own resolutions
    (a tuple, list or dict of per-level maps: SGFR and SPADE score levels 2 and 3).
    Each is upsampled once, straight to the image size (upsampling a coarse map to
    a finer level's grid and then to the image is not the same), the upsampled
    maps are combined by ``combine``, then blurred once.

    Args:
      patch_map: (B, h, w) float anomaly map at feature resolution (any leading
        axes: (..., h, w)), or a pytree (tuple, list, dict) of such maps of
        possibly different (h, w) and the same leading axes.
      image_size: (H, W) of the input images (static ints >= 1).
      upsample: ``"bilinear"`` (official PatchCore, PaDiM, SGFR), ``"nearest"``
        (anomalib PatchCore) or ``"bicubic"`` (PSDL).
      sigma: blur standard deviation in pixels, a concrete number >= 0 (0: no
        blur). Radius int(4 sigma + 0.5).
      blur_mode: border handling of the blur (``"symmetric"`` is scipy's default
        ``reflect``; ``"reflect"`` is torch's).
      combine: how per-level maps are combined after upsampling: ``"mean"``
        (SPADE, SGFR), ``"sum"`` (CFLOW-AD) or ``"max"``; NaN propagates.
      align_corners: PyTorch's flag of bilinear/bicubic ``F.interpolate``
        (CFLOW-AD: True); not with ``"nearest"``.

    Returns:
      (B, H, W) float map.

    Raises:
      TypeError: non-floating maps, non-int ``image_size``, ``sigma`` not a real
        number, or traced (it decides whether and how wide to blur).
      ValueError: a map with fewer than 2 axes or an empty h or w, maps of
        different leading axes, no maps, ``image_size`` not two ints >= 1,
        ``sigma`` negative, NaN or inf, unknown ``upsample``, ``blur_mode`` or
        ``combine``, ``align_corners`` with nearest upsampling.

    Example:
      >>> import jax.numpy as jnp
      >>> maps = (jnp.ones((1, 4, 4)), jnp.zeros((1, 2, 2)))
      >>> postprocess(maps, (8, 8), sigma=0.0).shape
      (1, 8, 8)
    """
    fn = "postprocess"
    leaves = jax.tree.leaves(patch_map)
    if not leaves:
        raise ValueError(f"{fn}: patch_map holds no map; got {patch_map!r}.")
    leaves = [
        _checks.as_float_array(fn, "patch_map", leaf, min_rank=2) for leaf in leaves
    ]
    for leaf in leaves:
        if min(leaf.shape[-2:]) < 1:
            raise ValueError(
                f"{fn}: patch_map must be (B, h, w) with h, w >= 1; got shape "
                f"{tuple(leaf.shape)}."
            )
        if leaf.shape[:-2] != leaves[0].shape[:-2]:
            raise ValueError(
                f"{fn}: the maps must share their leading axes; got shapes "
                f"{', '.join(str(tuple(x.shape)) for x in leaves)}."
            )
    if (
        isinstance(image_size, (str, bytes))
        or not hasattr(image_size, "__len__")
        or len(image_size) != 2
    ):
        raise ValueError(
            f"{fn}: image_size must be a pair (H, W) of ints; got {image_size!r}."
        )
    image_size = tuple(
        _checks.check_int(fn, "image_size", n, low=1) for n in image_size
    )
    _checks.check_choice(fn, "upsample", upsample, UPSAMPLE_METHODS)
    _checks.check_choice(fn, "blur_mode", blur_mode, BLUR_MODES)
    _checks.check_choice(fn, "combine", combine, COMBINE_RULES)
    if align_corners and upsample == "nearest":
        raise ValueError(f"{fn}: align_corners does not apply to nearest upsampling.")
    sigma = _concrete_sigma(fn, sigma)
    resized = [
        ops.resize(leaf, image_size, method=upsample, align_corners=bool(align_corners))
        for leaf in leaves
    ]
    if len(resized) == 1:
        maps = resized[0]
    elif combine == "max":
        maps = functools.reduce(jnp.maximum, resized)  # jnp.maximum propagates NaN
    else:
        maps = functools.reduce(jnp.add, resized)
        if combine == "mean":
            maps = maps / len(resized)
    if sigma > 0:
        maps = ops.gaussian_blur(maps, sigma, mode=blur_mode)
    return maps


def postprocess_config(patch_map, image_size: tuple[int, int], config) -> jax.Array:
    """:func:`postprocess` with the shared fields of a method's ``config``.

    Args:
      patch_map: a map or a pytree of per-level maps from a method's ``score``.
      image_size: (H, W).
      config: a method config (``upsample``, ``sigma``, ``blur_mode``,
        ``combine``, ``align_corners``).

    Returns:
      (B, H, W) float map.
    """
    return postprocess(
        patch_map, image_size, upsample=config.upsample, sigma=config.sigma,
        blur_mode=config.blur_mode, combine=config.combine,
        align_corners=config.align_corners,
    )


def _concrete_sigma(fn: str, sigma) -> float:
    """``sigma`` as a Python float: a concrete real scalar, finite and >= 0.

    The blur's radius ``int(4 sigma + 0.5)`` and whether to blur at all (sigma 0)
    are static, so a traced sigma is refused here (``ops.gaussian_blur`` with an
    explicit ``radius`` differentiates w.r.t. sigma).
    """
    _checks.check_real_scalar(fn, "sigma", sigma)
    if not _checks.is_concrete(sigma):
        raise TypeError(
            f"{fn}: sigma must be a concrete number, not traced: it sets the blur's "
            "radius int(4 sigma + 0.5) (use ops.gaussian_blur with radius= to "
            "differentiate w.r.t. sigma)."
        )
    value = float(np.asarray(sigma))
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(
            f"{fn}: sigma must be a finite number >= 0 (0: no blur); got {sigma!r}."
        )
    return value


def max_image_score(maps: jax.Array) -> jax.Array:
    """Image score as the maximum of each map (the default rule).

    Args:
      maps: (B, H, W) anomaly maps.

    Returns:
      (B,) maxima; NaN where a map holds NaN.

    Note:
      XLA's CPU max reduction skips NaN on arrays of a few thousand elements or
      more (jax 0.10: ``jnp.max`` of 4096 ones and one NaN is 1.0), which would
      score a map with NaN regions by its finite part. NaN is propagated explicitly.
    """
    top = jnp.max(maps, axis=(-2, -1))
    return jnp.where(jnp.any(jnp.isnan(maps), axis=(-2, -1)), jnp.nan, top)
