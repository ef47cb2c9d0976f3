"""CaptionCodec: round trip, random reference choice, truncation, decode never fails."""
import numpy as np
import torch
from hypothesis import given, settings, strategies as st

from rewardtune.tasks.captioning.codec import CaptionCodec
from rewardtune.tasks.captioning.tokenizer import Vocab, tokenize_caption

REFS = ["A red circle above a blue square.", "Two shapes: a circle and a square.",
        "The circle's colour is red!"]
VOCAB = Vocab.build(REFS)


def test_round_trip_and_end_token():
    codec = CaptionCodec(VOCAB, max_len=24)
    for caption in REFS:
        tokens = codec.encode(caption)
        assert tokens.dtype == torch.long and tokens[-1].item() == codec.end_token
        assert codec.decode(tokens) == tokenize_caption(caption)
    assert codec.grammar() is None
    assert codec.vocab_size == len(VOCAB)


def test_encode_picks_every_reference_with_the_rng():
    codec = CaptionCodec(VOCAB)
    rng = np.random.default_rng(0)
    seen = {codec.decode(codec.encode({"refs": REFS}, rng)) for _ in range(60)}
    assert seen == {tokenize_caption(r) for r in REFS}
    assert codec.decode(codec.encode({"refs": REFS})) == tokenize_caption(REFS[0])  # no rng: the first


def test_long_captions_are_cut_and_unknown_words_map_to_unk():
    codec = CaptionCodec(VOCAB, max_len=4)
    tokens = codec.encode("a red zebra above a blue square")
    assert tokens.tolist() == VOCAB.ids(["a", "red", "<unk>"]) + [codec.end_token]
    assert codec.decode(tokens) == "a red"  # <unk> is not written out


def test_decode_stops_at_end_and_skips_bad_ids():
    codec = CaptionCodec(VOCAB)
    red, circle = VOCAB.index["red"], VOCAB.index["circle"]
    assert codec.decode([red, -5, 10 ** 9, 1, circle, codec.end_token, red]) == "red circle"
    assert codec.decode(torch.tensor([[red, circle]])) == "red circle"
    assert codec.decode([]) == ""


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-10, max_value=len(VOCAB) + 10), max_size=40))
def test_decode_of_any_tokens_is_a_caption_of_vocabulary_words(tokens):
    codec = CaptionCodec(VOCAB)
    caption = codec.decode(tokens)
    assert isinstance(caption, str)
    assert all(w in VOCAB.index and w not in ("<end>", "<unk>") for w in caption.split())
    assert len(caption.split()) <= len(tokens)
