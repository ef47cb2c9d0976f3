"""BLEU-1..4 and ROUGE-L as pycocoevalcap computes them, in pure Python.

Inputs are tokenised captions (tokens joined by spaces). BLEU is corpus-level: clipped n-gram
matches and candidate n-gram counts summed over all images, the reference length of each image
being the one closest to its candidate's length (ties -> the shorter), brevity penalty
`exp(1 - r/c)` when c < r, and pycocoevalcap's smoothing constants (1e-15 on matches, 1e-9 on
counts). ROUGE-L is the mean over images of the LCS F-measure with beta = 1.2, taking the best
precision and the best recall over the references.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

_TINY, _SMALL = 1e-15, 1e-9  # pycocoevalcap's BleuScorer constants


def _ngram_counts(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _bleu_stats(candidate: str, references: Sequence[str], n: int) -> tuple[int, int, list, list]:
    """-> (candidate length, closest reference length, matches per order, candidate n-grams per order)."""
    words = candidate.split()
    max_ref: Counter = Counter()
    ref_lengths = []
    for ref in references:
        ref_words = ref.split()
        ref_lengths.append(len(ref_words))
        for gram, count in _ngram_counts(ref_words, n).items():
            max_ref[gram] = max(max_ref[gram], count)
    closest = min((abs(length - len(words)), length) for length in ref_lengths)[1]
    correct = [0] * n
    for gram, count in _ngram_counts(words, n).items():
        correct[len(gram) - 1] += min(max_ref.get(gram, 0), count)
    guess = [max(0, len(words) - k) for k in range(n)]
    return len(words), closest, correct, guess


def _combine(testlen: float, reflen: float, correct: Sequence[float], guess: Sequence[float]) -> list:
    """BLEU-1..n from summed statistics (cumulative geometric mean, then the brevity penalty)."""
    scores, product = [], 1.0
    for k in range(len(correct)):
        product *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> tuple[list, list]:
    """-> (corpus BLEU-1..n, per-image [BLEU-1..n]) as pycocoevalcap's `Bleu(4)`."""
    totals = [0, 0, [0] * n, [0] * n]
    per_image = []
    for candidate, refs in zip(candidates, references):
        testlen, reflen, correct, guess = _bleu_stats(candidate, refs, n)
        per_image.append(_combine(testlen, reflen, correct, guess))
        totals[0] += testlen
        totals[1] += reflen
        totals[2] = [a + b for a, b in zip(totals[2], correct)]
        totals[3] = [a + b for a, b in zip(totals[3], guess)]
    return _combine(*totals), per_image


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l_single(candidate: str, references: Sequence[str], beta: float = 1.2) -> float:
    """ROUGE-L of one candidate against its references (pycocoevalcap `Rouge.calc_score`).

    pycocoevalcap splits on single spaces, so an empty caption counts as one empty token.
    """
    cand = candidate.split(" ")
    precision, recall = [], []
    for ref in references:
        ref_tokens = ref.split(" ")
        lcs = lcs_length(ref_tokens, cand)
        precision.append(lcs / len(cand))
        recall.append(lcs / len(ref_tokens))
    p, r = max(precision), max(recall)
    if p == 0 or r == 0:
        return 0.0
    return (1 + beta ** 2) * p * r / (r + beta ** 2 * p)


def rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list]:
    """-> (mean ROUGE-L over images, per-image scores)."""
    scores = [rouge_l_single(c, refs) for c, refs in zip(candidates, references)]
    return (sum(scores) / len(scores) if scores else 0.0), scores
