"""Bad input, for every task, through the CLI: one line naming the file or key, exit code 2, no partial output.

Each case copies a tiny shapes world, breaks one thing, runs `rewardtune pretrain` (or `tune`) in-process and
checks what the user sees. A case that does not apply to a task (colorization reads a folder of images: it has
no JSON, no categories, no boxes and no file names to escape with) is skipped as N/A. The last tests show that
`data.skip_corrupt=true` skips (and counts) a corrupt image and training goes on.

Set REWARDTUNE_BAD_INPUT_TABLE=FILE to append "case<TAB>task<TAB>line" for each case (the table of issue 7).
"""
import json
import math
import os
import shutil

import pytest

from rewardtune import checkpoint
from rewardtune.cli import main
from rewardtune.data.shapes import generate_shapes

TASKS = ["detection", "captioning", "colorization", "panoptic"]
TINY = ["data.image_size=32", "model.width=32", "model.encoder_depth=1", "model.decoder_depth=1", "model.heads=2",
        "train.batch_size=4", "train.steps=1", "train.eval_every=1", "train.checkpoint_every=1", "train.log_every=1",
        "train.warmup_steps=0", "train.eval_images=4", "train.threads=0", "train.num_samples=2"]
OPTIONS = {"colorization": ['task_options={"palette_size": 8, "grid": 4}'],
           "panoptic": ['task_options={"grid": 4, "max_instances": 4}'],
           "detection": ['task_options={"bins": 16, "max_boxes": 6}'], "captioning": []}
ANNOTATIONS = {"detection": "instances", "captioning": "captions", "panoptic": "panoptic"}  # colorization: none
BROKEN_IMAGE = "000000000003.png"  # a train image


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input_world")
    generate_shapes(str(root), num_train=8, num_val=4, num_test=0, image_size=32, seed=3, level="medium")
    return str(root)


@pytest.fixture(scope="session")
def runs(world, tmp_path_factory):
    """A finished 1-step pretrain run per task, made on first use: {task: run folder}."""
    made = {}

    def get(task):
        if task not in made:
            out = str(tmp_path_factory.mktemp("runs") / task)
            assert main(cli("pretrain", task, world, out)) == 0
            made[task] = out
        return made[task]
    return get


def cli(stage, task, root, out, *extra, init=None):
    recipe = f"{task}_demo_{'mle' if stage == 'pretrain' else 'tune'}"
    args = [stage, recipe, "--out", out] + (["--init", init] if init else [])
    for s in [f"data.root={root}", *TINY, *OPTIONS[task], *extra]:
        args += ["--set", s]
    return args


# ---- helpers that break one thing in a copied world ----------------------------------------------------------

def ann_path(root, task, split="train"):
    return os.path.join(root, "annotations", f"{ANNOTATIONS[task]}_{split}.json")


def edit_json(path, fn):
    with open(path) as f:
        data = json.load(f)
    data = fn(data) or data
    with open(path, "w") as f:
        json.dump(data, f)


def first_image_name(root, task):
    with open(ann_path(root, task)) as f:
        return json.load(f)["images"][0]["file_name"]


def set_first(key, field, value):
    def fn(data):
        data[key][0][field] = value
    return fn


def drop_first(key, field):
    def fn(data):
        del data[key][0][field]
    return fn


def needs_json(task):
    if task not in ANNOTATIONS:
        pytest.skip(f"N/A for {task}: it reads a folder of images, no annotation JSON")


def only(task, *tasks):
    if task not in tasks:
        pytest.skip(f"N/A for {task}")


# Each case: (task, root, ctx) -> (extra CLI args, text the error line must contain). `ctx` gives `runs` and
# `tmp_path`. A case may return ("tune", args, expected, init) to run `tune` instead of `pretrain`.

def missing_annotations(task, root, ctx):
    needs_json(task)
    os.remove(ann_path(root, task))
    return [], f"{ANNOTATIONS[task]}_train.json"


def missing_image_folder(task, root, ctx):
    shutil.rmtree(os.path.join(root, "images", "train"))
    return [], (os.path.join("images", "train"), "folder not found")


def missing_image(task, root, ctx):
    only(task, "detection", "captioning", "panoptic")  # colorization lists its folder: a removed file is not in it
    os.remove(os.path.join(root, "images", "train", BROKEN_IMAGE))
    return [], BROKEN_IMAGE


def corrupt_image(task, root, ctx):
    with open(os.path.join(root, "images", "train", BROKEN_IMAGE), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n this is not an image" * 4)
    return [], BROKEN_IMAGE


def all_corrupt_with_skip(task, root, ctx):
    folder = os.path.join(root, "images", "train")
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"garbage")
    return ["data.skip_corrupt=true"], os.path.join("images", "train")


