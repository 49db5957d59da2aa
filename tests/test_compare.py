from __future__ import annotations

import os
import re

import pytest

from moleflow.compare import compare_runs
from moleflow.errors import MoleflowError
from moleflow.run_folder import RunFolder

CLASSES = ["leather", "grid", "transistor"]


def _metrics(image, pixel, aupro, routing, bwt, fm):
    per_class = {c: {"image_auroc": image[i], "pixel_auroc": pixel[i], "aupro": aupro[i],
                     "routing_accuracy": routing[i], "image_ap": 0.5} for i, c in enumerate(CLASSES)}
    mean = {k: sum(v[k] for v in per_class.values() if v[k] is not None) / len(CLASSES)
            for k in ("image_auroc", "pixel_auroc", "routing_accuracy")}
    return {"tasks": CLASSES,
            "final": {"per_class": per_class, "mean": mean},
            "continual": {"matrix": {"image_auroc": [[image[0], None, None]] * 3},
                          "bwt": {"image_auroc": bwt, "pixel_auroc": 0.0}, "fm": {"image_auroc": fm, "pixel_auroc": 0.0}},
            "routing": {"accuracy": mean["routing_accuracy"], "confusion": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]},
            "params": {"shared": 10, "per_task": [1, 1, 1]},
            "timing": {"backbone_s": 1.0, "train_s": 1.0, "eval_s": 1.0}}


def _make_run(root, version, metrics, *, experiment="demo", strategy="moleflow", nested=True):
    run = RunFolder.create(root, experiment, version)
    if nested:  # what Config.to_dict() writes
        config = {"run": {"version": version, "experiment_name": experiment},
                  "train": {"strategy": strategy}, "flow": {"model": "moleflow"}}
    else:
        config = {"version": version, "experiment_name": experiment, "strategy": strategy, "model": "moleflow"}
    run.write_json("config.json", config)
    if metrics is not None:
        run.write_json("metrics.json", metrics)
    return run


OLD = dict(image=[0.9, 0.8, 0.7], pixel=[0.85, 0.75, 0.65], aupro=[0.8, float("nan"), 0.6],
           routing=[1.0, 0.95, 1.0], bwt=-0.05, fm=0.05)
NEW = dict(image=[0.95, 0.82, 0.7], pixel=[0.9, 0.7, 0.66], aupro=[0.82, 0.5, 0.6],
           routing=[1.0, 1.0, 0.9], bwt=-0.01, fm=0.01)


@pytest.fixture
def two_runs(tmp_path):
    a = _make_run(tmp_path, "v1", _metrics(**OLD))
    b = _make_run(tmp_path, "v2", _metrics(**NEW), nested=False)
    return a, b


def _row(text, label, occurrence=0):
    rows = [line for line in text.splitlines() if re.match(rf"^\|? ?{re.escape(label)}\b", line)]
    return rows[occurrence]


def _change(old, new):
    return f"{new - old:+.4f} ({(new - old) / old * 100:+.2f}%)"


def test_per_run_tables_hold_the_numbers(two_runs):
    a, b = two_runs
    text = compare_runs([a.path, b.path])
    assert f"run 1: {a.path}" in text and f"run 2: {b.path}" in text
    assert "version v1" in text and "version v2" in text and "strategy/model moleflow/moleflow" in text
    leather = _row(text, "leather").split()
    assert leather == ["leather", "1.0000", "0.9000", "0.8500", "0.8000"]
    assert _row(text, "grid").split() == ["grid", "0.9500", "0.8000", "0.7500", "n/a"]  # NaN AUPRO
    mean = _row(text, "mean").split()
    assert mean[2] == f"{sum(OLD['image']) / 3:.4f}"
    assert mean[4] == "n/a"  # one class has no AUPRO, so there is no mean either
    assert "BWT (image AUROC) -0.0500, FM (image AUROC) 0.0500" in text
    # aligned plain text: every row of a table has the same width as its header
    table = text.split("run 1: ")[1].split("\n\n")[1].splitlines()  # after the summary section
    assert table[0].startswith("class") and table[-1].startswith("mean")
    assert len({len(line) for line in table}) == 1


