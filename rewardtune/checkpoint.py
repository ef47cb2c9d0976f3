"""Atomic checkpoints: written to a temporary folder, flushed, renamed, then a pointer file moved.

RUN/checkpoints/step-N/{model.pt, optim.pt, rng.pt, state.json}; RUN/checkpoints/latest and
RUN/checkpoints/best hold the name of a complete step folder. Loading never unpickles code
(`torch.load(weights_only=True)`). A `.tmp-step-N` folder is an interrupted write: never read,
removed on the next start or save.

Testing hook: REWARDTUNE_TEST_KILL_IN_CHECKPOINT="N[:PHASE]" makes `save(step=N)` SIGKILL its own
process at PHASE: "files" (default; model.pt and optim.pt written in the temporary folder),
"renamed" (step-N in place, no pointer moved), "best" (`best` moved, `latest` not) or "done" (all
written). tests/test_resume_kill.py uses it to crash at exact points of a write.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
from typing import Optional

import numpy as np
import torch

from .errors import UserError

FILES = ("model.pt", "optim.pt", "rng.pt", "state.json")
KILL_ENV = "REWARDTUNE_TEST_KILL_IN_CHECKPOINT"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_pointer(folder: str, name: str, target: str) -> None:
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(target + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, name))
    _fsync_dir(folder)


def _save_file(obj, path: str) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def rng_state() -> tuple[dict, dict]:
    """(tensors for rng.pt, JSON-able states for state.json) of every global RNG of this process."""
    py = random.getstate()
    np_state = np.random.get_state()
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    json_state = {"python": [py[0], list(py[1]), py[2]],
                  "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, json_state


def restore_rng(tensors: dict, json_state, rank: int = 0) -> None:
    """Restore this rank's RNG states (rank 0's when the run had fewer ranks than this one)."""
    per_rank_tensors = tensors.get("ranks", [tensors])
    per_rank_json = json_state if isinstance(json_state, list) else [json_state]
    r = rank if rank < len(per_rank_tensors) else 0
    tensors, json_state = per_rank_tensors[r], per_rank_json[r]
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    py = json_state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = json_state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))


def _test_kill(step: int, phase: str) -> None:
    """The testing hook of the module docstring: SIGKILL at `phase` of writing step `step`."""
    spec = os.environ.get(KILL_ENV, "").split(":")
    if spec[0] == str(step) and (spec[1] if len(spec) > 1 else "files") == phase:
        os.kill(os.getpid(), signal.SIGKILL)


def save(run_dir: str, step: int, model: torch.nn.Module, optimizer, scheduler, state: dict,
         keep: int = 2, best: bool = False, rng: Optional[list] = None) -> str:
    """Write step-N atomically, move `best` (if best) then `latest`, prune old step folders.

    `rng`: [rng_state() of rank 0, of rank 1, ...]; None = this process's only.
    """
    folder = os.path.join(run_dir, "checkpoints")
    os.makedirs(folder, exist_ok=True)
    name = f"step-{step}"
    tmp = os.path.join(folder, f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    rng = rng or [rng_state()]
    _save_file(model.state_dict(), os.path.join(tmp, "model.pt"))
    _save_file({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               os.path.join(tmp, "optim.pt"))
    _test_kill(step, "files")
    _save_file({"ranks": [tensors for tensors, _ in rng]}, os.path.join(tmp, "rng.pt"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({**state, "step": step, "rng": [json_state for _, json_state in rng]}, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    final = os.path.join(folder, name)
    if os.path.exists(final):  # left by a run killed after the rename but before `latest` moved
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(folder)
    _test_kill(step, "renamed")
    if best:  # `best` first: a crash in between leaves `latest` behind, and the replay rewrites both
        _write_pointer(folder, "best", name)
        _test_kill(step, "best")
    _write_pointer(folder, "latest", name)
    _prune(folder, keep)
    _test_kill(step, "done")
    return final


def _prune(folder: str, keep: int) -> None:
    protected = {read_pointer(folder, "latest"), read_pointer(folder, "best")}
    steps = sorted((int(n.split("-")[1]), n) for n in os.listdir(folder)
                   if n.startswith("step-") and n.split("-")[1].isdigit())
    for _, name in steps[:-keep] if keep else []:
        if name not in protected:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    remove_partial(folder)


def remove_partial(folder: str) -> None:
    """Delete the temporary folders and pointer files that interrupted writes left in `folder`."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(".tmp-"):
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(".") and name.endswith(".tmp"):
            os.remove(path)


