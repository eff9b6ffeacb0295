"""The detection pipeline: backbone -> method -> post-processing, fit / predict / save.

A :class:`Detector` bundles the backbone's variables, a fitted method state and the
static facts needed to use them (method name, config, backbone name, image size). It is
a pytree, so ``anomaly_maps(detector, images)`` is a pure, jittable function of the
images, differentiable end to end (F2PAD back-propagates through it).

``fit_detector`` streams training batches through the backbone and the method's
``embed`` on device; a method with ``fit_batches`` (PaDiM) merges each batch's
embeddings as they come, the others' are gathered on the host for ``fit``.

``save_detector`` / ``load_detector`` store the method state with orbax and the rest
as JSON; the backbone weights are not copied (they are re-obtained with
:func:`jad.backbones.load_pretrained` from the recorded source), but their digest is
recorded and checked on loading, so a detector never silently runs on other weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import flax.errors
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks
from jad import backbones as bb
from jad._xla import conv_jit
from jad.errors import DatasetError
from jad.io import checkpoint as io_checkpoint
from jad.methods.base import get_method, list_methods, max_image_score, postprocess

__all__ = [
    "Calibration",
    "Detector",
    "anomaly_maps",
    "calibrate",
    "check_output_folder",
    "embed_images",
    "fit_detector",
    "load_detector",
    "predict",
    "read_metadata",
    "save_detector",
]

@flax.struct.dataclass
class Detector:
    """A fitted anomaly detector (a pytree: arrays are leaves, the rest is static).

    Attributes:
      variables: backbone variables (``{"params", "batch_stats"}``).
      state: the method's fitted state.
      method: method name (static).
      backbone: backbone name (static).
      image_size: (H, W) the detector was fitted at (static).
      weights: where the backbone weights came from: ``None`` (the default
        pretrained weights) or a file path (static; recorded for saving).
    """

    variables: Any
    state: Any
    method: str = flax.struct.field(pytree_node=False)
    backbone: str = flax.struct.field(pytree_node=False)
    image_size: tuple[int, int] = flax.struct.field(pytree_node=False)
    weights: str | None = flax.struct.field(pytree_node=False, default=None)

    @property
    def config(self):
        """The method config (stored on the state)."""
        return self.state.config


def _embed(method, config, backbone, variables, images):
    features = bb.extract_features(backbone, variables, images, config.levels)
    return method.embed(config, features)


@functools.partial(conv_jit, static_argnames=("method_name", "config", "backbone"))
def _embed_jit(variables, images, *, method_name, config, backbone):
    return _embed(get_method(method_name), config, backbone, variables, images)


@contextlib.contextmanager
def _variables_fit(fn: str, backbone: str):
    """Turns Flax's errors about missing or misshaped parameters into a ValueError."""
    try:
        yield
    except flax.errors.FlaxError as err:
        raise ValueError(
            f"{fn}: the backbone variables do not fit {backbone!r} (variables of "
            f"another backbone?): {str(err).splitlines()[0]}"
        ) from err


def embed_images(method: str, config, backbone: str, variables, images) -> jax.Array:
    """Backbone features of ``images`` turned into the method's embeddings.

    Args:
      method: method name.
      config: the method's config.
      backbone: backbone name.
      variables: backbone variables.
      images: (B, H, W, 3) ImageNet-normalised float images.

    Returns:
      The method's embeddings, e.g. (B, h, w, D).
    """
    with _variables_fit("embed_images", backbone):
        return _embed_jit(
            variables, jnp.asarray(images), method_name=method, config=config,
            backbone=backbone,
        )


