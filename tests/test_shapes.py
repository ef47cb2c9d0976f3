"""The shapes world: determinism, COCO files that agree with each other and with the pixels."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rewardtune.data.shape_masks import morph_mask, shape_mask
from rewardtune.data.shapes import generate_shapes
from rewardtune.data.shapes_scene import (COLOURS, CONFUSABLE, KINDS, LEVELS, STUFF, WorldLevel, _place,
                                          kind_frequencies, look_range, make_scene, object_mask)
from rewardtune.data.shapes_captions import counted, describe, join, number, position, relation
from rewardtune.errors import ConfigError

SPLITS = ("train", "val", "test")
# pycocotools' mask.decode trips a numpy 2 DeprecationWarning inside pycocotools itself.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module", params=["crowded", "misaligned"])
def world(tmp_path_factory, request):
    """A small dataset of each level whose files are checked: occluding shapes, and morphed paired kinds."""
    out = str(tmp_path_factory.mktemp(request.param))
    summary = generate_shapes(out, num_train=20, num_val=5, num_test=5, image_size=64, seed=3,
                              level=request.param)
    return out, summary


def load(out, name, split):
    with open(os.path.join(out, "annotations", f"{name}_{split}.json")) as f:
        return json.load(f)


def panoptic_ids(out, split, file_name) -> np.ndarray:
    rgb = np.asarray(Image.open(os.path.join(out, "annotations", f"panoptic_{split}", file_name)), np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 ** 2 * rgb[..., 2]


def tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def all_files(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def test_same_arguments_give_byte_identical_files(tmp_path):
    args = dict(num_train=6, num_val=3, num_test=3, image_size=64, seed=7, level="medium")
    generate_shapes(str(tmp_path / "a"), **args)
    generate_shapes(str(tmp_path / "b"), **args)
    generate_shapes(str(tmp_path / "c"), **{**args, "seed": 8})
    a, b, c = (all_files(str(tmp_path / d)) for d in "abc")
    assert len(a) == 12 + 12 + 9 + 1  # images, panoptic PNGs, 3 JSON files per split, world.json
    assert a == b
    assert a["images/train/000000000001.png"] != c["images/train/000000000001.png"]


def test_layout_ids_and_images(world):
    out, summary = world
    ids = []
    for split, n in zip(SPLITS, (20, 5, 5)):
        images = load(out, "instances", split)["images"]
        assert len(images) == n == summary["splits"][split]["images"]
        for im in images:
            assert im["file_name"] == f"{im['id']:012d}.png"
            with Image.open(os.path.join(out, "images", split, im["file_name"])) as pil:
                assert pil.mode == "RGB" and pil.size == (im["width"], im["height"]) == (64, 64)
        ids += [im["id"] for im in images]
    assert len(set(ids)) == len(ids)  # unique across splits
    with open(os.path.join(out, "world.json")) as f:
        world = json.load(f)
    assert world["params"] == dataclasses.asdict(LEVELS[summary["level"]])
    assert (world["seed"], world["image_size"]) == (3, 64)


def test_instance_boxes_and_masks_match_panoptic_pixels(world):
    out, _ = world
    for split in SPLITS:
        instances, panoptic = load(out, "instances", split), load(out, "panoptic", split)
        by_image = {p["image_id"]: p for p in panoptic["annotations"]}
        files = {im["id"]: im["file_name"] for im in instances["images"]}
        for ann in instances["annotations"]:
            ids = panoptic_ids(out, split, by_image[ann["image_id"]]["file_name"])
            assert files[ann["image_id"]] == by_image[ann["image_id"]]["file_name"]
            mask = ids == ann["id"] - 100 * ann["image_id"]  # thing segment j <-> annotation id*100+j
            assert ann["bbox"] == tight_box(mask)
            assert ann["area"] == mask.sum() > 0
            assert ann["iscrowd"] == 0
            assert (mask_utils.decode(ann["segmentation"]) == mask).all()
            info = {s["id"]: s for s in by_image[ann["image_id"]]["segments_info"]}
            segment = info[ann["id"] - 100 * ann["image_id"]]
            assert (segment["category_id"], segment["bbox"], segment["area"]) == \
                (ann["category_id"], ann["bbox"], ann["area"])


def test_panoptic_segments_cover_the_png_exactly(world):
    out, _ = world
    for split in SPLITS:
        panoptic = load(out, "panoptic", split)
        cats = {c["id"]: c for c in panoptic["categories"]}
        assert [c["name"] for c in cats.values() if c["isthing"]] == KINDS
        assert [c["name"] for c in cats.values() if not c["isthing"]] == list(STUFF)
        for ann in panoptic["annotations"]:
            ids = panoptic_ids(out, split, ann["file_name"])
            info = {s["id"]: s for s in ann["segments_info"]}
            assert len(info) == len(ann["segments_info"])  # unique per image
            assert set(np.unique(ids)) == set(info) and 0 not in info  # no void, no unknown ids
            stuff = [s for s in info.values() if not cats[s["category_id"]]["isthing"]]
            assert len({s["category_id"] for s in stuff}) == len(stuff) >= 1
            for s in info.values():
                assert s["bbox"] == tight_box(ids == s["id"]) and s["area"] == (ids == s["id"]).sum()


def test_object_counts_respect_each_level():
    for name, level in LEVELS.items():
        size = 96 if name == "dense" else 64
        counts = [len(make_scene(np.random.default_rng([0, 0, i]), level, size)["things"]) for i in range(25)]
        assert level.min_objects <= min(counts) and max(counts) <= level.max_objects, name
        assert max(counts) > min(counts), name  # the count varies


def test_faint_shapes_are_blended_into_the_background():
    """faint=1 at opacity 0.2 on a flat background: every shape pixel lies 80 % of the way from its solid
    colour to the background; faint=0 (every other level) paints the solid colour."""
    flat = WorldLevel(1, 1, 16, 16, num_regions=1, texture=0.0)
    for faint, share in [(1.0, 0.2), (0.0, 1.0)]:
        level = dataclasses.replace(flat, faint=faint, faint_min=0.2, faint_max=0.2)
        for i in range(5):
            scene = make_scene(np.random.default_rng([3, 0, i]), level, 64)
            image, segments = scene["image"].astype(float), scene["segments"]
            background = image[segments > 1000].mean(0)
            colour = np.array(COLOURS[scene["things"][0]["colour"]], float)
            shape = image[segments == 1].mean(0)
            expected = background + share * (colour - background)  # up to the +-12 jitter and no shading
            assert np.abs(shape - expected).max() < 14, (faint, shape, expected)


def test_occlusion_never_hides_more_than_max_overlap():
    level, occluded = LEVELS["crowded"], 0
    for i in range(20):
        objects, owner = _place(np.random.default_rng([1, 0, i]), level, 64, list(COLOURS))
        visible = np.bincount(owner.ravel() + 1, minlength=len(objects) + 1)[1:]
        full = np.array([object_mask(k, look, w, h).sum() for k, _, (_, _, w, h), look in objects])
        assert (visible >= (1 - level.max_overlap) * full).all()
        occluded += (visible < full).sum()
    assert occluded > 10  # the crowded world does occlude


def test_easy_world_boxes_on_grid_apart_and_colours_unlike_background():
    for size, step in [(64, 2), (128, 4)]:
        for i in range(20):
            scene = make_scene(np.random.default_rng([2, 0, i]), LEVELS["easy"], size)
            boxes = [t["bbox"] for t in scene["things"]]
            assert all(v % step == 0 for box in boxes for v in box), boxes
            for a in boxes:
                for b in boxes:
                    if a is not b:  # at least one pixel between boxes
                        assert a[0] + a[2] < b[0] or b[0] + b[2] < a[0] or a[1] + a[3] < b[1] or b[1] + b[3] < a[1]
            like = {c for s in scene["stuff"] for c in STUFF[s["name"]].like}
            assert not like & {t["colour"] for t in scene["things"]}


def test_every_shape_touches_all_sides_of_its_box():
    for kind in KINDS:
        for w in range(3, 34):
            for h in range(max(3, int(w / 1.3)), min(34, int(w * 1.3) + 1)):
                m = shape_mask(kind, w, h)
                assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any(), (kind, w, h)
    for pair in CONFUSABLE:  # and every blend of a confusable pair
        for look in np.linspace(0, 1, 6):
            for w, h in [(3, 3), (4, 5), (10, 10), (11, 14), (28, 22), (36, 36)]:
                m = morph_mask(pair, look, w, h)
                assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any(), (pair, look, w, h)


# sha256 (first 16 hex digits) of 4 scenes' images, panoptic ids and (kind, colour, bbox) per level, drawn by
# the real generator from np.random.default_rng([5, 0, i]) on main at 03baa12, before the misaligned level
# was added: a new level's options must leave every other level's pixels and annotations as they were.
BEFORE_MISALIGNED = {"easy": "9a21d00c1ab385c9", "medium": "06e056fe3eb499d8", "crowded": "40b57c748f21d226",
                     "faint": "8f8087b05440762d", "dense": "89c1a745b4d381d7"}


def test_other_levels_draw_what_they_drew_before_the_misaligned_level():
    for name, expected in BEFORE_MISALIGNED.items():
        digest = hashlib.sha256()
        for i in range(4):
            scene = make_scene(np.random.default_rng([5, 0, i]), LEVELS[name], 96 if name == "dense" else 64)
            digest.update(scene["image"].tobytes())
            digest.update(scene["segments"].astype(np.int64).tobytes())
            digest.update(repr([(t["kind"], t["colour"], t["bbox"]) for t in scene["things"]]).encode())
            assert all(t["look"] is None for t in scene["things"])
        assert digest.hexdigest()[:16] == expected, name


def misaligned_things(n: int) -> list[dict]:
    return [t for i in range(n) for t in make_scene(np.random.default_rng([4, 0, i]), LEVELS["misaligned"], 64)["things"]]


def test_misaligned_kinds_follow_a_20_to_1_long_tail():
    level = LEVELS["misaligned"]
    p = kind_frequencies(level)
    assert np.isclose(p[0] / p[-1], 20) and np.allclose(p[:-1] / p[1:], 20 ** (1 / 6)) and np.isclose(p.sum(), 1)
    assert np.allclose(kind_frequencies(LEVELS["medium"]), 1 / len(KINDS))
    things = misaligned_things(400)
    counts = np.array([sum(t["kind"] == k for t in things) for k in KINDS])
    expected = len(things) * p
    assert len(things) > 1000
    assert (np.abs(counts - expected) < 4 * np.sqrt(expected * (1 - p)) + 2).all(), (counts, expected.round())
    assert counts[0] > 10 * counts[-1] > 0  # circles vs hexagons: 20:1 expected, ~26 hexagons here


def test_confusable_pairs_differ_only_by_their_look():
    """Each paired kind's look is drawn in its range; half of each kind's shapes fall in the band both kinds
    of the pair draw from, where a shape of either kind is drawn with the same pixels."""
    level, things = LEVELS["misaligned"], misaligned_things(400)
    a = 1 / (2 - level.confusion)
    for first, second in CONFUSABLE:
        assert look_range(level, first) == (0.0, a) and look_range(level, second) == (1 - a, 1.0)
        for kind in (first, second):
            low, high = look_range(level, kind)
            looks = np.array([t["look"] for t in things if t["kind"] == kind])
            assert len(looks) >= 20 and ((low <= looks) & (looks <= high)).all(), kind
            in_band = ((1 - a <= looks) & (looks <= a)).mean()
            sd = np.sqrt(level.confusion * (1 - level.confusion) / len(looks))
            assert abs(in_band - level.confusion) < 4 * sd, (kind, in_band, len(looks))
        for look in np.linspace(1 - a, a, 5):  # in the band, the class is not in the pixels
            assert (object_mask(KINDS.index(first), look, 13, 11) == object_mask(KINDS.index(second), look, 13, 11)).all()
        for look, kind in [(0.0, first), (1.0, second)]:  # the band's ends are the two kinds themselves
            m, own = morph_mask((first, second), look, 20, 20), shape_mask(kind, 20, 20)
            assert (m & own).sum() / (m | own).sum() > 0.9, kind
        ends = morph_mask((first, second), 0.0, 20, 20) ^ morph_mask((first, second), 1.0, 20, 20)
        assert ends.sum() >= 20  # ... which differ visibly at 20 px
    unpaired = {t["kind"] for t in things if t["look"] is None}
    assert unpaired == set(KINDS) - {k for pair in CONFUSABLE for k in pair}


def test_pycocotools_loads_and_ground_truth_scores_ap_one(world):
    out, summary = world
    coco = COCO(os.path.join(out, "annotations", "instances_train.json"))
    assert sorted(coco.getCatIds()) == list(range(1, len(KINDS) + 1))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= 20 * LEVELS[summary["level"]].min_objects
    dets = coco.loadRes([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                          "score": 1.0} for a in anns])
    ev = COCOeval(coco, dets, "bbox")
    ev.params.areaRng = [[0, 1e5]] * 4  # small shapes: one area range is enough
    ev.evaluate()
    ev.accumulate()
    assert np.isclose(ev.eval["precision"][0, :, :, 0, -1].mean(), 1.0)  # AP@0.5 over classes


def test_captions_five_per_image_and_count_right(world):
    out, _ = world
    captions, instances = load(out, "captions", "train"), load(out, "instances", "train")
    n_objects = {im["id"]: 0 for im in instances["images"]}
    for ann in instances["annotations"]:
        n_objects[ann["image_id"]] += 1
    texts = {}
    for ann in captions["annotations"]:
        texts.setdefault(ann["image_id"], []).append(ann["caption"])
    assert set(texts) == set(n_objects)
    for image_id, caps in texts.items():
        assert len(caps) >= 5 and len(set(caps)) == len(caps) and all(caps)
        n = n_objects[image_id]
        count = "there is one shape" if n == 1 else f"there are {number(n)} shapes"
        assert any(count in c for c in caps)
    assert len({c["id"] for c in captions["annotations"]}) == len(captions["annotations"])
    coco = COCO(os.path.join(out, "annotations", "captions_train.json"))  # as captioning loaders read it
    assert all(len(coco.imgToAnns[i]) == 5 for i in n_objects)


def test_caption_grammar_helpers():
    assert counted(1, "orange star") == "an orange star"
    assert counted(3, "red cross") == "three red crosses"
    assert join(["a", "b", "c"]) == "a, b and c"
    assert position(2, 2, 64) == "in the top left" and position(32, 32, 64) == "in the centre"
    assert relation({"cx": 5, "cy": 30}, {"cx": 40, "cy": 32}) == "to the left of"
    assert relation({"cx": 20, "cy": 50}, {"cx": 22, "cy": 10}) == "below"
    things = [{"kind": "circle", "colour": "red", "cx": 10, "cy": 30, "area": 90},
              {"kind": "square", "colour": "blue", "cx": 50, "cy": 30, "area": 50},
              {"kind": "square", "colour": "blue", "cx": 50, "cy": 50, "area": 40}]
    caps = describe(things, [{"name": "grass", "area": 3000}], 64, np.random.default_rng(0))
    assert "two blue squares and a red circle" in caps[0] and "grass" in caps[0]
    assert "a red circle" in caps[2] and "to the left of a blue square" in caps[2]
    assert "three shapes" in caps[1] and caps[3].startswith(("two squares", "shapes: two squares",
                                                               "three shapes: two squares"))
    single = describe(things[:1], [{"name": "sand", "area": 3000}], 64, np.random.default_rng(0))
    assert "the only shape is a red circle on the left" in single
    empty = describe([], [{"name": "sand", "area": 4096}], 64, np.random.default_rng(0))
    assert len(set(empty)) == 5 and all("sand" in c for c in empty)


def test_bad_arguments_raise_config_error_naming_them(tmp_path):
    with pytest.raises(ConfigError, match="level='huge'"):
        generate_shapes(str(tmp_path), level="huge")
    with pytest.raises(ConfigError, match="num_val=-1"):
        generate_shapes(str(tmp_path), num_val=-1)
    with pytest.raises(ConfigError, match="image_size=8"):
        generate_shapes(str(tmp_path), image_size=8)
    with pytest.raises(ConfigError, match="max_objects=2"):
        WorldLevel(min_objects=5, max_objects=2, min_size=8, max_size=12)
    with pytest.raises(ConfigError, match="max_overlap"):
        dataclasses.replace(LEVELS["medium"], max_overlap=1.5)
    with pytest.raises(ConfigError, match="long_tail=0.5"):
        dataclasses.replace(LEVELS["medium"], long_tail=0.5)
    with pytest.raises(ConfigError, match="confusion=1.5"):
        dataclasses.replace(LEVELS["misaligned"], confusion=1.5)
    with pytest.raises(ConfigError, match="min_objects=40"):  # cannot fit: fails, does not loop forever
        generate_shapes(str(tmp_path), num_train=1, level=WorldLevel(40, 40, 30, 32))
    assert not os.path.exists(tmp_path / "world.json")
