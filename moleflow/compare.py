"""Comparison tables rebuilt from run folders (what `moleflow compare` prints).

With two or more runs, first a summary: one row per run with the means, BWT / FM and the parameters
each task adds. For each run: a header line, a per-class table (routing accuracy, image AUROC, pixel AUROC, AUPRO), a mean
row and BWT / FM. With two or more runs: a change table per consecutive pair (run k vs run k-1, like a
version-history "v1 -> v2" table) and optionally first vs last. A folder that is not itself a run
expands to every run below it, sorted by (version, start time).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moleflow.errors import MoleflowError
from moleflow.run_folder import CONFIG_FILE, RunFolder

METRICS_FILE = "metrics.json"
# (metrics.json key, column title), in table order
COLUMNS = (
    ("routing_accuracy", "routing acc"),
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO"),
)
CONTINUAL_METRICS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))
#: per-class keys of metrics.json every run has (the built-in metrics); any other is shown as an extra column
STANDARD_PER_CLASS = frozenset({"routing_accuracy", "image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro",
                                "f1", "f1_threshold"})


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
        version=_config_value(config, "version"),
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
    """The settings of a saved config.json that differ from its version preset applied to today's defaults:
    what tells the rows of an ablation apart (several runs of one version)."""
    from moleflow.config import NOT_RECIPE, Config, apply_model_default_loss
    from moleflow.versions import version_overrides

    try:
        reference = Config()
        for name, value in version_overrides(_config_value(config, "version")).items():
            reference.set(name, value)
        preset_model = reference.flow.model
        reference.set("model", _config_value(config, "model", preset_model))
        apply_model_default_loss(reference)  # a model's own default loss is not a setting off the preset
        reference.set("model", preset_model)
        wanted = reference.flat()
        for section, values in config.items():  # a key the file lacks counts as the preset's value
            for name, value in (values.items() if isinstance(values, dict) else [(section, values)]):
                reference.set(name, value)
        ran = reference.flat()
    except MoleflowError:
        return None

    def shown(value: Any) -> str:
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    return {name: shown(value) for name, value in sorted(ran.items())
            if name not in NOT_RECIPE and value != wanted.get(name)}


def _settings_cell(settings: dict[str, str] | None) -> str:
    if settings is None:
        return "?"
    return ", ".join(f"{name}={value}" for name, value in settings.items()) or "-"


def _mean_per_task(params: dict) -> float | None:
    per_task = params.get("per_task")
    return sum(per_task) / len(per_task) if isinstance(per_task, list) and per_task else None


def _params_cell(run: "RunSummary") -> str:
    if run.growth_per_task is not None:
        return f"{100 * run.growth_per_task:.1f}% of shared"
    # models without shared parameters (one network per task): the absolute size is what grows
    return "n/a" if run.params_per_task is None else f"{run.params_per_task:,.0f} (no shared)"


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


# ----------------------------------------------------------------------------------------- formatting

def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _change(old: float | None, new: float | None, relative: bool = True) -> str:
    if old is None or new is None:
        return "n/a"
    delta = new - old
    if not relative:
        return f"{delta:+.4f}"
    rel = f"{delta / abs(old) * 100:+.2f}%" if old != 0 else "n/a"
    return f"{delta:+.4f} ({rel})"


def render_table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    """First column left-aligned, the others right-aligned (numbers)."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _run_section(index: int, run: RunSummary, markdown: bool) -> str:
    facts = f"version {run.version} | strategy/model {run.strategy}/{run.model} | experiment {run.experiment}"
    head = f"**run {index}** `{run.path}`  \n{facts}" if markdown else f"run {index}: {run.path}\n  {facts}"
    names = sorted({n for values in run.extra_pixel_auroc.values() for n in values})
    rows = [[c] + [_fmt(run.per_class[c][k]) for k, _ in COLUMNS]
            + [_fmt(run.extra_pixel_auroc[c][n]) for n in names] for c in run.classes]
    means = [[v for v in (run.extra_pixel_auroc[c][n] for c in run.classes)] for n in names]
    rows.append(["mean"] + [_fmt(run.mean[k]) for k, _ in COLUMNS]
                + [_fmt(sum(v) / len(v)) if v and None not in v else _fmt(None) for v in means])
    header = ["class"] + [title for _, title in COLUMNS] + [
        f"pixel AUROC ({n.removeprefix('pixel_auroc_')} map)" if n.startswith("pixel_auroc_") else n for n in names]
    table = render_table(header, rows, markdown)
    continual = [f"BWT ({title}) {_fmt(run.bwt[key])}, FM ({title}) {_fmt(run.fm[key])}, "
                 f"Avalanche forgetting ({title}) {_fmt(run.forgetting_avalanche.get(key))}"
                 for key, title in CONTINUAL_METRICS if key == "image_auroc" or run.bwt[key] is not None]
    if any(v is not None for _, v in run.final_losses):  # models without epochs (knn) have none
        continual.append("final training loss per task: "
                         + ", ".join(f"{c} {'n/a' if v is None else f'{v:.4g}'}" for c, v in run.final_losses))
    tail = ("  \n" if markdown else "\n").join(continual)
    matrix = _matrix_table(run, markdown)
    return f"{head}\n\n{table}\n\n{tail}" + (f"\n\n{matrix}" if matrix else "")


