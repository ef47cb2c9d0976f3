"""Colorization data from image folders, prediction files, and the assembled Task."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rewardtune.config import from_dict
from rewardtune.errors import ConfigError, DataError
from rewardtune.tasks import make_task
from rewardtune.tasks.colorization import load_photos, write_predictions
from rewardtune.tasks.colorization.codec import ColorTarget
from rewardtune.tasks.colorization.data import list_images, load_split


def _write(folder, names, size=12, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)


def _config(root, **options):
    return from_dict({"task": "colorization", "data": {"root": str(root), "image_size": 8},
                      "task_options": {"grid": 4, "palette_size": 8, **options}})


def test_split_holds_gray_inputs_and_colour_targets(tmp_path):
    _write(tmp_path, ["b.jpg", "a.png"])
    split = load_split(str(tmp_path), 8)
    assert split.ids == ["a", "b"] and len(split) == 2
    ex = split[0]
    assert ex.image.shape == (3, 8, 8) and torch.equal(ex.image[0], ex.image[2])  # gray, 3 channels
    assert isinstance(ex.target, ColorTarget) and ex.target.rgb.shape == (8, 8, 3)
    assert torch.equal((ex.image[0] * 255).round().to(torch.uint8), torch.from_numpy(ex.target.gray))


def test_folder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(DataError, match="missing"):
        load_split(str(tmp_path / "missing"), 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no PNG or JPEG"):
        load_split(str(tmp_path / "empty"), 8)
    _write(tmp_path / "bad", ["good.png"])
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_split(str(tmp_path / "bad"), 8)
    split = load_split(str(tmp_path / "bad"), 8, skip_corrupt=True)
    assert split.ids == ["good"] and split.skipped == 1
    _write(tmp_path / "dup", ["x.png", "x.jpg"])
    with pytest.raises(DataError, match="x.png"):
        list_images(str(tmp_path / "dup"))


def test_write_predictions_renders_atomic_pngs(tmp_path):
    _write(tmp_path / "p", ["one.png"])
    _write(tmp_path / "q", ["two.jpg"], size=20)
    split = load_photos([str(tmp_path / "p"), str(tmp_path / "q" / "two.jpg")], 8)  # folders and files
    assert split.ids == ["one", "two"]
    outputs = [np.zeros((4, 4, 2), np.float32)] * 2
    write_predictions(outputs, split.ids, str(tmp_path / "out"), targets=split.targets)
    assert sorted(os.listdir(tmp_path / "out" / "images")) == ["one.png", "two.png"]
    written = np.asarray(Image.open(tmp_path / "out" / "images" / "one.png"))
    assert (written == split.targets[0].gray[..., None]).all()  # neutral chroma = the gray input
    with pytest.raises(TypeError, match="targets"):
        write_predictions(outputs, split.ids, str(tmp_path / "out"))


def test_make_task_fills_the_contract_and_rebuilds_from_state(tmp_path):
    _write(tmp_path / "images" / "train", ["a.png", "b.png", "c.png"])
    _write(tmp_path / "images" / "val", ["v.png"], seed=1)
    task = make_task(_config(tmp_path))
    codec = task.codec
    assert (codec.vocab_size, codec.max_len, codec.end_token) == (9, 17, 8)
    assert set(task.rewards) == {"colorfulness", "colorfulness_fidelity"}
    assert task.primary_metric == "colorfulness" and len(task.state["palette"]) == 8
    val = task.datasets()["val"]
    tokens = codec.encode(val.targets[0])
    outputs = [codec.decode(tokens)]
    reward, parts = task.rewards["colorfulness_fidelity"](outputs, val.targets)
    assert reward.shape == (1,) and "psnr" in parts
    metrics = task.metrics(outputs, val.targets, val.ids)
    assert {"colorfulness", "psnr", "ssim", "hist_distance"} <= set(metrics)
    assert "colorfulness" in task.sample_stats(outputs, val.targets)
    picture = task.visualize(val.rgb(0), outputs[0], val.targets[0])
    assert picture.dtype == np.uint8 and picture.shape[0] >= 128 and picture.shape[1] > 3 * picture.shape[0]
    again = make_task(_config(tmp_path), state=task.state)
    assert torch.equal(again.codec.encode(val.targets[0]), tokens)


def test_options_and_paths_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="task_options.grid"):
        make_task(_config(tmp_path, grid=0))
    with pytest.raises(ConfigError, match="task_options.palette_size"):
        make_task(_config(tmp_path, palette_size=1))
    with pytest.raises(ConfigError, match="task_options.fidelity_weight"):
        make_task(_config(tmp_path, fidelity_weight=-1.0))
    with pytest.raises(ConfigError, match="task_options.colours"):
        make_task(_config(tmp_path, colours=3))
    with pytest.raises(DataError, match="images/train"):
        make_task(_config(tmp_path))  # no images there
    with pytest.raises(ConfigError, match="palette_size"):
        make_task(_config(tmp_path), state={"palette": [[0, 0], [1, 1]]})
