"""Weighted sum of registered loss components (`--loss NAME=WEIGHT`, repeatable).

Every component is looked up through the `moleflow.losses` entry-point group, so plugins' losses combine
with the built-ins. A component declares the model output keys it reads (`reads`); a missing key is a
clear error naming the loss, the key and the model. `LossOptions` is the `--loss` / `--loss_opt` pair a
model's options class inherits; each term gets its `--loss_opt NAME.KEY=VALUE` options (checked against
the component's signature).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from moleflow import registry
from moleflow.errors import MoleflowError
from moleflow.options import option, parse_key_values


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


def with_loss_options(terms: list[str], options: dict[str, dict], loss_opt: list[str]) -> dict[str, dict]:
    """`options` (per term name) plus the `--loss_opt NAME.KEY=VALUE` items, each naming a term of `terms`
    and no option `options` sets already."""
    final_names = [name for name, _ in parse_loss_terms(terms)]
    merged = {name: dict(values) for name, values in options.items()}
    for name, given in loss_options(loss_opt).items():
        if name not in final_names:
            raise MoleflowError(f"--loss_opt {name}.{next(iter(given))}: the run has no '{name}' loss term "
                                f"(terms: {' '.join(terms)}); add {name}=WEIGHT to --loss")
        clash = sorted(set(given) & set(merged.get(name, {})))
        if clash:
            raise MoleflowError(f"--loss_opt {name}.{clash[0]} is also set by another option of the model; "
                                "drop one of them")
        merged[name] = {**merged.get(name, {}), **given}
    return merged


def loss_options(items: list[str]) -> dict[str, dict]:
    """['bce.pos_weight=5', 'iou.normalize_method=clamp'] -> {'bce': {'pos_weight': 5}, 'iou': {...}}."""
    options: dict[str, dict] = {}
    for key, value in parse_key_values(items, "--loss_opt").items():
        name, dot, option_name = key.partition(".")
        if not dot or not name or not option_name:
            raise MoleflowError(f"--loss_opt {key}={value!r}: expected NAME.KEY=VALUE, e.g. bce.pos_weight=5")
        options.setdefault(name, {})[option_name] = value
    return options


@dataclass(frozen=True)
class LossOptions:
    """`--loss` and `--loss_opt`, inherited by the options class of a model trained on a weighted sum of
    registered losses (its own default in place of nll where its outputs differ)."""

    loss: list = option(["nll=1.0"], "loss terms NAME=WEIGHT (registered in moleflow.losses); repeatable; replaces "
                        "the default. Under AdamW only the ratio of weights matters", nargs="+", action="extend")
    loss_opt: list = option([], "options of a --loss term, NAME.KEY=VALUE (repeatable; values read as JSON when "
                            "they parse), e.g. bce.pos_weight=5 or deep_svdd_soft_boundary.nu=0.05. In a --config "
                            "file also a table: loss_opt = {bce = {pos_weight = 5}}",
                            nargs="+", action="extend", key_value=True)

    def loss_terms(self) -> tuple[list[str], dict[str, dict]]:
        """The terms NAME=WEIGHT and each term's options (a model with loss switches overrides this)."""
        terms = list(self.loss)
        return terms, with_loss_options(terms, {}, self.loss_opt)

    def make_loss(self, model_name: str) -> "CompositeLoss":
        terms, options = self.loss_terms()
        return CompositeLoss(terms, model_name=model_name, options=options)

    def validate(self, context: Any) -> None:
        self.make_loss("model")  # unknown loss names and options fail before any image is read


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

    def first_unfed(self, produced: Any) -> tuple[str, str] | None:
        """(term name, output key) of the first term that reads an output not in `produced`, else None: what a
        model checks against the outputs it declares before any image is read, and every step checks again."""
        for term in self.terms:
            for key in getattr(term.fn, "reads", ()):
                if key not in produced:
                    return term.name, key
        return None

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> tuple[torch.Tensor, dict]:
        unfed = self.first_unfed(outputs)
        if unfed is not None:
            raise MoleflowError(f"loss '{unfed[0]}' needs model output '{unfed[1]}', which model '{self.model_name}' "
                                f"does not produce (it produces: {', '.join(sorted(outputs))})")
        total: torch.Tensor | None = None
        parts: dict[str, float] = {}
        for term in self.terms:
            value = term.fn(outputs, batch)
            parts[term.name] = float(value.detach())
            if term.weight == 0:
                continue  # logged only: 0 * inf would turn the total into NaN
            total = term.weight * value if total is None else total + term.weight * value
        if total is None:
            raise MoleflowError(f"--loss {' '.join(t.name + '=0' for t in self.terms)}: every weight is 0; "
                                "give at least one term a non-zero weight")
        return total, parts
