"""BLEU-1..4 and ROUGE-L: hand-computed cases and equality with pycocoevalcap."""
import math

import numpy as np
import pytest

from rewardtune.tasks.captioning.bleu_rouge import bleu, lcs_length, rouge_l, rouge_l_single


def test_bleu_hand_cases():
    # Closest reference length (3) -> no brevity penalty; 1-, 2-, 3-gram precision 1; no 4-grams,
    # so pycocoevalcap's smoothing gives p4 = 1e-15 / 1e-9 = 1e-6 and BLEU-4 = 1e-6 ** (1/4).
    scores, _ = bleu(["a b c"], [["a b d", "a b c d e"]])
    assert scores[:3] == pytest.approx([1.0, 1.0, 1.0], abs=1e-8)
    assert scores[3] == pytest.approx(1e-6 ** 0.25, rel=1e-6)
    # Candidate 2 words, reference 4 -> brevity penalty exp(1 - 4/2).
    scores, _ = bleu(["a b"], [["a b c d"]])
    assert scores[:2] == pytest.approx([math.exp(-1), math.exp(-1)], rel=1e-8)
    # Clipping: "the the the" vs "the cat" -> unigram precision 1/3.
    scores, _ = bleu(["the the the"], [["the cat"]])
    assert scores[0] == pytest.approx(1 / 3, rel=1e-8)


def test_bleu_is_corpus_level():
    # Corpus: matches and counts summed first (2/2 + 0/2 -> 1/2), not the mean of per-image scores.
    scores, per_image = bleu(["a b", "c d"], [["a b"], ["e f"]])
    assert scores[0] == pytest.approx(0.5, rel=1e-8)
    assert per_image[0][0] == pytest.approx(1.0, rel=1e-8) and per_image[1][0] < 1e-6


def test_rouge_l_hand_case():
    # LCS("a b c d", "a x c d y") = 3; P = 3/4, R = 3/5; F = (1 + 1.2^2) P R / (R + 1.2^2 P).
    p, r = 3 / 4, 3 / 5
    assert rouge_l_single("a b c d", ["a x c d y"]) == pytest.approx(2.44 * p * r / (r + 1.44 * p))
    assert lcs_length("a b c".split(), "c a b".split()) == 2
    assert rouge_l_single("a b", ["c d"]) == 0.0
    # Best precision and best recall are taken over the references separately.
    p, r = 1.0, 2 / 4
    assert rouge_l_single("a b", ["a b c d", "x a"]) == pytest.approx(2.44 * p * r / (r + 1.44 * p))


def test_equal_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(10)]

    def caption():
        return " ".join(rng.choice(vocab, size=int(rng.integers(1, 14))))

    refs = [[caption() for _ in range(int(rng.integers(1, 6)))] for _ in range(60)]
    cands = [caption() for _ in range(60)]
    gts, res = dict(enumerate(refs)), {i: [c] for i, c in enumerate(cands)}
    expected, expected_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    got, per_image = bleu(cands, refs)
    assert np.allclose(got, expected, rtol=0, atol=1e-9)
    assert np.allclose(np.array(per_image).T, np.array(expected_per_image), rtol=0, atol=1e-9)
    expected_rouge, expected_rouge_images = Rouge().compute_score(gts, res)
    rouge, rouge_images = rouge_l(cands, refs)
    assert rouge == pytest.approx(expected_rouge, abs=1e-12)
    assert np.allclose(rouge_images, expected_rouge_images, rtol=0, atol=1e-12)
