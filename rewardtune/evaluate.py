"""Greedy-decode a split (or, for a UViM stage I run, reconstruct it through the code), write predictions
in the task's standard format, compute its metrics."""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import torch

from . import checkpoint
from .config import load as load_config
from .data.files import write_json_atomic
from .errors import ConfigError, UserError
from .model.encdec import EncoderDecoder, build_model, eval_mode, image_generator
from .model.uvim import CodeModel
from .model.vq import code_stats
from .tasks import make_task
from .tasks.base import Task, decode_all, reads_log_probs


@torch.no_grad()
def over_batches(model, split, indices: Sequence[int], batch_size: int,
                 outputs_of: Callable[[torch.Tensor, list], list]) -> tuple[list, list, list]:
    """(outputs, targets, ids) of split[indices], in batches with the model in eval mode:
    outputs_of(images on the model's device, targets) -> that batch's outputs."""
    device = next(model.parameters()).device
    outputs, targets, ids = [], [], []
    indices = list(indices)
    with eval_mode(model):
        for start in range(0, len(indices), batch_size):
            images, tgt, idx = split.batch(indices[start:start + batch_size])
            outputs += outputs_of(images.to(device), tgt)
            targets += tgt
            ids += idx
    return outputs, targets, ids


@torch.no_grad()
def predict_split(model: EncoderDecoder, task: Task, split, indices: Sequence[int],
                  batch_size: int = 64) -> tuple[list, list, list]:
    """Greedy outputs (with the model's step log-probs for scores) for split[indices]."""
    def greedy(images, _):
        gen = model.generate(images, 1, greedy=True, return_step_log_probs=True)
        return decode_all(task.codec, gen, gen.step_log_probs.cpu(), images=images)
    return over_batches(model, split, indices, batch_size, greedy)


@torch.no_grad()
def reconstruct_split(model: CodeModel, task: Task, split, indices: Sequence[int],
                      batch_size: int = 64) -> tuple[list, list, list, dict]:
    """UViM stage I: the outputs of split[indices] decoded from the image and the code of their truth,
    dense.to_outputs(model.decode(images, model.encode(dense.to_input(targets)))); and the code's
    {code_usage, code_perplexity} over these images."""
    codes = []

    def through_code(images, tgt):
        code = model.encode(task.dense.to_input(tgt).to(images.device))
        codes.append(code.cpu())
        return task.dense.to_outputs(model.decode(images, code))
    outputs, targets, ids = over_batches(model, split, indices, batch_size, through_code)
    return outputs, targets, ids, code_stats(torch.cat(codes), model.codebook_size)


def score_split(model, task: Task, split, indices: Sequence[int]) -> tuple[list, list, list, dict]:
    """(outputs, targets, ids, metrics) of split[indices]: greedy outputs of an EncoderDecoder, or a stage I
    CodeModel's reconstructions (their metrics with code_usage and code_perplexity)."""
    if isinstance(model, CodeModel):
        outputs, targets, ids, stats = reconstruct_split(model, task, split, indices)
    else:
        (outputs, targets, ids), stats = predict_split(model, task, split, indices), {}
    return outputs, targets, ids, {**task.metrics(outputs, targets, ids), **stats}


def build_stage_model(config, task: Task) -> torch.nn.Module:
    """The model a stage trains: UViM's CodeModel over task.dense for train.stage "codec" (from config.code),
    else the EncoderDecoder of the task's codec (from config.model)."""
    if config.train.stage != "codec":
        return build_model(config.model, config.data.image_size, task.codec)
    if task.dense is None:
        raise ConfigError(f"config key 'train.stage': 'codec' needs a task with a dense target (Task.dense); "
                          f"task '{task.name}' has none")
    c = config.code
    return CodeModel(config.data.image_size, task.dense.in_channels, task.dense.out_channels, grid=c.grid,
                     codebook_size=c.codebook_size, code_dim=c.code_dim, width=c.width, depth=c.depth, heads=c.heads,
                     code_dropout=c.code_dropout, beta=c.beta, head_channels=c.head_channels)


