"""Score test sets through the router and compute every per-class metric.

Scores come from the expert the router predicts (never from the true task id, unless the router is
`oracle`); oracle-routed scores are reported beside them. With a strategy whose experts are frozen
after their task, the scores of test set j under expert k are computed once per run and reused by
every later evaluation (routing changes as tasks arrive, expert outputs do not).

A model may return named maps beside its anomaly score in the same pass (optional contract hook
`score_maps(inputs, task_id) -> {"score": (B,h,w), name: (B,h,w), ...}`, e.g. the Students' predictive
uncertainty). They are routed like the score, reported as `pixel_auroc_<name>`, and saved by the report.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from moleflow import registry
from moleflow.contract import IMAGE_SCORE
from moleflow.errors import MoleflowError
from moleflow.evaluation import metrics as M
from moleflow.evaluation.maps import anomaly_maps, image_scores
from moleflow.task_range import NO_TASK_KEY, RangeCheck, TaskRange

PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "aupro")
#: keys of maps/<class>.npz written by the report; an extra map may not reuse them
RESERVED_MAP_NAMES = frozenset({"score", "maps", "masks", "labels", "scores", "paths"})


def model_score_maps(model: Any, inputs: torch.Tensor, model_task: int) -> dict[str, torch.Tensor]:
    """{"score": patch scores, **extra maps} of one batch, from `score_maps` when the model has it."""
    hook = getattr(model, "score_maps", None)
    if hook is None:
        return {"score": model.patch_scores(inputs, model_task)}
    out = dict(hook(inputs, model_task))
    score = out.get("score")
    if score is None:
        raise MoleflowError(f"model {type(model).__name__}: score_maps() must return the anomaly score under "
                            f"'score' (it returned: {', '.join(sorted(out)) or 'nothing'})")
    for name, value in out.items():
        if name == IMAGE_SCORE:  # an own_scores model's image score: one value per image
            if tuple(value.shape) != tuple(score.shape[:1]):
                raise MoleflowError(f"model {type(model).__name__}: score_maps() '{IMAGE_SCORE}' has shape "
                                    f"{tuple(value.shape)}; it must be one score per image, {tuple(score.shape[:1])}")
            continue
        if name != "score" and (name in RESERVED_MAP_NAMES or not name.isidentifier()):
            raise MoleflowError(f"model {type(model).__name__}: score_maps() name {name!r} is not allowed "
                                f"(use an identifier other than {', '.join(sorted(RESERVED_MAP_NAMES))})")
        if tuple(value.shape) != tuple(score.shape):
            raise MoleflowError(f"model {type(model).__name__}: score_maps() map {name!r} has shape "
                                f"{tuple(value.shape)}, the score {tuple(score.shape)}; they must match")
    return out


def map_blur_sigma(eval_cfg: Any, own_scores: bool) -> float:
    """The blur the engine applies to a model's maps: --blur_sigma, none for a model whose maps are final
    (own_scores: it smoothed them itself)."""
    return 0.0 if own_scores else float(eval_cfg.blur_sigma)


def image_score_of(named: dict[str, torch.Tensor], eval_cfg: Any, own_scores: bool,
                   img_size: tuple[int, int]) -> torch.Tensor:
    """(B,) image scores of one `model_score_maps` output: the model's own (own_scores), else the
    --score_aggregation of its score map."""
    if own_scores:
        return named[IMAGE_SCORE].float()
    return image_scores(named["score"], eval_cfg.score_aggregation, eval_cfg.topk, out_size=img_size,
                        sigma=map_blur_sigma(eval_cfg, own_scores))


def per_class_metrics() -> list[tuple[str, Any]]:
    """Every metric registered in moleflow.metrics that declares `per_class` ("image" or "pixel"; see
    evaluation/metrics.py), built-in or from a plugin: these fill metrics.json's per-class tables. A plugin
    metric that fails to import is skipped with a warning naming it; the run goes on."""
    found = []
    for name in registry.names("metrics"):
        try:
            fn = registry.get("metrics", name)
        except MoleflowError as exc:
            warnings.warn(f"per-class metric skipped: {exc}", RuntimeWarning, stacklevel=2)
            continue
        kind = getattr(fn, "per_class", None)
        if kind is not None and kind not in ("image", "pixel"):
            raise MoleflowError(f"metric '{name}' declares per_class={kind!r}; use 'image' or 'pixel'")
        if kind is not None:
            found.append((name, fn))
    return found


@dataclass
class ScoredSet:
    task_id: int
    class_name: str
    pred_task: torch.Tensor  # (N,) router decision
    patch: torch.Tensor  # (N,h,w) scores from the routed expert
    patch_oracle: torch.Tensor  # (N,h,w) scores from the true task's expert
    image: torch.Tensor  # (N,)
    image_oracle: torch.Tensor
    maps: torch.Tensor | None = None  # (N,H,W) routed anomaly maps, kept for the final report
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N,h,w) routed extra maps
    extra_maps: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N,H,W), for the report
    task_range: RangeCheck | None = None  # beyond every learned task's range? (None: the check is off)


class Evaluator:
    def __init__(self, model: Any, strategy: Any, router: Any, eval_cfg: Any, img_size: tuple[int, int],
                 device: torch.device, images_per_pass: int = 32, task_range: TaskRange | None = None,
                 own_scores: bool = False):
        self.model = model
        self.own_scores = own_scores  # the model's maps are final and it scores images itself (contract)
        self.map_sigma = map_blur_sigma(eval_cfg, own_scores)
        self.task_range = task_range
        self._range_cache: dict[str, dict[int, torch.Tensor]] = {}  # test class -> task -> ratios (fixed state)
        self.strategy = strategy
        self.router = router
        self.cfg = eval_cfg
        self.img_size = img_size
        self.device = device
        self.images_per_pass = images_per_pass  # scoring chunk: memory only, same scores
        self._cache: dict[tuple[str, int], dict[str, torch.Tensor]] = {}  # (test class, expert) -> scores
        self.class_metrics = per_class_metrics()

    @torch.no_grad()
    def expert_scores(self, class_name: str, feats: torch.Tensor, expert: int) -> dict[str, torch.Tensor]:
        """{"score": (N,h,w), **extras} of the test set of `class_name` under `expert`."""
        key = (class_name, expert)
        if self.strategy.frozen_after_task and key in self._cache:
            return self._cache[key]
        model_task = self.strategy.model_task(expert)
        self.model.eval()
        chunks = [model_score_maps(self.model, chunk.to(self.device), model_task)
                  for chunk in feats.split(self.images_per_pass)]
        out = {name: torch.cat([c[name].float().cpu() for c in chunks]) for name in chunks[0]}
        if self.strategy.frozen_after_task:
            self._cache[key] = out
        return out

    def score(self, task_id: int, class_name: str, fs: Any, inputs: torch.Tensor | None = None) -> ScoredSet:
        """Route with the pooled features of `fs`; score `inputs` (default: its patch features)."""
        inputs = fs.patch if inputs is None else inputs
        n = fs.patch.shape[0]
        true = torch.full((n,), task_id, dtype=torch.long)
        pred = self.router.predict(fs.pooled, true_tasks=true).long().cpu()
        oracle = self.expert_scores(class_name, inputs, task_id)
        routed = {name: value.clone() for name, value in oracle.items()}
        for expert in pred.unique().tolist():
            if expert == task_id:
                continue
            rows = (pred == expert).nonzero().flatten()
            other = self.expert_scores(class_name, inputs, expert)
            for name in routed:
                routed[name][rows] = other[name][rows]
        extras = {name: value for name, value in routed.items() if name not in ("score", IMAGE_SCORE)}
        in_range = None
        if self.task_range is not None and self.task_range.complete(task_id + 1):
            in_range = self.task_range.check(fs.patch, pred, cache=self._range_cache.setdefault(class_name, {}))
        return ScoredSet(task_id, class_name, pred, routed["score"], oracle["score"],
                         image_score_of(routed, self.cfg, self.own_scores, self.img_size),
                         image_score_of(oracle, self.cfg, self.own_scores, self.img_size),
                         extras=extras, task_range=in_range)

    def metrics(self, scored: ScoredSet, fs: Any, keep_maps: bool = False) -> dict[str, float]:
        labels = fs.labels.numpy()
        masks = fs.masks[:, 0].numpy().astype(bool)
        routed_ok = bool((scored.pred_task == scored.task_id).all())
        true, pred = np.full(len(labels), scored.task_id), scored.pred_task.numpy()
        out: dict[str, float] = {"routing_accuracy": M.routing_accuracy(true, pred)}
        out.update(zip(M.ROUTING_SPLIT_KEYS, M.routing_accuracy_by_split(true, pred, labels).values()))
        if scored.task_range is not None:  # every one of these images is of a learned task: each flag is wrong
            out[NO_TASK_KEY] = float(scored.task_range.no_learned_task.float().mean())
        variants = [("", scored.patch, scored.image)]
        if not routed_ok:
            variants.append(("_oracle", scored.patch_oracle, scored.image_oracle))
        for suffix, patch, image in variants:
            img = image.numpy()
            maps = anomaly_maps(patch, self.img_size, self.map_sigma)
            if suffix == "" and keep_maps:
                scored.maps = maps
            maps_np = maps.numpy()
            for name, fn in self.class_metrics:
                value = fn(labels, img) if fn.per_class == "image" else fn(masks, maps_np)
                if isinstance(value, dict):  # stored under output_names where declared (only those), else name_key
                    names = getattr(fn, "output_names", None) or {k: f"{name}_{k}" for k in value}
                    out.update({f"{names[k]}{suffix}": v for k, v in value.items() if k in names})
                else:
                    out[f"{name}{suffix}"] = value
        for name, patch in scored.extras.items():
            extra = anomaly_maps(patch, self.img_size, self.map_sigma)
            if keep_maps:
                scored.extra_maps[name] = extra
            out[f"pixel_auroc_{name}"] = M.pixel_auroc(masks, extra.numpy())
        if routed_ok:  # identical scores: the oracle numbers are the routed numbers
            for name in [k for k in out if not k.startswith(("routing_accuracy", "pixel_auroc_", NO_TASK_KEY))]:
                out[f"{name}_oracle"] = out[name]
        return out