def _check_images(fn: str, images, image_size=None):
    # Shapes and dtypes only, so it also runs on tracers (under a user's jit) and
    # never copies a device array to the host.
    if not (hasattr(images, "shape") and hasattr(images, "dtype")):
        images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{fn}: images must be (B, H, W, 3); got shape {images.shape}."
        )
    if images.shape[0] == 0:
        raise ValueError(
            f"{fn}: images must hold at least one image; got shape {images.shape}."
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: images must be float (ImageNet-normalised); got {images.dtype}."
        )
    if image_size is not None and tuple(images.shape[1:3]) != tuple(image_size):
        raise ValueError(
            f"{fn}: the detector was fitted on {image_size[0]}x{image_size[1]} "
            f"images; got {images.shape[1]}x{images.shape[2]}. Resize the images "
            "(jad.data.Transform) to the fitted size."
        )
    # Non-finite pixels would give NaN maps (or, in a careless kernel, "normal"
    # scores): refused whenever the values are at hand (not under a user's trace).
    _checks.check_finite(fn, "images", images)
    return images


def _check_results(fn: str, maps, scores, what: str) -> None:
    """Refuses NaN/inf maps or scores of finite images (the features overflowed)."""
    if not (bool(jnp.all(jnp.isfinite(scores))) and bool(jnp.all(jnp.isfinite(maps)))):
        raise ValueError(
            f"{fn}: the anomaly maps of {what} are not finite although the images "
            "are: the backbone's features overflowed. Are the images ImageNet-"
            "normalised floats (jad.data.normalize_imagenet)?"
        )


def _training_embeddings(fn, method, config, backbone, variables, train_batches,
                         seen: dict, progress: bool):
    """Yields each training batch's embeddings (device arrays), checked finite.

    A batch is yielded once the next one is dispatched, so the device embeds it
    while the caller fetches or merges the previous one. A short (last) batch is
    padded to the first batch's size (no second compilation) and the padding's
    embeddings dropped. ``seen`` receives ``images`` (the count) and
    ``image_size``; an empty ``train_batches`` raises when the stream ends.
    """
    from tqdm.auto import tqdm

    def checked(embeddings, index):  # on the device: no host copy to test it
        _checks.check_finite(
            fn, f"the embeddings of training batch {index} (finite images whose "
            "features overflowed: are they ImageNet-normalised floats?)", embeddings,
        )
        return embeddings

    size, pending, index = None, None, 0
    for batch in tqdm(train_batches, desc=f"{method}: features", disable=not progress,
                      unit="batch"):
        images = _check_images(fn, getattr(batch, "images", batch), seen["image_size"])
        seen["image_size"] = tuple(images.shape[1:3])
        n = images.shape[0]
        seen["images"] += n
        size = n if size is None else size
        if n < size:
            filler = np.zeros((size - n, *images.shape[1:]), images.dtype)
            images = np.concatenate([np.asarray(images), filler])
        emb = embed_images(method, config, backbone, variables, images)[:n]
        if pending is not None:
            yield checked(pending, index)
            index += 1
        pending = emb
    if pending is None:
        raise ValueError(f"{fn}: the training set is empty.")
    yield checked(pending, index)


def _gather(stream, num_batches: int | None) -> np.ndarray:
    """The streamed embeddings in one host array.

    With the number of batches known (``jad.data`` batches have a ``len``), the
    array is allocated once after the first batch and filled in place, so the
    embeddings are held once, not twice (chunks plus their concatenation).
    """
    first = np.asarray(next(stream))
    if num_batches is None:
        return np.concatenate([first, *(np.asarray(e) for e in stream)])
    out = np.empty((num_batches * first.shape[0], *first.shape[1:]), first.dtype)
    out[: len(first)] = first
    filled = len(first)
    extra = []  # batches beyond the preallocated rows (more than announced)
    for emb in stream:
        emb = np.asarray(emb)
        if extra or filled + len(emb) > len(out):
            extra.append(emb)
            continue
        out[filled : filled + len(emb)] = emb
        filled += len(emb)
    if extra:
        return np.concatenate([out[:filled], *extra])
    return out[:filled]


