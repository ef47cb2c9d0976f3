"""PanopticCodec: round trip up to the grid, slots, grammar, and decode never fails."""
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardtune.tasks.panoptic.codec import PanopticCodec
from rewardtune.tasks.panoptic.pq import pq_image

CATEGORIES = [{"id": 1, "name": "square", "isthing": 1}, {"id": 2, "name": "disc", "isthing": 1},
              {"id": 7, "name": "grass", "isthing": 0}, {"id": 9, "name": "sky", "isthing": 0}]


def codec(grid=4, slots=3, size=16):
    return PanopticCodec(CATEGORIES, grid=grid, max_instances=slots, image_size=size)


def aligned_target(cells, segments, size=16):
    """A target whose segments are unions of grid cells: `cells` (grid x grid ids) upsampled."""
    k = size // cells.shape[0]
    return {"map": np.kron(cells, np.ones((k, k), np.int32)), "segments": segments}


def same_partition(a, b):
    """True when two id maps are equal up to renaming the ids (one-to-one)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})


def test_vocabulary_layout():
    c = codec()
    assert c.vocab_size == 1 + 2 + 2 * 3 + 1 and c.end_token == c.vocab_size - 1 and c.max_len == 17
    assert c.token_category.tolist() == [-1, 7, 9, 1, 1, 1, 2, 2, 2, -1]


def test_grid_aligned_target_round_trips_exactly():
    cells = np.array([[10, 10, 11, 0], [10, 30, 11, 0], [20, 20, 20, 21], [20, 40, 40, 21]], np.int32)
    segs = [{"id": 10, "category_id": 1}, {"id": 11, "category_id": 1}, {"id": 30, "category_id": 2},
            {"id": 40, "category_id": 2}, {"id": 20, "category_id": 7}, {"id": 21, "category_id": 9}]
    target = aligned_target(cells, segs)
    c = codec()
    tokens = c.encode(target)
    assert tokens.dtype == torch.long and len(tokens) == c.max_len and tokens[-1] == c.end_token
    out = c.decode(tokens)
    assert out["map"].shape == (16, 16) and out["map"].dtype == np.int32
    assert same_partition(out["map"], target["map"])
    by_id = {s["id"]: s for s in segs}
    for seg in out["segments"]:  # every decoded segment covers exactly one gt segment of its category
        gt_ids = set(target["map"][out["map"] == seg["id"]].tolist())
        assert len(gt_ids) == 1 and by_id[gt_ids.pop()]["category_id"] == seg["category_id"]
        assert seg["area"] == int((out["map"] == seg["id"]).sum())
        assert seg["isthing"] == (seg["category_id"] in (1, 2)) and seg["iscrowd"] == 0
    assert pq_image(out, target) == (1.0, 1.0, 1.0)
    assert torch.equal(c.encode(out), tokens)  # encode(decode(t)) == t


def test_cells_take_the_majority_label():
    ids = np.full((16, 16), 5, np.int32)
    ids[:3, :3] = 6  # 9 of the 16 pixels of cell (0, 0)
    ids[4:5, 4:8] = 6  # 4 of 16 pixels of cell (1, 1): minority
    target = {"map": ids, "segments": [{"id": 5, "category_id": 9}, {"id": 6, "category_id": 1}]}
    tokens = codec().encode(target)[:-1].reshape(4, 4)
    assert tokens[0, 0] == 3 and tokens[1, 1] == 2 and int((tokens == 3).sum()) == 1


def test_instance_slots_follow_first_appearance_and_overflow_to_void():
    cells = np.array([[4, 0, 3, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], np.int32)
    segs = [{"id": i, "category_id": 1} for i in (1, 2, 3, 4)]  # 4 instances, 3 slots
    tokens = codec(slots=3).encode(aligned_target(cells, segs))[:-1].reshape(4, 4)
    assert tokens[0, 0] == 3 and tokens[0, 2] == 4 and tokens[1, 1] == 5  # slots 0, 1, 2 in raster order
    assert tokens[2, 0] == 0  # the fourth instance has no slot


def test_crowd_and_unlisted_ids_encode_as_void():
    cells = np.array([[1, 2], [3, 3]], np.int32)
    segs = [{"id": 1, "category_id": 1, "iscrowd": 1}, {"id": 3, "category_id": 7}]  # id 2 is unlisted
    tokens = codec(grid=2).encode(aligned_target(cells, segs))
    assert tokens.tolist() == [0, 0, 1, 1, codec(grid=2).end_token]


def test_decode_stops_at_end_and_fills_void():
    c = codec()
    out = c.decode([1, 2, c.end_token, 3, 3])
    assert set(np.unique(out["map"]).tolist()) == {0, 1, 2}
    assert (out["map"][:4, :4] == 1).all() and (out["map"][:4, 4:8] == 2).all() and (out["map"][4:] == 0).all()
    assert [s["category_id"] for s in out["segments"]] == [7, 9]


def test_grammar_allows_content_then_only_end():
    c = codec()
    g = c.grammar()
    assert g.shape == (c.max_len, c.vocab_size) and g.dtype == torch.bool
    assert g[:-1, :-1].all() and not g[:-1, -1].any()
    assert g[-1, -1] and not g[-1, :-1].any()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=-(2 ** 70), max_value=2 ** 70), max_size=40),
       st.sampled_from([1, 3, 4]), st.sampled_from([5, 16]))
def test_decode_of_any_tokens_is_a_valid_panoptic(tokens, grid, size):
    c = PanopticCodec(CATEGORIES, grid=grid, max_instances=2, image_size=size)
    out = c.decode(tokens)
    ids = out["map"]
    assert ids.shape == (size, size) and ids.dtype == np.int32
    listed = {s["id"] for s in out["segments"]}
    assert set(np.unique(ids).tolist()) - {0} == listed and 0 not in listed
    for s in out["segments"]:
        assert s["category_id"] in (1, 2, 7, 9) and s["area"] == int((ids == s["id"]).sum()) > 0
    assert pq_image(out, out)[0] == 1.0
    if all(abs(t) < 2 ** 63 for t in tokens):  # the sampler's LongTensor gives the same output
        assert np.array_equal(c.decode(torch.tensor(tokens, dtype=torch.long))["map"], ids)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=9), min_size=16, max_size=16))
def test_decode_then_encode_is_identity_on_grid_tokens(cells):
    c = codec()
    tokens = torch.tensor(cells + [c.end_token])
    tokens[:-1][tokens[:-1] == c.end_token] = 0
    # slots are renumbered by first appearance, so compare the decoded partitions and categories
    again = c.decode(c.encode(c.decode(tokens)))
    first = c.decode(tokens)
    assert same_partition(again["map"], first["map"])
    assert pq_image(again, first) == (1.0, 1.0, 1.0)
