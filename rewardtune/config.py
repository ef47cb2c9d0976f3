"""Typed configs: dataclasses, JSON files, `--set a.b=v` overrides and validation.

A run's `config.json` is itself a valid config file. Unknown keys and out-of-range values raise
`ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass
class DataConfig:
    root: str = ""  # dataset folder in COCO 2017 layout (images/<split>/, annotations/...)
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 64  # images are resized to image_size x image_size
    # Explicit paths for user data; empty = the layout under `root`, as the task names its files.
    train_images: str = ""
    train_annotations: str = ""
    val_images: str = ""
    val_annotations: str = ""
    max_train_images: int = 0  # 0 = all
    max_val_images: int = 0  # 0 = all
    skip_corrupt: bool = False  # skip (and count) unreadable images instead of stopping
    # "once": decode every image when the split loads and hold them (uint8 n x 3 x S x S); "on_access": hold
    # file paths and decode each image when a batch reads it; "auto": once when that takes at most 1 GiB
    decode: str = "auto"
    # processes that read training batches ahead of the loop (torch DataLoader workers; 0 = in the loop).
    # The batches and their order are the same for any value: each step's images are fixed by its position.
    workers: int = 0


@dataclass
class ModelConfig:
    stem: str = "conv"  # "conv" (strided convolutions) or "patch" (linear patch embedding, as ViT)
    patch_size: int = 8
    width: int = 128
    encoder_depth: int = 2
    decoder_depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    # The standard ViT's pieces, for pretrained encoders (docs/design.md#pretrained-encoders):
    pos: str = "sincos"  # "sincos" (fixed 2D sin-cos) or "learned" (a position embedding, as ViT)
    cls_token: bool = False  # a class token in the encoder's attention (dropped from its output)
    encoder_ln_eps: float = 1e-5  # the encoder's layer-norm epsilon (timm, big_vision: 1e-6; HF: its config's)
    # A local ViT checkpoint (HF folder or .safetensors, timm .pth/.pt/.safetensors, big_vision .npz) loaded into
    # the encoder at the start of a fresh run (not on resume, not with --init); "" = random initialisation.
    init_encoder: str = ""


@dataclass
class CodeConfig:
    """UViM's stage I (train.stage = "codec"; docs/method.md#uvim-a-learned-code-for-the-dense-tasks): the code
    model (model/uvim.py) over the task's dense target (Task.dense). Only stage "codec" reads this section."""

    grid: int = 8  # code cells per side: grid^2 tokens; data.image_size must be grid times a power of two
    codebook_size: int = 256
    code_dim: int = 32
    width: int = 128  # the oracle's and the base decoder's ViT width
    depth: int = 2  # ... and depth (each)
    heads: int = 4
    head_channels: int = 32  # channels of the full-resolution refinement convolutions
    code_dropout: float = 0.1  # share of training images decoded from the image alone (no code)
    beta: float = 0.25  # commitment weight of the quantiser's loss
    # steps between restarts of dead codebook entries from the batch's oracle outputs (0 = never)
    restart_every: int = 50


