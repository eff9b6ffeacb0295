"""jad.data.builtin: the embedded MVTec-layout data set (real photos, exact masks)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("skimage")
from PIL import Image  # noqa: E402

from jad.data import builtin  # noqa: E402
from jad.data.builtin import BUILTIN_DEFECTS, builtin_dataset  # noqa: E402
from jad.errors import DatasetError  # noqa: E402

# One small setting for every test: the build compiles once per shape.
SETTINGS = {"size": 32, "num_train": 3, "num_test_good": 2, "num_test_defect": 2}


def read(path):
    return np.asarray(Image.open(path))


def all_files(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("builtin")
    return builtin_dataset(root=root, category="brick", **SETTINGS)


def test_layout_is_mvtec_like(built):
    folder = built / "brick"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ground_truth",
        "manifest.json",
        "test",
        "train",
    ]
    assert sorted(p.name for p in (folder / "train" / "good").iterdir()) == [
        "000.png",
        "001.png",
        "002.png",
    ]
    assert sorted(p.name for p in (folder / "test").iterdir()) == sorted(
        ("good", *BUILTIN_DEFECTS)
    )
    assert len(list((folder / "test" / "good").iterdir())) == 2
    # No masks for good images, one mask per defect image.
    assert sorted(p.name for p in (folder / "ground_truth").iterdir()) == sorted(
        BUILTIN_DEFECTS
    )
    for defect in BUILTIN_DEFECTS:
        stems = sorted(p.stem for p in (folder / "test" / defect).iterdir())
        masks = sorted(p.name for p in (folder / "ground_truth" / defect).iterdir())
        assert stems == ["000", "001"]
        assert masks == [f"{stem}_mask.png" for stem in stems]
    image = Image.open(folder / "train" / "good" / "000.png")
    assert image.mode == "RGB" and image.size == (32, 32)
    mask = Image.open(folder / "ground_truth" / "color" / "000_mask.png")
    assert mask.mode == "L" and mask.size == (32, 32)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == builtin._VERSION and manifest["seed"] == 0
    assert len(manifest["files"]) == 3 + 2 + 2 * 2 * len(BUILTIN_DEFECTS)


def test_masks_are_non_empty_binary_and_exactly_the_changed_pixels(built):
    folder = built / "brick"
    arrays = builtin._generate("brick", 0, SETTINGS["size"], SETTINGS)
    for defect in BUILTIN_DEFECTS:
        nominal, images, masks = arrays["defects"][defect]
        for i in range(SETTINGS["num_test_defect"]):
            image = read(folder / "test" / defect / f"{i:03d}.png")
            mask = read(folder / "ground_truth" / defect / f"{i:03d}_mask.png")
            assert set(np.unique(mask)) <= {0, 255}
            mask = mask == 255
            assert mask.any(), (defect, i)
            np.testing.assert_array_equal(image, images[i])
            np.testing.assert_array_equal(mask, masks[i])
            # The defect image differs from its nominal image exactly on the mask.
            np.testing.assert_array_equal(np.any(image != nominal[i], axis=-1), mask)
    np.testing.assert_array_equal(
        read(folder / "train" / "good" / "001.png"), arrays["train"][1]
    )


def test_two_builds_give_identical_bytes(built, tmp_path):
    again = builtin_dataset(root=tmp_path, category="brick", **SETTINGS)
    assert all_files(again / "brick") == all_files(built / "brick")


def test_other_seed_gives_other_images(built, tmp_path):
    other = builtin_dataset(root=tmp_path, category="brick", seed=1, **SETTINGS)
    a = read(built / "brick" / "train" / "good" / "000.png")
    b = read(other / "brick" / "train" / "good" / "000.png")
    assert not np.array_equal(a, b)


def test_complete_copy_is_reused_without_building(built, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a complete copy")

    monkeypatch.setattr(builtin, "_build", fail)
    assert builtin_dataset(root=built, category="brick", **SETTINGS) == built


def _corrupt_manifest(folder):
    (folder / "manifest.json").write_text("{not json")


def _delete_a_file(folder):
    (folder / "test" / "color" / "001.png").unlink()


def _change_a_file(folder):
    path = folder / "train" / "good" / "000.png"
    image = read(path).copy()
    image[0, 0] ^= 1
    Image.fromarray(image).save(path)


def _add_a_file(folder):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(
        folder / "train" / "good" / "999.png"
    )


def _other_version(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = -1
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage",
    [_corrupt_manifest, _delete_a_file, _change_a_file, _add_a_file, _other_version],
)
def test_damaged_or_stale_copy_is_rebuilt(built, tmp_path, damage):
    root = builtin_dataset(root=tmp_path, category="brick", **SETTINGS)
    damage(root / "brick")
    assert builtin_dataset(root=root, category="brick", **SETTINGS) == root
    assert all_files(root / "brick") == all_files(built / "brick")
    assert [p.name for p in root.iterdir()] == ["brick"]  # no temporary folder left


def test_other_settings_replace_the_copy(tmp_path):
    root = builtin_dataset(root=tmp_path, category="brick", **SETTINGS)
    builtin_dataset(root=root, category="brick", seed=2, **SETTINGS)
    manifest = json.loads((root / "brick" / "manifest.json").read_text())
    assert manifest["seed"] == 2


def test_interrupted_build_leaves_no_category(tmp_path, monkeypatch):
    calls = []
    write = builtin._write_png

    def flaky(path, array):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        write(path, array)

    monkeypatch.setattr(builtin, "_write_png", flaky)
    with pytest.raises(KeyboardInterrupt):
        builtin_dataset(root=tmp_path, category="brick", **SETTINGS)
    assert not (tmp_path / "brick").exists()
    monkeypatch.setattr(builtin, "_write_png", write)
    root = builtin_dataset(root=tmp_path, category="brick", **SETTINGS)
    assert (root / "brick" / "manifest.json").exists()


def test_foreign_folder_is_not_replaced_without_overwrite(tmp_path):
    (tmp_path / "brick").mkdir()
    (tmp_path / "brick" / "mine.txt").write_text("user data")
    with pytest.raises(DatasetError, match="not a jad built-in data set"):
        builtin_dataset(root=tmp_path, category="brick", **SETTINGS)
    assert (tmp_path / "brick" / "mine.txt").exists()
    builtin_dataset(root=tmp_path, category="brick", overwrite=True, **SETTINGS)
    assert not (tmp_path / "brick" / "mine.txt").exists()


def test_several_categories_and_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("JAD_CACHE", str(tmp_path))
    root = builtin_dataset(category=("grass", "gravel"), **SETTINGS)
    assert root == tmp_path / "builtin"
    assert sorted(p.name for p in root.iterdir()) == ["grass", "gravel"]
    grass = read(root / "grass" / "train" / "good" / "000.png")
    gravel = read(root / "gravel" / "train" / "good" / "000.png")
    assert grass.shape == gravel.shape == (32, 32, 3)
    assert not np.array_equal(grass, gravel)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"category": "wood"}, ValueError, "category"),
        ({"category": ()}, ValueError, "category"),
        ({"size": 16}, ValueError, "size"),
        ({"size": 32.0}, TypeError, "size"),
        ({"seed": -1}, ValueError, "seed"),
        ({"num_train": 0}, ValueError, "num_train"),
        ({"num_test_defect": 0}, ValueError, "num_test_defect"),
    ],
)
def test_builtin_dataset_rejects_bad_input(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=f"builtin_dataset: .*{match}"):
        builtin_dataset(root=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())
