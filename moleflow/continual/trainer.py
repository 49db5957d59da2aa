"""The task loop: begin task -> fit what it owns -> end task (freeze) -> add router prototype ->
checkpoint -> evaluate every task seen so far. Knows models only through the continual contract."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from moleflow import registry
from moleflow.config import FIELD_SPECS, NOT_SETTINGS, Config, recipe
from moleflow.config_migration import migrate_recipe
from moleflow.contract import FitContext, ModelHooks
from moleflow.continual.strategies import strategy_class
from moleflow.continual.task_data import TaskData, build_extractor, prepare_tasks
from moleflow.data.streams import task_name
from moleflow.device import resolve_device
from moleflow.errors import MoleflowError
from moleflow.options import default_of, option_fields
from moleflow.evaluation.evaluator import Evaluator
from moleflow.evaluation.report import write_final_report
from moleflow.report.writer import write_report
from moleflow.report.source import from_scored
from moleflow.rng import deterministic_cuda, seeded_rng
from moleflow.run_folder import RunFolder
from moleflow.run_log import TBLogger, collect_env
from moleflow.task_range import TaskRange

MATRIX_METRICS = ("image_auroc", "pixel_auroc", "aupro")


def build_model(cfg: Config, dim: int, grid: tuple[int, int], device: torch.device) -> torch.nn.Module:
    """The run's model, built by its own `from_options` from its options and what the run decides around it
    (contract.ModelContext: feature width and grid, image size, whether the strategy shares one model)."""
    context = cfg.model_context(dim=dim, grid=grid, build_extractor=partial(build_extractor, cfg, device))
    return cfg.spec.build(cfg.options, context)


class ContinualRun:
    """One run's model, router, strategy and evaluator, plus the results gathered so far."""

    def __init__(self, cfg: Config, tasks: list[TaskData], dim: int, grid: tuple[int, int], device: torch.device,
                 progress: bool = True):
        self.cfg, self.tasks, self.device, self.progress = cfg, tasks, device, progress
        strategy_cls = strategy_class(cfg.train.strategy)
        with seeded_rng(cfg.train.seed, device):  # the model's init, without reseeding the process
            model = build_model(cfg, dim, grid, device).to(device)

        def build_for_task(t: int) -> torch.nn.Module:  # another model, for a strategy that keeps one per task
            with seeded_rng(self._task_seed(t), device):
                return build_model(cfg, dim, grid, device).to(device)

        self.model = strategy_cls.model_for_run(model, build_for_task)
        self.hooks = ModelHooks.of(self.model)  # the contract's optional hooks, or their defaults
        self.router = registry.create("routers", cfg.train.router)
        memory = cfg.train.task_range_memory
        self.task_range = TaskRange(memory, cfg.eval.task_range_margin) if memory > 0 else None
        # from the config, not `tasks`: predict restores a run without loading any data
        self.task_names = [task_name(classes) for classes in cfg.data.tasks]  # a task's classes joined by '+'
        self.strategy = strategy_cls.from_config(self.model, len(self.task_names), cfg)
        self.evaluator = Evaluator(self.model, self.strategy, self.router, cfg.eval, cfg.data.size, device,
                                   task_range=self.task_range, own_scores=cfg.spec.own_scores)
        self.results: dict[int, dict[str, dict[str, float]]] = {}  # after task i -> class -> metrics (per class,
        # also when a task holds several classes)
        self.fit_log: list[dict] = []

    def _task_seed(self, task_id: int) -> int:
        # per-task seeds make a resumed run draw exactly what an uninterrupted one draws
        return self.cfg.train.seed * 1000 + task_id

    def train_task(self, t: int, tb: TBLogger | None) -> None:
        # new experts/adapters and any draw a model makes from torch's default generator follow the task's
        # seed; the process-wide generator is left as it was
        with seeded_rng(self._task_seed(t), self.device):
            self._train_task(t, tb)

    def _train_task(self, t: int, tb: TBLogger | None) -> None:
        task = self.tasks[t]
        self.strategy.begin_task(t, task.name)
        inputs = self.strategy.training_inputs(t, self.tasks)
        if inputs is not None:
            self.hooks.observe_training_features(self.strategy.model_task(t), inputs)
            log = (lambda e, v: tb.scalar(f"train/loss_task{t}_{task.name}", v, e)) if tb else None
            context = FitContext(seed=self._task_seed(t), device=self.device, label=f"task {t} ({task.name})",
                                 progress=self.progress, on_epoch=log)
            # the model's own training procedure: its loop, loss and batches are its options
            fit = self.model.fit_task(self.strategy.model_task(t), inputs, self.strategy.trainable(t), context)
            self.hooks.observe_trained(self.strategy.model_task(t), inputs)
            self.fit_log.append({"task": t, "class": task.name, "epochs": len(fit.epoch_losses),
                                 "final_loss": fit.epoch_losses[-1] if fit.epoch_losses else None,
                                 "seconds": fit.seconds, "steps": fit.steps,
                                 **({"loss_state": fit.loss_state} if fit.loss_state else {})})
        self.strategy.end_task(t)
        self.router.add_task(t, task.train.pooled)
        if self.task_range is not None:
            self.task_range.add_task(t, task.train.patch, seed=self._task_seed(t))

    def evaluate(self, upto: int, keep_maps: bool = False) -> dict[str, Any]:
        scored = {}
        row = {}
        seen = self.tasks[: upto + 1]
        tests = [test for task in seen for test in task.tests]
        for test in tqdm(tests, desc=f"evaluate after task {upto}", disable=not self.progress, leave=False):
            s = self.evaluator.score(test.task_id, test.class_name, test.test, test.inputs)
            row[test.class_name] = self.evaluator.metrics(s, test.test, keep_maps=keep_maps)
            scored[test.class_name] = s
        self.results[upto] = row
        return scored

    # --- checkpoints -------------------------------------------------------------------------------
    def save(self, run: RunFolder, t: int) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.task_state(self.strategy.model_task(t)).items()} \
            if self.strategy.frozen_after_task else {}
        tensors.update({f"router.{k}": v for k, v in self.router.task_state(t).items()})
        if self.task_range is not None:
            tensors.update({f"{RANGE_PREFIX}{k}": v for k, v in self.task_range.task_state(t).items()})
        recipe_meta = {RECIPE_KEY: json.dumps(recipe(self.cfg), sort_keys=True)}
        run.save_checkpoint(f"task_{t}", tensors, {"task": str(t), "class": self.task_names[t], **recipe_meta})
        if self.strategy.shared_changes(t) or not self.strategy.frozen_after_task:
            state = self.model.shared_state() if self.strategy.frozen_after_task else self.model.state_dict()
            run.save_checkpoint(f"shared_{t}", dict(state), {"after_task": str(t), **recipe_meta})

    def restore(self, run: RunFolder, completed: int) -> None:
        """Load the checkpoints of the first `completed` tasks. Every file is read and checked first (readable,
        its checksum, written by a run with this run's settings); only then is anything loaded into the model."""
        names, present = [f"task_{t}" for t in range(completed)], set(run.checkpoint_names())
        shared = [f"shared_{t}" for t in range(completed) if f"shared_{t}" in present]
        loaded = {name: run.load_checkpoint(name) for name in names + shared[-1:]}
        for name, (_, meta) in loaded.items():
            check_recipe(run.checkpoint_path(name), meta, self.cfg)
        try:
            for t in range(completed):
                self.strategy.begin_task(t, self.task_names[t])
                tensors = loaded[f"task_{t}"][0]
                model_part = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
                if model_part:
                    self.model.load_task_state(self.strategy.model_task(t), model_part)
                self.router.load_task_state(t, {k[7:]: v for k, v in tensors.items() if k.startswith("router.")})
                if self.task_range is not None:
                    self.task_range.load_task_state(t, {k[len(RANGE_PREFIX):]: v for k, v in tensors.items()
                                                        if k.startswith(RANGE_PREFIX)})
                self.strategy.end_task(t)
            if shared:
                state = loaded[shared[-1]][0]
                if self.strategy.frozen_after_task:
                    self.model.load_shared_state(state)
                else:
                    self.model.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as exc:  # a checkpoint written before recipes were recorded
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MoleflowError(f"the checkpoints in {run.path / 'checkpoints'} do not fit this run's model "
                                f"({first}); they come from another configuration") from None


