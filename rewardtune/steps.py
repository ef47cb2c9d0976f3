"""The two step functions of the one training loop: an MLE step and a REINFORCE step.

Each takes the batch and returns (loss tensor with grad, logs of floats). Nothing task-specific:
the task enters only through the Task contract (codec, reward, auxiliary loss, sample stats).

Randomness is keyed by each sample's global position in the data stream (`positions`), never by
rank, so K processes draw exactly what one process draws for the same global batch; token means
are normalised by the global token count, so DDP's gradient average equals the 1-process gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from . import distributed
from .credit import token_advantages
from .errors import ConfigError
from .losses import kl_to_reference, leave_one_out_advantage, mle_loss, reinforce_loss, token_reinforce_loss
from .model.encdec import EncoderDecoder, Generation, sequence_log_probs
from .outputs import decode_all
from .tasks.base import ITEM_PART, Task


@dataclass
class StepContext:
    task: Task
    model: torch.nn.Module  # the module to call for gradients (DDP wrapper or the model)
    policy: EncoderDecoder  # the bare model, for sampling
    train: Any  # config.train
    reward_fn: Optional[Callable] = None
    reference: Optional[EncoderDecoder] = None  # frozen initial model for the optional KL term
    dist: distributed.Dist = field(default_factory=distributed.Dist)


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The NumPy RNG of the sample at `position` of the data stream (codec orders); rank-independent."""
    return np.random.default_rng([seed, position, 11])


def sample_generator(seed: int, position: int, device: torch.device) -> torch.Generator:
    """The torch generator of the REINFORCE draws of the image at `position`; rank-independent."""
    key = int(np.random.SeedSequence([seed, position, 13]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(key)


def global_token_weight(ctx: StepContext, count: torch.Tensor) -> torch.Tensor:
    """Factor turning this rank's token mean into its share of the global token mean under DDP.

    DDP averages gradients over K ranks, so loss_r * K * count_r / sum(count) makes the average the
    mean over all tokens of the global batch, whatever the ranks' token counts.
    """
    if ctx.dist.world == 1:
        return torch.ones((), device=count.device)
    count = count.float()
    return count * ctx.dist.world / distributed.all_sum(count, ctx.dist).clamp(min=1)


def pad_sequences(seqs: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """List of LongTensor[T_i] -> (LongTensor[B, max T], lengths LongTensor[B])."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out, lengths


def mle_step(ctx: StepContext, images: torch.Tensor, targets: list,
             positions: Sequence[int]) -> tuple[torch.Tensor, dict]:
    """Teacher-forced negative log-likelihood of the encoded targets (mean over the global tokens)."""
    codec, seed = ctx.task.codec, ctx.train.seed
    tokens, lengths = pad_sequences([codec.encode(t, sample_rng(seed, p)) for t, p in zip(targets, positions)],
                                    codec.end_token)
    tokens, lengths = tokens.to(images.device), lengths.to(images.device)
    step_lp = ctx.model(images, tokens)
    loss = (ctx.task.mle_loss or mle_loss)(step_lp, tokens, lengths)
    loss = loss * global_token_weight(ctx, lengths.sum())  # exactly 1 in one process
    return loss, {"loss": loss.item(), "target_length": float(lengths.float().mean())}


def sample_per_image(ctx: StepContext, images: torch.Tensor, positions: Sequence[int]) -> Generation:
    """N samples of each image, image i drawn from its own generator (keyed by positions[i]), in one
    batched call: the samples do not depend on how the global batch is split over ranks."""
    cfg = ctx.train
    generators = [sample_generator(cfg.seed, p, images.device) for p in positions]
    return ctx.policy.generate(images, cfg.num_samples, temperature=cfg.temperature, top_k=cfg.top_k,
                               generator=generators)


def reward_step(ctx: StepContext, images: torch.Tensor, targets: list,
                positions: Sequence[int]) -> tuple[torch.Tensor, dict]:
    """REINFORCE with a leave-one-out (or greedy) baseline, plus the task's auxiliary loss. With
    train.credit = "token", each item's tokens get the item's own advantage (credit.py)."""
    cfg, task, n = ctx.train, ctx.task, ctx.train.num_samples
    gen = sample_per_image(ctx, images, positions)
    outputs = decode_all(task.codec, gen)
    repeated = [t for t in targets for _ in range(n)]
    rewards, parts = ctx.reward_fn(outputs, repeated)
    rewards = torch.as_tensor(rewards, dtype=torch.float32).view(len(targets), n)
    if cfg.baseline == "greedy":
        greedy = ctx.policy.generate(images, 1, greedy=True)
        base, _ = ctx.reward_fn(decode_all(task.codec, greedy), targets)
        advantages = rewards - torch.as_tensor(base, dtype=torch.float32).view(-1, 1)
    else:
        advantages = leave_one_out_advantage(rewards)
    tokens, lengths = gen.tokens, gen.lengths
    step_lp = ctx.model(images, tokens, n)  # (B*N, T, V)
    if cfg.credit == "token":
        per_token = token_advantages(task, outputs, parts, n, lengths, tokens.shape[1], cfg.reward)
        loss = token_reinforce_loss(step_lp, tokens, lengths, per_token.to(step_lp.device))
    else:
        seq_lp = sequence_log_probs(step_lp, tokens, lengths)
        loss = reinforce_loss(seq_lp, advantages.flatten().to(seq_lp.device))
    logs = {"reward": float(rewards.mean()), "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "reward_max": float(rewards.max()),
            "all_equal_frac": float((rewards.max(1).values == rewards.min(1).values).float().mean()),
            "sample_length": float(lengths.float().mean()), "no_end_rate": float((~gen.ended).float().mean()),
            "pg_loss": loss.item()}
    if task.aux_loss is not None and cfg.aux_weight > 0:
        aux = task.aux_loss(step_lp, tokens, outputs, repeated)
        loss = loss + cfg.aux_weight * aux
        logs["aux_loss"] = aux.item()
    if ctx.reference is not None and cfg.kl_weight > 0:
        with torch.no_grad():
            ref_lp = ctx.reference.log_probs(images, tokens, n)
        kl = kl_to_reference(step_lp, ref_lp, lengths)
        kl = kl * global_token_weight(ctx, lengths.sum())
        loss = loss + cfg.kl_weight * kl
        logs["kl"] = kl.item()
    for name, value in (parts or {}).items():
        if name == ITEM_PART:  # per item, not per sample
            continue
        logs[f"reward_{name}"] = float(torch.as_tensor(value, dtype=torch.float32).mean())
    if task.sample_stats is not None:
        logs.update({k: float(v) for k, v in task.sample_stats(outputs, repeated).items()})
    logs["loss"] = loss.item()
    return loss, logs


STEPS = {"mle": mle_step, "reward": reward_step}

