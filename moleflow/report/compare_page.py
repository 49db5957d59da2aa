"""`moleflow compare RUN... --report DIR`: every run's plots side by side, one column per run, one row per plot.

Plots come from each run's metrics.json; the ROC and PRO curves from its report/curves.json when the run has a
report (the default), else the image ROC alone from per_image.jsonl (pixel curves need the maps)."""

from __future__ import annotations

import json
import secrets
import shutil
from html import escape
from pathlib import Path
from typing import Any

from moleflow.errors import MoleflowError
from moleflow.evaluation import metrics as M
from moleflow.report import html as H
from moleflow.report.plots import run_plots, thin
from moleflow.report.writer import MARKER, check_target, swap_in
from moleflow.run_folder import RunFolder
from moleflow.run_summary import expand_run_dirs

ROWS = (("matrix_image_auroc", "accuracy matrix, image AUROC"), ("matrix_pixel_auroc", "accuracy matrix, pixel AUROC"),
        ("params", "parameter growth per task"), ("time", "time split"))


def _curves(run: Path, metrics: dict) -> tuple[dict[str, Any], str]:
    saved = run / "report" / "curves.json"
    if saved.is_file():
        try:
            return json.loads(saved.read_text(encoding="utf-8")), "from its report"
        except ValueError:
            pass
    records = RunFolder.open(run).read_per_image()
    per_class = (metrics.get("final") or {}).get("per_class") or {}
    out = {}
    for c in metrics.get("classes") or []:
        rows = [r for r in records if r["class"] == c]
        roc = M.roc_curve([r["ground_truth"] for r in rows], [r["score"] for r in rows]) if rows else None
        out[c] = {"roc": None if roc is None else dict(zip(("x", "y"), thin(*roc))), "pixel_roc": None, "pro": None,
                  "values": {k: (per_class.get(c) or {}).get(k) for k in ("image_auroc", "pixel_auroc", "aupro")}}
    return out, "image ROC only (no report/curves.json: `moleflow report RUN_DIR` adds the pixel curves)"


def _label(run: Path, metrics: dict) -> str:
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    flat = {k: v for section in config.values() if isinstance(section, dict) for k, v in section.items()}
    mean = (metrics.get("final") or {}).get("mean") or {}
    return (f"{flat.get('version', '?')} · {flat.get('model', '?')}/{flat.get('strategy', '?')} · seed "
            f"{flat.get('seed', '?')}\n{run.name}\nimage AUROC {H.fmt(mean.get('image_auroc'))}, pixel AUROC "
            f"{H.fmt(mean.get('pixel_auroc'))}, AUPRO {H.fmt(mean.get('aupro'))}")


def write_compare_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write DIR/index.html with the runs' plots side by side; returns its path."""
    runs, _ = expand_run_dirs(run_dirs)
    if not runs:
        raise MoleflowError("no finished runs to put side by side")
    target = check_target(Path(out))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(3)}.tmp"
    tmp.mkdir()
    try:
        columns, classes = [], []
        for i, run in enumerate(runs):
            metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
            curves, note = _curves(run, metrics)
            files = {}
            for key, png in run_plots(metrics, curves).items():
                name = f"run{i + 1}/{key.replace(':', '_').replace('/', '_')}.png"
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(png)
                files[key] = name
            classes += [c for c in curves if c not in classes]
            columns.append((run, _label(run, metrics), note, files))
        head = "".join(f"<th class=l>run {i + 1}<br>{escape(label).replace(chr(10), '<br>')}<br>"
                       f'<span class="muted">curves: {escape(note)}</span></th>'
                       for i, (_, label, note, _) in enumerate(columns))
        rows = [(key, title) for key, title in ROWS] + [(f"curves:{c}", f"ROC and PRO curves, {c}") for c in classes]
        body = "".join(
            f"<tr><th class=l>{escape(title)}</th>"
            + "".join(f"<td class=l>{H.plot_img(files[key], title) if key in files else 'n/a'}</td>"
                      for _, _, _, files in columns) + "</tr>" for key, title in rows)
        runs_list = "".join(f"<li>run {i + 1}: {escape(str(run))}</li>" for i, (run, *_) in enumerate(columns))
        style = "<style>td img{max-width:640px;width:100%;height:auto}</style>"
        page = H.page(f"moleflow compare: {len(runs)} runs side by side", [], f"<ul>{runs_list}</ul>{style}"
                      f"<table><tr><th></th>{head}</tr>{body}</table>")
        (tmp / "index.html").write_text(page, encoding="utf-8")
        (tmp / MARKER).write_text("written by `moleflow compare --report`; replaced when written again\n")
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target / "index.html"
