"""`write_report`: one run folder -> one static HTML report (index, and per class a dataset and an evaluation
page), its image tiles, its plots (also logged to TensorBoard when a logger is given) and curves.json.

The report is written into a hidden sibling folder and swapped in at the end, so a report is either the old
one or the new one, never half of each; an existing folder that is not a moleflow report is never replaced.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import shutil
import warnings
from pathlib import Path, PurePath
from typing import Any, Callable

import numpy as np

from moleflow.config import read_run_config
from moleflow.errors import MoleflowError
from moleflow.evaluation import metrics as M
from moleflow.evaluation import visualize as V
from moleflow.report import html as H
from moleflow.report import tiles as T
from moleflow.report.pages import index_page
from moleflow.report.plots import png_rgb, run_plots, thin
from moleflow.report.source import ClassMaps, Rescore, load_class_maps
from moleflow.run_folder import RunFolder

MARKER = ".moleflow-report"  # names a folder this module may replace
EAGER_TILES = 8  # tiles loaded at once (the rest load when scrolled to)


def slugs(names: list[str]) -> dict[str, str]:
    """A distinct file-name-safe stem per class name."""
    out: dict[str, str] = {}
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"
        slug, n = base, 2
        while slug in out.values():
            slug, n = f"{base}_{n}", n + 1
        out[name] = slug
    return out


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def class_curves(records: list[dict], cm: ClassMaps, values: dict) -> dict[str, Any]:
    """ROC of the recorded image scores, pixel ROC and PRO of the maps, thinned for plotting (None: undefined)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MetricUndefinedWarning)
        found = {"roc": M.roc_curve([r["ground_truth"] for r in records], [r["score"] for r in records]),
                 "pixel_roc": M.pixel_roc_curve(cm.masks, cm.maps), "pro": M.pro_curve(cm.masks, cm.maps)}
    out: dict[str, Any] = {k: None if v is None else dict(zip(("x", "y"), thin(*v))) for k, v in found.items()}
    out["values"] = {k: values.get(k) for k in ("image_auroc", "pixel_auroc", "aupro")}
    return out


class _Writer:
    def __init__(self, folder: Path, run: Any, cfg: Any):
        self.folder, self.run, self.cfg = folder, run, cfg

    def put(self, relative: str, data: bytes | str) -> str:
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)
        return relative

    def class_pages(self, name: str, slug: str, records: list[dict], cm: ClassMaps, values: dict, limit: int,
                    nav: list[tuple[str, str]], curves_png: str) -> dict:
        """Render the tiles of one class and write its two pages; returns the numbers the index shows."""
        index = cm.index()
        missing = [r["filename"] for r in records if r["filename"] not in index]
        if missing:
            raise MoleflowError(f"per_image.jsonl names {missing[0]} (class {name}), which the maps do not hold; "
                                "the run folder is inconsistent: run `moleflow eval --run RUN_DIR` first")
        thr = _float(values.get("f1_threshold"))
        scale, extra_scales = V.class_scales(cm.maps, cm.extras, thr)
        scores = [float(r["score"]) for r in records]
        finite = [s for s in scores if math.isfinite(s)] or [0.0]
        order = T.worst_first(records, thr)
        chosen = order if limit < 0 else order[:limit]
        tiles = []
        for k in chosen:
            r, i = records[k], index[records[k]["filename"]]
            if not Path(r["filename"]).is_file():
                raise MoleflowError(f"image {r['filename']} of {self.run.path}/per_image.jsonl not found (paths are "
                                    "recorded as `moleflow train` was given them: run `moleflow report` from the "
                                    "folder the run started in, with its data in place)")
            rgb = T.load_rgb(r["filename"])
            size = rgb.shape[:2]
            mask = T.full_size_mask(cm.mask_files.get(r["filename"]), cm.masks[i], size)
            stem = f"img/{slug}/{k:04d}"
            pictures = [(self.put(f"{stem}_input.jpg", V.encode_jpeg(rgb)), f"input {size[1]}x{size[0]}"),
                        (self.put(f"{stem}_map.jpg", V.encode_jpeg(V.heat_overlay(rgb, cm.maps[i], mask, *scale))),
                         "anomaly map")]
            for extra, m in cm.extras.items():
                overlay = V.heat_overlay(rgb, m[i], mask, *extra_scales[extra])
                pictures.append((self.put(f"{stem}_{re.sub(r'[^A-Za-z0-9]+', '_', extra)}.jpg",
                                          V.encode_jpeg(overlay)), f"{extra} map"))
            dataset_picture = pictures[0]
            if mask.any():
                dataset_picture = (self.put(f"{stem}_mask.jpg", V.encode_jpeg(T.mask_overlay(rgb, mask))),
                                   "input + ground-truth mask")
            label = T.path_label(r["filename"], self.cfg.data.data_path, name)
            tiles.append({"record": r, "pictures": pictures, "dataset_picture": dataset_picture, "label": label,
                          "outcome": T.outcome(r), "defect": PurePath(label).parent.name or "",
                          "score_colour": T.score_colour(float(r["score"]), thr, min(finite), max(finite))})
        shown = (f"all {len(records)} test images shown" if len(chosen) == len(records) else
                 f"{len(chosen)} of {len(records)} test images shown (--max_per_class {limit}; "
                 f"`moleflow report RUN_DIR --max_per_class -1` shows all)")
        outcomes = [T.outcome(r) for r in records]
        counts = {k: outcomes.count(k) for k in ("TP", "TN", "FP", "FN", "undecided")}
        summary = (f"<p>{len(records)} test images: {counts['TN'] + counts['FP']} normal, "
                   f"{counts['TP'] + counts['FN']} anomalous. At T: {counts['FN']} false negatives, {counts['FP']} "
                   f"false positives, {counts['TP']} true positives, {counts['TN']} true negatives"
                   + (f", {counts['undecided']} undecided" if counts["undecided"] else "")
                   + f". Image AUROC {H.fmt(values.get('image_auroc'))}, pixel AUROC "
                     f"{H.fmt(values.get('pixel_auroc'))}, AUPRO {H.fmt(values.get('aupro'))}.</p>")
        bars = {k: (f"colorbar_{s.cmap}.png", s.vmin, s.vmax) for k, s in extra_scales.items()}
        view = {"threshold": thr, "range": (scale.vmin, scale.vmax), "colorbar": f"colorbar_{scale.cmap}.png",
                "extra_bars": bars, "shown": shown}
        evaluation = (summary + H.evaluation_legend(view) + "<h2>ROC and PRO curves</h2>"
                      + f'<div class="plots">{H.plot_img(curves_png, f"ROC and PRO curves of {name}")}</div>'
                      + "<h2>Test images, worst first</h2>"
                      + H.grid([H.evaluation_tile(t, n < EAGER_TILES) for n, t in enumerate(tiles)]))
        by_path = sorted(tiles, key=lambda t: (int(t["record"]["ground_truth"]), t["label"]))
        dataset = (H.dataset_legend(view) + f"<p>{counts['TN'] + counts['FP']} normal and "
                   f"{counts['TP'] + counts['FN']} anomalous test images; normal first, then by path.</p>"
                   + H.grid([H.dataset_tile(t, n < EAGER_TILES) for n, t in enumerate(by_path)], "data"))
        self.put(f"{slug}_evaluation.html", H.page(f"{name}: evaluation", nav, evaluation))
        self.put(f"{slug}_dataset.html", H.page(f"{name}: dataset", nav, dataset))
        return {"counts": counts, "shown": len(chosen)}