def corrupt_panoptic_png(task, root, ctx):
    only(task, "panoptic")
    with open(os.path.join(root, "annotations", "panoptic_train", BROKEN_IMAGE), "wb") as f:
        f.write(b"garbage")
    return [], BROKEN_IMAGE


def truncated_json(task, root, ctx):
    needs_json(task)
    path = ann_path(root, task)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return [], f"{ANNOTATIONS[task]}_train.json"


def schema_not_a_list(task, root, ctx):
    needs_json(task)
    edit_json(ann_path(root, task), lambda d: {**d, "images": 5})
    return [], "images"


def schema_missing_key(task, root, ctx):
    needs_json(task)
    key, field = {"detection": ("annotations", "category_id"), "captioning": ("annotations", "caption"),
                  "panoptic": ("annotations", "segments_info")}[task]
    edit_json(ann_path(root, task), drop_first(key, field))
    return [], field


def unknown_category(task, root, ctx):
    only(task, "detection", "panoptic")
    if task == "detection":
        edit_json(ann_path(root, task), set_first("annotations", "category_id", 999))
    else:
        edit_json(ann_path(root, task), lambda d: d["annotations"][0]["segments_info"][0].update(category_id=999))
    return [], "999"


def impossible_box(task, root, ctx):
    only(task, "detection", "panoptic")
    if task == "detection":
        edit_json(ann_path(root, task), lambda d: d["annotations"][0].update(bbox=[2, 2, -5, 4]))
        return [], "-5"
    # panoptic: a segment id of the PNG that segments_info does not list
    edit_json(ann_path(root, task), lambda d: d["annotations"][0].update(segments_info=d["annotations"][0]
                                                                         ["segments_info"][1:]))
    return [], "not in the segments_info"


def nan_box(task, root, ctx):
    only(task, "detection")
    edit_json(ann_path(root, task), lambda d: d["annotations"][0].update(bbox=[2, 2, math.nan, 4]))
    return [], "bbox"


def _escaping(case_name, name):
    """A case whose first image's file_name escapes the image folder; the line names the JSON and the path."""
    def case(task, root, ctx):
        needs_json(task)  # colorization lists its folder: no file name comes from a data file (module docstring)
        edit_json(ann_path(root, task), set_first("images", "file_name", name))
        return [], (f"{ANNOTATIONS[task]}_train.json", name)
    case.__name__ = case_name
    return case


path_escape = _escaping("path_escape", "../../../../etc/passwd")
path_escape_absolute = _escaping("path_escape_absolute", "/etc/passwd")


def _emptied(case_name, split):
    """A case whose `split` has no images: an emptied folder (colorization) or an emptied JSON."""
    def case(task, root, ctx):
        if task == "colorization":
            folder = os.path.join(root, "images", split)
            for name in os.listdir(folder):
                os.remove(os.path.join(folder, name))
            return [], os.path.join("images", split)
        edit_json(ann_path(root, task, split), lambda d: {**d, "images": [], "annotations": []})
        return [], f"{ANNOTATIONS[task]}_{split}.json"
    case.__name__ = case_name
    return case


empty_split = _emptied("empty_split", "train")
empty_val_split = _emptied("empty_val_split", "val")


def unknown_config_key(task, root, ctx):
    return ["train.lrr=1"], "train.lrr"


def unknown_task_option(task, root, ctx):
    return ["task_options.gridd=4"], "task_options.gridd"


def negative_lr(task, root, ctx):
    return ["train.lr=-1"], "train.lr"


def bad_task_option(task, root, ctx):
    key, value = {"detection": ("bins", 1), "captioning": ("max_len", 1), "colorization": ("grid", 0),
                  "panoptic": ("grid", 0)}[task]
    return [f"task_options.{key}={value}"], f"task_options.{key}"


def checkpoint_of_another_task(task, root, ctx):
    other = TASKS[(TASKS.index(task) + 1) % len(TASKS)]
    init = ctx["runs"](other)
    return "tune", [], f"'{other}'", init


def checkpoint_of_another_shape(task, root, ctx):
    init = ctx["runs"](task)
    return "tune", ["model.width=64"], "does not fit this model", init


def garbage_checkpoint(task, root, ctx):
    init = str(ctx["tmp_path"] / "garbage_init")
    shutil.copytree(ctx["runs"](task), init)
    with open(os.path.join(checkpoint.find(init), "model.pt"), "wb") as f:
        f.write(b"not a torch file at all")
    return "tune", [], "garbage_init", init


