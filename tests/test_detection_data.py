"""The COCO instances loader (targets, limits, every user error as one DataError line) and the Task."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from rewardtune.config import Config, DataConfig, TrainConfig
from rewardtune.errors import ConfigError, DataError
from rewardtune.tasks.detection import make_task
from rewardtune.tasks.detection.metrics import score_files

W, H = 32, 24


def coco(num_images=3):
    """Two categories (ids 7 and 3, listed out of order), two boxes an image, one crowd box."""
    images = [{"id": 100 - i, "file_name": f"im{i}.png", "width": W, "height": H} for i in range(num_images)]
    anns = []
    for im in images:
        for cat, box in [(7, [2, 4, 12, 8]), (3, [16, 10, 14, 12])]:
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    anns[1]["iscrowd"] = 1
    return {"images": images, "annotations": anns,
            "categories": [{"id": 7, "name": "disc"}, {"id": 3, "name": "square"}]}


def write_dataset(root, raw=None, split="train"):
    raw = coco() if raw is None else raw
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for i, im in enumerate(raw["images"]):
        pixels = np.full((H, W, 3), 40 * i, np.uint8)
        Image.fromarray(pixels).save(root / "images" / split / im["file_name"])
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(raw))
    return str(path)


def config(root, **data):
    return Config(data=DataConfig(root=str(root), image_size=16, **data))


def test_targets_categories_crowd_and_limits(tmp_path):
    write_dataset(tmp_path)
    task = make_task(config(tmp_path, max_train_images=2))
    assert [c["id"] for c in task.state["categories"]] == [3, 7]  # contiguous indices sorted by id
    assert task.state["class_counts"] == [2, 2]  # the first 2 images by id (98, 99)
    split = task.datasets()["train"]
    assert split.ids == [98, 99] and split.images.shape == (2, 3, 16, 16)
    target = split.targets[0]
    np.testing.assert_allclose(target["boxes"], [[4 / H, 2 / W, 12 / H, 14 / W], [10 / H, 16 / W, 22 / H, 30 / W]],
                               rtol=1e-6)
    assert target["classes"].tolist() == [1, 0] and (target["width"], target["height"]) == (W, H)
    full_task = make_task(config(tmp_path))
    assert full_task.state["class_counts"] == [2, 3]  # image 100's crowd box (category 3) not counted
    full = full_task.datasets()["train"]
    crowd = full.targets[full.ids.index(100)]
    assert crowd["classes"].tolist() == [1] and len(crowd["annotations"]) == 2  # crowd kept for metrics


def mutate(key, fn):
    def apply(raw):
        fn(raw[key] if key else raw)
        return raw
    return apply


BAD_JSON = [
    ("missing key", mutate("annotations", lambda a: a[0].pop("bbox")), "annotation 1: missing or invalid 'bbox'"),
    ("wrong type", mutate("images", lambda ims: ims[0].update(width="32")), "image 100: missing or invalid 'width'"),
    ("not a list", mutate(None, lambda r: r.update(images={})), "'images' must be a list"),
    ("negative size", mutate("annotations", lambda a: a[2].update(bbox=[2, 4, -3, 8])), "annotation 3"),
    ("zero size", mutate("annotations", lambda a: a[2].update(bbox=[2, 4, 3, 0])), "no size"),
    ("nan size", mutate("annotations", lambda a: a[2].update(bbox=[2, 4, math.nan, 8])), "annotation 3"),
    ("outside", mutate("annotations", lambda a: a[2].update(bbox=[20, 4, 15, 8])), "outside the 32x24 image"),
    ("unknown category", mutate("annotations", lambda a: a[0].update(category_id=99)), "unknown category_id 99"),
    ("unknown image", mutate("annotations", lambda a: a[0].update(image_id=5)), "unknown image_id 5"),
    ("duplicate image", mutate("images", lambda ims: ims[1].update(id=100)), "duplicate image id 100"),
    ("empty split", mutate(None, lambda r: r.update(images=[], annotations=[])), "no images"),
]


@pytest.mark.parametrize("name, change, needle", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_malformed_annotations_raise_one_line(tmp_path, name, change, needle):
    path = write_dataset(tmp_path)
    with open(path) as f:
        raw = json.load(f)
    with open(path, "w") as f:
        json.dump(change(raw), f)
    with pytest.raises(DataError) as err:
        make_task(config(tmp_path)).datasets()["train"]
    msg = str(err.value)
    assert path in msg and needle in msg and "\n" not in msg


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        make_task(config(tmp_path))
    path = write_dataset(tmp_path)
    text = open(path).read()
    open(path, "w").write(text[: len(text) // 2])
    with pytest.raises(DataError, match="malformed or truncated JSON") as err:
        make_task(config(tmp_path))
    assert path in str(err.value)


@pytest.mark.parametrize("file_name", ["../../escape.png", "/etc/hostname"])
def test_file_name_escaping_the_image_folder(tmp_path, file_name):
    raw = coco()
    path = write_dataset(tmp_path, raw)
    raw["images"][1]["file_name"] = file_name
    open(path, "w").write(json.dumps(raw))
    with pytest.raises(DataError, match="escapes the image folder") as err:
        make_task(config(tmp_path)).datasets()["train"]
    assert path in str(err.value) and "image 99" in str(err.value)


def test_missing_and_corrupt_images(tmp_path):
    write_dataset(tmp_path)
    image = tmp_path / "images" / "train" / "im1.png"
    image.write_bytes(b"not a png")
    with pytest.raises(DataError, match="corrupt") as err:
        make_task(config(tmp_path)).datasets()["train"]
    assert str(image) in str(err.value) and "\n" not in str(err.value)
    split = make_task(config(tmp_path, skip_corrupt=True)).datasets()["train"]
    assert split.skipped == 1 and 99 not in split.ids and len(split) == 2
    os.remove(image)
    with pytest.raises(DataError, match="image not found") as err:
        make_task(config(tmp_path)).datasets()["train"]
    assert str(image) in str(err.value)


def predictions(split):
    """Outputs from the targets with one box dropped and one false positive added: mAP in (0, 1)."""
    outputs = []
    for i, t in enumerate(split.targets):
        boxes, classes = t["boxes"], t["classes"]
        if i == 0:
            boxes, classes = boxes[:1], classes[:1]
        if i == 1:
            boxes = np.concatenate([boxes, [[0.5, 0.0, 0.9, 0.4]]]).astype(np.float32)
            classes = np.concatenate([classes, [0]])
        scores = np.linspace(0.9, 0.5, len(classes)).astype(np.float32)
        outputs.append({"boxes": boxes, "classes": classes, "scores": scores})
    return outputs


def test_metrics_equal_score_files_on_written_predictions(tmp_path):
    train_path = write_dataset(tmp_path)
    val_path = write_dataset(tmp_path, split="val")
    task = make_task(config(tmp_path))
    val = task.datasets()["val"]
    outputs = predictions(val)
    in_memory = task.metrics(outputs, val.targets, val.ids)
    assert 0.3 < in_memory["map"] < 1.0
    perfect = [{"boxes": t["boxes"], "classes": t["classes"], "scores": np.ones(len(t["classes"]))}
               for t in val.targets]
    assert task.metrics(perfect, val.targets, val.ids)["map"] == pytest.approx(1.0)
    out_dir = tmp_path / "eval"
    task.write_predictions(outputs, val.targets, val.ids, str(out_dir))
    assert score_files(str(out_dir / "detections.json"), val_path) == pytest.approx(in_memory, abs=1e-9)
    written = json.loads((out_dir / "detections.json").read_text())
    assert written[0]["category_id"] in (3, 7) and written[0]["image_id"] == val.ids[0]
    # `predict` on a user's image: a task rebuilt from its state alone, sizes from the original image.
    os.remove(train_path)
    again = make_task(config(tmp_path), state=task.state)
    target = again.target_for_image(np.zeros((30, 40, 3), np.uint8))
    box = {"boxes": np.array([[0.5, 0.25, 1.0, 0.75]], np.float32), "classes": np.array([1]), "scores": np.ones(1)}
    again.write_predictions([box], [target], ["photo"], str(tmp_path / "predict"))
    assert json.loads((tmp_path / "predict" / "detections.json").read_text()) == [
        {"image_id": "photo", "category_id": 7, "bbox": [10.0, 15.0, 20.0, 15.0], "score": 1.0}]


def test_metrics_rank_the_same_boxes_by_each_score_and_by_an_oracle(tmp_path):
    """A false positive scored highest by one score and lowest by the other: each map_by_* equals the
    mAP of the boxes ranked by that score, and the oracle (IoU with the matched truth) ranks it last."""
    write_dataset(tmp_path)
    write_dataset(tmp_path, split="val")
    task = make_task(config(tmp_path))
    val = task.datasets()["val"]
    outputs = []
    for o in predictions(val):
        k = len(o["classes"])
        high_last = np.linspace(0.5, 0.9, k).astype(np.float32)  # the appended false positive ranks first
        outputs.append({**o, "score_prob": high_last, "score_iou": o["scores"]})
    m = task.metrics(outputs, val.targets, val.ids)
    alone = {name: task.metrics([{"boxes": o["boxes"], "classes": o["classes"], "scores": o[key]} for o in outputs],
                                val.targets, val.ids)["map"] for name, key in (("token_prob", "score_prob"),
                                                                             ("expected_iou", "score_iou"))}
    assert m["map_by_token_prob"] == pytest.approx(alone["token_prob"], abs=1e-12)
    assert m["map_by_expected_iou"] == pytest.approx(alone["expected_iou"], abs=1e-12)
    assert alone["token_prob"] < alone["expected_iou"] <= m["map_by_oracle_iou"]
    assert "map_by_oracle_iou" not in task.metrics(predictions(val), val.targets, val.ids)  # scores only

def test_task_fields_rewards_and_visualize(tmp_path):
    write_dataset(tmp_path)
    task = make_task(config(tmp_path))
    assert task.primary_metric == "map" and task.codec.vocab_size == 64 + 2 + 4
    split = task.datasets()["train"]
    outputs = [task.codec.decode(task.codec.encode(t, np.random.default_rng(0))) for t in split.targets]
    r, parts = task.rewards["map"](outputs, split.targets)
    assert r.shape == (len(split),) and float(r.min()) > 0 and "duplicates" in parts
    assert task.rewards["recall"](outputs, split.targets)[0].tolist() == [1.0] * len(split)
    assert set(task.sample_stats(outputs, split.targets)) == {"boxes_per_image", "duplicates_per_image",
                                                              "precision50", "recall50"}
    picture = task.visualize(split.rgb(0), outputs[0], split.targets[0])
    assert picture.dtype == np.uint8 and picture.shape == (256, 256, 3)
    assert (picture != np.kron(split.rgb(0), np.ones((16, 16, 1), np.uint8))).any()  # boxes were drawn


def test_options_and_score_mode(tmp_path):
    write_dataset(tmp_path)
    state = make_task(config(tmp_path)).state
    with pytest.raises(ConfigError, match="task_options.colour"):
        make_task(Config(task_options={"colour": 1}), state)
    with pytest.raises(ConfigError, match="task_options.bins"):
        make_task(Config(task_options={"bins": 1}), state)
    with pytest.raises(ConfigError, match="task_options.box_order"):
        make_task(Config(task_options={"box_order": "sorted"}), state)
    assert make_task(Config(), state).codec.score == "token_prob"
    tuned = make_task(Config(train=TrainConfig(stage="reward")), state)
    assert tuned.codec.score == "expected_iou" and tuned.aux_loss is not None
    off = make_task(Config(train=TrainConfig(stage="reward"), task_options={"aux_weight": 0}), state)
    assert off.codec.score == "token_prob" and off.aux_loss is None
    assert make_task(Config(), state).mle_loss is None  # the paper's MLE targets by default
    assert make_task(Config(task_options={"mle_conf": "self_iou"}), state).mle_loss is not None
    with pytest.raises(ConfigError, match="task_options.mle_conf"):
        make_task(Config(task_options={"mle_conf": "iou"}), state)
