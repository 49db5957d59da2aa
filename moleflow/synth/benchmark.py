"""Embedded MVTec-AD-style benchmark: writes real PNGs for leather, grid and transistor look-alikes.

Layout (the same one the MVTec loader reads for a real copy):
    out/<class>/train/good/000.png                       (RGB; grid is L mode like real MVTec grid)
    out/<class>/test/good/000.png
    out/<class>/test/<defect>/000.png
    out/<class>/ground_truth/<defect>/000_mask.png      (L mode, 0 / 255)

Every image has its own random generator seeded from (seed, class, split, defect type, index), so a file's
content depends only on those and never on generation order or on which other classes are generated.
A defect's mask is derived from the pixels the defect actually changed (after quantisation to uint8),
grown by one pixel and with pin-holes filled, so it is exact up to a pixel and never empty.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from moleflow.data.streams import LOOKALIKE, MVTEC15
from moleflow.errors import MoleflowError
from moleflow.synth import (bottle, cable, capsule, carpet, grid, hazelnut, leather, lookalike, metal_nut, pill,
                            screw, tile, toothbrush, transistor, wood, zipper)

GENERATOR_VERSION = 1  # bump when rendering changes, so stale folders are regenerated instead of reused
DEFAULT_CLASSES = ("leather", "grid", "transistor")
EXTENT_RANGE = (0.02, 0.12)  # defect size as a fraction of the image side
CONTRAST_RANGE = (0.15, 1.0)  # defect strength; low values are deliberately hard to see
CHANGE_THRESHOLD = 3  # a pixel counts as changed when a channel moves by more than this many uint8 levels
SIZE_RANGE = (32, 4096)
MARKER = ".moleflow_synth.json"
SUBDIRS = ("train", "test", "ground_truth")
SPLIT_TRAIN, SPLIT_TEST_GOOD, SPLIT_TEST_DEFECT = 0, 1, 2
MAX_DEFECT_ATTEMPTS = 8

DefectFn = Callable[[Any, np.random.Generator, float, float], np.ndarray]


@dataclass(frozen=True)
class ClassSpec:
    index: int  # fixed per class and part of every seed
    render: Callable[[np.random.Generator, int], Any]  # -> scene with an `.image` (H, W, 3) float in [0, 1]
    defects: Mapping[str, DefectFn]
    grayscale: bool = False  # stored as L-mode PNG (the renderer still returns 3 equal channels)
    #: the class's own defect size / strength ranges, used where the generation keeps the default ranges
    extent_range: tuple[float, float] | None = None
    contrast_range: tuple[float, float] | None = None


# MVTec AD's 15 classes in its alphabetical order: the 1x15 stream of the continual-AD literature.
MVTEC_CLASSES = MVTEC15
# Part of every image's seed, so fixed forever: the first three classes keep the index they were born with.
CLASS_INDEX = MappingProxyType({"leather": 0, "grid": 1, "transistor": 2, **{
    name: 3 + i for i, name in enumerate(n for n in MVTEC_CLASSES if n not in ("leather", "grid", "transistor"))},
    **{name: 100 + i for i, name in enumerate(LOOKALIKE)}})


def _spec(name: str, module: Any) -> tuple[str, ClassSpec]:
    """A class module exposes render_<name>(rng, size) -> scene, DEFECTS and optionally GRAYSCALE."""
    return name, ClassSpec(CLASS_INDEX[name], getattr(module, f"render_{name}"), MappingProxyType(module.DEFECTS),
                           grayscale=getattr(module, "GRAYSCALE", False))


CLASSES: Mapping[str, ClassSpec] = MappingProxyType(dict(sorted([
    _spec("leather", leather),
    _spec("grid", grid),
    _spec("transistor", transistor),
    _spec("bottle", bottle),
    _spec("cable", cable),
    _spec("hazelnut", hazelnut),
    _spec("carpet", carpet),
    _spec("tile", tile),
    _spec("wood", wood),
    _spec("capsule", capsule),
    _spec("pill", pill),
    _spec("metal_nut", metal_nut),
    _spec("screw", screw),
    _spec("toothbrush", toothbrush),
    _spec("zipper", zipper),
], key=lambda item: MVTEC_CLASSES.index(item[0]))))


def _lot_spec(name: str) -> tuple[str, ClassSpec]:
    base, gains = lookalike.LOTS[name]
    spec = CLASSES[base]
    return name, ClassSpec(CLASS_INDEX[name], lookalike.lot_renderer(spec.render, gains),
                           MappingProxyType({d: lookalike.lot_defect(fn, gains) for d, fn in spec.defects.items()}),
                           grayscale=spec.grayscale, extent_range=lookalike.EXTENT, contrast_range=lookalike.CONTRAST)


#: every class the generator writes: MVTec's 15 (CLASSES), then the look-alike lots of the routing stress stream
SPECS: Mapping[str, ClassSpec] = MappingProxyType({**CLASSES, **dict(_lot_spec(name) for name in LOOKALIKE)})
#: a --classes item that stands for a group of classes
NAMED_GROUPS = MappingProxyType({"all": MVTEC_CLASSES, "lookalike": LOOKALIKE})


@dataclass(frozen=True)
class DefectSample:
    normal: np.ndarray  # (H, W, 3) uint8: the same sample before the defect was applied
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool


def _rng(seed: int, class_name: str, split: int, defect_index: int, index: int) -> np.random.Generator:
    # Fixed-length key: SeedSequence pads entropy with zeros, so [a, b] and [a, b, 0] would collide.
    return np.random.default_rng(np.random.SeedSequence([seed, SPECS[class_name].index, split, defect_index, index]))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def render_good(class_name: str, size: int, seed: int, index: int, split: int = SPLIT_TRAIN) -> np.ndarray:
    """One defect-free sample as (size, size, 3) uint8; `split` is SPLIT_TRAIN or SPLIT_TEST_GOOD."""
    return _to_uint8(SPECS[class_name].render(_rng(seed, class_name, split, 0, index), size).image)


def changed_pixels(normal: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(H, W) bool: some channel moved by more than CHANGE_THRESHOLD uint8 levels."""
    return np.abs(image.astype(np.int16) - normal.astype(np.int16)).max(axis=-1) > CHANGE_THRESHOLD


