"""The HTML report (moleflow/report/): what a person sees, read back from the pages.

Tiny runs (96 px images, 64 px model input, 2 epochs). The train-time report (maps in memory), the report of
`moleflow report` from maps/*.npz and the one re-scored from checkpoints must draw the same maps; every tile's
badge and border must agree with per_image.jsonl; every link must resolve; and headless Chromium must render the
evaluation page to a screenshot that is not blank.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moleflow.cli import main

CLASSES = ["leather", "grid", "transistor"]
IMAGE_SIDE = 96  # the files' own size; the model sees 64 px
TINY = ["--img_size", "64", "--no_pretrained", "--embed_dim", "32", "--num_coupling_layers", "4", "--lora_rank", "4",
        "--batch_size", "8", "--device", "cpu", "--quiet", "--experiment_name", "report"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def cli(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def run_of(out: str) -> Path:
    return Path(out.strip().splitlines()[-1].removeprefix("run: "))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """full: default report + --save_maps; two: --report_max_per_class 2; off: --no_report."""
    from moleflow.testing import tiny_benchmark

    root = tmp_path_factory.mktemp("report")
    bench = tiny_benchmark(root / "synth", size=IMAGE_SIDE)
    out = {}
    for name, flags in (("full", ["--num_epochs", "2", "--save_maps"]),
                        ("two", ["--num_epochs", "1", "--report_max_per_class", "2"]),
                        ("off", ["--num_epochs", "1", "--no_report"])):
        code, text, err = cli("train", "--data_path", bench, "--runs_dir", root / "runs", *TINY, *flags)
        assert code == 0, err
        out[name] = run_of(text)
        out[name + "_stdout"] = text
    return out


class Tiles(HTMLParser):
    """Tiles (figure class="tile ...") with their data attributes and badges; every href / src."""

    def __init__(self) -> None:
        super().__init__()
        self.tiles: list[dict] = []
        self.links: list[str] = []
        self._badge = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [a[k] for k in ("href", "src") if a.get(k)]
        classes = (a.get("class") or "").split()
        if tag == "figure" and "tile" in classes:
            self.tiles.append({"classes": classes, **{k: v for k, v in a.items() if k.startswith("data-")},
                               "labels": [], "images": []})
        elif tag == "span" and "badge" in classes and "label" in classes and self.tiles:
            self._badge = True
        elif tag == "img" and self.tiles:
            self.tiles[-1]["images"].append(a["src"])

    def handle_data(self, data):
        if self._badge:
            self.tiles[-1]["labels"].append(data.strip())
            self._badge = False


def parse(page: Path) -> Tiles:
    parser = Tiles()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def per_image(run: Path) -> dict[str, dict]:
    return {r["filename"]: r for r in map(json.loads, (run / "per_image.jsonl").read_text().splitlines())}


# --------------------------------------------------------------------------------------------------- train


def test_train_writes_the_report_and_names_it(runs):
    report = runs["full"] / "report"
    lines = runs["full_stdout"].strip().splitlines()
    assert lines[-1] == f"run: {runs['full']}" and f"report: {report / 'index.html'}" in lines
    index = (report / "index.html").read_text()
    for c in CLASSES:
        assert f'href="{c}_dataset.html"' in index and f'href="{c}_evaluation.html"' in index
        assert (report / f"{c}_dataset.html").is_file() and (report / f"{c}_evaluation.html").is_file()
        assert (report / "plots" / f"curves_{c}.png").is_file()
    for plot in ("matrix_image_auroc", "matrix_pixel_auroc", "params", "time"):
        assert f'src="plots/{plot}.png"' in index
    assert not (runs["off"] / "report").exists() and "report: " not in runs["off_stdout"]  # --no_report
    # the plots also went to TensorBoard
    events = b"".join(p.read_bytes() for p in (runs["full"] / "tb").rglob("events.out.tfevents.*"))
    assert b"report/matrix_image_auroc" in events and b"report/curves_grid" in events


def test_every_tile_agrees_with_per_image_jsonl(runs):
    records = per_image(runs["full"])
    for c in CLASSES:
        mine = {f: r for f, r in records.items() if r["class"] == c}
        evaluation = parse(runs["full"] / "report" / f"{c}_evaluation.html").tiles
        dataset = parse(runs["full"] / "report" / f"{c}_dataset.html").tiles
        assert sorted(t["data-filename"] for t in evaluation) == sorted(mine)  # every image, once
        assert sorted(t["data-filename"] for t in dataset) == sorted(mine)
        for tile in evaluation:
            r = mine[tile["data-filename"]]
            state = {True: "correct", False: "incorrect", None: "undecided"}[r["correct"]]
            assert state in tile["classes"] and tile["data-correct"] == str(r["correct"]).lower()
            assert tile["labels"] == ["Anomalous" if r["ground_truth"] else "Normal"]
        for tile in dataset:  # one badge per image, naming its ground truth
            assert tile["labels"] == ["Anomalous" if mine[tile["data-filename"]]["ground_truth"] else "Normal"]
        # worst first: every wrong decision before every right one
        wrong = [t["data-correct"] == "false" for t in evaluation]
        assert wrong == sorted(wrong, reverse=True)


def test_only_links_to_files_that_exist_and_nothing_cut_off(runs):
    report = runs["full"] / "report"
    pages = sorted(report.glob("*.html"))
    assert len(pages) == 1 + 2 * len(CLASSES)
    for page in pages:
        text = page.read_text()
        assert "overflow:hidden" not in text and "text-overflow" not in text and "<script" not in text
        for link in parse(page).links:
            assert not re.match(r"^[a-z]+:", link) and not link.startswith("/"), f"{page.name}: {link}"
            assert (report / link).is_file(), f"{page.name} links to {link}, which does not exist"


def test_overlays_are_drawn_at_the_images_own_resolution(runs):
    tiles = parse(runs["full"] / "report" / "grid_evaluation.html").tiles
    for src in tiles[0]["images"]:
        with Image.open(runs["full"] / "report" / src) as im:
            assert im.size == (IMAGE_SIDE, IMAGE_SIDE), src
    with np.load(runs["full"] / "maps" / "grid.npz") as z:
        assert z["maps"].shape[1:] == (64, 64)  # what the model scored


def test_report_max_per_class_keeps_the_worst(runs):
    records = per_image(runs["two"])
    for c in CLASSES:
        tiles = parse(runs["two"] / "report" / f"{c}_evaluation.html").tiles
        assert len(tiles) == 2
        wrong = sum(r["correct"] is False for r in records.values() if r["class"] == c)
        assert sum(t["data-correct"] == "false" for t in tiles) == min(wrong, 2)


def _map_pictures(report: Path, run_report: Path) -> None:
    """Every anomaly-map picture of `report` is byte-identical to the train-time report's."""
    files = sorted(p.relative_to(report) for p in (report / "img").rglob("*_map.jpg"))
    assert files
    for rel in files:
        assert (report / rel).read_bytes() == (run_report / rel).read_bytes(), rel


