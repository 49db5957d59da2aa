"""What one finished run reports, read back from its folder (metrics.json, config.json) into a RunSummary, and
which run folders a list of paths means. `moleflow compare` (compare.py) formats these; the report's compare
page reads them too.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moleflow.config import NOT_RECIPE, Config, resolve_config
from moleflow.config_migration import migrate
from moleflow.errors import MoleflowError
from moleflow.run_folder import CONFIG_FILE, RunFolder
from moleflow.task_range import NO_TASK_KEY

METRICS_FILE = "metrics.json"
# (metrics.json key, column title), in table order
COLUMNS = (
    ("routing_accuracy", "routing acc"),
    ("routing_accuracy_normal", "routing normal"),  # the normal test images only
    ("routing_accuracy_anomalous", "routing anomalous"),  # the anomalous ones (runs before 24: n/a)
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO"),
)
#: columns a table shows only when one of its runs has them (runs from before the routing split have none)
OPTIONAL_COLUMNS = frozenset({"routing_accuracy_normal", "routing_accuracy_anomalous"})
CONTINUAL_METRICS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))
#: per-class keys of metrics.json every run has (the built-in metrics); any other is shown as an extra column
STANDARD_PER_CLASS = frozenset({"routing_accuracy", "routing_accuracy_normal", "routing_accuracy_anomalous",
                                "image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro", "f1", "f1_threshold",
                                NO_TASK_KEY})  # the last: the report's routing section shows it


#: the run's time split (metrics.json -> timing); wall_s is the whole of `moleflow train`'s work but writing the
#: final report (runs from before it was recorded show n/a)
TIMING_KEYS = ("backbone_s", "train_s", "eval_s", "wall_s")


@dataclass
class RunSummary:
    path: Path
    version: str
    strategy: str
    model: str
    experiment: str
    classes: list[str]
    per_class: dict[str, dict[str, float | None]]
    mean: dict[str, float | None]
    bwt: dict[str, float | None] = field(default_factory=dict)
    fm: dict[str, float | None] = field(default_factory=dict)
    #: Avalanche's forgetting, R[j][j] - R[T][j] averaged over j < T (metrics.json continual.forgetting_avalanche)
    forgetting_avalanche: dict[str, float | None] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)  # task names (classes joined by '+'), in order
    #: R[i][j] of image AUROC (after task i, on task j); None entries not evaluated
    image_matrix: list[list[float | None]] = field(default_factory=list)
    growth_per_task: float | None = None  # mean parameters added per task, as a fraction of the shared ones
    params_per_task: float | None = None  # mean parameters added per task (absolute)
    timing: dict[str, float | None] = field(default_factory=dict)  # seconds, keyed by TIMING_KEYS
    #: per-class numbers beyond COLUMNS: `pixel_auroc_<map>` of a model's extra maps (score_maps hook, e.g. the
    #: Students' uncertainty) and plugin metrics (moleflow.metrics with per_class): class -> key -> value
    extra_pixel_auroc: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: (class, last epoch's mean training loss) per training round: a diverged task stands out here
    final_losses: list[tuple[str, float | None]] = field(default_factory=list)
    #: the settings in which the run differs from its version preset (on today's defaults), name -> shown
    #: value, e.g. {"lr": "0.0002"}; None when the saved config cannot be read against today's settings
    off_preset: dict[str, str] | None = None
    peak_rss_mb: float | None = None

    @property
    def label(self) -> str:
        return f"{self.version} ({self.path.name})"


# ----------------------------------------------------------------------------------------- loading

def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _config_value(config: dict, key: str, default: str = "?") -> str:
    """Flat configs hold keys at the top; Config.to_dict() nests them one level down in sections."""
    if key in config and not isinstance(config[key], dict):
        return str(config[key])
    for section in config.values():
        if isinstance(section, dict) and key in section:
            return str(section[key])
    return default


def load_summary(path: str | Path) -> RunSummary:
    run = RunFolder.open(path)
    config = run.read_json(CONFIG_FILE)
    try:
        config = migrate(config)
    except MoleflowError:
        pass  # a model no longer installed: the old layout's values are still read below
    if not (run.path / METRICS_FILE).is_file():
        raise MoleflowError(f"{run.path}: no {METRICS_FILE} (run unfinished or failed?); finish or resume it, "
                            "or leave it out of the comparison")
    metrics = run.read_json(METRICS_FILE)
    if not isinstance(metrics, dict):
        raise MoleflowError(f"{run.path}: {METRICS_FILE} is not a JSON object; the file is damaged")
    final = metrics.get("final") or {}
    raw_per_class = final.get("per_class") or {}
    tasks = metrics.get("tasks")
    listed = metrics.get("classes", tasks)  # runs from before N-M tasks list their classes under "tasks"
    classes = [str(c) for c in listed] if isinstance(listed, list) else list(raw_per_class)
    per_class = {c: {k: _number((raw_per_class.get(c) or {}).get(k)) for k, _ in COLUMNS} for c in classes}
    raw_mean = final.get("mean") or {}
    mean: dict[str, float | None] = {}
    for key, _ in COLUMNS:
        value = _number(raw_mean.get(key))
        if value is None and key == "routing_accuracy":
            value = _number((metrics.get("routing") or {}).get("accuracy"))
        if value is None:  # fall back to the class mean, only when every class has the number
            values = [per_class[c][key] for c in classes]
            value = sum(values) / len(values) if values and None not in values else None
        mean[key] = value
    continual = metrics.get("continual") or {}
    # beyond the fixed columns: pixel AUROC of a model's extra maps, and per-class metrics a plugin registered
    extra_names = sorted({k for c in classes for k in (raw_per_class.get(c) or {})
                          if k not in STANDARD_PER_CLASS and not k.endswith("_oracle")})
    extras = {c: {n: _number((raw_per_class.get(c) or {}).get(n)) for n in extra_names} for c in classes}
    return RunSummary(
        path=run.path,
        version=_config_value(config, "version", "") or _config_value(config, "model"),
        strategy=_config_value(config, "strategy"),
        model=_config_value(config, "model"),
        experiment=_config_value(config, "experiment_name"),
        classes=classes,
        per_class=per_class,
        mean=mean,
        bwt={k: _number((continual.get("bwt") or {}).get(k)) for k, _ in CONTINUAL_METRICS},
        fm={k: _number((continual.get("fm") or {}).get(k)) for k, _ in CONTINUAL_METRICS},
        forgetting_avalanche={k: _number((continual.get("forgetting_avalanche") or {}).get(k))
                              for k, _ in CONTINUAL_METRICS},
        tasks=[str(t) for t in tasks] if isinstance(tasks, list) else classes,
        image_matrix=[[_number(v) for v in row] for row in
                      ((continual.get("matrix") or {}).get("image_auroc") or []) if isinstance(row, list)],
        growth_per_task=_growth(metrics.get("params") or {}),
        params_per_task=_mean_per_task(metrics.get("params") or {}),
        timing={k: _number((metrics.get("timing") or {}).get(k)) for k in TIMING_KEYS},
        extra_pixel_auroc=extras if extra_names else {},
        final_losses=[(str(f.get("class", f.get("task", "?"))), _number(f.get("final_loss")))
                      for f in metrics.get("fit") or [] if isinstance(f, dict)],
        off_preset=_off_preset(config),
        peak_rss_mb=_number((metrics.get("timing") or {}).get("peak_rss_mb")),
    )


def _off_preset(config: dict) -> dict[str, str] | None:
    """The settings and model options (by name, any model's) of a saved config.json that differ from its version
    preset applied to today's defaults (a model without a preset: its options' defaults): what tells the rows
    of an ablation apart (several runs of one version)."""
    try:
        given = Config.from_dict(config)  # the model and version it names (migrated when old)
        preset = {"model": given.model, "version": given.run.version}
        wanted = resolve_config(preset).flat()
        ran = resolve_config(preset, file_values=config).flat()  # a setting the file lacks: the preset's
    except MoleflowError:
        return None

    def shown(value: Any) -> str:
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    return {name: shown(value) for name, value in sorted(ran.items())
            if name not in NOT_RECIPE and value != wanted.get(name)}


def _mean_per_task(params: dict) -> float | None:
    per_task = params.get("per_task")
    return sum(per_task) / len(per_task) if isinstance(per_task, list) and per_task else None


def _growth(params: dict) -> float | None:
    shared, per_task = _number(params.get("shared")), params.get("per_task")
    if not shared or not isinstance(per_task, list) or not per_task:
        return None
    return sum(per_task) / len(per_task) / shared


def _natural_key(text: str) -> list[Any]:
    """'v4' < 'v4.1' < 'v10' (digits compared as numbers)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def _runs_below(root: Path) -> list[Path]:
    found: list[Path] = []
    for current, dirs, files in os.walk(root):
        if CONFIG_FILE in files and Path(current) != root:
            found.append(Path(current))
            dirs[:] = []  # a run folder holds no runs; skip its heatmaps
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return found


