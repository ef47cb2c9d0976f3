"""PTB-like tokenizer (vs hand cases and pycocoevalcap's Java PTBTokenizer) and the vocabulary."""
import os
import shutil

import pytest
from hypothesis import given, settings, strategies as st

from rewardtune.tasks.captioning.tokenizer import Vocab, tokenize, tokenize_caption

# (caption, what pycocoevalcap's PTBTokenizer + punctuation filter gives), checked with Java.
HAND_CASES = [
    ("A man riding a horse on the beach.", "a man riding a horse on the beach"),
    ("It's a dog's life, isn't it?", "it 's a dog 's life is n't it"),
    ("The cat can't sit; it won't.", "the cat ca n't sit it wo n't"),
    ('"Hello," she said -- loudly!', "hello she said loudly"),
    ("A black-and-white photo of a 3-year-old child.", "a black-and-white photo of a 3-year-old child"),
    ("Two people (a man and a woman) walking.", "two people -lrb- a man and a woman -rrb- walking"),
    ("I'm sure they're here; we've seen he'd and we'll go.",
     "i 'm sure they 're here we 've seen he 'd and we 'll go"),
    ("Cannot gonna wanna gotta lemme", "can not gon na wan na got ta lem me"),
    ("The U.S. flag at 5 p.m. in St. Louis, Mo.", "the u.s. flag at 5 p.m. in st. louis mo."),
    ("A pizza with $5.99 price and 50% off & more.", "a pizza with $ 5.99 price and 50 % off & more"),
    ("and/or a*b c+d e=f #tag @user", "and/or a * b c + d e = f #tag @user"),
    ("Dogs' toys are on the floor...", "dogs toys are on the floor"),
    (" leading and   multiple   spaces  ", "leading and multiple spaces"),
    ("A 1,000-piece puzzle, 3.5 inches long.", "a 1,000-piece puzzle 3.5 inches long"),
    ("It's 10:30 and the temp is -5.", "it 's 10:30 and the temp is -5"),
    ("Don't DON'T shouldn't've", "do n't do n't should n't 've"),
    ("well- known -word a - b a-b-c", "well known word a b a-b-c"),
    ("A dog!! Two dogs,three cats.", "a dog !! two dogs three cats"),
    ("A sign reading 'Open'.", "a sign reading open"),
    ("she'll o'neill o'clock ma'am", "she 'll o'neill o'clock ma'am"),
    ("it’s “quoted” — ok…", "it 's quoted ok"),
    ("", ""),
]

# Ordinary caption English, compared with the Java tokenizer when Java is available.
JAVA_CASES = [c for c, _ in HAND_CASES if c] + [
    "A close up of a plate of food on a table.",
    "A group of people standing around a kitchen counter.",
    "bathroom with a toilet , sink , and shower .",
    "there is a man that is riding his bike",
    "A red double-decker bus driving down a city street.",
    "Two giraffes standing next to each other in a zoo.",
    "A woman's hand holding a cell phone.",
    "The boy's kite is flying high; he's happy!",
    "An old-fashioned clock tower at 3 o'clock.",
    "People walk by a store's window display, don't they?",
    "A plate with eggs, toast, and bacon: breakfast.",
    "Three red circles and a blue square.",
    "A large green triangle above two small yellow stars.",
    "A cat sitting on top of a T.V. stand.",
    "A man in a suit & tie at a podium (speaking).",
    "Pizza cut into 8 slices on a 12-inch pan.",
    "They're playing frisbee in the park.",
]


@pytest.mark.parametrize("caption, expected", HAND_CASES)
def test_hand_cases(caption, expected):
    assert tokenize_caption(caption) == expected


@pytest.mark.skipif(shutil.which("java") is None, reason="java is not installed")
def test_matches_pycocoevalcap_ptb_tokenizer():
    tokenizer = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    jar = os.path.join(os.path.dirname(tokenizer.__file__), tokenizer.STANFORD_CORENLP_3_4_1_JAR)
    if not os.path.exists(jar):
        pytest.skip("pycocoevalcap's CoreNLP jar is missing")
    java = tokenizer.PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(JAVA_CASES)})
    mismatches = [(c, java[i][0], tokenize_caption(c)) for i, c in enumerate(JAVA_CASES)
                  if java[i][0] != tokenize_caption(c)]
    assert mismatches == []


PIECES = ["a", "dog's", "it's", "can't", "(big)", "black-and-white", "3.5", "1,000", "u.s.", "cat.",
          "'quoted'", '"x"', "--", "...", "!", "?!", "&", "$5", "50%", "don't", "e-mail", ",", ";"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12))
def test_tokenizing_twice_changes_nothing(pieces):
    text = " ".join(pieces)
    assert tokenize(tokenize_caption(text)) == tokenize(text)


def test_vocab_min_count_unknown_and_round_trip():
    vocab = Vocab.build(["A dog runs.", "a dog sits", "a cat"], min_count=2)
    assert vocab.words == ["<end>", "<unk>", "a", "dog"]
    assert vocab.ids(["a", "cat", "dog"]) == [2, 1, 3]
    again = Vocab.from_dict(vocab.to_dict())
    assert again.words == vocab.words and again.index == vocab.index
