"""`rewardtune report RUN [RUN ...] --out report.html`: one self-contained HTML file.

Sections: validation metrics (runs side by side), the analysis of `rewardtune analyze` where it
ran (headline numbers + plots) and the training curves, a gallery of the same val images for
every run drawn by the task's `visualize`, and each run's config. Images are embedded as base64
PNG data URIs; there is no JavaScript and no external resource. Every piece of text that comes
from data, configs or file names goes through `esc` (html.escape).
"""
from __future__ import annotations

import base64
import datetime
import glob
import html
import json
import os
from typing import Any, Optional, Sequence

from ..metrics_log import read_metrics_log
from . import plots
from .gallery import Gallery, build_gallery
from .stats import ceiling_values, ceilings

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1400px;
 padding:0 16px;color:#222;line-height:1.4}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.up{color:#0a7a2f}td.down{color:#b3261e}.muted{color:#777;font-size:90%}
.plots img{max-width:100%;border:1px solid #eee;margin:4px 0}
.gallery img{max-width:320px;display:block}.gallery td{font-size:85%}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:480px}
.caption{max-width:320px;word-wrap:break-word}.error{color:#b3261e}
"""


def esc(value: Any) -> str:
    """Any value as HTML-escaped text (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def img_tag(png_base64: str, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{png_base64}">'


def _read_json(path: str) -> Optional[Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_labels(run_dirs: Sequence[str]) -> list[str]:
    """Short unique names: the folder name, or parent/folder where two runs share it."""
    names = [os.path.basename(os.path.abspath(r)) for r in run_dirs]
    return [os.path.join(*os.path.abspath(r).split(os.sep)[-2:]) if names.count(n) > 1 else n
            for r, n in zip(run_dirs, names)]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return esc(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metrics_section(run_dirs: Sequence[str], labels: Sequence[str], stages: Sequence[str],
                    primary: Optional[str] = None, undefined: Optional[Sequence[Optional[float]]] = None) -> str:
    """Rows: metrics, the task's `primary` one first; columns: runs (RUN/eval/val/metrics.json, else the last
    val/* of metrics.jsonl). A run's `undefined` value (its task's "nothing to average", e.g. COCOeval's -1)
    shows as n/a, and no change is computed from it."""
    tables = []
    for run in run_dirs:
        m = _read_json(os.path.join(run, "eval", "val", "metrics.json"))
        if not isinstance(m, dict):
            last = {}
            for r in read_metrics_log(run):
                last.update({k[4:]: v for k, v in r.items() if k.startswith("val/")})
            m = {**last, "source": "metrics.jsonl (no eval)"} if last else {}
        tables.append(m)
    keys = list(dict.fromkeys(k for m in tables for k in m))
    keys.sort(key=lambda k: k != primary)  # stable: the primary metric first, the rest as they came
    undefined = list(undefined or [None] * len(run_dirs))
    if not keys:
        return "<p class='muted'>No run has validation metrics yet (run <code>rewardtune eval RUN</code>).</p>"
    delta = len(run_dirs) == 2
    head = "".join(f"<th>{esc(l)}<br><span class='muted'>{esc(s)}</span></th>" for l, s in zip(labels, stages))
    rows = [f"<tr><th>metric</th>{head}{'<th>change</th>' if delta else ''}</tr>"]
    for k in keys:
        vals = [None if _number(v) and v == u else v for v, u in zip((m.get(k, "") for m in tables), undefined)]
        cells = "".join(f"<td class='num'>{'n/a' if v is None else _fmt(v)}</td>" for v in vals)
        if delta:
            a, b = vals
            numeric = _number(a) and _number(b)
            d = b - a if numeric else None
            cls = "" if not d else ("up" if d > 0 else "down")
            cells += f"<td class='num {cls}'>{f'{d:+.4f}' if numeric else ''}</td>"
        rows.append(f"<tr><th>{esc(k)}</th>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _headline(summary: dict, undefined: Optional[float] = None) -> str:
    """The analysis numbers of one run: per model and reward, distribution + best-of-N + reranked."""
    ns = sorted({int(n) for per in summary.get("models", {}).values() for s in per.values()
                 for n in s.get("best_of_n", {})})
    head = ("<tr><th>model</th><th>reward</th><th>mean</th><th>median</th><th>top 1 % (p99)</th><th>greedy</th>"
            + "".join(f"<th>best of {n}</th>" for n in ns) + "".join(f"<th>most likely of {n}</th>" for n in ns)
            + "</tr>")
    rows = [head]
    for label, per in summary.get("models", {}).items():
        for reward, s in per.items():
            nums = [s.get(k) for k in ("mean", "median", "p99", "greedy")]
            nums += [s.get("best_of_n", {}).get(str(n)) for n in ns] + [s.get("reranked", {}).get(str(n)) for n in ns]
            cells = "".join(f"<td class='num'>{'' if v is None else _fmt(v)}</td>" for v in nums)
            rows.append(f"<tr><th>{esc(label)}</th><td>{esc(reward)}</td>{cells}</tr>")
    note = (f"<p class='muted'>{esc(summary.get('samples'))} samples per image (temperature "
            f"{esc(summary.get('temperature', 1.0))}) on {esc(summary.get('images'))} val images; best-of-N and "
            "most-likely-of-N are exact averages over all N-subsets of each image's samples.</p>")
    for label, ceiling in ceilings(summary):
        cells = ", ".join(f"{esc(k)} {'n/a' if _number(v) and v == undefined else _fmt(v)}"
                          for k, v in ceiling_values(ceiling).items())
        note += (f"<p class='muted'>{esc(label.capitalize())} (the truth encoded and decoded, the most any model "
                 f"writing its tokens can score): {cells}</p>")
    return note + "<table>" + "".join(rows) + "</table>"


HEADROOM_NOTE = ("Headroom before tuning, on the analysed val images: the greedy outputs under other rankings "
                 "(an oracle's among them), the pooled samples of each image (pooled_&lt;n&gt;: the first n samples), "
                 "hedged outputs; the task's docs say how each is built.")


def _headroom(summary: dict) -> str:
    """The task's headroom per model (summary["headroom"], from Task.headroom): rows names, columns models."""
    per_model = summary.get("headroom") or {}
    if not isinstance(per_model, dict) or not per_model:
        return ""
    names = list(dict.fromkeys(k for h in per_model.values() for k in h))
    rows = ["<tr><th>headroom</th>" + "".join(f"<th>{esc(label)}</th>" for label in per_model) + "</tr>"]
    for name in names:
        cells = "".join(f"<td class='num'>{_fmt(h.get(name, ''))}</td>" for h in per_model.values())
        rows.append(f"<tr><th>{esc(name)}</th>{cells}</tr>")
    return f"<p class='muted'>{HEADROOM_NOTE}</p><table>" + "".join(rows) + "</table>"


def _png_file(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


def _plot_order(path: str) -> tuple:
    """Distribution plots first, then best-of-N, then the progression, then anything else."""
    name = os.path.basename(path)
    rank = next((i for i, p in enumerate(("distribution_", "best_of_n_", "progression")) if name.startswith(p)), 3)
    return rank, name


def analysis_section(run_dirs: Sequence[str], labels: Sequence[str],
                     primary_metrics: Optional[Sequence[Optional[str]]] = None,
                     undefined: Optional[Sequence[Optional[float]]] = None) -> str:
    """Per run: the analysis (headline table + PNGs) where it ran, else its training curves
    (training reward or loss, and val/<primary metric>, else every val/ metric). `undefined`: per run,
    as in `metrics_section`."""
    parts = []
    primary_metrics = primary_metrics or [None] * len(run_dirs)
    undefined = undefined or [None] * len(run_dirs)
    for run, label, primary, missing in zip(run_dirs, labels, primary_metrics, undefined):
        folder = os.path.join(run, "analysis")
        summary = _read_json(os.path.join(folder, "summary.json"))
        pngs = sorted(glob.glob(os.path.join(folder, "*.png")), key=_plot_order)
        body = _headline(summary, missing) + _headroom(summary) if isinstance(summary, dict) else ""
        body += "".join(img_tag(_png_file(p), os.path.basename(p)) for p in pngs)
        if not any(os.path.basename(p) == "progression.png" for p in pngs):
            records = read_metrics_log(run)
            keys = [f"val/{primary}"] if primary and plots.series(records, f"val/{primary}")[0] else None
            fig = plots.progression_figure(records, keys, title=f"training curves: {label}")
            body += img_tag(base64.b64encode(plots.png_bytes(fig)).decode("ascii"), "training curves") if fig else (
                "<p class='muted'>No metrics.jsonl.</p>")
        hint = "" if pngs else (f"<p class='muted'>No analysis yet: <code>rewardtune analyze {esc(run)} "
                                "[--init MLE_RUN] --samples 1000</code>.</p>")
        parts.append(f"<h3>{esc(label)}</h3>{hint}<div class='plots'>{body}</div>")
    return "".join(parts)


def budget_section(run_dirs: Sequence[str], labels: Sequence[str], configs: Sequence[dict],
                   primary: Optional[str]) -> str:
    """The runs' val/<primary> (and held-out reward) against training images seen, on one plot: a tuned
    run beside its control (the MLE run trained on for as many steps) shows what the budget bought."""
    if not primary or len(run_dirs) < 2:
        return "<p class='muted'>Needs two or more runs (e.g. the tuned run and its control).</p>"
    runs = {}
    for run, label, config in zip(run_dirs, labels, configs):
        train = config.get("train", {})
        samples = int(train.get("num_samples", 0)) if train.get("stage") == "reward" else 0
        runs[label] = (read_metrics_log(run), int(train.get("batch_size", 1)), samples)
    fig = plots.budget_figure(runs, primary)
    if fig is None:
        return f"<p class='muted'>No run logged val/{esc(primary)}.</p>"
    return img_tag(base64.b64encode(plots.png_bytes(fig)).decode("ascii"), "budget")


def gallery_section(gallery: Gallery) -> str:
    """Rows: val images; columns: runs (a dense task's first: the truth through the code). Each cell: the task's
    drawing, the output text, its rewards."""
    columns = ([gallery.code] if gallery.code is not None else []) + list(gallery.columns)
    head = "<tr><th>image</th>" + "".join(f"<th>{esc(c.label)}</th>" for c in columns) + "</tr>"
    errors = "".join(f"<p class='error'>{esc(c.label)}: {esc(c.error)}</p>" for c in columns if c.error)
    rows = [head]
    for i, image_id in enumerate(gallery.ids):
        target = gallery.targets[i] if i < len(gallery.targets) else None
        first = f"<td><b>{esc(image_id)}</b>" + (f"<div class='caption muted'>truth: {esc(target)}</div>"
                                                  if target else "") + "</td>"
        cells = []
        for c in columns:
            cell = c.cells[i] if i < len(c.cells) else None
            if cell is None:
                cells.append("<td></td>")
                continue
            inner = img_tag(cell.png, f"{c.label} {image_id}") if cell.png else ""
            inner += f"<div class='error'>{esc(cell.error)}</div>" if cell.error else ""
            inner += f"<div class='caption'>{esc(cell.text)}</div>" if cell.text is not None else ""
            inner += "".join(f"<div class='muted'>{esc(k)}: {v:.3f}</div>" for k, v in cell.rewards.items())
            cells.append(f"<td>{inner}</td>")
        rows.append(f"<tr>{first}{''.join(cells)}</tr>")
    if not gallery.ids:
        return errors + "<p class='muted'>No run could be loaded for the gallery.</p>"
    return errors + "<table class='gallery'>" + "".join(rows) + "</table>"


def configs_section(run_dirs: Sequence[str], labels: Sequence[str]) -> str:
    parts = []
    for run, label in zip(run_dirs, labels):
        config = _read_json(os.path.join(run, "config.json"))
        text = json.dumps(config, indent=2, sort_keys=True) if config is not None else "(no config.json)"
        parts.append(f"<details><summary>{esc(label)} <span class='muted'>{esc(os.path.abspath(run))}</span>"
                     f"</summary><pre>{esc(text)}</pre></details>")
    return "".join(parts)


def write_report(run_dirs: Sequence[str], out_path: str, images: int = 8, note: str = "") -> str:
    """Write the report of `run_dirs` (e.g. [MLE_RUN, TUNED_RUN]) to `out_path`; returns the path.
    `note`: a paragraph shown under the title (the demos say there what they show and why)."""
    run_dirs = list(run_dirs)
    labels = run_labels(run_dirs)
    configs = [_read_json(os.path.join(r, "config.json")) or {} for r in run_dirs]
    stages = [{"mle": "MLE", "reward": "tuned"}.get(c.get("train", {}).get("stage"), "?") for c in configs]
    tasks = sorted({str(c.get("task", "?")) for c in configs})
    gallery = build_gallery(run_dirs, labels, images)
    primary = next((c.primary_metric for c in gallery.columns if c.primary_metric), None)
    undefined = [c.undefined_metric for c in gallery.columns]
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>rewardtune report: {esc(', '.join(labels))}</title>
<style>{STYLE}</style></head><body>
<h1>rewardtune report</h1>
<p class="muted">task {esc(', '.join(tasks))} &middot; runs {esc(', '.join(labels))} &middot; written {esc(now)}</p>
{f'<p class="note">{esc(note)}</p>' if note else ""}
<p><a href="#metrics">metrics</a> &middot; <a href="#analysis">analysis</a> &middot;
<a href="#budget">budget</a> &middot; <a href="#gallery">gallery</a> &middot; <a href="#configs">configs</a></p>
<h2 id="metrics">Validation metrics (greedy decoding)</h2>
{metrics_section(run_dirs, labels, stages, primary, undefined)}
<h2 id="analysis">Analysis: sample pools and training curves</h2>
{analysis_section(run_dirs, labels, [c.primary_metric for c in gallery.columns], undefined)}
<h2 id="budget">Budget: validation metric against training images seen</h2>
{budget_section(run_dirs, labels, configs, primary)}
<h2 id="gallery">Gallery: the same val images, greedy output of each run</h2>
{gallery_section(gallery)}
<h2 id="configs">Configs</h2>
{configs_section(run_dirs, labels)}
</body></html>
"""
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    with open(out_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(doc)
    os.replace(out_path + ".tmp", out_path)
    return out_path