def _matrix_table(run: RunSummary, markdown: bool) -> str | None:
    """The image-AUROC accuracy matrix R[i][j] (rows: after task i; columns: task j), for 2+ tasks."""
    if len(run.image_matrix) < 2 or len(run.tasks) != len(run.image_matrix):
        return None
    header = ["after task / on task"] + [str(j) for j in range(len(run.tasks))]
    rows = [[f"{i} {name}"] + ["" if v is None else f"{v:.3f}" for v in row]
            for i, (name, row) in enumerate(zip(run.tasks, run.image_matrix))]
    return "image AUROC accuracy matrix R[i][j]\n\n" + render_table(header, rows, markdown)


def _change_section(old: RunSummary, new: RunSummary, markdown: bool) -> str:
    title = f"change: {old.label} -> {new.label}"
    head = f"**{title}**" if markdown else f"{title}\n  (absolute change, relative change in %; BWT/FM rows: absolute change)"
    classes = list(dict.fromkeys(old.classes + new.classes))
    empty: dict[str, float | None] = {}
    rows = [[c] + [_change(old.per_class.get(c, empty).get(k), new.per_class.get(c, empty).get(k)) for k, _ in COLUMNS]
            for c in classes]
    rows.append(["mean"] + [_change(old.mean[k], new.mean[k]) for k, _ in COLUMNS])
    for name, values in (("BWT", (old.bwt, new.bwt)), ("FM", (old.fm, new.fm))):
        # BWT/FM are already differences near 0: a relative change of them means nothing.
        cells = {key: _change(values[0][key], values[1][key], relative=False) for key, _ in CONTINUAL_METRICS}
        rows.append([name] + [cells.get(key, "") for key, _ in COLUMNS])
    table = render_table(["class"] + [t for _, t in COLUMNS], rows, markdown)
    return f"{head}\n\n{table}"


def _summary_section(runs: list[RunSummary], markdown: bool) -> str:
    """One row per run: the means, BWT/FM (image AUROC) and the parameters each task adds."""
    header = (["run", "version", "strategy/model"] + [f"mean {t}" for _, t in COLUMNS]
              + ["BWT", "FM", "forgetting (Avalanche)", "params/task", "backbone s", "train s", "eval s", "wall s", "peak RSS MB",
                 "settings off the version preset"])
    rows = [[run.path.name, run.version, f"{run.strategy}/{run.model}"] + [_fmt(run.mean[k]) for k, _ in COLUMNS]
            + [_fmt(run.bwt.get("image_auroc")), _fmt(run.fm.get("image_auroc")),
               _fmt(run.forgetting_avalanche.get("image_auroc")), _params_cell(run)]
            + ["n/a" if run.timing.get(k) is None else f"{run.timing[k]:.1f}" for k in TIMING_KEYS]
            + ["n/a" if run.peak_rss_mb is None else f"{run.peak_rss_mb:.0f}", _settings_cell(run.off_preset)]
            for run in runs]
    title = "summary (BWT/FM on image AUROC)"
    return f"{'**' + title + '**' if markdown else title}\n\n{render_table(header, rows, markdown)}"


