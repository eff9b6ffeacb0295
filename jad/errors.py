"""Exceptions raised by jad.

Argument errors are plain ``ValueError`` / ``TypeError``; problems with files on disk
raise :class:`DatasetError` (a ``ValueError``) whose message names the file.
"""

__all__ = ["DatasetError", "WeightsError"]


class DatasetError(ValueError):
    """A file or folder of a dataset is missing, unreadable or inconsistent.

    The message always names the offending path.
    """


class WeightsError(ValueError):
    """A weight file is unreadable, truncated, corrupt or of an unknown type.

    The message always names the file.
    """