def fit_detector(
    method: str,
    train_batches: Iterable,
    *,
    backbone: str,
    variables,
    config=None,
    key: jax.Array,
    weights: str | None = None,
    progress: bool = True,
) -> Detector:
    """Fits ``method`` on training images streamed in batches.

    Args:
      method: method name (:func:`jad.methods.list_methods`).
      train_batches: iterable of (B, H, W, 3) ImageNet-normalised float batches, or of
        objects with an ``images`` attribute (``jad.data.Batch``); all the same size.
      backbone: backbone name.
      variables: backbone variables (e.g. from :func:`jad.backbones.load_pretrained`).
      config: the method's config (default: the method's paper defaults).
      key: PRNG key for the method's fit.
      weights: recorded source of the backbone weights (for :func:`save_detector`).
      progress: show progress bars.

    Returns:
      The fitted :class:`Detector`.

    Raises:
      ValueError: unknown method or backbone, no training images, images of mixed
        sizes, NaN or inf in the images or their embeddings, or fitted statistics
        that are not finite. TypeError: a config of another method, non-float
        images.
    """
    fn = "fit_detector"
    spec = get_method(method)
    bb.registry.check_name(fn, backbone)
    if config is None:
        config = spec.config_type()
    if not isinstance(config, spec.config_type):
        raise TypeError(
            f"{fn}: config must be a {spec.config_type.__name__} for method "
            f"{method!r}; got {type(config).__name__}."
        )
    if not set(config.levels) <= set(bb.registry.LEVELS):  # before any image
        raise ValueError(
            f"{fn}: config.levels {tuple(config.levels)} are not backbone levels "
            f"(valid: {', '.join(map(str, bb.registry.LEVELS))})."
        )
    seen = {"images": 0, "image_size": None}
    stream = _training_embeddings(fn, method, config, backbone, variables,
                                  train_batches, seen, progress)
    start = time.perf_counter()
    with contextlib.closing(stream):
        if spec.fit_batches is not None:
            # Statistics that are sums: each batch is merged as it comes, so the
            # memory does not grow with the number of images.
            state = spec.fit_batches(config, stream, key=key, progress=progress)
            done = "features and fit of"
        else:
            count = len(train_batches) if hasattr(train_batches, "__len__") else None
            embeddings = _gather(stream, count)
            start = time.perf_counter()
            state = spec.fit(config, embeddings, key=key, progress=progress)
            done = "method fit (features not included) on"
    jax.block_until_ready(state)
    if progress:
        print(f"{method}: {done} {seen['images']} images in "
              f"{time.perf_counter() - start:.1f} s")
    return Detector(
        variables=variables, state=state, method=method, backbone=backbone,
        image_size=seen["image_size"], weights=weights,
    )


def _anomaly_maps(detector: Detector, images):
    spec = get_method(detector.method)
    config = detector.config
    emb = _embed(spec, config, detector.backbone, detector.variables, images)
    patch_map = spec.score(detector.state, emb)
    maps = postprocess(
        patch_map, images.shape[1:3], upsample=config.upsample, sigma=config.sigma,
        blur_mode=config.blur_mode,
    )
    if spec.image_score is not None:
        scores = spec.image_score(detector.state, emb, patch_map)
    else:
        scores = max_image_score(maps)
    return maps, scores


_anomaly_maps_jit = conv_jit(_anomaly_maps)


def anomaly_maps(detector: Detector, images) -> tuple[jax.Array, jax.Array]:
    """Pixel anomaly maps and image scores (pure, jitted, differentiable).

    Args:
      detector: a fitted :class:`Detector`.
      images: (B, H, W, 3) ImageNet-normalised images of the fitted size.

    Returns:
      ``(maps, scores)``: (B, H, W) float maps (upsampled and blurred as the method's
      config says) and (B,) image scores. NaN or inf in traced images or features
      propagates to the maps and scores; it never gives a normal-looking score.

    Raises:
      ValueError: images of another size than the fitted one, or (when the images
        are concrete, not traced) holding NaN or inf. TypeError: non-float images.
    """
    images = jnp.asarray(images)
    _check_images("anomaly_maps", images, detector.image_size)
    with _variables_fit("anomaly_maps", detector.backbone):
        if isinstance(images, jax.core.Tracer):
            return _anomaly_maps(detector, images)
        return _anomaly_maps_jit(detector, images)


