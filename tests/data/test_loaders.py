"""jad.data loaders on fixtures written in the real folder layouts, and on real MTD."""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jad.data as data
from jad.errors import DatasetError

RAW = data.Transform(size=None, normalize=False)
SMALL = data.Transform(size=(8, 8))
MTD_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")
MTD_ROOT = os.path.normpath(os.path.join(MTD_ROOT, "mtd"))
DTD_ROOT = os.path.normpath(os.path.join(MTD_ROOT, "..", "dtd10"))


def write_image(path, shape=(10, 12, 3), value=None, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if value is None:
        array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    else:
        array = np.full(shape, value, dtype=np.uint8)
    Image.fromarray(array).save(path)
    return array


def write_mask(path, shape=(10, 12), box=(2, 5, 3, 7), value=255):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mask = np.zeros(shape, dtype=np.uint8)
    r0, r1, c0, c1 = box
    mask[r0:r1, c0:c1] = value
    Image.fromarray(mask).save(path)
    return mask


# --- fixtures in the real layouts -----------------------------------------------------


@pytest.fixture
def mvtec(tmp_path):
    root = tmp_path / "mvtec_ad"
    c = root / "bottle"
    for i in range(3):
        write_image(c / "train" / "good" / f"{i:03d}.png", seed=i)
    write_image(c / "test" / "good" / "000.png", seed=10)
    for i in range(2):
        write_image(c / "test" / "broken_large" / f"{i:03d}.png", seed=20 + i)
        write_mask(c / "ground_truth" / "broken_large" / f"{i:03d}_mask.png")
    write_image(c / "test" / "contamination" / "000.png", seed=30)
    write_mask(c / "ground_truth" / "contamination" / "000_mask.png", box=(0, 1, 0, 1))
    write_image(root / "cable" / "train" / "good" / "000.png")
    os.makedirs(root / "cable" / "test" / "good")
    (root / "license.txt").write_text("CC BY-NC-SA 4.0")
    (c / "train" / "good" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored
    return root


@pytest.fixture
def btad(tmp_path):
    root = tmp_path / "BTech_Dataset_transformed"
    # 01: bmp images, png masks; 02: png/png; 03: bmp/bmp (the public archive's mix).
    for cat, img_ext, mask_ext in (
        ("01", "bmp", "png"),
        ("02", "png", "png"),
        ("03", "bmp", "bmp"),
    ):
        c = root / cat
        for i in range(2):
            write_image(c / "train" / "ok" / f"{i:04d}.{img_ext}", seed=i)
        write_image(c / "test" / "ok" / f"0000.{img_ext}", seed=5)
        for i in range(2):
            write_image(c / "test" / "ko" / f"{i:04d}.{img_ext}", seed=7 + i)
            write_mask(c / "ground_truth" / "ko" / f"{i:04d}.{mask_ext}")
    return root


@pytest.fixture
def visa(tmp_path):
    root = tmp_path / "VisA_20220922"
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / rel, seed=i)
            rows.append(f"{obj},{'train' if i < 2 else 'test'},normal,{rel},")
        rel = f"{obj}/Data/Images/Anomaly/000.JPG"
        mrel = f"{obj}/Data/Masks/Anomaly/000.png"
        write_image(root / rel, seed=9)
        write_mask(root / mrel, value=2)  # VisA masks hold class indices
        rows.append(f"{obj},test,anomaly,{rel},{mrel}")
    os.makedirs(root / "split_csv")
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def write_mtd(root, n_free=10, defects=(("Crack", 2), ("Uneven", 2))):
    """MTD's original layout: jpg images with png masks beside them."""
    for i in range(n_free):
        stem = f"exp{i % 3}_num_{1000 + 37 * i}"
        write_image(root / "MT_Free" / "Imgs" / f"{stem}.jpg", shape=(9, 14), seed=i)
        write_mask(root / "MT_Free" / "Imgs" / f"{stem}.png", shape=(9, 14), value=0)
    for name, n in defects:
        for i in range(n):
            stem = f"exp1_num_{500 + i}"
            write_image(root / f"MT_{name}" / "Imgs" / f"{stem}.jpg", shape=(11, 7))
            write_mask(
                root / f"MT_{name}" / "Imgs" / f"{stem}.png",
                shape=(11, 7),
                value=0 if name == "Uneven" and i == 0 else 255,
            )
    return root


@pytest.fixture
def mtd(tmp_path):
    return write_mtd(tmp_path / "mtd")


# --- MVTec AD ------------------------------------------------------------------------


def test_mvtec_lists_train_and_test(mvtec):
    train = data.load_mvtec(mvtec, "bottle", "train", transform=RAW)
    assert len(train) == 3 and train.kind == "mvtec" and train.category == "bottle"
    assert all(s.label == 0 and s.mask_path is None for s in train.samples)
    test = data.load_mvtec(mvtec, "bottle", "test", transform=RAW)
    assert [s.defect_type for s in test.samples] == [
        "broken_large",
        "broken_large",
        "contamination",
        "good",
    ]
    assert test.labels.tolist() == [1, 1, 1, 0]
    assert test.samples[0].mask_path.endswith(
        os.path.join("ground_truth", "broken_large", "000_mask.png")
    )
    assert test.skipped == []


def test_mvtec_items_and_masks(mvtec):
    test = data.load_mvtec(mvtec, "bottle", "test", transform=RAW)
    sample = test[0]
    assert sample.image.shape == (10, 12, 3) and sample.image.dtype == np.float32
    want = np.zeros((10, 12), bool)
    want[2:5, 3:7] = True
    np.testing.assert_array_equal(sample.mask, want)
    assert sample.label == 1 and sample.defect_type == "broken_large"
    good = test[-1]
    assert good.label == 0 and good.mask.dtype == bool and not good.mask.any()
    ref = np.asarray(Image.open(good.path), np.float32) / 255
    np.testing.assert_array_equal(good.image, ref)


def test_mvtec_batches_shapes_and_order(mvtec):
    test = data.load_mvtec(mvtec, "bottle", "test", transform=SMALL)
    batches = list(test.batches(3))
    assert [len(b.paths) for b in batches] == [3, 1]
    b = batches[0]
    assert b.images.shape == (3, 8, 8, 3) and b.images.dtype == np.float32
    assert b.masks.shape == (3, 8, 8) and b.masks.dtype == bool
    assert b.labels.dtype == np.int32 and b.labels.tolist() == [1, 1, 1]
    assert b.defect_types == ("broken_large", "broken_large", "contamination")
    assert b.paths == test.paths[:3]
    assert len(list(test.batches(3, drop_last=True))) == 1
    # the batch count is known up front (progress bars show a total and an ETA)
    assert len(test.batches(3)) == 2 and len(test.batches(3, drop_last=True)) == 1
    assert len(test.batches(1)) == len(test) == 4
    from tqdm import tqdm

    assert tqdm(test.batches(2), disable=True).total == 2
    threaded = list(test.batches(2, num_workers=2))
    np.testing.assert_array_equal(
        np.concatenate([t.images for t in threaded]),
        np.concatenate([b.images for b in batches]),
    )


def test_list_categories_and_unknown_category(mvtec):
    assert data.list_mvtec_categories(mvtec) == ("bottle", "cable")
    assert data.list_categories("mvtec", mvtec) == ("bottle", "cable")
    with pytest.raises(DatasetError, match="'bottle', 'cable'") as err:
        data.load_mvtec(mvtec, "bottel", "train")
    assert str(mvtec) in str(err.value)


def test_missing_root_and_folders_name_the_path(mvtec, tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        data.load_mvtec(tmp_path / "nowhere", "bottle", "train")
    with pytest.raises(DatasetError, match="nowhere"):
        data.list_categories("mvtec", tmp_path / "nowhere")
    os.rename(mvtec / "bottle" / "ground_truth" / "contamination", tmp_path / "gone")
    with pytest.raises(DatasetError, match="ground-truth folder not found"):
        data.load_mvtec(mvtec, "bottle", "test")


def test_test_image_without_mask_raises_or_is_skipped_with_warning(mvtec):
    missing = mvtec / "bottle" / "ground_truth" / "broken_large" / "001_mask.png"
    os.remove(missing)
    image = mvtec / "bottle" / "test" / "broken_large" / "001.png"
    with pytest.raises(DatasetError, match="without its ground-truth mask") as err:
        data.load_mvtec(mvtec, "bottle", "test")
    assert str(image) in str(err.value)
    with pytest.warns(UserWarning, match="001.png"):
        test = data.load_mvtec(mvtec, "bottle", "test", on_error="skip")
    assert len(test) == 3 and str(image) not in test.paths
    assert [s.path for s in test.skipped] == [str(image)]


def test_mask_without_image_is_reported(mvtec):
    orphan = mvtec / "bottle" / "ground_truth" / "broken_large" / "007_mask.png"
    write_mask(orphan)
    with pytest.raises(DatasetError, match="mask without its image") as err:
        data.load_mvtec(mvtec, "bottle", "test")
    assert str(orphan) in str(err.value)
    with pytest.warns(UserWarning, match="007_mask.png"):
        test = data.load_mvtec(mvtec, "bottle", "test", on_error="skip")
    assert len(test) == 4 and test.skipped[0].path == str(orphan)
    # a ground-truth folder for a defect type that has no test folder
    os.remove(orphan)
    write_mask(mvtec / "bottle" / "ground_truth" / "scratch" / "000_mask.png")
    with pytest.raises(DatasetError, match="scratch"):
        data.load_mvtec(mvtec, "bottle", "test", on_error="raise")


def test_a_split_without_images_is_an_error_naming_the_root(mvtec):
    with pytest.raises(DatasetError, match=r"no test images under .*mvtec_ad"):
        data.load_mvtec(mvtec, "cable", "test")  # test/good exists but is empty
    assert len(data.load_mvtec(mvtec, "cable", "train")) == 1
    (mvtec / "cable" / "train" / "good" / "000.png").write_bytes(b"not a png")
    with (
        pytest.warns(UserWarning, match="000.png"),
        pytest.raises(DatasetError, match="all 1 skipped"),
    ):
        data.load_mvtec(mvtec, "cable", "train", on_error="skip", verify=True)


def test_unexpected_file_is_reported_not_dropped(mvtec):
    note = mvtec / "bottle" / "test" / "good" / "notes.txt"
    note.write_text("hello")
    with pytest.raises(DatasetError, match="notes.txt"):
        data.load_mvtec(mvtec, "bottle", "test")


def test_corrupt_file_is_found_lazily_or_by_verify(mvtec):
    bad = mvtec / "bottle" / "train" / "good" / "002.png"
    bad.write_bytes(b"\x89PNG broken")
    train = data.load_mvtec(mvtec, "bottle", "train", transform=SMALL)  # lazy: fine
    batches = train.batches(2)
    first = next(batches)  # the corrupt file is in the second batch: not read yet
    assert first.images.shape[0] == 2
    with pytest.raises(DatasetError, match="002.png"):
        next(batches)
    with pytest.raises(DatasetError, match="002.png"):
        train[2]
    with pytest.raises(DatasetError, match="002.png"):
        data.load_mvtec(mvtec, "bottle", "train", verify=True)
    with pytest.warns(UserWarning, match="002.png"):
        verified = data.load_mvtec(
            mvtec, "bottle", "train", verify=True, on_error="skip"
        )
    assert len(verified) == 2 and verified.skipped[0].path == str(bad)
    skipping = data.load_mvtec(
        mvtec, "bottle", "train", on_error="skip", transform=SMALL
    )
    with pytest.warns(UserWarning, match="002.png"):
        sizes = [len(b.paths) for b in skipping.batches(2)]
    assert sizes == [2] and [s.path for s in skipping.skipped] == [str(bad)]


def test_mask_of_another_size_is_an_error(mvtec):
    write_mask(
        mvtec / "bottle" / "ground_truth" / "contamination" / "000_mask.png",
        shape=(5, 5),
    )
    test = data.load_mvtec(mvtec, "bottle", "test")
    with pytest.raises(DatasetError, match="000_mask.png"):
        test[2]


def test_num_train_takes_the_first_images(mvtec):
    train = data.load_mvtec(mvtec, "bottle", "train", num_train=2)
    full = data.load_mvtec(mvtec, "bottle", "train")
    assert train.paths == full.paths[:2]
    with pytest.raises(ValueError, match="only 3 training images"):
        data.load_mvtec(mvtec, "bottle", "train", num_train=4)
    with pytest.raises(ValueError, match="split='train'"):
        data.load_mvtec(mvtec, "bottle", "test", num_train=1)


def test_images_of_different_sizes_need_a_size(mvtec):
    write_image(mvtec / "bottle" / "train" / "good" / "003.png", shape=(6, 6, 3))
    train = data.load_mvtec(mvtec, "bottle", "train", transform=RAW)
    with pytest.raises(ValueError, match="Transform"):
        list(train.batches(4))
    assert len(list(train.batches(1))) == 4


def test_bad_options(mvtec):
    with pytest.raises(ValueError, match="split"):
        data.load_mvtec(mvtec, "bottle", "val")
    with pytest.raises(ValueError, match="on_error"):
        data.load_mvtec(mvtec, "bottle", "train", on_error="ignore")
    with pytest.raises(TypeError, match="transform"):
        data.load_mvtec(mvtec, "bottle", "train", transform=256)
    train = data.load_mvtec(mvtec, "bottle", "train")
    with pytest.raises(ValueError, match="batch_size"):
        train.batches(0)
    with pytest.raises(IndexError):
        train[3]
    assert train.with_transform(SMALL)[0].image.shape == (8, 8, 3)


# --- BTAD ---------------------------------------------------------------------------


@pytest.mark.parametrize("category", ["01", "02", "03"])
def test_btad_pairs_mixed_extensions(btad, category):
    train = data.load_btad(btad, category, "train")
    assert len(train) == 2 and train.labels.tolist() == [0, 0]
    test = data.load_btad(btad, category, "test", transform=RAW)
    assert test.labels.tolist() == [0, 1, 1]
    assert [s.defect_type for s in test.samples] == ["good", "ko", "ko"]
    for sample in test.samples[1:]:
        stem = os.path.splitext(os.path.basename(sample.image_path))[0]
        assert os.path.splitext(os.path.basename(sample.mask_path))[0] == stem
    item = test[1]
    assert item.image.shape == (10, 12, 3) and item.mask.sum() == 12


def test_btad_categories_and_missing_mask(btad):
    assert data.list_categories("btad", btad) == ("01", "02", "03")
    with pytest.raises(DatasetError, match="'01', '02', '03'"):
        data.load_btad(btad, "04", "train")
    os.remove(btad / "03" / "ground_truth" / "ko" / "0001.bmp")
    with pytest.raises(DatasetError, match="0001.bmp"):
        data.load_btad(btad, "03", "test")


# --- VisA -----------------------------------------------------------------------------


def test_visa_reads_the_split_csv(visa):
    assert data.list_categories("visa", visa) == ("candle", "pcb1")
    train = data.load_visa(visa, "candle", "train")
    assert len(train) == 2 and train.labels.tolist() == [0, 0]
    test = data.load_visa(visa, "candle", "test", transform=RAW)
    assert test.labels.tolist() == [0, 1] and test.mask_threshold == 0
    assert [s.defect_type for s in test.samples] == ["good", "anomaly"]
    assert test[1].mask.sum() == 12  # class index 2 > 0
    with pytest.raises(DatasetError, match="'candle', 'pcb1'"):
        data.load_visa(visa, "capsules", "test")


def test_visa_reads_defect_types_from_image_anno(visa):
    rel = "candle/Data/Images/Anomaly/000.JPG"
    anno = visa / "candle" / "image_anno.csv"
    anno.write_text(
        "image,label,mask\n"
        "candle/Data/Images/Normal/0000.JPG,normal,\n"
        f'{rel},"melt, scratch",candle/Data/Masks/Anomaly/000.png\n'
    )
    test = data.load_visa(visa, "candle", "test", transform=RAW)
    assert [s.defect_type for s in test.samples] == ["good", "melt, scratch"]
    # pcb1 has no image_anno.csv: the generic type
    pcb = data.load_visa(visa, "pcb1", "test", transform=RAW)
    assert [s.defect_type for s in pcb.samples] == ["good", "anomaly"]
    anno.write_text("picture,label\nx,y\n")
    with pytest.raises(DatasetError, match="image_anno.csv"):
        data.load_visa(visa, "candle", "test")


def test_visa_bad_csv(visa):
    csv_path = visa / "split_csv" / "1cls.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("anomaly,pcb1", "broken,pcb1"))
    with pytest.raises(DatasetError, match="unknown label 'broken'.*line 9"):
        data.load_visa(visa, "pcb1", "test")
    csv_path.write_text(text.replace("object,split", "obj,split"))
    with pytest.raises(DatasetError, match="object"):
        data.load_visa(visa, "pcb1", "test")
    csv_path.write_text(text)
    os.remove(visa / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png")
    with pytest.raises(DatasetError, match="000.png"):
        data.load_visa(visa, "pcb1", "test")
    os.remove(csv_path)
    with pytest.raises(DatasetError, match="1cls.csv"):
        data.load_visa(visa, "pcb1", "test")


# --- MTD ------------------------------------------------------------------------------


def test_mtd_split_is_the_readme_recipe(mtd):
    names = sorted(glob.glob(str(mtd / "MT_Free" / "Imgs" / "*.jpg")))
    p = np.random.default_rng(3).permutation(len(names))
    n_test = math.floor(0.2 * len(names))
    train = data.load_mtd(mtd, "train", seed=3)
    test = data.load_mtd(mtd, "test", seed=3)
    assert train.paths == tuple(names[i] for i in p[n_test:])
    assert test.paths[:n_test] == tuple(names[i] for i in p[:n_test])
    assert train.seed == test.seed == 3 and train.category == "magnetic_tile"
    assert [s.defect_type for s in test.samples[n_test:]] == ["Crack"] * 2 + [
        "Uneven"
    ] * 2
    assert data.load_mtd(mtd, "train", seed=3, num_train=3).paths == train.paths[:3]
    # load_dataset gives the same split (seed 0 by default)
    assert (
        data.load_dataset("mtd", mtd, None, "train").paths
        == data.load_mtd(mtd, "train", seed=0).paths
    )


def test_mtd_empty_mask_stays_anomalous(mtd):
    test = data.load_mtd(mtd, "test", transform=RAW)
    uneven = [i for i, s in enumerate(test.samples) if s.defect_type == "Uneven"]
    with pytest.warns(data.EmptyMaskWarning, match="exp1_num_500.png"):
        first = test[uneven[0]]
    assert first.label == 1 and not first.mask.any()
    assert test.empty_masks == (test.samples[uneven[0]].mask_path,)
    assert test[uneven[1]].mask.any()
    assert first.image.shape == (11, 7, 3)  # grayscale file, 3 channels


def test_mtd_problems(mtd):
    os.remove(mtd / "MT_Crack" / "Imgs" / "exp1_num_501.png")
    with pytest.raises(DatasetError, match="exp1_num_501.jpg"):
        data.load_mtd(mtd, "test")
    data.load_mtd(mtd, "train")  # the defect folders are not read for training
    write_mask(mtd / "MT_Free" / "Imgs" / "stray.png")
    with pytest.raises(DatasetError, match="stray.png"):
        data.load_mtd(mtd, "train")
    with pytest.raises(DatasetError, match="magnetic_tile"):
        data.load_mtd(mtd, "train", category="tiles")
    with pytest.raises(DatasetError, match="MT_Free"):
        data.load_mtd(mtd / "MT_Crack", "train")


@pytest.mark.skipif(not os.path.isdir(MTD_ROOT), reason="shared/data/mtd not present")
def test_mtd_real_copy_counts_split_and_loading():
    train = data.load_dataset("mtd", MTD_ROOT, None, "train", transform=data.SQUARE_224)
    test = data.load_dataset("mtd", MTD_ROOT, None, "test", transform=data.SQUARE_224)
    names = sorted(glob.glob(os.path.join(MTD_ROOT, "MT_Free", "Imgs", "*.jpg")))
    assert len(names) == 952
    p = np.random.default_rng(0).permutation(952)
    assert len(train) == 762 and train.seed == 0
    assert train.paths == tuple(names[i] for i in p[190:])
    labels = test.labels
    assert len(test) == 190 + 392 and (labels == 0).sum() == 190
    assert test.paths[:190] == tuple(names[i] for i in p[:190])
    counts = {}
    for s in test.samples[190:]:
        counts[s.defect_type] = counts.get(s.defect_type, 0) + 1
    assert counts == {
        "Blowhole": 115,
        "Break": 85,
        "Crack": 57,
        "Fray": 32,
        "Uneven": 103,
    }
    batch = next(train.batches(3))
    assert batch.images.shape == (3, 224, 224, 3) and batch.images.dtype == np.float32
    crack = next(i for i, s in enumerate(test.samples) if s.defect_type == "Crack")
    item = test[crack]
    assert item.image.shape == (224, 224, 3) and item.label == 1 and item.mask.any()
    # grayscale source: the three channels hold the same values before normalising
    raw = train.with_transform(data.Transform(size=224, normalize=False))[0].image
    np.testing.assert_array_equal(raw[..., 0], raw[..., 2])


@pytest.mark.skipif(not os.path.isdir(MTD_ROOT), reason="shared/data/mtd not present")
def test_mtd_real_copy_four_empty_uneven_masks_stay_anomalous():
    test = data.load_mtd(MTD_ROOT, "test")
    uneven = [s for s in test.samples if s.defect_type == "Uneven"]
    empty = [s for s in uneven if not (np.asarray(Image.open(s.mask_path)) > 127).any()]
    assert len(empty) == 4 and all(s.label == 1 for s in empty)
    # data README: at 224x224 (nearest, > 127) a fifth mask becomes empty.
    small = [
        s
        for s in uneven
        if not data.load_mask(s.mask_path, transform=data.SQUARE_224).any()
    ]
    assert len(small) == 5
    assert {os.path.basename(s.mask_path) for s in small} - {
        os.path.basename(s.mask_path) for s in empty
    } == {"exp3_num_24829.png"}
    # the dataset finds the same five in one pass and names them in one warning
    only_uneven = dataclasses.replace(
        test.with_transform(data.SQUARE_224), samples=tuple(uneven)
    )
    with pytest.warns(data.EmptyMaskWarning) as caught:
        for _ in only_uneven.batches(32):
            pass
    assert len(caught) == 1 and "5 defective image(s)" in str(caught[0].message)
    assert only_uneven.empty_masks == tuple(s.mask_path for s in small)


# --- generic folders -----------------------------------------------------------------


def test_folder_with_held_out_good_and_typed_defects(tmp_path):
    for i in range(5):
        write_image(tmp_path / "good" / f"g{i}.png", seed=i)
    write_image(tmp_path / "bad" / "dent" / "a.png")
    write_image(tmp_path / "bad" / "scratch" / "b.png")
    write_mask(tmp_path / "masks" / "dent" / "a_gt.png")
    write_mask(tmp_path / "masks" / "scratch" / "b_gt.bmp")
    kw = dict(
        good_dir=tmp_path / "good",
        defect_dir=tmp_path / "bad",
        mask_dir=tmp_path / "masks",
        mask_suffix="_gt",
        seed=1,
    )
    train = data.load_folder("train", **kw)
    test = data.load_folder("test", **kw, transform=RAW)
    names = sorted(glob.glob(str(tmp_path / "good" / "*.png")))
    p = np.random.default_rng(1).permutation(5)
    assert train.paths == tuple(names[i] for i in p[1:])
    assert test.paths[0] == names[p[0]]
    assert [s.defect_type for s in test.samples] == ["good", "dent", "scratch"]
    assert test.has_masks and test[2].mask.sum() == 12
    assert train.kind == "folder" and train.seed == 1


def test_folder_flat_defects_without_masks(tmp_path):
    for i in range(3):
        write_image(tmp_path / "train" / f"{i}.png", seed=i)
    write_image(tmp_path / "test_ok" / "0.png")
    write_image(tmp_path / "defects" / "x.png")
    test = data.load_folder(
        "test",
        good_dir=tmp_path / "train",
        test_good_dir=tmp_path / "test_ok",
        defect_dir=tmp_path / "defects",
    )
    assert test.labels.tolist() == [0, 1] and not test.has_masks
    assert test.samples[1].defect_type == "defect" and not test[1].mask.any()
    assert (
        len(
            data.load_folder(
                "train", good_dir=tmp_path / "train", test_good_dir=tmp_path / "test_ok"
            )
        )
        == 3
    )
    with pytest.raises(DatasetError, match="missing"):
        data.load_folder("train", good_dir=tmp_path / "missing")


# --- dispatch and DTD -----------------------------------------------------------------


def test_load_dataset_dispatches_every_kind(mvtec, btad, visa, mtd):
    assert len(data.load_dataset("mvtec", mvtec, "bottle", "test")) == 4
    assert len(data.load_dataset("btad", btad, "01", "test")) == 3
    assert len(data.load_dataset("visa", visa, "pcb1", "test")) == 2
    assert len(data.load_dataset("mtd", mtd, "magnetic_tile", "test", seed=0)) == 2 + 4
    assert data.list_categories("mtd", mtd) == ("magnetic_tile",)
    with pytest.raises(ValueError, match="'mvtec', 'btad', 'mtd', 'visa'"):
        data.load_dataset("kolektor", mvtec, "x", "train")
    with pytest.raises(TypeError, match="seed"):
        data.load_dataset("mvtec", mvtec, "bottle", "train", seed=1)


def test_dtd_folder_reader(tmp_path):
    for cls in ("banded", "woven"):
        for i in range(2):
            write_image(tmp_path / "images" / cls / f"{cls}_{i:04d}.jpg", seed=i)
    assert data.list_dtd_classes(tmp_path) == ("banded", "woven")
    textures = data.load_dtd(tmp_path, classes=["woven"])
    assert len(textures) == 2 and textures.samples[0].defect_type == "woven"
    batch = next(textures.batches(2))
    assert batch.images.shape == (2, 256, 256, 3)
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    with pytest.raises(DatasetError, match="'banded', 'woven'"):
        data.load_dtd(tmp_path, classes=["dotted"])


@pytest.mark.skipif(not os.path.isdir(DTD_ROOT), reason="shared/data/dtd10 not present")
def test_dtd10_real_copy():
    assert len(data.list_dtd_classes(DTD_ROOT)) == 10
    textures = data.load_dtd(DTD_ROOT)
    assert len(textures) == 1200
    item = textures[0]
    assert item.image.shape == (256, 256, 3) and item.defect_type == "banded"


def test_import_does_not_warn():
    # In a fresh interpreter: reloading jad.data here would redefine Dataset and its
    # subclasses for every test that runs later. Any warning raised from jad's own
    # files while importing it fails (dependencies' warnings are theirs).
    code = (
        "import os, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import jad.data\n"
        "root = os.path.dirname(os.path.abspath(jad.__file__)) + os.sep\n"
        "ours = [w for w in caught if os.path.abspath(w.filename).startswith(root)]\n"
        "assert not ours, [str(w.message) for w in ours]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
