"""`rewardtune analyze RUN [--init MLE_RUN]`: the paper's analysis of a run's sample pool (docs/method.md#the-papers-analysis).

For the first N val images, draw K samples per image from each model (MLE init and tuned), score
every sample with every reward of the task, and write:

    OUT/samples.jsonl   one row per sample: {"model", "image", "sample", "log_prob", "<reward>": ...}
    OUT/summary.json    per model and reward: mean, median, top-1 % (p99), greedy, best-of-N and
                        likelihood-reranked curves (exact, see report/stats.py); where the task has a
                        headroom (Task.headroom: detection), "headroom": per model, what its own
                        outputs hold before tuning (other rankings, pooled samples, hedged classes)
    OUT/*.png           reward distribution, best-of-N / reranking, reward-risk progression

Samples and greedy outputs are decoded as the reward step decodes them (no step log-probs), so
their rewards are the ones tuning optimised. Sampling is at temperature 1 (the model's own
distribution), in chunks of `batch_size` sequences with the KV cache, and deterministic given the
seed: image i's samples come from a generator seeded with (seed, i), whatever N is.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint
from .data.files import write_json_atomic
from .errors import UserError
from .evaluate import load_run
from .metrics_log import read_metrics_log
from .model.encdec import EncoderDecoder, image_generator
from .outputs import resolve_reward, score_outputs
from .report import plots, stats
from .tasks.base import Task, decode_all, decode_tokens, encode_all, reads_log_probs

CURVE_POINTS = (1, 10, 100, 1000, 10000)


@dataclass
class SamplePool:
    """K scored samples per image from one model. Rewards: {name: (I, K)}; greedy: {name: (I,)}."""

    ids: list
    log_probs: np.ndarray  # (I, K)
    rewards: dict = field(default_factory=dict)  # {reward name: (I, K)}
    parts: dict = field(default_factory=dict)  # {"reward/part": (I, K)} per-sample parts of rewards
    greedy: dict = field(default_factory=dict)  # {reward name: (I,)}
    # with keep_outputs (for Task.headroom): per image the greedy (tokens, step log-probs) and the K samples
    # decoded with their step log-probs
    greedy_steps: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


@torch.no_grad()
def sample_pool(model: EncoderDecoder, task: Task, split, indices: Sequence[int], num_samples: int, *,
                seed: int = 0, batch_size: int = 256, temperature: float = 1.0,
                rewards: Optional[dict] = None, bar: Optional[tqdm] = None, keep_outputs: bool = False) -> SamplePool:
    """Draw and score `num_samples` samples (and the greedy output) for each image split[i], i in indices.

    rewards: {name: reward fn}, default every reward of the task. keep_outputs: also keep what
    Task.headroom reads (SamplePool.greedy_steps, .outputs); the draws are the same either way.
    """
    reward_fns = rewards if rewards is not None else task.rewards
    model.eval()
    device = next(model.parameters()).device
    indices = list(indices)
    images, targets, ids = split.batch(indices)
    images = images.to(device)
    keep_lp = keep_outputs or reads_log_probs(task.codec)
    greedy = model.generate(images, 1, greedy=True, return_step_log_probs=keep_lp)
    greedy_rewards, _ = score_outputs(reward_fns, decode_all(task.codec, greedy, images=images), targets)
    greedy_steps = _steps(greedy) if keep_outputs else []
    log_probs, rewards, parts, kept = [], {}, {}, []
    for row, (i, target) in enumerate(zip(indices, targets)):
        generator = image_generator(seed, i, device)
        image = images[row:row + 1]
        chunks = []
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            gen = model.generate(image, n, temperature=temperature, generator=generator,
                                 return_step_log_probs=keep_lp)
            values, named = score_outputs(reward_fns, decode_all(task.codec, gen, images=image), [target] * n)
            chunks.append((gen.log_probs.double().cpu().numpy(), values, named,
                           decode_all(task.codec, gen, gen.step_log_probs.float().cpu(), images=image)
                           if keep_outputs else []))
            if bar is not None:
                bar.update(n)
        log_probs.append(np.concatenate([c[0] for c in chunks]))
        kept.append([o for c in chunks for o in c[3]])
        for store, k in ((rewards, 1), (parts, 2)):
            for name in chunks[0][k]:
                store.setdefault(name, []).append(np.concatenate([c[k][name] for c in chunks]))
    stack = lambda d: {name: np.stack(rows) for name, rows in d.items()}  # noqa: E731
    return SamplePool(list(ids), np.stack(log_probs), stack(rewards), stack(parts), greedy_rewards,
                      greedy_steps, kept if keep_outputs else [])


def _steps(gen) -> list:
    """Per sequence of a Generation with step log-probs: (tokens LongTensor[T_i], FloatTensor[T_i, V]) on the CPU."""
    tokens, lengths, lp = gen.tokens.cpu(), gen.lengths.cpu(), gen.step_log_probs.float().cpu()
    return [(tokens[i, :lengths[i]], lp[i, :lengths[i]]) for i in range(tokens.shape[0])]


def pool_headroom(task: Task, pool: SamplePool, targets: Sequence[Any]) -> Optional[dict]:
    """The task's headroom before tuning (Task.headroom) on a pool sampled with keep_outputs; None
    when the task has none."""
    if task.headroom is None or not pool.greedy_steps:
        return None
    return task.headroom(pool.greedy_steps, pool.outputs, list(targets), list(pool.ids))


def format_headroom(headroom: dict) -> str:
    """name value pairs on one line: numbers to 3 decimals, text as it is."""
    return " ".join(f"{k} {v:.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k} {v}"
                    for k, v in headroom.items())


def codec_ceiling(task: Task, split, indices: Sequence[int], rewards: Optional[dict] = None, codec=None,
                  batch_size: int = 256) -> dict:
    """The truth of each image passed through the codec (encode, then decode with the image) and scored: the
    most any model that writes this codec's tokens can get on these images. {"rewards": {name: mean},
    "metrics": {...}}. `codec`: another codec than the task's (the grid code a learned code replaces).

    It separates what the output code loses (grid, bins, palette, vocabulary) from what the model loses.
    Captioning's encode takes the first reference, which is then scored against all references (itself
    included): an upper bound, not a human baseline.
    """
    reward_fns = rewards if rewards is not None else task.rewards
    codec = codec if codec is not None else task.codec
    indices = list(indices)
    outputs, targets, ids = [], [], []
    for start in range(0, len(indices), batch_size):
        images, chunk_targets, chunk_ids = split.batch(indices[start:start + batch_size])
        tokens = encode_all(codec, chunk_targets)
        outputs += decode_tokens(codec, [t.tolist() for t in tokens], images)
        targets += chunk_targets
        ids += chunk_ids
    values, _ = score_outputs(reward_fns, outputs, targets)
    return {"rewards": {name: float(np.mean(v)) for name, v in values.items()},
            "metrics": {name: float(v) for name, v in task.metrics(outputs, targets, ids).items()}}


def ceilings(task: Task, split, indices: Sequence[int], rewards: Optional[dict] = None) -> dict:
    """{"codec_ceiling": the task's codec's}, and where the task's codec is a learned code that replaces a
    grid code (its `grid_codec`), "grid_codec_ceiling": the grid code's on the same images, side by side."""
    out = {"codec_ceiling": codec_ceiling(task, split, indices, rewards)}
    grid = getattr(task.codec, "grid_codec", None)
    if grid is not None:
        out["grid_codec_ceiling"] = codec_ceiling(task, split, indices, rewards, codec=grid)
    return out


