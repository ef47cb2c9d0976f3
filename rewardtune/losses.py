"""Losses as pure tensor functions. Shapes: B sequences, T tokens, V vocabulary, N samples per image."""
from __future__ import annotations

import torch


def valid_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """BoolTensor[B, T]: positions up to and including each sequence's end token."""
    return torch.arange(T, device=lengths.device)[None] < lengths[:, None]


def mean_valid_nll(chosen: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """-mean of per-token log-likelihoods (B, T) over the valid positions of each sequence -> scalar."""
    mask = valid_mask(lengths, chosen.shape[1]).float()
    return -(chosen * mask).sum() / mask.sum().clamp(min=1)


def mle_loss(step_log_probs: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean token negative log-likelihood: (B, T, V), (B, T), (B,) -> scalar."""
    return mean_valid_nll(step_log_probs.gather(-1, targets[..., None])[..., 0], lengths)


def leave_one_out_advantage(rewards: torch.Tensor) -> torch.Tensor:
    """A_j = R_j - mean of the other samples' rewards of the same input: (B, N) -> (B, N)."""
    n = rewards.shape[-1]
    return rewards - (rewards.sum(-1, keepdim=True) - rewards) / (n - 1)


def reinforce_loss(seq_log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-mean(stop_grad(A) * log P(y|x)): (B*N,), (B*N,) -> scalar."""
    return -(advantages.detach() * seq_log_probs).mean()


def kl_to_reference(step_log_probs: torch.Tensor, ref_log_probs: torch.Tensor,
                    lengths: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens of KL(policy || reference) per position: (B, T, V) x2, (B,) -> scalar."""
    kl = (step_log_probs.exp() * (step_log_probs - ref_log_probs.detach())).sum(-1)  # (B, T)
    mask = valid_mask(lengths, kl.shape[1]).float()
    return (kl * mask).sum() / mask.sum().clamp(min=1)
