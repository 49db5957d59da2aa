"""Helpers for plugin test suites (the plugins under plugins/ use them; so can yours).

`model_opt_error` checks the contract that a model's `validate_config` runs before any image is read:
it trains on a data path that does not exist, so an option error (not a data error) proves the order.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path


def model_opt_error(model: str, option: str, tmp_path: Path) -> str:
    """The one-line error of `moleflow train --model MODEL --model_opt OPTION` on missing data; asserts
    exit code 2, that the error is not about the data, and that no run folder was created."""
    from moleflow.cli import main

    missing, runs = Path(tmp_path) / "no-data", Path(tmp_path) / "runs"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--data_path", str(missing), "--runs_dir", str(runs), "--model", model,
                     "--no_pretrained", "--quiet", "--model_opt", option])
    text = err.getvalue().strip()
    assert code == 2, f"expected exit code 2 for --model_opt {option}, got {code}: {text}"
    assert str(missing.name) not in text, f"the data was read before --model_opt was checked: {text}"
    assert not runs.exists(), "a run folder was created for a bad option"
    return text