def predict(
    detector: Detector, batches: Iterable, *, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, float]:
    """Runs :func:`anomaly_maps` over batches and gathers the results on the host.

    Args:
      detector: a fitted :class:`Detector`.
      batches: iterable of image arrays or ``jad.data.Batch`` es.
      progress: show a progress bar.

    Returns:
      ``(maps (N, H, W) float32, scores (N,) float32, seconds_per_image)``; the time
      excludes the first batch (compilation). A batch smaller than the first (the
      last one, usually) is padded to the first batch's size so it reuses the compiled
      program; the padding's results are dropped.

    Raises:
      ValueError: no images, images of another size, NaN or inf in the images, or
        non-finite maps of finite images (the features overflowed).
    """
    from tqdm.auto import tqdm

    maps, scores, timed, count, size = [], [], 0.0, 0, None
    for i, batch in enumerate(tqdm(batches, desc=f"{detector.method}: scoring",
                                   disable=not progress, unit="batch")):
        images = _check_images("predict", getattr(batch, "images", batch),
                               detector.image_size)
        n = images.shape[0]
        size = n if size is None else size
        if n < size:
            filler = np.zeros((size - n, *images.shape[1:]), images.dtype)
            images = np.concatenate([np.asarray(images), filler])
        start = time.perf_counter()
        m, s = jax.block_until_ready(anomaly_maps(detector, images))
        m, s = m[:n], s[:n]
        _check_results("predict", m, s, f"batch {i}")
        if i > 0:
            timed += time.perf_counter() - start
            count += n
        maps.append(np.asarray(m, np.float32))
        scores.append(np.asarray(s, np.float32))
    if not maps:
        raise ValueError("predict: no images.")
    if count == 0:  # one batch only: time it again, compiled
        start = time.perf_counter()
        jax.block_until_ready(anomaly_maps(detector, images))
        timed, count = time.perf_counter() - start, images.shape[0]
    return np.concatenate(maps), np.concatenate(scores), timed / count


class Calibration(NamedTuple):
    """What a detector's scores look like on nominal images (:func:`calibrate`).

    Attributes:
      threshold: image scores above it are reported as anomalous: the
        ``quantile`` of the nominal image scores.
      quantile: the quantile the threshold was taken at.
      map_min: the smallest anomaly-map value of the nominal images.
      map_max: the largest one.
      num_images: how many nominal images were scored.
    """

    threshold: float
    quantile: float
    map_min: float
    map_max: float
    num_images: int

    @property
    def display_range(self) -> tuple[float, float]:
        """A common colour scale for overlays: nominal values fill its lower half.

        ``(map_min, map_max + (map_max - map_min))``: a pixel as anomalous as the
        worst nominal one sits mid-scale, and only values beyond everything seen on
        nominal images reach the top, so a normal image shows no hot spot.
        """
        return self.map_min, self.map_max + (self.map_max - self.map_min)


