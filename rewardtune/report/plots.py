"""Figures of the paper's analysis (matplotlib, headless: Figure objects, no pyplot state).

Each `*_figure` function takes plain numbers and returns a Figure; `save_png` / `png_bytes` write it.
"""
from __future__ import annotations

import io
import os
import re
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

# Model label -> colour; other labels cycle through the rest.
COLOURS = {"mle": "#1f77b4", "tuned": "#d62728", "run": "#2ca02c"}
CYCLE = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MARKS = (("mean", "-"), ("median", "--"), ("p99", ":"), ("greedy", "-."))


def file_safe(name: str) -> str:
    """A reward or metric name as a file-name fragment."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "reward"


def colour(label: str, i: int = 0) -> str:
    return COLOURS.get(label, CYCLE[i % len(CYCLE)])


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_png(fig: Figure, path: str, dpi: int = 100) -> str:
    with open(path + ".tmp", "wb") as f:
        f.write(png_bytes(fig, dpi))
    os.replace(path + ".tmp", path)
    return path


def reward_distribution_figure(values: dict, summaries: dict, reward: str) -> Figure:
    """Histogram and tail (fraction of samples >= x, log scale) of per-sample rewards per model;
    mean, median, top-1 % (p99) and greedy marked as vertical lines.

    values: {model label: rewards of all samples (any shape)}; summaries: {label: stats.reward_summary}.
    """
    fig = Figure(figsize=(11, 4))
    hist, tail = fig.subplots(1, 2)
    pooled = np.concatenate([np.ravel(v) for v in values.values()])
    edges = np.histogram_bin_edges(pooled, bins=min(40, max(2, len(np.unique(pooled)) * 2)))
    for i, (label, v) in enumerate(values.items()):
        v, c = np.sort(np.ravel(v)), colour(label, i)
        hist.hist(v, bins=edges, histtype="stepfilled", alpha=0.2, color=c)
        hist.hist(v, bins=edges, histtype="step", color=c, label=f"{label} ({v.size} samples)")
        tail.step(v, (v.size - np.arange(v.size)) / v.size, where="pre", color=c, label=label)
        for key, style in MARKS:
            if key in summaries.get(label, {}):
                for ax in (hist, tail):
                    ax.axvline(summaries[label][key], color=c, linestyle=style, linewidth=1.4)
    styles = [Line2D([], [], color="black", linestyle=s, label=k.replace("p99", "top 1 % (p99)")) for k, s in MARKS]
    hist.legend(handles=hist.get_legend_handles_labels()[0] + styles, fontsize=8)
    hist.set_yscale("log")
    hist.set(xlabel=reward, ylabel="samples (log scale)", title=f"per-sample reward: {reward}")
    tail.set_yscale("log")
    tail.axhline(0.01, color="grey", linewidth=0.8)
    tail.set(xlabel=reward, ylabel="fraction of samples >= x", title="the top tail (grey: top 1 %)")
    tail.legend(fontsize=8)
    for ax in (hist, tail):
        ax.grid(alpha=0.3)
    return fig


def best_of_n_figure(curves: dict, reward: str, ceiling: Optional[float] = None) -> Figure:
    """Best-of-N (oracle) and likelihood-reranked curves per model on a log N axis; greedy as a line;
    `ceiling` (the codec's reconstruction of the truth) as a black line when given.

    curves: {label: {"best_of_n_curve": [K], "rerank_curve": [K], "greedy": float}}.
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for i, (label, c) in enumerate(curves.items()):
        col = colour(label, i)
        n = np.arange(1, len(c["best_of_n_curve"]) + 1)
        ax.plot(n, c["best_of_n_curve"], color=col, label=f"{label}: best of N (oracle)")
        ax.plot(n, c["rerank_curve"], color=col, linestyle="--", label=f"{label}: most likely of N")
        if "greedy" in c:
            ax.axhline(c["greedy"], color=col, linestyle=":", label=f"{label}: greedy")
    if ceiling is not None:
        ax.axhline(ceiling, color="black", linewidth=1.2, label="codec ceiling (truth encoded + decoded)")
    ax.set_xscale("log")
    ax.set(xlabel="N samples per image", ylabel=f"mean {reward}", title=f"best-of-N vs likelihood reranking: {reward}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def series(records: Sequence[dict], key: str) -> tuple[list, list]:
    """(steps, values) of `key` over metrics.jsonl records that have it."""
    pts = [(r["step"], r[key]) for r in records if key in r and "step" in r and isinstance(r[key], (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def progression_figure(records: Sequence[dict], val_keys: Optional[Sequence[str]] = None,
                       title: str = "") -> Optional[Figure]:
    """Training reward (else loss) and validation metrics over steps; None when the log is empty.

    val_keys: e.g. ["val/map"]; default every "val/..." key in the log.
    """
    train_key = next((k for k in ("train/reward", "train/loss") if series(records, k)[0]), None)
    if val_keys is None:
        val_keys = sorted({k for r in records for k in r if k.startswith("val/")})
    val_keys = [k for k in val_keys if series(records, k)[0]]
    if train_key is None and not val_keys:
        return None
    fig = Figure(figsize=(11, 3.6))
    left, right = fig.subplots(1, 2)
    if train_key:
        steps, values = series(records, train_key)
        left.plot(steps, values, color="#444444", alpha=0.35, label=train_key)
        if len(values) >= 5:
            w = max(2, len(values) // 10)
            smooth = np.convolve(values, np.ones(w) / w, mode="valid")
            left.plot(steps[w - 1:], smooth, color="black", label=f"{train_key} (moving mean of {w})")
        left.legend(fontsize=8)
    left.set(xlabel="step", ylabel=train_key or "", title="training (sampled)")
    for i, key in enumerate(val_keys):
        steps, values = series(records, key)
        right.plot(steps, values, marker="o", markersize=3, color=CYCLE[i % len(CYCLE)], label=key)
    if val_keys:
        right.legend(fontsize=8)
    right.set(xlabel="step", title="validation (greedy)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def budget_figure(runs: dict, metric: str) -> Optional[Figure]:
    """Validation metric (left) and held-out reward (right, where logged) against the training images
    each run has seen since it started: tuned runs beside their control at equal budget.

    runs: {label: (metrics.jsonl records, images per step, sampled sequences per image or 0 for MLE)}.
    None when no run logged `val/<metric>`.
    """
    key = f"val/{metric}"
    curves = {label: v for label, v in runs.items() if series(v[0], key)[0]}
    if not curves:
        return None
    fig = Figure(figsize=(11, 3.6))
    left, right = fig.subplots(1, 2)
    for i, (label, (records, per_step, samples)) in enumerate(curves.items()):
        how = f" ({samples} samples an image)" if samples else " (MLE)"
        for ax, k in ((left, key), (right, "val/reward")):
            steps, values = series(records, k)
            if steps:
                ax.plot([st * per_step for st in steps], values, marker="o", markersize=3,
                        color=colour(label, i), label=label + how)
    left.set(xlabel="training images seen", ylabel=key, title=f"{key} vs budget")
    right.set(xlabel="training images seen", ylabel="val/reward",
              title="held-out reward (train.eval_reward_samples)" if any(
                  series(r, "val/reward")[0] for r, _, _ in curves.values()) else "no held-out reward logged")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return fig


def analysis_plots(summary: dict, pools: dict, records: Sequence[dict], out_dir: str) -> list[str]:
    """Write the analysis PNGs of `rewardtune.analysis.analyze_run`; returns their paths."""
    paths = []
    for reward in summary["rewards"]:
        per_model = {label: summary["models"][label][reward] for label in pools}
        values = {label: pool.rewards[reward] for label, pool in pools.items()}
        name = file_safe(reward)
        paths.append(save_png(reward_distribution_figure(values, per_model, reward),
                              os.path.join(out_dir, f"distribution_{name}.png")))
        ceiling = summary.get("codec_ceiling", {}).get("rewards", {}).get(reward)
        paths.append(save_png(best_of_n_figure(per_model, reward, ceiling),
                              os.path.join(out_dir, f"best_of_n_{name}.png")))
    fig = progression_figure(records, [f"val/{summary['primary_metric']}"], "reward-risk progression")
    if fig is not None:
        paths.append(save_png(fig, os.path.join(out_dir, "progression.png")))
    return paths
