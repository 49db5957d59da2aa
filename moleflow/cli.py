"""`moleflow` command line: train, eval, predict, compare, report, synth, plugins, versions, sweep.

Every user-facing failure is a MoleflowError, printed as one `error: ...` line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from moleflow.errors import MoleflowError

EPILOG = "Run `moleflow <command> --help` for the flags of a command. Docs: README.md, UPDATE_NOTES.md."


def _progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_train(args: argparse.Namespace) -> int:
    from moleflow.continual.trainer import run_training
    from moleflow.compare import compare_runs
    from moleflow.train_args import explicit_settings, train_config

    explicit = explicit_settings(args)
    if args.resume:
        given = sorted(explicit)
        if given:
            raise MoleflowError(f"--resume takes every setting from the run folder; drop: "
                                f"{' '.join('--' + k for k in given)}")
        from moleflow.config import read_run_config
        from moleflow.run_folder import RunFolder

        cfg = read_run_config(RunFolder.open(args.resume))
    else:
        cfg = train_config(args)
    run = run_training(cfg, progress=not args.quiet, resume=args.resume)
    print(compare_runs([run.path]))
    if (run.path / "report" / "index.html").is_file() and cfg.eval.report:
        print(f"report: {run.path / 'report' / 'index.html'}")
    print(f"tensorboard --logdir {run.path.parent.parent}")
    print(f"run: {run.path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from moleflow.inference import evaluate_run
    from moleflow.compare import compare_runs

    run = evaluate_run(args.run, progress=not args.quiet)
    print(compare_runs([run.path]))
    print(f"run: {run.path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from moleflow.inference import predict_images
    from moleflow.report.html import decision_of

    for row in predict_images(args.run, args.images, args.out, progress=not args.quiet):
        in_range = (f"\ttask_range={row['task_range_distance']:.4g}/{row['task_range_threshold']:.4g}"
                    if "task_range_distance" in row else "")
        print(f"{row['filename']}\ttask={row['routed_task']} ({row['routed_class']})\t"
              f"distance={row['router_distance']:.4g}{in_range}\tscore={row['score']:.4f}\t{decision_of(row)}\t"
              f"heatmap={row['heatmap']}")
    print(f"predictions: {args.out}/predictions.jsonl")
    print(f"tiles: {args.out}/predictions.html")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from moleflow.compare import compare_runs

    text = compare_runs(args.runs, markdown=args.markdown, first_vs_last=args.first_vs_last)
    if args.out:
        from moleflow.run_folder import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    if args.report:
        from moleflow.report.compare_page import write_compare_report

        print(f"report: {write_compare_report(args.runs, args.report)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from moleflow.inference import rescored_maps
    from moleflow.report.writer import report_size, write_report

    index = write_report(args.run_dir, args.out, max_per_class=args.max_per_class, progress=not args.quiet,
                         rescore=rescored_maps)
    files, size = report_size(index.parent)
    print(f"report: {index} ({files} files, {size / 1e6:.1f} MB)")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from moleflow.synth.benchmark import generate_benchmark

    summary = generate_benchmark(args.out, classes=args.classes, size=args.size, n_train=args.n_train,
                                 n_test_good=args.n_test_good, n_test_defect=args.n_test_defect, seed=args.seed,
                                 progress=not args.quiet, extent_range=args.defect_extent,
                                 contrast_range=args.defect_contrast, workers=args.workers)
    for cls, info in summary.items():
        defects = ", ".join(f"{d}={n}" for d, n in info["defects"].items())
        print(f"{cls}: train={info['train']} test_good={info['test_good']} {defects}")
    print(f"benchmark: {args.out}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from moleflow.registry import format_listing, listing

    print(format_listing(listing()))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from moleflow.versions import describe_versions

    for preset in describe_versions():
        default = ", default" if preset.default else ""
        print(f"{preset.name:6} parent={preset.parent or '-':5} model={preset.model}{default}  {preset.description}")
        if args.verbose:
            print(f"       overrides: {preset.overrides}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from moleflow.sweep import run_sweep

    return run_sweep(args)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole CLI. `train` gets the options of the model its arguments in `argv` select (train_args.py;
    that imports the model's code, torch included, so it is built only when the command is train)."""
    from moleflow import __version__
    from moleflow.config import FIELD_SPECS, DataConfig
    from moleflow.synth.benchmark import CONTRAST_RANGE, EXTENT_RANGE

    parser = argparse.ArgumentParser(
        prog="moleflow",
        description="Continual anomaly detection: a frozen timm backbone, one shared normalizing flow, "
                    "a LoRA expert + input adapter + router prototype per task.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"moleflow {__version__}",
                        help="print the moleflow package's version and exit (the method's version preset is "
                             "`moleflow train --version vN`)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        # no abbreviations: `--rot 7` must not silently mean a model's --rotate, nor --score --score_aggregation
        p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           allow_abbrev=False)
        p.set_defaults(func=func)
        return p

    p = add("train", cmd_train, "train a task stream and write a run folder (last line: `run: <folder>`); "
                                "`moleflow train --model NAME --help` lists that model's options")
    if argv is not None and argv[:1] == ["train"]:
        from moleflow.train_args import add_train_arguments

        add_train_arguments(p, argv[1:])

    p = add("eval", cmd_eval, "re-evaluate a finished run from its checkpoints (rewrites its reports)")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    _progress_flag(p)

    p = add("predict", cmd_predict, "route and score new images with a trained run; write heatmaps")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder for predictions.jsonl and heatmaps")
    _progress_flag(p)

    p = add("compare", cmd_compare, "per-class tables of runs and the change between consecutive runs")
    p.add_argument("runs", nargs="+", help="run folders, or folders containing run folders")
    p.add_argument("--markdown", action="store_true", help="GitHub markdown tables")
    p.add_argument("--first_vs_last", action="store_true", help="also compare the first run with the last")
    p.add_argument("--out", help="also write the tables to this file")
    p.add_argument("--report", metavar="DIR", help="also write DIR/index.html: every run's plots side by side")

    p = add("report", cmd_report, "write the HTML report of a finished run: index, and per class a dataset page "
                                  "and an evaluation page (see README, Report)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="where to write it (default: RUN_DIR/report)")
    p.add_argument("--max_per_class", "--max-per-class", type=int, default=None, metavar="N",
                   help=FIELD_SPECS["report_max_per_class"][1].metadata["help"] + " (default: the run's "
                        "--report_max_per_class)")
    _progress_flag(p)

    p = add("synth", cmd_synth, "generate the embedded MVTec-layout benchmark (real PNGs, deterministic)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", nargs="+", default=DataConfig().task_classes,
                   help="classes to write, `all` for the 15 MVTec-named classes, `lookalike` for the routing stress "
                        "stream (two lots each of pill and leather that differ by a slight colour cast)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--n_train", type=int, default=60)
    p.add_argument("--n_test_good", type=int, default=20)
    p.add_argument("--n_test_defect", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None,
                   help="processes writing classes in parallel (default: one per CPU core, at most one per class)")
    p.add_argument("--defect_extent", type=float, nargs=2, default=list(EXTENT_RANGE), metavar=("LOW", "HIGH"),
                   help="defect size range as a fraction of the image side")
    p.add_argument("--defect_contrast", type=float, nargs=2, default=list(CONTRAST_RANGE), metavar=("LOW", "HIGH"),
                   help="defect strength range (0..1); raise LOW for an easier benchmark")
    _progress_flag(p)

    add("plugins", cmd_plugins, "list every registered component (group, name, distribution, version, status)")
    p = add("versions", cmd_versions, "list the version presets")
    p.add_argument("--verbose", action="store_true", help="show each version's overrides")

    from moleflow.sweep import add_arguments as add_sweep_arguments

    add_sweep_arguments(add("sweep", cmd_sweep, "versions x seeds x task orders: one `moleflow train` subprocess "
                                                "per trial, locally or on Ray; summary + COMPARE.md"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(argv)
        if argv[:1] == ["train"]:
            from moleflow.train_args import parse_train_args

            args = parse_train_args(parser, argv)
        else:
            args = parser.parse_args(argv)
        return args.func(args)
    except MoleflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("error: interrupted; a training run can be continued with `moleflow train --resume RUN_DIR`",
              file=sys.stderr)
        return 130
