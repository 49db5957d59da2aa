"""Weighted sum of registered loss components (`--loss NAME=WEIGHT`, repeatable).

Every component is looked up through the `moleflow.losses` entry-point group, so plugins' losses combine
with the built-ins. A component declares the model output keys it reads (`reads`); a missing key is a
clear error naming the loss, the key and the model. `loss_terms` turns the config's loss switches
(--focal_gamma, --center_loss_weight) into terms, so version presets stay plain data, and hands each
term its `--loss_opt NAME.KEY=VALUE` options (checked against the component's signature).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from moleflow import registry
from moleflow.errors import MoleflowError

if TYPE_CHECKING:
    from moleflow.config import Config


def parse_loss_terms(terms: list[str]) -> list[tuple[str, float]]:
    parsed: list[tuple[str, float]] = []
    for term in terms:
        name, sep, weight = term.partition("=")
        try:
            parsed.append((name.strip(), float(weight) if sep else 1.0))
        except ValueError:
            raise MoleflowError(f"--loss {term!r}: expected NAME=WEIGHT with a number, e.g. nll=1.0") from None
    if not parsed:
        raise MoleflowError("--loss needs at least one NAME=WEIGHT term")
    return parsed


def loss_terms(cfg: Config) -> tuple[list[str], dict[str, dict]]:
    """--loss terms and per-loss options after the switches: focal_gamma > 0 turns the `nll` term into
    `focal_nll` (same weight, option gamma); center_loss_weight > 0 appends `center=<weight>`."""
    tr = cfg.train
    terms = list(tr.loss)
    parsed = parse_loss_terms(terms)
    names = [name for name, _ in parsed]
    options: dict[str, dict] = {}
    for flag, value in (("focal_gamma", tr.focal_gamma), ("center_loss_weight", tr.center_loss_weight)):
        if value < 0:
            raise MoleflowError(f"--{flag} {value}: must be >= 0 (0 turns it off)")
    if tr.focal_gamma > 0:
        if "focal_nll" in names:
            raise MoleflowError(f"focal NLL defined twice: --loss lists focal_nll and --focal_gamma is "
                                f"{tr.focal_gamma}; drop one (e.g. --focal_gamma 0)")
        if "nll" not in names:
            raise MoleflowError(f"--focal_gamma {tr.focal_gamma} replaces the 'nll' term, but --loss "
                                f"{' '.join(terms)} has none; add nll=1.0 or use --focal_gamma 0")
        terms = [f"focal_nll={weight!r}" if name == "nll" else term for term, (name, weight) in zip(terms, parsed)]
        options["focal_nll"] = {"gamma": tr.focal_gamma}
    if tr.center_loss_weight > 0:
        if "center" in names:
            raise MoleflowError(f"center loss defined twice: --loss lists center and --center_loss_weight is "
                                f"{tr.center_loss_weight}; drop one (e.g. --center_loss_weight 0)")
        terms.append(f"center={tr.center_loss_weight!r}")
    final_names = [name for name, _ in parse_loss_terms(terms)]
    for name, given in loss_options(tr.loss_opt).items():
        if name not in final_names:
            raise MoleflowError(f"--loss_opt {name}.{next(iter(given))}: the run has no '{name}' loss term "
                                f"(terms: {' '.join(terms)}); add {name}=WEIGHT to --loss")
        clash = sorted(set(given) & set(options.get(name, {})))
        if clash:
            raise MoleflowError(f"--loss_opt {name}.{clash[0]} is also set by --focal_gamma; drop one of them")
        options[name] = {**options.get(name, {}), **given}
    return terms, options


def loss_options(items: list[str]) -> dict[str, dict]:
    """['bce.pos_weight=5', 'iou.normalize_method=clamp'] -> {'bce': {'pos_weight': 5}, 'iou': {...}}."""
    from moleflow.config import parse_options

    options: dict[str, dict] = {}
    for key, value in parse_options(items, "--loss_opt").items():
        name, dot, option = key.partition(".")
        if not dot or not name or not option:
            raise MoleflowError(f"--loss_opt {key}={value!r}: expected NAME.KEY=VALUE, e.g. bce.pos_weight=5")
        options.setdefault(name, {})[option] = value
    return options


@dataclass
class LossTerm:
    name: str
    weight: float
    fn: Any


def _create_loss(name: str, options: dict) -> Any:
    factory = registry.get("losses", name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: let the call itself decide
        signature = None
    if signature is not None and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        known = [n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise MoleflowError(f"--loss_opt {name}.{unknown[0]}: loss '{name}' has no option '{unknown[0]}' "
                                f"(its options: {', '.join(known) or 'none'})")
    return factory(**options)


class CompositeLoss:
    """Weighted sum of loss components. A component that is an nn.Module may own parameters (e.g. the
    soft-boundary SVDD radius); `parameters()` lists them so the trainer optimises them with the model's."""

    def __init__(self, terms: list[str], model_name: str = "model", options: dict[str, dict] | None = None):
        options = options or {}
        self.model_name = model_name
        self.terms = [LossTerm(name, weight, _create_loss(name, options.get(name, {})))
                      for name, weight in parse_loss_terms(terms)]

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for term in self.terms if isinstance(term.fn, torch.nn.Module)
                for p in term.fn.parameters() if p.requires_grad]

    def to(self, device: torch.device) -> "CompositeLoss":
        for term in self.terms:
            if isinstance(term.fn, torch.nn.Module):
                term.fn.to(device)
        return self

    def state(self) -> dict[str, float]:
        """Scalar parameters of the components by `<loss>.<name>` (logged after each task, e.g. the radius)."""
        return {f"{term.name}.{k}": v.detach().item() for term in self.terms if isinstance(term.fn, torch.nn.Module)
                for k, v in term.fn.named_parameters() if v.numel() == 1}

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> tuple[torch.Tensor, dict]:
        total: torch.Tensor | None = None
        parts: dict[str, float] = {}
        for term in self.terms:
            for key in getattr(term.fn, "reads", ()):
                if key not in outputs:
                    raise MoleflowError(
                        f"loss '{term.name}' needs model output '{key}', which model '{self.model_name}' does not "
                        f"produce (it produces: {', '.join(sorted(outputs))})"
                    )
            value = term.fn(outputs, batch)
            parts[term.name] = float(value.detach())
            if term.weight == 0:
                continue  # logged only: 0 * inf would turn the total into NaN
            total = term.weight * value if total is None else total + term.weight * value
        if total is None:
            raise MoleflowError(f"--loss {' '.join(t.name + '=0' for t in self.terms)}: every weight is 0; "
                                "give at least one term a non-zero weight")
        return total, parts