def calibrate(
    detector: Detector,
    batches: Iterable,
    *,
    quantile: float = 1.0,
    progress: bool = True,
) -> Calibration:
    """Scores nominal images to give a detector a threshold and a colour scale.

    Args:
      detector: a fitted :class:`Detector`.
      batches: nominal (defect-free) images, as for :func:`predict`, ideally not
        seen by the fit: ``jad fit`` holds out up to 64 training images for this
        (``--holdout``).
      quantile: the quantile of their image scores taken as the threshold (1.0:
        the largest).
      progress: show a progress bar.

    Returns:
      :class:`Calibration`.

    Raises:
      TypeError: ``quantile`` not a real number.
      ValueError: ``quantile`` outside [0, 1], no images, or what :func:`predict`
        raises.

    Note:
      Images the fit has seen score lower than new normal ones (PatchCore's
      coreset patches score 0; PaDiM with fewer images than channels scores them
      far lower), so a threshold taken on them flags new normal images. The
      default quantile, the largest score, suits a few dozen held-out images.
    """
    _checks.check_real_scalar("calibrate", "quantile", quantile)
    quantile = float(quantile)
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"calibrate: quantile must be in [0, 1]; got {quantile}.")
    maps, scores, _ = predict(detector, batches, progress=progress)
    return Calibration(
        threshold=float(np.quantile(scores, quantile)),
        quantile=float(quantile),
        map_min=float(maps.min()),
        map_max=float(maps.max()),
        num_images=int(scores.size),
    )


# ------------------------------------------------------------------ save and restore
#
# A saved detector is a folder: ``state/`` (the method state, written by orbax) and
# ``detector.json``. Format 2 (this version) adds ``files``, the SHA-256 of every file
# under ``state/``, and ``sha256``, a digest of each other field, so a truncated or
# bit-flipped state file and an edited field are reported by name; format 1 folders
# (jad 0.1) load without these checks.

_FORMAT_VERSION = 2
_SEALED = ("method", "backbone", "weights", "weights_sha256", "image_size", "config",
           "metadata", "files")
_FIELDS = {"format_version", "sha256", *_SEALED}
_MAX_SIDE = 1 << 16


def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _seal(meta: dict) -> dict:
    """The per-field SHA-256 digests of a (JSON-normalised) detector.json."""
    return {
        name: hashlib.sha256(_canonical(meta.get(name))).hexdigest()
        for name in _SEALED
    }


def _is_hex_digest(value) -> bool:
    return (
        isinstance(value, str) and len(value) == 64
        and all(c in "0123456789abcdef" for c in value)
    )


def _to_tuples(value):
    """JSON lists back to (nested) tuples: configs are hashable static arguments."""
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value