def test_change_table_between_consecutive_runs(two_runs):
    a, b = two_runs
    text = compare_runs([a.path, b.path])
    assert f"change: v1 ({a.path.name}) -> v2 ({b.path.name})" in text
    change = text[text.index("change:"):]
    leather = _row(change, "leather")
    for old, new in ((OLD["routing"][0], NEW["routing"][0]), (OLD["image"][0], NEW["image"][0]),
                     (OLD["pixel"][0], NEW["pixel"][0]), (OLD["aupro"][0], NEW["aupro"][0])):
        assert _change(old, new) in leather
    assert "+0.0500 (+5.56%)" in leather  # image AUROC 0.90 -> 0.95
    grid = _row(change, "grid")
    assert _change(0.8, 0.82) in grid and _change(0.75, 0.7) in grid and "n/a" in grid
    transistor = _row(change, "transistor")
    assert "-0.1000 (-10.00%)" in transistor  # routing 1.0 -> 0.9
    assert _change(sum(OLD["image"]) / 3, sum(NEW["image"]) / 3) in _row(change, "mean")
    assert "+0.0400" in _row(change, "BWT") and "-0.0400" in _row(change, "FM")


def test_markdown_tables(two_runs):
    a, b = two_runs
    text = compare_runs([a.path, b.path], markdown=True)
    assert "| class | routing acc | image AUROC | pixel AUROC | AUPRO |" in text
    assert "|:---|---:|---:|---:|---:|" in text
    assert "| leather | 1.0000 | 0.9000 | 0.8500 | 0.8000 |" in text
    assert "| leather | +0.0000 (+0.00%) | +0.0500 (+5.56%) | +0.0500 (+5.88%) | +0.0200 (+2.50%) |" in text
    assert f"`{a.path}`" in text


def test_parent_folder_expands_sorted_by_version_then_time(tmp_path):
    m = _metrics(**OLD)
    v10 = _make_run(tmp_path, "v10", m)
    v2_first = _make_run(tmp_path, "v2", m)
    v1 = _make_run(tmp_path, "v1", m)
    v2_second = _make_run(tmp_path, "v2", m)
    unfinished = _make_run(tmp_path, "v3", None)
    # file times can be coarser than the gap between two writes: make the creation order explicit
    for i, run in enumerate((v10, v2_first, v1, v2_second)):
        os.utime(run.path / "config.json", ns=(10**18 + i * 10**6, 10**18 + i * 10**6))
    text = compare_runs([tmp_path / "demo"])
    order = [int(m.group(1)) for m in re.finditer(r"^run (\d+): ", text, re.M)]
    assert order == [1, 2, 3, 4]
    positions = [text.index(str(r.path)) for r in (v1, v2_first, v2_second, v10)]
    assert positions == sorted(positions)
    assert text.count("change: ") == 3
    assert f"skipped (no metrics.json yet): {unfinished.path}" in text


def test_first_vs_last_and_duplicates(tmp_path):
    runs = [_make_run(tmp_path, v, _metrics(**OLD)) for v in ("v1", "v2", "v3")]
    text = compare_runs([r.path for r in runs] + [runs[0].path], first_vs_last=True)
    assert re.findall(r"^run (\d+): ", text, re.M) == ["1", "2", "3"]  # the repeated run is listed once
    assert text.count("change: ") == 3
    assert f"change: v1 ({runs[0].path.name}) -> v3 ({runs[2].path.name})" in text


def test_missing_or_damaged_metrics_name_the_folder(tmp_path):
    run = _make_run(tmp_path, "v1", None)
    with pytest.raises(MoleflowError, match=re.escape(str(run.path))):
        compare_runs([run.path])
    (run.path / "metrics.json").write_text('{"tasks": [')
    with pytest.raises(MoleflowError, match=re.escape(str(run.path)) + ".*damaged"):
        compare_runs([run.path])


