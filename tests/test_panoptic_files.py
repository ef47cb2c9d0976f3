"""COCO panoptic files: loading, writing predictions, `score_files` and its one-line errors, the Task."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rewardtune.config import from_dict
from rewardtune.errors import ConfigError, DataError
from rewardtune.tasks import make_task
from rewardtune.tasks.panoptic import io as panoptic_io
from rewardtune.tasks.panoptic import score_files
from rewardtune.tasks.panoptic.maps import id_to_rgb, rgb_to_id

CATEGORIES = [{"id": 1, "name": "square", "isthing": 1, "supercategory": "shape"},
              {"id": 2, "name": "disc", "isthing": 1, "supercategory": "shape"},
              {"id": 3, "name": "grass", "isthing": 0, "supercategory": "ground"}]


def gt_maps(size=20):
    """Three ground-truth maps with COCO-style 24-bit ids: things on grass, one crowd, some VOID."""
    a = np.full((size, size), 0x102030, np.int32)
    a[2:10, 2:10] = 0x0A0B0C
    a[12:18, 12:18] = 0x0A0B0D
    b = np.full((size, size), 0x102030, np.int32)
    b[0:4, :] = 0  # void strip
    b[5:15, 5:15] = 77
    c = np.full((size, size), 0x102030, np.int32)
    c[0:10, 0:10] = 91  # a crowd of squares
    return [(a, {0x0A0B0C: 1, 0x0A0B0D: 2, 0x102030: 3}), (b, {77: 2, 0x102030: 3}),
            (c, {91: 1, 0x102030: 3})]


def write_split(root, split="val", size=20):
    """A tiny dataset in the COCO 2017 panoptic layout; returns the annotation JSON path."""
    img_dir = os.path.join(root, "images", split)
    png_dir = os.path.join(root, "annotations", f"panoptic_{split}")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(png_dir, exist_ok=True)
    images, annotations = [], []
    for k, (ids, cats) in enumerate(gt_maps(size)):
        image_id = 100 + k
        image = Image.fromarray(np.full((size, size, 3), 40 * k, np.uint8))
        image.save(os.path.join(img_dir, f"{image_id:012d}.jpg"))
        Image.fromarray(id_to_rgb(ids)).save(os.path.join(png_dir, f"{image_id:012d}.png"))
        segs = [{"id": int(i), "category_id": c, "iscrowd": int(i == 91), "area": int((ids == i).sum()),
                 "bbox": [0, 0, 1, 1]} for i, c in cats.items()]
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": size, "width": size})
        annotations.append({"image_id": image_id, "file_name": f"{image_id:012d}.png", "segments_info": segs})
    path = os.path.join(root, "annotations", f"panoptic_{split}.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return path


@pytest.fixture
def data_root(tmp_path):
    write_split(str(tmp_path), "train")
    write_split(str(tmp_path), "val")
    return str(tmp_path)


def config_for(root, **options):
    return from_dict({"task": "panoptic", "task_options": {"grid": 4, "max_instances": 2, **options},
                      "data": {"root": root, "image_size": 16, "train_split": "train", "val_split": "val"},
                      "model": {"patch_size": 8}})


def test_png_ids_use_the_coco_colour_code():
    ids = np.array([[0, 1, 256, 65536, 0x102030]], np.int64)
    assert id_to_rgb(ids)[0, 4].tolist() == [0x30, 0x20, 0x10]
    assert rgb_to_id(id_to_rgb(ids)).tolist() == ids.tolist()


def test_task_loads_coco_layout_and_fills_the_contract(data_root):
    task = make_task(config_for(data_root, grid=8))
    assert task.name == "panoptic" and task.primary_metric == "pq" and set(task.rewards) == {"pq", "pq_dataset"}
    assert task.state == {"categories": [{"id": c["id"], "name": c["name"], "isthing": c["isthing"]}
                                         for c in CATEGORIES]}
    splits = task.datasets()
    val = splits["val"]
    assert len(val) == 3 and val.ids == [100, 101, 102]
    ex = val[0]
    assert ex.image.shape == (3, 16, 16) and ex.target["map"].shape == (16, 16)
    assert ex.target["full_map"].shape == (20, 20) and ex.target["full_segments"][0]["area"] == 64
    assert {s["id"] for s in ex.target["segments"]} == {0x0A0B0C, 0x0A0B0D, 0x102030}
    tokens = task.codec.encode(ex.target)
    assert len(tokens) == task.codec.max_len
    stats = task.sample_stats([task.codec.decode(tokens)], [ex.target])
    assert stats["segments"] == 3 and stats["gt_segments"] == 3
    picture = task.visualize(val.rgb(0), task.codec.decode(tokens), ex.target)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[0] >= 256
    reward, parts = task.rewards["pq"]([task.codec.decode(tokens)], [ex.target])
    assert reward.shape == (1,) and 0 < float(reward[0]) <= 1 and set(parts) == {"sq", "rq", "per_region"}


def test_written_predictions_score_as_the_in_memory_metric(data_root, tmp_path):
    task = make_task(config_for(data_root, grid=8))
    val = task.datasets()["val"]
    outputs = [task.codec.decode(task.codec.encode(t)) for t in val.targets]
    outputs[1] = task.codec.decode([])  # an empty prediction
    in_memory = task.metrics(outputs, val.targets, val.ids)
    out_dir = str(tmp_path / "eval")
    task.write_predictions(outputs, val.targets, val.ids, out_dir)
    assert sorted(os.listdir(os.path.join(out_dir, "panoptic"))) == [f"{i:012d}.png" for i in (100, 101, 102)]
    assert Image.open(os.path.join(out_dir, "panoptic", "000000000100.png")).size == (20, 20)
    gt_json = os.path.join(data_root, "annotations", "panoptic_val.json")
    from_files = score_files(os.path.join(out_dir, "panoptic.json"), os.path.join(out_dir, "panoptic"),
                             gt_json, gt_json[:-5])
    assert from_files == pytest.approx(in_memory, abs=1e-12)
    assert 0 < from_files["pq"] < 1 and from_files["pq_stuff"] > 0


def test_large_ground_truth_is_read_from_its_png_when_scored(data_root, monkeypatch):
    def score():
        task = make_task(config_for(data_root, grid=8))
        val = task.datasets()["val"]
        outputs = [task.codec.decode(task.codec.encode(t)) for t in val.targets]
        return task.metrics(outputs, val.targets, val.ids), val.targets
    held, targets = score()
    assert all(t["full_map"] is not None for t in targets)
    monkeypatch.setattr(panoptic_io, "FULL_MAP_MAX_PIXELS", 0)  # do not hold full-resolution maps
    lazy, targets = score()
    assert all(t["full_map"] is None for t in targets) and lazy == held and held["pq_things"] > 0


def test_ground_truth_scored_against_itself_is_perfect(data_root):
    gt_json = os.path.join(data_root, "annotations", "panoptic_val.json")
    got = score_files(gt_json, gt_json[:-5], gt_json, gt_json[:-5])
    assert got["pq"] == 1.0 and got["pq_things"] == 1.0 and got["sq_stuff"] == 1.0


def test_checkpoint_state_decodes_without_data():
    state = {"categories": [{"id": c["id"], "name": c["name"], "isthing": c["isthing"]} for c in CATEGORIES]}
    task = make_task(config_for("/nonexistent"), state=state)
    out = task.codec.decode(torch.tensor([3, 3, 1]))  # token 1: grass; 2, 3: square slots
    assert [(s["category_id"], s["isthing"]) for s in out["segments"]] == [(3, 0), (1, 1)]


def test_bad_options_name_the_key():
    with pytest.raises(ConfigError, match="task_options.grid"):
        make_task(config_for("/x", grid=0), state={"categories": []})
    with pytest.raises(ConfigError, match="task_options.max_instances"):
        make_task(config_for("/x", max_instances=0), state={"categories": []})
    with pytest.raises(ConfigError, match="task_options.colour"):
        make_task(config_for("/x", colour=1), state={"categories": []})


# ---- score_files errors: one line naming the file -----------------------------------------------------

@pytest.fixture
def files(data_root, tmp_path):
    """(pred_json, pred_dir, gt_json, gt_dir): the ground truth copied as predictions."""
    gt_json = os.path.join(data_root, "annotations", "panoptic_val.json")
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    raw = json.load(open(gt_json))
    for ann in raw["annotations"]:
        Image.open(os.path.join(gt_json[:-5], ann["file_name"])).save(pred_dir / ann["file_name"])
    pred_json = str(tmp_path / "pred.json")
    json.dump({"annotations": raw["annotations"]}, open(pred_json, "w"))
    return pred_json, str(pred_dir), gt_json, gt_json[:-5]


def edit_pred(pred_json, change):
    raw = json.load(open(pred_json))
    change(raw["annotations"][0]["segments_info"])
    json.dump(raw, open(pred_json, "w"))


def one_line_error(files, naming):
    with pytest.raises(DataError) as err:
        score_files(*files)
    message = str(err.value)
    assert "\n" not in message and naming in message, message
    return message


def test_png_id_missing_from_json_is_an_error_naming_the_png(files):
    edit_pred(files[0], lambda segs: segs.pop(0))  # segment 0x0A0B0C stays in the PNG
    message = one_line_error(files, os.path.join(files[1], "000000000100.png"))
    assert str(0x0A0B0C) in message


def test_json_id_missing_from_png_is_an_error_naming_the_json(files):
    edit_pred(files[0], lambda segs: segs.append({"id": 4242, "category_id": 1}))
    assert "4242" in one_line_error(files, files[0])


def test_unknown_category_is_an_error(files):
    edit_pred(files[0], lambda segs: segs[0].update(category_id=99))
    assert "99" in one_line_error(files, files[0])


def test_missing_png_is_an_error_naming_it(files):
    os.remove(os.path.join(files[1], "000000000101.png"))
    one_line_error(files, "000000000101.png")


def test_truncated_json_is_an_error_naming_it(files):
    text = open(files[0]).read()
    open(files[0], "w").write(text[: len(text) // 2])
    one_line_error(files, files[0])


def test_missing_prediction_for_an_image_is_an_error(files):
    raw = json.load(open(files[0]))
    raw["annotations"].pop()
    json.dump(raw, open(files[0], "w"))
    assert "102" in one_line_error(files, files[0])