def checkpoint_pointer_is_a_folder(task, root, ctx):
    """A run folder assembled by hand, with a checkpoint folder copied in where the pointer file goes."""
    init = str(ctx["tmp_path"] / "hand_init")
    shutil.copytree(ctx["runs"](task), init)
    folder, which = os.path.join(init, "checkpoints"), checkpoint.standing(init)  # the pointer --init reads
    name = checkpoint.read_pointer(folder, which)
    os.remove(os.path.join(folder, which))
    shutil.copytree(os.path.join(folder, name), os.path.join(folder, which))
    return "tune", [], os.path.join("hand_init", "checkpoints", which) + ": must be a pointer file", init


CASES = [missing_annotations, missing_image_folder, missing_image, corrupt_image, all_corrupt_with_skip,
         corrupt_panoptic_png,
         truncated_json, schema_not_a_list, schema_missing_key, unknown_category, impossible_box, nan_box,
         path_escape, path_escape_absolute, empty_split, empty_val_split, unknown_config_key, unknown_task_option,
         negative_lr, bad_task_option, checkpoint_of_another_task, checkpoint_of_another_shape, garbage_checkpoint,
         checkpoint_pointer_is_a_folder]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_bad_input_gives_one_line_exit_2_and_no_output(case, task, world, runs, tmp_path, capsys):
    root = str(tmp_path / "data")
    shutil.copytree(world, root)
    got = case(task, root, {"runs": runs, "tmp_path": tmp_path})
    stage, extra, expected, init = got if len(got) == 4 else ("pretrain", *got, None)
    out = str(tmp_path / "out")
    capsys.readouterr()
    code = main(cli(stage, task, root, out, *extra, init=init))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    table = os.environ.get("REWARDTUNE_BAD_INPUT_TABLE")
    if table:
        with open(table, "a") as f:
            f.write(f"{case.__name__}\t{task}\t{err.strip().replace(str(tmp_path), '$TMP')}\n")
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("rewardtune: error: "), err
    for text in (expected,) if isinstance(expected, str) else expected:
        assert text in lines[0], err
    assert not os.path.exists(out) or not os.listdir(out), os.listdir(out)  # nothing half-written


@pytest.mark.parametrize("task", TASKS)
def test_skip_corrupt_skips_and_counts_the_image_and_trains(task, world, tmp_path, capsys):
    root = str(tmp_path / "data")
    shutil.copytree(world, root)
    corrupt_image(task, root, {})
    out = str(tmp_path / "out")
    capsys.readouterr()
    assert main(cli("pretrain", task, root, out, "data.skip_corrupt=true")) == 0
    err = capsys.readouterr().err
    assert checkpoint.find(out) is not None
    assert os.path.exists(os.path.join(out, "eval", "val", "metrics.json"))
    assert "skipped 1 unreadable image" in err and "train" in err, err


# ---- `rewardtune score`: bad prediction files -------------------------------------------------------------------
# Each score case starts from predictions that equal the val ground truth of the world (scored fine), breaks one
# thing and checks what the user sees: one line naming the file (and the entry), exit code 2.

def perfect_predictions(task, root, folder):
    """Score arguments for predictions equal to the val ground truth, written under `folder`."""
    ann = os.path.join(root, "annotations")
    pred = os.path.join(folder, "pred.json")
    if task == "colorization":
        shutil.copytree(os.path.join(root, "images", "val"), os.path.join(folder, "images"))
        return {"--pred": os.path.join(folder, "images"), "--gt": os.path.join(root, "images", "val")}
    if task == "panoptic":
        shutil.copy(ann_path(root, task, "val"), pred)
        shutil.copytree(os.path.join(ann, "panoptic_val"), os.path.join(folder, "panoptic"))
        return {"--pred-json": pred, "--pred-dir": os.path.join(folder, "panoptic"),
                "--gt-json": ann_path(root, task, "val"), "--gt-dir": os.path.join(ann, "panoptic_val")}
    with open(ann_path(root, task, "val")) as f:
        gt = json.load(f)
    if task == "detection":
        entries = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                   for a in gt["annotations"]]
    else:
        entries = list({a["image_id"]: {"image_id": a["image_id"], "caption": a["caption"]}
                        for a in gt["annotations"]}.values())
    with open(pred, "w") as f:
        json.dump(entries, f)
    return {"--pred": pred, "--gt": ann_path(root, task, "val")}


