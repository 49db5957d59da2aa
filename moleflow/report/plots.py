"""The report's plots (matplotlib, PNG bytes): accuracy matrix heatmaps, ROC and PRO curves per class, parameter
growth per task and the time split. Drawn from metrics.json and the curves (report/curves.json), so
`moleflow compare --report` redraws them for any run. Figures are made without pyplot (no global state)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

DPI = 100
CURVE_POINTS = 400  # vertices kept per curve (plots and curves.json)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    """PNG cropped to what was drawn (nothing cut off; ~20 % cheaper than a constrained layout)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    return buf.getvalue()


def png_rgb(png: bytes) -> np.ndarray:
    """(H,W,3) uint8 of a PNG (what TensorBoard's add_image takes)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def thin(x: np.ndarray, y: np.ndarray, n: int = CURVE_POINTS) -> tuple[list[float], list[float]]:
    """At most n vertices of a curve, first and last kept (the plot of a 16M-pixel curve looks the same)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size > n:
        keep = np.unique(np.round(np.linspace(0, x.size - 1, n)).astype(int))
        x, y = x[keep], y[keep]
    return [round(float(v), 6) for v in x], [round(float(v), 6) for v in y]


def _fmt(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.3f}"


def matrix_plot(matrix: list[list[Any]], tasks: list[str], label: str, bwt: Any = None, fm: Any = None) -> bytes:
    """R[i][j] (metric on task j after training task i) as an annotated heatmap; cells not yet defined grey."""
    n = len(tasks)
    values = np.full((n, n), np.nan)
    for i, row in enumerate(matrix or []):
        for j, v in enumerate(row or []):
            if v is not None and i < n and j < n:
                values[i, j] = float(v)
    side = min(1.6 + 0.62 * n, 11.0)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    low = min(0.5, float(finite.min())) if finite.size else 0.5
    cmap = _cmap("viridis").with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=low, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    size = 9.0 if n <= 6 else 7.0 if n <= 16 else 5.0  # annotations; tick labels one point larger
    for i in range(n):
        for j in range(n):
            if np.isfinite(values[i, j]):
                bright = (values[i, j] - low) / (1.0 - low) > 0.6 if low < 1.0 else True
                ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", fontsize=size,
                        color="black" if bright else "white")
    ax.set_xticks(range(n), tasks, rotation=45 if n > 3 or max(map(len, tasks)) > 8 else 0, ha="right"
                  if n > 3 else "center", fontsize=size + 1)
    ax.set_yticks(range(n), [f"after {t}" for t in tasks], fontsize=size + 1)
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(f"{label} R[i][j]   BWT {_fmt(bwt)}   FM {_fmt(fm)}", fontsize=10)
    return _png(fig)


def _cmap(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name]


