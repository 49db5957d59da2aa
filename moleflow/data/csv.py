"""CSV format: one label file per class, split by the anomaly-aware rule.

    <root>/<class>/labels.csv     header: filename,is_anomalous[,mask_path]

(The file lives inside the class folder, not as <root>/<class>.csv, so a class is one self-contained
folder that can be copied or symlinked on its own.) filename and mask_path are relative to the class
folder; a path may use `..` or be absolute as long as it stays inside the data root. is_anomalous is
one of 0/1, true/false, yes/no (case-insensitive). Masks are all-or-none per class: if any anomalous row
names a mask, every anomalous row must; with none, anomalous images get an all-zero mask and only
image-level metrics are meaningful. A mask named on a normal row is ignored (normal means all-zero).
Anomalous images get defect type "defect". Classes are the subfolders of root holding labels.csv.
"""

from __future__ import annotations

import csv
from pathlib import Path

from moleflow.data.samples import (NORMAL_DEFECT_TYPE, Sample, path_inside, require_class,
                                   require_root, subfolder_classes)
from moleflow.data.splits import splitting_lister
from moleflow.errors import MoleflowError

LABEL_FILE = "labels.csv"
FLAGS = {"0": 0, "false": 0, "no": 0, "1": 1, "true": 1, "yes": 1}


def csv_classes(root: str | Path) -> list[str]:
    return subfolder_classes(Path(root), lambda p: (p / LABEL_FILE).is_file())


def _read(path: Path) -> list[tuple[int, dict[str, str | None]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("filename", "is_anomalous") if c not in (reader.fieldnames or [])]
        if missing:
            raise MoleflowError(f"{path} lacks column(s) {', '.join(missing)}; "
                                "expected header filename,is_anomalous[,mask_path]")
        return [(reader.line_num, row) for row in reader]


def _cell(row: dict[str, str | None], key: str) -> str:
    return (row.get(key) or "").strip()


def list_all_csv(root: str | Path, class_name: str) -> list[Sample]:
    """Every row of one class's labels.csv as a Sample, before splitting."""
    root = require_root(root, "csv")
    require_class(class_name, csv_classes(root), root, "csv")
    class_dir = root / class_name
    label_file = class_dir / LABEL_FILE
    samples: list[Sample] = []
    unmasked: list[str] = []  # where an anomalous row has no mask, for the all-or-none rule
    for line, row in _read(label_file):
        where = f"{label_file} line {line}"
        flag = _cell(row, "is_anomalous").lower()
        if flag not in FLAGS:
            raise MoleflowError(f"{where}: is_anomalous '{_cell(row, 'is_anomalous')}' is not 0/1/true/false/yes/no; "
                                "fix the row")
        image = path_inside(root, class_dir, _cell(row, "filename"), where)
        if FLAGS[flag] == 0:
            samples.append(Sample(image, 0, None, NORMAL_DEFECT_TYPE, class_name))
            continue
        mask = path_inside(root, class_dir, _cell(row, "mask_path"), where) if _cell(row, "mask_path") else None
        if mask is None:
            unmasked.append(f"{where} ({image})")
        samples.append(Sample(image, 1, mask, "defect", class_name))
    if not any(s.label == 0 for s in samples):
        raise MoleflowError(f"{label_file} lists no normal image (is_anomalous=0); training needs some")
    if unmasked and any(s.mask_path is not None for s in samples):
        raise MoleflowError(f"{unmasked[0]}: anomalous image without mask_path while other rows have one; "
                            "give every anomalous row a mask or none")
    return samples


list_csv = splitting_lister(list_all_csv, csv_classes, "csv")
