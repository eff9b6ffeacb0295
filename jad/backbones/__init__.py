"""ImageNet backbones in Flax: ResNet and Wide-ResNet (torchvision), EfficientNet-Lite.

Typical use::

    variables = jad.backbones.load_pretrained("wide_resnet50_2")
    images = jad.backbones.normalize_imagenet(rgb01)          # (N, H, W, 3)
    feats = jad.backbones.extract_features(
        "wide_resnet50_2", variables, images, levels=(2, 3))  # {2: ..., 3: ...}
"""

from jad.backbones._xla import CONV_COMPILER_OPTIONS
from jad.backbones.convert import port_torchvision, read_state_dict
from jad.backbones.efficientnet import EfficientNetLite
from jad.backbones.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    extract_features,
    init_variables,
    logits,
    normalize_imagenet,
)
from jad.backbones.pretrained import (
    TORCHVISION_URLS,
    default_cache_dir,
    load_pretrained,
    variables_digest,
)
from jad.backbones.registry import BackboneInfo, backbone_info, list_backbones
from jad.backbones.resnet import ResNet

__all__ = [
    "CONV_COMPILER_OPTIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TORCHVISION_URLS",
    "BackboneInfo",
    "EfficientNetLite",
    "ResNet",
    "backbone_info",
    "default_cache_dir",
    "extract_features",
    "init_variables",
    "list_backbones",
    "load_pretrained",
    "logits",
    "normalize_imagenet",
    "port_torchvision",
    "read_state_dict",
    "variables_digest",
]
