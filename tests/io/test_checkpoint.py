"""Tests of jad.io.checkpoint: atomic folder swaps, recovery after crashes, digests."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jad import io
from jad.errors import DatasetError
from jad.io import checkpoint

ROOT = Path(__file__).resolve().parents[2]
NUM_FILES = 40


def _write(folder: Path, tag: str) -> None:
    for i in range(NUM_FILES):
        (folder / f"f{i:02d}.txt").write_text(f"{tag}:{i}" * 100)


def _tag(folder: Path) -> str:
    """The one tag all files of a complete folder hold; fails on a mixed folder."""
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"f{i:02d}.txt" for i in range(NUM_FILES)], names
    tags = {p.read_text().split(":")[0] for p in folder.iterdir()}
    assert len(tags) == 1, tags
    return tags.pop()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_atomic_folder_creates_and_replaces(tmp_path):
    target = tmp_path / "out"
    with checkpoint.atomic_folder(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        _write(tmp, "a")
        assert not target.exists()  # nothing visible before the block ends
    assert _tag(target) == "a"
    with checkpoint.atomic_folder(target) as tmp:
        _write(tmp, "b")
    assert _tag(target) == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no debris


def test_atomic_folder_error_in_body_keeps_the_old_folder(tmp_path):
    target = tmp_path / "out"
    with checkpoint.atomic_folder(target) as tmp:
        _write(tmp, "a")
    with pytest.raises(RuntimeError), checkpoint.atomic_folder(target) as tmp:
        _write(tmp, "b")
        raise RuntimeError
    assert _tag(target) == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("after", [False, True])
@pytest.mark.parametrize("failing_rename", [0, 1])
def test_interrupt_at_each_rename_keeps_a_complete_folder(
    tmp_path, monkeypatch, failing_rename, after
):
    target = tmp_path / "out"
    with checkpoint.atomic_folder(target) as tmp:
        _write(tmp, "a")
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == failing_rename + 1:
            if after:  # Ctrl-C right after the rename returned
                real_rename(src, dst)
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt), checkpoint.atomic_folder(target) as tmp:
        _write(tmp, "b")
    monkeypatch.setattr(checkpoint.os, "rename", real_rename)
    # Interrupted after step 3 the new folder is in; otherwise the old one is back.
    assert _tag(target) == ("b" if after and failing_rename == 1 else "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_recover_after_sigkill_between_the_renames(tmp_path):
    # The state SIGKILL leaves between steps 2 and 3: old aside, new complete.
    pid = _dead_pid()
    old = tmp_path / f"out.jad-old-{pid}-0000000a"
    new = tmp_path / f"out.jad-tmp-{pid}-0000000a"
    for folder, tag in ((old, "a"), (new, "b")):
        folder.mkdir()
        _write(folder, tag)
    actions = checkpoint.recover(tmp_path / "out")
    assert _tag(tmp_path / "out") == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert len(actions) == 2 and actions[0].startswith("restored")


def test_recover_cleans_leftovers_but_not_live_writers_or_user_folders(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    _write(target, "b")
    pid = _dead_pid()
    half_removed = tmp_path / f"out.jad-old-{pid}-0000000b"  # step 4 interrupted
    half_removed.mkdir()
    (half_removed / "f00.txt").write_text("a:0")
    orphan = tmp_path / f"out.jad-tmp-{pid}-0000000c"
    orphan.mkdir()
    live = tmp_path / f"out.jad-tmp-{os.getppid()}-0000000d"  # a running process's
    live.mkdir()
    users = [tmp_path / "out.tmpab12cd_9", tmp_path / "out.tmp20240101",
             tmp_path / f"out.jad-old-{pid}-mybackup", tmp_path / "outer.jad-tmp-1-x",
             tmp_path / f"out.jad-old-{pid}-0000000e-copy"]
    for folder in users:
        (folder / "state").mkdir(parents=True)  # look like detectors: still kept
    checkpoint.recover(target)
    assert _tag(target) == "b"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["out", live.name, *(p.name for p in users)])


def test_a_stale_old_folder_is_not_restored_after_the_user_removed_the_target(
    tmp_path,
):
    # SIGKILL after step 3 (the new folder is in, the old one not yet removed),
    # then the user deletes the target: the old folder is garbage, not restored.
    pid = _dead_pid()
    stale = tmp_path / f"out.jad-old-{pid}-0000000f"
    stale.mkdir()
    _write(stale, "a")
    assert checkpoint.recover(tmp_path / "out") == [f"removed {stale}"]
    assert list(tmp_path.iterdir()) == []


def test_recover_needs_no_listable_parent(tmp_path, monkeypatch):
    def refuse(self):
        raise PermissionError("not listable")

    monkeypatch.setattr(Path, "iterdir", refuse)
    assert checkpoint.recover(tmp_path / "out") == []


def test_file_digests_and_verify(tmp_path):
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"\x00" * 1000)
    (folder / "sub" / "b.bin").write_bytes(b"xyz")
    digests = checkpoint.file_digests(folder)
    assert list(digests) == ["a.bin", "sub/b.bin"]
    import hashlib

    assert digests["sub/b.bin"] == hashlib.sha256(b"xyz").hexdigest()
    checkpoint.verify_digests(folder, digests, source="meta.json")
    data = bytearray((folder / "a.bin").read_bytes())
    data[500:564] = b"\xff" * 64
    (folder / "a.bin").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"a\.bin does not match .*meta\.json"):
        checkpoint.verify_digests(folder, digests, source="meta.json")
    (folder / "a.bin").write_bytes(b"\x00" * 1000)
    (folder / "extra").write_text("?")
    with pytest.raises(DatasetError, match="extra is not one of the files"):
        checkpoint.verify_digests(folder, digests, source="meta.json")
    (folder / "extra").unlink()
    (folder / "sub" / "b.bin").unlink()
    with pytest.raises(DatasetError, match=r"b\.bin is missing"):
        checkpoint.verify_digests(folder, digests, source="meta.json")


# A writer that imports only this module (not jax), so each kill costs ~0.1 s.
_WRITER = textwrap.dedent(
    """
    import importlib.util, sys, types
    from pathlib import Path
    root, target = Path(sys.argv[1]), Path(sys.argv[2])
    package = types.ModuleType("jad")
    package.__path__ = [str(root / "jad")]
    sys.modules["jad"] = package
    for name in ("errors", "io.checkpoint"):
        path = root / "jad" / (name.replace(".", "/") + ".py")
        spec = importlib.util.spec_from_file_location("jad." + name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["jad." + name] = module
        spec.loader.exec_module(module)
    checkpoint = sys.modules["jad.io.checkpoint"]
    print("ready", flush=True)
    i = 0
    while True:
        tag = "ab"[i % 2]
        with checkpoint.atomic_folder(target) as tmp:
            for j in range(NUM_FILES):
                (tmp / f"f{j:02d}.txt").write_text(f"{tag}:{j}" * 100)
        i += 1
    """
).replace("NUM_FILES", str(NUM_FILES))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_random_kills_leave_the_old_or_the_new_folder(tmp_path, sig):
    rng = random.Random(0 if sig == signal.SIGKILL else 1)
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    target = tmp_path / "work" / "out"
    target.parent.mkdir()
    with checkpoint.atomic_folder(target) as tmp:
        _write(tmp, "a")
    seen = set()
    for _ in range(15):
        process = subprocess.Popen(
            [sys.executable, str(script), str(ROOT), str(target)],
            stdout=subprocess.PIPE, text=True,
        )
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.05))
        process.send_signal(sig)
        process.wait(timeout=30)
        process.stdout.close()
        checkpoint.recover(target)  # what the next save or load does first
        seen.add(_tag(target))  # complete, one tag: never neither, never mixed
        assert sorted(p.name for p in target.parent.iterdir()) == ["out"]
    assert seen  # (both tags usually appear; which one depends on timing)


# ------------------------------------------------------------------ pytrees


class _Pair(NamedTuple):
    mean: jax.Array
    scale: jax.Array


@flax.struct.dataclass
class _State:
    banks: dict
    params: dict
    opt: object
    config: str = flax.struct.field(pytree_node=False, default="cfg")


def _nested_state(scale=1.0):
    opt = optax.adam(1e-3).init({"w": jnp.ones(3)})
    return _State(
        banks={2: _Pair(jnp.arange(6.0).reshape(2, 3) * scale, jnp.ones(())),
               3: _Pair(jnp.zeros((1, 3)), jnp.full((), 2.0))},
        params={"Dense_0": {"kernel": jnp.eye(2) * scale}},
        opt=opt,
    )


def test_a_nested_state_round_trips_into_its_template(tmp_path):
    state = _nested_state(3.0)
    io.save_pytree(tmp_path / "s", state)
    template = jax.eval_shape(lambda: _nested_state())
    back = io.restore_pytree(tmp_path / "s", template)
    assert type(back) is _State and back.config == "cfg"
    assert set(back.banks) == {2, 3} and isinstance(back.banks[2], _Pair)
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_ctrl_c_during_save_pytree_is_raised_after_the_write(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    real_save = ocp.PyTreeCheckpointer.save
    calls = []

    def save_then_interrupted(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of orbax's write
        calls.append(signal.getsignal(signal.SIGINT))
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "save", save_then_interrupted)
    state = _nested_state(2.0)
    with pytest.raises(KeyboardInterrupt):
        io.save_pytree(tmp_path / "s", state)
    assert calls and calls[0] is not signal.default_int_handler  # held back inside
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    back = io.restore_pytree(tmp_path / "s", jax.eval_shape(lambda: _nested_state()))
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)  # the write was completed first


def test_restore_lists_what_is_missing_extra_and_misshaped(tmp_path):
    state = _nested_state()
    io.save_pytree(tmp_path / "s", state)
    banks = {2: _Pair(jnp.zeros((4, 3)), jnp.ones(())), 5: state.banks[3]}
    template = state.replace(banks=banks)
    with pytest.raises(DatasetError) as err:
        io.restore_pytree(tmp_path / "s", template)
    text = str(err.value)
    assert "missing: banks/5/" in text and "extra: banks/3/" in text
    assert "banks/2/mean: saved ((2, 3) float32), expected ((4, 3) float32)" in text
    # paths only: the misshaped leaf passes, the missing one still does not
    with pytest.raises(DatasetError, match="missing: banks/5/"):
        io.restore_pytree(tmp_path / "s", template, shapes=False)


def test_tree_mismatches_compares_paths_shapes_and_dtypes():
    a = {"x": np.zeros((2,), np.float32), "y": {"z": np.zeros((1,), np.int32)}}
    assert io.tree_mismatches(a, a) == []
    b = {"x": np.zeros((2,), np.float64), "w": np.zeros(())}
    assert io.tree_mismatches(a, b) == [
        "extra: y/z ((1,) int32)",
        "missing: w (() float64)",
        "x: saved ((2,) float32), expected ((2,) float64)",
    ]
    assert io.tree_mismatches(a, b, shapes=False) == [
        "extra: y/z ((1,) int32)", "missing: w (() float64)"]


def test_restore_of_a_folder_that_is_not_a_checkpoint_names_it(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(DatasetError, match="cannot restore the saved arrays"):
        io.restore_pytree(tmp_path / "s", {"x": np.zeros(2)})
