"""Defective images whose masks are empty as loaded: EmptyMaskWarning, empty_masks."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

import jad.data as data

RAW = data.Transform(size=None, normalize=False)
SHAPE = (10, 12)


def write_image(path, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8)).save(path)


def write_mask(path, value=255, box=(2, 5, 3, 7)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mask = np.zeros(SHAPE, np.uint8)
    r0, r1, c0, c1 = box
    mask[r0:r1, c0:c1] = value
    Image.fromarray(mask).save(path)
    return str(path)


def write_mvtec(root, values=(255, 255)):
    """A tiny MVTec AD category: one good test image, one defect per mask value."""
    c = root / "bottle"
    write_image(c / "train" / "good" / "000.png")
    write_image(c / "test" / "good" / "000.png", seed=1)
    masks = []
    for i, value in enumerate(values):
        write_image(c / "test" / "crack" / f"{i:03d}.png", seed=2 + i)
        masks.append(
            write_mask(c / "ground_truth" / "crack" / f"{i:03d}_mask.png", value)
        )
    return masks


def empty_mask_warnings(fn):
    """(fn(), the EmptyMaskWarnings it issued), every issue counted."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        out = fn()
    return out, [
        str(r.message) for r in records if issubclass(r.category, data.EmptyMaskWarning)
    ]


def test_zero_one_mask_warns_once_naming_the_file_and_is_listed(tmp_path):
    good_mask, bad_mask = write_mvtec(tmp_path, values=(255, 1))
    test = data.load_mvtec(tmp_path, "bottle", "test", transform=RAW)
    assert test.empty_masks == ()  # lazy: nothing decoded yet
    batches, caught = empty_mask_warnings(lambda: list(test.batches(2)))
    assert len(caught) == 1
    assert bad_mask in caught[0] and good_mask not in caught[0]
    assert "largest value 1" in caught[0] and "> 127" in caught[0]
    assert test.empty_masks == (bad_mask,)
    # the semantics are unchanged: still anomalous, with an all-normal mask
    masks = np.concatenate([b.masks for b in batches])
    labels = np.concatenate([b.labels for b in batches])
    assert labels.tolist() == [1, 1, 0]
    assert masks[0].any() and not masks[1].any()
    # once per dataset: a second pass and item access stay quiet
    _, again = empty_mask_warnings(lambda: (list(test.batches(2)), test[1]))
    assert again == [] and test.empty_masks == (bad_mask,)
    assert "empty_masks=1" in repr(test)


