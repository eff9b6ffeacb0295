"""The backbones jad knows: name -> Flax module, feature channels and strides."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jad.backbones.efficientnet import EFFICIENTNET_SPECS, EfficientNetLite
from jad.backbones.resnet import RESNET_SPECS, ResNet

__all__ = [
    "BackboneInfo",
    "backbone_info",
    "build_module",
    "check_name",
    "list_backbones",
]

LEVELS = (0, 1, 2, 3, 4)


@dataclasses.dataclass(frozen=True)
class BackboneInfo:
    """What a backbone produces.

    Attributes:
      name: registry name (torchvision's function name for ResNets).
      family: ``"resnet"`` or ``"efficientnet"``.
      channels: channels of each feature level 0-4.
      strides: downsampling factor of each level (2, 4, 8, 16, 32).
    """

    name: str
    family: str
    channels: dict[int, int]
    strides: dict[int, int]


def list_backbones() -> tuple[str, ...]:
    """Names of the backbones jad knows.

    Returns:
      The names accepted by every function of :mod:`jad.backbones`.
    """
    return tuple(RESNET_SPECS) + tuple(EFFICIENTNET_SPECS)


def check_name(fn: str, name) -> str:
    """Returns ``name`` or raises ``ValueError`` listing the valid names.

    Args:
      fn: the caller, for the message.
      name: a backbone name.

    Returns:
      ``name``.
    """
    if not isinstance(name, str) or name not in list_backbones():
        raise ValueError(
            f"{fn}: unknown backbone {name!r}; valid names are "
            f"{', '.join(list_backbones())}."
        )
    return name


def backbone_info(name: str) -> BackboneInfo:
    """Channels and strides of the feature levels of backbone ``name``.

    Args:
      name: one of :func:`list_backbones`.

    Returns:
      BackboneInfo: e.g. ``backbone_info("wide_resnet50_2").channels[3] == 1024``.
    """
    check_name("backbone_info", name)
    strides = {level: 2 ** (level + 1) for level in LEVELS}
    if name in RESNET_SPECS:
        return BackboneInfo(name, "resnet", RESNET_SPECS[name].channels, strides)
    return BackboneInfo(
        name, "efficientnet", EFFICIENTNET_SPECS[name].channels, strides
    )


def build_module(name: str, levels: tuple[int, ...], head: bool, dtype: str | None):
    """The Flax module computing ``levels`` (and logits if ``head``) of ``name``.

    Args:
      name: a backbone name (:func:`list_backbones`).
      levels: feature levels to return.
      head: also compute the classifier's logits.
      dtype: compute dtype name (``None``: the parameters' float32).

    Returns:
      The (unbound) Flax module.
    """
    compute_dtype = None if dtype is None else jnp.dtype(dtype)
    if name in RESNET_SPECS:
        return ResNet(RESNET_SPECS[name], levels, head, compute_dtype)
    return EfficientNetLite(EFFICIENTNET_SPECS[name], levels, head, compute_dtype)
