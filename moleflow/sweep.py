"""`moleflow sweep`: versions x seeds x task orders, one `moleflow train` subprocess per trial, locally or on Ray.

A trial is `python -m moleflow train --version V --seed S [--task_classes C...] TRAIN_FLAGS` in its own process,
so one trial's crash cannot take the others down. Every trial's settings are resolved in-process (the real
`moleflow train` parser and `train_config`) before the first one starts: a bad flag is one error line, no trial.
Backends: `local` (one at a time, or --max_parallel) and `ray` (each trial a Ray task on whatever node has the
--cpus_per_trial / --gpus_per_trial it asks for; Ray is imported on that path only). At the end: a summary
table, `COMPARE.md` in each experiment folder touched (unless --no_compare), exit 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from moleflow.compare import compare_runs
from moleflow.errors import MoleflowError
from moleflow.run_folder import atomic_write_text
from moleflow.train_args import explicit_settings, parse_train_args, train_config, train_parser

LOG_DIR = "sweep-logs"  # inside the experiment folder: runs/<experiment>/sweep-logs/<trial>.log
TAIL_LINES = 15  # lines of a failed trial's log shown in the report


@dataclass
class Trial:
    name: str
    argv: list[str]  # `moleflow` arguments: ["train", "--version", V, "--seed", S, ...]
    experiment_dir: Path = Path()
    log: Path = Path()


@dataclass
class Result:
    name: str
    returncode: int
    wall_s: float
    run_folder: str = ""
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


OPTIONAL = ("versions", "task_orders", "ray_address", "gpus_per_trial", "cpus_per_trial", "max_parallel")  # None: not given


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `moleflow sweep` flags (cli.py registers the command); train flags come after `--`."""
    unset = argparse.SUPPRESS  # so that the help shows no "(default: None)"
    p.add_argument("--versions", nargs="+", metavar="V", default=unset,
                   help="version presets, one trial each (default: the model's default version, or none for a model "
                        "without presets, e.g. --model knn: trials named <model>-seed<S>)")
    p.add_argument("--seeds", nargs="+", required=True, type=int, metavar="S", default=unset,
                   help="seeds, one trial each")
    p.add_argument("--task_orders", nargs="+", metavar="ORDER", default=unset,
                   help="task orders as comma-separated classes (leather,grid,transistor), one trial each; "
                        "default: --task_classes of the train flags")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: subprocesses on this machine; ray: Ray tasks on a local instance or a cluster")
    p.add_argument("--ray_address", metavar="HEAD:PORT", default=unset,
                   help="a running Ray cluster (default: $RAY_ADDRESS, else a local instance for this sweep)")
    p.add_argument("--gpus_per_trial", metavar="N", type=float, default=unset,
                   help="ray: GPUs each trial reserves (default 0)")
    p.add_argument("--cpus_per_trial", metavar="N", type=float, default=unset,
                   help="ray: CPUs each trial reserves (default 1)")
    p.add_argument("--max_parallel", metavar="N", type=int, default=unset,
                   help="trials running at once (local: default 1; ray: default as many as the resources allow, "
                        "and a local Ray instance gets N x cpus_per_trial CPUs)")
    p.add_argument("--no_compare", action="store_true", help="skip writing <experiment>/COMPARE.md at the end")
    p.add_argument("train_flags", nargs=argparse.REMAINDER, metavar="-- TRAIN_FLAGS",
                   help="`moleflow train` flags for every trial, after `--`")
    parse_known_args = p.parse_known_args

    def parse_known_args_or_explain(args=None, namespace=None):
        namespace, extras = parse_known_args(args, namespace)
        if extras:  # a train flag before `--`: argparse alone would say only "unrecognized arguments"
            p.error(f"unrecognized arguments: {' '.join(extras)} (`moleflow train` flags go after `--`: "
                    f"moleflow sweep --versions V --seeds S -- --data_path ...)")
        return namespace, extras

    p.parse_known_args = parse_known_args_or_explain


# ------------------------------------------------------------------------------------------ trials


