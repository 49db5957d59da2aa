"""No flag that silently does nothing, for the engine's settings: the table of when each is read, and the check
that refuses a requested setting the run would not read. (A model's options carry their own rules in their
options class, checked the same way by `moleflow.options.refuse_inert`; this module names none of them.)

A setting counts as *requested* when it is given on the command line (any value: typing a flag is a
request), or in a `--config` file with a value other than the one the version preset and the defaults
give (a run's saved config lists every setting and must stay loadable). A preset's own value is never a
request.
"""

from __future__ import annotations

from typing import Any

from moleflow import registry
from moleflow.continual.strategies import strategy_class
from moleflow.device import resolve_device
from moleflow.features.extractor import backbone_is_vit
from moleflow.options import Rule, refuse_inert


def _splits_itself(cfg: Any, context: Any) -> bool:
    return bool(getattr(registry.get("datasets", cfg.data.dataset_format), "uses_split_percent", False))


def _strategy_reads(cfg: Any) -> tuple[str, ...]:
    return tuple(getattr(strategy_class(cfg.train.strategy), "reads_settings", ()))


#: engine rules: `active(cfg, None)`
RULES: tuple[Rule, ...] = (
    Rule(("split_percent", "split_seed"), _splits_itself,
         "--dataset_format splits the data itself (folder or csv; mvtec, mpdd and visa come pre-split)"),
    Rule(("score_aggregation", "blur_sigma"), lambda c, _: not c.spec.own_scores,
         "the model's maps and image scores are the engine's to make (this model makes its own: own_scores)"),
    Rule(("topk",), lambda c, _: c.eval.score_aggregation == "topk", "--score_aggregation is topk"),
    Rule(("replay_per_task",), lambda c, _: "replay_per_task" in _strategy_reads(c), "--strategy reads it (replay)"),
    Rule(("deterministic",), lambda c, _: resolve_device(c.train.device).type == "cuda",
         "the run uses CUDA (--device cuda, or auto with a GPU); CPU runs are deterministic already"),
    Rule(("pretrained",), lambda c, _: not c.backbone.backbone_weights,
         "--backbone_weights is empty (a weights file replaces the backbone's initialisation)"),
    Rule(("cnn_layers",), lambda c, _: not backbone_is_vit(c.backbone.backbone_name),
         "the backbone is a CNN (this one is a ViT: use --vit_blocks)"),
    Rule(("vit_blocks",), lambda c, _: backbone_is_vit(c.backbone.backbone_name),
         "the backbone is a ViT (this one is a CNN: use --cnn_layers)"),
    Rule(("task_range_margin",), lambda c, _: c.train.task_range_memory > 0,
         "--task_range_memory is above 0 (the default; 0 turns the no-learned-task check off)"),
    Rule(("report_max_per_class",), lambda c, _: c.eval.report, "--report is on (the default)"),
)


def refuse_inert_settings(cfg: Any, requested: set[str]) -> None:
    """Raise one MoleflowError naming the first requested engine setting this run would not read."""
    refuse_inert(cfg, requested, None, RULES)