def defect_mask(normal: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The changed pixels grown by one pixel (anti-aliased fringes), with pin-holes filled."""
    mask = ndimage.binary_dilation(changed_pixels(normal, image), structure=np.ones((3, 3), dtype=bool))
    holes, n_holes = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
    if n_holes:
        small = np.bincount(holes.ravel())[1:] <= max(4, (image.shape[0] // 64) ** 2)
        mask |= np.concatenate([[False], small])[holes]
    return mask


def render_defect(class_name: str, defect: str, size: int, seed: int, index: int,
                  extent_range: tuple[float, float] = EXTENT_RANGE,
                  contrast_range: tuple[float, float] = CONTRAST_RANGE) -> DefectSample:
    """One defective sample, the normal sample it was made from, and its mask (never empty)."""
    spec = SPECS[class_name]
    defect_index = list(spec.defects).index(defect)
    rng = _rng(seed, class_name, SPLIT_TEST_DEFECT, defect_index, index)
    scene = spec.render(rng, size)
    normal = _to_uint8(scene.image)
    min_changed = max(3, size * size // 8000)
    for attempt in range(MAX_DEFECT_ATTEMPTS):
        # The last attempt uses the strongest setting so a visible defect is guaranteed.
        last = attempt == MAX_DEFECT_ATTEMPTS - 1
        extent = extent_range[1] if last else float(rng.uniform(*extent_range))
        contrast = contrast_range[1] if last else float(rng.uniform(*contrast_range))
        image = _to_uint8(spec.defects[defect](scene, rng, extent, contrast))
        if changed_pixels(normal, image).sum() >= min_changed:
            return DefectSample(normal, image, defect_mask(normal, image))
    raise RuntimeError(f"{class_name}/{defect} produced no visible change for seed {seed}, index {index}")


def split_evenly(total: int, names: Sequence[str]) -> dict[str, int]:
    """Divide `total` among `names`, the first ones taking the remainder; names with zero are dropped."""
    base, extra = divmod(total, len(names))
    counts = {name: base + (i < extra) for i, name in enumerate(names)}
    return {name: n for name, n in counts.items() if n > 0}


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (high and value > high):
        bound = f"between {low} and {high}" if high else f">= {low}"
        raise MoleflowError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise MoleflowError(f"{name} must be two numbers LOW HIGH, got {value!r}") from None
    if not low <= lo <= hi <= high:
        raise MoleflowError(f"{name} must satisfy {low} <= LOW <= HIGH <= {high}, got {lo} {hi}")
    return lo, hi


def _check_classes(classes: Sequence[str] | str) -> list[str]:
    names = classes.split(",") if isinstance(classes, str) else list(classes)
    names = [str(name).strip() for name in names if str(name).strip()]
    # "all": MVTec's 15 in its alphabetical order; "lookalike": the lots (a group may sit beside classes)
    names = list(dict.fromkeys(n for name in names for n in NAMED_GROUPS.get(name, (name,))))
    if not names:
        raise MoleflowError(f"no synthetic class given; choose from: {', '.join(SPECS)}")
    unknown = [name for name in names if name not in SPECS]
    if unknown:
        raise MoleflowError(f"unknown synthetic class {unknown[0]!r}; known classes: {', '.join(SPECS)} "
                            f"(groups: {', '.join(NAMED_GROUPS)})")
    return names


def _file_name(index: int, count: int) -> str:
    return f"{index:0{max(3, len(str(count - 1)))}d}.png"


def _class_plan(counts: dict) -> list[tuple[str, str, int, str]]:
    """(kind, defect, index, relative path) of every image of one class; kind is train / good / defect."""
    plan = [("train", "good", i, f"train/good/{_file_name(i, counts['train'])}") for i in range(counts["train"])]
    plan += [("good", "good", i, f"test/good/{_file_name(i, counts['test_good'])}") for i in range(counts["test_good"])]
    for defect, n in counts["defects"].items():
        plan += [("defect", defect, i, f"test/{defect}/{_file_name(i, n)}") for i in range(n)]
    return plan


def _mask_path(relative: str) -> str:
    _, defect, name = relative.split("/")
    return f"ground_truth/{defect}/{name[:-4]}_mask.png"


def _is_current(class_dir: Path, record: dict, plan: list) -> bool:
    """Whether class_dir already holds exactly this generation (same marker, every file present)."""
    try:
        if json.loads((class_dir / MARKER).read_text()) != record:
            return False
    except (OSError, ValueError):
        return False
    paths = [rel for _, _, _, rel in plan] + [_mask_path(rel) for kind, _, _, rel in plan if kind == "defect"]
    return all((class_dir / rel).is_file() for rel in paths)


def _check_class_dir(class_dir: Path) -> None:
    """Refuse a file, or a non-empty folder this generator did not write (nothing is deleted)."""
    if not class_dir.exists():
        return
    if not class_dir.is_dir():
        raise MoleflowError(f"{class_dir} is a file; pass an --out folder without it or remove it")
    if not (class_dir / MARKER).is_file() and any(class_dir.iterdir()):
        raise MoleflowError(
            f"{class_dir} exists and was not written by `moleflow synth`; pass an empty or new output folder"
        )


def _clear_class_dir(class_dir: Path) -> None:
    """Remove a previous generation (after _check_class_dir)."""
    _check_class_dir(class_dir)
    if (class_dir / MARKER).is_file():
        for sub in SUBDIRS:
            shutil.rmtree(class_dir / sub, ignore_errors=True)
        (class_dir / MARKER).unlink()


def _write_marker(class_dir: Path, record: dict) -> None:
    class_dir.mkdir(parents=True, exist_ok=True)
    (class_dir / MARKER).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def _save_png(array: np.ndarray, path: Path) -> None:
    """(H, W, 3) uint8 -> RGB PNG, (H, W) -> L PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # No pnginfo and fixed compression: PIL then writes no timestamp, so bytes depend only on pixels.
    # Level 1: 2-4x faster than the default for ~10% larger files on these noisy textures.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _stored(class_name: str, image: np.ndarray) -> np.ndarray:
    # Grayscale classes are stored single-channel, as real MVTec stores grid, screw and zipper.
    return image[..., 0] if SPECS[class_name].grayscale else image


def _write_class(class_dir: Path, name: str, plan: list, size: int, seed: int, bar: tqdm | None,
                 ranges: tuple[tuple[float, float], tuple[float, float]]) -> None:
    spec = SPECS[name]
    if ranges == (EXTENT_RANGE, CONTRAST_RANGE):  # a class with its own ranges keeps them unless others are asked
        ranges = (spec.extent_range or EXTENT_RANGE, spec.contrast_range or CONTRAST_RANGE)
    for kind, defect, index, relative in plan:
        if kind == "defect":
            sample = render_defect(name, defect, size, seed, index, *ranges)
            _save_png(_stored(name, sample.image), class_dir / relative)
            _save_png(sample.mask.astype(np.uint8) * 255, class_dir / _mask_path(relative))
        else:
            split = SPLIT_TRAIN if kind == "train" else SPLIT_TEST_GOOD
            _save_png(_stored(name, render_good(name, size, seed, index, split)), class_dir / relative)
        if bar is not None:
            bar.update(1)


def generate_benchmark(
    out: str | Path,
    classes: Sequence[str] = DEFAULT_CLASSES,
    size: int = 256,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect: int = 30,
    seed: int = 0,
    progress: bool = True,
    extent_range: Sequence[float] = EXTENT_RANGE,
    contrast_range: Sequence[float] = CONTRAST_RANGE,
    workers: int | None = None,
) -> dict:
    """Write the benchmark under `out` and return {class: {"train": n, "test_good": n, "defects": {name: n}}}.

    `extent_range` (defect size as a fraction of the image side) and `contrast_range` (defect strength,
    0..1) set the difficulty; each defect draws uniformly from them. The defaults span obvious to subtle.

    A class folder already holding the same generation is kept as is; one from a different generation is
    replaced; a non-empty folder this generator did not write is an error (nothing is deleted).
    Classes are written by `workers` processes (default: one per CPU core, at most one per class).
    """
    names = _check_classes(classes)
    size = _check_int("size", size, *SIZE_RANGE)
    n_train = _check_int("n_train", n_train, 1)
    n_test_good = _check_int("n_test_good", n_test_good, 1)
    n_test_defect = _check_int("n_test_defect", n_test_defect, 1)
    seed = _check_int("seed", seed, 0)
    ranges = (_check_range("extent_range", extent_range, 0.005, 0.5), _check_range("contrast_range", contrast_range, 0.01, 1.0))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MoleflowError(f"--out {out} is a file; pass a folder path")

    summary = {
        name: {"train": n_train, "test_good": n_test_good,
               "defects": split_evenly(n_test_defect, list(SPECS[name].defects))}
        for name in names
    }
    plans = {name: _class_plan(summary[name]) for name in names}
    records = {}
    for name in names:
        records[name] = {"generator": GENERATOR_VERSION, "class": name, "size": size, "seed": seed,
                         "counts": summary[name], "complete": True}
        if ranges != (EXTENT_RANGE, CONTRAST_RANGE):  # default generations keep their original marker
            records[name]["ranges"] = [list(r) for r in ranges]
        if name in lookalike.LOTS:  # a lot's definition is part of what was generated
            base, gains = lookalike.LOTS[name]
            records[name]["lot"] = {"base": base, "gains": list(gains), "extent": list(lookalike.EXTENT),
                                    "contrast": list(lookalike.CONTRAST)}
    todo = [name for name in names if not _is_current(out / name, records[name], plans[name])]
    for name in todo:  # refuse a foreign folder before anything is written or deleted
        _check_class_dir(out / name)
    workers = min(len(todo), _check_int("workers", workers, 1) if workers is not None else os.cpu_count() or 1)
    with tqdm(total=sum(len(plan) for plan in plans.values()), desc="synth", unit="img", disable=not progress) as bar:
        bar.update(sum(len(plans[name]) for name in names if name not in todo))
        if workers <= 1:
            for name in todo:
                bar.set_description(f"synth {name}")
                _generate_class(out / name, name, plans[name], records[name], size, seed, ranges, bar)
        else:
            # one class per process: every image has its own seed, so the bytes do not depend on the split;
            # spawn, not fork: the parent may hold torch's thread pools
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                jobs = {pool.submit(_generate_class, out / name, name, plans[name], records[name], size, seed,
                                    ranges): name for name in todo}
                for job in as_completed(jobs):
                    job.result()  # a worker's MoleflowError is raised here, as in-process
                    bar.set_description(f"synth {jobs[job]}")
                    bar.update(len(plans[jobs[job]]))
    return summary


def _generate_class(class_dir: Path, name: str, plan: list, record: dict, size: int, seed: int,
                    ranges: tuple[tuple[float, float], tuple[float, float]], bar: tqdm | None = None) -> None:
    try:
        _clear_class_dir(class_dir)
        # Marker first (claims the folder, so an interrupted run is cleaned up next time), then
        # rewritten with complete=True once every file is there.
        _write_marker(class_dir, {**record, "complete": False})
        _write_class(class_dir, name, plan, size, seed, bar, ranges)
        _write_marker(class_dir, record)
    except OSError as error:
        raise MoleflowError(
            f"cannot write the synthetic benchmark to {class_dir}: {error}; choose a writable --out folder"
        ) from error