def check_target(target: Path) -> Path:
    """`target`, unless it is something other than an empty folder or an earlier report (never replaced)."""
    if target.exists() and not (target / MARKER).is_file() and (not target.is_dir() or any(target.iterdir())):
        raise MoleflowError(f"{target} exists and is not a moleflow report; pass --out with a new or empty folder")
    return target


def swap_in(tmp: Path, target: Path) -> None:
    old = target.parent / f".{target.name}.{secrets.token_hex(3)}.old"
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_report(run_dir: str | Path, out: str | Path | None = None, *, max_per_class: int | None = None,
                 class_maps: dict[str, ClassMaps] | None = None, tb: Any = None, progress: bool = True,
                 log: Callable[[str], None] = print, rescore: Rescore | None = None) -> Path:
    """Write the report of a finished run; returns its index.html. `class_maps` are the maps kept in memory
    at the end of training; without them they are read from maps/*.npz or re-scored (source.py)."""
    run = RunFolder.open(run_dir)
    cfg = read_run_config(run)
    metrics, records = run.read_json("metrics.json"), run.read_per_image()
    limit = cfg.eval.report_max_per_class if max_per_class is None else int(max_per_class)
    if limit < -1:
        raise MoleflowError(f"--max_per_class {limit}: must be >= -1 (-1 = every image)")
    target = check_target(Path(out) if out else run.path / "report")
    classes = list(metrics.get("classes") or cfg.data.classes)
    if class_maps is None:
        class_maps, source = load_class_maps(run, cfg, progress, log, rescore)
    else:
        source = "kept in memory at the end of training"
    absent = [c for c in classes if c not in class_maps]
    if absent:
        raise MoleflowError(f"no anomaly maps for class {absent[0]} of {run.path}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(3)}.tmp"
    tmp.mkdir()
    try:
        w = _Writer(tmp, run, cfg)
        slug = slugs(classes)
        per_class = (metrics.get("final") or {}).get("per_class") or {}
        nav = [("index.html", "index")] + [(f"{slug[c]}_{p}.html", f"{c} {p}") for c in classes
                                             for p in ("dataset", "evaluation")]
        w.put(f"colorbar_{V.HEAT_CMAP}.png", T.colorbar_png(V.HEAT_CMAP))
        w.put(f"colorbar_{V.EXTRA_CMAP}.png", T.colorbar_png(V.EXTRA_CMAP))
        curves = {c: class_curves([r for r in records if r["class"] == c], class_maps[c], per_class.get(c, {}))
                  for c in classes}
        plots = run_plots(metrics, curves)
        files = {}
        for key, png in plots.items():
            stem = f"curves_{slug[key[7:]]}" if key.startswith("curves:") else key
            files[key] = w.put(f"plots/{stem}.png", png)
            if tb is not None:
                tb.image(f"report/{stem}", png_rgb(png), max(len(metrics.get("tasks") or [1]) - 1, 0))
        w.put("curves.json", json.dumps(curves))
        shown = {c: w.class_pages(c, slug[c], [r for r in records if r["class"] == c], class_maps[c],
                                  per_class.get(c, {}), limit, nav, files[f"curves:{c}"]) for c in classes}
        w.put("index.html", index_page(run, cfg, metrics, classes, slug, shown, files, source, nav, records))
        w.put(MARKER, "written by `moleflow report`; this folder is replaced when the report is written again\n")
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target / "index.html"


def report_size(folder: Path) -> tuple[int, int]:
    """(files, bytes) of a report folder."""
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    return len(files), int(np.sum([p.stat().st_size for p in files])) if files else 0
