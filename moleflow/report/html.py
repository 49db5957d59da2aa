"""The report's pages as HTML text: static, one inline style sheet, no script, no network.

Every label is HTML text (wrapped, never cut off); every image links to its full-resolution file.
Tiles carry their state as classes and data attributes (`tile correct`, `data-correct="true"`,
`badge label anomalous`) so a test can read the page as a person sees it.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any, Iterable

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;padding:16px 24px;
 max-width:1500px;color:#1d2327;background:#fafafa;line-height:1.35}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.2em 0 .4em}h3{font-size:1em;margin:.8em 0 .3em}
nav{margin:.3em 0 1em;display:flex;flex-wrap:wrap;gap:.4em 1em}nav a{white-space:normal}
table{border-collapse:collapse;margin:.4em 0}th,td{border:1px solid #ccd;padding:3px 8px;text-align:right;
 vertical-align:top;overflow-wrap:anywhere}th{background:#eef0f3}td.l,th.l{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.plots img{max-width:100%;height:auto;
 border:1px solid #ddd;background:#fff}
.legend{background:#fff;border:1px solid #ccd;padding:8px 12px;margin:.6em 0;display:flex;flex-direction:column;
 gap:6px;max-width:1100px}
.bar{position:relative;display:inline-block;vertical-align:middle;margin:0 6px}.bar img{display:block;width:256px;
 height:12px;border:1px solid #888}.tick{position:absolute;top:-4px;width:2px;height:20px;background:#000}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:14px}
.grid.data{grid-template-columns:repeat(auto-fill,minmax(200px,1fr))}
.tile{margin:0;background:#fff;border:5px solid #999;border-radius:6px;padding:6px;min-width:0}
.tile.correct{border-color:#1e8449}.tile.incorrect{border-color:#c0392b;border-style:dashed}
.tile.undecided{border-color:#999;border-style:dotted}.tile.normal,.tile.anomalous{border-width:1px;border-color:#ccd}
.pics{display:grid;gap:4px}.pics.n1{grid-template-columns:1fr}.pics.n2{grid-template-columns:1fr 1fr}
.pics.n3{grid-template-columns:1fr 1fr 1fr}.pics figure{margin:0}.pics img{width:100%;height:auto;display:block;
 image-rendering:auto}.pics figcaption{font-size:.72em;color:#555;text-align:center;overflow-wrap:anywhere}
.badges{display:flex;flex-wrap:wrap;gap:4px;margin:5px 0 3px;align-items:center}
.badge{display:inline-block;color:#fff;border-radius:10px;padding:1px 9px;font-size:.82em;font-weight:600;
 white-space:normal}.badge.normal{background:#1e8449}.badge.anomalous{background:#c0392b}
.verdict{font-size:.82em;font-weight:600}.verdict.incorrect{color:#c0392b}.verdict.correct{color:#1e8449}
.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;overflow-wrap:anywhere;margin:2px 0}
table.record{font-size:.74em;width:100%;margin:2px 0 0}table.record th{text-align:left;width:34%;
 font-weight:normal}table.record td{text-align:left;font-family:ui-monospace,Menlo,Consolas,monospace}
.swatch{display:inline-block;width:22px;height:12px;border:3px solid;vertical-align:middle;margin-right:4px}
.swatch.correct{border-color:#1e8449}.swatch.incorrect{border-color:#c0392b;border-style:dashed}
.muted{color:#666;font-size:.9em}details{margin:.5em 0}
"""


