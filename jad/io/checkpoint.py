"""Crash-safe folders on disk: atomic replacement, recovery, file digests.

A saved folder (a detector, later a training checkpoint) is written beside its
destination and swapped in with renames, so that an interruption at any point, even
SIGKILL, leaves the destination holding either the complete old folder or the complete
new one:

1. the new folder is written to ``<name>.jad-tmp-<pid>-<token>`` next to ``<name>``
   and its files are flushed to disk (``fsync``);
2. an existing ``<name>`` is renamed to ``<name>.jad-old-<pid>-<token>``;
3. the new folder is renamed to ``<name>``;
4. the old one is removed.

A ``KeyboardInterrupt`` or error between 2 and 3 renames the old folder back at once.
After a SIGKILL (or power loss) :func:`recover`, which every save and load calls first,
finishes the job: cut between 2 and 3 (``<name>`` missing, the same swap's temporary
folder still there), the old folder (complete: it was moved aside whole) is renamed
back; other leftovers of writers that are no longer running are removed. Only names
of the exact form ``<name>.jad-old-<pid>-<8 hex digits>`` (or ``.jad-tmp-``) are
touched, and those of a writer that is still running (its pid, on this machine) are
left alone, so two processes never delete each other's work; two writers of the same
folder at the same time are not supported (the last rename wins).

:func:`save_pytree` and :func:`restore_pytree` write any pytree of arrays (a method
state) with orbax and read it back into a template, listing what does not fit
(:func:`tree_mismatches`).

:func:`file_digests` and :func:`verify_digests` record and check the SHA-256 of every
file of a folder, so a truncated, edited or bit-flipped file is reported by name
instead of loading silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jad.errors import DatasetError

__all__ = [
    "atomic_folder",
    "file_digests",
    "recover",
    "restore_pytree",
    "save_pytree",
    "tree_mismatches",
    "verify_digests",
]

_TMP = ".jad-tmp-"
_OLD = ".jad-old-"
# What follows the marker: the writer's pid and an 8-hex-digit token of the swap.
_TOKEN = re.compile(r"(\d+)-([0-9a-f]{8})")
_CHUNK = 1 << 22


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not inside a save while it recovers
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _leftovers(directory: Path) -> tuple[dict, dict]:
    """({token: old folder}, {token: temporary folder}) of dead writers.

    Only names of the exact form ``<name>.jad-old-<pid>-<8 hex digits>`` (and
    ``.jad-tmp-``) count, so a user's folder is never taken for a leftover. A
    parent that cannot be listed has none that can be recovered.
    """
    parent, name = directory.parent, directory.name
    old, tmp = {}, {}
    try:
        entries = list(parent.iterdir())
    except OSError:
        return old, tmp
    for entry in entries:
        if not entry.name.startswith(name):
            continue
        rest = entry.name[len(name):]
        for marker, found in ((_OLD, old), (_TMP, tmp)):
            match = rest.startswith(marker) and _TOKEN.fullmatch(rest[len(marker):])
            if (match and entry.is_dir() and not entry.is_symlink()
                    and not _pid_alive(int(match.group(1)))):
                found[rest[len(marker):]] = entry
    return old, tmp


def recover(directory) -> list[str]:
    """Finishes or undoes an interrupted :func:`atomic_folder` swap of ``directory``.

    An old folder is put back only when the swap was cut between its two renames:
    ``directory`` is missing and the same swap's temporary folder still exists.
    Otherwise (the new folder was renamed in, or the user removed ``directory``
    since) the leftovers are removed.

    Args:
      directory: the destination folder (absolute or relative path).

    Returns:
      One line per action taken (empty when there was nothing to do), e.g.
      ``"restored /x/bottle from bottle.jad-old-123-0a1b2c3d"``.
    """
    directory = Path(directory).absolute()
    old, tmp = _leftovers(directory)
    actions = []
    if not os.path.lexists(directory):
        cut = [token for token in old if token in tmp]
        if cut:
            token = max(cut, key=lambda t: old[t].stat().st_mtime)
            os.rename(old.pop(token), directory)
            _fsync_dir(directory.parent)
            actions.append(f"restored {directory} from "
                           f"{directory.name}{_OLD}{token}")
    for leftover in [*old.values(), *tmp.values()]:
        shutil.rmtree(leftover, ignore_errors=True)
        if not os.path.lexists(leftover):
            actions.append(f"removed {leftover}")
    return actions


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb+") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(folder))


@contextlib.contextmanager
def atomic_folder(directory) -> Iterator[Path]:
    """Writes a folder that replaces ``directory`` atomically when the block ends.

    The body writes into the yielded temporary folder (next to ``directory``, on the
    same file system). On normal exit the folder is flushed to disk and swapped in
    (steps 1-4 of the module docstring); on an exception it is removed and
    ``directory`` is untouched.

    Args:
      directory: the destination; its parent is created if needed.

    Returns:
      A context manager yielding the temporary folder's :class:`~pathlib.Path`.

    Example:
      >>> import tempfile, pathlib
      >>> root = pathlib.Path(tempfile.mkdtemp())
      >>> with atomic_folder(root / "out") as tmp:
      ...     _ = (tmp / "a.txt").write_text("new")
      >>> (root / "out" / "a.txt").read_text()
      'new'
    """
    directory = Path(directory).absolute()
    recover(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = directory.parent / f"{directory.name}{_TMP}{token}"
    tmp.mkdir()
    aside = directory.parent / f"{directory.name}{_OLD}{token}"
    try:
        yield tmp
        _fsync_tree(tmp)
        if os.path.lexists(directory):
            os.rename(directory, aside)
        os.rename(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        # Cut between the two renames (an error or Ctrl-C): the old one goes back.
        # (The aside name is this swap's own: if it exists, it is the old folder,
        # even when the interrupt came before `moved_aside` was set.)
        if os.path.lexists(aside) and not os.path.lexists(directory):
            os.rename(aside, directory)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if os.path.lexists(aside) and os.path.lexists(directory):
            if aside.is_dir() and not aside.is_symlink():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(root) -> dict[str, str]:
    """SHA-256 of every file under ``root``.

    Args:
      root: a folder.

    Returns:
      ``{relative posix path: hex digest}``, sorted by path.
    """
    root = Path(root)
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            found[path.relative_to(root).as_posix()] = _sha256(path)
    return dict(sorted(found.items()))


def verify_digests(root, recorded: dict, *, source) -> None:
    """Checks the files under ``root`` against digests from :func:`file_digests`.

    Args:
      root: the folder.
      recorded: ``{relative path: hex digest}`` recorded when the folder was saved.
      source: the file the digests were read from (named in the message).

    Returns:
      None.

    Raises:
      DatasetError: a recorded file is missing or its content changed, or the folder
        holds a file that was not recorded (each message names the file).
    """
    root = Path(root)
    for rel, digest in recorded.items():
        path = root / rel
        if not path.is_file():
            raise DatasetError(
                f"{path} is missing (recorded in {source}): the saved folder is "
                "incomplete."
            )
        if _sha256(path) != digest:
            raise DatasetError(
                f"{path} does not match the SHA-256 recorded in {source}: the file "
                "was truncated, corrupted or changed after saving."
            )
    for folder, _, files in os.walk(root):
        for name in files:
            rel = (Path(folder) / name).relative_to(root).as_posix()
            if rel not in recorded:
                raise DatasetError(
                    f"{Path(folder) / name} is not one of the files recorded in "
                    f"{source}: the saved folder was changed after saving."
                )


# ------------------------------------------------------------------ pytrees
#
# A state (any pytree of arrays: flax.struct dataclasses, nested dicts of per-level
# banks, Flax parameter trees, optax states) is saved as its flax "state dict" (nested
# dicts with string keys) by orbax, and restored into a template of the same
# structure (``jax.eval_shape`` of the method's init), so the restored value has the
# template's Python types (dataclasses, NamedTuples, int dict keys) and a folder that
# does not fit is refused with a list of what differs (big_vision's merge_params).


def _flat(tree) -> dict[str, Any]:
    import flax.serialization
    import flax.traverse_util

    state = flax.serialization.to_state_dict(tree)
    if not isinstance(state, dict):
        return {"": state}
    return flax.traverse_util.flatten_dict(state, sep="/")


def _dtype(leaf) -> str:
    """The leaf's dtype as text (PRNG key dtypes are no numpy dtypes)."""
    dtype = getattr(leaf, "dtype", None)
    return type(leaf).__name__ if dtype is None else str(np.dtype(dtype)) if (
        not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)) else str(dtype)


