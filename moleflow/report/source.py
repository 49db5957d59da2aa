"""Where the report's per-image anomaly maps come from.

Three sources, one shape (`ClassMaps`, at the model's input size, exactly what the metrics were computed on):

* at the end of `moleflow train` the trainer still holds every class's maps in memory (`from_scored`);
* `moleflow report RUN_DIR` on a run saved with `--save_maps` reads `maps/<class>.npz` (`from_npz`);
* on any other finished run it rebuilds the model from the run's checkpoints and scores the test sets again
  (`moleflow.inference.rescored_maps`, what `moleflow eval` does, handed in by `moleflow report`), writing
  nothing into the run folder.

The report draws each overlay at the image's own resolution: it reads the image file, upsamples the map
bilinearly to it and reads the ground-truth mask file when the data set lists one (else upsamples the
model-size mask).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from moleflow import registry
from moleflow.errors import MoleflowError


@dataclass
class ClassMaps:
    """One class's test set as scored: model-size maps and masks, in the order of `paths`."""
    name: str
    paths: list[str]
    labels: np.ndarray  # (N,) 0 normal / 1 anomalous
    masks: np.ndarray  # (N,H,W) bool at the model's input size
    maps: np.ndarray  # (N,H,W) float32 anomaly maps (routed expert) at the model's input size
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. the Students' "uncertainty"
    mask_files: dict[str, str] = field(default_factory=dict)  # image path -> its mask file (anomalous only)

    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}


def from_scored(tasks: list[Any], scored: dict[str, Any]) -> dict[str, ClassMaps]:
    """The maps a run's evaluation kept in memory (`ContinualRun.evaluate(..., keep_maps=True)`)."""
    out = {}
    for task in tasks:
        for test in task.tests:
            s, fs = scored[test.class_name], test.test
            if s.maps is None:
                raise MoleflowError(f"class {test.class_name}: the evaluation kept no maps (keep_maps=False)")
            masks = {str(smp.path): str(smp.mask_path) for smp in test.dataset.samples if smp.mask_path is not None}
            out[test.class_name] = ClassMaps(
                test.class_name, [str(p) for p in fs.paths], fs.labels.numpy().astype(int),
                fs.masks[:, 0].numpy().astype(bool), s.maps.numpy().astype(np.float32),
                {name: m.numpy().astype(np.float32) for name, m in s.extra_maps.items()}, masks)
    return out


NPZ_KEYS = ("maps", "masks", "labels", "scores", "paths")


def from_npz(run: Any, classes: list[str]) -> dict[str, ClassMaps] | None:
    """maps/<class>.npz of every class (written with --save_maps), or None when any is missing."""
    folder = run.path / "maps"
    if not all((folder / f"{c}.npz").is_file() for c in classes):
        return None
    out = {}
    for c in classes:
        path = folder / f"{c}.npz"
        try:
            with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise MoleflowError(f"cannot read {path} ({exc}); delete it to re-score the run instead") from None
        missing = [k for k in NPZ_KEYS if k not in arrays]
        if missing:
            raise MoleflowError(f"{path} lacks {', '.join(missing)}; delete it to re-score the run instead")
        out[c] = ClassMaps(c, [str(p) for p in arrays["paths"]], arrays["labels"].astype(int),
                           arrays["masks"].astype(bool), arrays["maps"].astype(np.float32),
                           {k: v.astype(np.float32) for k, v in arrays.items() if k not in NPZ_KEYS})
    return out


def listed_mask_files(cfg: Any) -> dict[str, str]:
    """image path -> mask file of every anomalous test image the run's data set lists (no image is decoded);
    empty when the data set cannot be listed any more (the report then upsamples the model-size masks)."""
    d = cfg.data
    out: dict[str, str] = {}
    try:
        lister = registry.get("datasets", d.dataset_format)
        for cls in d.classes:
            for s in lister(d.data_path, cls, "test", split_percent=tuple(d.split_percent), seed=d.split_seed):
                if s.mask_path is not None:
                    out[str(s.path)] = str(s.mask_path)
    except MoleflowError:
        return {}
    return out


#: re-scores a finished run from its checkpoints: (run folder, progress) -> (its tasks, scored maps by class)
Rescore = Callable[[Any, bool], tuple[list[Any], dict[str, Any]]]


def load_class_maps(run: Any, cfg: Any, progress: bool, log: Callable[[str], None],
                    rescore: Rescore | None = None) -> tuple[dict[str, ClassMaps], str]:
    """Maps of a finished run: its maps/*.npz when present, else re-scored from its checkpoints by `rescore`
    (moleflow.inference.rescored_maps; handed in by the caller, so the report does not depend on the
    trainer). Returns them and a sentence saying where they came from."""
    classes = cfg.data.classes
    found = from_npz(run, classes)
    if found is not None:
        masks = listed_mask_files(cfg)
        for cm in found.values():
            cm.mask_files = {p: masks[p] for p in cm.paths if p in masks}
        return found, "read from the run's maps/<class>.npz (written with --save_maps)"
    if rescore is None:
        raise MoleflowError(f"{run.path} has no maps/*.npz (--save_maps) and no way to re-score it was given; "
                            f"use `moleflow report {run.path}`")
    log(f"report: {run.path} has no maps/*.npz (--save_maps), so its model is rebuilt from its checkpoints "
        "and the test sets are scored again")
    tasks, scored = rescore(run.path, progress)
    return from_scored(tasks, scored), ("re-scored from the run's checkpoints (the run has no maps/*.npz; "
                                              "`moleflow train --save_maps` keeps them)")