def test_bad_arguments(tmp_path):
    with pytest.raises(MoleflowError, match="not found"):
        compare_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MoleflowError, match="no run folders under"):
        compare_runs([tmp_path / "empty"])
    with pytest.raises(MoleflowError, match="no run folders given"):
        compare_runs([])


def test_cli_first_vs_last_flag_adds_the_table(tmp_path, capsys):
    from moleflow.cli import main

    runs = [_make_run(tmp_path, v, _metrics(**OLD)) for v in ("v1", "v2", "v3")]
    paths = [str(r.path) for r in runs]
    assert main(["compare", *paths]) == 0
    plain = capsys.readouterr().out
    assert main(["compare", *paths, "--first_vs_last"]) == 0
    with_flag = capsys.readouterr().out
    assert with_flag.count("change: ") == plain.count("change: ") + 1 == 3


def test_summary_has_one_row_per_run_with_growth(two_runs):
    text = compare_runs([r.path for r in two_runs], markdown=True)
    summary = text.split("**run 1**")[0]
    assert "summary" in summary and summary.count("| moleflow/moleflow |") == 2
    assert "10.0% of shared" in summary  # params: shared 10, per task 1
    assert summary.count("| 1.0 | 1.0 | 1.0 |") == 2  # backbone / train / eval seconds
    one = compare_runs([two_runs[0].path])
    assert "summary (BWT/FM" not in one


def test_summary_shows_absolute_growth_without_shared_parameters(tmp_path):
    metrics = _metrics(**OLD)
    metrics["params"] = {"shared": 0, "per_task": [1000, 1000, 1000]}
    runs = [_make_run(tmp_path, v, m) for v, m in (("v1", _metrics(**OLD)), ("v2", metrics))]
    text = compare_runs([r.path for r in runs], markdown=True)
    assert "1,000 (no shared)" in text and "10.0% of shared" in text


def test_extra_map_pixel_auroc_gets_its_own_column(tmp_path):
    metrics = _metrics(**OLD)
    for i, c in enumerate(CLASSES):
        metrics["final"]["per_class"][c]["pixel_auroc_uncertainty"] = [0.6, 0.7, 0.8][i]
        metrics["final"]["per_class"][c]["pixel_auroc_oracle"] = 0.5  # not an extra map
    text = compare_runs([_make_run(tmp_path, "v1", metrics).path, _make_run(tmp_path, "v2", _metrics(**NEW)).path])
    run1 = text[text.index("run 1: "):text.index("run 2: ")]
    assert "pixel AUROC (uncertainty map)" in run1 and "oracle map" not in run1
    assert _row(run1, "leather").split() == ["leather", "1.0000", "0.9000", "0.8500", "0.8000", "0.6000"]
    assert _row(run1, "mean").split()[-1] == "0.7000"
    run2 = text[text.index("run 2: "):]
    assert "uncertainty" not in run2.split("change:")[0]  # a run without extras keeps the plain table


def test_final_training_loss_per_task_is_listed_so_a_diverged_task_shows(tmp_path):
    metrics = _metrics(**OLD)
    metrics["fit"] = [{"task": 0, "class": "leather", "final_loss": -0.0646},
                      {"task": 1, "class": "grid", "final_loss": 1.102e13},
                      {"task": 2, "class": "transistor", "final_loss": None}]
    text = compare_runs([_make_run(tmp_path, "v1", metrics).path])
    assert "final training loss per task: leather -0.0646, grid 1.102e+13, transistor n/a" in text
    assert "final training loss" not in compare_runs([_make_run(tmp_path, "v2", _metrics(**NEW)).path])
    no_epochs = {**_metrics(**NEW), "fit": [{"task": 0, "class": "leather", "final_loss": None}]}
    assert "final training loss" not in compare_runs([_make_run(tmp_path, "v3", no_epochs).path])


