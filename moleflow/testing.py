"""Helpers for test suites, moleflow's own and plugins' (the plugins under plugins/ use them; so can yours).

`tiny_benchmark` writes a small embedded benchmark with visible defects, `train_config` resolves a
`moleflow train` command line exactly as the CLI does, and `model_opt_error` checks the contract that a model's
options are checked before any image is read:
it trains on a data path that does not exist, so an option error (not a data error) proves the order.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moleflow.config import Config

#: defects a random-init backbone at 64 px can still carry: large and high-contrast
VISIBLE_DEFECTS = {"extent_range": (0.1, 0.2), "contrast_range": (0.7, 1.0)}


def tiny_benchmark(out: Path, **overrides: Any) -> Path:
    """The embedded benchmark at 64 px, 8 train / 4 good / 6 defective test images per class, visible
    defects, seed 0 (any of these can be overridden); returns `out`."""
    from moleflow.synth.benchmark import generate_benchmark

    settings = {"size": 64, "n_train": 8, "n_test_good": 4, "n_test_defect": 6, "seed": 0, "progress": False,
                **VISIBLE_DEFECTS, **overrides}
    generate_benchmark(out, **settings)
    return out


def train_config(*argv: str) -> "Config":
    """What `moleflow train ARGV` would run with (the real parser, the selected model's options included)."""
    from moleflow.train_args import parse_train_args, train_config as resolve, train_parser

    return resolve(parse_train_args(train_parser(list(argv)), list(argv)))


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