def _describe(leaf) -> str:
    shape = tuple(getattr(leaf, "shape", ()))
    dtype = getattr(leaf, "dtype", type(leaf).__name__)
    return f"{shape} {dtype}"


def tree_mismatches(found, template, *, shapes: bool = True) -> list[str]:
    """What differs between a restored tree and the template it should fit.

    Args:
      found: a pytree (e.g. nested dicts of arrays read from disk).
      template: the expected pytree (arrays or ``jax.ShapeDtypeStruct`` leaves).
      shapes: also compare each leaf's shape and dtype (not only the paths).

    Returns:
      One line per difference, sorted: ``missing: PATH (shape dtype)`` (in the
      template only), ``extra: PATH`` (in ``found`` only), ``PATH: saved (shape
      dtype), expected (shape dtype)``. Empty when they fit.

    Example:
      >>> import numpy as np
      >>> tree_mismatches({"a": np.zeros(2)}, {"a": np.zeros(3), "b": np.zeros(1)})
      ['a: saved ((2,) float64), expected ((3,) float64)', 'missing: b ((1,) float64)']
    """
    have, want = _flat(found), _flat(template)
    lines = [f"missing: {p} ({_describe(want[p])})" for p in want if p not in have]
    lines += [f"extra: {p} ({_describe(have[p])})" for p in have if p not in want]
    if shapes:
        for path in have.keys() & want.keys():
            a, b = have[path], want[path]
            if (tuple(getattr(a, "shape", ())) != tuple(getattr(b, "shape", ()))
                    or _dtype(a) != _dtype(b)):
                lines.append(f"{path}: saved ({_describe(a)}), expected "
                             f"({_describe(b)})")
    return sorted(lines)


