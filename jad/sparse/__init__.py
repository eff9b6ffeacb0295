"""Sparse coding: Orthogonal Matching Pursuit, K-SVD and dictionary initialisers.

The kernels behind SGFR (OMP over a memory bank of nominal feature maps) and PSDL (one
K-SVD dictionary per feature location). All functions are pure and jittable, and vmap
over leading axes.
"""

from jad.sparse.dictionaries import dct_dictionary, haar_dictionary, random_dictionary
from jad.sparse.ksvd import KSVDResult, ksvd
from jad.sparse.omp import OMPResult, omp, omp_gram

__all__ = [
    "KSVDResult",
    "OMPResult",
    "dct_dictionary",
    "haar_dictionary",
    "ksvd",
    "omp",
    "omp_gram",
    "random_dictionary",
]