def curves_plot(class_name: str, curves: dict[str, Any]) -> bytes:
    """Image ROC, pixel ROC and PRO of one class (curves: name -> {"x", "y"} or None; "values": the metrics)."""
    values = curves.get("values", {})
    fig = _figure(11.0, 3.5)
    axes = fig.subplots(1, 3)
    panels = (("roc", f"image ROC (AUROC {_fmt(values.get('image_auroc'))})", "TPR (anomalous images found)"),
              ("pixel_roc", f"pixel ROC (AUROC {_fmt(values.get('pixel_auroc'))})", "TPR (anomalous pixels found)"),
              ("pro", f"PRO (AUPRO to FPR 0.3: {_fmt(values.get('aupro'))})", "per-region overlap"))
    for ax, (key, title, ylabel) in zip(axes, panels):
        curve = curves.get(key)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("FPR (normal pixels)" if key == "pro" else "FPR", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xticks([0, 0.3, 0.5, 1] if key == "pro" else [0, 0.5, 1])
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if curve is None:
            ax.text(0.5, 0.5, "undefined here\n(needs normal and\nanomalous samples)", ha="center", va="center",
                    fontsize=8, transform=ax.transAxes)
            continue
        ax.plot(curve["x"], curve["y"], color="#c0392b", lw=1.5)
        if key == "pro":
            ax.axvspan(0, 0.3, color="#2980b9", alpha=0.12, label="integrated (FPR <= 0.3)")
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    fig.suptitle(class_name, fontsize=10)
    return _png(fig)


def params_plot(params: dict, tasks: list[str]) -> bytes | None:
    """Stacked bars: parameters present before each task, and what the task adds (its share of the total)."""
    per_task = params.get("per_task") if isinstance(params, dict) else None
    if not per_task or len(per_task) != len(tasks):
        return None
    shared = float(params.get("shared") or 0)
    own = np.array([float(v) for v in per_task])
    before = shared + np.concatenate([[0.0], np.cumsum(own)[:-1]])
    fig = _figure(max(5.0, 1.2 + 0.55 * len(tasks)), 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(tasks))
    ax.bar(x, before, color="#95a5a6", label="before the task (shared + earlier tasks)")
    ax.bar(x, own, bottom=before, color="#2980b9", label="added by the task")
    for i in range(len(tasks)):
        share = 100 * own[i] / (before[i] + own[i]) if before[i] + own[i] else 0.0
        ax.text(i, before[i] + own[i], f"+{share:.1f}%", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, tasks, rotation=45 if len(tasks) > 3 else 0, ha="right" if len(tasks) > 3 else "center",
                  fontsize=8)
    ax.set_ylabel("parameters")
    ax.set_title(f"parameter growth (shared {int(shared):,}, total {int(shared + own.sum()):,})", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


TIME_PARTS = (("backbone_s", "backbone (features once)", "#7f8c8d"), ("train_s", "training", "#2980b9"),
              ("eval_s", "evaluation", "#e67e22"))


def time_plot(timing: dict, fit: list[dict], tasks: list[str]) -> bytes | None:
    """Left: the run's wall time split into backbone, training, evaluation and the rest. Right: training and
    evaluation seconds per task."""
    if not timing or "wall_s" not in timing:
        return None
    fig = _figure(11.0, 3.4)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.3])
    start = 0.0
    for key, name, colour in TIME_PARTS:
        value = float(timing.get(key) or 0.0)
        left.barh(0, value, left=start, color=colour, label=f"{name} {value:.1f} s")
        start += value
    rest = float(timing["wall_s"]) - start
    if rest > 0:
        left.barh(0, rest, left=start, color="#bdc3c7", label=f"other {rest:.1f} s")
    left.set_yticks([])
    left.set_xlabel("seconds")
    left.set_title(f"wall time {float(timing['wall_s']):.1f} s", fontsize=10)
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    train = {int(f["task"]): float(f.get("seconds") or 0.0) for f in fit or [] if "task" in f}
    evals = list(timing.get("eval_after_task_s") or [])
    x = np.arange(len(tasks))
    right.bar(x - 0.2, [train.get(i, 0.0) for i in x], width=0.4, color="#2980b9", label="training")
    right.bar(x + 0.2, [evals[i] if i < len(evals) else 0.0 for i in x], width=0.4, color="#e67e22",
              label="evaluation after the task (every task so far)")
    right.set_xticks(x, tasks, rotation=45 if len(tasks) > 3 else 0, ha="right" if len(tasks) > 3 else "center",
                     fontsize=8)
    right.set_ylabel("seconds")
    right.set_title("per task", fontsize=10)
    right.legend(fontsize=7)
    return _png(fig)


def run_plots(metrics: dict, curves: dict[str, dict]) -> dict[str, bytes]:
    """Every plot of one run by name: matrix_image_auroc, matrix_pixel_auroc, params, time (each where
    metrics.json has what it needs), then "curves:<class>" per class of `curves`."""
    tasks = list(metrics.get("tasks") or [])
    continual = metrics.get("continual") or {}
    out: dict[str, bytes] = {}
    for key, label in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC")):
        matrix = (continual.get("matrix") or {}).get(key)
        if matrix and tasks:
            out[f"matrix_{key}"] = matrix_plot(matrix, tasks, label, (continual.get("bwt") or {}).get(key),
                                               (continual.get("fm") or {}).get(key))
    growth = params_plot(metrics.get("params") or {}, tasks)
    if growth is not None:
        out["params"] = growth
    split = time_plot(metrics.get("timing") or {}, metrics.get("fit") or [], tasks)
    if split is not None:
        out["time"] = split
    for name, c in curves.items():
        out[f"curves:{name}"] = curves_plot(name, c)
    return out
