"""The step functions of the one training loop: an MLE step, a REINFORCE step and UViM's stage I step.

Each takes this process's share of the batch, runs it as train.grad_accum_steps micro-batches (forward,
loss, backward, one after the other: the gradients add up in the parameters' .grad) and returns (the
step's loss, detached; logs of floats). Nothing task-specific: the task enters only through the Task
contract (codec, reward, auxiliary loss, sample stats, proposals).

Randomness is keyed by each sample's global position in the data stream (`positions`), never by
rank or micro-batch, so K processes and k micro-batches draw exactly what one process draws for the
same global batch; token means are normalised by the global token count, so the micro-batches' sum
and DDP's gradient average equal the 1-process, whole-batch gradient.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Optional, Sequence

import numpy as np
import torch

from . import distributed
from .credit import local_advantages, token_advantages
from .losses import (kl_mask, kl_to_reference, leave_one_out_advantage, mle_loss, reinforce_loss,
                     token_reinforce_loss)
from .model.encdec import EncoderDecoder, Generation, sequence_log_probs
from .model.vq import code_stats
from .proposals import Proposals, departing_log_probs, make_proposals, proposal_logs, proposal_loss
from .tasks.base import Task, decode_all, encode_all, pad_sequences, reads_log_probs


@dataclass
class StepContext:
    task: Task
    model: torch.nn.Module  # the module to call for gradients (DDP wrapper or the model)
    policy: EncoderDecoder  # the bare model, for sampling
    train: Any  # config.train
    reward_fn: Optional[Callable] = None
    reference: Optional[EncoderDecoder] = None  # frozen initial model for the optional KL term
    dist: distributed.Dist = field(default_factory=distributed.Dist)
    code: Any = None  # config.code (read by the stage I step)


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The NumPy RNG of the sample at `position` of the data stream (codec orders); rank-independent."""
    return np.random.default_rng([seed, position, 11])


