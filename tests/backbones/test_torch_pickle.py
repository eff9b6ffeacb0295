"""jad.backbones.torch_pickle: torch-free reading of .pth files, and refusing code.

A PyTorch checkpoint is a pickle, and unpickling an untrusted pickle can run any
code. These tests plant payloads (``os.system``, ``builtins.exec``,
``subprocess.call``) that would create a marker file, at every place of both
containers where jad unpickles, and check that jad raises ``WeightsError`` naming the
file and that the marker never appears. Real checkpoints written by ``torch.save``
in both containers are compared with ``torch.load``'s own tensors.
"""

from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import re
import shlex
import subprocess
import zipfile

import numpy as np
import pytest

from jad import backbones as bb
from jad.backbones.torch_pickle import read_torch_checkpoint
from jad.errors import WeightsError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_SYS_INFO = {
    "protocol_version": 1001,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}
PAYLOADS = ("os.system", "builtins.exec", "subprocess.call")
LEGACY_PICKLES = ("magic", "protocol", "sys_info", "main", "keys")


class _Payload:
    """Unpickles into a call that creates ``marker`` (``kind`` picks the call)."""

    def __init__(self, kind: str, marker):
        self.kind, self.marker = kind, str(marker)

    def __reduce__(self):
        if self.kind == "os.system":
            return os.system, (f"touch {shlex.quote(self.marker)}",)
        if self.kind == "builtins.exec":
            return builtins.exec, (f"open({self.marker!r}, 'w').close()",)
        return subprocess.call, (["touch", self.marker],)


def _legacy_file(path, **replace) -> None:
    """A legacy-format checkpoint (an empty state dict) with some pickles replaced.

    The layout of ``torch.save(..., _use_new_zipfile_serialization=False)``: magic
    number, protocol version, system info, the main pickle, the storage keys (here
    none, so no storage bytes follow).
    """
    parts = {
        "magic": _LEGACY_MAGIC,
        "protocol": 1001,
        "sys_info": _SYS_INFO,
        "main": {},
        "keys": [],
    }
    parts.update(replace)
    path.write_bytes(
        b"".join(pickle.dumps(parts[name], protocol=2) for name in LEGACY_PICKLES)
    )


def _zip_file(path, data_pkl: bytes, storages=None) -> None:
    """A zip-format checkpoint laid out as ``torch.save`` does (``archive/...``)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw)
        archive.writestr("archive/version", "3\n")


def _refused(path, marker, read=bb.read_state_dict) -> None:
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        read(path)
    assert not marker.exists(), "the weight file ran code"


@pytest.mark.parametrize("kind", PAYLOADS)
def test_payloads_run_under_plain_pickle(tmp_path, kind):
    # Guards the tests below: each payload really runs when unpickled by pickle.
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps(_Payload(kind, marker), protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("where", LEGACY_PICKLES)
def test_legacy_file_with_code_is_refused_without_running_it(tmp_path, where, kind):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    _legacy_file(path, **{where: _Payload(kind, marker)})
    _refused(path, marker)


@pytest.mark.parametrize("where", ["sys_info", "keys", "main"])
def test_legacy_code_hidden_inside_plain_data_is_refused(tmp_path, where):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    hidden = {"type_sizes": [1, (2, _Payload("builtins.exec", marker))]}
    _legacy_file(path, **{where: hidden})
    _refused(path, marker)


@pytest.mark.parametrize("kind", PAYLOADS)
def test_zip_file_with_code_in_data_pkl_is_refused_without_running_it(tmp_path, kind):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    _zip_file(
        path,
        pickle.dumps({"conv1.weight": _Payload(kind, marker)}, protocol=2),
    )
    _refused(path, marker)


@pytest.mark.parametrize("container", ["legacy:sys_info", "legacy:keys", "zip"])
def test_load_pretrained_refuses_a_weight_file_with_code(tmp_path, container):
    # The path a CLI ``--weights`` flag or a detector.json's weights field takes.
    marker = tmp_path / "MARKER"
    path = tmp_path / "resnet18-evil.pth"
    payload = _Payload("os.system", marker)
    if container == "zip":
        _zip_file(path, pickle.dumps(payload, protocol=2))
    else:
        _legacy_file(path, **{container.split(":")[1]: payload})
    _refused(
        path,
        marker,
        lambda p: bb.load_pretrained("resnet18", weights=p, cache_dir=tmp_path / "c"),
    )
    assert not list((tmp_path / "c").glob("resnet18-*"))  # nothing was cached


@pytest.mark.parametrize(
    "where, value",
    [
        ("magic", 12345),
        ("magic", "not a number"),
        ("protocol", 1000),
        ("sys_info", {"protocol_version": 1001, "little_endian": False}),
        ("keys", "0"),
    ],
)
def test_legacy_file_with_wrong_header_is_refused(tmp_path, where, value):
    path = tmp_path / "odd.pth"
    _legacy_file(path, **{where: value})
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        bb.read_state_dict(path)


def _crafted_tensor_zip(path, offset, size, stride, state=None, numel=4):
    """A zip checkpoint whose one tensor has a hand-written view of its storage."""
    torch = pytest.importorskip("torch")
    storage = object()

    class _View:
        def __reduce__(self):
            args = (storage, offset, size, stride, False, collections.OrderedDict())
            if state is None:
                return torch._utils._rebuild_tensor_v2, args
            return torch._utils._rebuild_tensor_v2, args, state

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return ("storage", torch.FloatStorage, "0", "cpu", numel)
            return None

    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump({"w": _View()})
    raw = np.arange(numel, dtype=np.float32).tobytes()
    _zip_file(path, buffer.getvalue(), {"0": raw})


def test_crafted_in_bounds_view_is_read(tmp_path):
    path = tmp_path / "view.pth"
    _crafted_tensor_zip(path, 1, (2, 2), (2, 0))
    np.testing.assert_array_equal(
        read_torch_checkpoint(path)["w"], np.array([[1, 1], [3, 3]], np.float32)
    )


@pytest.mark.parametrize(
    "offset, size, stride, state",
    [
        (-1, (4,), (1,), None),  # negative offset: before the storage
        (0, (4,), (-1,), None),  # negative stride: before the storage
        (2, (3,), (1,), None),  # past the end
        (4, (), (), None),  # 0-d past the end
        (0, (-2,), (1,), None),  # negative size
        (0, (2, 2), (1,), None),  # size and stride of different lengths
        (0, (2,), (1,), {"offset": -100}),  # a BUILD on the tensor
        (0, (2,), (1,), {"size": (10**6,)}),
    ],
)
def test_tensor_views_outside_their_storage_are_refused(
    tmp_path, offset, size, stride, state
):
    path = tmp_path / "view.pth"
    _crafted_tensor_zip(path, offset, size, stride, state)
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        read_torch_checkpoint(path)


# ------------------------------------------------------------- real torch.save files


def _reference_state(torch):
    """Tensors of every storage dtype, views of shared storages, 0-d tensors."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=generator)
    module = torch.nn.BatchNorm1d(3)  # an OrderedDict with _metadata, 0-d int64
    state = {
        "float32": torch.randn(2, 3, generator=generator),
        "float64": torch.randn(3, generator=generator).double(),
        "float16": torch.randn(5, generator=generator).half(),
        "bfloat16": torch.randn(2, 3, generator=generator).bfloat16(),
        "int64": torch.arange(-3, 5),
        "int32": torch.arange(-3, 5, dtype=torch.int32),
        "int16": torch.arange(-3, 5, dtype=torch.int16),
        "int8": torch.arange(-3, 5, dtype=torch.int8),
        "uint8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "base": base,
        "transposed": base.t(),  # same storage, non-contiguous
        "strided": base[1:, 1::2],  # same storage, offset and strides
        "column": base[:, 3],
        "same_tensor_twice": base,
        "scalar": torch.tensor(2.5),
        "scalar_view": base[2, 1],  # 0-d view with an offset
        "expanded": torch.arange(3.0).expand(2, 3),  # stride 0
        "empty": torch.zeros(0, 3),
        "parameter": torch.nn.Parameter(torch.randn(3, generator=generator)),
        "bfloat16_view": torch.randn(4, 4, generator=generator).bfloat16()[::2, 1:],
    }
    module.running_mean.copy_(torch.randn(3, generator=generator))
    return state, module.state_dict()


