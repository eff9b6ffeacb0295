"""The detection pipeline: backbone -> method -> post-processing, fit / predict / save.

A :class:`Detector` bundles the backbone's variables, a fitted method state and the
static facts needed to use them (method name, config, backbone name, image size). It is
a pytree, so ``anomaly_maps(detector, images)`` is a pure, jittable function of the
images, differentiable end to end (F2PAD back-propagates through it).

``fit_detector`` streams training batches through the backbone and the method's
``embed`` on device, keeps only the embeddings (host memory), then calls the method's
``fit``. ``save_detector`` / ``load_detector`` store the method state with orbax and the
rest as JSON; the backbone weights are not copied (they are re-obtained with
:func:`jad.backbones.load_pretrained` from the recorded source), but their digest is
recorded and checked on loading, so a detector never silently runs on other weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import flax.errors
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jad import backbones as bb
from jad._xla import conv_jit
from jad.methods.base import get_method, max_image_score, postprocess

__all__ = [
    "Detector",
    "anomaly_maps",
    "check_output_folder",
    "embed_images",
    "fit_detector",
    "load_detector",
    "predict",
    "read_metadata",
    "save_detector",
]

_FORMAT_VERSION = 1


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
    return images


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
        sizes. TypeError: a config of another method, non-float images.
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
    from tqdm.auto import tqdm

    chunks, image_size, size, pending = [], None, None, None
    for batch in tqdm(train_batches, desc=f"{method}: features", disable=not progress,
                      unit="batch"):
        images = _check_images(fn, getattr(batch, "images", batch), image_size)
        image_size = tuple(images.shape[1:3])
        n = images.shape[0]
        size = n if size is None else size
        if n < size:  # pad a short (last) batch: no second compilation
            filler = np.zeros((size - n, *images.shape[1:]), images.dtype)
            images = np.concatenate([np.asarray(images), filler])
        emb = embed_images(method, config, backbone, variables, images)[:n]
        # Fetch the previous batch while this one runs on the device.
        if pending is not None:
            chunks.append(np.asarray(pending))
        pending = emb
    if pending is not None:
        chunks.append(np.asarray(pending))
    if not chunks:
        raise ValueError(f"{fn}: the training set is empty.")
    embeddings = np.concatenate(chunks, axis=0)
    del chunks
    start = time.perf_counter()
    state = spec.fit(config, embeddings, key=key, progress=progress)
    jax.block_until_ready(state)
    if progress:
        print(f"{method}: fitted on {embeddings.shape[0]} images in "
              f"{time.perf_counter() - start:.1f} s")
    return Detector(
        variables=variables, state=state, method=method, backbone=backbone,
        image_size=image_size, weights=weights,
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
      config says) and (B,) image scores.
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


# ------------------------------------------------------------------ save and restore


def _config_from_dict(config_type, values: dict):
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    kwargs = {}
    for name, value in values.items():
        if name not in fields:
            raise ValueError(f"unknown {config_type.__name__} field {name!r}.")
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    return config_type(**kwargs)


def check_output_folder(fn: str, directory) -> Path:
    """The absolute path of a folder :func:`save_detector` may write.

    Args:
      fn: the caller, for the message.
      directory: a new path, an empty folder, or a saved detector's folder.

    Returns:
      The absolute :class:`~pathlib.Path`.

    Raises:
      ValueError: ``directory`` exists and is neither empty nor a saved detector.
    """
    directory = Path(directory).absolute()
    if directory.exists() and not (
        (directory / "detector.json").is_file()
        or (directory.is_dir() and not any(directory.iterdir()))
    ):
        raise ValueError(
            f"{fn}: {directory} exists and is not a saved detector; choose "
            "a new or empty folder (an existing detector folder is replaced)."
        )
    return directory


def save_detector(
    detector: Detector, directory, *, metadata: dict | None = None
) -> Path:
    """Saves a detector: method state with orbax, the rest as ``detector.json``.

    The write goes to a temporary folder that replaces ``directory`` at the end, so
    an interrupted save never leaves a half-written detector behind.

    Args:
      detector: a fitted :class:`Detector`.
      directory: output folder: created, or replaced if it holds a saved detector
        (or is empty). Any other existing folder is refused, so ``--out .`` cannot
        wipe a working tree.
      metadata: JSON-serialisable extras stored with it (the CLI keeps the
        preprocessing there); read back with :func:`read_metadata`.

    Returns:
      The folder's path.
    """
    import orbax.checkpoint as ocp

    directory = check_output_folder("save_detector", directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=directory.name + ".tmp"))
    try:
        arrays = {
            f.name: np.asarray(getattr(detector.state, f.name))
            for f in dataclasses.fields(detector.state)
            if f.name != "config"
        }
        ocp.PyTreeCheckpointer().save(tmp / "state", arrays)
        meta = {
            "format_version": _FORMAT_VERSION,
            "method": detector.method,
            "backbone": detector.backbone,
            "weights": detector.weights,
            "weights_sha256": bb.variables_digest(detector.variables),
            "image_size": list(detector.image_size),
            "config": dataclasses.asdict(detector.config),
            "metadata": metadata or {},
        }
        (tmp / "detector.json").write_text(json.dumps(meta, indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_metadata(directory) -> dict:
    """The ``metadata`` stored by :func:`save_detector`.

    Args:
      directory: the saved folder.

    Returns:
      The dict (empty if none was stored).
    """
    return _read_meta(Path(directory)).get("metadata", {})


def _read_meta(directory: Path) -> dict:
    meta_path = directory / "detector.json"
    if not meta_path.is_file():
        raise ValueError(f"{meta_path} not found: not a saved detector.")
    try:
        meta = json.loads(meta_path.read_text())
        meta["format_version"], meta["method"], meta["backbone"]  # noqa: B018
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{meta_path} is corrupt ({err}).") from err
    if meta["format_version"] > _FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format {meta['format_version']}; this jad reads up to "
            f"{_FORMAT_VERSION}."
        )
    return meta


def load_detector(
    directory, *, variables=None, cache_dir=None, check_weights: bool = True
) -> Detector:
    """Restores a detector saved by :func:`save_detector`.

    Args:
      directory: the saved folder.
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
      ValueError: the folder is not a saved detector (names the file), was written
        by a newer format, or the backbone variables are not those it was fitted
        with (``check_weights``).
    """
    import orbax.checkpoint as ocp

    directory = Path(directory)
    meta = _read_meta(directory)
    method, backbone = meta["method"], meta["backbone"]
    spec = get_method(method)
    config = _config_from_dict(spec.config_type, meta["config"])
    arrays = ocp.PyTreeCheckpointer().restore(directory / "state")
    expected = {
        f.name for f in dataclasses.fields(spec.state_type) if f.name != "config"
    }
    if set(arrays) != expected:
        raise ValueError(
            f"load_detector: {directory / 'state'} holds {sorted(arrays)}, not the "
            f"{method} state's {sorted(expected)}: the folder is corrupt or mixed up."
        )
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
            source = meta.get("weights") or "the default pretrained weights"
            raise ValueError(
                f"load_detector: the {backbone} variables (sha256 {found[:12]}...) "
                f"are not those {directory / 'detector.json'} was fitted with "
                f"({recorded[:12]}..., from {source}); its scores would be wrong. "
                "Pass the same weights, or check_weights=False to use these anyway."
            )
    return Detector(
        variables=variables, state=state, method=method, backbone=backbone,
        image_size=tuple(meta["image_size"]), weights=meta.get("weights"),
    )
