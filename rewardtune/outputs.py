"""What the core does with a task's outputs, shared by training, evaluation, analysis and the report.

    encode_all      targets -> token sequences (through the codec's batched `encode_batch` when it has one)
    decode_all      generated token sequences -> the task's outputs (through its codec), each with its image
    decode_tokens   token lists -> outputs, each with its image (the codec's batched `decode_batch` when present)
    resolve_reward  a reward by name: one of the task's, or any `package.module:function`
    score_outputs   every reward of {name: fn} on a list of outputs

Only the Task contract (rewardtune/tasks/base.py) is used; nothing here imports a task module.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Optional, Sequence

import torch

from .errors import ConfigError
from .tasks.base import ITEM_PART, Task


def encode_all(codec, targets: Sequence[Any], rngs: Optional[Sequence[Any]] = None) -> list[torch.Tensor]:
    """Each target's tokens (LongTensor[T_i]); `rngs[i]` drives target i's random order. One batched call
    when the codec offers `encode_batch(targets, rngs)` (a learned code runs a network), else one each."""
    rngs = list(rngs) if rngs is not None else [None] * len(targets)
    batched = getattr(codec, "encode_batch", None)
    if callable(batched):
        return list(batched(list(targets), rngs))
    return [codec.encode(t, r) for t, r in zip(targets, rngs)]


def decode_tokens(codec, token_lists: Sequence[Sequence[int]], images: Optional[torch.Tensor] = None,
                  step_log_probs: Optional[Sequence[Optional[torch.Tensor]]] = None) -> list:
    """Token lists -> the task's outputs. `images`: FloatTensor[len(token_lists), 3, S, S], sequence i's image
    (what the model saw; a learned code decodes with it), or None. One batched call when the codec offers
    `decode_batch(token_lists, images, step_log_probs)`, else `decode(tokens, step_log_probs, image=...)` each."""
    lps = list(step_log_probs) if step_log_probs is not None else [None] * len(token_lists)
    if images is not None and len(images) != len(token_lists):
        raise ValueError(f"{len(token_lists)} token sequences but {len(images)} images")
    batched = getattr(codec, "decode_batch", None)
    if callable(batched):
        return list(batched(list(token_lists), images, lps))
    if images is None:
        return [codec.decode(tokens, lp) for tokens, lp in zip(token_lists, lps)]
    return [codec.decode(tokens, lp, image=image) for tokens, lp, image in zip(token_lists, lps, images)]


def decode_all(codec, gen, step_log_probs: Optional[torch.Tensor] = None,
               images: Optional[torch.Tensor] = None) -> list:
    """Decode every generated sequence of `gen` (a model.encdec.Generation, B*N sequences: N per image in
    image order) up to its length; `images` (FloatTensor[B, 3, S, S], the model's inputs) gives each
    sequence its own image."""
    tokens, lengths = gen.tokens.cpu(), gen.lengths.cpu()
    count = tokens.shape[0]
    if images is not None:
        if len(images) == 0 or count % len(images):
            raise ValueError(f"{count} generated sequences do not split over {len(images)} images")
        per_image = count // len(images)
        images = images.repeat_interleave(per_image, dim=0) if per_image > 1 else images
    lps = None if step_log_probs is None else [step_log_probs[i, :lengths[i]] for i in range(count)]
    return decode_tokens(codec, [tokens[i, :lengths[i]].tolist() for i in range(count)], images, lps)


def resolve_reward(task: Task, name: str) -> Callable:
    """A task reward by name, or any `package.module:function` with the same signature."""
    if not name:
        name = next(iter(task.rewards))
    if name in task.rewards:
        return task.rewards[name]
    if ":" not in name:
        raise ConfigError(f"config key 'train.reward': unknown reward {name!r} for task '{task.name}' "
                          f"(built in: {', '.join(task.rewards)}; or give package.module:function)")
    module_name, fn_name = name.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"config key 'train.reward': cannot import {name!r} ({e})") from None
    if not callable(fn):
        raise ConfigError(f"config key 'train.reward': {name!r} is not callable")
    return fn


def score_outputs(rewards: dict, outputs: Sequence[Any], targets: Sequence[Any]) -> tuple[dict, dict]:
    """Every reward fn of {name: fn} on outputs -> ({name: (n,)}, {"name/part": (n,)} for per-sample parts)."""
    values, parts = {}, {}
    for name, fn in rewards.items():
        result = fn(list(outputs), list(targets))
        total, named = result if isinstance(result, tuple) else (result, {})
        values[name] = torch.as_tensor(total, dtype=torch.float64).reshape(-1).cpu().numpy()
        for part, value in (named or {}).items():
            value = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
            if value.numel() == len(outputs) and part not in (name, ITEM_PART):
                parts[f"{name}/{part}"] = value.cpu().numpy()
    return values, parts