def test_seed_table_groups_runs_that_differ_only_in_seed_and_lists_off_preset_settings(tmp_path):
    import statistics

    images = {0: [0.9, 0.8, 0.7], 1: [0.8, 0.8, 0.8], 2: [0.7, 0.6, 0.9]}
    for seed, image in images.items():
        run = _make_run(tmp_path, "v8", _metrics(**{**NEW, "image": image}))
        run.write_json("config.json", {"run": {"version": "v8", "experiment_name": "demo"},
                                       "train": {"strategy": "moleflow", "seed": seed}, "flow": {"model": "moleflow"}})
    lone = _make_run(tmp_path, "v8", _metrics(**OLD))  # another setting: not part of the seed group
    lone.write_json("config.json", {"run": {"version": "v8"}, "train": {"lr": 0.1}, "flow": {"model": "moleflow"}})
    text = compare_runs([tmp_path], markdown=True)
    means = [sum(v) / 3 for v in images.values()]
    row = next(line for line in text.splitlines() if line.startswith("| v8 | moleflow/moleflow | - | 3 |"))
    assert f"{statistics.mean(means):.4f} ± {statistics.stdev(means):.4f}" in row
    summary = text.split("**over seeds")[0]
    assert "| seed=1 |" in summary and "| seed=2 |" in summary and "| lr=0.1 |" in summary
    assert "lr=0.1 | 3 |" not in text  # the lone run is not averaged with the seeds


def test_a_models_own_default_loss_is_not_a_setting_off_the_preset(tmp_path):
    own = _make_run(tmp_path, "v9", _metrics(**NEW))
    own.write_json("config.json", {"run": {"version": "v9"}, "train": {"loss": ["bce=1.0", "iou=1.0"]},
                                   "flow": {"model": "discriminator"}})
    other = _make_run(tmp_path, "v9", _metrics(**OLD))
    other.write_json("config.json", {"run": {"version": "v9"}, "train": {"loss": ["bce=1.0"]},
                                     "flow": {"model": "discriminator"}})
    summary = compare_runs([tmp_path], markdown=True).split("**over seeds")[0]
    # written when presets were not tied to a model: "v9" was the flow's preset, so the discriminator ran on
    # its own options; read today, the runs have no version (filed under the model) and only --loss is off
    rows = [line for line in summary.splitlines() if "| discriminator | ?/discriminator |" in line]
    assert len(rows) == 2 and rows[0].endswith("| - |") and rows[1].endswith("| loss=bce=1.0 |")


def test_wall_time_is_a_column_and_its_seed_mean_is_reported(tmp_path):
    for seed, wall in ((0, 50.0), (1, 70.0)):
        metrics = _metrics(**NEW)
        metrics["timing"] = {**metrics["timing"], "wall_s": wall}
        run = _make_run(tmp_path, "v9", metrics)
        run.write_json("config.json", {"run": {"version": "v9"}, "train": {"seed": seed}, "flow": {"model": "moleflow"}})
    old = _make_run(tmp_path, "v8", _metrics(**OLD))  # written before wall_s existed
    text = compare_runs([tmp_path], markdown=True)
    summary, seeds = text.split("**over seeds")[0], text.split("**over seeds")[1].split("\n\n")[1]
    assert "| wall s |" in summary.splitlines()[2]
    assert "| 50.0 |" in summary and "| 70.0 |" in summary
    assert any(old.path.name in line and "| n/a |" in line for line in summary.splitlines())
    assert "| wall s (mean) |" in seeds and seeds.rstrip().splitlines()[-1].endswith("| 60.0 |")


def test_runs_on_the_same_classes_get_a_side_by_side_table_per_class(two_runs, tmp_path):
    a, b = two_runs
    text = compare_runs([a.path, b.path])
    head = "image AUROC per class (columns: the runs above, in order)"
    assert head in text
    table = text.split(head, 1)[1]
    assert _row(table, "leather").split() == ["leather", "0.9000", "0.9500"]
    assert _row(table, "mean").split()[1:] == [f"{sum(OLD['image']) / 3:.4f}", f"{sum(NEW['image']) / 3:.4f}"]
    other = _make_run(tmp_path / "other", "v3", {**_metrics(**NEW), "tasks": ["grid", "leather", "transistor"]})
    assert head not in compare_runs([a.path, other.path])  # different class lists: no side-by-side table
