"""Anomaly-detection methods behind one protocol (see :mod:`jad.methods.base`).

``jad.methods.patchcore`` and ``jad.methods.padim`` are the baselines,
``jad.methods.sgfr`` and ``jad.methods.psdl`` the seed methods; each registers itself so
:func:`get_method` and the command line find it by name.
"""

from jad.methods import padim, patchcore, psdl, sgfr
from jad.methods.base import (
    Method,
    get_method,
    list_methods,
    make_config,
    postprocess,
    register,
)
from jad.methods.padim import PaDiMConfig, PaDiMState
from jad.methods.patchcore import PatchCoreConfig, PatchCoreState

__all__ = [
    "Method",
    "PaDiMConfig",
    "PaDiMState",
    "PatchCoreConfig",
    "PatchCoreState",
    "get_method",
    "list_methods",
    "make_config",
    "padim",
    "patchcore",
    "postprocess",
    "psdl",
    "register",
    "sgfr",
]