#: checkpoint key prefix of a task's no-learned-task range (moleflow.task_range)
RANGE_PREFIX = "task_range."

#: checkpoint metadata key of the settings (config.recipe) of the run that wrote it
RECIPE_KEY = "moleflow.recipe"


def check_recipe(path: Path, meta: dict[str, str], cfg: Config) -> None:
    """Refuse a checkpoint written by a run with other settings, naming the file and the settings."""
    if RECIPE_KEY not in meta:
        return  # written before recipes were recorded: the load itself still checks names and shapes
    theirs = migrate_recipe(json.loads(meta[RECIPE_KEY]), set(FIELD_SPECS) - NOT_SETTINGS)
    ours = json.loads(json.dumps(recipe(cfg)))
    # a setting added after the checkpoint was written (an engine setting or a model option) did not exist
    # then: the run computed its default
    fields = {**{name: f for name, (_, f) in FIELD_SPECS.items()}, **option_fields(type(cfg.options))}
    added = json.loads(json.dumps({name: default_of(f) for name, f in fields.items() if name not in theirs}))
    differ = sorted(name for name in set(theirs) | set(ours) if theirs.get(name, added.get(name)) != ours.get(name))
    if differ:
        shown = "; ".join(f"{n}: {theirs.get(n)!r} in the checkpoint, {ours.get(n)!r} in this run" for n in differ[:4])
        more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
        raise MoleflowError(f"checkpoint {path} was written by a run with other settings ({shown}{more}); it does "
                            "not belong to this run folder: put the run's own checkpoints back or start a new run")