def parse_order(text: str) -> list[str]:
    classes = [c.strip() for c in text.split(",")]
    if not all(classes):
        raise MoleflowError(f"--task_orders {text!r}: expected comma-separated class names (leather,grid)")
    return classes


def trial_name(label: str, seed: int, order: list[str] | None) -> str:
    """<version or model>-seed<S>[-<order>]."""
    name = f"{label}-seed{seed}" + (f"-{'+'.join(order)}" if order else "")
    return name.replace(os.sep, "_")


def expand_trials(versions: list[str] | None, seeds: list[int], task_orders: list[str] | None,
                  train_flags: list[str]) -> list[Trial]:
    """versions x seeds x orders, in that nesting order; each trial's `moleflow` argv. Without --versions each
    trial runs the model's default; its name is completed when its settings are resolved (check_flags)."""
    orders = [parse_order(o) for o in task_orders] if task_orders else [None]
    trials = []
    for version in versions or [""]:
        for seed in seeds:
            for order in orders:
                argv = ["train", *(["--version", version] if version else []), "--seed", str(seed)]
                argv += ["--task_classes", *order] if order else []
                trials.append(Trial(trial_name(version or "{label}", seed, order), argv + list(train_flags)))
    check_unique(trials)
    return trials


def check_unique(trials: list[Trial]) -> None:
    names = [t.name for t in trials]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MoleflowError(f"trial(s) listed twice: {', '.join(twice)}; drop the repeated version/seed/order")