def fmt(value: Any, digits: int = 4) -> str:
    """A value as a person reads it: floats to `digits` significant digits, NaN and None as n/a, bools yes/no."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else "n/a"
    return str(value)


def page(title: str, nav: Iterable[tuple[str, str]], body: str) -> str:
    links = "".join(f'<a href="{escape(href)}">{escape(text)}</a>' for href, text in nav)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="moleflow report"><title>{escape(title)}</title>'
            f'<style>{STYLE}</style></head><body><h1>{escape(title)}</h1><nav>{links}</nav>\n{body}\n</body></html>\n')


def table(header: list[str], rows: list[list[str]], left: int = 1, escape_cells: bool = True) -> str:
    """A table whose first `left` columns are left-aligned; cells escaped unless escape_cells is False."""
    def cells(tag: str, row: list[str]) -> str:
        raw = not escape_cells and tag == "td"
        return "".join(f'<{tag}{" class=l" if i < left else ""}>{c if raw else escape(c)}</{tag}>'
                       for i, c in enumerate(row))
    return ("<table><tr>" + cells("th", header) + "</tr>"
            + "".join("<tr>" + cells("td", r) + "</tr>" for r in rows) + "</table>")


def plot_img(src: str, alt: str) -> str:
    return f'<a href="{escape(src)}"><img src="{escape(src)}" alt="{escape(alt)}"></a>'


def _picture(src: str, caption: str, eager: bool) -> str:
    lazy = "" if eager else ' loading="lazy"'
    return (f'<figure><a href="{escape(src)}"><img src="{escape(src)}" alt="{escape(caption)}"{lazy}></a>'
            f'<figcaption>{escape(caption)}</figcaption></figure>')


VERDICT = {"FN": "wrong: false negative (anomalous, missed)", "FP": "wrong: false positive (normal, flagged)",
           "TP": "right: anomalous, flagged", "TN": "right: normal, passed", "undecided": "no threshold: undecided"}
RECORD_KEYS = ("filename", "ground_truth", "prediction", "score", "correct", "task", "routed_task", "score_oracle",
               "no_learned_task", "task_range_distance", "task_range_threshold")


def label_badge(label: int) -> str:
    return ('<span class="badge label anomalous">Anomalous</span>' if int(label) else
            '<span class="badge label normal">Normal</span>')


def evaluation_tile(t: dict, eager: bool) -> str:
    """One image on the evaluation page: input, map overlay (and extra maps), badges, verdict, record."""
    r = t["record"]
    state = {True: "correct", False: "incorrect", None: "undecided"}[r.get("correct")]
    pics = [_picture(src, cap, eager) for src, cap in t["pictures"]]
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(fmt(r[k], 6 if k.startswith('score') else 4))}</td></tr>"
                   for k in RECORD_KEYS if k in r)
    return (f'<figure class="tile {state}" data-filename="{escape(r["filename"])}" '
            f'data-correct="{escape(str(r.get("correct")).lower())}" data-outcome="{t["outcome"]}">'
            f'<div class="pics n{len(pics)}">{"".join(pics)}</div><figcaption>'
            f'<div class="badges"><span class="badge score" style="background:{t["score_colour"]}">'
            f'score {escape(fmt(r["score"], 5))}</span>{label_badge(r["ground_truth"])}'
            f'<span class="verdict {state}">{escape(VERDICT[t["outcome"]])}</span></div>'
            f'<div class="path">{escape(t["label"])}</div><table class="record">{rows}</table>'
            f'</figcaption></figure>')


def prediction_tile(t: dict, eager: bool) -> str:
    """One image scored by `moleflow predict`, drawn as the report's evaluation tile (input at its own
    resolution, map beside it, score badge): no ground truth, so the badges are the routed task with its router
    distance and the decision at the routed class's threshold T."""
    r = t["record"]
    decision = decision_of(r)
    distance = r.get("router_distance")
    route = f"task {r['routed_task']} ({r['routed_class']})" + (
        f", router distance {fmt(distance, 5)}" if distance is not None else "") + (
        f", task range {fmt(r['task_range_distance'], 4)} (beyond {fmt(r['task_range_threshold'], 4)}: no "
        "learned task)" if "task_range_distance" in r else "")
    pics = [_picture(src, cap, eager) for src, cap in t["pictures"]]
    return (f'<figure class="tile {decision}" data-filename="{escape(r["filename"])}" data-decision="{decision}">'
            f'<div class="pics n{len(pics)}">{"".join(pics)}</div><figcaption>'
            f'<div class="badges"><span class="badge score" style="background:{DECISION_COLOUR[decision]}">'
            f'score {escape(fmt(r["score"], 5))}</span><span class="badge route">{escape(route)}</span>'
            f'<span class="verdict {decision}">{escape(PREDICTED[decision])}</span></div>'
            f'<div class="path">{escape(r["filename"])}</div></figcaption></figure>')


#: `moleflow predict`'s decision (predictions.jsonl "anomalous": True, False or None without a threshold) by name
DECISION = {True: "anomalous", False: "normal", None: "undecided"}
#: the decision of an image beyond every learned task's range (moleflow.task_range)
UNLEARNED = "no-learned-task"
#: a prediction's score badge: red above the routed class's threshold, green below, grey without one, violet
#: for an image of no learned task
DECISION_COLOUR = {"anomalous": "hsl(0, 75%, 38%)", "normal": "hsl(120, 75%, 38%)", "undecided": "hsl(0, 0%, 55%)",
                   UNLEARNED: "hsl(280, 60%, 45%)"}
