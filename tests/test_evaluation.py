"""Tests of jad.evaluation (per-defect metrics, overlay choice, PRO plots) and of
``jad evaluate``'s outputs (tables, JSON provenance, overlays, help).

One tiny MVTec-layout split written here (64x64 textures, 3 good test images and
defect types with 2, 3 and 1 images: unequal on purpose), one PaDiM detector on
``efficientnet_lite0`` (real weights, converted into a temporary cache), one API
evaluation and one in-process CLI run, all module-scoped: the file's cost is two
compilations.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import io
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

import jad
import jad.backbones as bb
import jad.data
from jad import evaluation, metrics, pipeline, viz
from jad.cli.common import print_table
from jad.cli.main import main
from jad.metrics import regions

BACKBONE = "efficientnet_lite0"
SIZE = 64
PER_TYPE = {"crack": 2, "hole": 3, "stain": 1}  # test images per defect type
TYPES = tuple(PER_TYPE)  # sorted by name, as evaluate reports them
NUM_GOOD = 3
NUM_OVERLAYS = 5


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("jad_cache")


def _texture(rng) -> np.ndarray:
    """A 64x64 RGB stripe texture with a random phase and a little noise."""
    y, x = np.mgrid[:SIZE, :SIZE]
    phase = rng.uniform(0, 2 * np.pi)
    base = 128 + 60 * np.sin(x / 3.0 + phase) * np.cos(y / 5.0)
    image = base[..., None] + rng.normal(0, 8, (SIZE, SIZE, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """<root>/brick in the MVTec AD layout; defects are flat squares with masks."""
    root = tmp_path_factory.mktemp("data")
    category = root / "brick"
    rng = np.random.default_rng(0)
    folders = {"train/good": 4, "test/good": NUM_GOOD} | {
        f"test/{t}": n for t, n in PER_TYPE.items()
    }
    for folder, count in folders.items():
        (category / folder).mkdir(parents=True)
        for i in range(count):
            image = _texture(rng)
            if "good" not in folder:
                top, left = rng.integers(8, SIZE - 24, 2)
                mask = np.zeros((SIZE, SIZE), np.uint8)
                mask[top : top + 16, left : left + 16] = 255
                image[mask > 0] = rng.integers(0, 256, 3)
                truth = category / "ground_truth" / folder.split("/")[1]
                truth.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(truth / f"{i:03d}_mask.png")
            Image.fromarray(image).save(category / folder / f"{i:03d}.png")
    return root


def _split(root, split):
    return jad.data.load_dataset(
        "mvtec", root, "brick", split, transform=jad.data.Transform(size=SIZE)
    )


@pytest.fixture(scope="module")
def saved(cache_root, data_root, tmp_path_factory):
    """A fitted PaDiM detector and its folder (with the metadata jad fit writes)."""
    variables = bb.load_pretrained(
        BACKBONE, cache_dir=cache_root / "weights", progress=False
    )
    detector = pipeline.fit_detector(
        "padim",
        _split(data_root, "train").batches(2),
        backbone=BACKBONE,
        variables=variables,
        key=jax.random.key(0),
        progress=False,
    )
    metadata = {
        "transform": dataclasses.asdict(jad.data.Transform(size=SIZE)),
        "num_train": 4,
        "data": str(data_root),
        "kind": "mvtec",
        "category": "brick",
    }
    folder = pipeline.save_detector(
        detector, tmp_path_factory.mktemp("det") / "padim", metadata=metadata
    )
    return detector, folder


@pytest.fixture(scope="module")
def result(saved, data_root):
    test = _split(data_root, "test")
    return evaluation.evaluate(saved[0], test, batch_size=3, progress=False), test


@pytest.fixture(scope="module")
def cli_run(saved, cache_root, tmp_path_factory):
    """``jad evaluate --json --overlays --num-overlays 5 --pro-tolerance 1e-6``.

    Run in-process. The split has far fewer than 2^22 pixels, so its PROs are exact
    whatever the tolerance: the metrics equal the API's default ones.
    """
    out = tmp_path_factory.mktemp("evaluate")
    args = [
        "evaluate", "--state", str(saved[1]), "--json", str(out / "m.json"),
        "--overlays", str(out / "overlays"), "--num-overlays", str(NUM_OVERLAYS),
        "--batch-size", "3", "--workers", "0", "--pro-tolerance", "1e-6",
    ]  # fmt: skip
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("JAD_CACHE", str(cache_root))  # load_detector's weights
        before = datetime.datetime.now(datetime.timezone.utc)
        status = main(args)
        after = datetime.datetime.now(datetime.timezone.utc)
    return {
        "status": status, "stdout": stdout.getvalue(), "out": out,
        "before": before, "after": after,
    }  # fmt: skip


def _overlay_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name != "pro_curve.png")


def _type_of(path: Path) -> str:
    return path.stem.split("_")[1]  # <index>_<type>_<stem>


# --------------------------------------------------------------- per-defect metrics


def test_per_defect_metrics_equal_sklearn_on_type_plus_good_images(result):
    ev, _ = result
    per_defect = ev.metrics["per_defect"]
    assert list(per_defect) == list(TYPES)
    types = np.asarray(ev.defect_types)
    assert collections.Counter(ev.defect_types) == {"good": NUM_GOOD} | PER_TYPE
    good = ev.labels == 0
    for name in TYPES:
        subset = (types == name) | good
        got = per_defect[name]
        assert got["num_images"] == PER_TYPE[name]
        # float64 sklearn vs jad's exact sort-based AUROC/AP: rounding only
        assert got["image_auroc"] == pytest.approx(
            roc_auc_score(ev.labels[subset], ev.scores[subset]), abs=1e-12
        )
        masks, maps = ev.masks[subset].ravel(), ev.maps[subset].ravel()
        assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks, maps), abs=1e-9)
        assert got["pixel_ap"] == pytest.approx(
            average_precision_score(masks, maps), abs=1e-9
        )
        # the same pixels in another order: float64 sums, rounding only
        assert got["pro"] == pytest.approx(
            metrics.pro(ev.maps[subset], ev.masks[subset]), abs=1e-12
        )
    # the overall metrics are over every image, as before
    assert ev.metrics["image_auroc"] == pytest.approx(
        roc_auc_score(ev.labels, ev.scores), abs=1e-12
    )


# ------------------------------------------------------------------ PRO tolerance


@pytest.mark.parametrize(
    "bins, tolerance",
    [
        (16, 1e-3),  # coarse bins: a large bound, cut down by refining bins
        (None, 1e-6),  # jad's 2^20 bins and the tolerance its docstring suggests
    ],
)
def test_pro_tolerance_keeps_every_pro_within_it_of_the_exact_one(
    saved, result, monkeypatch, bins, tolerance
):
    ev, test = result  # exact PROs (pro_tolerance 0)
    # The split is too small for the binned path (< 2^22 pixels): force it, and
    # record what it builds, so the bound is exercised on these real maps.
    monkeypatch.setattr(regions, "_MIN_BINNED", 0)
    if bins is not None:
        monkeypatch.setattr(regions, "_BINS", bins)
    built, binned_scores = [], regions._binned_scores

    def spy(*args):
        built.append(binned_scores(*args))
        return built[-1]

    monkeypatch.setattr(regions, "_binned_scores", spy)
    got = evaluation.evaluate(
        saved[0], test, batch_size=3, progress=False, pro_tolerance=tolerance
    ).metrics
    assert got["pro_tolerance"] == tolerance and ev.metrics["pro_tolerance"] == 0.0
    # the split's PRO and each defect type's, all binned
    assert len(built) == 1 + len(TYPES) and all(b is not None for b in built)
    pairs = [(got["pro"], ev.metrics["pro"])] + [
        (got["per_defect"][t]["pro"], ev.metrics["per_defect"][t]["pro"]) for t in TYPES
    ]
    for (value, exact), binned in zip(pairs, built, strict=True):
        assert 0.0 <= binned.error_bound <= tolerance
        # float64 sums in another order: rounding only beyond the bound
        assert abs(value - exact) <= binned.error_bound + 1e-12
    # Binning did change the values, so the check above compares different numbers:
    # measured 3e-5 to 2e-4 with 16 bins (bounds 6e-4 to 8e-4), 0 to 9e-8 with
    # 2^20 bins and 1e-6 (there the bound is tight: the error equals it).
    if bins == 16:
        assert any(value != exact for value, exact in pairs)
    for name in ("image_auroc", "pixel_auroc", "pixel_ap"):  # untouched
        assert got[name] == ev.metrics[name]


def test_pro_tolerance_is_checked_before_any_image_is_scored():
    class Unread:
        def batches(self, *args, **kwargs):
            raise AssertionError("scored before pro_tolerance was checked")

    for bad, error in [(1.0, ValueError), (-1e-3, ValueError), ("0", TypeError)]:
        with pytest.raises(error, match="evaluate: pro_tolerance"):
            evaluation.evaluate(None, Unread(), pro_tolerance=bad)


# ------------------------------------------------------------------- overlay choice


def test_overlay_indices_deal_round_robin_over_types_then_good(result):
    ev, _ = result
    n = len(ev.labels)
    types = np.asarray(ev.defect_types)
    groups = [*TYPES, "good"]  # 2, 3, 1 and 3 images
    # places per group for each limit: one per group per round, "stain" runs out
    # after the first round, "crack" after the second
    expected = {
        1: (1, 0, 0, 0), 2: (1, 1, 0, 0), 3: (1, 1, 1, 0), 4: (1, 1, 1, 1),
        5: (2, 1, 1, 1), 6: (2, 2, 1, 1), 7: (2, 2, 1, 2), 8: (2, 3, 1, 2),
        9: (2, 3, 1, 3),
    }  # fmt: skip
    assert n == 9
    for limit, quota in expected.items():
        idx = evaluation.overlay_indices(ev, limit=limit)
        assert len(idx) == limit and len(set(idx.tolist())) == limit
        counts = collections.Counter(types[idx].tolist())
        assert tuple(counts[g] for g in groups) == quota, limit
    first = evaluation.overlay_indices(ev, limit=len(groups))
    # one per group, in group order, each group's highest score
    assert types[first].tolist() == groups
    for i, g in zip(first, groups, strict=True):
        assert ev.scores[i] == ev.scores[types == g].max()
    assert sorted(evaluation.overlay_indices(ev, limit=None).tolist()) == list(range(n))
    assert len(evaluation.overlay_indices(ev, limit=100)) == n
    with pytest.raises(ValueError, match="limit"):
        evaluation.overlay_indices(ev, limit=0)


def test_overlay_indices_spread_a_group_evenly_over_its_score_ranks():
    # group "a": 5 images, "good": 4; 6 places -> a: 3 (ranks 0, 2, 4), good: 3
    # (ranks rint(linspace(0, 3, 3)) = 0, 2, 3: numpy rounds 1.5 to even)
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0], np.int32)
    scores = np.array([5, 9, 1, 7, 3, 0.4, 0.1, 0.3, 0.2], np.float32)
    ev = evaluation.Evaluation(
        {}, np.zeros((9, 2, 2), np.float32), scores, labels,
        np.zeros((9, 2, 2), bool), tuple("abcdefghi"), ("a",) * 5 + ("good",) * 4,
    )  # fmt: skip
    # "a" by score: 1 (9), 3 (7), 0 (5), 4 (3), 2 (1); good: 5, 7, 8, 6
    np.testing.assert_array_equal(
        evaluation.overlay_indices(ev, limit=6), [1, 5, 0, 8, 2, 6]
    )
    np.testing.assert_array_equal(evaluation.overlay_indices(ev, limit=2), [1, 5])


# ----------------------------------------------------------------- overlay pictures


def _bar_index(pixels: np.ndarray) -> np.ndarray:
    """Jet table index of each RGB pixel (-1 where it is not a table entry)."""
    lookup = {tuple(c): i for i, c in enumerate(viz.jet().tolist())}
    return np.array([lookup.get(tuple(p), -1) for p in pixels.tolist()])


def test_save_overlays_writes_overlay_and_common_scale_colour_bar(result, tmp_path):
    ev, test = result
    written = evaluation.save_overlays(ev, test, tmp_path, limit=4)
    order = evaluation.overlay_indices(ev, limit=4)
    assert [int(p.name[:4]) for p in written] == order.tolist()
    raw = test.with_transform(dataclasses.replace(test.transform, normalize=False))
    vmin, vmax = float(ev.maps.min()), float(ev.maps.max())
    for i, path in zip(order, written, strict=True):
        assert _type_of(path) == ev.defect_types[i]
        png = np.asarray(Image.open(path))
        assert png.shape[0] == SIZE and png.shape[1] > SIZE
        expected = viz.overlay(
            raw[int(i)].image, ev.maps[i], mask=ev.masks[i], vmin=vmin, vmax=vmax
        )
        np.testing.assert_array_equal(png[:, :SIZE], expected)
        # the bar shows the split's scale, the same in every file
        np.testing.assert_array_equal(
            png[:, SIZE:], viz.colorbar(SIZE, vmin=vmin, vmax=vmax)
        )


def test_cli_overlays_cover_each_defect_type_and_good_images(cli_run):
    assert cli_run["status"] == 0, cli_run["stdout"]
    files = _overlay_files(cli_run["out"] / "overlays")
    assert len(files) == NUM_OVERLAYS
    # 5 places dealt over crack, hole, stain, good: crack gets the fifth
    assert collections.Counter(map(_type_of, files)) == {
        "crack": 2, "hole": 1, "stain": 1, "good": 1,
    }  # fmt: skip
    assert f"wrote {NUM_OVERLAYS} overlays" in cli_run["stdout"]


def test_cli_overlay_colour_bar_runs_monotonically_from_max_to_min(cli_run):
    for path in _overlay_files(cli_run["out"] / "overlays"):
        png = np.asarray(Image.open(path))
        panel = png[:, SIZE:]
        middle = panel[SIZE // 4 : 3 * SIZE // 4]
        bar_columns = [
            c for c in range(panel.shape[1]) if np.all(_bar_index(middle[:, c]) >= 0)
        ]
        assert bar_columns, path
        column = _bar_index(panel[:, bar_columns[len(bar_columns) // 2]])
        levels = column[column >= 0]
        assert levels.size >= SIZE - 8  # the bar spans the height but the margins
        assert np.all(np.diff(levels) <= 0)  # top: vmax's colour, down to vmin's
        # rows show their centre's value: the ends within 256 / rows levels
        assert levels[0] >= 250 and levels[-1] <= 5
        # labels (dark text) right of the bar, at its top and bottom
        text = panel[:, bar_columns[-1] + 1 :].min(axis=-1) < 128
        assert text[: SIZE // 4].any() and text[-SIZE // 4 :].any()


def test_cli_writes_the_pro_curve_plot(cli_run):
    pytest.importorskip("matplotlib")
    path = cli_run["out"] / "overlays" / "pro_curve.png"
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > 100
    assert f"wrote {path}" in cli_run["stdout"]


def test_save_pro_curves_refuses_a_split_without_anomalous_pixels(result, tmp_path):
    ev, _ = result
    normal = ev._replace(masks=np.zeros_like(ev.masks))
    with pytest.raises(ValueError, match="anomalous and normal pixels"):
        evaluation.save_pro_curves(normal, tmp_path / "x.png")


def test_save_pro_curves_without_matplotlib_says_what_to_install(
    result, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        evaluation.save_pro_curves(result[0], tmp_path / "x.png")


# ------------------------------------------------------------------ tables and JSON


def test_cli_prints_overall_and_per_defect_tables_without_fit_column(cli_run):
    out = cli_run["stdout"]
    headers = [line for line in out.splitlines() if line.startswith("| ")]
    assert headers[0].startswith("| method | image_auroc")
    assert "fit s" not in out and "ms/img" in headers[0]
    per_type = [line for line in headers if line.split(" | ")[0] in
                {f"| {t}" for t in TYPES}]  # fmt: skip
    assert len(per_type) == len(TYPES)
    assert [line.split(" | ")[1] for line in per_type] == [
        str(PER_TYPE[t]) for t in TYPES
    ]
    assert f"with the {NUM_GOOD} good images" in out


def test_print_table_labels_the_demo_fit_time(capsys):
    row = {"method": "padim", "image_auroc": 0.5, "pixel_auroc": None, "pro": None,
           "pixel_ap": None, "seconds_per_image": 0.002}  # fmt: skip
    print_table([row, row | {"fit_seconds": 1.5}])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| ms/img | fit s (incl. features) |")
    assert lines[2] == "| padim | 0.500 | - | - | - | 2.0 | - |"
    assert lines[3].endswith("| 2.0 | 1.5 |")
    print_table([row])
    assert "fit s" not in capsys.readouterr().out


def test_cli_json_records_metrics_and_provenance(cli_run, saved, data_root, result):
    record = json.loads((cli_run["out"] / "m.json").read_text())
    detector, folder = saved
    assert record["method"] == "padim" and record["backbone"] == BACKBONE
    assert list(record["per_defect"]) == list(TYPES)
    for name in TYPES:
        assert set(record["per_defect"][name]) == {
            "num_images", "image_auroc", "pixel_auroc", "pro", "pixel_ap",
        }  # fmt: skip
    assert record["detector"]["folder"] == str(Path(folder).absolute())
    assert record["detector"]["method"] == "padim"
    assert record["detector"]["backbone"] == BACKBONE
    assert record["detector"]["config"] == json.loads(
        json.dumps(dataclasses.asdict(detector.config))
    )
    assert record["data"] == {
        "root": str(Path(data_root).absolute()), "kind": "mvtec",
        "category": "brick", "split": "test",
    }  # fmt: skip
    assert record["image_size"] == [SIZE, SIZE]
    assert record["jad_version"] == jad.__version__
    written = datetime.datetime.fromisoformat(record["written_at"])
    assert written.utcoffset() == datetime.timedelta(0)
    # ISO 8601 to the second: compare at that resolution
    assert cli_run["before"].replace(microsecond=0) <= written <= cli_run["after"]
    assert record["pro_tolerance"] == 1e-6
    # the CLI's metrics are the API's on the same split
    for name in ("image_auroc", "pixel_auroc", "pro", "pixel_ap"):
        assert record[name] == pytest.approx(result[0].metrics[name], abs=1e-6)


# ------------------------------------------------------------------- help and flags


def test_help_says_what_evaluate_writes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's wrapping
    for phrase in (
        "--num-overlays",
        "default: 16",
        "INDEX_TYPE_STEM.png",
        "colour bar labelled with the scale's min and max",
        "round-robin over the defect types",
        "then the good images",
        "pro_curve.png",
        "--pro-tolerance",
        "within T of the exact AUPRO, a guaranteed bound",
        "one row per defect type",
        "jad version",
    ):
        assert phrase in text, phrase


def test_pro_tolerance_option_is_checked(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--state", str(tmp_path), "--pro-tolerance", "1"])
    assert exc.value.code == 2
    assert "--pro-tolerance: expected a number in [0, 1)" in capsys.readouterr().err


def test_num_overlays_is_checked(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--state", str(tmp_path), "--num-overlays", "-1"])
    assert exc.value.code == 2
    assert "--num-overlays: expected an integer >= 0" in capsys.readouterr().err
    status = main(["evaluate", "--state", str(tmp_path), "--num-overlays", "3"])
    assert status == 2
    assert "--num-overlays applies with --overlays" in capsys.readouterr().err


def test_evaluate_progress_bar_has_a_total(saved, data_root, result, capsys):
    test = _split(data_root, "test")
    again = evaluation.evaluate(saved[0], test, batch_size=3, progress=True)
    np.testing.assert_array_equal(again.scores, result[0].scores)
    batches = -(-len(test) // 3)
    assert f"{batches}/{batches}" in capsys.readouterr().err  # tqdm's n/total