@dataclass
class TrainConfig:
    stage: str = "mle"  # "mle" (pretrain), "reward" (tune) or "codec" (pretrain UViM's stage I code model)
    steps: int = 1000
    batch_size: int = 64  # images per optimizer step (all processes and micro-batches together)
    # Split each process's share of the batch into this many micro-batches of equal size, run one after
    # the other with their gradients summed, so that a batch too big for the accelerator's memory keeps its
    # meaning: the gradient is the whole batch's, to float rounding (docs/design.md#precision-and-accumulation).
    # batch_size must divide by (processes x grad_accum_steps).
    grad_accum_steps: int = 1
    # "fp32", or "bf16": forward passes and the sampler under torch.autocast (matmuls in bfloat16; softmaxes,
    # log-probs, losses, parameters, gradients and Adam's state stay float32). Meant for GPUs; allowed on CPU.
    precision: str = "fp32"
    lr: float = 1e-3
    warmup_steps: int = 50
    schedule: str = "cosine"  # "cosine" | "constant"
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.05
    beta2: float = 0.98
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 0  # torch threads; 0 = leave torch's default
    log_every: int = 10
    eval_every: int = 200
    eval_images: int = 256  # val images scored during training (0 = the whole split)
    # held-out reward: at every validation, the mean reward (train.reward) of this many samples of each of
    # the eval_images val images, drawn with fixed generators; logged as val/reward in any stage (0 = off)
    eval_reward_samples: int = 0
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    patience: int = 0  # stop after this many evals without a better val metric (0 = never)
    monitor: str = ""  # val metric that picks `best` and drives patience ("" = the task's; "-name": lower is better)
    # reward stage
    reward: str = ""  # a task reward name or "package.module:function"
    num_samples: int = 8  # samples per image
    temperature: float = 1.0
    top_k: int = 0  # 0 = full distribution
    baseline: str = "loo"  # "loo" (leave-one-out, docs/method.md#two-stages-one-loop) or "greedy" (self-critical)
    # "sequence" (the paper): every token of a sample gets its advantage. "token" (a departure, credit.py,
    # docs/method.md): each item's tokens (detection: a box's six) get the reward still to come from that
    # item on, minus the mean of the same over the image's other samples; the end token that of stopping
    # there. Needs the loo baseline, a task with Task.item_tokens and a reward that splits by item
    # (detection's "map").
    # "local" (a departure, credit.py): for a learned code, each code cell's token gets the advantage of the
    # reward earned in the cells within credit_radius of it (the reward's REGION_PART; panoptic's "pq").
    credit: str = "sequence"
    credit_radius: int = 1
    # > 0: each sample also gets the task's proposal (Task.propose; detection: its boxes hedged by their second
    # class), rewarded like a sample; proposals that beat their image's sample mean are imitated with this weight
    # times their advantage (a departure from the paper: steps.py, docs/method.md#detection). 0 = off.
    proposal_weight: float = 0.0
    aux_weight: float = 1.0  # multiplies the task's auxiliary loss (already weighted by the task)
    kl_weight: float = 0.0  # optional KL to the initial (MLE) model
    max_nonfinite: int = 10  # consecutive non-finite steps before the run stops
    # also write TensorBoard event files to RUN/tensorboard/ (the scalars of metrics.jsonl, and at each
    # validation a few val images drawn by the task's `visualize`); needs `pip install rewardtune[tensorboard]`
    tensorboard: bool = False


@dataclass
class Config:
    task: str = "detection"
    task_options: dict = field(default_factory=dict)  # validated by the task
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    code: CodeConfig = field(default_factory=CodeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "code": CodeConfig}
_CHOICES = {
    "data.decode": ("auto", "once", "on_access"),
    "model.stem": ("conv", "patch"),
    "model.pos": ("sincos", "learned"),
    "train.stage": ("mle", "reward", "codec"),
    "train.schedule": ("cosine", "constant"),
    "train.baseline": ("loo", "greedy"),
    "train.credit": ("sequence", "token", "local"),
    "train.precision": ("fp32", "bf16"),
}
_POSITIVE = ("data.image_size", "model.patch_size", "model.width", "model.encoder_depth",
             "model.decoder_depth", "model.heads", "train.steps", "train.batch_size", "train.lr",
             "train.log_every", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
             "train.temperature", "model.mlp_ratio", "train.max_nonfinite", "train.grad_accum_steps",
             "model.encoder_ln_eps", "code.grid", "code.codebook_size", "code.code_dim", "code.width",
             "code.depth", "code.heads", "code.head_channels")
