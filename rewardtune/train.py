"""The one training loop for every stage: `pretrain` (MLE), `tune` (REINFORCE) and UViM's stage I (`pretrain`
with train.stage = "codec": the code model of a dense task, steps.codec_step).

Every sample's randomness derives from (seed, its position in the data stream) and the data order
from (seed, epoch), so a run resumed from its latest checkpoint continues exactly as if it had never
stopped, and K processes compute what one process computes for the same global batch.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint, distributed
from .config import Config, TrainConfig, save as save_config
from .credit import check_credit
from .proposals import check_proposals
from .data.loader import step_batches
from .errors import ConfigError, UserError
from .evaluate import build_stage_model, evaluate_run, held_out_reward, score_split
from .metrics_log import MetricsLog, check_tensorboard
from .model.pretrained import load_encoder
from .outputs import resolve_reward
from .steps import STEPS, StepContext
from .tasks import make_task
from .tasks.base import Example, Task


TENSORBOARD_IMAGES = 4  # val images drawn into the TensorBoard events at every validation


def batch_positions(step: int, batch: int, rank: int = 0, world: int = 1) -> range:
    """Positions in the data stream (sample k of the run is position k) of this rank's share of `step`."""
    start = step * batch
    return range(start + rank * batch // world, start + (rank + 1) * batch // world)


def batch_indices(step: int, batch: int, n: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's share of the global batch of `step`: a fresh permutation of the split every epoch."""
    idx = []
    for pos in batch_positions(step, batch, rank, world):
        epoch, offset = divmod(pos, n)
        perm = _permutation(seed, epoch, n)
        idx.append(int(perm[offset]))
    return idx


def data_position(step: int, batch: int, n: int) -> dict:
    """Where the data order stands after `step` steps (recorded in checkpoints; derivable from step)."""
    epoch, index = divmod(step * batch, n)
    return {"samples_seen": step * batch, "epoch": epoch, "index_in_epoch": index, "split_size": n}


_PERM_CACHE: dict = {}


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    key = (seed, epoch, n)
    if key not in _PERM_CACHE:
        _PERM_CACHE.clear()
        _PERM_CACHE[key] = np.random.default_rng([seed, epoch, 7]).permutation(n)
    return _PERM_CACHE[key]


def lr_lambda(cfg):
    """Linear warm-up, then cosine to min_lr_ratio or constant."""
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def make_optimizer(model: torch.nn.Module, cfg) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters (a frozen learned codec's are left out), weight decay on matrices."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, cfg.beta2),
                            fused=True)  # one kernel for all parameters (CPU too): ~4x cheaper than per-tensor
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))


def _starting_point(config: Config, run_dir: str, init_dir: Optional[str]):
    """(checkpoint to resume from, checkpoint to initialise weights from) -- at most one is used."""
    resume = checkpoint.find(run_dir, "latest")
    if resume or not init_dir:
        return resume, None
    init = checkpoint.find(init_dir, checkpoint.standing(init_dir))
    if init is None:
        raise UserError(f"{init_dir}: no checkpoint to start from (run pretrain first)")
    return None, init


