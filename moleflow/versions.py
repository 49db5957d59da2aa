"""Version presets: data, not branches. A version = parent + config overrides + description + new flags.

Each preset is registered in the `moleflow.versions` entry-point group (built-ins through moleflow's own
setup.cfg), so a plugin can add a version. `--version v3` applies v1 -> v2 -> v3 in order; explicit flags
win over all of them (see config.resolve_config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moleflow import registry
from moleflow.errors import MoleflowError


@dataclass(frozen=True)
class VersionPreset:
    name: str
    parent: str | None
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    introduces: tuple[str, ...] = ()  # flags this version added to the CLI


V1 = VersionPreset(
    "v1",
    None,
    "task 0 trains the base flow only; later tasks: base frozen + LoRA (scale alpha/(2*rank)); "
    "adapter = InstanceNorm + zero-init residual MLP on tasks >= 1",
    {
        "lora_scaling": "alpha_over_2rank",
        "task0_lora": False,
        "adapter": "instancenorm",
        "adapter_first_task": False,
        "task0_mix": 0.0,
    },
    ("lora_rank", "lora_alpha"),
)
V2 = VersionPreset(
    "v2",
    "v1",
    "LoRA scale alpha/rank; task 0 also gets a LoRA expert",
    {"lora_scaling": "alpha_over_rank", "task0_lora": True},
    ("lora_scaling", "task0_lora"),
)
V3 = VersionPreset(
    "v3",
    "v2",
    "FiLM adapter (LayerNorm, gamma/beta, residual gate 0.5, hidden max(C/2,128)) on every task; "
    "task 0 = 0.9*identity + 0.1*adapted",
    {"adapter": "film", "adapter_first_task": True, "task0_mix": 0.1},
    ("adapter", "adapter_first_task", "task0_mix"),
)


def get_preset(name: str) -> VersionPreset:
    preset = registry.get("versions", name)
    if not isinstance(preset, VersionPreset):
        raise MoleflowError(f"version '{name}' is registered but is not a VersionPreset ({type(preset).__name__})")
    return preset


def chain(name: str) -> list[VersionPreset]:
    """Root first: v3 -> [v1, v2, v3]."""
    out: list[VersionPreset] = []
    seen: set[str] = set()
    current: str | None = name
    while current is not None:
        if current in seen:
            raise MoleflowError(f"version '{name}': parent cycle at '{current}'")
        seen.add(current)
        preset = get_preset(current)
        out.append(preset)
        current = preset.parent
    return out[::-1]


def version_overrides(name: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for preset in chain(name):
        merged.update(preset.overrides)
    return merged


def describe_versions() -> list[tuple[str, str | None, str]]:
    return [(p.name, p.parent, p.description) for p in (get_preset(n) for n in registry.names("versions"))]
