"""Scaling benchmark: how a default `moleflow train` run grows with the number of tasks T.

For each T (default 1, 3, 6, 15) it runs `python -m moleflow train --task_classes <first T of mvtec15>` in its
own process on the embedded benchmark (so peak RSS is that run's), then reads the run folder: wall time split
backbone / train / eval / other (I/O: listing, checkpoints, progress files), the process's start-up and final
report, peak RSS, mean routing accuracy, BWT, parameters per task, and evaluation time after each task. On the
largest run it measures inference per image with routing (backbone + router + the routed expert's scores +
image score) against one backbone forward, batch 1, same images. It writes benchmarks/RESULTS.md (table,
command, git SHA, machine line, targets) and RESULTS.json beside it.

    ./run.sh bench                      # = python benchmarks/scaling.py --data_path data/synth
    python benchmarks/scaling.py --tasks 1 3 --data_path data/synth --out /tmp/RESULTS.md   (quick look)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("mean routing >= 99 % at 15 tasks; BWT exactly 0; wall time linear in T (15 tasks <= 6x the 3-task "
           "run); inference <= 1.1x one backbone forward; peak RSS at 15 tasks <= 2x the 3-task run")


def run_stream(t: int, args: argparse.Namespace) -> dict:
    from moleflow.data.streams import MVTEC15

    classes = list(MVTEC15[:t])
    cmd = [sys.executable, "-m", "moleflow", "train", "--data_path", args.data_path, "--task_classes", *classes,
           "--experiment_name", f"{args.experiment}-T{t}", "--runs_dir", args.runs_dir, "--heatmaps", "0",
           "--quiet", *args.train_flags]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    process_s = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"T={t}: moleflow train failed ({done.returncode}):\n{done.stderr[-2000:]}")
    run_dir = next(line.split("run: ", 1)[1].strip() for line in done.stdout.splitlines() if line.startswith("run: "))
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    timing, params = metrics["timing"], metrics["params"]
    other = timing["wall_s"] - timing["backbone_s"] - timing["train_s"] - timing["eval_s"]
    return {"tasks": t, "run": run_dir, "process_s": process_s, "wall_s": timing["wall_s"],
            "backbone_s": timing["backbone_s"], "train_s": timing["train_s"], "eval_s": timing["eval_s"],
            "other_s": other, "startup_and_report_s": process_s - timing["wall_s"],
            "peak_rss_mb": timing.get("peak_rss_mb"), "routing": metrics["routing"]["accuracy"],
            "bwt": metrics["continual"]["bwt"]["image_auroc"],
            "image_auroc": metrics["final"]["mean"]["image_auroc"],
            "pixel_auroc": metrics["final"]["mean"]["pixel_auroc"],
            "params_shared": params.get("shared"), "params_per_task": params.get("per_task"),
            "eval_after_task_s": timing.get("eval_after_task_s", []), "command": " ".join(cmd[1:])}


@torch.no_grad()
def inference_ratio(run_dir: str, n_images: int = 60, repeats: int = 3) -> dict:
    """Seconds per image, batch 1: one backbone forward, and the whole routed scoring of the image."""
    from moleflow.continual.task_data import build_extractor, load_datasets
    from moleflow.device import resolve_device
    from moleflow.continual.trainer import ContinualRun
    from moleflow.evaluation.evaluator import model_score_maps
    from moleflow.evaluation.maps import image_scores
    from moleflow.config import read_run_config
    from moleflow.run_folder import RunFolder

    run = RunFolder.open(run_dir)
    cfg = read_run_config(run)
    device = resolve_device(cfg.train.device)
    extractor = build_extractor(cfg, device).eval()
    state = ContinualRun(cfg, [], extractor.dim, extractor.grid, device, progress=False)
    state.restore(run, len(cfg.data.tasks))
    state.model.eval()
    datasets = load_datasets(cfg)
    per_class = max(1, n_images // len(datasets))
    images = [test[i]["image"].unsqueeze(0).to(device) for _, test in datasets.values()
              for i in range(min(per_class, len(test)))]

    def backbone(image: torch.Tensor) -> None:
        extractor(image)

    def routed(image: torch.Tensor) -> None:
        patch, pooled = extractor(image)
        task = int(state.router.predict(pooled.cpu())[0])
        scores = model_score_maps(state.model, patch, state.strategy.model_task(task))["score"]
        image_scores(scores.float().cpu(), cfg.eval.score_aggregation, cfg.eval.topk, out_size=cfg.data.size,
                     sigma=cfg.eval.blur_sigma)

    def seconds_per_image(fn) -> float:
        for image in images[:5]:  # warm-up
            fn(image)
        best = float("inf")
        for _ in range(repeats):  # best of a few passes: the least disturbed by other processes
            start = time.perf_counter()
            for image in images:
                fn(image)
            best = min(best, (time.perf_counter() - start) / len(images))
        return best

    # interleaved, so a slow spell of the machine hits both
    b1, r1 = seconds_per_image(backbone), seconds_per_image(routed)
    b2, r2 = seconds_per_image(backbone), seconds_per_image(routed)
    backbone_s, routed_s = min(b1, b2), min(r1, r2)
    return {"images": len(images), "backbone_ms": 1000 * backbone_s, "routed_ms": 1000 * routed_s,
            "ratio": routed_s / backbone_s, "threads": torch.get_num_threads(), "run": run_dir}


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = "load average (1 min) {:.1f}".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else "load n/a"
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} CPU cores ({cpu}), {gpu}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, {load} when written")


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!runs"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()  # run outputs do not count
        return sha.strip() + ("+uncommitted" if dirty else "")
    except OSError:
        return "unknown"


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def render(rows: list[dict], inference: dict | None, command: str, started_load: float) -> str:
    by_t = {r["tasks"]: r for r in rows}
    lines = ["# Scaling benchmark", "",
             f"`{command}` at git {git_sha()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.  ",
             f"Machine: {machine_line()} (at start: {started_load:.1f}; other processes share the machine when "
             "it is above 0.5, and every time is then inflated).  ",
             "Each row is one `moleflow train` process with the defaults (version v9) on the first T classes of "
             "the embedded benchmark's 1x15 stream (`moleflow synth --classes all`), in MVTec's alphabetical "
             "order. Seconds from the run's metrics.json: *other* = the run's wall time minus backbone, train and "
             "eval (listing files, checkpoints, progress files); *start+report* = the process's time outside the "
             "run (imports, model build, final report).", "",
             "| T | process s | run wall s | backbone s | train s | eval s | other s | start+report s | peak RSS MB "
             "| routing | BWT (image AUROC) | mean image AUROC | params/task (% of shared) | eval after each task s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|"]
    for r in rows:
        per_task = r["params_per_task"] or []
        mean_task = sum(per_task) / len(per_task) if per_task else None
        share = f"{mean_task:,.0f} ({100 * mean_task / r['params_shared']:.1f} %)" if mean_task and r["params_shared"] \
            else "n/a"
        evals = " ".join(f"{s:.1f}" for s in r["eval_after_task_s"])
        bwt = "n/a (one task)" if r["bwt"] is None else f"{r['bwt']:.4f}"
        lines.append(f"| {r['tasks']} | {r['process_s']:.1f} | {r['wall_s']:.1f} | {r['backbone_s']:.1f} | "
                     f"{r['train_s']:.1f} | {r['eval_s']:.1f} | {r['other_s']:.1f} | {r['startup_and_report_s']:.1f} | "
                     f"{_fmt(r['peak_rss_mb'], '.0f')} | {r['routing']:.4f} | {bwt} | {r['image_auroc']:.4f} | "
                     f"{share} | {evals} |")
    lines += ["", f"Targets (benchmarks, not timed tests): {TARGETS}.", ""]
    if 3 in by_t and 15 in by_t:
        wall = by_t[15]["wall_s"] / by_t[3]["wall_s"]
        rss = (by_t[15]["peak_rss_mb"] or 0) / (by_t[3]["peak_rss_mb"] or 1)
        lines += [f"- 15 tasks / 3 tasks: run wall time {wall:.2f}x (target <= 6x; 5x is linear), peak RSS {rss:.2f}x "
                  "(target <= 2x)."]
    if 15 in by_t:
        lines += [f"- routing at 15 tasks: {by_t[15]['routing']:.4f} (target >= 0.99); BWT {by_t[15]['bwt']} "
                  "(target exactly 0)."]
    if inference:
        lines += [f"- inference per image, batch 1, {inference['images']} test images, {inference['threads']} torch "
                  f"threads, best of 2x3 interleaved passes: one backbone forward {inference['backbone_ms']:.1f} ms, "
                  f"routed scoring (backbone + router + expert + image score) {inference['routed_ms']:.1f} ms: "
                  f"{inference['ratio']:.2f}x (target <= 1.1x), on the T={max(by_t)} run."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 3, 6, 15], help="stream lengths T (<= 15)")
    parser.add_argument("--data_path", default=str(ROOT / "data" / "synth"))
    parser.add_argument("--runs_dir", default=str(ROOT / "runs"))
    parser.add_argument("--experiment", default="bench")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument("train_flags", nargs="*", help="extra `moleflow train` flags (after --)")
    args = parser.parse_args(argv)
    if not all(1 <= t <= 15 for t in args.tasks):
        parser.error("--tasks: each T must be between 1 and 15 (the embedded benchmark has 15 classes)")
    rows, started_load = [], os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for t in sorted(set(args.tasks)):
        print(f"[bench] T={t} ...", file=sys.stderr, flush=True)
        rows.append(run_stream(t, args))
        print(f"[bench] T={t}: {rows[-1]['wall_s']:.1f} s, routing {rows[-1]['routing']:.4f}", file=sys.stderr)
    inference = inference_ratio(rows[-1]["run"])
    command = "./run.sh bench" if argv is None and len(sys.argv) == 1 else "python benchmarks/scaling.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.write_text(render(rows, inference, command, started_load))
    out.with_suffix(".json").write_text(json.dumps({"git": git_sha(), "machine": machine_line(), "rows": rows,
                                                    "inference": inference, "load_at_start": started_load},
                                                   indent=1) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