def train(config: Config, run_dir: str, init_dir: Optional[str] = None, evaluate_at_end: bool = True) -> dict:
    """Run (or resume) one stage in `run_dir`; returns the final validation metrics."""
    d = distributed.setup()
    cfg = config.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % (d.world * cfg.grad_accum_steps):
        micro = f" x {cfg.grad_accum_steps} micro-batches (train.grad_accum_steps)" if cfg.grad_accum_steps > 1 else ""
        raise UserError(f"config key 'train.batch_size': {cfg.batch_size} is not divisible by {d.world} processes"
                        + micro)
    check_tensorboard(cfg.tensorboard and d.main)
    resume, init = _starting_point(config, run_dir, init_dir)
    source = checkpoint.load(resume) if resume else checkpoint.load(init, optimizer_state=False) if init else None
    if source and source["state"].get("task") != config.task:  # before the task reads another task's state
        raise UserError(f"{resume or init}: checkpoint is for task '{source['state'].get('task')}', "
                        f"not '{config.task}'")
    task = make_task(config, source["state"]["task_state"] if source else None)
    check_credit(task, cfg)
    check_proposals(task, cfg)
    splits = task.datasets()
    train_split, val_split = splits["train"], splits["val"]
    for name, split in (("train", train_split), ("val", val_split)):
        if getattr(split, "skipped", 0) and d.main:  # data.skip_corrupt: say how many were left out
            tqdm.write(f"rewardtune: warning: skipped {split.skipped} unreadable image(s) of the {name} split "
                       "(data.skip_corrupt)", file=sys.stderr)
    torch.manual_seed(cfg.seed)
    model = build_stage_model(config, task).to(d.device)
    if source:
        checkpoint.load_weights(model, source["model"], resume or init, config.task, source["state"].get("task"))
    elif config.model.init_encoder:  # a fresh run: the pretrained encoder (a resumed or --init run has its weights)
        loaded = load_encoder(config.model.init_encoder, model.encoder)
        if d.main:
            tqdm.write(f"rewardtune: {loaded}", file=sys.stderr)
    reference = None
    if cfg.kl_weight > 0:  # the weights the run started from: saved once, read back on resume
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        if resume:
            checkpoint.load_reference(run_dir, reference)
        elif d.main:
            checkpoint.save_reference(run_dir, reference)
    optimizer, scheduler = make_optimizer(model, cfg)
    # baseline_state: the leave-one-out and greedy baselines hold no state across steps (None).
    state = {"task": config.task, "task_state": task.state, "config": config.to_dict(), "best_metric": None,
             "evals_since_best": 0, "nonfinite_total": 0, "nonfinite_run": 0, "baseline_state": None}
    if cfg.stage == "codec":  # what rebuilds the stage I model: CodeModel(**code_arch)
        state["code_arch"] = model.arch
    start = 0
    if resume:
        optimizer.load_state_dict(source["optim"]["optimizer"])
        scheduler.load_state_dict(source["optim"]["scheduler"])
        checkpoint.restore_rng(source["rng"], source["state"]["rng"], d.rank)
        state.update({k: source["state"][k] for k in ("best_metric", "evals_since_best", "nonfinite_total",
                                                     "nonfinite_run", "baseline_state", "finished", "ran_all_steps")
                      if k in source["state"]})
        start = source["state"]["step"]
    if d.main:
        os.makedirs(run_dir, exist_ok=True)
        checkpoint.remove_partial(os.path.join(run_dir, "checkpoints"))
        save_config(config, os.path.join(run_dir, "config.json"))
    wrapped = model
    if d.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    needs_reward = cfg.stage == "reward" or cfg.eval_reward_samples > 0
    ctx = StepContext(task, wrapped, model, cfg, resolve_reward(task, cfg.reward) if needs_reward else None,
                      reference, d, config.code)
    log = MetricsLog(os.path.join(run_dir, "metrics.jsonl"), start, d.main, tensorboard=cfg.tensorboard)
    loop = _Loop(config, run_dir, d, task, model, optimizer, scheduler, state, log, ctx, train_split, val_split)
    try:
        loop.run(start)
    finally:
        log.close()
    distributed.barrier(d)
    metrics = {}
    if evaluate_at_end and d.main:
        chosen = checkpoint.standing(run_dir)
        metrics = evaluate_run(run_dir, split="val", checkpoint_name=chosen, task=task, splits=splits,
                               model=None if chosen == "best" else model)
    distributed.barrier(d)
    return metrics


