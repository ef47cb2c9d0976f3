"""The kinds of panoptic thing error (rewardtune/tasks/panoptic/errors.py) on hand-made maps, and the
script that prints them from written files."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from rewardtune.tasks.panoptic.errors import thing_errors, thing_kinds
from rewardtune.tasks.panoptic.maps import id_to_rgb
from rewardtune.tasks.panoptic.pq import pq_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISTHING = {1: True, 2: True, 9: False}  # circle, hexagon, grass
NAMES = [{"id": 1, "name": "circle", "isthing": 1}, {"id": 2, "name": "hexagon", "isthing": 1},
         {"id": 9, "name": "grass", "isthing": 0}]


def panoptic(ids, categories):
    return {"map": ids, "segments": [{"id": i, "category_id": c, "iscrowd": 0} for i, c in categories.items()]}


def scene():
    """Ground truth on 20 x 20 grass (id 9): five circles and a hexagon, each a block of 16 pixels or more."""
    gt = np.full((20, 20), 9, np.int32)
    gt[0:4, 0:4] = 1  # kept
    gt[0:4, 6:10] = 2  # a hexagon called a circle
    gt[6:10, 0:4] = 3  # merged with the next one ...
    gt[6:10, 4:6] = 4  # ... (8 pixels beside it)
    gt[12:20, 0:8] = 5  # split in two
    gt[14:18, 12:16] = 6  # missed
    cats = {1: 1, 2: 2, 3: 1, 4: 1, 5: 1, 6: 1, 9: 9}
    pred = np.full((20, 20), 90, np.int32)
    pred[0:4, 0:4] = 10
    pred[0:4, 6:10] = 11
    pred[6:10, 0:6] = 12  # 3 and 4 as one circle
    pred[12:16, 0:8] = 13  # the top half of 5 ...
    pred[16:20, 0:8] = 14  # ... and its bottom half
    pred[2:6, 14:18] = 15  # a circle on grass
    pred_cats = {10: 1, 11: 1, 12: 1, 13: 1, 14: 1, 15: 1, 90: 9}
    return panoptic(pred, pred_cats), panoptic(gt, cats)


def test_each_thing_gets_its_kind():
    pred, gt = scene()
    e = thing_errors([pred], [gt], ISTHING)
    # 3 is 16 of the merged 24 pixels: IoU 2/3 > 0.5 -> matched; 4 (IoU 8/24) is covered whole -> merged
    assert dict(e.kinds) == {"matched": 2, "wrong_class": 1, "merged": 1, "fragmented": 1, "missed": 1}
    assert e.by_category[2] == {"wrong_class": 1}
    assert e.by_category[1] == {"matched": 2, "merged": 1, "fragmented": 1, "missed": 1}
    assert dict(e.confusions) == {(2, 1): 1}
    # false-positive circles: 11 (on the hexagon, not spurious), 13 and 14 (halves of 5: IoU 0.5 each,
    # on a thing), 15 (on grass: spurious)
    assert e.spurious == 1
    assert e.total == 6


def test_kinds_by_segment_id():
    pred, gt = scene()
    assert thing_kinds([pred, gt], [gt, gt], ISTHING) == [
        {1: "matched", 2: "wrong_class", 3: "matched", 4: "merged", 5: "fragmented", 6: "missed"},
        {k: "matched" for k in range(1, 7)}]


def test_matched_is_the_true_positives_of_pq():
    pred, gt = scene()
    s = pq_stats([pred], [gt])
    things = [c in (1, 2) for c in s.categories.tolist()]
    e = thing_errors([pred], [gt], ISTHING)
    assert e.kinds["matched"] == int(s.tp[0][things].sum())
    assert e.kinds["matched"] + sum(e.kinds[k] for k in ("wrong_class", "merged", "fragmented", "missed")) \
        == int((s.tp[0] + s.fn[0])[things].sum())


def test_a_perfect_prediction_has_only_matches_and_crowds_are_not_counted():
    _, gt = scene()
    gt["segments"].append({"id": 7, "category_id": 1, "iscrowd": 1})
    gt["map"][18:20, 18:20] = 7
    e = thing_errors([gt], [gt], ISTHING)
    assert dict(e.kinds) == {"matched": 6} and e.spurious == 0 and not e.confusions


def write(root, name, maps, with_categories):
    png_dir = os.path.join(root, name)
    os.makedirs(png_dir)
    anns = []
    for k, p in enumerate(maps):
        Image.fromarray(id_to_rgb(p["map"])).save(os.path.join(png_dir, f"{k}.png"))
        anns.append({"image_id": k, "file_name": f"{k}.png", "segments_info": p["segments"]})
    raw = {"annotations": anns, **({"categories": NAMES, "images": [{"id": k, "file_name": f"{k}.jpg"}
                                                                     for k in range(len(maps))]}
                                    if with_categories else {})}
    path = png_dir + ".json"
    json.dump(raw, open(path, "w"))
    return path


def test_script_prints_the_kinds_from_written_files_and_names_a_bad_file(tmp_path):
    pred, gt = scene()
    gt_json = write(str(tmp_path), "gt", [gt, gt], True)
    pred_json = write(str(tmp_path), "pred", [pred, gt], False)
    script = os.path.join(ROOT, "benchmarks", "panoptic_errors.py")
    proc = subprocess.run([sys.executable, script, "--gt-json", gt_json, pred_json], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith(f"| {pred_json}"))
    # two images: the scene's six things, then six matched
    assert "| 8 (66.7%) | 1 (8.3%) | 1 (8.3%) | 1 (8.3%) | 1 (8.3%) | 1 | 12 |" in row
    assert "hexagon as circle 1" in proc.stdout
    os.remove(os.path.join(str(tmp_path), "pred", "1.png"))
    bad = subprocess.run([sys.executable, script, "--gt-json", gt_json, pred_json], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "1.png" in bad.stderr.strip().splitlines()[-1]
