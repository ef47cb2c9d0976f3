"""torchrun / DDP set-up and the few collectives the loop needs (gloo on CPU, NCCL on GPUs)."""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1).

    Once per process: later calls (the demo trains two stages) reuse the group, which is destroyed
    at exit -- destroying and re-creating it between stages races on torchrun's store and hangs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return Dist(0, 1, device)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        atexit.register(teardown)
    rank = dist.get_rank()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return Dist(rank, dist.get_world_size(), device)


def all_mean(values: dict, d: Dist) -> dict:
    """Mean of each float across ranks (one collective for the whole dict)."""
    if d.world == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return {k: v / d.world for k, v in zip(keys, t.tolist())}


def all_sum(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum of a tensor across ranks (a new tensor; the input is left as it is)."""
    if d.world == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


def all_true(flag: bool, d: Dist) -> bool:
    """True only when `flag` holds on every rank."""
    if d.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def broadcast_object(obj, d: Dist):
    if d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(tensors: list, d: Dist) -> None:
    """Overwrite each tensor, in place, with rank 0's."""
    if d.world > 1:
        for t in tensors:
            dist.broadcast(t, src=0)


def all_gather_object(obj, d: Dist) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects, e.g. RNG states)."""
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def teardown() -> None:
    """Destroy the process group (registered to run at exit by `setup`)."""
    if dist.is_initialized():
        dist.destroy_process_group()