def read_pointer(folder: str, name: str) -> Optional[str]:
    """The checkpoint folder name the pointer file `folder/name` ('latest', 'best') holds, or None."""
    path = os.path.join(folder, name)
    try:
        with open(path) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None
    except (IsADirectoryError, UnicodeDecodeError):
        raise UserError(f"{path}: must be a pointer file holding a checkpoint folder's name (e.g. 'step-100'), "
                        "not a folder or binary file") from None


def standing(run_dir: str) -> str:
    """The one rule for which checkpoint stands for a run: 'best' when it trained with patience (early
    stopping picked it on val) and has one, else 'latest' (where the run ended). Tuning from a run
    (--init), `eval`, `predict`, `analyze` (the run and its --init) and the report all read this one."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            patience = json.load(f)["train"]["patience"]
    except (OSError, ValueError, KeyError, TypeError):
        patience = 0
    return "best" if patience and find(run_dir, "best") else "latest"


def resolve(run_dir: str, which: Optional[str] = None) -> str:
    """`which` ('latest' or 'best') as given, or the standing checkpoint's name when None."""
    return standing(run_dir) if which is None else which


def find(run_dir: str, which: str = "latest") -> Optional[str]:
    """Path of the complete checkpoint `which` ('latest' or 'best') of a run, or None."""
    folder = os.path.join(run_dir, "checkpoints")
    name = read_pointer(folder, which)
    if name is None:
        return None
    path = os.path.join(folder, name)
    if not all(os.path.exists(os.path.join(path, f)) for f in FILES):
        raise UserError(f"{path}: checkpoint is incomplete (missing files)")
    return path


REFERENCE = "reference.pt"  # RUN/reference.pt: the KL term's reference weights (train.kl_weight > 0)


def save_reference(run_dir: str, model: torch.nn.Module) -> None:
    """Write the weights a run starts from to RUN/reference.pt, atomically: the KL term's reference, which a
    resumed run must read back (its resumed weights are not the reference)."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, REFERENCE)
    _save_file(model.state_dict(), path + ".tmp")
    os.replace(path + ".tmp", path)
    _fsync_dir(run_dir)


def load_reference(run_dir: str, model: torch.nn.Module) -> None:
    """Load RUN/reference.pt into `model` (a copy of the run's model); one line naming it when missing."""
    path = os.path.join(run_dir, REFERENCE)
    if not os.path.isfile(path):
        raise UserError(f"{path}: missing: the KL reference (train.kl_weight > 0) this run started from; without "
                        f"it the run cannot resume exactly (start it again in a new folder)")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def load(path: str, optimizer_state: bool = True) -> dict:
    """Read a checkpoint folder -> {"model", "optim", "rng", "state"}; refuses pickled code."""
    try:
        with open(os.path.join(path, "state.json")) as f:
            state = json.load(f)
        out = {"state": state,
               "model": torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)}
        if optimizer_state:
            out["optim"] = torch.load(os.path.join(path, "optim.pt"), map_location="cpu", weights_only=True)
            out["rng"] = torch.load(os.path.join(path, "rng.pt"), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise UserError(f"{e.filename}: checkpoint file not found") from None
    except json.JSONDecodeError:
        raise UserError(f"{path}/state.json: malformed checkpoint state") from None
    except Exception as e:  # weights_only refuses anything that is not plain tensors and containers
        raise UserError(f"{path}: not a rewardtune checkpoint or unsafe to load ({type(e).__name__})") from None
    return out


def load_weights(model: torch.nn.Module, weights: dict, path: str, task: str, saved_task: str) -> None:
    """Load a state dict, refusing another task's or another shape's checkpoint with one line."""
    if saved_task != task:
        raise UserError(f"{path}: checkpoint is for task '{saved_task}', not '{task}'")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = next((l.strip() for l in first if "size mismatch" in l or "Missing" in l or "Unexpected" in l),
                      first[0] if first else "")
        raise UserError(f"{path}: checkpoint does not fit this model ({detail[:160]})") from None
