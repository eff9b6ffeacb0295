"""jad: unsupervised visual anomaly detection and localisation in JAX.

Subpackages (imported on demand): ``jad.sparse`` (OMP, K-SVD, dictionaries).
"""

__version__ = "0.1.0"

from jad import errors, sparse  # noqa: E402

__all__ = ["__version__", "errors", "sparse"]