def save_pytree(directory, tree) -> None:
    """Writes a pytree of arrays with orbax (inside :func:`atomic_folder`, usually).

    Args:
      directory: the folder to create (must not exist).
      tree: any pytree of arrays; static fields of ``flax.struct`` dataclasses
        (a method's config) are not saved.

    Returns:
      None.

    A Ctrl-C during the write is held back until orbax has finished it, then
    raised (see :func:`_interrupts_deferred`).
    """
    import flax.serialization
    import orbax.checkpoint as ocp

    state = flax.serialization.to_state_dict(tree)
    with _interrupts_deferred():
        ocp.PyTreeCheckpointer().save(Path(directory).absolute(), state)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Holds a Ctrl-C (SIGINT) back until the block ends, then raises it.

    orbax writes with an event loop and worker threads; a ``KeyboardInterrupt``
    raised inside them can leave threads behind, and one that lands in a finaliser
    is swallowed by Python, so the process keeps running. With the signal only
    recorded during the write, the interrupt is raised once the write is complete
    (the folder is still swapped in only by :func:`atomic_folder`). Only in the main
    thread, where Python handles signals; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    except ValueError:  # not the main interpreter
        yield
        return
    if previous is None:  # installed outside Python: restore Python's default
        previous = signal.default_int_handler
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(*caught[0])
        elif caught and previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def restore_pytree(directory, template, *, shapes: bool = True):
    """Reads a pytree saved by :func:`save_pytree` into ``template``'s structure.

    Args:
      directory: the folder written by :func:`save_pytree`.
      template: a pytree of the expected structure (leaves: arrays or
        ``jax.ShapeDtypeStruct``, e.g. ``jax.eval_shape`` of an init); its static
        fields (a method's config) are kept.
      shapes: refuse leaves whose shape or dtype differ from the template's (False:
        compare the paths only, for formats that did not record the sizes).

    Returns:
      The restored pytree: the template's types with the saved arrays (on the
      default device).

    Raises:
      DatasetError: the folder cannot be read, or does not fit the template (the
        message lists every missing, extra and misshaped entry).
    """
    import flax.serialization
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    try:
        raw = ocp.PyTreeCheckpointer().restore(directory)
    except Exception as err:  # orbax and tensorstore raise many types
        first = (str(err).splitlines() or [""])[0]
        raise DatasetError(
            f"{directory}: cannot restore the saved arrays ({type(err).__name__}: "
            f"{first})."
        ) from err
    problems = tree_mismatches(raw, template, shapes=shapes)
    if problems:
        shown = "; ".join(problems[:10])
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DatasetError(
            f"{directory} does not fit the expected "
            f"{type(template).__name__}: {shown}{more}."
        )
    return flax.serialization.from_state_dict(template, raw)