def _per_class_section(runs: list[RunSummary], markdown: bool, key: str, title: str) -> str | None:
    """One row per class, one column per run (e.g. MoLE-Flow beside finetune / replay / joint on one stream);
    None unless 2+ runs report the same classes."""
    if len(runs) < 2 or any(run.classes != runs[0].classes for run in runs):
        return None
    header = ["class"] + [f"{i + 1}: {run.strategy}/{run.model}" for i, run in enumerate(runs)]
    rows = [[c] + [_fmt(run.per_class[c][key]) for run in runs] for c in runs[0].classes]
    rows.append(["mean"] + [_fmt(run.mean[key]) for run in runs])
    heading = f"{title} per class (columns: the runs above, in order)"
    return f"{'**' + heading + '**' if markdown else heading}\n\n{render_table(header, rows, markdown)}"


def _seed_section(runs: list[RunSummary], markdown: bool) -> str | None:
    """Mean ± sample std over runs that differ only in --seed (same version, strategy/model and other
    settings); None when no such group has two runs."""
    groups: dict[tuple[str, str, str], list[RunSummary]] = {}
    for run in runs:
        if run.off_preset is None:  # unreadable settings: cannot tell what else differs
            continue
        others = _settings_cell({k: v for k, v in run.off_preset.items() if k != "seed"})
        groups.setdefault((run.version, f"{run.strategy}/{run.model}", others), []).append(run)
    rows = []
    for (version, model, settings), members in groups.items():
        if len(members) < 2:
            continue
        cells = []
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            values = [m.mean[key] for m in members if m.mean[key] is not None]
            mean = sum(values) / len(values) if values else None
            std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                   if mean is not None and len(values) > 1 else None)
            cells.append("n/a" if mean is None else f"{mean:.4f} ± {std:.4f}")
        for key in ("train_s", "wall_s"):
            seconds = [m.timing.get(key) for m in members]
            cells.append("n/a" if None in seconds else f"{sum(seconds) / len(seconds):.1f}")
        rows.append([version, model, settings, str(len(members))] + cells)
    if not rows:
        return None
    header = ["version", "strategy/model", "settings off the version preset", "seeds",
              "mean image AUROC", "mean pixel AUROC", "mean AUPRO", "train s (mean)", "wall s (mean)"]
    title = "over seeds (mean ± sample std of the per-run means)"
    return f"{'**' + title + '**' if markdown else title}\n\n{render_table(header, rows, markdown)}"


def compare_runs(run_dirs: list[str | Path], markdown: bool = False, *, first_vs_last: bool = False) -> str:
    """Tables for the given runs (or folders of runs); markdown=True gives GitHub tables, else aligned text.

    first_vs_last adds a change table between the first and the last run (when there are 3 or more).
    """
    if not run_dirs:
        raise MoleflowError("no run folders given; pass run folders or a folder of runs such as runs/demo")
    paths, skipped = expand_run_dirs(run_dirs)
    if not paths:
        names = ", ".join(str(p) for p in skipped)
        raise MoleflowError(f"no finished runs to compare (no {METRICS_FILE} in: {names})")
    runs = [load_summary(p) for p in paths]
    sections = [_summary_section(runs, markdown)] if len(runs) >= 2 else []
    seeds = _seed_section(runs, markdown)
    sections += [seeds] if seeds else []
    sections += [_run_section(i + 1, run, markdown) for i, run in enumerate(runs)]
    pairs = list(zip(runs, runs[1:]))
    if first_vs_last and len(runs) >= 3:
        pairs.append((runs[0], runs[-1]))
    sections += [_change_section(old, new, markdown) for old, new in pairs]
    for key, title in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC")):
        side_by_side = _per_class_section(runs, markdown, key, title)  # after the rest: tables keep their order
        sections += [side_by_side] if side_by_side else []
    if skipped:
        sections.append("skipped (no metrics.json yet): " + ", ".join(str(p) for p in skipped))
    return "\n\n".join(sections) + "\n"