@dataclass
class _Loop:
    """The pieces of one stage; `run` is the loop, `_step` one optimisation step, `_validate` one evaluation."""

    config: Config
    run_dir: str
    d: distributed.Dist  # this process's rank, world size and device
    task: Task
    model: torch.nn.Module  # the bare model (ctx.wrapped is the one the step differentiates: DDP when K > 1)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    state: dict  # written to every checkpoint's state.json: best_metric, evals_since_best, nonfinite counts...
    log: MetricsLog
    ctx: StepContext  # what the step function reads: task, models, reward, reference model
    train_split: Sequence[Example]
    val_split: Sequence[Example]
    cfg: TrainConfig = field(init=False)  # config.train
    step_fn: Callable = field(init=False)  # the stage's step: STEPS["mle"], STEPS["reward"] or STEPS["codec"]

    def __post_init__(self) -> None:
        self.cfg = self.config.train
        self.step_fn = STEPS[self.cfg.stage]

    def run(self, start: int) -> None:
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=start, disable=not self.d.main, dynamic_ncols=True,
                   desc=f"{cfg.stage} {os.path.basename(os.path.abspath(self.run_dir))}")
        t0, window = time.time(), []
        if self.state.get("finished"):
            if self.state.get("ran_all_steps") and start < cfg.steps:  # it ran its train.steps; more are asked for
                self.state["finished"] = False
                if self.d.main:
                    tqdm.write(f"train.steps is {cfg.steps}: going on from step {start}, where the run ended")
            else:
                start = cfg.steps  # a run that stopped early, or has done its steps, stays ended
        d = self.d
        batches = step_batches(self.train_split, range(start, cfg.steps),
                               lambda step: batch_indices(step, cfg.batch_size, len(self.train_split), cfg.seed,
                                                          d.rank, d.world),
                               self.config.data.workers, pin_memory=d.device.type == "cuda")
        with bar:  # closed (its line ended) also when a step raises, so errors print on their own line
            for step, batch in zip(range(start, cfg.steps), batches):
                logs = self._step(step, batch)
                window.append(logs)
                bar.update(1)
                done = step + 1
                if done % cfg.log_every == 0 or done == cfg.steps:
                    keys = sorted({k for w in window for k in w})  # the same on every rank (skips are agreed)
                    mean = distributed.all_mean({k: float(np.mean([w[k] for w in window if k in w])) for k in keys},
                                                self.d)
                    record = {"step": done, **{f"train/{k}": v for k, v in mean.items()},
                              "train/lr": self.scheduler.get_last_lr()[0], "time": round(time.time() - t0, 3)}
                    self.log.write(record)
                    bar.set_postfix({k: f"{mean[k]:.4g}" for k in ("loss", "reward") if k in mean})
                    window = []
                stop = False
                is_best = False
                if done % cfg.eval_every == 0 or done == cfg.steps:
                    is_best, stop = self._validate(done)
                if done == cfg.steps or stop:
                    self.state["finished"] = True
                    self.state["ran_all_steps"] = not stop  # an early stop is final; a run that did its steps goes on
                if done % cfg.checkpoint_every == 0 or done == cfg.steps or is_best or stop:
                    self._save(done, is_best)
                if stop:  # decided on the main process and broadcast by _validate: every rank stops here
                    if self.d.main:
                        monitor = cfg.monitor.lstrip("-") or self.task.primary_metric
                        tqdm.write(f"stopping at step {done}: val/{monitor} has not improved for {cfg.patience} "
                                   f"evaluations (best {abs(self.state['best_metric']):.4f})")
                    break

    def _step(self, step: int, batch: tuple) -> dict:
        """One optimisation step on `batch`, this rank's share of step `step` (split.batch of its indices)."""
        cfg, d = self.cfg, self.d
        images, targets, ids = batch
        images = images.to(d.device, non_blocking=True)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # the step runs the backward passes of its micro-batches itself (their gradients add up in .grad)
        loss, logs = self.step_fn(self.ctx, images, targets, batch_positions(step, cfg.batch_size, d.rank, d.world))
        finite = distributed.all_true(bool(torch.isfinite(loss)), d)
        if finite:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
            finite = distributed.all_true(bool(torch.isfinite(norm)), d)
            logs["grad_norm"] = float(norm) if finite else float("nan")
        if finite:
            self.optimizer.step()
            self.state["nonfinite_run"] = 0
        else:
            self._skip(step, ids)
            logs = {}  # a skipped step's numbers stay out of the logged means (its skip has its own line)
        self.scheduler.step()
        return logs

    def _skip(self, step: int, ids: list) -> None:
        """Drop the step's gradients; count and log it with the batch ids of every rank; stop after too many."""
        self.optimizer.zero_grad(set_to_none=True)
        self.state["nonfinite_run"] += 1
        self.state["nonfinite_total"] += 1
        ids = [str(i) for rank_ids in distributed.all_gather_object(ids, self.d) for i in rank_ids]
        self.log.write({"step": step + 1, "train/nonfinite_skipped": 1, "batch_ids": ids})
        if self.state["nonfinite_run"] > self.cfg.max_nonfinite:
            last = checkpoint.find(self.run_dir, "latest")
            raise UserError(f"stopped at step {step + 1}: {self.state['nonfinite_run']} non-finite losses or gradients "
                            f"in a row (train.max_nonfinite={self.cfg.max_nonfinite}); last good checkpoint: {last}")

    def _validate(self, done: int) -> tuple[bool, bool]:
        """Greedy-decode the first eval_images val images (stage codec: reconstruct them through the code); track
        the best metric for patience."""
        is_best = stop = False
        if self.d.main:
            n = len(self.val_split) if not self.cfg.eval_images else min(self.cfg.eval_images, len(self.val_split))
            if self.task.calibrate is not None:  # e.g. detection's learned score, refitted on train images
                fitted = self.task.calibrate(self.model, self.train_split, self.cfg.seed + done)
                self.log.write({"step": done, **{f"calibrate/{k}": float(v) for k, v in fitted.items()}})
            outputs, targets, ids, metrics = score_split(self.model, self.task, self.val_split, range(n))
            if self.cfg.eval_reward_samples:  # the held-out reward (same draws at every validation)
                held = held_out_reward(self.model, self.task, self.val_split, range(n), self.cfg.eval_reward_samples,
                                       self.ctx.reward_fn, seed=self.cfg.seed)
                metrics = {**metrics, **held}
            self.log.write({"step": done, **{f"val/{k}": float(v) for k, v in metrics.items()}})
            if self.cfg.tensorboard:
                self.log.images(done, self._drawn(outputs, targets))
            name = self.cfg.monitor.lstrip("-") or self.task.primary_metric
            if name not in metrics:
                raise ConfigError(f"config key 'train.monitor': {name!r} is not a val metric of task "
                                  f"'{self.task.name}' (its metrics: {', '.join(metrics)})")
            value = float(metrics[name]) * (-1.0 if self.cfg.monitor.startswith("-") else 1.0)
            best = self.state["best_metric"]
            if best is None or value > best:
                self.state.update(best_metric=value, evals_since_best=0)
                is_best = True
            else:
                self.state["evals_since_best"] += 1
            stop = bool(self.cfg.patience) and self.state["evals_since_best"] >= self.cfg.patience
            tqdm.write(f"step {done}: val/{name} {float(metrics[name]):.4f}" + (" (best)" if is_best else ""))
        return distributed.broadcast_object((is_best, stop), self.d)

    def _drawn(self, outputs: list, targets: list) -> list[tuple[str, np.ndarray]]:
        """The first TENSORBOARD_IMAGES val images with their greedy outputs, drawn by the task's `visualize`;
        a drawing that fails is left out with a warning (it must not stop training)."""
        drawn = []
        for i in range(min(TENSORBOARD_IMAGES, len(outputs))):
            image = (self.val_split[i].image.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            try:
                drawn.append((f"val_outputs/{i}", self.task.visualize(image, outputs[i], targets[i])))
            except Exception as e:  # a drawing bug is reported, not fatal
                tqdm.write(f"rewardtune: warning: visualize failed on val image {i}: {type(e).__name__}: {e}",
                           file=sys.stderr)
        return drawn

    def _save(self, done: int, is_best: bool) -> None:
        rng = distributed.all_gather_object(checkpoint.rng_state(), self.d)  # every rank's RNG states
        if self.d.main:
            self.state["data_position"] = data_position(done, self.cfg.batch_size, len(self.train_split))
            checkpoint.save(self.run_dir, done, self.model, self.optimizer, self.scheduler, self.state,
                            keep=self.cfg.keep_checkpoints, best=is_best, rng=rng)
        distributed.barrier(self.d)
