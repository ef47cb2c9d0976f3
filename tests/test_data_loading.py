"""Data at scale: images decoded on access (FileSplit) serve exactly what a decoded split serves, for
every task; training batches read by DataLoader workers are the loop's own batches in its order, and a
run with data.workers=2 trains exactly as one with 0."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from rewardtune import checkpoint
from rewardtune.config import from_dict
from rewardtune.data import dataset
from rewardtune.data.dataset import FileSplit, ImageSplit, hold_decoded, image_split
from rewardtune.data.loader import step_batches
from rewardtune.data.shapes import generate_shapes
from rewardtune.errors import ConfigError, DataError
from rewardtune.tasks import make_task
from rewardtune.train import batch_indices, train

TASKS = ["detection", "captioning", "colorization", "panoptic"]
OPTIONS = {"colorization": {"palette_size": 8, "grid": 4}, "panoptic": {"grid": 4, "max_instances": 4},
           "detection": {"bins": 32, "max_boxes": 6}, "captioning": {}}
TINY_MODEL = {"patch_size": 8, "width": 32, "encoder_depth": 1, "decoder_depth": 1, "heads": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(str(root), num_train=24, num_val=8, num_test=2, image_size=32, seed=2, level="medium")
    return str(root)


def config(task, root, decode, workers=0, **train):
    return from_dict({"task": task, "task_options": OPTIONS[task], "model": TINY_MODEL,
                      "data": {"root": root, "image_size": 32, "decode": decode, "workers": workers},
                      "train": {"threads": 0, "log_every": 1, "warmup_steps": 1, "eval_images": 4, **train}})


def same(a, b) -> bool:
    """Equal values, arrays equal in dtype and every element, through dicts, lists and dataclasses."""
    if isinstance(a, (np.ndarray, torch.Tensor)):
        return type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and same(vars(a), vars(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def same_batches(xs, ys) -> bool:
    return len(xs) == len(ys) and all(torch.equal(x[0], y[0]) and same(x[1], y[1]) and x[2] == y[2]
                                      for x, y in zip(xs, ys))


@pytest.mark.parametrize("task", TASKS)
def test_decoding_on_access_serves_what_the_decoded_split_serves(task, world):
    held_task, lazy_task = make_task(config(task, world, "once")), make_task(config(task, world, "on_access"))
    assert same(held_task.state, lazy_task.state)  # vocabulary, class counts, palette (learned from the images)
    held, lazy = held_task.datasets(), lazy_task.datasets()
    for name, size in (("train", 24), ("val", 8)):
        a, b = held[name], lazy[name]
        assert isinstance(a, ImageSplit) and isinstance(b, FileSplit) and len(a) == len(b) == size
        assert a.ids == b.ids and same(list(a.targets), list(b.targets))
        indices = [5, 0, 3, 3]
        assert same_batches([a.batch(indices)], [b.batch(indices)])
        assert torch.equal(a[2].image, b[2].image) and same(a[2].target, b[2].target)
        assert np.array_equal(a.rgb(1), b.rgb(1))
    assert not hasattr(lazy["train"], "images")  # paths only: no decoded array held


def test_auto_holds_small_splits_decoded_and_large_ones_as_paths(world, monkeypatch):
    assert hold_decoded("auto", 2000, 64)  # the shapes world: 25 MB
    assert not hold_decoded("auto", 118287, 640) and not hold_decoded("auto", 118287, 64)  # COCO train2017
    assert hold_decoded("once", 118287, 640) and not hold_decoded("on_access", 1, 8)
    assert isinstance(make_task(config("detection", world, "auto")).datasets()["train"], ImageSplit)
    monkeypatch.setattr(dataset, "AUTO_HOLD_BYTES", 24 * 3 * 32 * 32 - 1)  # one byte short of the train split
    splits = make_task(config("detection", world, "auto")).datasets()
    assert isinstance(splits["train"], FileSplit) and isinstance(splits["val"], ImageSplit)
    with pytest.raises(ConfigError, match="'data.decode': 'lazy' is not one of auto, once, on_access"):
        config("detection", world, "lazy")


def test_unreadable_images_on_access_name_the_file(tmp_path):
    from PIL import Image
    paths = [str(tmp_path / f"{i}.png") for i in range(4)]
    rng = np.random.default_rng(0)
    for path in paths:  # noise: the pixel data is most of each file
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path)
    good = image_split(paths, list("abcd"), [0, 1, 2, 3], 8, "on_access")
    assert good.targets == list("abcd") and good.batch([3])[0].shape == (1, 3, 8, 8)
    os.remove(paths[1])
    with open(paths[2], "wb") as f:
        f.write(b"not an image")
    with pytest.raises(DataError, match=f"{paths[1]}: image not found"):
        image_split(paths, list("abcd"), [0, 1, 2, 3], 8, "on_access")
    split = image_split(paths, list("abcd"), [0, 1, 2, 3], 8, "on_access", skip_corrupt=True)
    assert split.ids == [0, 3] and split.targets == ["a", "d"] and split.skipped == 2
    data = open(paths[3], "rb").read()
    with open(paths[3], "wb") as f:  # the header reads, the pixels do not: found when a batch reads it
        f.write(data[: len(data) // 2])
    split = image_split(paths[3:], ["d"], [3], 8, "on_access")
    with pytest.raises(DataError, match=f"{paths[3]}: corrupt or unreadable image"):
        split.batch([0])


def test_workers_read_the_loops_batches_in_its_order(world):
    split = make_task(config("detection", world, "on_access")).datasets()["train"]
    steps = range(3, 11)  # from a middle step, as a resumed run does; batches cross an epoch boundary

    def indices(step):
        return batch_indices(step, 5, len(split), seed=4)

    in_loop = list(step_batches(split, steps, indices, workers=0))
    assert [ids for _, _, ids in in_loop] == [[split.ids[i] for i in indices(s)] for s in steps]
    assert same_batches(list(step_batches(split, steps, indices, workers=2)), in_loop)
    assert list(step_batches(split, range(4, 4), indices, workers=2)) == []


def test_training_with_two_workers_is_training_without(world, tmp_path):
    runs = {}
    for workers in (0, 2):
        run = str(tmp_path / f"workers{workers}")
        train(config("detection", world, "on_access", workers, steps=4, batch_size=6, eval_every=4,
                     checkpoint_every=4, lr=3e-3), run, evaluate_at_end=False)
        with open(os.path.join(run, "metrics.jsonl")) as f:
            records = [{k: v for k, v in json.loads(line).items() if k != "time"} for line in f]
        runs[workers] = records, torch.load(os.path.join(checkpoint.find(run), "model.pt"), weights_only=True)
    (log0, w0), (log2, w2) = runs[0], runs[2]
    assert len([r for r in log0 if "train/loss" in r]) == 4 and log0 == log2
    assert all(torch.equal(w0[k], w2[k]) for k in w0)


def test_colorization_palette_from_the_first_training_images(world):
    """task_options.palette_images=N learns the palette from the first N images: as a split of those N would."""
    capped, first, every = (config("colorization", world, "on_access") for _ in range(3))
    capped.task_options = {**capped.task_options, "palette_images": 10}
    first.data.max_train_images = 10
    palettes = [make_task(c).state["palette"] for c in (capped, first, every)]
    assert palettes[0] == palettes[1] and palettes[0] != palettes[2]
    capped.task_options["palette_images"] = -1
    with pytest.raises(ConfigError, match="'task_options.palette_images': must be >= 0, got -1"):
        make_task(capped)
