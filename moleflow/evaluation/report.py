"""Write the final outputs of a run: metrics.json, results.csv, per_image.jsonl, heatmaps/, maps/, and
the TensorBoard hparams view. Every file goes through the run folder's atomic writers."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch

from moleflow.contract import describe
from moleflow.evaluation import metrics as M
from moleflow.evaluation.continual_metrics import accuracy_matrix, continual_summary
from moleflow.task_range import NO_TASK_KEY
from moleflow.evaluation.visualize import class_scales, encode_png, overlay_png, overlay_rgb

ROUTING_KEYS = ("routing_accuracy", *M.ROUTING_SPLIT_KEYS)
SUMMARY_KEYS = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "f1", *ROUTING_KEYS, NO_TASK_KEY,
                "image_auroc_oracle", "pixel_auroc_oracle", "aupro_oracle")
TB_IMAGES_PER_CLASS = 3


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def continual_block(results: dict[int, dict[str, dict]], task_classes: list[list[str]],
                    metrics: tuple[str, ...]) -> dict:
    """Accuracy matrix R[i][j] (after task i, on task j) and its summaries per metric. A task holding
    several classes (N-M scenarios) enters with the mean over its classes; a 1xN stream's R is per class."""
    out: dict[str, Any] = {"matrix": {}, "bwt": {}, "fm": {}, "forgetting_avalanche": {}}
    for name in metrics:
        table = {i: {j: _nanmean([row[c][name] for c in classes])
                     for j, classes in enumerate(task_classes) if all(c in row for c in classes)}
                 for i, row in results.items()}
        summary = continual_summary(accuracy_matrix(table, len(task_classes)))
        for key in out:
            out[key][name] = summary[key]
    return out


