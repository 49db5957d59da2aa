"""Use a finished run: re-evaluate it from its checkpoints (`moleflow eval`) or route and score new
images (`moleflow predict`). Both rebuild the model from config.json + safetensors checkpoints only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from moleflow.config import Config, read_run_config
from moleflow.continual.task_data import build_extractor, prepare_tasks
from moleflow.device import resolve_device
from moleflow.continual.trainer import ContinualRun
from moleflow.data.image_io import load_image
from moleflow.errors import MoleflowError
from moleflow.evaluation.evaluator import model_score_maps
from moleflow.evaluation.maps import anomaly_maps, image_scores
from moleflow.evaluation.report import write_final_report
from moleflow.evaluation.visualize import overlay_png
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


def rescore_run(run_dir: str | Path, progress: bool = True) -> tuple[RunFolder, ContinualRun, dict, float]:
    """A finished run rebuilt from its checkpoints and its test sets scored again, anomaly maps kept:
    (run, state, scored per class, backbone seconds). Writes nothing (`moleflow eval` and `moleflow report`)."""
    run, cfg = _open_finished(run_dir)
    device = resolve_device(cfg.train.device)
    tasks, extractor, backbone_s = prepare_tasks(cfg, device, progress)
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, device, progress)
    state.restore(run, len(tasks))
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
    run, cfg = _open_finished(run_dir)
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise MoleflowError(f"image not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    device = resolve_device(cfg.train.device)
    size = cfg.data.size
    extractor = build_extractor(cfg, device)
    state = ContinualRun(cfg, [], extractor.dim, extractor.grid, device, progress)
    state.restore(run, len(cfg.data.tasks))
    thresholds = {c: m.get("f1_threshold") for c, m in run.read_json("metrics.json")["final"]["per_class"].items()}
    # a decision needs one class's threshold: a task holding several classes (N-M scenarios) has none
    task_threshold = [thresholds.get(classes[0]) if len(classes) == 1 else None for classes in cfg.data.tasks]
    out = Path(out_dir)
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    rows = []
    for path in images:
        image = load_image(path, size)
        patch, pooled = extractor(image.unsqueeze(0).to(device))
        task = int(state.router.predict(pooled.cpu())[0]) if cfg.train.router != "oracle" else None
        if task is None:
            raise MoleflowError("this run uses --router oracle, which needs the true task; predict needs a real router")
        model_input = image.unsqueeze(0).to(device) if cfg.spec.input_kind == "images" else patch
        named = model_score_maps(state.model, model_input, state.strategy.model_task(task))
        scores = named["score"].float().cpu()
        score = float(image_scores(scores, cfg.eval.score_aggregation, cfg.eval.topk, out_size=size,
                                   sigma=cfg.eval.blur_sigma)[0])
        rgb = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        row = {"filename": str(path), "routed_task": task, "routed_class": state.task_names[task],
               "score": score, "anomalous": _decide(score, task_threshold[task])}
        for name, per_patch in named.items():  # the anomaly map, then any extra map the model returns
            amap = anomaly_maps(per_patch.float().cpu(), size, cfg.eval.blur_sigma)[0].numpy()
            suffix = "" if name == "score" else f" [{name}]"
            png = overlay_png(rgb, amap, None, score, vmin=float(amap.min()), vmax=float(amap.max()),
                              title=f"task={task} ({state.task_names[task]}){suffix}")
            folder = out / "heatmaps" if name == "score" else out / "heatmaps" / name
            target = folder / f"{len(rows):04d}_{Path(path).stem}.png"
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, png)
            row["heatmap" if name == "score" else f"heatmap_{name}"] = str(target)
        rows.append(row)
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return rows
