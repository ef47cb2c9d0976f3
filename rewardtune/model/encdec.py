"""EncoderDecoder: the task-agnostic policy. Teacher-forced log-probs and cached sampling.

Shapes: B images, N samples per image, T tokens, V vocabulary, M encoder tokens, C width.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn

from .decoder import Decoder
from .vit import ViTEncoder

MASKED = -1e9  # logit of a token the grammar forbids (finite, so 0 * logit stays 0)


@dataclass
class Generation:
    tokens: torch.Tensor  # LongTensor[B*N, L]; after the end token every position holds the end token
    lengths: torch.Tensor  # LongTensor[B*N]; tokens up to and including the end token (L if none)
    log_probs: torch.Tensor  # FloatTensor[B*N]; sum of the chosen tokens' log-probs up to the end
    ended: torch.Tensor  # BoolTensor[B*N]; whether the sequence emitted the end token
    step_log_probs: Optional[torch.Tensor] = None  # FloatTensor[B*N, L, V] when requested


class EncoderDecoder(nn.Module):
    """ViT encoder + causal decoder. `forward` is `log_probs`, so DDP can wrap it."""

    def __init__(self, image_size: int, vocab_size: int, max_len: int, end_token: int, *,
                 stem: str = "conv", patch_size: int = 8, width: int = 128, encoder_depth: int = 2,
                 decoder_depth: int = 3, heads: int = 4, mlp_ratio: float = 4.0, pos: str = "sincos",
                 cls_token: bool = False, encoder_ln_eps: float = 1e-5,
                 grammar: Optional[torch.Tensor] = None, read_back: Optional[torch.Tensor] = None):
        super().__init__()
        self.vocab_size, self.max_len, self.end_token = vocab_size, max_len, end_token
        self.encoder = ViTEncoder(image_size, patch_size, width, encoder_depth, heads, mlp_ratio, stem, pos,
                                  cls_token, encoder_ln_eps)
        self.decoder = Decoder(vocab_size, max_len, width, decoder_depth, heads, mlp_ratio)
        if grammar is not None:
            assert grammar.shape == (max_len, vocab_size), f"grammar {tuple(grammar.shape)}"
        self.register_buffer("grammar", grammar, persistent=False)
        if read_back is not None:
            assert read_back.shape == (vocab_size,), f"read_back {tuple(read_back.shape)}"
        # read_back[v]: the token the decoder reads as input after emitting v (None: v itself)
        self.register_buffer("read_back", read_back, persistent=False)
        self.apply(_init_weights)

    def encode(self, images: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Images (B, 3, S, S) -> memory (B*N, M, C), each image's row repeated N times."""
        memory = self.encoder(images)
        return memory.repeat_interleave(num_samples, dim=0) if num_samples > 1 else memory

    def _read(self, tokens: torch.Tensor) -> torch.Tensor:
        """The decoder's input for emitted tokens (the codec's read-back table, if any)."""
        return tokens if self.read_back is None else self.read_back[tokens]

    def _mask(self, logits: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Apply the grammar to logits (..., T, V) for positions start..start+T-1."""
        if self.grammar is None:
            return logits
        allowed = self.grammar[start:start + logits.shape[-2]]
        return logits.masked_fill(~allowed, MASKED)

    def log_probs(self, images: torch.Tensor, tokens: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Teacher-forced log-softmax: images (B, 3, S, S), tokens (B*N, T) -> (B*N, T, V)."""
        memory = self.encode(images, num_samples)
        bos = torch.full_like(tokens[:, :1], self.vocab_size)
        logits = self.decoder(torch.cat([bos, self._read(tokens[:, :-1])], dim=1), memory)
        return torch.log_softmax(self._mask(logits).float(), dim=-1)

    forward = log_probs

    @torch.no_grad()
    def generate(self, images: torch.Tensor, num_samples: int = 1, *, greedy: bool = False,
                 temperature: float = 1.0, top_k: int = 0, max_len: Optional[int] = None,
                 generator: Union[torch.Generator, Sequence[torch.Generator], None] = None,
                 use_cache: bool = True,
                 return_step_log_probs: bool = False) -> Generation:
        """Sample (Gumbel-max) or greedy-decode N sequences per image; the encoder runs once per image.

        Stops as soon as every sequence has emitted the end token. Log-probs are those of the
        model at temperature 1 under the grammar (what REINFORCE and scores use). `generator` may be
        one generator per image: image i's samples then depend on generators[i] alone (not on the
        other images of the batch), which is what makes multi-process sampling match one process.
        """
        L = min(max_len or self.max_len, self.max_len)
        memory = self.encode(images, num_samples)
        BN = memory.shape[0]
        tokens = torch.full((BN, L), self.end_token, dtype=torch.long, device=memory.device)
        total = torch.zeros(BN, device=memory.device)
        ended = torch.zeros(BN, dtype=torch.bool, device=memory.device)
        lengths = torch.full((BN,), L, dtype=torch.long, device=memory.device)
        steps = [] if return_step_log_probs else None
        caches = self.decoder.init_cache(memory, L) if use_cache else None
        prev = torch.full((BN,), self.vocab_size, dtype=torch.long, device=memory.device)
        for t in range(L):
            if use_cache:
                logits = self.decoder.step(prev, caches, t)
            else:  # recompute the whole prefix (reference path for tests and benchmarks)
                inputs = torch.cat([tokens.new_full((BN, 1), self.vocab_size), self._read(tokens[:, :t])], dim=1)
                logits = self.decoder(inputs, memory)[:, -1]
            logp = torch.log_softmax(self._mask(logits[:, None].float(), t)[:, 0], dim=-1)  # (BN, V)
            choice = self._choose(logp, greedy, temperature, top_k, generator)
            choice = torch.where(ended, torch.full_like(choice, self.end_token), choice)
            chosen = logp.gather(1, choice[:, None])[:, 0]
            total += torch.where(ended, torch.zeros_like(chosen), chosen)
            tokens[:, t] = choice
            if steps is not None:
                steps.append(logp)
            newly = ~ended & (choice == self.end_token)
            lengths[newly] = t + 1
            ended |= newly
            prev = self._read(choice)
            if bool(ended.all()):
                break
        used = int(lengths.max())
        step_lp = torch.stack(steps, 1)[:, :used] if steps is not None else None
        return Generation(tokens[:, :used], lengths, total, ended, step_lp)

    @staticmethod
    def _choose(logp: torch.Tensor, greedy: bool, temperature: float, top_k: int, generator) -> torch.Tensor:
        if greedy:
            return logp.argmax(-1)
        scores = logp / temperature
        if top_k and top_k < scores.shape[-1]:
            kth = scores.topk(top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, MASKED)
        # Gumbel-max: argmax(logits + Gumbel noise) is a sample; ~3x cheaper than multinomial here.
        if isinstance(generator, (list, tuple)):
            rows = scores.shape[0] // len(generator)
            u = torch.cat([torch.rand((rows, scores.shape[1]), generator=g, device=scores.device) for g in generator])
        else:
            u = torch.rand(scores.shape, generator=generator, device=scores.device)
        u = u.clamp_(1e-20, 1.0)
        return (scores - torch.log(-torch.log(u))).argmax(-1)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the block, then back in the mode it was in (even on an exception)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def image_generator(seed: int, index: int, device) -> torch.Generator:
    """The generator of the draws made outside training for image `index` (held-out reward, the learned
    box score's fit, analysis pools): keyed by (seed, index) alone, never the global RNG, so the same model
    gives the same draws at every call."""
    return torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + int(index))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


