"""CIDEr-D, vectorised: the numbers of pycocoevalcap's `Cider`, without its Python loops.

Inputs are tokenised captions (tokens joined by spaces, as `tokenizer.tokenize_caption` gives).
For each n = 1..4 a caption is a vector of n-gram tf-idf weights
`tf * (log(num_images) - log(max(1, df)))`; a candidate's score against one reference is, per n,
`sum_g min(c_g, r_g) * r_g / (|c| |r|)` (clipping) times `exp(-(l_c - l_r)^2 / (2 sigma^2))`
(length penalty). The score of a candidate is 10 x the mean over n and over its references.
Two quirks of pycocoevalcap are kept on purpose: the "length" in the penalty is the number of
bigrams (words - 1, and 0 for an empty caption), and a norm of 0 leaves the sum undivided.

Two ways to get the document frequency df (in how many images' reference sets an n-gram occurs):
- `cider_d(candidates, references)`: from the evaluated references, num_images = their count
  (the metric, as pycocoevalcap computes it);
- `CiderD(table)(candidates, references)`: fixed from a reference corpus, usually the training
  captions (the reward, as self-critical sequence training does).

How it is fast: every n-gram of a call gets a small integer id by sorting integer keys
(`prefix id * 2**21 + word id`) with numpy, so term frequencies, norms, and the clipped dot
products of all candidate/reference pairs are a few `np.unique`, `searchsorted` and `bincount`s.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections import defaultdict
from itertools import count
from typing import Optional, Sequence

import numpy as np

_BASE = 1 << 21  # word ids must stay below this; n-gram keys are prefix_id * _BASE + word_id
NGRAMS = 4
_SEPARATOR = "\x00"  # marks caption boundaries in one joined string
SIGMA = 6.0


@dataclass
class NgramTable:
    """Document frequencies of the n-grams of a reference corpus, as sorted integer keys.

    `keys[k]` (sorted int64) holds the (k+1)-grams as `id of their first k words * _BASE + last word`,
    where ids are positions in `keys[k-1]` (and word ids for k = 0); `df[k]` their counts.
    """

    words: dict  # word -> id
    keys: list  # per order: int64[U_k], sorted
    df: list  # per order: float64[U_k]
    num_images: int

    @classmethod
    def from_references(cls, references: Sequence[Sequence[str]], n: int = NGRAMS) -> "NgramTable":
        """From tokenised reference captions, one list per image."""
        captions = [c for refs in references for c in refs]
        image = np.repeat(np.arange(len(references)), [len(refs) for refs in references])
        words: dict = {}
        grams = _extract(captions, words, n)
        df = [_image_counts(image[g.caption], g.local, len(g.uniq)) for g in grams]
        return cls(words, [g.uniq for g in grams], df, len(references))

    def to_state(self) -> dict:
        """JSON-serialisable: {"num_images", "df": {"a man": 3, ...}}."""
        names = [None] * len(self.words)
        for word, i in self.words.items():
            names[i] = word
        df, prev = {}, names
        for keys, counts in zip(self.keys, self.df):
            if prev is names:
                strings = [names[int(k)] for k in keys]
            else:
                strings = [f"{prev[int(k) // _BASE]} {names[int(k) % _BASE]}" for k in keys]
            df.update(zip(strings, (int(c) for c in counts)))
            prev = strings
        return {"num_images": self.num_images, "df": df}

    @classmethod
    def from_state(cls, state: dict, n: int = NGRAMS) -> "NgramTable":
        """Inverse of `to_state`."""
        by_order: list = [[] for _ in range(n)]
        for gram, count in state["df"].items():
            by_order[gram.count(" ")].append((gram, count))
        unigrams = sorted(by_order[0])
        words = {w: i for i, (w, _) in enumerate(unigrams)}
        keys = [np.arange(len(unigrams), dtype=np.int64)]
        df = [np.array([c for _, c in unigrams], dtype=np.float64)]
        position = words
        for items in by_order[1:]:
            raw = np.array([position[g.rsplit(" ", 1)[0]] * _BASE + words[g.rsplit(" ", 1)[1]]
                            for g, _ in items], dtype=np.int64)
            order = np.argsort(raw, kind="stable")
            keys.append(raw[order])
            df.append(np.array([items[i][1] for i in order], dtype=np.float64))
            position = {items[i][0]: j for j, i in enumerate(order)}
        return cls(words, keys, df, int(state["num_images"]))

    def lookup(self, order: int, keys: np.ndarray) -> np.ndarray:
        """Positions of `keys` (in this table's id space) in `self.keys[order]`; -1 where absent."""
        table = self.keys[order]
        if len(table) == 0:
            return np.full(len(keys), -1, np.int64)
        pos = np.minimum(np.searchsorted(table, keys), len(table) - 1)
        return np.where((keys >= 0) & (table[pos] == keys), pos, -1)


@dataclass
class _Grams:
    """The (k+1)-grams of a batch of captions for one order k."""

    uniq: np.ndarray  # int64[U] sorted keys (prefix local id * _BASE + word id)
    local: np.ndarray  # int64[E] index into `uniq` of each entry (one entry per caption and n-gram)
    caption: np.ndarray  # int64[E] caption of each entry
    tf: np.ndarray  # float64[E] term frequency of each entry


def _sorted_unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (sorted distinct keys, count of each); np.sort + diff, faster than np.unique here."""
    s = np.sort(keys)
    first = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1]))) if len(s) else np.zeros(0, np.int64)
    return s[first], np.diff(np.append(first, len(s)))


def _unique_inverse(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (sorted distinct keys, index of each key among them), as np.unique(return_inverse=True)."""
    order = np.argsort(keys)
    s = keys[order]
    first = np.concatenate(([True], s[1:] != s[:-1])) if len(s) else np.zeros(0, bool)
    inverse = np.empty(len(keys), np.int64)
    inverse[order] = np.cumsum(first) - 1
    return s[first], inverse


def _word_ids(captions: Sequence[str], words: dict) -> tuple[np.ndarray, np.ndarray]:
    """-> (int64[L] word id of every token, int64[L] caption of every token); adds new words."""
    ids_of = defaultdict(count(len(words)).__next__, words)  # a new word gets the next id, in C
    ids_of[_SEPARATOR] = -1
    ids = np.fromiter(map(ids_of.__getitem__, f" {_SEPARATOR} ".join(captions).split()), np.int64)
    is_sep = ids == -1
    owner = np.cumsum(is_sep)[~is_sep]
    del ids_of[_SEPARATOR]
    words.update(ids_of)
    return ids[~is_sep], owner


def _extract(captions: Sequence[str], words: dict, n: int) -> list:
    """Term frequencies of all 1..n-grams of `captions`; new words are added to `words`."""
    captions = [c.replace(_SEPARATOR, " ") for c in captions] if any(_SEPARATOR in c for c in captions) \
        else captions
    ids, owner = _word_ids(captions, words)  # (L,), (L,)
    if len(words) + 1 >= _BASE:
        raise ValueError(f"CIDEr-D: more than {_BASE - 2} distinct words")
    caption_end = np.cumsum(np.bincount(owner, minlength=len(captions)))
    left = caption_end[owner] - np.arange(len(ids))  # (L,) tokens from here to the caption's end
    prev = np.zeros(len(ids), np.int64)  # (L,) id of the k-gram starting at each position
    out = []
    for k in range(n):
        start = np.flatnonzero(left > k)  # where a (k+1)-gram starts
        if k == 0:  # unigrams: word ids are small, so a bincount replaces the sort
            present = np.bincount(ids, minlength=len(words)) > 0
            uniq, local = np.flatnonzero(present), (np.cumsum(present) - 1)[ids]
        else:
            uniq, local = _unique_inverse(prev[start] * _BASE + ids[start + k])
        size = max(len(uniq), 1)
        pair, tf = _sorted_unique(owner[start] * size + local)
        out.append(_Grams(uniq, pair % size, pair // size, tf.astype(np.float64)))
        prev[start] = local
    return out


def _image_counts(image: np.ndarray, local: np.ndarray, size: int) -> np.ndarray:
    """Number of distinct images per n-gram, from (image, n-gram) entries."""
    pairs, _ = _sorted_unique(image * max(size, 1) + local)
    return np.bincount(pairs % max(size, 1), minlength=size).astype(np.float64)


def _reference_df(g: _Grams, num_c: int, ref_group: np.ndarray) -> np.ndarray:
    """Metric mode: in how many images' references each n-gram occurs (captions >= num_c are refs)."""
    is_r = g.caption >= num_c
    return _image_counts(ref_group[g.caption[is_r] - num_c], g.local[is_r], len(g.uniq))


def _table_df(grams: list, words: dict, table: NgramTable) -> list:
    """Reward mode: df of each local n-gram looked up in a fixed table (0 for n-grams it lacks)."""
    to_table = np.full(len(words), -1, np.int64)  # local word id -> table word id
    for word, i in words.items():
        to_table[i] = table.words.get(word, -1)
    dfs, found = [], None
    for k, g in enumerate(grams):
        last = to_table[g.uniq % _BASE]
        if k == 0:
            keys = last
        else:
            prefix = found[g.uniq // _BASE]
            keys = np.where((prefix >= 0) & (last >= 0), prefix * _BASE + last, -1)
        found = table.lookup(k, keys)
        counts = table.df[k][np.maximum(found, 0)] if len(table.df[k]) else np.zeros(len(keys))
        dfs.append(np.where(found >= 0, counts, 0.0))
    return dfs


@dataclass
class _Vectors:
    """tf-idf entries of all captions of a call: candidates first, then the references."""

    caption: np.ndarray  # int64[E]
    gram: np.ndarray  # int64[E], unique over orders
    order: np.ndarray  # int64[E] in 0..n-1
    weight: np.ndarray  # float64[E] tf * idf
    norm: np.ndarray  # float64[C, n]
    length: np.ndarray  # float64[C] bigram count (pycocoevalcap's length)
    num_grams: int


def _vectors(captions: list, grams: list, dfs: list, ref_len: float, n: int) -> _Vectors:
    offsets = np.cumsum([0] + [len(g.uniq) for g in grams])
    caption = np.concatenate([g.caption for g in grams])
    gram = np.concatenate([g.local + o for g, o in zip(grams, offsets)])
    order = np.concatenate([np.full(len(g.local), k) for k, g in enumerate(grams)])
    idf = ref_len - np.log(np.maximum(1.0, np.concatenate(dfs)))
    weight = np.concatenate([g.tf for g in grams]) * idf[gram]
    norm = np.sqrt(np.bincount(caption * n + order, weight ** 2, minlength=len(captions) * n))
    # pycocoevalcap's "length" is the number of bigrams (its `if n == 1` counts 2-grams).
    length = np.bincount(grams[1].caption, grams[1].tf, minlength=len(captions))
    return _Vectors(caption, gram, order, weight, norm.reshape(len(captions), n), length, int(offsets[-1]))


def _pairs(group: np.ndarray, ref_group: np.ndarray, num_g: int) -> tuple:
    """All (candidate, reference of its group) pairs -> (pair_cand, pair_ref, pair_start, per_ref)."""
    by_group = np.argsort(group, kind="stable") if np.any(group[1:] < group[:-1]) else np.arange(len(group))
    per_group = np.bincount(group, minlength=num_g)
    group_start = np.cumsum(per_group) - per_group
    per_ref = per_group[ref_group]  # (R,) candidates sharing each reference
    pair_start = np.cumsum(per_ref) - per_ref
    pair_ref = np.repeat(np.arange(len(ref_group)), per_ref)  # (P,)
    offset = np.arange(len(pair_ref)) - pair_start[pair_ref]
    pair_cand = by_group[group_start[ref_group[pair_ref]] + offset]  # (P,)
    return pair_cand, pair_ref, pair_start, per_ref


def _clipped_dots(v: _Vectors, num_c: int, pair_cand, pair_start, per_ref, n: int) -> np.ndarray:
    """sum_g min(c_g, r_g) * r_g for every pair and order -> float64[P, n]."""
    is_c = v.caption < num_c
    c_keys = v.caption[is_c] * v.num_grams + v.gram[is_c]
    c_sort = np.argsort(c_keys)
    c_keys, c_weight = c_keys[c_sort], v.weight[is_c][c_sort]
    in_candidates = np.zeros(v.num_grams, bool)
    in_candidates[v.gram[is_c]] = True
    r_entry = np.flatnonzero(~is_c & in_candidates[v.gram])  # only these can match
    rep = per_ref[v.caption[r_entry] - num_c]
    e = np.repeat(r_entry, rep)  # each reference entry once per pair of its reference
    within = np.arange(len(e)) - np.repeat(np.cumsum(rep) - rep, rep)
    e_pair = np.repeat(pair_start[v.caption[r_entry] - num_c], rep) + within
    keys = pair_cand[e_pair] * v.num_grams + v.gram[e]
    if len(c_keys) == 0:
        return np.zeros((len(pair_cand), n))
    pos = np.minimum(np.searchsorted(c_keys, keys), len(c_keys) - 1)
    hit = c_keys[pos] == keys
    w_r = v.weight[e[hit]]
    clipped = np.minimum(c_weight[pos[hit]], w_r) * w_r
    val = np.bincount(e_pair[hit] * n + v.order[e[hit]], clipped, minlength=len(pair_cand) * n)
    return val.reshape(-1, n)


def _scores(candidates: Sequence[str], references: Sequence[Sequence[str]], group: np.ndarray,
            table: Optional[NgramTable], sigma: float, n: int) -> np.ndarray:
    """CIDEr-D of candidate i against `references[group[i]]` -> float64[len(candidates)].

    `table` None: df from `references` (one image per group); else df fixed by the table.
    """
    num_c, num_g = len(candidates), len(references)
    ref_group = np.repeat(np.arange(num_g), [len(r) for r in references]).astype(np.int64)  # (R,)
    captions = list(candidates) + [c for refs in references for c in refs]
    words: dict = {} if table is None else dict(table.words)
    grams = _extract(captions, words, n)
    if table is None:
        dfs, ref_len = [_reference_df(g, num_c, ref_group) for g in grams], np.log(float(num_g))
    else:
        dfs, ref_len = _table_df(grams, words, table), np.log(float(table.num_images))
    v = _vectors(captions, grams, dfs, ref_len, n)
    pair_cand, pair_ref, pair_start, per_ref = _pairs(group, ref_group, num_g)
    val = _clipped_dots(v, num_c, pair_cand, pair_start, per_ref, n)  # (P, n)
    denom = v.norm[pair_cand] * v.norm[num_c + pair_ref]
    val = np.where(denom != 0, val / np.where(denom != 0, denom, 1.0), val)
    delta = v.length[pair_cand] - v.length[num_c + pair_ref]
    val *= np.exp(-(delta ** 2) / (2 * sigma ** 2))[:, None]
    total = np.bincount(pair_cand, val.mean(axis=1), minlength=num_c)
    refs_per_c = np.bincount(ref_group, minlength=num_g)[group].astype(np.float64)
    return np.divide(total * 10.0, refs_per_c, out=np.zeros(num_c), where=refs_per_c > 0)


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]],
            sigma: float = SIGMA, n: int = NGRAMS) -> tuple[float, np.ndarray]:
    """The metric: df from the evaluated references, as pycocoevalcap's `Cider.compute_score`.

    `candidates[i]` (one tokenised caption) is scored against `references[i]` (its image's captions).
    Returns (corpus score = mean of the per-image scores, float64[len(candidates)]).
    """
    if len(candidates) != len(references):
        raise ValueError("cider_d: one list of references per candidate")
    if not len(candidates):
        return 0.0, np.zeros(0)
    scores = _scores(candidates, references, np.arange(len(candidates)), None, sigma, n)
    return float(scores.mean()), scores


class CiderD:
    """The reward: CIDEr-D with document frequencies fixed from a reference corpus (SCST)."""

    def __init__(self, table: NgramTable, sigma: float = SIGMA):
        self.table, self.sigma = table, sigma

    @classmethod
    def from_references(cls, references: Sequence[Sequence[str]], sigma: float = SIGMA) -> "CiderD":
        """From tokenised training captions, one list per image."""
        return cls(NgramTable.from_references(references), sigma)

    def __call__(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """Candidate i vs `references[i]` -> float64[len(candidates)]; equal reference lists share work."""
        if len(candidates) != len(references):
            raise ValueError("CiderD: one list of references per candidate")
        groups: dict = {}
        group = np.array([groups.setdefault(tuple(r), len(groups)) for r in references], np.int64)
        if not len(candidates):
            return np.zeros(0)
        return _scores(candidates, [list(r) for r in groups], group, self.table, self.sigma,
                       len(self.table.keys))
