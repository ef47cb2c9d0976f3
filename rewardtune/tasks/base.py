"""The Task contract: the single seam between the core (model, loop, checkpoints) and a task.

The core never imports a task module directly; it asks `rewardtune.tasks.make_task(config)` and
then only uses the fields below (and, for codecs, the helpers `encode_all`, `pad_sequences`,
`decode_tokens`, `decode_all`, which tasks may use too). A task module may also offer `FILE_SCORER`, a `FileScorer`: how
`rewardtune score TASK` scores prediction files (the core reads it through `rewardtune.tasks.file_scorer`).

Shapes: B = batch of images, N = samples per image, T = tokens, V = vocabulary size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch

from ..data.dataset import Example  # what a split holds: part of the contract, defined with the splits


class Codec(Protocol):
    """Turns a task target into tokens and any token sequence back into a valid output."""

    vocab_size: int  # number of output tokens (the end token included)
    max_len: int  # longest sequence, end token included
    end_token: int

    def encode(self, target: Any, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        """-> LongTensor[T] ending with `end_token` (T <= max_len). `rng` drives random orders."""

    def decode(self, tokens: Sequence[int], step_log_probs: Optional[torch.Tensor] = None,
               image: Optional[torch.Tensor] = None) -> Any:
        """Any token sequence (ends at the first end token) -> a valid, possibly empty, output.

        `step_log_probs`: FloatTensor[T, V], the model's log-probabilities at each position
        (for scores, e.g. detection's expected IoU); None when not available.
        `image`: FloatTensor[3, S, S], the model's input for this sequence (Example.image): a learned
        code (UViM) decodes with the image as context. The core always passes it; grid codecs ignore it.
        """

    def grammar(self) -> Optional[torch.Tensor]:
        """BoolTensor[max_len, V] of tokens allowed at each position, or None (all allowed)."""

    # Optional, batched forms the core uses when present (a learned code runs a network: one call per batch):
    # `encode_batch(targets, rngs) -> [LongTensor[T_i]]` and
    # `decode_batch(token_lists, images FloatTensor[n, 3, S, S] or None, step_log_probs [FloatTensor[T_i, V] or
    # None] * n) -> [output]`, each equal to encode / decode of every item in turn.
    # Optional: `reads_step_log_probs: bool`, True when `decode` needs the step log-probs to say what the tokens
    # mean (detection's hedge token: the second class); the core then generates and decodes with them (decode_all).
    # Optional: `kl_exempt() -> BoolTensor[max_len] or None`, positions the KL term to the reference leaves out
    # (train.kl_weight; detection's hedge decisions, which the MLE reference never learned).
    # Optional: `read_back() -> LongTensor[V]`, the token the decoder reads back after emitting each
    # token (identity where absent). Detection reads every box's conf token as "right": the conf
    # token is a score, and the boxes after it must not depend on which score was drawn.


# A reward: (outputs, targets) -> (FloatTensor[len(outputs)], {part name: FloatTensor[...]}).
# Pure: no I/O, no globals, no randomness. `targets[i]` is the target of `outputs[i]`.
RewardFn = Callable[[Sequence[Any], Sequence[Any]], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]

# The reward part that splits a reward over the items of each output (detection: its boxes), read when
# train.credit = "token": FloatTensor[S, K], item k's contribution to output s's reward (an output's
# contributions sum to its reward), 0 past its items. Rewards that do not split by item leave it out.
ITEM_PART = "per_item"

# The reward part that says where in the image a dense task's reward was earned, read by the learned code
# (learned_codec.py) to credit each code cell with its region: FloatTensor[S, REGIONS, REGIONS], the image cut
# into equal regions (pixel (y, x) of an H x W image in region (y * REGIONS // H, x * REGIONS // W)), an
# output's regions summing to its reward. Panoptic's PQ reward gives it.
REGION_PART = "per_region"
REGIONS = 32



# Metrics over a split: (outputs, targets, ids) -> {name: float}, as the field's reference tool.
MetricsFn = Callable[[Sequence[Any], Sequence[Any], Sequence[Any]], "dict[str, float]"]

# Auxiliary loss on samples: (step_log_probs FloatTensor[B*N, T, V] with grad, tokens LongTensor[B*N, T],
# outputs, targets) -> scalar tensor (already weighted). Detection's IoU-confidence loss.
AuxLossFn = Callable[[torch.Tensor, torch.Tensor, Sequence[Any], Sequence[Any]], torch.Tensor]


@dataclass
class DenseTarget:
    """A task's target as pixels, for UViM's stage I (train.stage = "codec", model/uvim.py): a restricted oracle
    sees `to_input(targets)`, a base decoder sees the image and the oracle's code and predicts `out_channels`
    maps at the model's resolution S (data.image_size), trained with `loss`; `to_outputs` turns a prediction
    into the task's outputs, exactly what its codec's decode returns (so metrics, write_predictions and
    visualize take them unchanged)."""

    in_channels: int  # channels the oracle sees
    out_channels: int  # channels the base decoder predicts
    # targets -> FloatTensor[B, in_channels, S, S]
    to_input: Callable[[Sequence[Any]], torch.Tensor]
    # (prediction FloatTensor[B, out_channels, S, S] with grad, targets) -> (scalar loss, {name: float})
    loss: Callable[[torch.Tensor, Sequence[Any]], "tuple[torch.Tensor, dict[str, float]]"]
    # prediction FloatTensor[B, out_channels, S, S] (no grad) -> B outputs of the task
    to_outputs: Callable[[torch.Tensor], list]


@dataclass
class Task:
    """Everything the core needs from a task; task state (class counts, vocab...) is bound inside."""

    name: str
    codec: Codec
    datasets: Callable[[], "dict[str, Sequence[Example]]"]  # {"train": ..., "val": ...}, lazily built
    rewards: "dict[str, RewardFn]"
    metrics: MetricsFn
    # (outputs, targets, ids, out_dir): the field's standard format; targets give sizes, gray input etc.
    write_predictions: Callable[[Sequence[Any], Sequence[Any], Sequence[Any], str], None]
    visualize: Callable[[np.ndarray, Any, Any], np.ndarray]  # (HxWx3 uint8, output, target) -> HxWx3 uint8
    aux_loss: Optional[AuxLossFn] = None
    # Optional replacement of the MLE stage's token NLL: (step_log_probs FloatTensor[B, T, V] with grad,
    # tokens LongTensor[B, T], lengths LongTensor[B]) -> scalar. Detection's self-IoU conf targets.
    mle_loss: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None
    # RGB uint8 HxWx3 (already resized) -> what the model sees (colorization: the gray image). Datasets
    # apply it themselves; `predict` applies it to the user's own images.
    preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None
    # A target for a user image that has no annotation (original RGB uint8): sizes, gray input...
    # used by `predict` so that write_predictions/visualize work on outputs alone.
    target_for_image: Optional[Callable[[np.ndarray], Any]] = None
    # Per-sample numbers logged during tuning, e.g. boxes per image: (outputs, targets) -> {name: float}
    sample_stats: Optional[Callable[[Sequence[Any], Sequence[Any]], "dict[str, float]"]] = None
    # Optional refit of what the task learns from the model's own outputs (detection's learned box score):
    # (model, train split, seed) -> logs of floats. The loop calls it before every validation (main
    # process only); it updates `state`, so the checkpoint saved after carries it. Must not draw from
    # the global RNGs (resume stays exact).
    calibrate: Optional[Callable[[Any, Sequence[Example], int], "dict[str, float]"]] = None
    # Optional headroom before tuning, reported by `rewardtune analyze`: (greedy, samples, targets, ids) ->
    # {name: number or text}. greedy[i]: (tokens LongTensor[T_i], step_log_probs FloatTensor[T_i, V]) of image
    # i's greedy output; samples[i]: its K samples, each decoded with its step log-probs. Detection: mAP of
    # the greedy boxes under other rankings (an oracle's among them), of pooled samples, of hedged classes.
    headroom: Optional[Callable[[Sequence[tuple], Sequence[Sequence[Any]], Sequence[Any], Sequence[Any]],
                                "dict[str, Any]"]] = None
    # Optional, for train.credit = "token": output -> int64[k, 2], the [start, stop) token positions of each of
    # its k items, in the order of the reward's ITEM_PART. Detection: each box's six tokens.
    item_tokens: Optional[Callable[[Any], np.ndarray]] = None
    # For train.credit = "local": > 0 when every output's items (item_tokens) are the cells of an item_grid x
    # item_grid grid over the image, in raster order (the learned code's tokens; credit.py).
    item_grid: int = 0
    # Optional, for train.proposal_weight > 0: (a sample's tokens up to its end token, its step_log_probs
    # FloatTensor[T, V]) -> a token list ending with the end token that the sampler would rarely draw but the
    # reward may pay for, or None. The loop rewards each proposal and imitates those that beat their image's
    # sample mean (steps.py). Detection: the sample with its boxes hedged by their second class (proposals.py).
    propose: Optional[Callable[[Sequence[int], torch.Tensor], Optional[list]]] = None
    # Optional: the target as pixels (UViM's learned code, train.stage = "codec"); panoptic and colorization.
    dense: Optional[DenseTarget] = None
    state: dict = field(default_factory=dict)  # JSON-serialisable state saved with checkpoints
    primary_metric: str = "score"  # the validation metric that picks the best checkpoint
    # The value `metrics` gives where a metric has nothing to average (detection: COCOeval's -1 for an
    # area range without objects), or None; reports show it as n/a, not as a number.
    undefined_metric: Optional[float] = None


@dataclass
class FileScorer:
    """How `rewardtune score TASK --NAME PATH ...` scores prediction files in the task's standard format.

    files: (name, help) of each file or folder it needs, in the order `score` takes them; the name
    "pred_json" is the option --pred-json. score: (*paths) -> {metric name: number}; a bad file raises
    `rewardtune.errors.DataError` with one line naming the file and the entry. In a task module:

        FILE_SCORER = FileScorer(files=(("pred", "results JSON"), ("gt", "ground-truth JSON")),
                                 score=score_files)  # score_files(pred_path, gt_path) -> {"accuracy": ...}

    and `rewardtune score mypackage.mytask --pred P --gt G` prints what it returns as JSON.
    """

    files: Sequence[tuple[str, str]]
    score: Callable[..., "dict[str, Any]"]


@dataclass
class DataCheck:
    """How `rewardtune data check --task TASK --root DIR` reads a task's files in a COCO-layout folder.

    splits: (root) -> the split names that have an annotation file of the task under root.
    check: (root, split) -> {"annotations": the file read, "image_folder": where its images are,
    "counts": {what: number} (images, annotations, categories...), "problems": [(kind, one line), ...]
    found in the annotations, "images": [(image id, path, width or None, height or None), ...] every
    image the split names}. The core then reads every image in full (missing, unreadable, wrong size).
    A file it cannot read at all raises DataError with one line naming it.
    """

    splits: Callable[[str], "list[str]"]
    check: Callable[[str, str], "dict[str, Any]"]


# ---- codec helpers: targets <-> tokens through any codec (the core and the tasks use them) --------------

def encode_all(codec, targets: Sequence[Any], rngs: Optional[Sequence[Any]] = None) -> list[torch.Tensor]:
    """Each target's tokens (LongTensor[T_i]); `rngs[i]` drives target i's random order. One batched call
    when the codec offers `encode_batch(targets, rngs)` (a learned code runs a network), else one each."""
    rngs = list(rngs) if rngs is not None else [None] * len(targets)
    batched = getattr(codec, "encode_batch", None)
    if callable(batched):
        return list(batched(list(targets), rngs))
    return [codec.encode(t, r) for t, r in zip(targets, rngs)]


def pad_sequences(seqs: Sequence[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """List of LongTensor[T_i] -> (LongTensor[B, max T] padded with `pad`, lengths LongTensor[B])."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out, lengths


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


def reads_log_probs(codec) -> bool:
    """Whether `codec.decode` needs the step log-probs to read a sequence (Codec.reads_step_log_probs): generate
    with return_step_log_probs=True for it."""
    return bool(getattr(codec, "reads_step_log_probs", False))


def decode_all(codec, gen, step_log_probs: Optional[torch.Tensor] = None,
               images: Optional[torch.Tensor] = None) -> list:
    """Decode every generated sequence of `gen` (a model.encdec.Generation, B*N sequences: N per image in
    image order) up to its length; `images` (FloatTensor[B, 3, S, S], the model's inputs) gives each
    sequence its own image. A codec that reads step log-probs (`reads_log_probs`) gets gen's own when none are
    passed."""
    if step_log_probs is None and reads_log_probs(codec) and gen.step_log_probs is not None:
        step_log_probs = gen.step_log_probs.float().cpu()
    tokens, lengths = gen.tokens.cpu(), gen.lengths.cpu()
    count = tokens.shape[0]
    if images is not None:
        if len(images) == 0 or count % len(images):
            raise ValueError(f"{count} generated sequences do not split over {len(images)} images")
        per_image = count // len(images)
        images = images.repeat_interleave(per_image, dim=0) if per_image > 1 else images
    lps = None if step_log_probs is None else [step_log_probs[i, :lengths[i]] for i in range(count)]
    return decode_tokens(codec, [tokens[i, :lengths[i]].tolist() for i in range(count)], images, lps)
