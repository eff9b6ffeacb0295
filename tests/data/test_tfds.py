"""jad.data.tfds: the MVTec AD builder on a tiny manual download, DTD, lazy import."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from jad.data import tfds as jad_tfds
from jad.errors import DatasetError


def write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def manual_dir(tmp_path):
    root = tmp_path / "mvtec_anomaly_detection"
    rng = np.random.default_rng(0)
    for i in range(2):
        write(
            root / "bottle" / "train" / "good" / f"{i:03d}.png",
            rng.integers(0, 256, (6, 7, 3), dtype=np.uint8),
        )
    write(
        root / "bottle" / "test" / "good" / "000.png",
        rng.integers(0, 256, (6, 7, 3), dtype=np.uint8),
    )
    # a grayscale defect image (like MVTec's grid, screw, zipper)
    write(
        root / "bottle" / "test" / "broken" / "000.png",
        rng.integers(0, 256, (6, 7), dtype=np.uint8),
    )
    mask = np.zeros((6, 7), np.uint8)
    mask[1:3, 2:5] = 200
    write(root / "bottle" / "ground_truth" / "broken" / "000_mask.png", mask)
    return root


def test_import_jad_data_does_not_import_tfds():
    code = (
        "import sys, jad.data, jad.data.tfds; "
        "assert 'tensorflow_datasets' not in sys.modules; "
        "assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_tfds_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r'pip install "jad\[tfds\]"'):
        jad_tfds.prepare_mvtec_tfds(tmp_path, "bottle")
    with pytest.raises(ImportError, match=r"jad\[tfds\]"):
        jad_tfds.load_dtd_tfds("train", data_dir=tmp_path, download=False)


def test_mvtec_builder_prepares_and_reads_back(manual_dir, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    builder = jad_tfds.prepare_mvtec_tfds(
        manual_dir, "bottle", data_dir=tmp_path / "tfds"
    )
    assert builder.name == "mvtec_ad" and builder.builder_config.name == "bottle"
    assert builder.info.splits["train"].num_examples == 2
    assert builder.info.splits["test"].num_examples == 2
    test = builder.as_data_source("test")
    examples = {ex["file_name"].decode(): ex for ex in test}
    assert set(examples) == {"bottle/test/good/000.png", "bottle/test/broken/000.png"}
    broken = examples["bottle/test/broken/000.png"]
    assert broken["label"] == 1 and broken["defect_type"] == b"broken"
    gray = np.asarray(Image.open(manual_dir / "bottle/test/broken/000.png"))
    assert broken["image"].shape == (6, 7, 3)
    np.testing.assert_array_equal(broken["image"][..., 1], gray)  # PNG: lossless
    want = np.zeros((6, 7, 1), np.uint8)
    want[1:3, 2:5] = 255  # binarised with > 127
    np.testing.assert_array_equal(broken["mask"], want)
    good = examples["bottle/test/good/000.png"]
    assert good["label"] == 0 and not good["mask"].any()
    np.testing.assert_array_equal(
        good["image"], np.asarray(Image.open(manual_dir / "bottle/test/good/000.png"))
    )
    # a second call reuses the prepared data
    again = jad_tfds.prepare_mvtec_tfds(
        manual_dir, "bottle", data_dir=tmp_path / "tfds"
    )
    assert len(again.as_data_source("train")) == 2


def test_mvtec_builder_layout_errors(manual_dir, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    os.remove(manual_dir / "bottle" / "ground_truth" / "broken" / "000_mask.png")
    with pytest.raises(DatasetError, match="000.png"):
        jad_tfds.prepare_mvtec_tfds(manual_dir, "bottle", data_dir=tmp_path / "t")
    with pytest.raises(ValueError, match="bottle, cable"):
        jad_tfds.prepare_mvtec_tfds(manual_dir, "bottel", data_dir=tmp_path / "t")
    with pytest.raises(DatasetError, match="nowhere"):
        jad_tfds.prepare_mvtec_tfds(tmp_path / "nowhere", "bottle")


def test_mvtec_builder_class_has_manual_instructions_and_configs():
    pytest.importorskip("tensorflow_datasets")
    cls = jad_tfds.mvtec_builder_class()
    assert cls is jad_tfds.mvtec_builder_class()  # defined (registered) once
    assert "manual" in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert len(cls.BUILDER_CONFIGS) == 15


def test_dtd_tfds_prepares_and_reads_a_tiny_archive(tmp_path, monkeypatch):
    # TFDS's own dtd builder on a tiny archive in DTD's layout (labels/<split>1.txt
    # lists images/<class>/<file>); the download is replaced by the local folder.
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.image_classification import dtd as tfds_dtd

    if importlib.util.find_spec("tensorflow") is None:
        # the builder reads its split lists with tf.io.gfile: open() does the same
        io = SimpleNamespace(gfile=SimpleNamespace(GFile=open))
        monkeypatch.setattr(tfds_dtd, "tf", SimpleNamespace(io=io))
    extracted = tmp_path / "extracted" / "dtd"
    splits = {
        "train1": ["banded/banded_0001.jpg", "woven/woven_0002.jpg"],
        "test1": ["banded/banded_0003.jpg"],
        "val1": ["woven/woven_0004.jpg"],
    }
    rng = np.random.default_rng(3)
    for split, names in splits.items():
        (extracted / "labels").mkdir(parents=True, exist_ok=True)
        (extracted / "labels" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            pixels = rng.integers(0, 256, (9, 7, 3), np.uint8)
            write(extracted / "images" / name, pixels)
    urls = []

    def download_and_extract(self, url):
        urls.append(url)
        return os.fspath(extracted.parent)

    monkeypatch.setattr(
        tfds.download.DownloadManager, "download_and_extract", download_and_extract
    )
    data_dir = tmp_path / "tfds"
    source = jad_tfds.load_dtd_tfds("train", data_dir=data_dir)
    assert len(urls) == 1 and "dtd" in urls[0]
    names = tfds.builder("dtd", data_dir=data_dir).info.features["label"].names
    examples = sorted(
        (source[i] for i in range(len(source))), key=lambda ex: ex["file_name"]
    )
    assert [ex["file_name"].decode() for ex in examples] == splits["train1"]
    for ex in examples:
        name = ex["file_name"].decode()
        assert names[ex["label"]] == name.split("/")[0]
        with Image.open(extracted / "images" / name) as im:
            np.testing.assert_array_equal(ex["image"], np.asarray(im.convert("RGB")))
    # prepared once: later calls read it without downloading, even offline
    test = jad_tfds.load_dtd_tfds("test", data_dir=data_dir, download=False)
    assert len(test) == 1 and len(urls) == 1


def test_dtd_tfds_not_prepared_offline(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DatasetError, match="load_dtd"):
        jad_tfds.load_dtd_tfds("train", data_dir=tmp_path / "empty", download=False)
