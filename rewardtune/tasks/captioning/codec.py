"""Captions <-> tokens: PTB words through a `Vocab`, one end token, no grammar."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from .tokenizer import END, UNK, Vocab, tokenize


class CaptionCodec:
    """Word-level codec. Token ids are vocabulary ids: 0 = <end>, 1 = <unk>, then the words.

    MLE targets hold all the reference captions of an image (`{"refs": [...]}`); `encode` picks one
    of them with `rng`, so over the epochs the model trains on every reference. Captions longer
    than `max_len - 1` words are cut (the end token always fits).
    """

    def __init__(self, vocab: Vocab, max_len: int = 24):
        if max_len < 2:
            raise ValueError("CaptionCodec: max_len must be >= 2")
        self.vocab = vocab
        self.max_len = max_len
        self.vocab_size = len(vocab)
        self.end_token = vocab.index[END]
        self._unk = vocab.index[UNK]

    def encode(self, target: Any, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        """A caption string, or `{"refs": [str, ...]}` (one picked at random) -> LongTensor[T]."""
        if isinstance(target, dict):
            refs = target["refs"]
            index = int(rng.integers(len(refs))) if rng is not None else 0
            target = refs[index]
        ids = self.vocab.ids(tokenize(target))[: self.max_len - 1]
        return torch.tensor(ids + [self.end_token], dtype=torch.long)

    def decode(self, tokens: Sequence[int], step_log_probs: Optional[torch.Tensor] = None,
               image: Optional[torch.Tensor] = None) -> str:
        """Tokens up to the first end token -> caption; unknown, special or out-of-range ids are skipped."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.reshape(-1).tolist()
        words = []
        for token in tokens:
            token = int(token)
            if token == self.end_token:
                break
            if self._unk < token < self.vocab_size:
                words.append(self.vocab.words[token])
        return " ".join(words)

    def grammar(self) -> Optional[torch.Tensor]:
        return None
