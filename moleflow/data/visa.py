"""VisA, through the split file it ships with: `<root>/split_csv/1cls.csv`.

Columns object,split,label,image,mask; label is "normal" or "anomaly"; image and mask paths are
relative to root (the mask cell is empty for normal images). The file's own train/test split is used,
so split_percent and seed are accepted for a uniform signature and ignored; val = []. Classes are the
distinct `object` values. Every row of the requested class is checked: its files must exist inside root.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from moleflow.data.samples import (NORMAL_DEFECT_TYPE, Sample, check_split, path_inside, require_class,
                                   require_root, sorted_samples)
from moleflow.errors import MoleflowError

SPLIT_FILE = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}


def _cell(row: dict[str, str | None], key: str) -> str:
    return (row.get(key) or "").strip()  # short rows give None for the missing cells


def _read_rows(root: Path) -> list[tuple[int, dict[str, str | None]]]:
    """(line number, row) pairs, so errors can point at the line to fix."""
    path = root / SPLIT_FILE
    if not path.is_file():
        raise MoleflowError(f"VisA split file {path} not found; --data_path must be the VisA root holding {SPLIT_FILE}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MoleflowError(f"{path} lacks column(s) {', '.join(missing)}; expected header {','.join(COLUMNS)}")
        return [(reader.line_num, row) for row in reader]


def visa_classes(root: str | Path) -> list[str]:
    path = Path(root) / SPLIT_FILE
    if not path.is_file():
        return []
    return sorted({_cell(row, "object") for _, row in _read_rows(Path(root))})


def _sample(root: Path, row: dict[str, str | None], where: str) -> Sample:
    label_text = _cell(row, "label").lower()
    if label_text not in LABELS:
        raise MoleflowError(f"{where}: label '{_cell(row, 'label')}' is neither 'normal' nor 'anomaly'; fix the row")
    label = LABELS[label_text]
    image = path_inside(root, root, _cell(row, "image"), where)
    if label == 0:
        return Sample(image, 0, None, NORMAL_DEFECT_TYPE, _cell(row, "object"))
    if not _cell(row, "mask"):
        raise MoleflowError(f"{where}: anomalous image {image} has no mask; fill in the mask column")
    mask = path_inside(root, root, _cell(row, "mask"), where)
    return Sample(image, 1, mask, "anomaly", _cell(row, "object"))


def list_visa(root: str | Path, class_name: str, split: str, *,
              split_percent: Sequence[int] = (70, 15, 15), seed: int = 0) -> list[Sample]:
    """Samples of one VisA object and split, as the official split file assigns them."""
    check_split(split)
    root = require_root(root, "visa")
    rows = _read_rows(root)
    require_class(class_name, sorted({_cell(r, "object") for _, r in rows}), root / SPLIT_FILE, "visa")
    samples = [
        _sample(root, row, f"{root / SPLIT_FILE} line {line}")
        for line, row in rows
        if _cell(row, "object") == class_name and _cell(row, "split").lower() == split
    ]
    return sorted_samples(samples)


list_visa.classes = visa_classes  # type: ignore[attr-defined]