def sample_generator(seed: int, position: int, device: torch.device) -> torch.Generator:
    """The torch generator of the REINFORCE draws of the image at `position`; rank-independent."""
    key = int(np.random.SeedSequence([seed, position, 13]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(key)


def token_weights(ctx: StepContext, counts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per micro-batch of this rank, the factor turning its token mean into its share of the token mean
    over the whole global batch (every rank's micro-batches): count * K / (sum of all counts).

    Summing the micro-batches' weighted losses (backward adds their gradients) and DDP's average over
    K ranks then give the mean over all tokens of the global batch, whatever each part's token count.
    Exactly 1 in one process without accumulation. One collective for all the micro-batches.
    """
    if ctx.dist.world == 1 and len(counts) == 1:
        return [torch.ones((), device=counts[0].device)]
    counts = [c.float() for c in counts]
    total = distributed.all_sum(sum(counts), ctx.dist).clamp(min=1)
    return [c * ctx.dist.world / total for c in counts]


def kl_exempt(codec) -> Optional[torch.Tensor]:
    """The codec's positions left out of the KL term (Codec.kl_exempt), or None."""
    fn = getattr(codec, "kl_exempt", None)
    return fn() if callable(fn) else None


def micro_batches(size: int, k: int) -> list[slice]:
    """This rank's `size` images as k consecutive micro-batches of size / k (config and loop check it divides)."""
    if size % k:
        raise ValueError(f"{size} images do not split into {k} equal micro-batches")
    part = size // k
    return [slice(i * part, (i + 1) * part) for i in range(k)]


def autocast(ctx: StepContext, device: torch.device) -> ContextManager:
    """torch.autocast to bfloat16 when train.precision is "bf16" (a no-op for "fp32"). The model's
    log-probs come out of a float32 log-softmax either way; parameters and gradients stay float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.train.precision == "bf16")


def gradient_sync(ctx: StepContext, last: bool) -> ContextManager:
    """Around a micro-batch's forward and backward: DDP all-reduces the gradients on the step's last
    micro-batch only (the others run under no_sync and add to .grad locally)."""
    return nullcontext() if last or not hasattr(ctx.model, "no_sync") else ctx.model.no_sync()


def mle_step(ctx: StepContext, images: torch.Tensor, targets: list,
             positions: Sequence[int]) -> tuple[torch.Tensor, dict]:
    """Teacher-forced negative log-likelihood of the encoded targets (mean over the global tokens),
    its gradient accumulated over the micro-batches."""
    codec, seed = ctx.task.codec, ctx.train.seed
    tokens, lengths = pad_sequences(encode_all(codec, targets, [sample_rng(seed, p) for p in positions]),
                                    codec.end_token)
    tokens, lengths = tokens.to(images.device), lengths.to(images.device)
    parts = micro_batches(len(images), ctx.train.grad_accum_steps)
    weights = token_weights(ctx, [lengths[p].sum() for p in parts])
    total = torch.zeros((), device=images.device)
    for i, (part, weight) in enumerate(zip(parts, weights)):
        part_tokens = tokens[part, :int(lengths[part].max())]  # the decoder is causal: trailing padding is inert
        with gradient_sync(ctx, last=i == len(parts) - 1):
            with autocast(ctx, images.device):
                step_lp = ctx.model(images[part], part_tokens)
            loss = (ctx.task.mle_loss or mle_loss)(step_lp, part_tokens, lengths[part]) * weight
            loss.backward()
        total = total + loss.detach()
    return total, {"loss": total.item(), "target_length": float(lengths.float().mean())}


def sample_per_image(ctx: StepContext, images: torch.Tensor, positions: Sequence[int]) -> Generation:
    """N samples of each image, image i drawn from its own generator (keyed by positions[i]), in one
    batched call: the samples do not depend on how the global batch is split over ranks."""
    cfg = ctx.train
    generators = [sample_generator(cfg.seed, p, images.device) for p in positions]
    return ctx.policy.generate(images, cfg.num_samples, temperature=cfg.temperature, top_k=cfg.top_k,
                               generator=generators,
                               return_step_log_probs=cfg.proposal_weight > 0 or reads_log_probs(ctx.task.codec))


@dataclass
class Drawn:
    """One micro-batch's samples (no gradient): what its REINFORCE loss needs, and what the logs read."""

    part: slice  # its images in this rank's share of the batch
    gen: Generation  # N samples per image, in image order
    outputs: list  # the decoded samples
    repeated: list  # each sample's target
    rewards: torch.Tensor  # (B, N)
    parts: dict  # the reward's parts
    advantages: torch.Tensor  # (B, N)
    # seconds spent sampling (the greedy baseline's decoding included), decoding the samples to outputs (a learned
    # code's stage I decoder), and computing the rewards
    times: dict = field(default_factory=dict)
    proposals: Optional[Proposals] = None  # the task's proposals, with train.proposal_weight > 0 (proposals.py)


def draw(ctx: StepContext, images: torch.Tensor, targets: list, positions: Sequence[int], part: slice) -> Drawn:
    """Sample, decode and reward the images of one micro-batch; their sequence advantages."""
    cfg, task, n = ctx.train, ctx.task, ctx.train.num_samples
    images, targets = images[part], targets[part]
    t0 = time.perf_counter()
    with autocast(ctx, images.device):
        gen = sample_per_image(ctx, images, positions[part])
        greedy = (ctx.policy.generate(images, 1, greedy=True, return_step_log_probs=reads_log_probs(task.codec))
                  if cfg.baseline == "greedy" else None)
    t1 = time.perf_counter()
    outputs = decode_all(task.codec, gen, images=images)
    greedy_outputs = decode_all(task.codec, greedy, images=images) if greedy is not None else None
    t2 = time.perf_counter()
    repeated = [t for t in targets for _ in range(n)]
    rewards, parts = ctx.reward_fn(outputs, repeated)
    rewards = torch.as_tensor(rewards, dtype=torch.float32).view(len(targets), n)
    if greedy_outputs is not None:
        base, _ = ctx.reward_fn(greedy_outputs, targets)
        advantages = rewards - torch.as_tensor(base, dtype=torch.float32).view(-1, 1)
    else:
        advantages = leave_one_out_advantage(rewards)  # per image over its own samples: exact per micro-batch
    times = {"time_sample": t1 - t0, "time_decode": t2 - t1, "time_reward": time.perf_counter() - t2}
    proposals = None
    if cfg.proposal_weight > 0:
        t3 = time.perf_counter()
        proposals = make_proposals(task, gen, images, repeated, rewards, ctx.reward_fn)
        times["time_propose"] = time.perf_counter() - t3
    return Drawn(part, gen, outputs, repeated, rewards, parts or {}, advantages, times, proposals)


def reward_step(ctx: StepContext, images: torch.Tensor, targets: list,
                positions: Sequence[int]) -> tuple[torch.Tensor, dict]:
    """REINFORCE with a leave-one-out (or greedy) baseline, plus the task's auxiliary loss. With
    train.credit = "token", each item's tokens get the item's own advantage (credit.py).

    Every micro-batch is sampled first (no gradient), then each is differentiated in turn. The micro-batches
    hold equal numbers of samples, so the mean over samples (the REINFORCE term) and the auxiliary loss are
    each micro-batch's mean over k, and the KL term's token mean is weighted by tokens (token_weights); the
    auxiliary loss is thus a mean of per-micro-batch means, as under DDP it is a mean of per-rank means.
    """
    cfg, task = ctx.train, ctx.task
    drawn = [draw(ctx, images, targets, positions, part)
             for part in micro_batches(len(images), cfg.grad_accum_steps)]
    exempt = kl_exempt(task.codec)
    kl_weights = (token_weights(ctx, [kl_mask(d.gen.lengths, d.gen.tokens.shape[1], exempt).sum() for d in drawn])
                  if ctx.reference is not None else None)
    total, terms = torch.zeros((), device=images.device), {}
    for i, d in enumerate(drawn):
        with gradient_sync(ctx, last=i == len(drawn) - 1):
            loss, logs = reward_loss(ctx, images[d.part], d, 1.0 / len(drawn), kl_weights[i] if kl_weights else None,
                                     exempt)
            loss.backward()
        total = total + loss.detach()
        for name, value in logs.items():
            terms[name] = terms.get(name, 0.0) + value
    return total, {**reward_logs(task, drawn), **proposal_logs(drawn), **terms, "loss": total.item()}


def reward_loss(ctx: StepContext, images: torch.Tensor, d: Drawn, share: float,
                kl_weight: Optional[torch.Tensor], exempt: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """One micro-batch's REINFORCE loss (+ auxiliary loss, + KL term), with gradient, times its share of the
    step (`share` = 1 / k, `kl_weight` its share of the global tokens; `exempt` the codec's positions the KL
    term leaves out); the terms' values for the logs."""
    cfg, task, n = ctx.train, ctx.task, ctx.train.num_samples
    tokens, lengths = d.gen.tokens, d.gen.lengths
    if d.proposals is None:
        with autocast(ctx, images.device):
            step_lp = ctx.model(images, tokens, n)  # (B*N, T, V), float32
    else:  # one forward for samples and proposals (one graph for DDP): per image its N samples, then its N proposals
        step_lp, prop_lp, prop_tokens = forward_with_proposals(ctx, images, tokens, d.proposals.tokens)
    if cfg.credit != "sequence":
        if cfg.credit == "local":
            per_token = local_advantages(task, d.outputs, d.parts, n, lengths, tokens.shape[1], cfg.credit_radius,
                                         cfg.reward)
        else:
            per_token = token_advantages(task, d.outputs, d.parts, n, lengths, tokens.shape[1], cfg.reward)
        loss = token_reinforce_loss(step_lp, tokens, lengths, per_token.to(step_lp.device)) * share
    else:
        seq_lp = sequence_log_probs(step_lp, tokens, lengths)
        loss = reinforce_loss(seq_lp, d.advantages.flatten().to(seq_lp.device)) * share
    logs = {"pg_loss": loss.item()}
    if d.proposals is not None:
        departing = departing_log_probs(prop_lp, prop_tokens, d.proposals.lengths, tokens, lengths)
        prop = proposal_loss(departing, d.proposals) * share
        loss = loss + cfg.proposal_weight * prop
        logs["proposal_loss"] = prop.item()
    if task.aux_loss is not None and cfg.aux_weight > 0:
        aux = task.aux_loss(step_lp, tokens, d.outputs, d.repeated) * share
        loss = loss + cfg.aux_weight * aux
        logs["aux_loss"] = aux.item()
    if ctx.reference is not None and cfg.kl_weight > 0:
        with torch.no_grad(), autocast(ctx, images.device):
            ref_lp = ctx.reference.log_probs(images, tokens, n)
        kl = kl_to_reference(step_lp, ref_lp, lengths, exempt) * kl_weight
        loss = loss + cfg.kl_weight * kl
        logs["kl"] = kl.item()
    return loss, logs


def forward_with_proposals(ctx: StepContext, images: torch.Tensor, tokens: torch.Tensor,
                           proposals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step log-probs of the samples (B*N, T, V) and of the proposals (B*N, T', V) in one forward, and the
    proposals' tokens padded to T'. The decoder is causal: end-token padding past a sequence is inert."""
    n = ctx.train.num_samples
    b, width = len(images), max(tokens.shape[1], proposals.shape[1])
    both = torch.full((b, 2 * n, width), ctx.task.codec.end_token, dtype=torch.long, device=tokens.device)
    both[:, :n, :tokens.shape[1]] = tokens.view(b, n, -1)
    both[:, n:, :proposals.shape[1]] = proposals.to(tokens.device).view(b, n, -1)
    with autocast(ctx, images.device):
        step_lp = ctx.model(images, both.view(b * 2 * n, width), 2 * n).view(b, 2 * n, width, -1)
    samples = step_lp[:, :n, :tokens.shape[1]].reshape(b * n, tokens.shape[1], -1)
    return samples, step_lp[:, n:].reshape(b * n, width, -1), both[:, n:].reshape(b * n, width)


def reward_logs(task: Task, drawn: Sequence[Drawn]) -> dict:
    """The samples' statistics over all micro-batches of the step (rewards, lengths, reward parts, task stats)."""
    rewards = torch.cat([d.rewards for d in drawn])
    lengths = torch.cat([d.gen.lengths for d in drawn]).float()
    ended = torch.cat([d.gen.ended for d in drawn])
    logs = {"reward": float(rewards.mean()), "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "reward_max": float(rewards.max()),
            "all_equal_frac": float((rewards.max(1).values == rewards.min(1).values).float().mean()),
            "sample_length": float(lengths.mean()), "no_end_rate": float((~ended).float().mean())}
    for name in drawn[0].times:  # the step's seconds in each part, over its micro-batches
        logs[name] = float(sum(d.times[name] for d in drawn))
    for name in drawn[0].parts:
        values = [torch.as_tensor(d.parts[name], dtype=torch.float32) for d in drawn]
        if any(v.dim() > 1 for v in values):  # per item or per region (ITEM_PART, REGION_PART), not per sample
            continue
        logs[f"reward_{name}"] = float(torch.cat([v.reshape(-1) for v in values]).mean())
    if task.sample_stats is not None:
        logs.update({k: float(v) for k, v in task.sample_stats([o for d in drawn for o in d.outputs],
                                                                 [t for d in drawn for t in d.repeated]).items()})
    return logs


def code_dropped(seed: int, positions: Sequence[int], rate: float) -> torch.Tensor:
    """BoolTensor[B]: which images of the batch the stage I decoder sees without their code, each drawn from its
    own position in the data stream (rank- and micro-batch-independent, never the global RNG)."""
    return torch.tensor([bool(np.random.default_rng([seed, p, 17]).random() < rate) for p in positions])


def codec_step(ctx: StepContext, images: torch.Tensor, targets: list,
               positions: Sequence[int]) -> tuple[torch.Tensor, dict]:
    """UViM stage I: the dense target's reconstruction loss (task.dense.loss) plus the quantiser's loss, with code
    dropout; every code.restart_every steps, the codebook entries no longer used are re-seeded from this
    step's oracle outputs. The losses are means over equal micro-batches: their sum (1 / k each) is the batch's."""
    dense, model, cfg = ctx.task.dense, ctx.policy, ctx.train
    inputs = dense.to_input(targets).to(images.device)
    drop = code_dropped(cfg.seed, positions, model.code_dropout).to(images.device)
    parts = micro_batches(len(images), cfg.grad_accum_steps)
    total, logs, codes = torch.zeros((), device=images.device), {}, []
    for i, part in enumerate(parts):
        with gradient_sync(ctx, last=i == len(parts) - 1):
            with autocast(ctx, images.device):
                prediction, vq_loss, code = ctx.model(images[part], inputs[part], drop[part])
            recon, terms = dense.loss(prediction, targets[part])
            loss = (recon + vq_loss.float()) / len(parts)
            loss.backward()
        total = total + loss.detach()
        codes.append(code.detach())
        for name, value in {"recon_loss": recon.item(), "vq_loss": vq_loss.item(), **terms}.items():
            logs[name] = logs.get(name, 0.0) + value / len(parts)
    logs.update(code_stats(torch.cat(codes), model.codebook_size))
    step = positions[0] // cfg.batch_size
    every = ctx.code.restart_every if ctx.code is not None else 0
    if every and (step + 1) % every == 0:
        logs["codes_restarted"] = float(restart_codes(ctx, step))
    return total, {**logs, "loss": total.item()}


def restart_codes(ctx: StepContext, step: int) -> int:
    """Re-seed the dead codebook entries (model/vq.py) with a generator keyed by (seed, step); with K processes,
    rank 0's codebook and usage then replace every rank's (each rank saw its own batch)."""
    key = int(np.random.SeedSequence([ctx.train.seed, step, 19]).generate_state(1, np.uint64)[0])
    device = next(ctx.policy.parameters()).device
    restarted = ctx.policy.restart_dead_codes(torch.Generator(device=device).manual_seed(key))
    quantizer = ctx.policy.quantizer
    distributed.broadcast_tensors([quantizer.codebook.data, quantizer.usage], ctx.dist)
    return restarted


STEPS = {"mle": mle_step, "reward": reward_step, "codec": codec_step}

