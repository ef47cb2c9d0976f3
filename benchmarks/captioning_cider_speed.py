"""Time CIDEr-D on 5,000 captions: rewardtune's vectorised version vs pycocoevalcap's Cider.

    .venv/bin/python benchmarks/captioning_cider_speed.py [--images 5000] [--refs 5] [--repeats 3]

Captions come from a small English-like grammar (seeded), already tokenised, 5 references per
image. Prints both times (best of --repeats), the speed-up and the largest per-image difference.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from rewardtune.tasks.captioning.cider import CiderD, cider_d

ADJECTIVES = "red blue green yellow small large old young wooden white black striped tall".split()
NOUNS = ("man woman dog cat horse bus train table plate pizza street bench kite boat bird car "
         "giraffe elephant sign clock phone bed toilet kitchen field beach tree building child").split()
VERBS = "sitting standing riding holding walking eating parked flying lying looking".split()
PREPOSITIONS = "on in near under next to with beside behind above at".split()


def caption(rng: np.random.Generator) -> str:
    def phrase() -> str:
        words = ["a"] + list(rng.choice(ADJECTIVES, size=int(rng.integers(0, 3)))) + [rng.choice(NOUNS)]
        return " ".join(words)
    parts = [phrase(), rng.choice(VERBS), rng.choice(PREPOSITIONS), phrase()]
    if rng.random() < 0.5:
        parts += [rng.choice(PREPOSITIONS), phrase()]
    return " ".join(parts)


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    refs = [[caption(rng) for _ in range(args.refs)] for _ in range(args.images)]
    cands = [caption(rng) for _ in range(args.images)]

    from pycocoevalcap.cider.cider import Cider
    gts, res = dict(enumerate(refs)), {i: [c] for i, c in enumerate(cands)}
    t_ref, (score_ref, scores_ref) = best_time(lambda: Cider().compute_score(gts, res), args.repeats)
    t_ours, (score, scores) = best_time(lambda: cider_d(cands, refs), args.repeats)
    reward = CiderD.from_references(refs)
    t_reward, _ = best_time(lambda: reward(cands, refs), args.repeats)

    print(f"CIDEr-D on {args.images} captions x {args.refs} references (best of {args.repeats})")
    print(f"  pycocoevalcap Cider      {t_ref:8.3f} s   score {score_ref:.6f}")
    print(f"  rewardtune cider_d       {t_ours:8.3f} s   score {score:.6f}   {t_ref / t_ours:5.1f}x faster")
    print(f"  rewardtune CiderD reward {t_reward:8.3f} s   (df fixed from the references)")
    print(f"  largest per-image difference {np.abs(np.asarray(scores_ref) - scores).max():.2e}")


if __name__ == "__main__":
    main()
