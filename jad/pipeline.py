"""Drivers: fit a detector over a dataset, score batches, calibrate, save and load.

The :class:`jad.detector.Detector` and its pure functions (``anomaly_maps``,
``feature_loss``) live in :mod:`jad.detector`; this module holds the host loops
around them.

``fit_detector`` streams training batches through the backbone (if the method has
one) and the method's ``embed`` on device; a method with ``fit_batches`` (PaDiM)
merges each batch's embeddings as they come, the others' are gathered on the host
(any pytree of per-level arrays, stacked leaf by leaf) for ``fit``.

``save_detector`` / ``load_detector`` store the whole method state (any pytree) with
orbax and the rest as JSON, and restore the state into a template (``jax.eval_shape``
of the method's ``init``), listing what does not fit. The backbone weights are not
copied (they are re-obtained with :func:`jad.backbones.load_pretrained` from the
recorded source), but their digest is recorded and checked on loading, so a
detector never silently runs on other weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks
from jad import backbones as bb
from jad.data import Transform
from jad.detector import (
    Detector,
    _check_images,
    _embed,
    _maps_and_scores,
    _variables_fit,
    anomaly_maps,
    embed_images,
)
from jad.errors import DatasetError
from jad.io import checkpoint as io_checkpoint
from jad.methods.base import get_method, list_methods

__all__ = [
    "Calibration",
    "calibrate",
    "check_output_folder",
    "fit_detector",
    "load_detector",
    "predict",
    "read_metadata",
    "save_detector",
]

def _check_results(fn: str, maps, scores, what: str) -> None:
    """Refuses NaN/inf maps or scores of finite images (the features overflowed)."""
    if not (bool(jnp.all(jnp.isfinite(scores))) and bool(jnp.all(jnp.isfinite(maps)))):
        raise ValueError(
            f"{fn}: the anomaly maps of {what} are not finite although the images "
            "are: the backbone's features overflowed. Are the images ImageNet-"
            "normalised floats (jad.data.normalize_imagenet)?"
        )


def _check_tree_finite(fn: str, what: str, tree) -> None:
    for leaf in jax.tree.leaves(tree):
        _checks.check_finite(fn, what, leaf)


def _slice(tree, n: int):
    return jax.tree.map(lambda x: x[:n], tree)


def _training_embeddings(fn, spec, config, backbone, variables, train_batches,
                         seen: dict, progress: bool):
    """Yields each training batch's embeddings (device pytrees), checked finite.

    A batch is yielded once the next one is dispatched, so the device embeds it
    while the caller fetches or merges the previous one. A short (last) batch is
    padded to the first batch's size (no second compilation) and the padding's
    embeddings dropped. ``seen`` receives ``images`` (the count) and
    ``image_size``; an empty ``train_batches`` raises when the stream ends.
    """
    from tqdm.auto import tqdm

    def checked(embeddings, index):  # on the device: no host copy to test it
        _check_tree_finite(
            fn, f"the embeddings of training batch {index} (finite images whose "
            "features overflowed: are they ImageNet-normalised floats?)", embeddings,
        )
        return embeddings

    size, pending, index = None, None, 0
    for batch in tqdm(train_batches, desc=f"{spec.name}: features",
                      disable=not progress, unit="batch"):
        images = _check_images(fn, getattr(batch, "images", batch), seen["image_size"])
        seen["image_size"] = tuple(images.shape[1:3])
        n = images.shape[0]
        seen.setdefault("batch", n)
        seen["images"] += n
        size = n if size is None else size
        if n < size:
            filler = np.zeros((size - n, *images.shape[1:]), images.dtype)
            images = np.concatenate([np.asarray(images), filler])
        emb = _slice(embed_images(spec.name, config, backbone, variables, images), n)
        if pending is not None:
            yield checked(pending, index)
            index += 1
        pending = emb
    if pending is None:
        raise ValueError(f"{fn}: the training set is empty.")
    yield checked(pending, index)


def _gather(stream, num_batches: int | None):
    """The streamed embeddings in one host pytree (each leaf stacked over images).

    With the number of batches known (``jad.data`` batches have a ``len``), each
    leaf is allocated once after the first batch and filled in place, so the
    embeddings are held once, not twice (chunks plus their concatenation).
    """
    first = jax.tree.map(np.asarray, next(stream))
    leaves, treedef = jax.tree.flatten(first)
    if num_batches is None:
        parts = [leaves] + [
            [np.asarray(x) for x in jax.tree.leaves(e)] for e in stream
        ]
        return treedef.unflatten(
            [np.concatenate(column) for column in zip(*parts, strict=True)]
        )
    outs = [np.empty((num_batches * x.shape[0], *x.shape[1:]), x.dtype)
            for x in leaves]
    for out, x in zip(outs, leaves, strict=True):
        out[: len(x)] = x
    filled = len(leaves[0])
    extra = []  # batches beyond the preallocated rows (more than announced)
    for emb in stream:
        parts = [np.asarray(x) for x in jax.tree.leaves(emb)]
        if extra or filled + len(parts[0]) > len(outs[0]):
            extra.append(parts)
            continue
        for out, x in zip(outs, parts, strict=True):
            out[filled : filled + len(x)] = x
        filled += len(parts[0])
    gathered = []
    for i, out in enumerate(outs):
        gathered.append(np.concatenate([out[:filled], *(e[i] for e in extra)])
                        if extra else out[:filled])
    return treedef.unflatten(gathered)


def _check_backbone(fn: str, spec, backbone, variables, weights=None):
    if spec.inputs == "images":
        if backbone is not None or variables is not None or weights is not None:
            raise ValueError(
                f"{fn}: method {spec.name!r} reads images, not backbone features; "
                "pass backbone=None, variables=None and weights=None."
            )
        return
    if backbone is None or variables is None:
        raise ValueError(
            f"{fn}: method {spec.name!r} reads backbone features: backbone and "
            "variables are required (e.g. jad.backbones.load_pretrained)."
        )
    bb.registry.check_name(fn, backbone)


def _calibration_maps(spec, state, embeddings, image_size, batch: int):
    """The training images' final maps (N, H, W), for a method's calibrate hook."""
    count = len(jax.tree.leaves(embeddings)[0])
    step = jax.jit(lambda st, e: _maps_and_scores(spec, st, e, image_size)[0])
    maps = []
    for start in range(0, count, batch):
        part = jax.tree.map(lambda x, s=start: jnp.asarray(x[s : s + batch]),
                            embeddings)
        maps.append(np.asarray(step(state, part)))
    return np.concatenate(maps)


def fit_detector(
    method: str,
    train_batches: Iterable,
    *,
    backbone: str | None = None,
    variables=None,
    config=None,
    key: jax.Array,
    weights: str | None = None,
    transform: Transform | None = None,
    inputs: dict | None = None,
    checkpoint_dir=None,
    progress: bool = True,
) -> Detector:
    """Fits ``method`` on training images streamed in batches.

    Args:
      method: method name (:func:`jad.methods.list_methods`).
      train_batches: iterable of (B, H, W, 3) ImageNet-normalised float batches, or of
        objects with an ``images`` attribute (``jad.data.Batch``); all the same size.
      backbone: backbone name; required for a method that reads backbone features,
        ``None`` for one that reads images (``get_method(method).inputs``).
      variables: backbone variables (e.g. from :func:`jad.backbones.load_pretrained`);
        ``None`` likewise.
      config: the method's config (default: the method's paper defaults).
      key: PRNG key for the method's fit.
      weights: recorded source of the backbone weights (for :func:`save_detector`).
      transform: the preprocessing that made the images, recorded on the detector
        (``jad predict`` and ``jad evaluate`` apply it to new images).
      inputs: extra arrays the method's ``fit`` takes as keywords
        (``get_method(method).fit_inputs``, e.g. PAE's texture images); methods
        never read files.
      checkpoint_dir: for a method that trains (``get_method(method).trains``): the
        folder its fit checkpoints to and resumes from.
      progress: show progress bars.

    Returns:
      The fitted :class:`jad.detector.Detector`. A method with a ``calibrate``
      hook has its state calibrated on the training images' maps.

    Raises:
      ValueError: unknown method or backbone, a backbone given to a method that
        reads images (or none to one that reads features), unknown ``inputs`` or a
        ``checkpoint_dir`` for a method that does not train, no training images,
        images of mixed sizes, NaN or inf in the images or their embeddings, or
        fitted statistics that are not finite. TypeError: a config of another
        method, non-float images.
    """
    fn = "fit_detector"
    spec = get_method(method)
    _check_backbone(fn, spec, backbone, variables, weights)
    if config is None:
        config = spec.config_type()
    if not isinstance(config, spec.config_type):
        raise TypeError(
            f"{fn}: config must be a {spec.config_type.__name__} for method "
            f"{method!r}; got {type(config).__name__}."
        )
    if spec.inputs == "features" and not set(config.levels) <= set(bb.registry.LEVELS):
        raise ValueError(  # before any image
            f"{fn}: config.levels {tuple(config.levels)} are not backbone levels "
            f"(valid: {', '.join(map(str, bb.registry.LEVELS))})."
        )
    if transform is not None and not isinstance(transform, Transform):
        raise TypeError(
            f"{fn}: transform must be a jad.data.Transform; got "
            f"{type(transform).__name__}."
        )
    extra = dict(inputs or {})
    unknown = sorted(set(extra) - set(spec.fit_inputs))
    if unknown:
        raise ValueError(
            f"{fn}: method {method!r} takes no input(s) {', '.join(unknown)}; its "
            f"fit takes {', '.join(spec.fit_inputs) or 'none'}."
        )
    for name, value in extra.items():  # refused before any image is read
        extra[name] = _checks.as_float_array(fn, f"inputs[{name!r}]", value)
        _checks.check_finite(fn, f"inputs[{name!r}]", extra[name])
    if checkpoint_dir is not None:
        if not spec.trains:
            raise ValueError(
                f"{fn}: method {method!r} does not train; checkpoint_dir applies "
                "to methods that do."
            )
        extra["checkpoint_dir"] = checkpoint_dir
    seen = {"images": 0, "image_size": None}
    stream = _training_embeddings(fn, spec, config, backbone, variables,
                                  train_batches, seen, progress)
    start = time.perf_counter()
    embeddings = None
    with contextlib.closing(stream):
        if spec.fit_batches is not None and spec.calibrate is None and not extra:
            # Statistics that are sums: each batch is merged as it comes, so the
            # memory does not grow with the number of images.
            state = spec.fit_batches(config, stream, key=key, progress=progress,
                                     **extra)
            done = "features and fit of"
        else:
            count = len(train_batches) if hasattr(train_batches, "__len__") else None
            embeddings = _gather(stream, count)
            start = time.perf_counter()
            state = spec.fit(config, embeddings, key=key, progress=progress, **extra)
            done = "method fit (features not included) on"
    jax.block_until_ready(state)
    if spec.calibrate is not None:  # on the training images' final maps
        maps = _calibration_maps(spec, state, embeddings, seen["image_size"],
                                 seen["batch"])
        state = spec.calibrate(state, maps)
    if progress:
        print(f"{method}: {done} {seen['images']} images in "
              f"{time.perf_counter() - start:.1f} s")
    return Detector(
        variables=variables, state=state, method=method, backbone=backbone,
        image_size=seen["image_size"], weights=weights, transform=transform,
        num_train=seen["images"],
    )


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
# A saved detector is a folder: ``state/`` (the whole method state, any pytree,
# written by orbax) and ``detector.json``. Format 2 added ``files``, the SHA-256 of
# every file under ``state/``, and ``sha256``, a digest of each other field, so a
# truncated or bit-flipped state file and an edited field are reported by name.
# Format 3 (this version) records the preprocessing (``transform``) and the number
# of training images (``num_train``, which sets the size of some states, so the
# state is restored into an exact template), and allows ``backbone: null`` for
# methods that read images. Formats 1 (jad 0.1, no digests) and 2 still load.

_FORMAT_VERSION = 3
_SEALED_V2 = ("method", "backbone", "weights", "weights_sha256", "image_size",
              "config", "metadata", "files")
_SEALED = (*_SEALED_V2, "transform", "num_train")
_FIELDS = {"format_version", "sha256", *_SEALED}
_MAX_SIDE = 1 << 16


def _sealed(version: int) -> tuple[str, ...]:
    return _SEALED if version >= 3 else _SEALED_V2


def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _seal(meta: dict) -> dict:
    """The per-field SHA-256 digests of a (JSON-normalised) detector.json."""
    return {
        name: hashlib.sha256(_canonical(meta.get(name))).hexdigest()
        for name in _sealed(meta["format_version"])
    }


def _transform_to_json(transform: Transform | None):
    return None if transform is None else dataclasses.asdict(transform)


def _transform_from_json(values, source: Path) -> Transform | None:
    """The recorded preprocessing (``None`` when not recorded)."""
    if values is None:
        return None
    return _dataclass_from_json(Transform, values, source, "transform")


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


def _dataclass_from_json(cls, values, source: Path, field: str):
    """``cls(**values)`` of a recorded JSON object, lists back to tuples."""
    if not isinstance(values, dict):
        raise DatasetError(
            f"{source}: field {field!r} must be an object of {cls.__name__} "
            f"fields; got {_short(values)}."
        )
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise DatasetError(
            f"{source}: field {field!r} has unknown {cls.__name__} field(s) "
            f"{', '.join(map(repr, unknown))}; valid: {', '.join(sorted(fields))}."
        )
    try:
        return cls(**{k: _to_tuples(v) for k, v in values.items()})
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{source}: field {field!r}: {err}") from err


def _config_from_json(config_type, values, source: Path):
    return _dataclass_from_json(config_type, values, source, "config")


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
    if version < 2 and ("files" in meta or "sha256" in meta):
        raise DatasetError(
            f"{source}: field 'format_version' is {version} but the file has the "
            "digests of format 2: it was edited after saving."
        )
    fields = ({"format_version", "sha256", *_sealed(version)} if version >= 2
              else _FIELDS - {"transform", "num_train"})
    unknown = sorted(set(meta) - fields)
    if unknown:
        raise DatasetError(
            f"{source}: unknown field(s) {', '.join(map(repr, unknown))}; valid: "
            f"{', '.join(sorted(fields))}."
        )
    required = ["method", "backbone", "image_size", "config"]
    if version >= 2:
        required += ["files", "sha256"]
    if version >= 3:
        required += ["num_train"]
    missing = [name for name in required if name not in meta]
    if missing:
        raise DatasetError(
            f"{source} is corrupt: field(s) {', '.join(map(repr, missing))} missing."
        )
    if meta["method"] not in list_methods():
        raise bad("method", f"one of {', '.join(map(repr, list_methods()))}")
    spec = get_method(meta["method"])
    if spec.inputs == "images":
        if meta["backbone"] is not None or meta.get("weights") is not None:
            raise bad("backbone", f"null (method {meta['method']!r} reads images)")
    elif meta["backbone"] not in bb.list_backbones():
        raise bad("backbone", f"one of {', '.join(map(repr, bb.list_backbones()))}")
    if version >= 3 and not (meta["num_train"] is None or (
            type(meta["num_train"]) is int and meta["num_train"] >= 1)):
        raise bad("num_train", "null or a positive integer")
    _transform_from_json(meta.get("transform"), source)
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
        sealed = _sealed(version)
        if not (isinstance(recorded, dict) and set(recorded) == set(sealed)):
            raise bad("sha256", f"an object with the digests of {', '.join(sealed)}")
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


def _floating_leaves(state):
    """(name, leaf) of the state's floating leaves (not PRNG keys, counters)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if jnp.issubdtype(getattr(leaf, "dtype", np.dtype(object)), jnp.floating):
            yield jax.tree_util.keystr(path).lstrip("."), leaf


def _check_state_finite(fn: str, state) -> None:
    for name, leaf in _floating_leaves(state):
        _checks.check_finite(fn, f"the state's {name}", leaf)


def save_detector(
    detector: Detector,
    directory,
    *,
    metadata: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Saves a detector: the whole method state with orbax, the rest as JSON.

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
        is another non-empty folder, ``metadata`` is not JSON-serialisable, the
        state holds NaN or inf, or ``num_train`` is not recorded (a detector not
        made by :func:`fit_detector`: give it ``num_train``).
    """
    fn = "save_detector"
    directory = check_output_folder(fn, directory, overwrite=overwrite)
    _check_state_finite(fn, detector.state)
    meta = {
        "format_version": _FORMAT_VERSION,
        "method": detector.method,
        "backbone": detector.backbone,
        "weights": detector.weights,
        "weights_sha256": (None if detector.variables is None
                           else bb.variables_digest(detector.variables)),
        "image_size": [int(s) for s in detector.image_size],
        "config": dataclasses.asdict(detector.config),
        "metadata": metadata or {},
        "transform": _transform_to_json(detector.transform),
        # unknown (0) for a detector restored from format 1: shapes then unchecked
        "num_train": int(detector.num_train) or None,
    }
    try:  # JSON-normalised (tuples become lists), so the digests match at loading
        meta = json.loads(json.dumps(meta))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{fn}: metadata must be JSON-serialisable ({err}).") from err
    with io_checkpoint.atomic_folder(directory) as tmp:
        io_checkpoint.save_pytree(tmp / "state", detector.state)
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


def _state_template(spec, config, backbone, variables, image_size, num_train, source):
    """The state's structure, shapes and dtypes: ``eval_shape`` of the method's init.

    The embeddings of one image of the fitted size are traced (no computation),
    then ``init(config, embeddings, num_images=num_train, key=...)``.
    """
    images = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
    try:
        emb = jax.eval_shape(
            lambda v, x: _embed(spec, config, backbone, v, x), variables, images
        )
        return jax.eval_shape(
            lambda e: spec.init(config, e, num_images=num_train,
                                key=jax.random.key(0)), emb
        )
    except (ValueError, TypeError, KeyError, IndexError) as err:
        raise DatasetError(
            f"{source}: the config and image_size do not fit the method ({err}); "
            "the file was changed after saving."
        ) from err


def _check_fits(detector: Detector, source: Path) -> None:
    """Traces the detector on an image of its size: the config must fit the state."""
    from jad.detector import _anomaly_maps

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
    if spec.inputs == "images" and variables is not None:
        raise ValueError(
            f"load_detector: method {method!r} reads images and has no backbone; "
            "variables must be None."
        )
    if spec.inputs == "features" and variables is None:
        variables = bb.load_pretrained(
            backbone, weights=meta.get("weights"), cache_dir=cache_dir, progress=False
        )
    recorded = meta.get("weights_sha256")  # absent in folders saved before it
    if spec.inputs == "features" and check_weights and recorded is not None:
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
    image_size = tuple(meta["image_size"])
    num_train = meta.get("num_train")
    recorded_meta = meta.get("metadata", {})
    if meta["format_version"] < 3 and type(recorded_meta.get("num_train")) is int:
        num_train = recorded_meta["num_train"]  # jad fit kept it in the metadata
    # unknown (format 1, or 2 saved through the API): the paths are checked only
    with _variables_fit("load_detector", backbone):
        template = _state_template(spec, config, backbone, variables, image_size,
                                   num_train or 1, source)
    state = io_checkpoint.restore_pytree(state_dir, template,
                                         shapes=num_train is not None)
    for name, leaf in _floating_leaves(state):
        try:
            _checks.check_finite("load_detector", "state", leaf)
        except ValueError:
            raise DatasetError(
                f"{state_dir}: the state's {name} holds NaN or inf."
            ) from None
    transform = _transform_from_json(meta.get("transform"), source)
    if meta["format_version"] < 3 and "transform" in recorded_meta:
        # Formats 1 and 2: jad fit kept the preprocessing in the metadata.
        transform = _transform_from_json(recorded_meta["transform"], source)
    detector = Detector(
        variables=variables, state=state, method=method, backbone=backbone,
        image_size=image_size, weights=meta.get("weights"), transform=transform,
        num_train=num_train or 0,
    )
    with _variables_fit("load_detector", backbone):
        _check_fits(detector, source)
    return detector
