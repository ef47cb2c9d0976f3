"""Training batches read ahead in worker processes, in the loop's own order.

The loop fixes each step's images by their position in the data stream (train.batch_indices); the
loader only moves the reading (decode, resize) into `torch.utils.data.DataLoader` workers. Worker k
reads the batches of steps start+k, start+k+workers, ... and the DataLoader hands them back in step
order, so the batches are the same, in the same order, for any number of workers, and a resumed run
reads from the step it resumes at. Nothing here draws from the global random generators.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

# (images FloatTensor[B, 3, S, S], targets, ids): what split.batch returns
Batch = tuple


class _StepIndices(Sampler):
    """The index lists of steps `steps`, made when the DataLoader asks for them (no list of all steps held)."""

    def __init__(self, steps: range, indices_of: Callable[[int], list]):
        self.steps, self.indices_of = steps, indices_of

    def __iter__(self) -> Iterator[list]:
        return (self.indices_of(step) for step in self.steps)

    def __len__(self) -> int:
        return len(self.steps)


class _BatchReader(Dataset):
    """dataset[indices] -> split.batch(indices): one whole batch read in a worker."""

    def __init__(self, split):
        self.split = split

    def __getitem__(self, indices: Sequence[int]) -> Batch:
        return self.split.batch(indices)

    def __len__(self) -> int:
        return len(self.split)


def _as_is(batch: Batch) -> Batch:
    return batch


def step_batches(split, steps: range, indices_of: Callable[[int], list], workers: int = 0,
                 pin_memory: bool = False) -> Iterator[Batch]:
    """split.batch(indices_of(step)) for each step of `steps`, in order; read by `workers` processes when > 0."""
    if workers == 0 or len(steps) == 0:
        return (split.batch(indices_of(step)) for step in steps)
    loader = DataLoader(_BatchReader(split), batch_size=None, sampler=_StepIndices(steps, indices_of),
                        num_workers=workers, collate_fn=_as_is, pin_memory=pin_memory,
                        generator=torch.Generator().manual_seed(0))  # workers' base seed: not the global RNG's
    return iter(loader)
