"""Split metrics (CIDEr-D, BLEU-1..4, ROUGE-L, mean length) and scoring of a captions file.

Both predictions and references go through the PTB tokenizer first, as the COCO caption
evaluation does; the numbers are then those of pycocoevalcap's Cider, Bleu(4) and Rouge.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from ...data.files import read_json, write_json_atomic
from ...errors import DataError
from .bleu_rouge import bleu, rouge_l
from .cider import cider_d
from .data import coco_captions
from .tokenizer import tokenize_caption

PREDICTIONS_FILE = "captions.json"


def caption_metrics(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Raw predicted captions and raw references (one list per image) -> metrics over the split."""
    if len(preds) != len(refs):
        raise ValueError("caption_metrics: one list of references per prediction")
    if not preds:
        return {}
    cands = [tokenize_caption(p) for p in preds]
    references = [[tokenize_caption(r) for r in rs] for rs in refs]
    cider, _ = cider_d(cands, references)
    bleus, _ = bleu(cands, references)
    rouge, _ = rouge_l(cands, references)
    metrics = {"cider": cider}
    metrics.update({f"bleu{k + 1}": float(b) for k, b in enumerate(bleus)})
    metrics["rougeL"] = float(rouge)
    metrics["mean_length"] = sum(len(c.split()) for c in cands) / len(cands)
    # diversity: CIDEr tuning is known to collapse captions onto templates; these make it visible
    metrics["distinct_captions"] = len(set(cands)) / len(cands)
    metrics["vocab_used"] = float(len({w for c in cands for w in c.split()}))
    return metrics


def split_metrics(outputs: Sequence[str], targets: Sequence[dict], ids: Sequence[Any]) -> dict[str, float]:
    """The Task's metrics function: decoded captions and {"refs": [...]} targets."""
    return caption_metrics(outputs, [t["refs"] for t in targets])


def write_predictions(outputs: Sequence[str], ids: Sequence[Any], out_dir: str) -> str:
    """Write `out_dir/captions.json` as [{"image_id", "caption"}] (atomically); returns its path."""
    path = os.path.join(out_dir, PREDICTIONS_FILE)
    write_json_atomic([{"image_id": i, "caption": c} for i, c in zip(ids, outputs)], path)
    return path


def read_predictions(path: str) -> dict:
    """A captions results file -> {image id: caption}; malformed entries raise DataError naming the file."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {{\"image_id\", \"caption\"}} objects")
    preds: dict = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "image_id" not in entry or "caption" not in entry:
            raise DataError(f"{path}: entry {str(entry)[:80]} lacks 'image_id' or 'caption'")
        image_id, caption = entry["image_id"], entry["caption"]
        if isinstance(image_id, bool) or not isinstance(image_id, (int, float, str)):
            raise DataError(f"{path}: entry #{i}: image_id {str(image_id)[:80]} is not a number or a string")
        if not isinstance(caption, str):
            raise DataError(f"{path}: image id {image_id}: caption {caption!r} is not a string")
        if image_id in preds:
            raise DataError(f"{path}: image id {image_id} has more than one caption")
        preds[image_id] = caption
    return preds


def score_files(pred_path: str, gt_path: str) -> dict[str, float]:
    """`rewardtune score captioning --pred P --gt G`: metrics of a results file vs a COCO captions file.

    Every image of the predictions must be in the ground truth; images of the ground truth that
    have no prediction are left out (as pycocoevalcap's COCOEvalCap does with `getImgIds`).
    """
    preds = read_predictions(pred_path)
    refs = coco_captions(read_json(gt_path), gt_path)
    for image_id in preds:
        if image_id not in refs:
            raise DataError(f"{pred_path}: image id {image_id} is not in the ground truth {gt_path}")
    if not preds:
        raise DataError(f"{pred_path}: no predictions")
    ids = list(preds)
    metrics = caption_metrics([preds[i] for i in ids], [refs[i] for i in ids])
    metrics["num_images"] = len(ids)
    return metrics
