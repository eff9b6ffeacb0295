"""A fitted detector: an optional backbone plus a method state, as one pytree.

A :class:`Detector` bundles the backbone's variables (none for methods that read
images, such as PAE), a fitted method state and the static facts needed to use them
(method name, backbone name, image size, the preprocessing that makes its input
images). It is a pytree, so :func:`anomaly_maps` is a pure, jittable function of the
images, differentiable end to end, and :func:`feature_loss` gives F2PAD the
method's feature-level loss as a differentiable function of the images.

The path of an image: backbone features (a dict level -> (B, h, w, C)) -> the
method's ``embed`` (any pytree of per-level arrays) -> ``score`` (one map or a
pytree of per-level maps at feature resolution) -> the shared post-processing
(:func:`jad.methods.base.postprocess`: each map upsampled to the image size,
combined, blurred once) -> the image score (the method's ``image_score``, which may
read the final map, or the maximum of the final map).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import flax.errors
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks
from jad import backbones as bb
from jad.backbones._xla import conv_jit
from jad.data import Transform
from jad.methods.base import get_method, max_image_score, postprocess_config

__all__ = [
    "Detector",
    "anomaly_maps",
    "embed_images",
    "feature_loss",
    "loss_context",
]


@flax.struct.dataclass
class Detector:
    """A fitted anomaly detector (a pytree: arrays are leaves, the rest is static).

    Attributes:
      variables: backbone variables (``{"params", "batch_stats"}``); ``None`` for a
        method that reads images (``get_method(method).inputs == "images"``).
      state: the method's fitted state (any pytree; its config is static).
      method: method name (static).
      backbone: backbone name, ``None`` for a method that reads images (static).
      image_size: (H, W) the detector was fitted at (static).
      weights: where the backbone weights came from: ``None`` (the default
        pretrained weights) or a file path (static; recorded for saving).
      transform: the :class:`jad.data.Transform` that made the training images
        (static; ``None`` when unknown), so that prediction preprocesses new
        images the same way.
      num_train: how many images the state was fitted on (static; it sets the
        size of some states, e.g. PatchCore's bank, which restoring checks).
    """

    variables: Any
    state: Any
    method: str = flax.struct.field(pytree_node=False)
    backbone: str | None = flax.struct.field(pytree_node=False)
    image_size: tuple[int, int] = flax.struct.field(pytree_node=False)
    weights: str | None = flax.struct.field(pytree_node=False, default=None)
    transform: Transform | None = flax.struct.field(pytree_node=False, default=None)
    num_train: int = flax.struct.field(pytree_node=False, default=0)

    @property
    def config(self):
        """The method config (stored on the state)."""
        return self.state.config


def _embed(spec, config, backbone, variables, images):
    if spec.inputs == "images":
        return images if spec.embed is None else spec.embed(config, images)
    features = bb.extract_features(backbone, variables, images, config.levels)
    return spec.embed(config, features)


@functools.partial(conv_jit, static_argnames=("method_name", "config", "backbone"))
def _embed_jit(variables, images, *, method_name, config, backbone):
    return _embed(get_method(method_name), config, backbone, variables, images)


@contextlib.contextmanager
def _variables_fit(fn: str, backbone: str | None):
    """Turns Flax's errors about missing or misshaped parameters into a ValueError.

    Args:
      fn: the caller, for the message.
      backbone: the backbone's name.

    Yields:
      Nothing; the body runs inside the context.
    """
    try:
        yield
    except flax.errors.FlaxError as err:
        raise ValueError(
            f"{fn}: the backbone variables do not fit {backbone!r} (variables of "
            f"another backbone?): {str(err).splitlines()[0]}"
        ) from err


def embed_images(method: str, config, backbone: str | None, variables, images):
    """The method's embeddings of ``images`` (through the backbone if it has one).

    Args:
      method: method name.
      config: the method's config.
      backbone: backbone name (``None`` for a method that reads images).
      variables: backbone variables (``None`` likewise).
      images: (B, H, W, 3) ImageNet-normalised float images.

    Returns:
      The method's embeddings: any pytree of arrays with leading axis B, e.g.
      (B, h, w, D), or a dict of per-level arrays.
    """
    with _variables_fit("embed_images", backbone):
        return _embed_jit(
            variables, jnp.asarray(images), method_name=method, config=config,
            backbone=backbone,
        )


def _check_images(fn: str, images, image_size=None):
    """Refuses what cannot be scored: not (B, H, W, 3) floats, B = 0, NaN or inf.

    Shapes and dtypes only when ``images`` is traced (under a user's jit), so it
    never copies a device array to the host; the values are checked when they are
    at hand.

    Args:
      fn: the caller, for the message.
      images: (B, H, W, 3) float images.
      image_size: the (H, W) they must have, or ``None``.

    Returns:
      ``images`` (an array).

    Raises:
      ValueError: wrong shape, no image, another size than ``image_size``, NaN or
        inf. TypeError: not floating.
    """
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
    # scores): refused whenever the values are at hand.
    _checks.check_finite(fn, "images", images)
    return images


def _maps_and_scores(spec, state, emb, image_size):
    patch_map = spec.score(state, emb)
    maps = postprocess_config(patch_map, image_size, state.config)
    if spec.image_score is not None:
        scores = spec.image_score(state, emb, patch_map, maps=maps)
    else:
        scores = max_image_score(maps)
    return maps, scores


def _anomaly_maps(detector: Detector, images):
    spec = get_method(detector.method)
    emb = _embed(spec, detector.config, detector.backbone, detector.variables, images)
    return _maps_and_scores(spec, detector.state, emb, images.shape[1:3])


_anomaly_maps_jit = conv_jit(_anomaly_maps)


def _run(fn: str, detector: Detector, images, body, jitted, *args):
    images = jnp.asarray(images)
    _check_images(fn, images, detector.image_size)
    with _variables_fit(fn, detector.backbone):
        if isinstance(images, jax.core.Tracer):
            return body(detector, images, *args)
        return jitted(detector, images, *args)


def anomaly_maps(detector: Detector, images) -> tuple[jax.Array, jax.Array]:
    """Pixel anomaly maps and image scores (pure, jitted, differentiable).

    Args:
      detector: a fitted :class:`Detector`.
      images: (B, H, W, 3) ImageNet-normalised images of the fitted size.

    Returns:
      ``(maps, scores)``: (B, H, W) float maps (each of the method's per-level maps
      upsampled to the image size, combined and blurred as its config says) and
      (B,) image scores. NaN or inf in traced images or features propagates to the
      maps and scores; it never gives a normal-looking score.

    Raises:
      ValueError: images of another size than the fitted one, or (when the images
        are concrete, not traced) holding NaN or inf. TypeError: non-float images.
    """
    return _run("anomaly_maps", detector, images, _anomaly_maps, _anomaly_maps_jit)


def _loss_context(detector: Detector, images):
    spec = get_method(detector.method)
    emb = _embed(spec, detector.config, detector.backbone, detector.variables, images)
    emb = jax.lax.stop_gradient(emb)
    if spec.loss_context is None:
        return None
    return spec.loss_context(detector.state, emb)


def _feature_loss(detector: Detector, images, context):
    spec = get_method(detector.method)
    emb = _embed(spec, detector.config, detector.backbone, detector.variables, images)
    if spec.feature_loss is None:
        return spec.score(detector.state, emb)
    return spec.feature_loss(detector.state, emb, context)


_loss_context_jit = conv_jit(_loss_context)
_feature_loss_jit = conv_jit(_feature_loss)


def loss_context(detector: Detector, images):
    """What a method's feature loss fixes from the initial images (F2PAD).

    F2PAD refines an image n from an initial estimate n^(0); some feature losses
    depend on n^(0) (PatchCore, F2PAD eq. 5: the candidate bank entries M_ij
    nearest to each location of n^(0)). Not differentiated (a stop-gradient).

    Args:
      detector: a fitted :class:`Detector`.
      images: (B, H, W, 3) initial images n^(0) of the fitted size.

    Returns:
      The method's context (a pytree, e.g. PatchCore's (B, h, w, K) candidate
      indices), or ``None`` for a method whose loss needs none (PaDiM).

    Raises:
      ValueError, TypeError: as :func:`anomaly_maps` for the images.
    """
    return _run("loss_context", detector, images, _loss_context, _loss_context_jit)


def feature_loss(detector: Detector, images, context):
    """The method's feature-level loss of ``images``, differentiable w.r.t. them.

    F2PAD's data term: the method's ``feature_loss(state, embeddings, context)``
    (PatchCore: F2PAD eq. 5, the squared distance to the nearest of the initial
    image's candidates; PaDiM: F2PAD eq. 7, the squared Mahalanobis distance), or
    its ``score`` for a method that defines none. At feature resolution, not
    upsampled.

    Args:
      detector: a fitted :class:`Detector`.
      images: (B, H, W, 3) ImageNet-normalised images of the fitted size.
      context: from :func:`loss_context` on the initial images (``None`` for a
        method that needs none).

    Returns:
      (B, h, w) per-location losses (or the method's pytree of per-level maps).

    Raises:
      ValueError, TypeError: as :func:`anomaly_maps` for the images.

    Example:
      ``jax.grad(lambda x: feature_loss(det, x, ctx).sum())(images)`` is the
      gradient F2PAD descends.
    """
    return _run("feature_loss", detector, images, _feature_loss, _feature_loss_jit,
                context)
