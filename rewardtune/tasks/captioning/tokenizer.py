"""PTB-style caption tokenisation in pure Python, and the word vocabulary.

`tokenize` reproduces what pycocoevalcap's `PTBTokenizer` (Stanford CoreNLP 3.4.1 with
`-preserveLines -lowerCase`, then its punctuation filter) gives for ordinary English, without Java:
- lower-case; punctuation split off words and dropped: . , ; : ! ? ' " ` - -- ... and quote marks;
- contractions split as PTB does: "it's" -> "it 's", "don't" -> "do n't", "can't" -> "ca n't",
  "cannot" -> "can not", "gonna" -> "gon na";
- hyphenated words, numbers ("3.5", "1,000", "10:30", "-5"), dotted abbreviations ("u.s.", "p.m.")
  and common abbreviations ("mr.", "st.") stay whole;
- brackets become -lrb- -rrb- -lsb- -rsb- -lcb- -rcb- and are KEPT: pycocoevalcap's filter lists them
  upper-case but the tokenizer has already lower-cased them, so the reference tool keeps them too;
- runs such as "!!" or "!?" are kept as one token (the filter drops only a single "!" or "?");
  other symbols ($ % & * + = / # @ ...) are separate, kept tokens.
Rare constructions (SGML tags, quote marks inside numbers like 5'5") may differ.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

# Tokens pycocoevalcap removes after PTB tokenisation (plus the raw quote characters we never convert).
DROPPED = frozenset(["''", "'", "``", "`", '"', ".", "?", "!", ",", ":", "-", "--", "...", ";"])
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_UNICODE = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": " -- ",
            "\u2013": " -- ", "\u2026": " ... ", "\u00a0": " "}
_ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "ltd", "co", "corp",
                  "ave", "mt", "ft", "prof", "gen", "capt", "sgt", "lt", "col", "jan", "feb", "aug",
                  "sept", "oct", "nov", "dec", "mo")
# Whole words PTB splits in two.
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "wanna": ("wan", "na"),
                "gotta": ("got", "ta"), "lemme": ("lem", "me"), "gimme": ("gim", "me"),
                "'tis": ("'t", "is"), "'twas": ("'t", "was")}
_CLITICS = ("'s", "'re", "'ve", "'m", "'d", "'ll")

_WORD_JOIN = r"(?:[-./]|(?<=[^\W\d_])'(?=\w)|(?<=\d)[,:](?=\d))"
_TOKEN = re.compile(
    r"(?:[a-z]\.){2,}"  # dotted abbreviations: u.s. p.m. e.g.
    r"|(?:" + "|".join(_ABBREVIATIONS) + r")\.(?!\w)"  # mr. st. etc.
    r"|'(?:s|re|ve|m|d|ll|t)(?!\w)|n't(?!\w)"  # clitics standing alone (already tokenised text)
    r"|-(?:lrb|rrb|lsb|rsb|lcb|rcb)-"  # brackets already tokenised
    r"|no\.(?=\s*\d)|[#@]\w+"  # "no. 5", #tag, @user
    r"|'\d+s(?!\w)|'(?:tis|twas)(?!\w)"  # '90s, 'tis
    r"|-?\d\w*(?:" + _WORD_JOIN + r"\w+)*"  # numbers, possibly signed and hyphenated: -5 3-year-old
    r"|\w+(?:" + _WORD_JOIN + r"\w+)*"  # words with inner hyphens, periods, apostrophes
    r"|\.\.\.|--+|``|''|[!?]+"  # multi-character punctuation
    r"|\S"  # any other single character
)


def _split_clitics(word: str) -> list[str]:
    """'shouldn't've' -> ['should', "n't", "'ve"]; words without clitics come back alone."""
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    tail: list[str] = []
    while True:
        for clitic in _CLITICS:
            if word.endswith(clitic) and len(word) > len(clitic):
                word, tail = word[: -len(clitic)], [clitic] + tail
                break
        else:
            if word.endswith("n't") and len(word) > 3:
                word, tail = word[:-3], ["n't"] + tail
                continue
            return [word] + tail


def tokenize(text: str) -> list[str]:
    """A caption -> its PTB tokens, lower-cased, punctuation removed (as pycocoevalcap)."""
    text = text.lower()
    for char, replacement in _UNICODE.items():
        if char in text:
            text = text.replace(char, replacement)
    tokens: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        if "'" in token and token[0] != "'":
            tokens.extend(_split_clitics(token))
        elif token in _SPLIT_WORDS:
            tokens.extend(_SPLIT_WORDS[token])
        else:
            tokens.append(_BRACKETS.get(token, token))
    return [t for t in tokens if t not in DROPPED]


def tokenize_caption(text: str) -> str:
    """A caption -> its tokens joined by single spaces (the form the metrics split on)."""
    return " ".join(tokenize(text))


END, UNK = "<end>", "<unk>"


class Vocab:
    """Words of the training captions seen at least `min_count` times; id 0 = <end>, 1 = <unk>."""

    def __init__(self, words: Sequence[str]):
        self.words = [END, UNK] + [w for w in words if w not in (END, UNK)]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocab":
        """From raw captions; words sorted by count (descending), then alphabetically."""
        counts = Counter(t for c in captions for t in tokenize(c))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept)

    def __len__(self) -> int:
        return len(self.words)

    def ids(self, tokens: Sequence[str]) -> list[int]:
        unk = self.index[UNK]
        return [self.index.get(t, unk) for t in tokens]

    def to_dict(self) -> dict:
        return {"words": self.words[2:]}

    @classmethod
    def from_dict(cls, state: dict) -> "Vocab":
        return cls(list(state["words"]))
