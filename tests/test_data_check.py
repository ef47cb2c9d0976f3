"""`rewardtune data check` on small hand-made COCO folders: a clean one passes (exit 0), and each
fault (missing or unreadable image, image of another size, annotation of an unknown image or
category, box outside its image, empty category, caption faults) is listed and ends with exit 2
and one summary line."""
import json

import numpy as np
import pytest
from PIL import Image
from test_detection_data import coco, write_dataset

from rewardtune.cli import main


def check(capsys, root, *args):
    code = main(["data", "check", "--root", str(root), *args])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def edit(path, change):
    with open(path) as f:
        raw = json.load(f)
    change(raw)
    with open(path, "w") as f:
        json.dump(raw, f)


def test_a_clean_folder_passes(tmp_path, capsys):
    write_dataset(tmp_path, split="train")
    write_dataset(tmp_path, split="val")
    code, out, err = check(capsys, tmp_path, "--task", "detection", "--workers", "2")
    assert code == 0 and err == []
    assert "train: " in out and "3 images, 6 annotations, 2 categories" in out and "val: " in out
    assert out.strip().endswith("no problems found in train, val")


def unreadable(root):
    (root / "images" / "train" / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def other_size(root):
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "images" / "train" / "im2.png")


def annotations(change):
    return lambda root: edit(root / "annotations" / "instances_train.json", change)


FAULTS = [
    ("missing image", lambda root: (root / "images" / "train" / "im0.png").unlink(), "im0.png (image 100)"),
    ("unreadable image", unreadable, "im1.png: corrupt or unreadable image"),
    ("image size differs from the annotation file", other_size, "im2.png: 10x10, the file says 32x24"),
    ("annotation of an unknown image", annotations(lambda r: r["annotations"][0].update(image_id=5)),
     "annotation 1: image_id 5"),
    ("annotation of an unknown category", annotations(lambda r: r["annotations"][2].update(category_id=99)),
     "annotation 3: category_id 99"),
    ("box outside its image", annotations(lambda r: r["annotations"][2].update(bbox=[20, 4, 15, 8])),
     "box [20, 4, 15, 8] lies outside the 32x24 image"),
    ("malformed box", annotations(lambda r: r["annotations"][2].update(bbox=[2, 4, 3, 0])), "has no size"),
    ("empty category", annotations(lambda r: r["categories"].append({"id": 9, "name": "ghost"})),
     "category 9 ('ghost') has no annotations"),
]


@pytest.mark.parametrize("kind, make_fault, line", FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_is_listed_and_exits_2_with_one_line(tmp_path, capsys, kind, make_fault, line):
    write_dataset(tmp_path, split="train")
    make_fault(tmp_path)
    code, out, err = check(capsys, tmp_path, "--task", "detection", "--split", "train")
    assert code == 2
    assert f"  {kind} (1):" in out and line in out
    assert len(err) == 1 and err[0] == f"rewardtune: error: {tmp_path}: 1 problem(s) (train: 1 x {kind})"


def test_many_faults_are_counted_and_a_few_shown(tmp_path, capsys):
    raw = coco(num_images=6)
    write_dataset(tmp_path, raw, split="val")
    for i in range(6):
        (tmp_path / "images" / "val" / f"im{i}.png").unlink()
    edit(tmp_path / "annotations" / "instances_val.json", lambda r: r["annotations"][0].update(category_id=99))
    code, out, err = check(capsys, tmp_path, "--task", "detection")
    assert code == 2 and "  missing image (6):" in out and "    ... and 1 more" in out
    assert err == [f"rewardtune: error: {tmp_path}: 7 problem(s) (val: 1 x annotation of an unknown category, "
                   "6 x missing image)"]


def test_captions_faults(tmp_path, capsys):
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "annotations").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "images" / "val" / name)
    raw = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}, {"id": 2, "file_name": "b.png"}],
           "annotations": [{"image_id": 1, "caption": "a dot"}, {"image_id": 7, "caption": "lost"},
                           {"image_id": 2, "caption": "  "}]}
    (tmp_path / "annotations" / "captions_val.json").write_text(json.dumps(raw))
    code, out, err = check(capsys, tmp_path, "--task", "captioning")
    assert code == 2 and "val: " in out and "2 images, 3 captions" in out
    for line in ("a caption of image id 7", "image id 2: caption '  '", "captions_val.json: image id 2"):
        assert line in out
    assert err == [f"rewardtune: error: {tmp_path}: 3 problem(s) (val: 1 x caption of an unknown image, "
                   "1 x empty caption, 1 x image without captions)"]


@pytest.mark.parametrize("args, message", [
    (["--task", "detection"], "no detection annotation files in"),
    (["--task", "colorization"], "task 'colorization' offers no data check"),
])
def test_nothing_to_check_is_one_line(tmp_path, capsys, args, message):
    code, out, err = check(capsys, tmp_path, *args)
    assert code == 2 and len(err) == 1 and message in err[0]
    code, out, err = check(capsys, tmp_path / "absent", "--task", "detection")
    assert code == 2 and err == [f"rewardtune: error: {tmp_path / 'absent'}: dataset folder not found"]
