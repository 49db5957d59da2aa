"""The report's index page: the run's config summary, the per-class table, the continual matrices and routing,
then every plot."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from moleflow import __version__
from moleflow.options import to_plain
from moleflow.report import html as H
from moleflow.report.tiles import path_label

MATRIX_LABELS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))


def _config_rows(run: Any, cfg: Any) -> list[list[str]]:
    env = run.read_json("env.json") if (run.path / "env.json").is_file() else {}
    b, t, e = cfg.backbone, cfg.train, cfg.eval
    weights = b.backbone_weights or ("pretrained" if b.pretrained else "random init")
    size = "x".join(map(str, cfg.data.size))
    rows = [
        ["run folder", str(run.path)],
        ["version", cfg.run.version or "none (the model's own defaults)"],
        ["model / strategy / router", f"{cfg.model} / {t.strategy} / {t.router}"],
        ["backbone", f"{b.backbone_name} ({weights}), feature width {b.embed_dim or 'kept'}"],
        ["data", f"{cfg.data.data_path} ({cfg.data.dataset_format}), model input {size} px"],
        ["tasks", " -> ".join("+".join(classes) for classes in cfg.data.tasks)],
        ["model options", ", ".join(f"{k}={v}" for k, v in to_plain(cfg.options).items())],
        ["seed", str(t.seed)],
        ["image score", "the model's own, and its own map" if cfg.spec.own_scores else
         f"{e.score_aggregation}" + (f" (top {e.topk})" if e.score_aggregation == "topk" else "")
         + f", map blur sigma {e.blur_sigma:g}"],
    ]
    if env.get("git_sha") not in (None, "unknown"):
        rows.append(["git", f"{env['git_sha'][:10]}" + (" (uncommitted changes)" if env.get("git_dirty") else "")])
    if env.get("device"):
        rows.append(["device", str(env["device"])])
    return rows


def _class_rows(metrics: dict, classes: list[str], slug: dict[str, str], shown: dict[str, dict]) -> list[list[str]]:
    per_class = (metrics.get("final") or {}).get("per_class") or {}
    task_of = metrics.get("class_task") or {}
    tasks = metrics.get("tasks") or []
    rows = []
    for c in classes:
        m, n = per_class.get(c, {}), shown[c]["counts"]
        task = task_of.get(c)
        pages = (f'<a href="{escape(slug[c])}_dataset.html">dataset</a> · '
                 f'<a href="{escape(slug[c])}_evaluation.html">evaluation</a>')
        rows.append([escape(c), escape(tasks[task] if isinstance(task, int) and task < len(tasks) else "?"),
                     f"{n['TN'] + n['FP']} / {n['TP'] + n['FN']}"]
                    + [escape(H.fmt(m.get(k))) for k in ("image_auroc", "pixel_auroc", "aupro", "f1")]
                    + [escape(H.fmt(m.get("f1_threshold"), 6)), f"{n['FP']} / {n['FN']}", _routing_cell(m), pages])
    mean = (metrics.get("final") or {}).get("mean") or {}
    rows.append(["<b>mean</b>", "", ""] + [f"<b>{escape(H.fmt(mean.get(k)))}</b>" for k in
                                           ("image_auroc", "pixel_auroc", "aupro", "f1")]
                + ["", "", f"<b>{_routing_cell(mean)}</b>", ""])
    return rows


def _routing_cell(m: dict) -> str:
    """"all (normal / anomalous)" routing accuracy; runs from before the split show the total only."""
    total = escape(H.fmt(m.get("routing_accuracy")))
    if m.get("routing_accuracy_normal") is None and m.get("routing_accuracy_anomalous") is None:
        return total
    return (f"{total} ({escape(H.fmt(m.get('routing_accuracy_normal')))} / "
            f"{escape(H.fmt(m.get('routing_accuracy_anomalous')))})")


def _matrix_tables(metrics: dict) -> str:
    tasks = metrics.get("tasks") or []
    continual = metrics.get("continual") or {}
    parts = []
    for key, label in MATRIX_LABELS:
        matrix = (continual.get("matrix") or {}).get(key)
        if not matrix:
            continue
        rows = [[f"after {tasks[i] if i < len(tasks) else i}"] + [H.fmt(v) if v is not None else "" for v in row]
                for i, row in enumerate(matrix)]
        names = (("bwt", "BWT"), ("fm", "FM"), ("forgetting_avalanche", "Avalanche forgetting"))
        summary = ", ".join(f"{name} {H.fmt((continual.get(k) or {}).get(key))}" for k, name in names)
        parts.append(f"<h3>{escape(label)}: R[i][j] = {escape(label)} on task j after training task i</h3>"
                     + H.table(["", *tasks], rows) + f'<p class="muted">{escape(summary)}</p>')
    return "".join(parts) or '<p class="muted">no accuracy matrix in metrics.json</p>'


def _confusion_table(confusion: list[list[int]], tasks: list[str]) -> str:
    rows = [[f"true {tasks[i] if i < len(tasks) else i}"] + [str(v) for v in row] for i, row in enumerate(confusion)]
    return H.table(["", *[f"to {t}" for t in tasks]], rows)


def _image_cells(r: dict, slug: dict[str, str], data_path: str) -> list[str]:
    """A per_image record's first cells in the index's image lists: its class (linked to the class's evaluation
    page), the image's path, its ground truth."""
    return [f'<a href="{escape(slug.get(r["class"], ""))}_evaluation.html">{escape(str(r["class"]))}</a>',
            escape(path_label(str(r["filename"]), data_path, str(r["class"]))),
            "anomalous" if r.get("ground_truth") == 1 else "normal"]