def expand_run_dirs(run_dirs: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """Run folders in the order given (parents expanded, sorted by version then time), without repeats.

    Returns (runs, skipped): runs found by expanding a parent but lacking metrics.json (still running or
    killed) are skipped rather than failing the whole comparison; a run named directly must be complete.
    """
    runs: list[Path] = []
    skipped: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path, bucket: list[Path]) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            bucket.append(p)

    for item in run_dirs:
        p = Path(item)
        if not p.exists():
            raise MoleflowError(f"run folder not found: {p}")
        if RunFolder.is_run_folder(p):
            add(p, runs)
            continue
        if not p.is_dir():
            raise MoleflowError(f"{p} is not a run folder or a folder of runs")
        below = _runs_below(p)
        if not below:
            raise MoleflowError(f"no run folders under {p} (a run folder contains {CONFIG_FILE})")

        def sort_key(run: Path) -> tuple[list[Any], str, int]:
            # name starts with the start second; config.json's write time orders runs started within one second
            version = _config_value(RunFolder.open(run).read_json(CONFIG_FILE), "version")
            return _natural_key(version), run.name[:15], (run / CONFIG_FILE).stat().st_mtime_ns

        for run in sorted(below, key=sort_key):
            add(run, runs if (run / METRICS_FILE).is_file() else skipped)
    return runs, skipped


def shown_columns(runs: list[RunSummary]) -> tuple[tuple[str, str], ...]:
    """COLUMNS without the optional ones that none of `runs` reports (a table of old runs keeps its shape)."""
    def reported(key: str) -> bool:
        return any(run.mean.get(key) is not None or any(run.per_class[c].get(key) is not None for c in run.classes)
                   for run in runs)
    return tuple((key, title) for key, title in COLUMNS if key not in OPTIONAL_COLUMNS or reported(key))
