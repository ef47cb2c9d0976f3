"""Losses as pure tensor functions. Shapes: B sequences, T tokens, V vocabulary, N samples per image."""
from __future__ import annotations

from typing import Optional

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


def reward_to_go_advantage(contributions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per item position, the reward still to come minus its leave-one-out baseline: (B, N, K), bool (B, N, K)
    -> (B, N, K + 1).

    G_jk = the sum of sample j's contributions from item k on (0 from its last item on: G_j,K = 0), and
    A_jk = G_jk - the mean of G_ik over the other N - 1 samples i of the same input. Position k < count_j
    is item k's; position count_j is the decision to stop there. A_j0 is the sequence's leave-one-out
    advantage (G_j0 is its reward). Item k's tokens cannot change what came before them, so leaving
    the earlier items' reward out keeps the policy gradient unbiased and removes their noise."""
    c = torch.where(valid, contributions, torch.zeros_like(contributions))
    to_go = torch.cat([c.flip(-1).cumsum(-1).flip(-1), torch.zeros_like(c[..., :1])], dim=-1)  # (B, N, K + 1)
    n = to_go.shape[1]
    if n < 2:
        raise ValueError("the reward-to-go advantage needs >= 2 samples per input (a leave-one-out baseline)")
    baseline = (to_go.sum(1, keepdim=True) - to_go) / (n - 1)
    return to_go - baseline


def token_reinforce_loss(step_log_probs: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                         advantages: torch.Tensor) -> torch.Tensor:
    """-mean over sequences of sum_t stop_grad(A_t) * log P(y_t | y_<t, x), over each sequence's tokens up to
    its end token: (B, T, V), (B, T), (B,), (B, T) -> scalar.

    Normalised as reinforce_loss (a sum over a sequence's tokens, a mean over sequences), so that a
    sequence's advantage on every one of its tokens gives exactly reinforce_loss, and the policy
    gradient keeps its scale against the auxiliary loss, the KL term and gradient clipping (a mean over
    tokens would shrink it by the mean length). Under DDP every rank holds as many sequences
    (train.batch_size divides evenly), so the ranks' average is the global mean, as for reinforce_loss.
    """
    chosen = step_log_probs.gather(-1, tokens[..., None])[..., 0]  # (B, T)
    mask = valid_mask(lengths, chosen.shape[1]).to(chosen.dtype)
    return -(advantages.detach() * chosen * mask).sum() / max(chosen.shape[0], 1)


def kl_to_reference(step_log_probs: torch.Tensor, ref_log_probs: torch.Tensor,
                    lengths: torch.Tensor, exempt: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over valid tokens of KL(policy || reference) per position: (B, T, V) x2, (B,) -> scalar.
    `exempt`: BoolTensor[>= T], positions left out (the codec's `kl_exempt`: decisions the reference never
    learned, e.g. detection's hedge token)."""
    kl = (step_log_probs.exp() * (step_log_probs - ref_log_probs.detach())).sum(-1)  # (B, T)
    mask = kl_mask(lengths, kl.shape[1], exempt).float()
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def kl_mask(lengths: torch.Tensor, T: int, exempt: Optional[torch.Tensor] = None) -> torch.Tensor:
    """BoolTensor[B, T]: the positions the KL term averages over (valid, not exempt)."""
    mask = valid_mask(lengths, T)
    return mask if exempt is None else mask & ~exempt[:T].to(mask.device)[None]