def summarize_pool(pool: SamplePool) -> dict:
    """{reward: distribution summary + best-of-N and reranked values and full curves}."""
    out = {}
    for name, table in pool.rewards.items():
        best, reranked = stats.best_of_n_curve(table), stats.rerank_curve(table, pool.log_probs)
        out[name] = {**stats.reward_summary(table, pool.greedy[name]),
                     "best_of_n": stats.at(best, CURVE_POINTS), "reranked": stats.at(reranked, CURVE_POINTS),
                     "greedy_per_image": pool.greedy[name].tolist(),
                     "best_of_n_curve": best.tolist(), "rerank_curve": reranked.tolist()}
    return out


def write_samples(pools: dict, path: str) -> None:
    """Per-sample rows of every pool as JSONL."""
    with open(path + ".tmp", "w") as f:
        for label, pool in pools.items():
            columns = {**pool.rewards, **pool.parts}
            for row, image_id in enumerate(pool.ids):
                for j in range(pool.log_probs.shape[1]):
                    record = {"model": label, "image": image_id, "sample": j,
                              "log_prob": round(float(pool.log_probs[row, j]), 6)}
                    record.update({name: float(table[row, j]) for name, table in columns.items()})
                    f.write(json.dumps(record, default=str) + "\n")
    os.replace(path + ".tmp", path)


def _models(run_dir: str, init_dir: Optional[str], checkpoint_name: Optional[str]) -> dict:
    """{label: (run_dir, checkpoint, config, task, model)}: the init as "mle", the run by its stage; each
    at its standing checkpoint (checkpoint.standing) unless `checkpoint_name` names the run's."""
    checkpoint_name = checkpoint.resolve(run_dir, checkpoint_name)
    config, task, model = load_run(run_dir, checkpoint_name)
    models = {}
    if init_dir:  # tuning started from the init's standing checkpoint: analyse that one
        init_name = checkpoint.standing(init_dir)
        models["mle"] = (init_dir, init_name, *load_run(init_dir, init_name))
    label = "tuned" if config.train.stage == "reward" else "mle"
    if label in models:
        label = "run"
    models[label] = (run_dir, checkpoint_name, config, task, model)
    return models


