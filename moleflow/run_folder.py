"""Run folders: atomic writers and readers for everything a run leaves behind.

Layout: `<runs_dir>/<experiment>/<version>/<YYYYmmdd-HHMMSS>-<shortid6>/` holding config.json, env.json,
metrics.json, results.csv, per_image.jsonl, heatmaps/<class>/, checkpoints/<name>.safetensors and the
TensorBoard event files. Every file is written to a hidden temp file in the same directory and then
renamed over the target, so a run killed at any moment leaves either the old file or the new one.
The environment record and the TensorBoard logger are `moleflow.run_log`; the comparison tables built from
these folders live in `moleflow.compare`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import secrets
import sys
import time
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from moleflow.errors import MoleflowError

if TYPE_CHECKING:
    import torch


CONFIG_FILE = "config.json"
#: checkpoint metadata key of the SHA-256 of its tensors (names, dtypes, shapes and bytes)
CHECKSUM_KEY = "moleflow.sha256"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]+")


# ----------------------------------------------------------------------------------------- atomic writes

def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> None:
    """Write `data` to `path` via a temp file in the same directory and os.replace.

    fsync=False skips flushing to disk: still atomic against a killed process (the rename happens after
    the write completes), only not against power loss; worth it for hundreds of heatmap PNGs.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
            try:
                # os.open with 0o666 honours the umask, unlike mkstemp's 0o600.
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
                break
            except FileExistsError:
                continue
    except OSError as exc:
        raise _write_error(target, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:  # a full disk, a quota, a vanished mount: one line, the old file intact
        tmp.unlink(missing_ok=True)
        raise _write_error(target, exc) from None
    except BaseException:  # includes KeyboardInterrupt: never leave the temp file behind
        tmp.unlink(missing_ok=True)
        raise


def _write_error(target: Path, exc: OSError) -> MoleflowError:
    return MoleflowError(f"cannot write {target} ({exc.strerror or exc}); the previous version of that file, if "
                         "any, is unchanged: free disk space or fix permissions, then run again "
                         "(`moleflow train --resume RUN_DIR` continues a stopped training run)")


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy/torch scalars and arrays unwrapped, paths as strings, NaN/inf as None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    torch = sys.modules.get("torch")  # no tensor can exist unless torch is loaded; keeps `compare` light
    if torch is not None and isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None  # JSON has no NaN/Infinity
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON (allow_nan=False after NaN -> null) with sorted keys."""
    return json.dumps(to_jsonable(obj), sort_keys=True, indent=indent, allow_nan=False)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj) + "\n")


def _safe_component(value: str, what: str) -> str:
    """A name usable as one path component: no separators, not hidden, not '.' or '..'.

    With `what` set, an unusable name is a user error naming it; without, it is cleaned up instead.
    """
    cleaned = _SAFE_NAME.sub("_", str(value)).lstrip(".") or "_"
    if what and cleaned != str(value):
        raise MoleflowError(f"{what} '{value}' is not a valid folder name; use letters, digits, '.', '_', '-' or '+'")
    return cleaned


# ----------------------------------------------------------------------------------------- run folder

class RunFolder:
    """One run's folder. `create` for a new run, `open` for an existing one (resume, eval, compare)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._heatmap_names: dict[tuple[str, str], str] = {}  # (class, file name) -> image path it belongs to

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def create(cls, runs_dir: str | Path, experiment: str, version: str) -> "RunFolder":
        parent = Path(runs_dir) / _safe_component(experiment, "experiment name") / _safe_component(version, "version")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MoleflowError(f"cannot create run folder under {parent}: {exc.strerror}; check --runs_dir") from None
        while True:
            # mkdir without exist_ok is the atomic claim: two runs in the same second get different ids.
            path = parent / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        (path / "heatmaps").mkdir()
        (path / "checkpoints").mkdir()
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        p = Path(path)
        if not p.is_dir():
            raise MoleflowError(f"run folder not found: {p}")
        if not (p / CONFIG_FILE).is_file():
            raise MoleflowError(f"{p} is not a run folder (no {CONFIG_FILE}); pass a folder made by `moleflow train`")
        return cls(p)

    def remove_temp_files(self) -> list[Path]:
        """Delete the hidden temp files a killed write leaves (`.<name>.<hex>.tmp`; never read as results)."""
        stale = [p for p in self.path.rglob(".*.tmp") if p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    @staticmethod
    def is_run_folder(path: str | Path) -> bool:
        return (Path(path) / CONFIG_FILE).is_file()

    @property
    def name(self) -> str:
        return self.path.name

    # -- json / csv / jsonl / other files
    def write_bytes(self, relative: str | Path, data: bytes) -> Path:
        """Write any file inside the run folder atomically (e.g. maps/<class>.npz)."""
        path = self.path / relative
        if self.path.resolve() not in path.resolve().parents:
            raise MoleflowError(f"refusing to write {relative} outside the run folder {self.path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        return path

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def read_json(self, name: str) -> dict:
        p = self.path / name
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MoleflowError(f"{self.path}: {name} is missing (run unfinished or not a moleflow run?)") from None
        except (OSError, ValueError) as exc:
            raise MoleflowError(f"{self.path}: cannot read {name} ({exc}); the file is damaged") from None

    def write_results_csv(self, rows: list[dict]) -> None:
        """Columns are the union of the rows' keys in order of first appearance; None -> empty cell."""
        columns: dict[str, None] = {}
        for row in rows:
            columns.update(dict.fromkeys(row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), restval="", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})
        atomic_write_text(self.path / "results.csv", buf.getvalue())

    def read_results_csv(self) -> list[dict[str, str]]:
        p = self.path / "results.csv"
        if not p.is_file():
            raise MoleflowError(f"{self.path}: results.csv is missing")
        with p.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    def write_per_image(self, rows: list[dict]) -> None:
        text = "".join(json_text(row, indent=None) + "\n" for row in rows)
        atomic_write_text(self.path / "per_image.jsonl", text)

    def read_per_image(self) -> list[dict]:
        p = self.path / "per_image.jsonl"
        if not p.is_file():
            raise MoleflowError(f"{self.path}: per_image.jsonl is missing")
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]

    # -- checkpoints
    def checkpoint_path(self, name: str) -> Path:
        return self.path / "checkpoints" / f"{_safe_component(name, 'checkpoint name')}.safetensors"

    def save_checkpoint(self, name: str, tensors: dict[str, torch.Tensor],
                        metadata: dict[str, str] | None = None) -> Path:
        from safetensors.torch import save

        # Cloning breaks shared storage (safetensors refuses aliased tensors) and detaches from live params.
        plain = {k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()}
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta[CHECKSUM_KEY] = tensor_digest(plain)  # load_checkpoint refuses a file whose tensors changed since
        path = self.checkpoint_path(name)
        atomic_write_bytes(path, save(plain, metadata=meta))
        return path

    def load_checkpoint(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        from safetensors import safe_open

        path = self.checkpoint_path(name)
        if not path.is_file():
            known = ", ".join(self.checkpoint_names()) or "none"
            raise MoleflowError(f"checkpoint '{name}' not found in {path.parent} (available: {known})")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = dict(fh.metadata() or {})
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # noqa: BLE001 - safetensors raises several error types for damaged files
            raise MoleflowError(f"cannot read checkpoint {path} ({exc}); delete it or re-run training") from None
        if CHECKSUM_KEY in meta and tensor_digest(tensors) != meta[CHECKSUM_KEY]:
            raise MoleflowError(f"checkpoint {path} does not match the checksum written with it (its tensors were "
                                "changed afterwards); restore the file from a copy or re-run training")
        return tensors, meta

    def checkpoint_names(self) -> list[str]:
        folder = self.path / "checkpoints"
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.safetensors") if not p.name.startswith("."))

    # -- heatmaps
    def heatmap_path(self, class_name: str, image_path: str) -> Path:
        """heatmaps/<class>/<defect>_<stem>.png with <defect> the image's parent folder name.

        Deterministic for a given image; if two different images would share a name (possible outside
        the MVTec layout) the later one gets a short hash of its full path appended.
        """
        src = PurePath(str(image_path))
        cls_dir = _safe_component(class_name, "")
        stem = _safe_component(f"{src.parent.name}_{src.stem}" if src.parent.name else src.stem, "")
        file_name = f"{stem}.png"
        owner = self._heatmap_names.setdefault((cls_dir, file_name), str(image_path))
        if owner != str(image_path):
            file_name = f"{stem}-{_short_hash(str(image_path))}.png"
            self._heatmap_names.setdefault((cls_dir, file_name), str(image_path))
        folder = self.path / "heatmaps" / cls_dir
        folder.mkdir(parents=True, exist_ok=True)
        return folder / file_name

    def save_heatmap(self, class_name: str, image_path: str, png: bytes, kind: str = "") -> str:
        """Write an overlay PNG; returns its path relative to the run folder (for per_image.jsonl).
        A `kind` (an extra map's name) goes to heatmaps/<class>/<kind>/ under the same file name."""
        path = self.heatmap_path(class_name, image_path)
        if kind:
            path = path.parent / _safe_component(kind, "") / path.name
        atomic_write_bytes(path, png, fsync=False)
        return path.relative_to(self.path).as_posix()


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def _csv_cell(value: Any) -> Any:
    value = to_jsonable(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return value
