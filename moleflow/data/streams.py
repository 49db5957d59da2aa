"""Task streams: which classes each task of a run holds, from `--task_classes` and `--scenario`.

The continual-AD literature uses two kinds of stream:

* **1 x N**: one class per task, e.g. the 1x15 stream over MVTec AD's classes in alphabetical order (UCAD,
  DNE, ReplayCAD, CADIC, MoLE-Flow). `--task_classes mvtec15` names it; `visa12` names VisA's 12 classes.
* **N-M (base plus increments)**: a first task holding several classes, then increments (IUF, CDAD).
  Written out with `+`: `--task_classes leather+grid transistor` is task 0 = {leather, grid}, task 1 =
  {transistor}. `--scenario` builds the published splits over the class list (default: mvtec15):
  `14-1` (14 classes, then 1), `10-5` (10, then 5), `3x5` (five tasks of 3 classes), `10-1x5` (10, then
  five tasks of 1). The grammar is `[BASE-]SIZE[xSTEPS]`: a base task of BASE classes, then STEPS tasks of
  SIZE classes (STEPS defaults to 1).

Metrics stay per class; a task is what the model grows an expert for and what the router predicts, so
routing is scored per task (an image of `grid` is routed correctly when it goes to the task holding grid).
"""

from __future__ import annotations

import re
from typing import Sequence

from moleflow.errors import MoleflowError

MVTEC15 = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
           "tile", "toothbrush", "transistor", "wood", "zipper")
VISA12 = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3",
          "pcb4", "pipe_fryum")
#: the embedded benchmark's routing stress stream (`moleflow synth --classes lookalike`): two lots of one product
#: per pair, whose normal images differ only by a slight colour cast, with large defects (synth/lookalike.py)
LOOKALIKE = ("pill_lot1", "pill_lot2", "leather_lot1", "leather_lot2")
#: a single --task_classes item that stands for a whole stream, one class per task
NAMED_STREAMS = {"mvtec15": MVTEC15, "visa12": VISA12, "lookalike": LOOKALIKE}
#: the splits of the IUF / CDAD papers (any [BASE-]SIZE[xSTEPS] is accepted)
PUBLISHED_SCENARIOS = ("14-1", "10-5", "3x5", "10-1x5")
JOIN = "+"
_SCENARIO = re.compile(r"^(?:(\d+)-)?(\d+)(?:x(\d+))?$")


def expand_names(items: Sequence[str]) -> list[str]:
    """--task_classes items with stream names replaced by their classes (mvtec15 -> 15 items)."""
    out: list[str] = []
    for item in items:
        out.extend(NAMED_STREAMS.get(str(item).strip(), [str(item).strip()]))
    return out


def scenario_sizes(scenario: str, n_classes: int) -> list[int]:
    """Number of classes in each task of `scenario` over `n_classes` classes; one error line if it does not fit."""
    match = _SCENARIO.match(scenario.strip())
    base, size, steps = match.groups() if match else (None, None, None)
    if match is None or (base is None and steps is None):
        raise MoleflowError(f"--scenario {scenario!r}: expected [BASE-]SIZE[xSTEPS], e.g. "
                            f"{', '.join(PUBLISHED_SCENARIOS)}")
    sizes = ([int(base)] if base else []) + [int(size)] * int(steps or 1)
    if 0 in sizes:
        raise MoleflowError(f"--scenario {scenario}: every task needs at least one class")
    if sum(sizes) != n_classes:
        raise MoleflowError(f"--scenario {scenario} splits {sum(sizes)} classes, but the class list has {n_classes}; "
                            f"give --task_classes with {sum(sizes)} classes (default with --scenario: mvtec15)")
    return sizes


def task_streams(task_classes: Sequence[str], scenario: str = "") -> list[list[str]]:
    """The classes of each task, in task order. Refuses empty names, a class named twice, and `+` groups
    together with --scenario (the scenario does the grouping)."""
    items = expand_names(task_classes)
    if not items:
        raise MoleflowError("--task_classes is empty; name at least one class (or mvtec15 / visa12)")
    if scenario:
        if any(JOIN in item for item in items):
            raise MoleflowError(f"--scenario {scenario} groups the classes itself; give --task_classes as single "
                                f"classes (no '{JOIN}')")
        sizes = scenario_sizes(scenario, len(items))
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        tasks = [items[start:start + n] for start, n in zip(starts, sizes)]
    else:
        tasks = [[name.strip() for name in item.split(JOIN)] for item in items]
    flat = [name for task in tasks for name in task]
    if any(not name for name in flat):
        raise MoleflowError(f"--task_classes {' '.join(map(str, task_classes))}: empty class name (check the "
                            f"'{JOIN}' groups)")
    twice = sorted({name for name in flat if flat.count(name) > 1})
    if twice:
        raise MoleflowError(f"--task_classes lists {', '.join(twice)} twice; each class belongs to one task")
    return tasks


def task_name(classes: Sequence[str]) -> str:
    """How a task is named in logs, checkpoints and the routing table: its classes joined by '+'."""
    return JOIN.join(classes)
