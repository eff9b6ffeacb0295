"""Sparse coding: Orthogonal Matching Pursuit, K-SVD and dictionary initialisers.

The kernels behind SGFR (OMP over a memory bank of nominal feature maps) and PSDL (one
K-SVD dictionary per feature location). All functions are pure and jittable, and vmap
over leading axes.
"""

from jad.sparse.omp import OMPResult, omp, omp_gram

__all__ = ["OMPResult", "omp", "omp_gram"]
