"""The ``jad`` command line (``jad --help``)."""