def _parse_train(argv: list[str]) -> argparse.Namespace:
    """`moleflow train ARGV` parsed by the real parser (train_args.py, with the options of the model ARGV
    selects); argparse's usage + error becomes one MoleflowError."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parse_train_args(train_parser(argv), argv)
    except SystemExit as exc:
        lines = err.getvalue().strip().splitlines()
        message = lines[-1].split("error: ", 1)[-1] if lines and exc.code else "--help is not a train flag here"
        raise MoleflowError(f"train flags: {message} (see `moleflow train --help`)") from None
    except MoleflowError as exc:  # a flag the selected model does not have
        raise MoleflowError(f"train flags: {exc}") from None


def check_flags(args: argparse.Namespace, trials: list[Trial]) -> None:
    """Refuse what would change nothing or cannot work; resolve every trial's config (sets experiment_dir,
    log). Raises MoleflowError before any trial starts."""
    if args.backend == "local":
        given = [f"--{k}" for k in ("ray_address", "gpus_per_trial", "cpus_per_trial") if getattr(args, k) is not None]
        if given:
            raise MoleflowError(f"{' '.join(given)}: only read with --backend ray (the local backend runs trials "
                                f"as subprocesses on this machine)")
    for flag in ("gpus_per_trial", "cpus_per_trial", "max_parallel"):
        value = getattr(args, flag)
        if value is not None and (not math.isfinite(value) or value < 0 or (value == 0 and flag != "gpus_per_trial")):
            raise MoleflowError(f"--{flag} {value}: must be {'>= 0' if flag == 'gpus_per_trial' else '> 0'}")
    bare_args = _parse_train(list(args.train_flags))
    bare = explicit_settings(bare_args)
    clashes = {"version": "--versions", "seed": "--seeds"}
    if args.task_orders:
        clashes["task_classes"] = "--task_orders"
    for name, sweep_flag in clashes.items():
        if name in bare:
            raise MoleflowError(f"--{name} in the train flags: the sweep sets it per trial; use {sweep_flag}")
    if bare_args.resume:
        raise MoleflowError("--resume in the train flags: a sweep starts new runs (resume one with `moleflow train "
                            "--resume RUN_DIR`)")
    for trial in trials:
        try:
            cfg = train_config(_parse_train(trial.argv[1:]))
        except MoleflowError as exc:
            raise MoleflowError(f"trial {trial.name}: {exc}") from None
        if (args.gpus_per_trial or 0) > 0 and cfg.flat().get("device") == "cpu":
            raise MoleflowError(f"--gpus_per_trial {args.gpus_per_trial:g} with --device cpu: the trials would not "
                                f"use the GPU; drop one of them")
        trial.name = trial.name.replace("{label}", cfg.run_label)
        trial.experiment_dir = Path(cfg.run.runs_dir) / cfg.run.experiment_name
        trial.log = _unused_log_path(trial.experiment_dir / LOG_DIR, trial.name)
    check_unique(trials)


def _unused_log_path(folder: Path, name: str) -> Path:
    """<name>.log, or <name>-2.log, -3, ... when an earlier sweep into the same experiment folder (e.g. the
    ablation rows of `./run.sh sweep`, each its own `moleflow sweep` of trial v10-seed0) already wrote it."""
    path, n = folder / f"{name}.log", 1
    while path.exists():
        n += 1
        path = folder / f"{name}-{n}.log"
    return path.absolute()


# ------------------------------------------------------------------------------------------ one trial

def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64_000))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines()]  # progress bars: their last state
    return [row for row in rows if row.strip()][-lines:]


def run_trial(name: str, argv: list[str], log: str, cwd: str | None = None,
              live: set[subprocess.Popen] | None = None) -> tuple[str, int, str, list[str], float]:
    """Run `python -m moleflow ARGV` with its output in LOG. Returns (name, exit code, run folder or "",
    last lines of its output, wall seconds). The same function runs locally and inside a Ray task; locally,
    `live` holds the running processes so Ctrl-C can stop them (set.add/discard are atomic in CPython)."""
    start = time.monotonic()
    log_path = Path(log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "moleflow", *argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as out:
        out.write(f"$ moleflow {shlex.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd if cwd and os.path.isdir(cwd) else None)
        if live is not None:
            live.add(proc)
        try:
            code = proc.wait()
        finally:
            if live is not None:
                live.discard(proc)
    tail = log_tail(log_path, 200)
    run = next((row.removeprefix("run: ") for row in reversed(tail) if row.startswith("run: ")), "")
    return name, code, run, tail[-TAIL_LINES:], time.monotonic() - start


# ------------------------------------------------------------------------------------------ backends


class Reporter:
    """One line per finished trial (and a failed one's last log lines), over a tqdm bar on a terminal."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.total, self.done, self.results = total, 0, []
        self.bar = tqdm(total=total, unit="trial", desc="sweep", disable=None, file=sys.stderr)

    def __call__(self, trial: Trial, result: Result) -> None:
        self.done += 1
        self.results.append(result)
        if result.ok:
            line = f"[{self.done}/{self.total}] ok      {trial.name}  {result.wall_s:.1f} s  {result.run_folder}"
        else:
            line = (f"[{self.done}/{self.total}] FAILED  {trial.name}  exit {result.returncode}  "
                    f"{result.wall_s:.1f} s  log: {trial.log}\n" + "\n".join(f"    | {row}" for row in result.tail))
        self.note(line)
        self.bar.update(1)

    def note(self, line: str) -> None:
        self.bar.write(line, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        self.bar.close()


def run_local(trials: list[Trial], max_parallel: int, report: Reporter) -> None:
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    cwd, live = os.getcwd(), set()  # the trials running now (terminated on Ctrl-C)
    pool = ThreadPoolExecutor(max_workers=max_parallel)
    try:
        futures = {pool.submit(run_trial, t.name, t.argv, str(t.log), cwd, live): t for t in trials}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: trials.index(futures[f])):
                name, code, run, tail, wall = future.result()
                report(futures[future], Result(name, code, wall, run, tail))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(live):
            proc.terminate()
        raise
    pool.shutdown()


def run_ray(trials: list[Trial], args: argparse.Namespace, report: Reporter) -> None:
    try:
        import ray
    except ImportError:
        raise MoleflowError("--backend ray needs Ray: pip install 'moleflow[ray]' (or ray>=2.9)") from None
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else 1.0
    gpus = args.gpus_per_trial or 0.0
    address = args.ray_address or os.environ.get("RAY_ADDRESS") or None
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict = {"address": address, "log_to_driver": False, "configure_logging": False}
        if address is None:  # a local instance just for this sweep
            kwargs["include_dashboard"] = False
            if args.max_parallel:
                kwargs["num_cpus"] = max(1, math.ceil(cpus * args.max_parallel))
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise MoleflowError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {exc}") from None
    pending: dict = {}
    try:
        have = ray.cluster_resources()
        where = f"cluster at {address}" if address else "local instance"
        report.note(f"ray: {where} with {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs; each trial "
              f"{cpus:g} CPU, {gpus:g} GPU")
        for need, kind in ((cpus, "CPU"), (gpus, "GPU")):
            if need > have.get(kind, 0):
                message = f"each trial asks for {need:g} {kind}, the Ray {where} has {have.get(kind, 0):g}"
                if address is None:
                    raise MoleflowError(message)
                report.note(f"warning: {message} (trials wait until an autoscaler adds a node)")
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_trial)
        cwd, queue = os.getcwd(), list(trials)
        while queue or pending:
            while queue and (not args.max_parallel or len(pending) < args.max_parallel):
                t = queue.pop(0)
                pending[task.remote(t.name, t.argv, str(t.log), cwd)] = t
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                t = pending.pop(ref)
                try:
                    name, code, run, tail, wall = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the task died (node lost, worker killed, ...)
                    name, code, run, tail, wall = t.name, -1, "", str(exc).splitlines()[-TAIL_LINES:], 0.0
                if tail and not t.log.exists():  # the trial ran on a node that does not share this folder
                    t.log.parent.mkdir(parents=True, exist_ok=True)
                    t.log.write_text("(last lines, from the Ray task)\n" + "\n".join(tail) + "\n")
                report(t, Result(name, code, wall, run, tail))
    except BaseException:
        for ref in pending:  # interrupted: stop the trials still running
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()