def test_normal_masks_and_datasets_without_masks_give_no_warning(tmp_path):
    write_mvtec(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        test = data.load_mvtec(tmp_path, "bottle", "test", transform=RAW)
        list(test.batches(2, num_workers=2))
        test[0]
        data.load_mvtec(tmp_path, "bottle", "test", verify=True)
        no_masks = data.load_folder(
            "test",
            good_dir=tmp_path / "bottle" / "train" / "good",
            test_good_dir=tmp_path / "bottle" / "test" / "good",
            defect_dir=tmp_path / "bottle" / "test" / "crack",
        )
        list(no_masks.batches(3))
    assert test.empty_masks == () and no_masks.empty_masks == ()


def test_verify_checks_the_masks_at_load_time(tmp_path):
    _, bad_mask = write_mvtec(tmp_path, values=(255, 0))
    test, caught = empty_mask_warnings(
        lambda: data.load_mvtec(tmp_path, "bottle", "test", verify=True)
    )
    assert len(caught) == 1 and bad_mask in caught[0] and "all zero" in caught[0]
    assert test.empty_masks == (bad_mask,)
    _, again = empty_mask_warnings(lambda: list(test.batches(3)))
    assert again == []


def test_item_access_warns_for_the_file_it_reads(tmp_path):
    _, bad_mask = write_mvtec(tmp_path, values=(255, 1))
    test = data.load_mvtec(tmp_path, "bottle", "test", transform=RAW)
    _, quiet = empty_mask_warnings(lambda: (test[0], test[2]))
    assert quiet == [] and test.empty_masks == ()
    sample, caught = empty_mask_warnings(lambda: test[1])
    assert len(caught) == 1 and bad_mask in caught[0]
    assert sample.label == 1 and not sample.mask.any()
    assert test.empty_masks == (bad_mask,)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_many_empty_masks_name_ten_then_say_how_many_more(tmp_path, num_workers):
    masks = write_mvtec(tmp_path, values=(1,) * 12)
    test = data.load_mvtec(tmp_path, "bottle", "test", transform=RAW)
    _, caught = empty_mask_warnings(
        lambda: list(test.batches(5, num_workers=num_workers))
    )
    assert len(caught) == 1
    assert "12 defective image(s)" in caught[0] and "and 2 more" in caught[0]
    assert sum(m in caught[0] for m in masks) == 10
    assert test.empty_masks == tuple(masks)  # all of them, in sample order


def test_a_defect_lost_by_resizing_is_reported_with_its_size(tmp_path):
    # one pixel at (0, 0): nearest resampling to 2x2 samples (2, 3), (2, 9) ...
    mask = write_mask(
        tmp_path / "bottle" / "ground_truth" / "crack" / "000_mask.png",
        box=(0, 1, 0, 1),
    )
    write_image(tmp_path / "bottle" / "test" / "crack" / "000.png")
    write_image(tmp_path / "bottle" / "train" / "good" / "000.png")
    full = data.load_mvtec(tmp_path, "bottle", "test", transform=RAW)
    _, quiet = empty_mask_warnings(lambda: list(full.batches(1)))
    assert quiet == [] and full.empty_masks == ()
    small = full.with_transform(data.Transform(size=2))
    _, caught = empty_mask_warnings(lambda: list(small.batches(1)))
    assert len(caught) == 1 and mask in caught[0]
    assert "empty once resized to 2x2" in caught[0]
    assert small.empty_masks == (mask,) and full.empty_masks == ()


def test_with_transform_of_the_same_geometry_shares_what_was_found(tmp_path):
    _, bad_mask = write_mvtec(tmp_path, values=(255, 1))
    test = data.load_mvtec(tmp_path, "bottle", "test")
    _, caught = empty_mask_warnings(lambda: list(test.batches(3)))
    assert len(caught) == 1
    # the overlays re-read the split without normalisation: same masks, no new warning
    raw = test.with_transform(data.Transform(normalize=False))
    assert raw.empty_masks == (bad_mask,)
    _, again = empty_mask_warnings(lambda: raw[1])
    assert again == []
    cropped = test.with_transform(data.Transform(size=8, crop=4))
    assert cropped.empty_masks == ()  # other geometry: checked afresh


def test_leaving_a_pass_early_still_warns(tmp_path):
    bad_mask, _ = write_mvtec(tmp_path, values=(1, 255))
    test = data.load_mvtec(tmp_path, "bottle", "test", transform=RAW)
    batches = test.batches(1)

    def first_then_close():
        next(batches)
        batches.close()

    _, caught = empty_mask_warnings(first_then_close)
    assert len(caught) == 1 and bad_mask in caught[0]


def test_folder_with_zero_one_masks_points_to_mask_threshold(tmp_path):
    write_image(tmp_path / "good" / "g.png")
    write_image(tmp_path / "bad" / "a.png", seed=1)
    mask = write_mask(tmp_path / "masks" / "a.png", value=1)
    kw = dict(
        good_dir=tmp_path / "good",
        defect_dir=tmp_path / "bad",
        mask_dir=tmp_path / "masks",
        test_fraction=0.0,
        transform=RAW,
    )
    test = data.load_folder("test", **kw)
    _, caught = empty_mask_warnings(lambda: list(test.batches(2)))
    assert len(caught) == 1 and mask in caught[0]
    assert "mask_threshold=0" in caught[0]
    # the documented fix: the 0/1 masks read with mask_threshold=0
    fixed = data.load_folder("test", **kw, mask_threshold=0)
    batches, quiet = empty_mask_warnings(lambda: list(fixed.batches(2)))
    assert quiet == [] and batches[0].masks[0].sum() == 12
    assert fixed.empty_masks == ()


def test_import_exports_the_warning():
    assert "EmptyMaskWarning" in data.__all__
    assert issubclass(data.EmptyMaskWarning, UserWarning)
