"""jad: unsupervised visual anomaly detection and localisation in JAX.

Subpackages: ``jad.sparse`` (OMP, K-SVD, dictionaries), ``jad.backbones`` (Flax
ResNets and EfficientNet-Lite), ``jad.data`` (datasets, preprocessing, built-in data),
``jad.ops`` (blur, resize, morphology, ImageNet normalisation, patches, k-NN, random
projections, Gaussians), ``jad.io`` (crash-safe saved folders),
``jad.metrics``, ``jad.viz``, ``jad.methods`` (PatchCore, PaDiM), ``jad.pipeline`` and
``jad.evaluation``.
"""

__version__ = "0.1.0"

from jad import (  # noqa: E402
    backbones,
    data,
    errors,
    evaluation,
    io,
    methods,
    metrics,
    ops,
    pipeline,
    sparse,
    viz,
)

__all__ = [
    "__version__",
    "backbones",
    "data",
    "errors",
    "evaluation",
    "io",
    "methods",
    "metrics",
    "ops",
    "pipeline",
    "sparse",
    "viz",
]
