"""Use a finished run: re-evaluate it from its checkpoints (`moleflow eval`) or route and score new
images (`moleflow predict`). Both rebuild the model from config.json + safetensors checkpoints only."""

from __future__ import annotations

import json
import math
import re
from html import escape
from pathlib import Path

import torch

from moleflow.config import Config, read_run_config
from moleflow.continual.task_data import build_extractor, prepare_tasks
from moleflow.device import resolve_device
from moleflow.continual.trainer import ContinualRun
from moleflow.data.image_io import load_image
from moleflow.errors import MoleflowError
from moleflow.contract import IMAGE_SCORE
from moleflow.evaluation.evaluator import image_score_of, map_blur_sigma, model_score_maps
from moleflow.evaluation.maps import anomaly_maps
from moleflow.evaluation.report import write_final_report
from moleflow.evaluation import visualize as V
from moleflow.report import html as H
from moleflow.report import tiles as T
from moleflow.run_folder import RunFolder, atomic_write_bytes, atomic_write_text
from moleflow.run_log import TBLogger


def _open_finished(run_dir: str | Path) -> tuple[RunFolder, Config]:
    run = RunFolder.open(run_dir)
    cfg = read_run_config(run)
    done = run.read_json("progress.json").get("completed_tasks", 0) if (run.path / "progress.json").exists() else 0
    if done < len(cfg.data.tasks):
        raise MoleflowError(f"{run.path}: only {done} of {len(cfg.data.tasks)} tasks completed; "
                            f"finish it with `moleflow train --resume {run.path}`")
    return run, cfg


def restored_run(run_dir: str | Path, progress: bool = True) -> tuple[RunFolder, ContinualRun, float]:
    """A finished run rebuilt from its checkpoints, with its tasks' features: (run, state, backbone seconds)."""
    run, cfg = _open_finished(run_dir)
    device = resolve_device(cfg.train.device)
    tasks, extractor, backbone_s = prepare_tasks(cfg, device, progress)
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, device, progress)
    state.restore(run, len(tasks))
    return run, state, backbone_s


def rescore_run(run_dir: str | Path, progress: bool = True) -> tuple[RunFolder, ContinualRun, dict, float]:
    """A finished run rebuilt from its checkpoints and its test sets scored again, anomaly maps kept:
    (run, state, scored per class, backbone seconds). Writes nothing (`moleflow eval` and `moleflow report`)."""
    run, state, backbone_s = restored_run(run_dir, progress)
    tasks = state.tasks
    doc = run.read_json("progress.json")
    state.results = {int(k): v for k, v in doc.get("results", {}).items()}
    state.fit_log = doc.get("fit", [])
    scored = state.evaluate(len(tasks) - 1, keep_maps=True)
    return run, state, scored, backbone_s


def rescored_maps(run_dir: str | Path, progress: bool = True) -> tuple[list, dict]:
    """A finished run's tasks and its test sets scored again from its checkpoints (the report's source)."""
    _, state, scored, _ = rescore_run(run_dir, progress=progress)
    return state.tasks, scored


def evaluate_run(run_dir: str | Path, progress: bool = True) -> RunFolder:
    run, state, scored, backbone_s = rescore_run(run_dir, progress)
    doc = run.read_json("progress.json")
    tb = TBLogger(run.path / "tb")
    try:
        write_final_report(run, state, scored, {**doc.get("timing", {}), "backbone_s": backbone_s}, tb)
    finally:
        tb.close()
    return run


def _decide(score: float, threshold: float | None) -> bool | None:
    """Decision at the routed class's F1-optimal threshold from the run's test set (None if unknown)."""
    return None if threshold is None or threshold != threshold else bool(score >= threshold)