_NON_NEGATIVE = ("train.warmup_steps", "train.weight_decay", "train.grad_clip", "train.threads",
                 "train.eval_images", "train.eval_reward_samples", "train.patience", "train.top_k", "train.aux_weight",
                 "train.kl_weight", "train.proposal_weight", "data.max_train_images", "data.max_val_images",
                 "train.min_lr_ratio", "data.workers", "code.beta", "code.restart_every")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert `value` to the type of `default`, or raise ConfigError naming `key`."""
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}': expected {kind.__name__}, got {value!r}") from None
    return value


def _section_from_dict(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{name}': expected an object, got {raw!r}")
    defaults = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown config key '{name}.{key}' (known: {', '.join(sorted(known))})")
    values = {k: _coerce(f"{name}.{k}", v, getattr(defaults, k)) for k, v in raw.items()}
    return cls(**values)


def from_dict(raw: dict) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a JSON object at the top level")
    known = {"task", "task_options", "about", *_SECTIONS}  # "about": the recipe's notes, ignored
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(known))})")
    task = raw.get("task", "detection")
    if not isinstance(task, str):
        raise ConfigError(f"config key 'task': expected a task name, got {task!r}")
    options = raw.get("task_options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"config key 'task_options': expected an object, got {options!r}")
    sections = {name: _section_from_dict(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    config = Config(task=task, task_options=dict(options), **sections)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Raise ConfigError naming the first out-of-range value."""
    flat = {f"{s}.{k}": v for s in _SECTIONS for k, v in dataclasses.asdict(getattr(config, s)).items()}
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"config key '{key}': {flat[key]!r} is not one of {', '.join(choices)}")
    for key in _POSITIVE:
        if not flat[key] > 0:
            raise ConfigError(f"config key '{key}': must be > 0, got {flat[key]!r}")
    for key in _NON_NEGATIVE:
        if not flat[key] >= 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {flat[key]!r}")
    if config.data.image_size % config.model.patch_size:
        raise ConfigError(f"config key 'model.patch_size': {config.model.patch_size} does not divide "
                          f"data.image_size {config.data.image_size}")
    if config.model.width % config.model.heads:
        raise ConfigError(f"config key 'model.heads': {config.model.heads} does not divide model.width "
                          f"{config.model.width}")
    if config.train.batch_size % config.train.grad_accum_steps:
        raise ConfigError(f"config key 'train.grad_accum_steps': {config.train.grad_accum_steps} does not divide "
                          f"train.batch_size {config.train.batch_size}")
    for key, needed in (("stem", "patch"), ("pos", "learned")):
        if config.model.init_encoder and getattr(config.model, key) != needed:
            raise ConfigError(f"config key 'model.{key}': model.init_encoder loads a standard ViT, which needs "
                              f"model.{key}={needed}, got {getattr(config.model, key)!r}")
    if not 0 <= config.code.code_dropout < 1:
        raise ConfigError(f"config key 'code.code_dropout': must be in [0, 1), got {config.code.code_dropout!r}")
    if config.train.stage == "codec":
        validate_codec_stage(config)
    if config.train.stage == "reward" and config.train.num_samples < 2:
        raise ConfigError("config key 'train.num_samples': the leave-one-out baseline needs >= 2 samples")
    if config.train.credit != "sequence" and config.train.baseline != "loo":
        raise ConfigError(f"config key 'train.credit': {config.train.credit!r} needs train.baseline 'loo' (its "
                          f"baseline is the other samples' items), got train.baseline {config.train.baseline!r}")
    if config.train.credit_radius < 0:
        raise ConfigError(f"config key 'train.credit_radius': must be >= 0, got {config.train.credit_radius!r}")


def validate_codec_stage(config: Config) -> None:
    """The checks that only UViM's stage I needs (train.stage = "codec")."""
    code, size = config.code, config.data.image_size
    cells = size // code.grid
    if size % code.grid or cells & (cells - 1):
        raise ConfigError(f"config key 'code.grid': data.image_size {size} must be code.grid ({code.grid}) times a "
                          "power of two")
    if code.width % code.heads:
        raise ConfigError(f"config key 'code.heads': {code.heads} does not divide code.width {code.width}")
    for key, why in (("train.eval_reward_samples", "stage codec draws no samples"),
                     ("model.init_encoder", "stage codec trains the code model, not the encoder-decoder")):
        section, name = key.split(".")
        if getattr(getattr(config, section), name):
            raise ConfigError(f"config key '{key}': {why}; leave it unset with train.stage=codec")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 3e-4); values are parsed as JSON when they can be."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.lr=3e-4")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b=v` overrides to a nested dict (a copy)."""
    raw = json.loads(json.dumps(raw))
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return raw


def load(path: str, overrides: list[str] | None = None) -> Config:
    """Read a JSON config file (a recipe or a run's config.json) and apply overrides."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    raw = apply_overrides(raw, overrides or [])
    config = from_dict(raw)
    if config.data.root and not os.path.isabs(config.data.root):
        base = os.path.dirname(os.path.abspath(path))
        candidate = os.path.join(base, config.data.root)
        if not os.path.exists(config.data.root) and os.path.exists(candidate):
            config.data.root = candidate
    return config


def save(config: Config, path: str) -> None:
    """Write the resolved config as JSON (atomically)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(config.to_dict(), f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def task_options(cls: type, raw: dict, task: str) -> Any:
    """Build a task's own options dataclass from `config.task_options`, naming unknown keys."""
    return _section_from_dict("task_options", cls, raw or {})
