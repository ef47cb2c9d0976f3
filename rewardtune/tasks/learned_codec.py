"""A learned code (UViM stage II) behind the Task contract, for any task with a dense target (Task.dense).

    task = with_codec(task, config, options.codec, options.code_run, state)   # in a task's make_task

`task_options.codec = "grid"` (the task's own codec, the default) or "learned": the code of a stage I run
(`task_options.code_run`, a `rewardtune pretrain <task>_bench_codec` run folder; its standing checkpoint).
The stage II model writes the stage I code, grid^2 codebook indices in raster order, then the end token;
the frozen stage I decoder turns them, with the image, into the task's output (DenseTarget.to_outputs).

Self-contained runs: the LearnedCodec is an nn.Module that `build_model` registers as a frozen submodule of
the EncoderDecoder, so every checkpoint's model.pt carries the stage I weights; the task state records
{"codec": "learned", "code_run", "code_checkpoint", "arch"}, and a run rebuilt from its state (resume,
--init, eval, predict, analyze, report) builds the code model from "arch" and loads the weights from its
own model.pt: it never reads code_run again.

Decoding any token sequence gives a valid output: tokens after the first end token are dropped, the first
grid^2 are the code, and a missing position or a token that is no code index (the end token, out of range)
reads as code 0.

Encoding runs the stage I oracle, batched, and caches each target's code by its content (`fingerprint`):
a target is encoded once per process, not at every step. `prepare(targets)` queues a split's targets
to be encoded together, in fixed chunks, at the first encoding (so a resumed run computes the same codes).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .. import checkpoint
from ..data.files import read_json
from ..errors import ConfigError, UserError
from ..model.uvim import CodeModel
from .base import Task

CODECS = ("grid", "learned")
STATE_KEYS = ("codec", "code_run", "code_checkpoint", "arch")  # what a learned code adds to the task state
CODE_RUN_KEY = "config key 'task_options.code_run'"


def fingerprint(value: Any) -> bytes:
    """A digest of a target's content (arrays, dicts, lists, dataclasses, scalars): equal targets, equal keys,
    whichever object holds them (a DataLoader worker's copy included)."""
    digest = hashlib.blake2b(digest_size=16)
    _feed(digest, value)
    return digest.digest()


def _feed(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        digest.update(f"array {value.dtype} {value.shape}|".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)}|".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"list {len(value)}|".encode())
        for item in value:
            _feed(digest, item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        digest.update(f"{type(value).__name__}|".encode())
        _feed(digest, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    else:
        digest.update(f"{type(value).__name__} {value!r}|".encode())


class LearnedCodec(nn.Module):
    """Stage I code <-> the task's output. vocab = codebook_size + 1 (the end token is codebook_size),
    max_len = grid^2 + 1. `dense`: the task's DenseTarget (to_input for the oracle, to_outputs for the
    decoder's prediction); `grid_codec`: the task's own codec, kept for its ceiling beside this one's."""

    def __init__(self, code_model: CodeModel, dense, grid_codec=None, batch_size: int = 256):
        super().__init__()
        self.code_model = code_model
        self.dense, self.grid_codec, self.batch_size = dense, grid_codec, int(batch_size)
        self.cells = code_model.grid * code_model.grid
        self.codebook_size = code_model.codebook_size
        self.vocab_size, self.end_token, self.max_len = self.codebook_size + 1, self.codebook_size, self.cells + 1
        self._codes: dict[bytes, torch.Tensor] = {}  # fingerprint -> LongTensor[cells] on the CPU
        self._pending: list = []  # targets queued by prepare()
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LearnedCodec":
        """Always in eval mode (frozen: no code dropout), whatever mode the model it belongs to is put in."""
        return super().train(False)

    def _device(self) -> torch.device:
        return next(self.code_model.parameters()).device

    # ---- encode -------------------------------------------------------------------------------
    def prepare(self, targets: Sequence[Any]) -> None:
        """Queue targets (a split's) to be encoded in fixed chunks at the next encoding."""
        self._pending.extend(targets)

    @torch.no_grad()
    def _encode_new(self, keys: Sequence[bytes], targets: Sequence[Any]) -> None:
        device = self._device()
        for start in range(0, len(targets), self.batch_size):
            dense = self.dense.to_input(list(targets[start:start + self.batch_size])).to(device, torch.float32)
            codes = self.code_model.encode(dense).cpu()
            for key, code in zip(keys[start:start + self.batch_size], codes):
                self._codes[key] = code.clone()

    def _encode_missing(self, targets: Sequence[Any]) -> list[bytes]:
        """Fingerprints of `targets`; the ones not cached yet (and the queued ones) encoded, batched."""
        if self._pending:
            pending, self._pending = self._pending, []
            self._encode_missing(pending)
        keys = [fingerprint(t) for t in targets]
        new = {}
        for key, target in zip(keys, targets):
            if key not in self._codes and key not in new:
                new[key] = target
        if new:
            self._encode_new(list(new), list(new.values()))
        return keys

    def encode_batch(self, targets: Sequence[Any], rngs: Optional[Sequence[Any]] = None) -> list[torch.Tensor]:
        """Each target's stage I code then the end token: LongTensor[grid^2 + 1] each (no randomness)."""
        end = torch.tensor([self.end_token], dtype=torch.long)
        return [torch.cat([self._codes[key], end]) for key in self._encode_missing(list(targets))]

    def encode(self, target: Any, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        return self.encode_batch([target])[0]

    # ---- decode -------------------------------------------------------------------------------
    def codes_of(self, tokens: Any) -> torch.Tensor:
        """Any token sequence -> LongTensor[grid^2] of valid code indices (code 0 where missing or invalid)."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().reshape(-1).cpu().tolist()
        values = []
        for token in tokens:
            try:
                value = int(token)
            except (TypeError, ValueError, OverflowError):
                value = -1
            if value == self.end_token:
                break
            values.append(value if 0 <= value < self.codebook_size else 0)
            if len(values) == self.cells:
                break
        return torch.tensor(values + [0] * (self.cells - len(values)), dtype=torch.long)

    @torch.no_grad()
    def decode_batch(self, token_lists: Sequence[Any], images: Optional[torch.Tensor],
                     step_log_probs: Optional[Sequence[Any]] = None) -> list:
        """Token lists + their images FloatTensor[n, 3, S, S] -> the task's outputs, decoded in chunks
        (called through tasks.base.decode_tokens, which checks that the counts agree)."""
        if images is None:
            raise ValueError("a learned code decodes with the image: pass each sequence's image")
        if not len(token_lists):
            return []
        device = self._device()
        codes = torch.stack([self.codes_of(t) for t in token_lists])
        outputs = []
        for start in range(0, len(codes), self.batch_size):
            part = slice(start, start + self.batch_size)
            prediction = self.code_model.decode(images[part].to(device, torch.float32), codes[part].to(device))
            outputs += list(self.dense.to_outputs(prediction.float()))
        return outputs

    def decode(self, tokens: Sequence[int], step_log_probs: Optional[torch.Tensor] = None,
               image: Optional[torch.Tensor] = None) -> Any:
        if image is None:
            raise ValueError("a learned code decodes with the image: pass image=")
        return self.decode_batch([tokens], image[None])[0]

    def grammar(self) -> torch.Tensor:
        """BoolTensor[max_len, V]: a code index at each of the grid^2 positions, then only the end token."""
        allowed = torch.zeros(self.max_len, self.vocab_size, dtype=torch.bool)
        allowed[:-1, :self.end_token] = True
        allowed[-1, self.end_token] = True
        return allowed


# ---- the stage I run -------------------------------------------------------------------------------
def stage_one_arch(saved_state: dict, path: str) -> dict:
    """CodeModel kwargs of a stage I checkpoint: the "code_arch" every stage I run saves (train.py)."""
    arch = saved_state.get("code_arch")
    if not isinstance(arch, dict):
        raise UserError(f"{path}: the checkpoint records no 'code_arch' (not written by a stage I run)")
    return dict(arch)


def check_arch(arch: dict, dense, image_size: int, where: str) -> None:
    """ConfigError naming `where` (the stage I run) when its code does not fit this task's dense target."""
    for key, ours in (("in_channels", dense.in_channels), ("out_channels", dense.out_channels),
                      ("image_size", image_size)):
        if int(arch.get(key, -1)) != int(ours):
            raise ConfigError(f"{where}: its code model has {key} {arch.get(key)}, this task needs {ours} "
                              "(a stage I run of other task options or data.image_size)")


def load_stage_one(code_run: str, config, dense) -> tuple[CodeModel, dict]:
    """(the stage I code model with its weights, the task state entries that record it) of the run folder
    `code_run`, at its standing checkpoint. UserError (one line naming it) when it is missing, has no
    checkpoint, is not a stage I run or is another task's."""
    if not code_run:
        raise ConfigError(f"{CODE_RUN_KEY}: task_options.codec 'learned' needs the folder of a stage I run "
                          "(rewardtune pretrain <task>_bench_codec)")
    if not os.path.isdir(code_run):
        raise ConfigError(f"{CODE_RUN_KEY}: {code_run}: no such run folder")
    config_path = os.path.join(code_run, "config.json")
    if not os.path.exists(config_path):
        raise UserError(f"{code_run}: not a run folder (no config.json)")
    raw = read_json(config_path)
    raw = raw if isinstance(raw, dict) else {}
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    if raw.get("task") != config.task:
        raise UserError(f"{code_run}: a run of task '{raw.get('task')}', not '{config.task}'")
    if train.get("stage", "mle") != "codec":
        raise UserError(f"{code_run}: not a stage I run (its train.stage is '{train.get('stage', 'mle')}'; "
                        "a learned code needs a 'codec' run)")
    path = checkpoint.find(code_run, checkpoint.standing(code_run))
    if path is None:
        raise UserError(f"{code_run}: the stage I run has no checkpoint yet")
    saved = checkpoint.load(path, optimizer_state=False)
    arch = stage_one_arch(saved["state"], path)
    check_arch(arch, dense, config.data.image_size, code_run)
    try:
        model = CodeModel(**arch)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: cannot rebuild its code model ({e})") from None
    checkpoint.load_weights(model, saved["model"], path, config.task, saved["state"].get("task"))
    record = {"codec": "learned", "code_run": os.path.abspath(code_run), "code_checkpoint": os.path.basename(path),
              "arch": model.arch}
    return model, record


def code_model_from_state(state: dict, dense, image_size: int) -> CodeModel:
    """The code model a learned-code run recorded (its weights come from the run's own model.pt)."""
    arch = state.get("arch")
    if not isinstance(arch, dict):
        raise ConfigError("task state: a learned code needs its 'arch' (the stage I code model's kwargs)")
    check_arch(arch, dense, image_size, f"task state (stage I run {state.get('code_run')})")
    try:
        return CodeModel(**arch)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"task state: 'arch' does not build a code model ({e})") from None


def with_codec(task: Task, config, codec: str, code_run: str, state: Optional[dict]) -> Task:
    """The task with the codec `task_options.codec` names: unchanged for "grid"; for "learned", a LearnedCodec
    from the stage I run `code_run` (a fresh run) or from `state` (a run rebuilt from a checkpoint)."""
    if codec not in CODECS:
        raise ConfigError(f"config key 'task_options.codec': {codec!r} is not one of {', '.join(CODECS)}")
    saved = state.get("codec", "grid") if isinstance(state, dict) else None
    if saved is not None and saved != codec:
        raise ConfigError(f"config key 'task_options.codec': {codec!r}, but the checkpoint's model writes the "
                          f"{saved!r} code" + (f" of {state.get('code_run')}" if saved == "learned" else ""))
    if codec == "grid":
        return task
    dense = getattr(task, "dense", None)
    if dense is None:
        raise ConfigError(f"config key 'task_options.codec': task '{task.name}' has no dense target "
                          "(Task.dense) for a learned code")
    if saved == "learned":
        model, record = code_model_from_state(state, dense, config.data.image_size), {k: state[k] for k in STATE_KEYS
                                                                                      if k in state}
    else:
        model, record = load_stage_one(code_run, config, dense)
    learned = LearnedCodec(model, dense, grid_codec=task.codec)
    task.state.update(record)
    datasets, queued = task.datasets, []

    def prepared() -> dict:
        """The task's splits; at the first call, the held train split's targets queued for one batched encoding."""
        splits = datasets()
        if not queued:
            queued.append(True)
            train = splits.get("train")
            if train is not None and isinstance(getattr(train, "targets", None), list):
                learned.prepare(train.targets)
        return splits

    task.codec, task.datasets = learned, prepared
    grid = model.grid  # train.credit = "local": the code's cells, one token each, in raster order
    cells = np.stack([np.arange(grid * grid), np.arange(1, grid * grid + 1)], 1).astype(np.int64)
    task.item_tokens, task.item_grid = (lambda output: cells), grid
    return task