@torch.no_grad()
def predict_images(run_dir: str | Path, images: list[str], out_dir: str | Path, progress: bool = True) -> list[dict]:
    """Route and score `images` with a finished run. Writes, under `out_dir`, one tile per image as the report
    draws it (`predictions.html`: the input at its own resolution, the anomaly map over it, the score badge, the
    routed task with its router distance, the decision at the routed class's threshold), the map overlays
    (`heatmaps/`) and `predictions.jsonl`."""
    run, cfg = _open_finished(run_dir)
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise MoleflowError(f"image not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    device = resolve_device(cfg.train.device)
    size = cfg.data.size
    extractor = build_extractor(cfg, device)
    state = ContinualRun(cfg, [], extractor.dim, extractor.grid, device, progress)
    state.restore(run, len(cfg.data.tasks))
    if cfg.train.router == "oracle":
        raise MoleflowError("this run uses --router oracle, which needs the true task; predict needs a real router")
    # runs from before the check, or with --task_range_memory 0, say nothing about unlearned images
    checks_range = state.task_range is not None and state.task_range.complete(len(cfg.data.tasks))
    thresholds = {c: m.get("f1_threshold") for c, m in run.read_json("metrics.json")["final"]["per_class"].items()}
    # a decision needs one class's threshold: a task holding several classes (N-M scenarios) has none
    task_threshold = [thresholds.get(classes[0]) if len(classes) == 1 else None for classes in cfg.data.tasks]
    out = Path(out_dir)
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    rows, tiles = [], []
    for path in images:
        image = load_image(path, size)
        patch, pooled = extractor(image.unsqueeze(0).to(device))
        distances = state.router.distances(pooled.cpu())[0]
        task = int(state.router.task_ids[int(distances.argmin())])
        model_input = image.unsqueeze(0).to(device) if cfg.spec.input_kind == "images" else patch
        named = model_score_maps(state.model, model_input, state.strategy.model_task(task))
        own = cfg.spec.own_scores
        score = float(image_score_of({k: v.float().cpu() for k, v in named.items()}, cfg.eval, own, size)[0])
        named.pop(IMAGE_SCORE, None)
        threshold = task_threshold[task]
        row = {"filename": str(path), "routed_task": task, "routed_class": state.task_names[task],
               "router_distance": float(distances.min()), "score": score, "anomalous": _decide(score, threshold)}
        if checks_range:
            row.update(state.task_range.check(patch.cpu(), torch.tensor([task])).record(0))
            if row["no_learned_task"]:
                row["anomalous"] = None  # a score from an expert of another product decides nothing
        rgb = T.load_rgb(path)  # the image at its own resolution, as the report draws it
        stem = f"{len(rows):04d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', Path(path).stem)}"
        pictures = [(f"tiles/{stem}_input.jpg", f"input {rgb.shape[1]}x{rgb.shape[0]}")]
        atomic_write_bytes(out / pictures[0][0], V.encode_jpeg(rgb))
        for name, per_patch in named.items():  # the anomaly map, then any extra map the model returns
            amap = anomaly_maps(per_patch.float().cpu(), size, map_blur_sigma(cfg.eval, own))[0].numpy()
            low, high = V.map_range(amap, threshold if name == "score" and threshold is not None else math.nan)
            overlay = V.heat_overlay(rgb, amap, None, low, high, V.HEAT_CMAP if name == "score" else V.EXTRA_CMAP)
            heatmap = Path("heatmaps") / (f"{stem}.png" if name == "score" else f"{name}/{stem}.png")
            (out / heatmap).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out / heatmap, V.encode_png(overlay))
            pictures.append((heatmap.as_posix(), "anomaly map" if name == "score" else f"{name} map"))
            row["heatmap" if name == "score" else f"heatmap_{name}"] = str(out / heatmap)
        tiles.append({"record": row, "pictures": pictures})
        rows.append(row)
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    body = (f"<p>{len(rows)} image(s) routed and scored by the run <code>{escape(str(run.path))}</code>; each "
            "decision is at the routed class's F1-optimal threshold T from that run's test set (a task of several "
            "classes has none: undecided). Maps coloured from their 1st percentile to 2T - that, T in the middle "
            "of the colour scale.</p>" + H.grid([H.prediction_tile(t, n < 24) for n, t in enumerate(tiles)]))
    atomic_write_text(out / "predictions.html", H.page("moleflow predict", [], body))
    return rows
