"""`rewardtune predict RUN IMAGE...`: a trained model on the user's own images."""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

from .data.dataset import ImageSplit
from .data.files import load_rgb, resize_rgb
from .evaluate import load_run, predict_split


def jsonable(value: Any) -> Any:
    """Outputs (dicts of numpy arrays, strings...) -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def predict_images(run_dir: str, paths: list[str], out_dir: Optional[str] = None,
                   checkpoint_name: Optional[str] = None) -> list:
    """Greedy outputs for image files; written in the task's format to out_dir, else printed."""
    config, task, model = load_run(run_dir, checkpoint_name)
    size = config.data.image_size
    originals = [load_rgb(p) for p in paths]
    inputs = [resize_rgb(im, size) for im in originals]
    if task.preprocess is not None:
        inputs = [task.preprocess(im) for im in inputs]
    targets = [task.target_for_image(im) if task.target_for_image else None for im in originals]
    ids = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    split = ImageSplit(np.stack(inputs), targets, ids)
    outputs, targets, ids = predict_split(model, task, split, range(len(split)))
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        task.write_predictions(outputs, targets, ids, out_dir)
        print(f"wrote predictions for {len(ids)} images to {out_dir}")
    else:
        for i, o in zip(ids, outputs):
            print(json.dumps({"image": i, "output": jsonable(o)}))
    return outputs
