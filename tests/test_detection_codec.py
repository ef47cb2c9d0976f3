"""DetectionCodec: round trips, random orders, robustness of decode, the grammar, box scores."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from rewardtune.tasks.detection.codec import DetectionCodec

C, B = 5, 32


def random_target(rng, m):
    corners = rng.uniform(0, 1, size=(m, 2, 2))  # (m, {y, x}, 2 values)
    lo, hi = corners.min(-1), corners.max(-1)
    boxes = np.stack([lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]], axis=1).astype(np.float32)
    return {"boxes": boxes, "classes": rng.integers(0, C, m)}


def rows(boxes, classes):
    """Boxes + classes as a sorted list of tuples (order-free comparison)."""
    return sorted(tuple(np.round(b, 5)) + (int(c),) for b, c in zip(boxes, classes))


@pytest.mark.parametrize("order", ["random", "canonical"])
def test_round_trip_up_to_quantisation(order):
    codec = DetectionCodec(C, bins=B, max_boxes=12, box_order=order)
    rng = np.random.default_rng(0)
    for m in [0, 1, 5, 12]:
        target = random_target(rng, m)
        tokens = codec.encode(target, rng)
        assert tokens.dtype == torch.long and len(tokens) == 6 * m + 1 and tokens[-1] == codec.end_token
        out = codec.decode(tokens)
        assert len(out["boxes"]) == m
        # Each decoded box equals some target box up to half a bin, with the same class.
        q = np.round(target["boxes"] * (B - 1)) / (B - 1)
        assert rows(out["boxes"], out["classes"]) == rows(q, target["classes"])
        error = np.abs(np.sort(out["boxes"].ravel()) - np.sort(target["boxes"].ravel()))
        assert error.max(initial=0) <= 0.5 / (B - 1) + 1e-6


def test_random_order_permutes_and_canonical_sorts():
    rng = np.random.default_rng(1)
    target = random_target(rng, 6)
    codec = DetectionCodec(C, bins=B, box_order="random")
    firsts = {tuple(codec.encode(target, np.random.default_rng(s))[:6].tolist()) for s in range(20)}
    assert len(firsts) > 2  # different seeds put different boxes first
    same = [codec.encode(target, np.random.default_rng(3)).tolist() for _ in range(2)]
    assert same[0] == same[1]  # the rng alone decides the order
    canon = DetectionCodec(C, bins=B, box_order="canonical").decode(
        DetectionCodec(C, bins=B, box_order="canonical").encode(target))["boxes"]
    keys = [(b[0], b[1]) for b in canon]
    assert keys == sorted(keys)


def test_truncates_to_max_boxes():
    codec = DetectionCodec(C, bins=B, max_boxes=12)
    tokens = codec.encode(random_target(np.random.default_rng(2), 20), np.random.default_rng(0))
    assert len(tokens) == codec.max_len == 73
    assert len(codec.decode(tokens)["boxes"]) == 12


def test_decode_stops_at_end_no_object_and_malformed_groups():
    codec = DetectionCodec(C, bins=B)
    box = [1, 2, 3, 4, B + 1, codec.right_token]
    assert len(codec.decode(box + [codec.end_token] + box)["boxes"]) == 1
    assert len(codec.decode(box + box[:5] + [codec.no_object_token] + box)["boxes"]) == 1
    assert len(codec.decode(box + [1, 2, B + 1, 4, B + 1, codec.right_token] + box)["boxes"]) == 1
    assert len(codec.decode(box + box + box[:4])["boxes"]) == 2  # an unfinished group is dropped
    out = codec.decode([5, 9, 1, 2, B + 4, codec.wrong_token])  # swapped corners are sorted
    np.testing.assert_allclose(out["boxes"][0], np.array([1, 2, 5, 9]) / (B - 1), rtol=1e-6)
    assert out["classes"].tolist() == [4] and out["conf_pos"].tolist() == [5]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-5, B + C + 4 + 5), min_size=0, max_size=100))
def test_decode_of_any_tokens_is_valid(tokens):
    codec = DetectionCodec(C, bins=B, max_boxes=12)
    out = codec.decode(tokens)
    k = len(out["classes"])
    assert out["boxes"].shape == (k, 4) and out["boxes"].dtype == np.float32
    assert out["classes"].dtype == np.int64 and out["conf_pos"].dtype == np.int64
    for key in ("scores", "score_iou", "score_prob"):
        assert out[key].shape == (k,) and out[key].dtype == np.float32
    b = out["boxes"]
    assert np.all((b >= 0) & (b <= 1)) and np.all(b[:, 0] <= b[:, 2]) and np.all(b[:, 1] <= b[:, 3])
    assert np.all((out["classes"] >= 0) & (out["classes"] < C))
    for pos in out["conf_pos"]:
        assert tokens[pos] in (codec.wrong_token, codec.right_token)
    logp = torch.log_softmax(torch.randn(max(len(tokens), 1), codec.vocab_size), -1)
    scored = codec.decode(tokens, logp)
    assert np.all((scored["score_iou"] >= 0) & (scored["score_iou"] <= 1))


def test_grammar_shape_and_sampled_sequences_decode():
    codec = DetectionCodec(C, bins=B, max_boxes=4)
    g = codec.grammar()
    assert g.shape == (codec.max_len, codec.vocab_size) and g.dtype == torch.bool
    assert g[-1].nonzero().flatten().tolist() == [codec.end_token]
    assert g[0, codec.end_token] and not g[1, codec.end_token] and not g[5, codec.end_token]
    assert g[4, B:B + C].all() and not g[4, :B].any() and g[5, codec.wrong_token] and not g[5, B].any()
    assert g[5, codec.right_token] and not g[5, codec.no_object_token]  # the end token ends sequences
    rng = np.random.default_rng(0)
    for _ in range(200):
        tokens = []
        for p in range(codec.max_len):
            tokens.append(int(rng.choice(np.flatnonzero(g[p].numpy()))))
            if tokens[-1] == codec.end_token:
                break
        groups = [tokens[i:i + 6] for i in range(0, len(tokens) - 1, 6)]
        expected = next((i for i, grp in enumerate(groups) if grp[5] == codec.no_object_token), len(groups))
        assert len(codec.decode(tokens)["boxes"]) == expected


def test_scores_from_step_log_probs():
    codec = DetectionCodec(C, bins=B, score="expected_iou")
    tokens = [1, 2, 3, 4, B, codec.right_token, codec.end_token]
    probs = torch.full((7, codec.vocab_size), 1e-3)
    probs[torch.arange(5), torch.tensor(tokens[:5])] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.25])
    probs[5, codec.wrong_token], probs[5, codec.right_token] = 0.2, 0.6
    logp = probs.log()
    out = codec.decode(tokens, logp)
    assert out["scores"][0] == pytest.approx(0.75, rel=1e-5)
    assert out["score_prob"][0] == pytest.approx(np.exp(np.log([0.5] * 4 + [0.25]).mean()), rel=1e-5)
    prob_codec = DetectionCodec(C, bins=B, score="token_prob")
    assert prob_codec.decode(tokens, logp)["scores"][0] == pytest.approx(out["score_prob"][0])
    assert codec.decode(tokens)["scores"].tolist() == [1.0]
    masked = logp.clone()
    masked[5, [codec.wrong_token, codec.right_token]] = -float("inf")
    assert np.isfinite(codec.decode(tokens, masked)["scores"]).all()


def test_read_back_reads_wrong_as_right_and_nothing_else_changes():
    codec = DetectionCodec(C, bins=B)
    table = codec.read_back()
    assert table.shape == (codec.vocab_size,) and table[codec.wrong_token] == codec.right_token
    others = torch.ones(codec.vocab_size, dtype=torch.bool)
    others[codec.wrong_token] = False
    assert torch.equal(table[others], torch.arange(codec.vocab_size)[others])
