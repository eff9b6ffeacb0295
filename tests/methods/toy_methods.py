"""Two toy methods registered only by the tests: they exercise every protocol hook.

* ``toy_levels`` reads backbone features and keeps levels apart: ``embed`` returns
  a dict level -> (B, h_l, w_l, C_l) (a pytree), the state is nested (a dict of
  per-level NamedTuples), ``score`` returns a dict of per-level maps at their own
  resolutions, and ``calibrate`` stores the largest training map value (the maps are
  divided by it, as CFLOW-AD normalises by a maximum).
* ``toy_images`` reads images (no backbone): a per-pixel mean image plus a
  Flax-style parameter tree, extra fit inputs (``textures``), a checkpoint folder it
  resumes from, and an image score that sums the final (upsampled, blurred) map, as
  PAE does.

Both are deliberately simple, so that every number is checked against numpy in
``test_protocol.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jad import io
from jad.methods import base


class LevelStats(NamedTuple):
    mean: jax.Array  # (h, w, C)
    scale: jax.Array  # () the level's mean squared deviation


@dataclasses.dataclass(frozen=True)
class LevelsConfig:
    levels: tuple[int, ...] = (1, 2)
    groups: tuple[tuple[int, ...], ...] = ((0, 1), (2,))  # nested tuples in JSON
    upsample: str = "bilinear"
    sigma: float = 1.0
    blur_mode: str = "symmetric"
    combine: str = "mean"
    align_corners: bool = False

    def __post_init__(self):
        base.check_postprocess("LevelsConfig", self)


@flax.struct.dataclass
class LevelsState:
    stats: dict  # level -> LevelStats
    normaliser: jax.Array  # () largest training map value (calibrate)
    config: LevelsConfig = flax.struct.field(pytree_node=False)


def levels_embed(config, features):
    base.check_levels("toy_levels.embed", config, features)
    return {level: features[level][..., :4] for level in config.levels}


def levels_fit(config, embeddings, *, key, progress=False):
    del key, progress
    stats = {}
    for level, x in embeddings.items():
        x = jnp.asarray(x)
        mean = x.mean(axis=0)
        stats[level] = LevelStats(mean, jnp.mean((x - mean) ** 2) + 1e-6)
    return LevelsState(stats=stats, normaliser=jnp.ones(()), config=config)


def levels_init(config, embeddings, *, num_images, key):
    del num_images, key
    stats = {
        level: LevelStats(jnp.zeros(x.shape[1:], x.dtype), jnp.zeros((), x.dtype))
        for level, x in embeddings.items()
    }
    return LevelsState(stats=stats, normaliser=jnp.zeros(()), config=config)


def levels_score(state, embeddings):
    base.check_instance("toy_levels.score", "state", state, LevelsState)
    return {
        level: jnp.sum((x - state.stats[level].mean) ** 2, axis=-1)
        / state.stats[level].scale / state.normaliser
        for level, x in embeddings.items()
    }


def levels_calibrate(state, train_maps):
    # affine in the map, so applying it before post-processing equals after
    return state.replace(normaliser=state.normaliser * jnp.max(train_maps))


TOY_LEVELS = base.Method(
    name="toy_levels",
    config_type=LevelsConfig,
    state_type=LevelsState,
    embed=levels_embed,
    fit=levels_fit,
    score=levels_score,
    init=levels_init,
    calibrate=levels_calibrate,
    presets={"default": LevelsConfig(), "max": LevelsConfig(combine="max")},
)


@dataclasses.dataclass(frozen=True)
class ImagesConfig:
    width: int = 3
    upsample: str = "bilinear"
    sigma: float = 2.0
    blur_mode: str = "symmetric"
    combine: str = "mean"
    align_corners: bool = False

    def __post_init__(self):
        base.check_postprocess("ImagesConfig", self)


@flax.struct.dataclass
class ImagesState:
    params: dict  # {"params": {"Dense_0": {"kernel": (3, width)}}}
    mean: jax.Array  # (H, W, width) mean of the projected training images
    texture_mean: jax.Array  # () mean of the extra input
    key: jax.Array  # a typed PRNG key, as a training state carries one
    config: ImagesConfig = flax.struct.field(pytree_node=False)


def images_init(config, embeddings, *, num_images, key):
    del num_images
    kernel = jax.random.normal(key, (3, config.width), embeddings.dtype)
    return ImagesState(
        params={"params": {"Dense_0": {"kernel": kernel}}},
        mean=jnp.zeros((*embeddings.shape[1:3], config.width), embeddings.dtype),
        texture_mean=jnp.zeros((), embeddings.dtype),
        key=key,
        config=config,
    )


def _project(state, images):
    return images @ state.params["params"]["Dense_0"]["kernel"]


def images_fit(config, images, *, key, progress=False, textures=None,
               checkpoint_dir=None):
    """Resumes from ``checkpoint_dir/done`` when a previous fit saved one there."""
    del progress
    images = jnp.asarray(images)
    template = images_init(config, images, num_images=len(images), key=key)
    if checkpoint_dir is not None and (Path(checkpoint_dir) / "done").is_dir():
        return io.restore_pytree(Path(checkpoint_dir) / "done", template)
    state = template.replace(
        mean=jnp.mean(_project(template, images), axis=0),
        texture_mean=(jnp.zeros(()) if textures is None
                      else jnp.mean(jnp.asarray(textures))),
    )
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        io.save_pytree(Path(checkpoint_dir) / "done", state)
    return state


def images_score(state, images):
    base.check_instance("toy_images.score", "state", state, ImagesState)
    return jnp.sum((_project(state, images) - state.mean) ** 2, axis=-1)


def images_image_score(state, embeddings, patch_map, *, maps):
    base.check_instance("toy_images.image_score", "state", state, ImagesState)
    del embeddings, patch_map
    return jnp.sum(maps, axis=(-2, -1))  # PAE: the sum of the smoothed map


TOY_IMAGES = base.Method(
    name="toy_images",
    config_type=ImagesConfig,
    state_type=ImagesState,
    fit=images_fit,
    score=images_score,
    init=images_init,
    inputs="images",
    image_score=images_image_score,
    fit_inputs=("textures",),
    trains=True,
    presets={"default": ImagesConfig()},
)


def register_toys() -> tuple[str, str]:
    """Registers both toys (idempotent); returns their names."""
    base.register(TOY_LEVELS)
    base.register(TOY_IMAGES)
    return TOY_LEVELS.name, TOY_IMAGES.name


def numpy_levels_maps(state, features, image_size, config) -> np.ndarray:
    """The toy's final maps from numpy, torch's interpolate and scipy's blur."""
    import scipy.ndimage
    import torch
    import torch.nn.functional as F

    upsampled = []
    for level in config.levels:
        x = np.asarray(features[level], np.float64)[..., :4]
        mean = np.asarray(state.stats[level].mean, np.float64)
        m = ((x - mean) ** 2).sum(-1) / float(state.stats[level].scale)
        m = m / float(state.normaliser)
        t = torch.from_numpy(m[:, None])
        up = F.interpolate(t, size=image_size, mode=config.upsample,
                           align_corners=config.align_corners if
                           config.upsample != "nearest" else None)
        upsampled.append(up[:, 0].numpy())
    stacked = np.stack(upsampled)
    combined = {"mean": stacked.mean(0), "sum": stacked.sum(0),
                "max": stacked.max(0)}[config.combine]
    if config.sigma == 0:
        return combined
    return np.stack([
        scipy.ndimage.gaussian_filter(m, config.sigma, mode="reflect",
                                      truncate=4.0) for m in combined
    ])
