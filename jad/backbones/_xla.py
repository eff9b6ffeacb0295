"""Per-computation XLA options: faster CPU kernels for convolutional networks.

XLA's CPU backend can run matrix products and convolutions through its YNNPACK
kernels instead of its default (Eigen) ones. For the backbones this is much faster on
CPU (256 x 256, batch 8, 2 cores, measured: ResNet-18 28 -> 37 img/s, WRN-50-2 4.9 ->
6.2 img/s, EfficientNet-Lite0 51 -> 76 img/s; PyTorch: 31, 5.4, 40), but it slows the
many small products of OMP/K-SVD by about 15 %. So jad does not set it for the process
(``XLA_FLAGS``): :func:`conv_jit` compiles only the computations that are dominated by
the backbone (feature extraction, embedding, anomaly maps) with it, as a per-compilation
option (``jax.jit(..., compiler_options=...)``). Other backends ignore CPU options.

Set the environment variable ``JAD_XLA_CPU_KERNELS=default`` to compile everything
with XLA's defaults. If this XLA does not know the option (it is experimental), jad
warns once and falls back to the defaults.

Inside an outer ``jax.jit`` the inner function is inlined and the options of the outer
compilation apply; pass :data:`CONV_COMPILER_OPTIONS` to your own ``jax.jit`` to get
the same kernels there.
"""

from __future__ import annotations

import functools
import os
import warnings

import jax

__all__ = ["CONV_COMPILER_OPTIONS", "conv_jit"]

_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CONV_COMPILER_OPTIONS: dict[str, str] = {_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}

# False once XLA rejected the options, or when disabled by the environment.
_state = {"enabled": os.environ.get("JAD_XLA_CPU_KERNELS", "fast") != "default"}


def conv_jit(fun=None, **jit_kwargs):
    """``jax.jit`` with :data:`CONV_COMPILER_OPTIONS`, falling back to plain ``jit``.

    Usable as ``conv_jit(f, static_argnames=...)`` or as a decorator
    ``@functools.partial(conv_jit, static_argnames=...)``.
    """
    if fun is None:
        return functools.partial(conv_jit, **jit_kwargs)
    fast = jax.jit(fun, compiler_options=CONV_COMPILER_OPTIONS, **jit_kwargs)
    plain = jax.jit(fun, **jit_kwargs)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        # Under a trace (jit, grad, vmap) the call is inlined into the outer
        # computation, where per-call compiler options are not allowed.
        if _state["enabled"] and not _traced(args, kwargs):
            try:
                return fast(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 (only an option error is handled)
                if _nested(err):
                    return plain(*args, **kwargs)
                if not _rejects_option(err):
                    raise
                _state["enabled"] = False
                warnings.warn(
                    f"jad: this XLA rejects the compiler option {_OPTION!r} ({err}); "
                    "compiling with XLA's default CPU kernels.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return plain(*args, **kwargs)

    call.fast = fast
    call.plain = plain
    return call


def _traced(args, kwargs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs)))


def _nested(err: Exception) -> bool:
    """A jit with options called inside another trace (e.g. on closed-over tracers)."""
    return "top-level" in str(err) and "compiler_options" in str(err)


def _rejects_option(err: Exception) -> bool:
    """Whether ``err`` is XLA refusing one of the options (unknown name or value)."""
    message = str(err)
    return "compile option" in message or any(
        key in message for key in CONV_COMPILER_OPTIONS
    )
