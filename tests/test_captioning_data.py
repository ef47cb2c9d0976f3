"""Caption files: COCO captions and Karpathy loaders, captions.json scoring, one-line DataErrors."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from rewardtune import config as config_mod
from rewardtune.errors import DataError
from rewardtune.tasks.captioning.data import load_split, split_records
from rewardtune.tasks.captioning.metrics import caption_metrics, score_files, write_predictions

CAPTIONS = {
    1: ["A red circle.", "One red circle on gray.", "a circle that is red"],
    2: ["Two blue squares.", "Blue squares, two of them.", "two squares"],
    3: ["A green star above a red circle.", "A star and a circle.", "green star, red circle"],
}


def make_dataset(root, split="train", captions=CAPTIONS, size=8):
    """ROOT/images/<split>/<id>.png and ROOT/annotations/captions_<split>.json (COCO captions)."""
    os.makedirs(os.path.join(root, "images", split), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, refs in captions.items():
        name = f"{image_id:06d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            os.path.join(root, "images", split, name))
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        annotations += [{"id": len(annotations) + 1, "image_id": image_id, "caption": c} for c in refs]
    data = {"images": images, "annotations": annotations}
    path = os.path.join(root, "annotations", f"captions_{split}.json")
    write(path, data)
    return path, data


def write(path, data):
    with open(path, "w") as f:
        json.dump(data, f)


def make_config(root, **data):
    return config_mod.from_dict({"task": "captioning", "model": {"patch_size": 8},
                                 "data": {"root": str(root), "image_size": 8, "val_split": "train", **data}})


def one_line_error(call, *names):
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message, message
    return message


def test_loads_coco_captions(tmp_path):
    make_dataset(tmp_path)
    records = split_records(make_config(tmp_path), "train")
    split = load_split(records, 8)
    assert split.ids == [1, 2, 3] and len(split) == 3
    assert split.targets[1] == {"refs": CAPTIONS[2]}
    assert split[0].image.shape == (3, 8, 8)
    assert [r.id for r in split_records(make_config(tmp_path, max_train_images=2), "train")] == [1, 2]


def test_coco_file_errors(tmp_path):
    path, data = make_dataset(tmp_path)
    cfg = make_config(tmp_path)
    load = lambda: split_records(cfg, "train")  # noqa: E731

    bad = json.loads(json.dumps(data))
    bad["annotations"][0]["image_id"] = 99
    write(path, bad)
    one_line_error(load, path, "image id 99")

    bad = json.loads(json.dumps(data))
    bad["annotations"] = [a for a in bad["annotations"] if a["image_id"] != 2]
    write(path, bad)
    assert "empty caption list" in one_line_error(load, path, "image id 2")

    bad = json.loads(json.dumps(data))
    bad["annotations"][4]["caption"] = ["not", "a", "string"]
    write(path, bad)
    assert "not a string" in one_line_error(load, path, "image id 2")

    bad = json.loads(json.dumps(data))
    bad["images"][2]["file_name"] = "../../outside.png"
    write(path, bad)
    one_line_error(load, path, "image id 3", "outside.png")

    with open(path, "w") as f:
        f.write(json.dumps(data)[:-20])
    one_line_error(load, path, "truncated")

    os.remove(path)
    one_line_error(load, path, "not found")

    write(path, {"images": [], "annotations": []})
    one_line_error(load, path, "no images")


def test_missing_and_corrupt_images(tmp_path):
    make_dataset(tmp_path)
    records = split_records(make_config(tmp_path), "train")
    missing = os.path.join(tmp_path, "images", "train", "000002.png")
    os.remove(missing)
    one_line_error(lambda: load_split(records, 8), missing, "not found")
    with open(missing, "wb") as f:
        f.write(b"not a png")
    one_line_error(lambda: load_split(records, 8), missing, "corrupt")
    split = load_split(records, 8, skip_corrupt=True)
    assert split.ids == [1, 3] and split.skipped == 1


def test_karpathy_split_file(tmp_path):
    make_dataset(tmp_path)
    entries = [{"filepath": "images/train", "filename": f"{i:06d}.png", "cocoid": i,
                "split": split, "sentences": [{"raw": c, "tokens": c.lower().split()} for c in CAPTIONS[i]]}
               for i, split in [(1, "train"), (2, "restval"), (3, "val")]]
    path = os.path.join(tmp_path, "dataset_coco.json")
    write(path, {"images": entries, "dataset": "coco"})
    cfg = make_config(tmp_path, val_split="val")
    train = load_split(split_records(cfg, "train", path), 8)
    assert train.ids == [1, 2] and train.targets[0]["refs"] == CAPTIONS[1]
    assert [r.id for r in split_records(cfg, "val", path)] == [3]
    entries[1]["sentences"] = []
    write(path, {"images": entries})
    one_line_error(lambda: split_records(cfg, "train", path), path, "image id 2", "empty caption list")


def test_score_files_and_write_predictions(tmp_path):
    gt_path, data = make_dataset(tmp_path)
    preds = ["a red circle", "two blue squares", "a star"]
    pred_path = write_predictions(preds, [1, 2, 3], str(tmp_path / "eval"))
    assert pred_path.endswith("captions.json")
    assert json.load(open(pred_path)) == [{"image_id": i, "caption": c} for i, c in zip([1, 2, 3], preds)]
    metrics = score_files(pred_path, gt_path)
    assert metrics == {**caption_metrics(preds, [CAPTIONS[i] for i in (1, 2, 3)]), "num_images": 3}
    assert set(metrics) >= {"cider", "bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "mean_length"}
    # Only the predicted images are scored (as COCOEvalCap does).
    write(pred_path, [{"image_id": 1, "caption": "a red circle"}])
    assert score_files(pred_path, gt_path)["num_images"] == 1


def test_score_files_errors(tmp_path):
    gt_path, data = make_dataset(tmp_path)
    pred_path = str(tmp_path / "captions.json")
    write(pred_path, [{"image_id": 7, "caption": "a dog"}])
    one_line_error(lambda: score_files(pred_path, gt_path), pred_path, "image id 7")
    write(pred_path, [{"image_id": 1, "caption": None}])
    one_line_error(lambda: score_files(pred_path, gt_path), pred_path, "image id 1", "not a string")
    with open(pred_path, "w") as f:
        f.write('[{"image_id": 1, "caption": "a')
    one_line_error(lambda: score_files(pred_path, gt_path), pred_path, "truncated")
    write(pred_path, [{"image_id": 1, "caption": "a red circle"}])
    bad = json.loads(json.dumps(data))
    bad["annotations"] = [a for a in bad["annotations"] if a["image_id"] != 3]
    write(gt_path, bad)
    one_line_error(lambda: score_files(pred_path, gt_path), gt_path, "image id 3", "empty caption list")
    bad["annotations"].append({"id": 99, "image_id": 3, "caption": 5})
    write(gt_path, bad)
    one_line_error(lambda: score_files(pred_path, gt_path), gt_path, "image id 3", "not a string")