# ------------------------------------------------------------------------------------------ the command


def summary_table(trials: list[Trial], results: list[Result]) -> str:
    by_name = {r.name: r for r in results}
    rows = [("trial", "status", "wall s", "run folder")]
    for t in trials:
        r = by_name.get(t.name)
        status = "not run" if r is None else "ok" if r.ok else f"failed ({r.returncode})"
        rows.append((t.name, status, f"{r.wall_s:.1f}" if r else "-", (r.run_folder if r else "") or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3] for row in rows)


def write_compare(folders: list[Path]) -> None:
    for folder in folders:
        if not folder.is_dir():
            continue
        try:
            atomic_write_text(folder / "COMPARE.md", compare_runs([folder], markdown=True) + "\n")
            print(f"tables: {folder / 'COMPARE.md'}")
        except MoleflowError as exc:
            print(f"compare: {folder}: {exc}")


def run_sweep(args: argparse.Namespace) -> int:
    for name in OPTIONAL:
        setattr(args, name, getattr(args, name, None))
    flags = list(args.train_flags)
    args.train_flags = flags[1:] if flags[:1] == ["--"] else flags
    trials = expand_trials(args.versions, args.seeds, args.task_orders, args.train_flags)
    check_flags(args, trials)
    parallel = args.max_parallel or (1 if args.backend == "local" else None)
    logs = sorted({str(t.log.parent) for t in trials})
    print(f"sweep: {len(trials)} trial(s), backend {args.backend}"
          f"{f', {parallel} at a time' if parallel else ''}; logs: {', '.join(logs)}")
    sys.stdout.flush()
    report = Reporter(len(trials))
    try:
        if args.backend == "local":
            run_local(trials, parallel, report)
        else:
            run_ray(trials, args, report)
    finally:
        report.close()
    print()
    print(summary_table(trials, report.results))
    if not args.no_compare:
        write_compare(list(dict.fromkeys(t.experiment_dir for t in trials)))
    failed = [r.name for r in report.results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(trials)} trial(s) failed: {', '.join(failed)}")
        return 1
    return 0