def _reward_fns(task: Task, tuned_on: str) -> dict:
    """Every reward of the task, plus the user reward (package.module:function) the run was tuned on."""
    fns = dict(task.rewards)
    if tuned_on and tuned_on not in fns:
        fns[tuned_on] = resolve_reward(task, tuned_on)
    return fns


def analyze_run(run_dir: str, init_dir: Optional[str] = None, samples: int = 100, images: int = 16,
                out_dir: Optional[str] = None, seed: int = 0, batch_size: int = 256,
                checkpoint_name: Optional[str] = None, temperature: float = 1.0) -> dict:
    """Sample, score, summarise and plot a run (and its MLE init); returns the summary written to OUT."""
    if samples < 1 or images < 1 or batch_size < 1:
        raise UserError("analyze: --samples, --images and the batch size must be >= 1")
    t0 = time.time()
    models = _models(run_dir, init_dir, checkpoint_name)
    _, _, config, task, _ = models[list(models)[-1]]
    out_dir = out_dir or os.path.join(run_dir, "analysis")
    os.makedirs(out_dir, exist_ok=True)
    split = task.datasets()["val"]  # one split for both models: the same images
    indices = range(min(images, len(split)))
    if not indices:
        raise UserError(f"{run_dir}: the val split is empty; nothing to analyse")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bar = tqdm(total=len(models) * len(indices) * samples, unit="sample", dynamic_ncols=True, desc="analyze")
    pools = {}
    for label, (_, _, _, model_task, model) in models.items():
        bar.set_postfix(model=label)
        pools[label] = sample_pool(model.to(device), model_task, split, indices, samples, seed=seed,
                                   batch_size=batch_size, temperature=temperature,
                                   rewards=_reward_fns(model_task, config.train.reward), bar=bar,
                                   keep_outputs=model_task.headroom is not None)
    bar.close()
    headroom = {label: pool_headroom(models[label][3], pool, [split.targets[i] for i in indices])
                for label, pool in pools.items()}
    for pool in pools.values():  # the decoded outputs are not needed past here
        pool.greedy_steps, pool.outputs = [], []
    ceiling = ceilings(task, split, indices, _reward_fns(task, config.train.reward))
    rewards = list(pools[list(pools)[-1]].rewards)
    primary = config.train.reward if config.train.reward in rewards else rewards[0]
    summary = {"run": os.path.abspath(run_dir), "init": os.path.abspath(init_dir) if init_dir else None,
               "task": task.name, "samples": samples, "images": len(indices), "seed": seed,
               "temperature": temperature, "primary_reward": primary, "rewards": rewards,
               "primary_metric": task.primary_metric,
               "checkpoints": {label: [os.path.abspath(m[0]), m[1]] for label, m in models.items()},
               "models": {label: summarize_pool(pool) for label, pool in pools.items()},
               **ceiling}
    if any(h is not None for h in headroom.values()):
        summary["headroom"] = {label: h for label, h in headroom.items() if h is not None}
    write_samples(pools, os.path.join(out_dir, "samples.jsonl"))
    plots.analysis_plots(summary, pools, read_metrics_log(run_dir), out_dir)
    summary["time_s"] = round(time.time() - t0, 2)
    write_json_atomic(summary, os.path.join(out_dir, "summary.json"))
    print(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """A short plain-text table of the headline numbers, one line per model and reward."""
    lines = [f"{summary['samples']} samples x {summary['images']} val images ({summary['task']})"]
    for label, per_reward in summary["models"].items():
        for name, s in per_reward.items():
            bon = " ".join(f"{n}:{v:.3f}" for n, v in s["best_of_n"].items())
            rr = " ".join(f"{n}:{v:.3f}" for n, v in s["reranked"].items())
            lines.append(f"{label:>6} {name}: mean {s['mean']:.3f} median {s['median']:.3f} top1% {s['p99']:.3f} "
                         f"greedy {s['greedy']:.3f} | best-of-N {bon} | reranked {rr}")
    for label, ceiling in stats.ceilings(summary):
        lines.append(f"{label} (the truth encoded and decoded): "
                     + " ".join(f"{k} {v:.3f}" for k, v in stats.ceiling_values(ceiling).items()))
    for label, headroom in summary.get("headroom", {}).items():
        lines.append(f"headroom ({label}): {format_headroom(headroom)}")
    return "\n".join(lines)