def _as_numpy(tensor) -> np.ndarray:
    tensor = tensor.detach()
    if str(tensor.dtype) == "torch.bfloat16":  # jad reads bfloat16 as float32
        tensor = tensor.float()
    return tensor.numpy()


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_torch_save_files_read_as_torch_load_reads_them(tmp_path, container):
    torch = pytest.importorskip("torch")
    state, module_state = _reference_state(torch)
    path = tmp_path / f"{container}.pth"
    torch.save(
        {"state": state, "module": module_state},  # nested dicts, as in a trainer
        path,
        _use_new_zipfile_serialization=container == "zip",
    )
    assert zipfile.is_zipfile(path) == (container == "zip")
    got = read_torch_checkpoint(path)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    assert list(got) == ["state", "module"]
    assert list(got["state"]) == list(state)
    assert list(got["module"]) == list(module_state)
    saved = {"state": state, "module": module_state}
    for part in ("state", "module"):
        for key, tensor in reference[part].items():
            expected = _as_numpy(tensor)
            # torch.load itself gives back the tensors that were saved
            np.testing.assert_array_equal(expected, _as_numpy(saved[part][key]))
            assert got[part][key].dtype == expected.dtype, key
            assert got[part][key].shape == expected.shape, key
            np.testing.assert_array_equal(got[part][key], expected, err_msg=key)


def test_read_arrays_are_independent_copies(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(6.0)
    path = tmp_path / "shared.pth"
    torch.save({"a": base, "b": base[2:]}, path, _use_new_zipfile_serialization=False)
    got = read_torch_checkpoint(path)
    got["a"][3] = -1.0
    np.testing.assert_array_equal(got["b"], [2.0, 3.0, 4.0, 5.0])


def test_expanded_view_bomb_and_oversized_zip_entry_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from jad.backbones.torch_pickle import read_torch_checkpoint

    bomb = tmp_path / "bomb.pth"  # 1.5 kB that would materialise 1.5 GB
    torch.save({"w": torch.zeros(1).expand(20000, 20000)}, bomb)
    with pytest.raises(WeightsError, match="expanded view"):
        read_torch_checkpoint(str(bomb))
    small = tmp_path / "small.pth"
    torch.save({"w": torch.zeros(1).expand(4, 4)}, small)  # fine: 16 elements
    assert read_torch_checkpoint(str(small))["w"].shape == (4, 4)
    # a zip entry larger than its header announces is refused before reading it
    import zipfile

    lying = tmp_path / "lying.pth"
    with zipfile.ZipFile(small) as src, zipfile.ZipFile(lying, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if "/data/" in info.filename:
                data = b"\0" * (1 << 20)
            dst.writestr(info.filename, data, zipfile.ZIP_DEFLATED)
    with pytest.raises(WeightsError, match="holds 1048576 bytes, not the 4"):
        read_torch_checkpoint(str(lying))