def _config_from_json(config_type, values, source: Path):
    if not isinstance(values, dict):
        raise DatasetError(
            f"{source}: field 'config' must be an object of "
            f"{config_type.__name__} fields; got {_short(values)}."
        )
    fields = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise DatasetError(
            f"{source}: field 'config' has unknown {config_type.__name__} field(s) "
            f"{', '.join(map(repr, unknown))}; valid: {', '.join(sorted(fields))}."
        )
    try:
        return config_type(**{k: _to_tuples(v) for k, v in values.items()})
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{source}: field 'config': {err}") from err


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_meta(directory: Path) -> dict:
    """``detector.json``, validated field by field (and against its digests)."""
    source = directory / "detector.json"
    if not source.is_file():
        raise DatasetError(f"{source} not found: not a saved detector.")
    try:
        meta = json.loads(source.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{source} is corrupt (not JSON: {err}).") from err
    if not isinstance(meta, dict):
        raise DatasetError(
            f"{source} is corrupt: expected a JSON object; got {type(meta).__name__}."
        )

    def bad(field, expected):
        return DatasetError(
            f"{source}: field {field!r} must be {expected}; got "
            f"{_short(meta.get(field))}."
        )

    version = meta.get("format_version")
    if type(version) is not int or version < 1:
        raise bad("format_version", "a positive integer")
    if version > _FORMAT_VERSION:
        raise DatasetError(
            f"{source} has format {version}; this jad reads up to {_FORMAT_VERSION} "
            "(a newer jad saved it)."
        )
    unknown = sorted(set(meta) - _FIELDS)
    if unknown:
        raise DatasetError(
            f"{source}: unknown field(s) {', '.join(map(repr, unknown))}; valid: "
            f"{', '.join(sorted(_FIELDS))}."
        )
    if version < 2 and ("files" in meta or "sha256" in meta):
        raise DatasetError(
            f"{source}: field 'format_version' is {version} but the file has the "
            "digests of format 2: it was edited after saving."
        )
    required = ["method", "backbone", "image_size", "config"]
    if version >= 2:
        required += ["files", "sha256"]
    missing = [name for name in required if name not in meta]
    if missing:
        raise DatasetError(
            f"{source} is corrupt: field(s) {', '.join(map(repr, missing))} missing."
        )
    if meta["method"] not in list_methods():
        raise bad("method", f"one of {', '.join(map(repr, list_methods()))}")
    if meta["backbone"] not in bb.list_backbones():
        raise bad("backbone", f"one of {', '.join(map(repr, bb.list_backbones()))}")
    if not (meta.get("weights") is None or isinstance(meta["weights"], str)):
        raise bad("weights", "null or a path")
    if not (meta.get("weights_sha256") is None
            or _is_hex_digest(meta["weights_sha256"])):
        raise bad("weights_sha256", "null or a SHA-256 hex digest")
    size = meta["image_size"]
    if not (isinstance(size, list) and len(size) == 2
            and all(type(s) is int and 1 <= s <= _MAX_SIDE for s in size)):
        raise bad("image_size", f"[H, W] with integers between 1 and {_MAX_SIDE}")
    if not isinstance(meta.get("metadata", {}), dict):
        raise bad("metadata", "an object")
    _config_from_json(get_method(meta["method"]).config_type, meta["config"], source)
    if version >= 2:
        files = meta["files"]
        if not (isinstance(files, dict) and files
                and all(isinstance(k, str) and _is_hex_digest(v)
                        for k, v in files.items())):
            raise bad("files", "an object of file path -> SHA-256 hex digest")
        recorded = meta["sha256"]
        if not (isinstance(recorded, dict) and set(recorded) == set(_SEALED)):
            raise bad("sha256", f"an object with the digests of {', '.join(_SEALED)}")
        for name, digest in _seal(meta).items():
            if recorded[name] != digest:
                raise DatasetError(
                    f"{source}: field {name!r} does not match the digest recorded "
                    "when the detector was saved: the file was edited or corrupted "
                    "after saving. Restore it, or fit and save the detector again "
                    "(to change the post-processing, load it and use "
                    "dataclasses.replace on its config)."
                )
    return meta


def check_output_folder(fn: str, directory, *, overwrite: bool = False) -> Path:
    """The absolute path of a folder :func:`save_detector` may write.

    Leftovers of an interrupted save of this folder are recovered first
    (:func:`jad.io.recover`).

    Args:
      fn: the caller or the option that named the folder, for the message.
      directory: a new path, an empty folder, or (with ``overwrite``) a saved
        detector's folder.
      overwrite: allow replacing a saved detector.

    Returns:
      The absolute :class:`~pathlib.Path`.

    Raises:
      ValueError: ``directory`` holds a saved detector and ``overwrite`` is False,
        or it exists and is neither empty nor a saved detector (never replaced).
    """
    directory = Path(directory).absolute()
    io_checkpoint.recover(directory)
    if os.path.ismount(directory):
        raise ValueError(
            f"{fn}: {directory} is a mount point, which cannot be replaced "
            "atomically; choose a folder inside it."
        )
    existing = directory.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{fn}: cannot write in {existing} (permission denied).")
    if not os.path.lexists(directory) or (
        directory.is_dir() and not any(directory.iterdir())
    ):
        return directory
    if not (directory / "detector.json").is_file():
        raise ValueError(
            f"{fn}: {directory} exists and is not a saved detector; choose "
            "a new or empty folder."
        )
    if not overwrite:
        raise ValueError(
            f"{fn}: {directory} already holds a saved detector; choose another "
            "folder, or replace it with overwrite=True (jad fit --overwrite)."
        )
    extra = sorted(p.name for p in directory.iterdir()
                   if p.name not in ("state", "detector.json"))
    if extra:
        raise ValueError(
            f"{fn}: {directory} holds a saved detector and other files "
            f"({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}), which "
            "replacing it would delete; move them, or choose another folder."
        )
    return directory


def _state_arrays(fn: str, state) -> dict[str, np.ndarray]:
    arrays = {
        f.name: np.asarray(getattr(state, f.name))
        for f in dataclasses.fields(state)
        if f.name != "config"
    }
    for name, value in arrays.items():
        _checks.check_finite(fn, f"the state's {name}", value)
    return arrays


def save_detector(
    detector: Detector,
    directory,
    *,
    metadata: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Saves a detector: method state with orbax, the rest as ``detector.json``.

    The folder is written beside ``directory`` and swapped in with renames
    (:func:`jad.io.atomic_folder`): an interruption at any point, even SIGKILL,
    leaves ``directory`` holding either the complete old detector or the complete
    new one; the next save or load cleans up after it. ``detector.json`` records
    the SHA-256 of every state file and of its own fields, which
    :func:`load_detector` checks.

    Args:
      detector: a fitted :class:`Detector`.
      directory: output folder (relative paths are resolved against the working
        directory): created, or used if empty. A saved detector there is replaced
        only with ``overwrite``; any other existing folder is refused, so
        ``--out .`` cannot wipe a working tree.
      metadata: JSON-serialisable extras stored with it (the CLI keeps the
        preprocessing there); read back with :func:`read_metadata`.
      overwrite: replace a detector saved in ``directory`` (atomically).

    Returns:
      The folder's absolute path.

    Raises:
      ValueError: ``directory`` holds a detector and ``overwrite`` is False, or
        is another non-empty folder, ``metadata`` is not
        JSON-serialisable, or the state holds NaN or inf.
    """
    import orbax.checkpoint as ocp

    fn = "save_detector"
    directory = check_output_folder(fn, directory, overwrite=overwrite)
    arrays = _state_arrays(fn, detector.state)
    meta = {
        "format_version": _FORMAT_VERSION,
        "method": detector.method,
        "backbone": detector.backbone,
        "weights": detector.weights,
        "weights_sha256": bb.variables_digest(detector.variables),
        "image_size": [int(s) for s in detector.image_size],
        "config": dataclasses.asdict(detector.config),
        "metadata": metadata or {},
    }
    try:  # JSON-normalised (tuples become lists), so the digests match at loading
        meta = json.loads(json.dumps(meta))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{fn}: metadata must be JSON-serialisable ({err}).") from err
    with io_checkpoint.atomic_folder(directory) as tmp:
        ocp.PyTreeCheckpointer().save(tmp / "state", arrays)
        meta["files"] = io_checkpoint.file_digests(tmp / "state")
        meta["sha256"] = _seal(meta)
        (tmp / "detector.json").write_text(json.dumps(meta, indent=2),
                                           encoding="utf-8")
    return directory


def read_metadata(directory) -> dict:
    """The ``metadata`` stored by :func:`save_detector`.

    Args:
      directory: the saved folder.

    Returns:
      The dict (empty if none was stored).

    Raises:
      DatasetError: ``detector.json`` is missing, corrupt, or fails its checks
        (the message names the file and the field).
    """
    directory = Path(directory).absolute()
    io_checkpoint.recover(directory)
    return _read_meta(directory).get("metadata", {})


def _check_fits(detector: Detector, source: Path) -> None:
    """Traces the detector on an image of its size: the config must fit the state."""
    images = jax.ShapeDtypeStruct((1, *detector.image_size, 3), jnp.float32)
    try:
        jax.eval_shape(_anomaly_maps, detector, images)
    except (ValueError, TypeError, KeyError, IndexError) as err:
        raise DatasetError(
            f"{source}: the config and image_size do not fit the saved state "
            f"({err}); the file was changed after saving."
        ) from err


def load_detector(
    directory, *, variables=None, cache_dir=None, check_weights: bool = True
) -> Detector:
    """Restores a detector saved by :func:`save_detector`.

    Every field of ``detector.json`` is validated (types, ranges, the config through
    its config class), the files are checked against their recorded SHA-256
    digests, and the config is traced against the state's shapes, so an edited,
    truncated or corrupted folder is refused with a message naming the file and the
    field instead of giving wrong maps.

    Args:
      directory: the saved folder (relative paths are resolved against the working
        directory).
      variables: backbone variables to use (default: re-obtained with
        :func:`jad.backbones.load_pretrained` from the recorded weights source).
      cache_dir: weight cache for :func:`jad.backbones.load_pretrained`.
      check_weights: compare the variables' digest
        (:func:`jad.backbones.variables_digest`) with the one recorded at saving and
        refuse other weights. ``False`` uses the given weights anyway (the method
        state was fitted on the recorded ones, so scores change).

    Returns:
      The :class:`Detector`, giving scores identical to the saved one.

    Raises:
      DatasetError: the folder is not a saved detector, a field of
        ``detector.json`` is missing, mistyped or out of range, a file does not
        match its digest, the folder was written by a newer format, or the config
        does not fit the state (each names the file). ValueError: the backbone
        variables are not those it was fitted with (``check_weights``).
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    io_checkpoint.recover(directory)
    meta = _read_meta(directory)
    source = directory / "detector.json"
    method, backbone = meta["method"], meta["backbone"]
    spec = get_method(method)
    config = _config_from_json(spec.config_type, meta["config"], source)
    state_dir = directory / "state"
    if "files" in meta:
        io_checkpoint.verify_digests(state_dir, meta["files"], source=source)
    elif not state_dir.is_dir():
        raise DatasetError(f"{state_dir} is missing: the saved folder is incomplete.")
    try:
        arrays = ocp.PyTreeCheckpointer().restore(state_dir)
    except Exception as err:  # orbax and tensorstore raise many types
        first = (str(err).splitlines() or [""])[0]
        raise DatasetError(
            f"{state_dir}: cannot restore the method state ({type(err).__name__}: "
            f"{first})."
        ) from err
    expected = {
        f.name for f in dataclasses.fields(spec.state_type) if f.name != "config"
    }
    if not isinstance(arrays, dict) or set(arrays) != expected:
        held = sorted(arrays) if isinstance(arrays, dict) else type(arrays).__name__
        raise DatasetError(
            f"{state_dir} holds {held}, not the {method} state's "
            f"{sorted(expected)}: the folder is corrupt or mixed up."
        )
    for name, value in arrays.items():
        try:
            _checks.check_finite("load_detector", name, value)
        except ValueError:
            raise DatasetError(
                f"{state_dir}: the state's {name} holds NaN or inf."
            ) from None
    state = spec.state_type(
        **{k: jnp.asarray(v) for k, v in arrays.items()}, config=config
    )
    if variables is None:
        variables = bb.load_pretrained(
            backbone, weights=meta.get("weights"), cache_dir=cache_dir, progress=False
        )
    recorded = meta.get("weights_sha256")  # absent in folders saved before it
    if check_weights and recorded is not None:
        found = bb.variables_digest(variables)
        if found != recorded:
            source_name = meta.get("weights") or "the default pretrained weights"
            raise ValueError(
                f"load_detector: the {backbone} variables (sha256 {found[:12]}...) "
                f"are not those {source} was fitted with "
                f"({recorded[:12]}..., from {source_name}); its scores would be "
                "wrong. Pass the same weights, or check_weights=False to use these "
                "anyway."
            )
    detector = Detector(
        variables=variables, state=state, method=method, backbone=backbone,
        image_size=tuple(meta["image_size"]), weights=meta.get("weights"),
    )
    with _variables_fit("load_detector", backbone):
        _check_fits(detector, source)
    return detector
