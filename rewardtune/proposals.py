"""Task proposals in the reward stage (`train.proposal_weight > 0`): a departure from the paper.

REINFORCE only learns from what the sampler draws. Where the reward pays for outputs the model almost
never samples (detection: a box emitted again with its second class, docs/method.md#detection), a task
may propose them: `Task.propose` turns each sample into a variant (with a codec that reads step log-probs,
a variant of the same length whose changed tokens the decoder reads back unchanged, so the sample's log-probs
read it too). The loop rewards every proposal like
a sample and adds a self-imitation term (Oh et al. 2018, "Self-Imitation Learning"): the proposals whose
reward beats the mean reward of their image's samples raise the log-likelihood of the tokens where they depart
from their sample, weighted by that margin,

    L_prop = -proposal_weight * mean_j( max(R(prop_j) - mean_i R(sample_i), 0) * sum_{t in D_j} log P(prop_jt | prop_j<t, x) ),

D_j: the positions t where proposal j's token is not its sample's token at t (or the sample has ended), and the
others are left alone (pushing down what the model would not draw anyway teaches nothing). The tokens a
proposal shares with its sample are the sample's: the REINFORCE term already credits them with the sample's
own advantage, and imitating them again with a positive-only weight pulls the whole policy toward whichever
samples happen to be proposed (measured: a whole-sequence imitation of hedge-token proposals cost the boxes
4 points of mAP in 40 steps, docs/results.md#faint-world). Deterministic: a proposal is a function of its
sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .errors import ConfigError
from .tasks.base import Task, decode_tokens, pad_sequences, reads_log_probs


@dataclass
class Proposals:
    """One micro-batch's proposals, one per sample (B*N, in sample order)."""

    tokens: torch.Tensor  # LongTensor[B*N, T], end-token padded; a sample without a proposal holds itself
    lengths: torch.Tensor  # LongTensor[B*N]
    valid: torch.Tensor  # BoolTensor[B, N]: the task proposed something for this sample
    rewards: torch.Tensor  # (B, N); the sample's own reward where not valid
    advantages: torch.Tensor  # (B, N): R(proposal) - mean R(samples of its image), 0 where not valid


def check_proposals(task: Task, train) -> None:
    """ConfigError, before anything runs, when train.proposal_weight > 0 cannot work with this task."""
    if train.stage == "reward" and train.proposal_weight > 0 and task.propose is None:
        raise ConfigError(f"config key 'train.proposal_weight': {train.proposal_weight} needs a task that proposes "
                          f"outputs (Task.propose); task '{task.name}' has none (set it to 0)")


def make_proposals(task: Task, gen, images: torch.Tensor, repeated: Sequence, sample_rewards: torch.Tensor,
                   reward_fn: Callable) -> Proposals:
    """Proposals of the samples `gen` (a Generation with step_log_probs, N per image), rewarded against
    `repeated` (each sample's target) and `sample_rewards` (B, N)."""
    b, n = sample_rewards.shape
    tokens, lengths = gen.tokens.cpu(), gen.lengths.cpu()
    seqs, valid = [], []
    for i in range(tokens.shape[0]):
        own = tokens[i, :lengths[i]].tolist()
        proposal = task.propose(own, gen.step_log_probs[i, :lengths[i]].detach().float().cpu())
        valid.append(proposal is not None)
        seqs.append(torch.as_tensor(proposal if proposal is not None else own, dtype=torch.long))
    valid_t = torch.tensor(valid, dtype=torch.bool).view(b, n)
    per_image = images.repeat_interleave(n, dim=0) if n > 1 else images
    lps = None
    if reads_log_probs(task.codec):  # the sample's log-probs read its proposal: same positions, same read-back
        if any(len(s) != int(n_i) for s, n_i in zip(seqs, lengths)):
            raise ValueError(f"task {task.name!r}: its codec reads step log-probs, so a proposal must keep its "
                             f"sample's length")
        lps = [gen.step_log_probs[i, :lengths[i]].detach().float().cpu() for i in range(len(seqs))]
    outputs = decode_tokens(task.codec, [s.tolist() for s in seqs], per_image, lps)
    rewards, _ = reward_fn(outputs, repeated)
    rewards = torch.as_tensor(rewards, dtype=torch.float32).view(b, n)
    rewards = torch.where(valid_t, rewards, sample_rewards)
    advantages = torch.where(valid_t, rewards - sample_rewards.mean(1, keepdim=True), torch.zeros_like(rewards))
    padded, padded_lengths = pad_sequences(seqs, task.codec.end_token)
    return Proposals(padded.to(gen.tokens.device), padded_lengths.to(gen.tokens.device), valid_t, rewards, advantages)


def departing_log_probs(step_log_probs: torch.Tensor, proposals: torch.Tensor, lengths: torch.Tensor,
                        samples: torch.Tensor, sample_lengths: torch.Tensor) -> torch.Tensor:
    """Per proposal, the sum of log P of its tokens that depart from its sample's (a different token at the same
    position, or any token past the sample's end): (B*N, T', V) with grad, (B*N, T'), (B*N,), (B*N, T), (B*N,)
    -> (B*N,)."""
    width = proposals.shape[1]
    own = torch.full_like(proposals, -1)
    own[:, :min(width, samples.shape[1])] = samples[:, :width]
    pos = torch.arange(width, device=proposals.device)[None]
    own = torch.where(pos < sample_lengths[:, None].to(proposals.device), own, torch.full_like(own, -1))
    departs = (pos < lengths[:, None].to(proposals.device)) & (proposals != own)
    chosen = step_log_probs.gather(-1, proposals[..., None])[..., 0]
    return (chosen * departs).sum(1)


def proposal_loss(departing: torch.Tensor, p: Proposals) -> torch.Tensor:
    """Self-imitation of the proposals that beat their image's sample mean: -mean(max(A, 0) * log P(departing
    tokens)) over all B*N proposal slots ((B*N,) `departing_log_probs` with grad -> scalar)."""
    weight = p.advantages.clamp(min=0).flatten().to(departing.device)
    return -(weight.detach() * departing).mean()


def proposal_logs(drawn: Sequence) -> dict:
    """Statistics of a step's proposals over its micro-batches: mean reward of the proposed ones, the share of
    samples with a proposal, and the share of proposals that beat their image's sample mean."""
    props = [d.proposals for d in drawn if d.proposals is not None]
    if not props:
        return {}
    valid = torch.cat([p.valid.flatten() for p in props])
    rewards = torch.cat([p.rewards.flatten() for p in props])
    better = torch.cat([(p.advantages > 0).flatten() for p in props])
    count = int(valid.sum())
    return {"proposal_frac": float(valid.float().mean()),
            "proposal_reward": float(rewards[valid].mean()) if count else 0.0,
            "proposal_better_frac": float(better[valid].float().mean()) if count else 0.0}
