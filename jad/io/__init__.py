"""Files on disk: crash-safe folders with recorded digests, pytrees saved with orbax."""

from jad.io.checkpoint import (
    atomic_folder,
    file_digests,
    recover,
    restore_pytree,
    save_pytree,
    tree_mismatches,
    verify_digests,
)

__all__ = [
    "atomic_folder",
    "file_digests",
    "recover",
    "restore_pytree",
    "save_pytree",
    "tree_mismatches",
    "verify_digests",
]
