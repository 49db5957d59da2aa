"""Comparison tables rebuilt from run folders (what `moleflow compare` prints).

With two or more runs, first a summary: one row per run with the means, BWT / FM and the parameters
each task adds. For each run: a header line, a per-class table (routing accuracy, image AUROC, pixel AUROC, AUPRO), a mean
row, BWT / FM / Avalanche forgetting and the image-AUROC accuracy matrix. With two or more runs: a change
table per consecutive pair (run k vs run k-1, like a version-history "v1 -> v2" table), optionally first vs
last, and, when the runs share their classes, a side-by-side per-class table. A folder that is not itself a
run expands to every run below it, sorted by (version, start time) (run_summary.py reads the folders).
"""

from __future__ import annotations

import math
from pathlib import Path

from moleflow.errors import MoleflowError
from moleflow.run_summary import (CONTINUAL_METRICS, METRICS_FILE, TIMING_KEYS, RunSummary, expand_run_dirs,
                                  load_summary, shown_columns)

__all__ = ["compare_runs", "expand_run_dirs", "load_summary", "render_table"]


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


def _settings_cell(settings: dict[str, str] | None) -> str:
    if settings is None:
        return "?"
    return ", ".join(f"{name}={value}" for name, value in settings.items()) or "-"


def _params_cell(run: "RunSummary") -> str:
    if run.growth_per_task is not None:
        return f"{100 * run.growth_per_task:.1f}% of shared"
    # models without shared parameters (one network per task): the absolute size is what grows
    return "n/a" if run.params_per_task is None else f"{run.params_per_task:,.0f} (no shared)"


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
    columns = shown_columns([run])
    head = f"**run {index}** `{run.path}`  \n{facts}" if markdown else f"run {index}: {run.path}\n  {facts}"
    names = sorted({n for values in run.extra_pixel_auroc.values() for n in values})
    rows = [[c] + [_fmt(run.per_class[c][k]) for k, _ in columns]
            + [_fmt(run.extra_pixel_auroc[c][n]) for n in names] for c in run.classes]
    means = [[v for v in (run.extra_pixel_auroc[c][n] for c in run.classes)] for n in names]
    rows.append(["mean"] + [_fmt(run.mean[k]) for k, _ in columns]
                + [_fmt(sum(v) / len(v)) if v and None not in v else _fmt(None) for v in means])
    header = ["class"] + [title for _, title in columns] + [
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
    columns = shown_columns([old, new])
    head = f"**{title}**" if markdown else f"{title}\n  (absolute change, relative change in %; BWT/FM rows: absolute change)"
    classes = list(dict.fromkeys(old.classes + new.classes))
    empty: dict[str, float | None] = {}
    rows = [[c] + [_change(old.per_class.get(c, empty).get(k), new.per_class.get(c, empty).get(k)) for k, _ in columns]
            for c in classes]
    rows.append(["mean"] + [_change(old.mean[k], new.mean[k]) for k, _ in columns])
    for name, values in (("BWT", (old.bwt, new.bwt)), ("FM", (old.fm, new.fm))):
        # BWT/FM are already differences near 0: a relative change of them means nothing.
        cells = {key: _change(values[0][key], values[1][key], relative=False) for key, _ in CONTINUAL_METRICS}
        rows.append([name] + [cells.get(key, "") for key, _ in columns])
    table = render_table(["class"] + [t for _, t in columns], rows, markdown)
    return f"{head}\n\n{table}"


def _summary_section(runs: list[RunSummary], markdown: bool) -> str:
    """One row per run: the means, BWT/FM (image AUROC) and the parameters each task adds."""
    columns = shown_columns(runs)
    header = (["run", "version", "strategy/model"] + [f"mean {t}" for _, t in columns]
              + ["BWT", "FM", "forgetting (Avalanche)", "params/task", "backbone s", "train s", "eval s", "wall s", "peak RSS MB",
                 "settings off the version preset"])
    rows = [[run.path.name, run.version, f"{run.strategy}/{run.model}"] + [_fmt(run.mean[k]) for k, _ in columns]
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
