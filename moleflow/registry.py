"""Component lookup through Python entry points: one path for built-ins and plugins.

moleflow's own setup.cfg registers its built-ins in the same groups a plugin uses, so nothing here
knows which distribution provides a name. Modelled on timm's `create_model` registry, but backed by
`importlib.metadata` so separately installed packages can add components.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from moleflow.errors import MoleflowError

PREFIX = "moleflow."
GROUPS = ("models", "strategies", "losses", "extractors", "routers", "datasets", "metrics", "versions", "weights")


@dataclass(frozen=True)
class Component:
    group: str
    name: str
    value: str  # "module:attr" as declared
    distribution: str
    version: str


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise MoleflowError(f"unknown component group '{group}'; groups are: {', '.join(GROUPS)}")


def _entry_points(group: str) -> list[EntryPoint]:
    _check_group(group)
    return sorted(entry_points(group=PREFIX + group), key=lambda ep: ep.name)


def _describe(group: str, ep: EntryPoint) -> Component:
    dist = getattr(ep, "dist", None)
    return Component(
        group=group,
        name=ep.name,
        value=ep.value,
        distribution=dist.name if dist is not None else "?",
        version=dist.version if dist is not None else "?",
    )


def names(group: str) -> list[str]:
    """Registered names of a group, sorted, without importing anything."""
    return sorted({ep.name for ep in _entry_points(group)})


def components(group: str) -> list[Component]:
    return [_describe(group, ep) for ep in _entry_points(group)]


def get(group: str, name: str) -> Any:
    """Load the object registered as `name` in `group`; unknown names list the known ones."""
    matches = [ep for ep in _entry_points(group) if ep.name == name]
    if not matches:
        known = ", ".join(names(group)) or "(none installed)"
        noun = {"strategies": "strategy", "losses": "loss"}.get(group, group[:-1])
        raise MoleflowError(f"unknown {noun} '{name}'; known: {known}")
    providers = {_describe(group, ep).distribution for ep in matches}
    if len(providers) > 1:
        raise MoleflowError(
            f"{group} '{name}' is registered by several distributions ({', '.join(sorted(providers))}); "
            "uninstall one of them"
        )
    ep = matches[0]
    try:
        return ep.load()
    except Exception as exc:  # a broken plugin must name itself, not crash with a bare traceback
        comp = _describe(group, ep)
        raise MoleflowError(
            f"{group} '{name}' from {comp.distribution} {comp.version} failed to import "
            f"({ep.value}): {type(exc).__name__}: {exc}"
        ) from exc


def create(group: str, name: str, /, *args: Any, **kwargs: Any) -> Any:
    """Look up a factory and call it."""
    return get(group, name)(*args, **kwargs)


def listing() -> list[tuple[Component, str | None]]:
    """Every registered component with None, or the error text its import raised."""
    rows: list[tuple[Component, str | None]] = []
    for group in GROUPS:
        for ep in _entry_points(group):
            comp = _describe(group, ep)
            try:
                ep.load()
                error = None
            except Exception as exc:  # noqa: BLE001 - report, never break the listing
                error = f"{type(exc).__name__}: {exc}"
            rows.append((comp, error))
    return rows


def format_listing(rows: list[tuple[Component, str | None]]) -> str:
    header = ("group", "name", "distribution", "version", "status")
    table = [header] + [
        (c.group, c.name, c.distribution, c.version, "ok" if err is None else f"error: {err}") for c, err in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in table]
    return "\n".join(lines)