@torch.no_grad()
def held_out_reward(model: EncoderDecoder, task: Task, split, indices: Sequence[int], samples: int, reward_fn,
                    seed: int = 0, batch_size: int = 32) -> dict:
    """Mean and spread of the reward of `samples` samples (temperature 1) of each image split[indices].

    Image i's draws come from a generator keyed by (seed, i) alone, never from the global RNG: the same
    model gives the same figure at every call, so the figure moves only when the model does.
    """
    device = next(model.parameters()).device
    values = []
    indices = list(indices)
    with eval_mode(model):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            images, targets, _ = split.batch(chunk)
            images = images.to(device)
            gen = model.generate(images, samples, generator=[image_generator(seed, i, device) for i in chunk],
                                 return_step_log_probs=reads_log_probs(task.codec))
            rewards, _ = reward_fn(decode_all(task.codec, gen, images=images), [t for t in targets for _ in range(samples)])
            values.append(torch.as_tensor(rewards, dtype=torch.float64).reshape(-1))
    allv = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    return {"reward": float(allv.mean()) if len(allv) else float("nan"),
            "reward_std": float(allv.std()) if len(allv) > 1 else 0.0}


def load_run(run_dir: str, checkpoint_name: Optional[str] = None, overrides: Optional[dict] = None,
             code_model: bool = False):
    """(config, task, model) of a run folder, rebuilt from its config.json and checkpoint
    (`checkpoint_name` 'latest' or 'best'; None: the one that stands for the run, checkpoint.standing).
    A UViM stage I run (train.stage codec) holds a CodeModel, which only callers passing `code_model` take."""
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(config_path):
        raise UserError(f"{run_dir}: not a run folder (no config.json)")
    config = load_config(config_path)
    if config.train.stage == "codec" and not code_model:
        raise UserError(f"{run_dir}: a UViM stage I run (train.stage codec) predicts from the truth's code, not "
                        "from images alone; `rewardtune eval` scores its reconstructions")
    path = checkpoint.find(run_dir, checkpoint.resolve(run_dir, checkpoint_name)) or checkpoint.find(run_dir, "latest")
    if path is None:
        raise UserError(f"{run_dir}: run has no checkpoint yet")
    saved = checkpoint.load(path, optimizer_state=False)
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            setattr(getattr(config, section), key, value)
    task = make_task(config, saved["state"]["task_state"])
    model = build_stage_model(config, task)
    checkpoint.load_weights(model, saved["model"], path, config.task, saved["state"].get("task"))
    return config, task, model.eval()


def evaluate_run(run_dir: str, split: str = "val", checkpoint_name: Optional[str] = None,
                 model: Optional[EncoderDecoder] = None, task: Optional[Task] = None,
                 splits: Optional[dict] = None, max_images: int = 0) -> dict:
    """Write RUN/eval/<split>/metrics.json and the predictions; return the metrics."""
    checkpoint_name = checkpoint.resolve(run_dir, checkpoint_name)
    if model is None or task is None:
        _, task, model = load_run(run_dir, checkpoint_name, {"data": {"val_split": split}} if split != "val" else None,
                                  code_model=True)
        splits = None
    if splits is None:
        splits = task.datasets()
    data = splits["val"]
    n = min(max_images, len(data)) if max_images else len(data)
    outputs, targets, ids, metrics = score_split(model, task, data, range(n))
    metrics = {k: float(v) for k, v in metrics.items()}
    out_dir = os.path.join(run_dir, "eval", split)
    os.makedirs(out_dir, exist_ok=True)
    task.write_predictions(outputs, targets, ids, out_dir)
    write_json_atomic({**metrics, "num_images": n, "checkpoint": checkpoint_name}, os.path.join(out_dir, "metrics.json"))
    return metrics
