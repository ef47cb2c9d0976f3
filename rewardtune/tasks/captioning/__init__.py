"""Image captioning (docs/method.md#captioning): words out, tuned for CIDEr-D.

    make_task(config)          reads the training captions (not the images) for the vocabulary and
                               the CIDEr-D document frequencies
    make_task(config, state)   rebuilds the same task from a checkpoint's state
                               {"vocab": {"words": [...]}, "cider_df": {"num_images", "df"}}

Options (config.task_options): min_count (a word enters the vocabulary after this many training
occurrences), max_len (tokens, end token included), karpathy_file (a Karpathy `dataset_coco.json`;
images are then read from data.train_images / data.val_images, or data.root, + filepath/filename).
The reward baseline (leave-one-out or greedy, self-critical) is `train.baseline`, chosen by the loop.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ...config import task_options
from ...errors import ConfigError, DataError
from ..base import DataCheck, FileScorer, Task
from ..detection.data import annotated_splits
from .cider import CiderD, NgramTable, cider_d
from .codec import CaptionCodec
from .data import check_captions_file, load_split, split_records
from .metrics import caption_metrics, score_files, split_metrics, write_predictions
from .tokenizer import Vocab, tokenize, tokenize_caption
from .viz import visualize

__all__ = ["CaptioningOptions", "CaptionCodec", "CiderD", "NgramTable", "Vocab", "caption_metrics",
           "cider_d", "make_task", "score_files", "tokenize", "tokenize_caption", "write_predictions"]

# `rewardtune score captioning`: the files it reads and the function that scores them
FILE_SCORER = FileScorer(files=(("pred", "results JSON: [{image_id, caption}]"),
                                ("gt", "COCO captions JSON (images, annotations with captions)")), score=score_files)
# `rewardtune data check --task captioning --root DIR`: ROOT/annotations/captions_<split>.json + ROOT/images/<split>/
DATA_CHECK = DataCheck(splits=functools.partial(annotated_splits, prefix="captions_"), check=check_captions_file)


@dataclass
class CaptioningOptions:
    min_count: int = 1  # training occurrences a word needs to enter the vocabulary
    max_len: int = 24  # tokens per caption, end token included
    karpathy_file: str = ""  # a Karpathy split file (dataset_coco.json); "" = COCO captions JSON


def options(config: Any) -> CaptioningOptions:
    """Read and check config.task_options; a bad value raises ConfigError naming the key."""
    opts = task_options(CaptioningOptions, config.task_options, "captioning")
    if opts.min_count < 1:
        raise ConfigError(f"config key 'task_options.min_count': must be >= 1, got {opts.min_count}")
    if opts.max_len < 2:
        raise ConfigError(f"config key 'task_options.max_len': must be >= 2, got {opts.max_len}")
    return opts


def cider_reward(outputs: Sequence[str], targets: Sequence[dict], scorer: CiderD,
                 tokenized=tokenize_caption) -> tuple[torch.Tensor, dict]:
    """CIDEr-D of each output against its target's references, df from the training references.

    -> (FloatTensor[len(outputs)], {}). `tokenized` may be a cached `tokenize_caption`.
    """
    cands = [tokenized(o) for o in outputs]
    refs = [tuple(tokenized(r) for r in t["refs"]) for t in targets]
    return torch.as_tensor(scorer(cands, refs), dtype=torch.float32), {}


def sample_stats(outputs: Sequence[str], targets: Sequence[Any]) -> dict[str, float]:
    """Mean caption length in words (logged during tuning)."""
    if not outputs:
        return {}
    return {"mean_length": sum(len(o.split()) for o in outputs) / len(outputs)}


def _from_state(state: dict) -> tuple[Vocab, NgramTable]:
    try:
        return Vocab.from_dict(state["vocab"]), NgramTable.from_state(state["cider_df"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"captioning task state: missing or malformed 'vocab' / 'cider_df' ({e})") from None


def make_task(config: Any, state: Optional[dict] = None) -> Task:
    """The captioning Task; without `state`, vocabulary and df come from the training captions."""
    opts = options(config)
    if state is None:
        train = split_records(config, "train", opts.karpathy_file)
        vocab = Vocab.build((c for r in train for c in r.refs), opts.min_count)
        table = NgramTable.from_references([[tokenize_caption(c) for c in r.refs] for r in train])
    else:
        vocab, table = _from_state(state)
    splits: dict = {}

    def load() -> dict:
        if not splits:
            d = config.data
            for name in ("train", "val"):
                splits[name] = load_split(split_records(config, name, opts.karpathy_file), d.image_size,
                                          d.skip_corrupt, d.decode)
        return splits

    tokenized = functools.lru_cache(maxsize=1 << 16)(tokenize_caption)
    reward = functools.partial(cider_reward, scorer=CiderD(table), tokenized=tokenized)
    return Task(
        name="captioning",
        codec=CaptionCodec(vocab, opts.max_len),
        datasets=load,
        rewards={"cider": reward},
        metrics=split_metrics,
        write_predictions=lambda outputs, targets, ids, out_dir: write_predictions(outputs, ids, out_dir),
        visualize=functools.partial(visualize, score=lambda o, t: float(reward([o], [t])[0][0])),
        sample_stats=sample_stats,
        state={"vocab": vocab.to_dict(), "cider_df": table.to_state()},
        primary_metric="cider",
    )