PREDICTED = {"anomalous": "anomalous (score >= T)", "normal": "normal (score < T)",
             "undecided": "no threshold for this task: undecided",
             UNLEARNED: "of no learned task: beyond every task's range (the score is the nearest task's, not a "
                        "decision)"}


def decision_of(record: dict) -> str:
    """A prediction record's decision: of no learned task, else anomalous / normal / undecided at T."""
    return UNLEARNED if record.get("no_learned_task") else DECISION[record.get("anomalous")]


def dataset_tile(t: dict, eager: bool) -> str:
    """One image on the dataset page: the image (mask tinted red when anomalous), its label badge, its path."""
    r = t["record"]
    kind = "anomalous" if int(r["ground_truth"]) else "normal"
    src, cap = t["dataset_picture"]
    return (f'<figure class="tile {kind}" data-filename="{escape(r["filename"])}" '
            f'data-label="{int(r["ground_truth"])}"><div class="pics n1">{_picture(src, cap, eager)}</div>'
            f'<figcaption><div class="badges">{label_badge(r["ground_truth"])}'
            f'<span class="muted">{escape(t["defect"])}</span></div>'
            f'<div class="path">{escape(t["label"])}</div></figcaption></figure>')


def colour_bar(src: str, low: float, high: float, marker: float | None = None) -> str:
    tick = ""
    if marker is not None and math.isfinite(marker) and high > low and low <= marker <= high:
        tick = f'<span class="tick" style="left:{100 * (marker - low) / (high - low):.1f}%" title="threshold"></span>'
    return (f'<span>{escape(fmt(low))}</span><span class="bar"><img src="{escape(src)}" alt="colour bar">{tick}'
            f'</span><span>{escape(fmt(high))}</span>')


def evaluation_legend(view: dict) -> str:
    thr = view["threshold"]
    thr_text = (f"decision threshold T = <b>{escape(fmt(thr, 6))}</b> on the image score (the F1-optimal threshold "
                "on this test set): score &ge; T is predicted anomalous") if math.isfinite(thr) else \
        "no decision threshold (undefined on this test set): every tile is undecided"
    rows = [
        f'<div>anomaly map: colour map <b>jet</b> (blue = low, red = high), half-transparent over the image, on '
        f'one scale for every tile of this class: {colour_bar(view["colorbar"], *view["range"], thr)} '
        + ("(blue at the 1st percentile of its maps, the black tick in the middle at T, red at 2T minus that "
           "and above)" if math.isfinite(thr) else "(1st to 99.5th percentile of its maps)") + "</div>",
        f"<div>{thr_text}</div>",
        '<div><span class="swatch correct"></span>green solid border: the decision at T is right &nbsp; '
        '<span class="swatch incorrect"></span>red dashed border: it is wrong (false positive or false negative) '
        '&nbsp; grey dotted: no threshold</div>',
        '<div>score badge: green at the class\'s lowest score, yellow at T, red as far above T as the lowest score is '
        'below it (and beyond); the second badge is the ground truth (Normal / Anomalous)</div>',
        "<div>white line: outline of the ground-truth defect mask</div>",
        f'<div>order: worst first (wrong decisions, most confident first; then right ones, closest calls first); '
        f'{escape(view["shown"])}</div>',
    ]
    for name, (src, low, high) in view["extra_bars"].items():
        rows.append(f'<div>{escape(name)} map (from the model): colour map <b>viridis</b> (dark = low, yellow = high): '
                    f'{colour_bar(src, low, high)}</div>')
    return '<section class="legend">' + "".join(rows) + "</section>"


def dataset_legend(view: dict) -> str:
    return ('<section class="legend"><div><span class="badge normal">Normal</span> a defect-free image &nbsp; '
            '<span class="badge anomalous">Anomalous</span> an image with a defect: its ground-truth mask is '
            'tinted semi-transparent red and outlined in red</div>'
            f'<div>labels are paths relative to the class folder; {escape(view["shown"])}</div></section>')


def grid(tiles: list[str], kind: str = "") -> str:
    return f'<div class="grid {kind}">' + "".join(tiles) + "</div>"