def _misrouted(records: list[dict], tasks: list[str], slug: dict[str, str], data_path: str) -> str:
    """Every test image the router sent to another task than its class's, with where it went."""
    wrong = [r for r in records if r.get("routed_task") is not None and r.get("routed_task") != r.get("task")]
    if not wrong:
        return '<p class="muted">no test image was routed to another task</p>'

    def name(task: Any) -> str:
        return str(tasks[task]) if isinstance(task, int) and 0 <= task < len(tasks) else str(task)

    rows = [[*_image_cells(r, slug, data_path), escape(name(r.get("task"))), escape(name(r.get("routed_task")))]
            for r in wrong]
    return (f"<h3>Mis-routed test images ({len(wrong)})</h3>"
            + H.table(["class", "image", "ground truth", "its task", "routed to"], rows, left=2, escape_cells=False))


def _routing(metrics: dict, records: list[dict], slug: dict[str, str], data_path: str) -> str:
    routing = metrics.get("routing") or {}
    confusion, tasks = routing.get("confusion"), metrics.get("tasks") or []
    if not confusion:
        return ""
    parts = [f"<h2>Routing</h2><p>accuracy {escape(H.fmt(routing.get('accuracy')))} (router "
             f"{escape(str(routing.get('router', '?')))}); rows: true task, columns: routed task</p>"
             + _confusion_table(confusion, tasks)]
    for split, numbers in (routing.get("by_split") or {}).items():  # runs from before the split have none
        parts.append(f"<h3>{escape(split)} test images ({numbers.get('images', '?')}): accuracy "
                     f"{escape(H.fmt(numbers.get('accuracy')))}</h3>" + _confusion_table(numbers["confusion"], tasks))
    return "".join(parts) + _misrouted(records, tasks, slug, data_path) + _unlearned(routing, records, slug, data_path)


def _unlearned(routing: dict, records: list[dict], slug: dict[str, str], data_path: str) -> str:
    """The no-learned-task check: every test image here is of a learned class, so each one it flags is wrong."""
    check = routing.get("no_learned_task")
    if not check:  # off (--task_range_memory 0), or a run from before it
        return ""
    flagged = [r for r in records if r.get("no_learned_task")]
    head = (f"<h3>Said to be of no learned task: {check['images']} of {check['of']} test images</h3><p>each task "
            f"keeps {check['memory_per_task']} training patches ({check['bytes_per_task'] / 1024:.0f} KiB); an "
            f"image is of no learned task beyond {H.fmt(check['margin'])} x every task's range. Every test image "
            "is of a learned class, so each one listed is a false alarm.</p>")
    if not flagged:
        return head
    rows = [[*_image_cells(r, slug, data_path), escape(H.fmt(r.get("task_range_distance"))),
             escape(H.fmt(r.get("task_range_threshold")))] for r in flagged]
    return head + H.table(["class", "image", "ground truth", "distance (routed task)", "threshold"], rows, left=2,
                          escape_cells=False)


def index_page(run: Any, cfg: Any, metrics: dict, classes: list[str], slug: dict[str, str], shown: dict[str, dict],
               files: dict[str, str], source: str, nav: list[tuple[str, str]], records: list[dict]) -> str:
    every = [[k, H.fmt(v) if not isinstance(v, list) else " ".join(map(str, v))] for k, v in sorted(cfg.flat().items())]
    header = ["class", "task", "normal / anomalous", "image AUROC", "pixel AUROC", "AUPRO", "F1",
              "threshold T", "FP / FN at T", "routing (normal / anomalous)", "pages"]
    plots = "".join(H.plot_img(files[k], k) for k in ("matrix_image_auroc", "matrix_pixel_auroc") if k in files)
    growth = "".join(H.plot_img(files[k], k) for k in ("params", "time") if k in files)
    curves = "".join(H.plot_img(files[f"curves:{c}"], f"ROC and PRO curves of {c}") for c in classes)
    description = metrics.get("model_description")
    body = (
        "<h2>Run</h2>" + H.table(["setting", "value"], _config_rows(run, cfg), left=2)
        + (f'<p class="muted">model: {escape(str(description))}</p>' if description else "")
        + f"<details><summary>every setting (config.json)</summary>{H.table(['setting', 'value'], every, left=2)}"
          "</details>"
        + "<h2>Per class</h2><p>metrics of the final model (metrics.json); T is each class's F1-optimal image-score "
          "threshold, at which the pages judge each image right or wrong</p>"
        + H.table(header, _class_rows(metrics, classes, slug, shown), left=2, escape_cells=False)
        + "<h2>Continual accuracy matrix</h2>" + f'<div class="plots">{plots}</div>' + _matrix_tables(metrics)
        + _routing(metrics, records, slug, str(cfg.data.data_path))
        + "<h2>Parameters and time</h2>" + f'<div class="plots">{growth}</div>'
        + "<h2>ROC and PRO curves per class</h2>" + f'<div class="plots">{curves}</div>'
        + f'<p class="muted">anomaly maps {escape(source)}; written {time.strftime("%Y-%m-%d %H:%M:%S")} by '
          f"moleflow {escape(__version__)}</p>"
    )
    return H.page(f"moleflow report: {run.path.name}", nav, body)