def _set_second(task, field, value, text):
    """A score case that sets `field` of the second prediction entry; the line must name `text`."""
    def case(task_, args):
        if task_ != task:
            pytest.skip(f"N/A for {task_}")
        pred = args["--pred-json" if task == "panoptic" else "--pred"]
        if task == "panoptic":
            edit_json(pred, lambda d: d["annotations"][1]["segments_info"][0].update({field: value}))
        else:
            edit_json(pred, lambda d: d[1].update({field: value}))
        return (pred, "detection #1", text) if task == "detection" else (pred, text)
    return case


def score_truncated(task, args):
    pred = args["--pred-json" if task == "panoptic" else "--pred"]
    if task == "colorization":  # a folder of images: a truncated image
        pred = os.path.join(pred, sorted(os.listdir(pred))[0])
    with open(pred, "rb") as f:
        data = f.read()
    with open(pred, "wb") as f:
        f.write(data[: len(data) // 2])
    return os.path.basename(pred)


def score_image_missing(task, args):
    if task == "colorization":
        name = sorted(os.listdir(args["--pred"]))[0]
        os.remove(os.path.join(args["--pred"], name))
        return name
    if task == "panoptic":
        edit_json(args["--pred-json"], lambda d: d.update(annotations=d["annotations"][1:]))
        return "no prediction for the image"
    pytest.skip(f"N/A for {task}: images without a prediction are left out, as the reference tool does")


def score_duplicate_image(task, args):
    only(task, "captioning", "panoptic")
    pred = args["--pred-json" if task == "panoptic" else "--pred"]
    if task == "panoptic":
        edit_json(pred, lambda d: d["annotations"].append(d["annotations"][0]))
        return pred, "more than one prediction"
    edit_json(pred, lambda d: d + [d[0]])
    return pred, "more than one caption"


def score_duplicate_segment(task, args):
    only(task, "panoptic")
    edit_json(args["--pred-json"], lambda d: d["annotations"][0]["segments_info"].append(
        d["annotations"][0]["segments_info"][0]))
    return args["--pred-json"], "listed more than once"


def score_file_name_escapes(task, args):
    only(task, "panoptic")
    edit_json(args["--pred-json"], set_first("annotations", "file_name", "../../../../etc/passwd"))
    return args["--pred-json"], "escapes"


SCORE_CASES = [
    score_truncated, score_image_missing, score_duplicate_image, score_duplicate_segment, score_file_name_escapes,
    _set_second("detection", "bbox", [1, 2, math.nan, 4], "bbox"),
    _set_second("detection", "image_id", 999, "unknown image_id 999"),
    _set_second("detection", "category_id", 999, "unknown category_id 999"),
    _set_second("detection", "bbox", [1, 2, -3, 4], "bbox width must be > 0, got -3"),
    _set_second("detection", "bbox", [1, 2, 3, 0], "bbox height must be > 0, got 0"),
    _set_second("detection", "bbox", [1, 2, 3, -4], "bbox height must be > 0, got -4"),
    _set_second("detection", "image_id", [1], "image_id [1]"),
    _set_second("captioning", "image_id", 999, "image id 999"),
    _set_second("captioning", "image_id", [1], "image_id [1]"),
    _set_second("captioning", "caption", math.nan, "caption"),
    _set_second("panoptic", "category_id", 999, "unknown category_id 999"),
    _set_second("panoptic", "category_id", math.nan, "category_id"),
]
SCORE_IDS = ["truncated", "image_missing", "duplicate_image", "duplicate_segment", "file_name_escapes",
             "nan_box", "unknown_image_id", "unknown_category", "negative_width", "zero_height", "negative_height",
             "list_image_id", "unknown_image_id_caption", "list_image_id_caption", "nan_caption",
             "unknown_category_segment", "nan_category_segment"]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("case", SCORE_CASES, ids=SCORE_IDS)
def test_bad_predictions_give_one_line_exit_2(case, task, world, tmp_path, capsys):
    args = perfect_predictions(task, world, str(tmp_path))
    argv = ["score", task] + [v for pair in args.items() for v in pair]
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err  # the unbroken predictions score
    expected = case(task, args)
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    table = os.environ.get("REWARDTUNE_BAD_INPUT_TABLE")
    if table:
        with open(table, "a") as f:
            f.write(f"score_{SCORE_IDS[SCORE_CASES.index(case)]}\t{task}\t"
                    f"{captured.err.strip().replace(str(tmp_path), '$TMP')}\n")
    assert code == 2 and not captured.out, captured.err
    assert len(lines) == 1 and lines[0].startswith("rewardtune: error: "), captured.err
    for text in (expected,) if isinstance(expected, str) else expected:
        assert text in lines[0], captured.err
