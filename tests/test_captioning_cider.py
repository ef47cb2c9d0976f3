"""CIDEr-D: hand-computed cases, equality with pycocoevalcap's Cider, the fixed-df (reward) mode."""
import json
import math

import numpy as np
import pytest

from rewardtune.tasks.captioning.cider import CiderD, NgramTable, cider_d

cider_scorer = pytest.importorskip("pycocoevalcap.cider.cider_scorer")
from pycocoevalcap.cider.cider import Cider  # noqa: E402


def random_corpus(seed, images, words=12):
    """Captions over a small vocabulary (so n-grams repeat), 0-12 words, 1-6 references."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(words)]

    def caption():
        return " ".join(rng.choice(vocab, size=int(rng.integers(0, 13))))

    refs = [[caption() for _ in range(int(rng.integers(1, 7)))] for _ in range(images)]
    return [caption() for _ in range(images)], refs


def reference_cider(cands, refs):
    score, scores = Cider().compute_score({i: r for i, r in enumerate(refs)},
                                          {i: [c] for i, c in enumerate(cands)})
    return score, np.asarray(scores)


def test_hand_computed_exact_match():
    # Image A: identical 2-word caption -> orders 1 and 2 give cosine 1, orders 3 and 4 give 0:
    # 10 * mean(1, 1, 0, 0) = 5. Image B: no shared n-gram -> 0.
    score, scores = cider_d(["a b", "c"], [["a b"], ["d"]])
    assert scores == pytest.approx([5.0, 0.0], abs=1e-12)
    assert score == pytest.approx(2.5, abs=1e-12)


def test_hand_computed_clipping_and_length_penalty():
    # Image A: candidate "a a" vs reference "a"; idf = log 2 for every n-gram (2 images, df <= 1).
    # Unigrams: min(2 log2, log2) * log2 / (|2 log2| |log2|) = 1/2 (clipping; 1 without it).
    # Bigrams: the reference has none -> 0. Length = number of bigrams: 1 vs 0 -> exp(-1 / 72).
    _, scores = cider_d(["a a", "x"], [["a"], ["y"]])
    assert scores[0] == pytest.approx(10 * 0.5 / 4 * math.exp(-1 / 72), abs=1e-12)
    assert scores[1] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocoevalcap(seed):
    cands, refs = random_corpus(seed, images=80)
    cands[0], refs[1] = "", refs[1] + [""]  # empty candidate, empty reference
    cands[2] = refs[2][0]  # a perfect match
    expected, expected_scores = reference_cider(cands, refs)
    score, scores = cider_d(cands, refs)
    assert np.abs(scores - expected_scores).max() < 1e-6
    assert abs(score - expected) < 1e-6


def test_fixed_df_equals_pycocoevalcap_over_the_corpus():
    # With df from the whole corpus, the score of an image does not depend on which other images
    # are scored with it: any subset, in any order, with repeats (N samples per image), must match.
    cands, refs = random_corpus(3, images=60)
    others, _ = random_corpus(4, images=60)
    _, first = reference_cider(cands, refs)
    _, second = reference_cider(others, refs)
    reward = CiderD.from_references(refs)
    idx = [5, 5, 0, 59, 5, 17, 0]
    got = reward([cands[i] for i in idx] + [others[i] for i in idx], [refs[i] for i in idx] * 2)
    assert np.abs(got - np.concatenate([first[idx], second[idx]])).max() < 1e-6


class _CountsAs(list):
    """A list whose len() is another number: makes pycocoevalcap use log(len) of the training set."""

    def __init__(self, items, length):
        super().__init__(items)
        self.length = length

    def __len__(self):
        return self.length


def test_fixed_df_on_unseen_references_equals_pycocoevalcap_with_training_df():
    _, train_refs = random_corpus(5, images=40)
    cands, val_refs = random_corpus(6, images=15, words=16)  # words w12..w15 never seen in training
    train = cider_scorer.CiderScorer()
    for r in train_refs:
        train += (None, r)
    train.compute_doc_freq()
    scorer = cider_scorer.CiderScorer()
    for c, r in zip(cands, val_refs):
        scorer += (c, r)
    scorer.document_frequency = train.document_frequency
    scorer.crefs = _CountsAs(scorer.crefs, len(train_refs))
    expected = np.asarray(scorer.compute_cider())
    got = CiderD.from_references(train_refs)(cands, val_refs)
    assert np.abs(got - expected).max() < 1e-6


def test_table_state_round_trip_is_json_and_scores_the_same():
    cands, refs = random_corpus(7, images=30)
    table = NgramTable.from_references(refs)
    state = json.loads(json.dumps(table.to_state()))
    assert state["num_images"] == 30 and state["df"]["w1"] >= 1
    again = NgramTable.from_state(state)
    assert np.abs(CiderD(table)(cands, refs) - CiderD(again)(cands, refs)).max() < 1e-12


def test_edge_cases():
    assert cider_d([], [])[0] == 0.0
    assert CiderD.from_references([["a b"]])([], []).shape == (0,)
    with pytest.raises(ValueError):
        cider_d(["a"], [])
