"""ResNet and Wide-ResNet in Flax, with torchvision's exact architecture.

The modules mirror ``torchvision.models.resnet`` layer for layer (He et al. 2016;
Zagoruyko & Komodakis 2016 for the wide variants):

* stem: 7x7/2 convolution with symmetric padding 3, BatchNorm, ReLU, 3x3/2 max-pool
  with padding 1 (padded with -inf, as torch does);
* stages 1-4 of ``BasicBlock`` (ResNet-18/34) or ``Bottleneck`` (ResNet-50 and up)
  blocks. The bottleneck puts its stride on the 3x3 convolution ("ResNet v1.5", as
  torchvision does) and its inner width is ``planes * base_width / 64`` (128 for the
  wide variants, hence twice the channels of ResNet-50 inside each block);
* a 1x1/stride convolution plus BatchNorm on the shortcut where the shape changes;
* global average pooling and a linear classifier (1000 ImageNet classes).

BatchNorm always runs in inference mode with the running statistics stored in the
``batch_stats`` collection (epsilon 1e-5, torch's default). Images are NHWC; kernels are
HWIO (``port_torchvision`` converts torch's OIHW).

Feature levels: 0 is the stem activation (stride 2, after the ReLU and before the
max-pool, as timm's ``features_only`` gives it), 1-4 the outputs of ``layer1``..
``layer4`` (strides 4, 8, 16, 32). The module stops after the deepest level asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["RESNET_SPECS", "ResNet", "ResNetSpec"]

_BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """Architecture of one torchvision ResNet.

    Attributes:
      block: ``"basic"`` (two 3x3 convolutions) or ``"bottleneck"`` (1x1, 3x3, 1x1).
      layers: number of blocks in stages 1-4.
      base_width: torchvision's ``width_per_group`` (64, or 128 for Wide-ResNets).
    """

    block: str
    layers: tuple[int, int, int, int]
    base_width: int = 64

    @property
    def expansion(self) -> int:
        """Output channels of a block divided by its ``planes``."""
        return 1 if self.block == "basic" else 4

    @property
    def channels(self) -> dict[int, int]:
        """Channels of each feature level (0 = stem, 1-4 = stages)."""
        return {0: 64, **{i + 1: 64 * 2**i * self.expansion for i in range(4)}}


RESNET_SPECS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec("basic", (2, 2, 2, 2)),
    "resnet34": ResNetSpec("basic", (3, 4, 6, 3)),
    "resnet50": ResNetSpec("bottleneck", (3, 4, 6, 3)),
    "resnet101": ResNetSpec("bottleneck", (3, 4, 23, 3)),
    "resnet152": ResNetSpec("bottleneck", (3, 8, 36, 3)),
    "wide_resnet50_2": ResNetSpec("bottleneck", (3, 4, 6, 3), base_width=128),
    "wide_resnet101_2": ResNetSpec("bottleneck", (3, 4, 23, 3), base_width=128),
}


def _conv(features: int, size: int, stride: int, name: str, dtype) -> nn.Conv:
    pad = (size - 1) // 2
    return nn.Conv(
        features,
        (size, size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        name=name,
    )


def _bn(name: str, dtype) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=True, epsilon=_BN_EPS, dtype=dtype, name=name
    )


class _Block(nn.Module):
    """One BasicBlock or Bottleneck (names follow torchvision's attributes)."""

    kind: str
    planes: int
    stride: int
    base_width: int
    downsample: bool
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        dtype = self.dtype
        if self.kind == "basic":
            y = _conv(self.planes, 3, self.stride, "conv1", dtype)(x)
            y = nn.relu(_bn("bn1", dtype)(y))
            y = _bn("bn2", dtype)(_conv(self.planes, 3, 1, "conv2", dtype)(y))
            out_channels = self.planes
        else:
            width = self.planes * self.base_width // 64
            y = nn.relu(_bn("bn1", dtype)(_conv(width, 1, 1, "conv1", dtype)(x)))
            y = _conv(width, 3, self.stride, "conv2", dtype)(y)
            y = nn.relu(_bn("bn2", dtype)(y))
            out_channels = self.planes * 4
            y = _bn("bn3", dtype)(_conv(out_channels, 1, 1, "conv3", dtype)(y))
        if self.downsample:
            x = _conv(out_channels, 1, self.stride, "downsample_conv", dtype)(x)
            x = _bn("downsample_bn", dtype)(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """torchvision ResNet / Wide-ResNet trunk that returns hierarchical features.

    Attributes:
      spec: the architecture (one of :data:`RESNET_SPECS`).
      levels: feature levels to return, a sorted tuple of ints in 0..4.
      head: return the (N, 1000) classifier logits instead of the features (runs
        every stage).
      dtype: computation dtype (``None``: the input's; ``jnp.bfloat16`` for mixed
        precision). Parameters are stored in float32 either way.
    """

    spec: ResNetSpec
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
        deepest = 4 if self.head else max(self.levels)
        out = {}
        x = _conv(64, 7, 2, "conv1", dtype)(images)
        x = nn.relu(_bn("bn1", dtype)(x))
        if 0 in self.levels:
            out[0] = x
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_channels = 64
        for stage in range(deepest):
            planes = 64 * 2**stage
            for index in range(spec.layers[stage]):
                stride = 2 if stage > 0 and index == 0 else 1
                x = _Block(
                    spec.block,
                    planes,
                    stride,
                    spec.base_width,
                    downsample=index == 0
                    and (stride != 1 or in_channels != planes * spec.expansion),
                    dtype=dtype,
                    name=f"layer{stage + 1}_{index}",
                )(x)
                in_channels = planes * spec.expansion
            if stage + 1 in self.levels:
                out[stage + 1] = x
        if self.head:
            pooled = jnp.mean(x, axis=(1, 2))
            return nn.Dense(1000, dtype=dtype, name="fc")(pooled)
        return out
