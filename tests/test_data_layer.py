"""Data layer: the five listers, image/mask loading of every PIL mode, the dataset, and bad input.

Every fixture tree is built in tmp_path from tiny PIL images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from moleflow import registry
from moleflow.data import mvtec
from moleflow.config import parse_img_size
from moleflow.data.dataset import AnomalyDataset, list_classes, load_split
from moleflow.data.image_io import load_image, load_pair, to_float_rgb
from moleflow.data.samples import Sample
from moleflow.data.splits import anomaly_aware_split
from moleflow.errors import MoleflowError


def save(path: Path, array: np.ndarray | Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (array if isinstance(array, Image.Image) else Image.fromarray(array)).save(path)
    return path


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def left_half_mask(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[:, : w // 2] = 255
    return m


def make_mvtec(root: Path, cls: str = "widget", n_train: int = 3, n_good: int = 2,
               defects: dict[str, int] | None = None, size: tuple[int, int] = (16, 16)) -> Path:
    h, w = size
    for i in range(n_train):
        save(root / cls / "train" / "good" / f"{i:03d}.png", noise(h, w, i))
    for i in range(n_good):
        save(root / cls / "test" / "good" / f"{i:03d}.png", noise(h, w, 100 + i))
    for d, n in (defects if defects is not None else {"scratch": 2}).items():
        for i in range(n):
            save(root / cls / "test" / d / f"{i:03d}.png", noise(h, w, 200 + i))
            save(root / cls / "ground_truth" / d / f"{i:03d}_mask.png", left_half_mask(h, w))
    return root


def make_mvtec_classes(root: Path, classes: tuple[str, ...], *, n_train: int, size: tuple[int, int] = (32, 32)) -> Path:
    """Several classes of `make_mvtec` (2 good and 2 scratched test images each) under one root."""
    for cls in classes:
        make_mvtec(root, cls, n_train=n_train, n_good=2, size=size)
    return root


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- MVTec / MPDD layout

def test_mvtec_lists_train_test_and_masks_in_sorted_order(tmp_path):
    root = make_mvtec(tmp_path, defects={"scratch": 2, "crack": 1})
    # extensions are case-insensitive; non-images and dot-files are ignored
    save(root / "widget" / "train" / "good" / "100.JPG", noise(16, 16, 9))
    (root / "widget" / "train" / "good" / "notes.txt").write_text("not an image")
    save(root / "widget" / "train" / "good" / "._000.png", noise(16, 16, 9))

    train = mvtec.list_mvtec(root, "widget", "train")
    assert [p.path.name for p in train] == ["000.png", "001.png", "002.png", "100.JPG"]
    assert all(s.label == 0 and s.mask_path is None and s.defect_type == "good" for s in train)

    test = mvtec.list_mvtec(root, "widget", "test")
    assert [(s.defect_type, s.path.name, s.label) for s in test] == [
        ("crack", "000.png", 1), ("good", "000.png", 0), ("good", "001.png", 0),
        ("scratch", "000.png", 1), ("scratch", "001.png", 1)]
    for s in test:
        gt = root / "widget" / "ground_truth"
        assert s.mask_path == (None if s.label == 0 else gt / s.defect_type / f"{s.path.stem}_mask.png")
        assert s.class_name == "widget"
    assert mvtec.list_mvtec(root, "widget", "val") == []
    assert mvtec.list_mpdd(root, "widget", "test") == test


def test_load_split_mvtec_yields_tensors_with_aligned_masks(tmp_path):
    root = make_mvtec(tmp_path, size=(32, 32))
    ds = load_split("mvtec", root, "widget", "test", (8, 12))
    assert len(ds) == 4 and ds.has_masks
    assert ds.labels.tolist() == [0, 0, 1, 1]
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 8, 12) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["mask"].shape == (1, 8, 12) and item["mask"].dtype == torch.float32
        assert item["index"] == i and item["path"] == str(ds.samples[i].path)
        if item["label"] == 0:
            assert item["mask"].sum() == 0
        else:  # the left half was drawn; it must stay exactly the left half after resizing
            assert item["mask"][0, :, :6].eq(1).all() and item["mask"][0, :, 6:].eq(0).all()
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 8, 12) and batch["label"].tolist() == [0, 0, 1, 1]


def test_load_split_goes_through_the_registry_entry_point(tmp_path, monkeypatch):
    root = make_mvtec(tmp_path)
    calls = []
    real_get = registry.get

    def spy(group, name):
        calls.append((group, name))
        return real_get(group, name)

    monkeypatch.setattr(registry, "get", spy)
    ds = load_split("mvtec", root, "widget", "train", (8, 8))
    assert ("datasets", "mvtec") in calls
    assert real_get("datasets", "mvtec") is mvtec.list_mvtec
    assert len(ds) == 3


def test_a_plugin_format_is_loaded_like_a_builtin(tmp_path, monkeypatch):
    from conftest import make_distribution

    site = make_distribution(tmp_path / "site", "moleflow-toyformat", "0.1", {
        "moleflow.datasets": {"toyfmt": "mf_toyformat:list_toy"}},
        {"mf_toyformat": """
            from pathlib import Path
            from moleflow.data.samples import Sample
            def list_toy(root, class_name, split, *, split_percent=(70, 15, 15), seed=0):
                return [Sample(p, 0, None, "good", class_name) for p in sorted(Path(root, class_name).glob("*.png"))]
        """})
    monkeypatch.syspath_prepend(str(site))
    data = tmp_path / "data"
    save(data / "bolt" / "a.png", noise(10, 10, 0))
    ds = load_split("toyfmt", data, "bolt", "train", (4, 4))
    assert ds[0]["image"].shape == (3, 4, 4)
    assert list_classes("toyfmt", data) == ["bolt"]  # no `classes` hook: subfolders are the classes


def test_list_classes_of_each_builtin_format(tmp_path):
    make_mvtec(tmp_path / "mv", cls="b")
    make_mvtec(tmp_path / "mv", cls="a")
    (tmp_path / "mv" / "not_a_class").mkdir()
    assert list_classes("mvtec", tmp_path / "mv") == ["a", "b"]
    assert list_classes("folder", tmp_path / "mv") == []


# ---------------------------------------------------------------- image modes and resizing

def test_16bit_line_scan_image_keeps_its_full_range(tmp_path):
    # 976x176 (WxH) 16-bit grayscale: a horizontal ramp over the full uint16 range
    ramp = np.tile(np.linspace(0, 65535, 976).round().astype(np.uint16), (176, 1))
    path = save(tmp_path / "line.png", Image.fromarray(ramp))
    assert Image.open(path).mode.startswith("I;16")
    full = to_float_rgb(Image.open(path))
    assert full.shape == (176, 976, 3)
    np.testing.assert_allclose(full[0, :, 0], ramp[0] / 65535.0, atol=1e-6)  # not clipped at 255
    assert np.array_equal(full[..., 0], full[..., 2])
    img = load_image(path, (22, 122))
    assert img.shape == (3, 22, 122)
    row = img[0, 11]
    assert row[0] < 0.01 and row[-1] > 0.99 and bool((row[1:] >= row[:-1]).all())
    assert abs(float(img[0, :, 61].mean()) - 0.5) < 0.01


def test_32bit_integer_tiff_is_scaled_by_its_dtype_maximum(tmp_path):
    arr = np.full((8, 8), 2**30, dtype=np.int32)
    path = save(tmp_path / "i32.tif", Image.fromarray(arr, mode="I"))
    assert abs(float(load_image(path, (8, 8)).mean()) - 0.5) < 1e-3


def test_grayscale_rgba_and_palette_become_three_channel_float(tmp_path):
    gray = save(tmp_path / "g.png", np.full((9, 13), 51, np.uint8))
    img = load_image(gray, (9, 13))
    assert img.shape == (3, 9, 13) and torch.allclose(img, torch.full_like(img, 0.2))

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0  # fully transparent red: alpha is dropped, colour kept
    img = load_image(save(tmp_path / "a.png", rgba), (8, 8))
    assert torch.allclose(img[0], torch.ones(8, 8)) and img[1:].abs().max() == 0

    pal = Image.new("P", (8, 8))
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 8, 4))  # top half: palette index 1 = green
    img = load_image(save(tmp_path / "p.png", pal), (8, 8))
    assert img[1, :4].eq(1).all() and img[1, 4:].eq(0).all() and img[0].eq(0).all()


def test_downscaling_is_antialiased_and_masks_stay_binary(tmp_path):
    # 3x downscale of a checkerboard: plain bilinear samples single pixels (0 or 1), antialiasing averages
    checker = ((np.indices((24, 24)).sum(0) % 2) * 255).astype(np.uint8)
    img = load_image(save(tmp_path / "c.png", checker), (8, 8))
    assert torch.allclose(img, torch.full_like(img, 0.5), atol=0.07)

    blob = np.random.default_rng(0).integers(0, 2, (32, 32)).astype(np.uint8) * 255
    _, mask = load_pair(save(tmp_path / "i.png", noise(32, 32, 1)), save(tmp_path / "m.png", blob), (7, 11))
    assert mask.shape == (1, 7, 11) and set(mask.unique().tolist()) == {0.0, 1.0}


def test_instance_id_masks_count_every_nonzero_pixel(tmp_path):
    ids = np.zeros((8, 8), np.uint8)
    ids[0, 0], ids[7, 7] = 1, 2  # VisA stores defect instance ids, not 255
    _, mask = load_pair(save(tmp_path / "i.png", noise(8, 8, 0)), save(tmp_path / "m.png", ids), (8, 8))
    assert mask.sum() == 2


@pytest.mark.parametrize("value, expected", [(5, (5, 5)), ([5], (5, 5)), ([4, 6], (4, 6)), ((976, 176), (976, 176))])
def test_parse_img_size(value, expected):
    assert parse_img_size(value) == expected


@pytest.mark.parametrize("value", [[1, 2, 3], 0, [-4], "224", True, [2.5], []])
def test_parse_img_size_rejects_and_names_bad_values(value):
    with pytest.raises(MoleflowError, match=r"--img_size .*" + repr(value).replace("[", r"\[").replace("]", r"\]")):
        parse_img_size(value)


# ---------------------------------------------------------------- VisA

def make_visa(root: Path) -> Path:
    rows = []
    for obj in ("candle", "pcb1"):
        for split, label, i in [("train", "normal", 0), ("train", "normal", 1), ("test", "normal", 2),
                                ("test", "anomaly", 3)]:
            sub = "Normal" if label == "normal" else "Anomaly"
            image = f"{obj}/Data/Images/{sub}/{i:04d}.JPG"
            save(root / image, noise(12, 20, i))
            mask = ""
            if label == "anomaly":
                mask = f"{obj}/Data/Masks/Anomaly/{i:04d}.png"
                save(root / mask, left_half_mask(12, 20))
            rows.append([obj, split, label, image, mask])
    write_csv(root / "split_csv" / "1cls.csv", ["object", "split", "label", "image", "mask"], rows)
    return root


def test_visa_follows_its_split_file(tmp_path):
    root = make_visa(tmp_path)
    assert list_classes("visa", root) == ["candle", "pcb1"]
    train = registry.get("datasets", "visa")(root, "pcb1", "train")
    assert [s.path.name for s in train] == ["0000.JPG", "0001.JPG"] and {s.class_name for s in train} == {"pcb1"}
    test = load_split("visa", root, "pcb1", "test", (6, 10))
    assert [(s.label, s.path.name) for s in test.samples] == [(1, "0003.JPG"), (0, "0002.JPG")]  # path order
    assert test.samples[0].mask_path == root / "pcb1/Data/Masks/Anomaly/0003.png"
    assert test[0]["mask"][0, :, :5].eq(1).all() and test[0]["mask"][0, :, 5:].eq(0).all()
    assert test.samples[1].mask_path is None and test[1]["mask"].sum() == 0


def test_visa_anomaly_without_mask_and_bad_label_are_named(tmp_path):
    root = make_visa(tmp_path)
    csv_path = root / "split_csv" / "1cls.csv"
    header, *rows = list(csv.reader(csv_path.open()))
    assert rows[3][:3] == ["candle", "test", "anomaly"]  # file line 5
    rows[3][4] = ""
    write_csv(csv_path, header, rows)
    with pytest.raises(MoleflowError, match=r"1cls\.csv line 5: anomalous image .*0003\.JPG has no mask"):
        load_split("visa", root, "candle", "test", (8, 8))
    rows[1][2] = "ok"  # file line 3
    write_csv(csv_path, header, rows)
    with pytest.raises(MoleflowError, match=r"1cls\.csv line 3: label 'ok'"):
        load_split("visa", root, "candle", "train", (8, 8))


# ---------------------------------------------------------------- folder format

def make_folder(root: Path, n_good: int = 10, n_defect: int = 6, masks: str | None = "_mask") -> Path:
    for i in range(n_good):
        save(root / "cable" / "images" / "good" / f"g{i:02d}.png", noise(16, 16, i))
    for i in range(n_defect):
        save(root / "cable" / "images" / "defect" / f"d{i:02d}.png", noise(16, 16, 50 + i))
        if masks is not None:
            save(root / "cable" / "masks" / f"d{i:02d}{masks}.png", left_half_mask(16, 16))
    return root


@pytest.mark.parametrize("suffix", ["_mask", ""])
def test_folder_format_split_is_anomaly_aware(tmp_path, suffix):
    root = make_folder(tmp_path, masks=suffix)
    parts = {s: load_split("folder", root, "cable", s, (8, 8), split_percent=(60, 20, 20), seed=1).samples
             for s in ("train", "val", "test")}
    assert not any(s.label for s in parts["train"]) and len(parts["train"]) == 6
    assert sum(s.label for s in parts["val"]) == 3 and sum(s.label for s in parts["test"]) == 3
    every = sorted(str(s.path) for p in parts.values() for s in p)
    assert every == sorted(str(p) for p in (root / "cable" / "images").rglob("*.png"))
    defect = next(s for s in parts["test"] if s.label)
    assert defect.mask_path == root / "cable" / "masks" / f"{defect.path.stem}{suffix}.png"
    assert defect.defect_type == "defect"
    # the split is the documented rule applied to the full listing
    from moleflow.data.folder import list_all_folder
    assert anomaly_aware_split(list_all_folder(root, "cable"), (60, 20, 20), 1)["val"] == parts["val"]


def test_folder_without_masks_dir_gives_all_zero_masks(tmp_path):
    root = make_folder(tmp_path, masks=None)
    ds = load_split("folder", root, "cable", "test", (8, 8))
    assert not ds.has_masks
    assert all(ds[i]["mask"].sum() == 0 for i in range(len(ds)))


def test_folder_masks_dir_with_a_missing_mask_is_an_error(tmp_path):
    root = make_folder(tmp_path)
    (root / "cable" / "masks" / "d03_mask.png").unlink()
    with pytest.raises(MoleflowError, match=r"d03\.png has no mask: expected .*masks/d03\.png or .*d03_mask\.png"):
        load_split("folder", root, "cable", "train", (8, 8))


# ---------------------------------------------------------------- csv format

def make_csv_class(root: Path, rows: list[list[str]] | None = None) -> Path:
    cls = root / "gear"
    for i in range(8):
        save(cls / "img" / f"n{i}.png", noise(16, 16, i))
    for i in range(4):
        save(cls / "img" / f"a{i}.png", noise(16, 16, 20 + i))
        save(cls / "gt" / f"a{i}.png", left_half_mask(16, 16))
    if rows is None:
        rows = ([[f"img/n{i}.png", "0", ""] for i in range(8)]
                + [[f"img/a{i}.png", "1", f"gt/a{i}.png"] for i in range(4)])
    write_csv(cls / "labels.csv", ["filename", "is_anomalous", "mask_path"], rows)
    return root


def test_csv_format_lists_and_splits(tmp_path):
    root = make_csv_class(tmp_path)
    assert list_classes("csv", root) == ["gear"]
    train = load_split("csv", root, "gear", "train", (8, 8), split_percent=(50, 25, 25), seed=4)
    test = load_split("csv", root, "gear", "test", (8, 8), split_percent=(50, 25, 25), seed=4)
    assert len(train) == 4 and not any(s.label for s in train.samples)
    assert sum(s.label for s in test.samples) == 2 and test.has_masks
    anomalous = next(s for s in test.samples if s.label)
    assert anomalous.mask_path == root / "gear" / "gt" / anomalous.path.name


def test_csv_absolute_path_inside_root_is_accepted(tmp_path):
    root = tmp_path / "data"
    make_csv_class(root)
    rows = [[str((root / "gear" / "img" / f"n{i}.png").resolve()), "false", ""] for i in range(8)]
    write_csv(root / "gear" / "labels.csv", ["filename", "is_anomalous"], rows)
    assert len(load_split("csv", root, "gear", "train", (8, 8))) == 6


@pytest.mark.parametrize("bad_name, fragment", [
    ("img/missing.png", r"labels\.csv line 3: file .*missing\.png not found"),
    ("../../outside.png", r"labels\.csv line 3: path '\.\./\.\./outside\.png' leaves the data root"),
    ("ABSOLUTE", r"labels\.csv line 3: path '.*outside\.png' leaves the data root"),
])
def test_csv_rows_naming_missing_or_escaping_files_are_errors(tmp_path, bad_name, fragment):
    outside = save(tmp_path / "outside.png", noise(8, 8, 0))  # exists, so only the location is wrong
    root = tmp_path / "data"
    name = str(outside) if bad_name == "ABSOLUTE" else bad_name
    make_csv_class(root, [["img/n0.png", "0", ""], [name, "0", ""], ["img/n1.png", "0", ""]])
    with pytest.raises(MoleflowError, match=fragment):
        load_split("csv", root, "gear", "train", (8, 8))


def test_csv_masks_all_or_none_and_flag_values(tmp_path):
    rows = ([[f"img/n{i}.png", "0", ""] for i in range(8)]
            + [["img/a0.png", "1", "gt/a0.png"], ["img/a1.png", "yes", ""]])
    root = make_csv_class(tmp_path, rows)
    with pytest.raises(MoleflowError, match=r"line 11 \(.*a1\.png\): anomalous image without mask_path"):
        load_split("csv", root, "gear", "test", (8, 8))
    make_csv_class(tmp_path, [["img/n0.png", "maybe", ""]])
    with pytest.raises(MoleflowError, match=r"line 2: is_anomalous 'maybe'"):
        load_split("csv", root, "gear", "test", (8, 8))


# ---------------------------------------------------------------- bad input, one clear line each

def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_missing_data_path(tmp_path):
    with pytest.raises(MoleflowError) as e:
        load_split("mvtec", tmp_path / "nowhere", "widget", "train", (8, 8))
    assert f"data path {tmp_path / 'nowhere'} does not exist" in one_line(e)


@pytest.mark.parametrize("fmt", ["mvtec", "folder", "csv", "visa"])
def test_unknown_class_lists_the_classes_found(tmp_path, fmt):
    builders = {"mvtec": lambda r: make_mvtec(r, cls="bottle"), "folder": make_folder,
                "csv": make_csv_class, "visa": make_visa}
    builders[fmt](tmp_path)
    found = ", ".join(list_classes(fmt, tmp_path))
    assert found
    with pytest.raises(MoleflowError) as e:
        load_split(fmt, tmp_path, "zipper", "train", (8, 8))
    assert "unknown class 'zipper'" in one_line(e) and f"classes found: {found}" in one_line(e)


def test_data_path_pointing_at_a_class_folder_names_the_parent(tmp_path):
    make_mvtec(tmp_path)
    with pytest.raises(MoleflowError) as e:
        load_split("mvtec", tmp_path / "widget", "widget", "train", (8, 8))
    assert f"pass its parent {tmp_path} as --data_path" in one_line(e)


def test_empty_train_good(tmp_path):
    root = make_mvtec(tmp_path, n_train=0)
    (root / "widget" / "train" / "good").mkdir(parents=True)
    with pytest.raises(MoleflowError) as e:
        load_split("mvtec", root, "widget", "train", (8, 8))
    assert f"no training images in {root / 'widget' / 'train' / 'good'}" in one_line(e)


def test_corrupt_image_fails_before_loading(tmp_path):
    root = make_mvtec(tmp_path)
    bad = root / "widget" / "train" / "good" / "001.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(MoleflowError) as e:
        load_split("mvtec", root, "widget", "train", (8, 8))
    assert f"cannot read image {bad}" in one_line(e)


def test_truncated_image_is_named_when_read(tmp_path):
    root = make_mvtec(tmp_path, size=(32, 32))
    bad = root / "widget" / "train" / "good" / "002.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    ds = load_split("mvtec", root, "widget", "train", (8, 8))  # the header is intact
    with pytest.raises(MoleflowError) as e:
        ds[2]
    assert f"cannot read image {bad}" in one_line(e)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_mask_with_another_size_than_its_image(tmp_path):
    root = make_mvtec(tmp_path)
    mask = save(root / "widget" / "ground_truth" / "scratch" / "001_mask.png", left_half_mask(16, 18))
    with pytest.raises(MoleflowError) as e:
        load_split("mvtec", root, "widget", "test", (16, 16))
    assert f"mask {mask} is 18x16" in one_line(e) and "is 16x16" in one_line(e)
    # the same check guards direct loading, before any resize
    with pytest.raises(MoleflowError, match="18x16"):
        AnomalyDataset([Sample(mask.parents[2] / "test/scratch/001.png", 1, mask, "scratch", "widget")], (16, 16))[0]


def test_defect_image_without_mask_names_the_expected_mask(tmp_path):
    root = make_mvtec(tmp_path)
    expected = root / "widget" / "ground_truth" / "scratch" / "000_mask.png"
    expected.unlink()
    with pytest.raises(MoleflowError) as e:
        load_split("mvtec", root, "widget", "test", (8, 8))
    assert f"expected {expected}" in one_line(e)


def test_percentages_not_summing_to_100(tmp_path):
    root = make_folder(tmp_path)
    with pytest.raises(MoleflowError) as e:
        load_split("folder", root, "cable", "train", (8, 8), split_percent=(70, 20, 20))
    assert "--split_percent 70 20 20 sums to 110" in one_line(e)


def test_unknown_format_lists_the_known_ones(tmp_path):
    with pytest.raises(MoleflowError) as e:
        load_split("imagenet", tmp_path, "widget", "train", (8, 8))
    assert "unknown dataset 'imagenet'" in one_line(e) and "mvtec" in one_line(e) and "visa" in one_line(e)


def test_unknown_split_name(tmp_path):
    with pytest.raises(MoleflowError, match="unknown split 'validation'"):
        load_split("mvtec", make_mvtec(tmp_path), "widget", "validation", (8, 8))