def check_components(cfg: Config) -> None:
    """Fail on unknown component names in seconds, before any image is read or feature computed (the model's
    options were checked when the config was resolved or read)."""
    registry.get("routers", cfg.train.router)
    strategy_class(cfg.train.strategy)
    registry.get("extractors", cfg.backbone.extractor)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (MiB); None where `resource` is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def add_eval_time(timing: dict, seconds: float) -> None:
    """One evaluation's seconds: into the total and the per-task list (how evaluation cost grows with the
    number of tasks seen, benchmarks/scaling.py)."""
    timing["eval_s"] += seconds
    timing.setdefault("eval_after_task_s", []).append(seconds)


def run_training(cfg: Config, *, progress: bool = True, resume: str | None = None, log=print) -> RunFolder:
    """Train the whole task stream and write the run folder. Returns it."""
    started = time.perf_counter()  # wall_s: everything this call does but writing the final report
    check_components(cfg)
    if cfg.run.deterministic:
        deterministic_cuda()
    device = resolve_device(cfg.train.device)
    tasks, extractor, backbone_s = prepare_tasks(cfg, device, progress)  # fails before any folder exists
    log(f"backbone: {cfg.backbone.backbone_name}, {extractor.weights_description}, "
        f"grid {extractor.grid[0]}x{extractor.grid[1]}, dim {extractor.dim}, features in {backbone_s:.1f}s")
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, device, progress)
    description = state.hooks.describe()  # the contract's optional describe() hook, "" without one
    if description:
        log(f"model {cfg.model}: {description}")

    if resume:
        run = RunFolder.open(resume)
        run.remove_temp_files()  # what a write killed halfway left behind
        progress_doc = run.read_json("progress.json") if (run.path / "progress.json").exists() else {}
        completed = int(progress_doc.get("completed_tasks", 0))
        state.restore(run, completed)
        state.results = {int(k): v for k, v in progress_doc.get("results", {}).items()}
        state.fit_log = progress_doc.get("fit", [])
        timing = progress_doc.get("timing", {"train_s": 0.0, "eval_s": 0.0})
        log(f"resuming {run.path} after {completed} completed task(s)" if completed else
            f"resuming {run.path}: it stopped before its first task finished, so it starts again from task 0")
    else:
        run = RunFolder.create(cfg.run.runs_dir, cfg.run.experiment_name, cfg.run_label)
        run.write_json("config.json", cfg.to_dict())
        run.write_json("env.json", collect_env(cfg.train.seed, str(device)))
        completed, timing = 0, {"train_s": 0.0, "eval_s": 0.0}
    timing["backbone_s"] = backbone_s

    def wall_s() -> float:  # a resumed run adds this process's wall time to what the interrupted one had spent
        return timing.get("wall_s", 0.0) + time.perf_counter() - started

    tb = TBLogger(run.path / "tb")
    try:
        for t in range(completed, len(tasks)):
            start = time.perf_counter()
            state.train_task(t, tb)
            timing["train_s"] += time.perf_counter() - start
            state.save(run, t)
            if state.strategy.evaluates_after(t) and t < len(tasks) - 1:
                start = time.perf_counter()
                state.evaluate(t)
                add_eval_time(timing, time.perf_counter() - start)
                for cls, m in state.results[t].items():
                    for name in MATRIX_METRICS:
                        tb.scalar(f"{cls}/{name}", m[name], t)
            run.write_json("progress.json", {"completed_tasks": t + 1, "results": state.results,
                                             "fit": state.fit_log, "timing": {**timing, "wall_s": wall_s()}})
        start = time.perf_counter()
        scored = state.evaluate(len(tasks) - 1, keep_maps=True)
        add_eval_time(timing, time.perf_counter() - start)
        timing["peak_rss_mb"] = peak_rss_mb()
        timing["wall_s"] = wall_s()
        write_final_report(run, state, scored, timing, tb)
        if cfg.eval.report:
            write_run_report(run, state, scored, tb, progress, log)
    finally:
        tb.close()
    return run


def write_run_report(run: RunFolder, state: ContinualRun, scored: dict[str, Any], tb: TBLogger | None,
                     progress: bool, log=print) -> None:
    """The HTML report (moleflow/report/) from the maps still in memory; its plots also go to TensorBoard.
    The run's results are written already, so a report that cannot be written is a warning, not a failure."""
    try:
        write_report(run.path, class_maps=from_scored(state.tasks, scored), tb=tb, progress=progress, log=log)
    except MoleflowError as exc:
        log(f"warning: no report written ({exc}); the run is complete: `moleflow report {run.path}` retries")