def sequence_log_probs(step_log_probs: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sum of log P(token) up to and including the end token: (B, T, V), (B, T), (B,) -> (B,)."""
    chosen = step_log_probs.gather(-1, tokens[..., None])[..., 0]  # (B, T)
    valid = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]
    return (chosen * valid).sum(1)


def build_model(model_config, image_size: int, codec) -> EncoderDecoder:
    """The model for a task's codec, from `config.model`. A codec that is an nn.Module (a learned code's
    stage I model) becomes the frozen submodule `codec`: its weights travel in every checkpoint's model.pt,
    the optimizer skips them (no gradient) and it keeps its own train/eval mode."""
    m = model_config
    model = EncoderDecoder(image_size, codec.vocab_size, codec.max_len, codec.end_token, stem=m.stem,
                           patch_size=m.patch_size, width=m.width, encoder_depth=m.encoder_depth,
                           decoder_depth=m.decoder_depth, heads=m.heads, mlp_ratio=m.mlp_ratio, pos=m.pos,
                           cls_token=m.cls_token, encoder_ln_eps=m.encoder_ln_eps,
                           grammar=codec.grammar(), read_back=read_back_table(codec))
    if isinstance(codec, nn.Module):
        model.codec = codec.requires_grad_(False)
    return model


def read_back_table(codec) -> Optional[torch.Tensor]:
    """The codec's optional `read_back()`: LongTensor[V], what the decoder reads after each token."""
    fn = getattr(codec, "read_back", None)
    return fn() if callable(fn) else None