def _uint8_image(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def write_final_report(run: Any, state: Any, scored: dict[str, Any], timing: dict, tb: Any) -> dict:
    cfg, tasks = state.cfg, state.tasks
    tests = [test for task in tasks for test in task.tests]
    classes = [test.class_name for test in tests]
    last = len(tasks) - 1
    per_class = state.results[last]
    mean = {k: _nanmean([per_class[c].get(k, float("nan")) for c in classes]) for k in SUMMARY_KEYS}

    # routing is scored per task: an image is routed correctly when it reaches the task holding its class
    true = torch.cat([torch.full_like(scored[t.class_name].pred_task, t.task_id) for t in tests])
    pred = torch.cat([scored[c].pred_task for c in classes])
    labels = torch.cat([t.test.labels for t in tests])
    routing = {"accuracy": M.routing_accuracy(true.numpy(), pred.numpy()),
               "confusion": M.confusion_matrix(true.numpy(), pred.numpy(), len(tasks)).tolist(),
               "by_split": M.routing_by_split(true.numpy(), pred.numpy(), labels.numpy(), len(tasks)),
               "router": cfg.train.router}
    checked = [scored[c].task_range for c in classes if scored[c].task_range is not None]
    if checked:  # the no-learned-task check (moleflow.task_range); each flag here is a false alarm
        routing["no_learned_task"] = {
            "images": int(sum(int(r.no_learned_task.sum()) for r in checked)),
            "of": int(sum(len(r.no_learned_task) for r in checked)),
            "margin": cfg.eval.task_range_margin, "memory_per_task": cfg.train.task_range_memory,
            "bytes_per_task": state.task_range.task_bytes(0)}
    metrics = {
        "tasks": [task.name for task in tasks],
        "classes": classes,
        "class_task": {test.class_name: test.task_id for test in tests},
        "final": {"per_class": per_class, "mean": mean},
        "continual": continual_block(state.results, [task.classes for task in tasks],
                                     ("image_auroc", "pixel_auroc", "aupro")),
        "routing": routing,
        "params": state.model.param_counts(),
        "model_description": describe(state.model),
        "timing": timing,
        "fit": state.fit_log,
        "definitions": {
            "image_score": "the model's own" if cfg.spec.own_scores else (
                            "max of the anomaly map" if cfg.eval.score_aggregation == "map_max" else
                            f"{cfg.eval.score_aggregation} of per-patch scores"
                            + (f" (top {cfg.eval.topk})" if cfg.eval.score_aggregation == "topk" else "")),
            "patch_score": "0.5*||z||^2 - log|det J| (nats); training loss = its mean / D",
            "anomaly_map": "the model's own, at image size" if cfg.spec.own_scores else
                           f"bilinear upsample of patch scores + Gaussian blur sigma {cfg.eval.blur_sigma}",
        },
    }

    per_image, csv_rows, tb_images = [], [], []
    n_maps = cfg.eval.heatmaps
    for task in tests:
        c, s, fs = task.class_name, scored[task.class_name], task.test
        thr = per_class[c]["f1_threshold"]
        maps = s.maps.numpy()
        extras = {name: m.numpy() for name, m in s.extra_maps.items()}  # e.g. the Students' uncertainty
        scale, extra_scales = class_scales(maps, extras, thr)  # as the HTML report colours them
        if cfg.eval.save_maps:
            buf = io.BytesIO()
            np.savez_compressed(buf, maps=maps.astype(np.float32), masks=fs.masks[:, 0].numpy(),
                                labels=fs.labels.numpy(), scores=s.image.numpy(), paths=np.array(fs.paths),
                                **{name: m.astype(np.float32) for name, m in extras.items()})
            run.write_bytes(f"maps/{c}.npz", buf.getvalue())
        for i, path in enumerate(fs.paths):
            score, label = float(s.image[i]), int(fs.labels[i])
            heat, extra_heat = None, {}
            if n_maps < 0 or i < n_maps:
                rgb, mask = _uint8_image(task.image(i)), fs.masks[i, 0].numpy().astype(bool)
                title = f"{c} gt={label} task={int(s.pred_task[i])}"
                overlay = overlay_rgb(rgb, maps[i], mask, score, title=title, **scale._asdict())
                heat = run.save_heatmap(c, path, encode_png(overlay))
                for name, m in extras.items():
                    extra_png = overlay_png(rgb, m[i], mask, score, title=f"{title} [{name}]",
                                            **extra_scales[name]._asdict())
                    extra_heat[f"heatmap_{name}"] = run.save_heatmap(c, path, extra_png, kind=name)
                if len([x for x in tb_images if x[0] == c]) < TB_IMAGES_PER_CLASS and label == 1:
                    tb_images.append((c, overlay))  # the array itself: TensorBoard encodes it
            prediction = int(score >= thr) if not math.isnan(thr) else None
            per_image.append({"filename": path, "class": c, "task": task.task_id, "routed_task": int(s.pred_task[i]),
                              "ground_truth": label, "prediction": prediction, "score": score,
                              "score_oracle": float(s.image_oracle[i]), "heatmap": heat, **extra_heat,
                              **(s.task_range.record(i) if s.task_range is not None else {}),
                              "correct": None if prediction is None else prediction == label})
        csv_rows.append({"class": c, "task": task.task_id, **{k: per_class[c].get(k) for k in SUMMARY_KEYS}})
    csv_rows.append({"class": "mean", "task": "", **mean})

    run.write_per_image(per_image)
    run.write_results_csv(csv_rows)
    run.write_json("metrics.json", metrics)
    _log_tensorboard(tb, cfg, classes, per_class, mean, metrics, tb_images, last)
    return metrics


def _log_tensorboard(tb: Any, cfg: Any, classes: list[str], per_class: dict, mean: dict, metrics: dict,
                     images: list[tuple[str, np.ndarray]], last: int) -> None:
    for c in classes:
        for k in ("image_auroc", "pixel_auroc", "aupro", *ROUTING_KEYS, NO_TASK_KEY):
            tb.scalar(f"final/{c}/{k}", per_class[c].get(k), last)
    for k, v in mean.items():
        tb.scalar(f"final/mean/{k}", v, last)
    for i, (c, rgb) in enumerate(images):
        tb.image(f"heatmaps/{c}/{i}", rgb, last)
    final = {f"hparam/mean_{k}": mean[k] for k in ("image_auroc", "pixel_auroc", "aupro", *ROUTING_KEYS)}
    final["hparam/bwt_image_auroc"] = metrics["continual"]["bwt"]["image_auroc"]
    final["hparam/fm_image_auroc"] = metrics["continual"]["fm"]["image_auroc"]
    tb.hparams(cfg.flat(), final)
