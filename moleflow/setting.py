"""`setting(default, help, **extra)`: one dataclass field of a setting, with its help and argparse extras.

The settings tree (config.py) and a model's own options dataclass (e.g. flow/options.py) declare their
fields with it; config.py turns every field into one `moleflow train` flag.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


def setting(default: Any, help: str, **extra: Any) -> Any:
    meta = {"help": help, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)
