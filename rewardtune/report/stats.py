"""Statistics over a table of sampled rewards: pure numpy functions, no I/O.

Shapes: I images, K samples per image. Every curve is exact: the value at N is the average, over
all N-subsets of an image's K samples (drawn without replacement), of the subset's best reward
(best-of-N) or of the reward of its most likely sample (likelihood reranking). By order statistics
the rank-i sample (0-based, ascending) is the subset's top with probability C(i, N-1) / C(K, N),
so each curve is one matrix product. This is the unbiased estimate, for N <= K, of the expected
best-of-N of N independent model samples.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def _log_factorials(k: int) -> np.ndarray:
    """[log 0!, log 1!, ..., log k!]."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, k + 1, dtype=np.float64)))])


@lru_cache(maxsize=8)
def top_of_subset_weights(k: int) -> np.ndarray:
    """W (K, K): W[N-1, i] = P(the rank-i of K values is the top of a uniform random N-subset)."""
    lf = _log_factorials(k)
    n = np.arange(1, k + 1)[:, None]  # (K, 1) subset sizes
    i = np.arange(k)[None, :]  # (1, K) ranks, ascending
    valid = i >= n - 1
    j = np.where(valid, i, n - 1)  # keep the gather in range where the weight is 0 anyway
    log_w = (lf[j] - lf[n - 1] - lf[j - n + 1]) - (lf[k] - lf[n] - lf[k - n])
    w = np.where(valid, np.exp(log_w), 0.0)
    w.setflags(write=False)
    return w  # each row sums to 1


def best_of_n_curve(rewards: np.ndarray) -> np.ndarray:
    """Rewards (I, K) -> (K,): at N-1, the expected best reward among N of the K samples, mean over images."""
    rewards = np.atleast_2d(np.asarray(rewards, np.float64))
    ranked = np.sort(rewards, axis=1)  # (I, K) ascending
    return (ranked @ top_of_subset_weights(rewards.shape[1]).T).mean(0)


def rerank_curve(rewards: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
    """Rewards, log-probs (I, K) -> (K,): expected reward of the most likely of N samples, mean over images.

    Samples with equal log-probability tie; a tie is broken uniformly at random, so tied samples
    count with their mean reward.
    """
    rewards = np.atleast_2d(np.asarray(rewards, np.float64))
    log_probs = np.atleast_2d(np.asarray(log_probs, np.float64))
    assert rewards.shape == log_probs.shape, f"{rewards.shape} vs {log_probs.shape}"
    ranked = np.stack([_by_likelihood(r, lp) for r, lp in zip(rewards, log_probs)])  # (I, K)
    return (ranked @ top_of_subset_weights(rewards.shape[1]).T).mean(0)


def _by_likelihood(rewards: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
    """(K,), (K,) -> rewards in ascending log-prob order, tied log-probs replaced by their mean reward."""
    uniq, group = np.unique(log_probs, return_inverse=True)
    mean = np.bincount(group, weights=rewards) / np.bincount(group)
    return mean[np.sort(group)]  # groups are numbered in ascending log-prob order


def at(curve: np.ndarray, ns=(1, 10, 100, 1000)) -> dict:
    """{N: curve[N-1]} for the N that the curve reaches."""
    return {int(n): float(curve[n - 1]) for n in ns if n <= len(curve)}


def reward_summary(rewards: np.ndarray, greedy: np.ndarray | None = None) -> dict:
    """Rewards (I, K) pooled over images -> mean, std, median, 99th percentile (top 1 %), top-1 % mean, greedy."""
    flat = np.asarray(rewards, np.float64).ravel()
    p99 = float(np.percentile(flat, 99))
    top = np.sort(flat)[-max(1, int(round(0.01 * flat.size))):]
    out = {"mean": float(flat.mean()), "std": float(flat.std()), "median": float(np.median(flat)),
           "p99": p99, "top1_mean": float(top.mean()), "max": float(flat.max()), "min": float(flat.min())}
    if greedy is not None:
        out["greedy"] = float(np.mean(greedy))
    return out


def ceiling_values(ceiling: dict) -> dict:
    """The codec ceiling of an analysis summary flattened for display: rewards by name, metrics as "name (metric)"."""
    return {**ceiling.get("rewards", {}), **{f"{k} (metric)": v for k, v in ceiling.get("metrics", {}).items()}}


def ceilings(summary: dict) -> list[tuple[str, dict]]:
    """(label, ceiling) of each codec ceiling of an analysis summary that has rewards: the run's codec, and
    where it is a learned code, the grid code it replaces beside it."""
    both = bool(summary.get("grid_codec_ceiling"))
    found = [("learned code ceiling" if both else "codec ceiling", summary.get("codec_ceiling") or {}),
             ("grid code ceiling", summary.get("grid_codec_ceiling") or {})]
    return [(label, ceiling) for label, ceiling in found if ceiling.get("rewards")]