def test_report_command_from_saved_maps_and_rescored_draws_the_same_maps(runs, tmp_path):
    code, out, err = cli("report", runs["full"], "--out", tmp_path / "from_npz", "--quiet")
    assert code == 0 and out.startswith(f"report: {tmp_path / 'from_npz' / 'index.html'} ("), err
    assert "maps/&lt;class&gt;.npz" in (tmp_path / "from_npz" / "index.html").read_text()
    _map_pictures(tmp_path / "from_npz", runs["full"] / "report")
    # no maps/*.npz: the model is rebuilt from the checkpoints and the test sets scored again
    code, out, err = cli("report", runs["two"], "--out", tmp_path / "rescored", "--quiet", "--max_per_class", "2")
    assert code == 0, err
    assert "re-scored from the run" in (tmp_path / "rescored" / "index.html").read_text()
    _map_pictures(tmp_path / "rescored", runs["two"] / "report")
    # written again into the same folder: replaced, not mixed
    code, _, err = cli("report", runs["two"], "--out", tmp_path / "rescored", "--quiet", "--max_per_class", "1")
    assert code == 0, err
    assert len(list((tmp_path / "rescored" / "img" / "grid").glob("*_map.jpg"))) == 1


def test_report_refuses_a_folder_that_is_not_a_report_and_bad_runs(runs, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, out, err = cli("report", runs["full"], "--out", foreign)
    assert code == 2 and err.count("\n") == 1 and "is not a moleflow report" in err
    assert (foreign / "notes.txt").read_text() == "keep me"
    code, _, err = cli("report", tmp_path / "absent")
    assert code == 2 and err.startswith("error: run folder not found") and err.count("\n") == 1
    code, _, err = cli("report", runs["full"], "--max_per_class", "-3")
    assert code == 2 and "--max_per_class -3" in err


def test_compare_report_puts_runs_side_by_side(runs, tmp_path):
    code, out, err = cli("compare", runs["full"], runs["two"], "--report", tmp_path / "side")
    assert code == 0, err
    index = tmp_path / "side" / "index.html"
    assert f"report: {index}" in out
    parsed = parse(index)
    for run in ("run1", "run2"):
        assert any(link.startswith(f"{run}/matrix_image_auroc") for link in parsed.links)
        assert any(link.startswith(f"{run}/curves_leather") for link in parsed.links)
    assert all((index.parent / link).is_file() for link in parsed.links)


def test_worst_first_order_and_path_labels():
    from moleflow.report.tiles import path_label, worst_first

    rows = [{"filename": "a", "ground_truth": 0, "prediction": 0, "score": 1.0},   # right, margin 4
            {"filename": "b", "ground_truth": 1, "prediction": 0, "score": 4.0},   # false negative, margin 1
            {"filename": "c", "ground_truth": 0, "prediction": 1, "score": 9.0},   # false positive, margin 4
            {"filename": "d", "ground_truth": 1, "prediction": 1, "score": 5.5},   # right, margin 0.5
            {"filename": "e", "ground_truth": 1, "prediction": None, "score": 3.0}]  # no threshold
    assert [rows[i]["filename"] for i in worst_first(rows, 5.0)] == ["c", "b", "d", "a", "e"]
    assert path_label("data/synth/leather/test/color/000.png", "data/synth", "leather") == "test/color/000.png"
    assert path_label("/elsewhere/leather/test/good/001.png", "data/synth", "leather") == "test/good/001.png"


def test_chromium_renders_the_evaluation_page(runs, tmp_path):
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium here: ./run.sh test installs Debian's `chromium` when apt-get can run (root or "
                    "passwordless sudo); this one test needs it")
    page = runs["full"] / "report" / "leather_evaluation.html"
    shot = tmp_path / "shot.png"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1400",
                           f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.shape[:2] == (1400, 1200)
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    assert len(colours) > 500 and rgb.std() > 20, "the screenshot is (nearly) blank"
    # the tiles' borders (green: right, red: wrong) and the map overlays' jet blues were drawn
    near = lambda c: (np.abs(rgb - np.array(c)).sum(axis=2) < 30).sum()  # noqa: E731
    records = [r for r in per_image(runs["full"]).values() if r["class"] == "leather"]
    if any(r["correct"] for r in records):
        assert near((0x1E, 0x84, 0x49)) > 500
    if any(r["correct"] is False for r in records):
        assert near((0xC0, 0x39, 0x2B)) > 500
    assert ((rgb[..., 2] > rgb[..., 0] + 60) & (rgb[..., 2] > 120)).sum() > 2000  # blue map pixels
