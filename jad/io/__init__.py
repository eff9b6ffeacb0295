"""Files on disk: crash-safe folders with recorded digests (``jad.io.checkpoint``)."""

from jad.io.checkpoint import atomic_folder, file_digests, recover, verify_digests

__all__ = ["atomic_folder", "file_digests", "recover", "verify_digests"]
