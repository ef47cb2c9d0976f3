"""The command line end to end on tiny generated data, and what a user sees on bad input."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rewardtune.cli import build_parser, main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "run")
    assert main(["demo", "detection", "--quick", "--out", out]) == 0
    return out


def test_quick_demo_leaves_the_documented_layout(demo):
    for path in ["data/annotations/instances_val.json", "data/world.json", "mle/config.json",
                 "mle/eval/val/detections.json", "mle/eval/val/metrics.json", "tuned/eval/val/detections.json",
                 "tuned/eval/val/metrics.json", "tuned/checkpoints/latest", "tuned/analysis/summary.json",
                 "report.html"]:
        assert os.path.exists(os.path.join(demo, path)), path
    with open(os.path.join(demo, "tuned", "eval", "val", "metrics.json")) as f:
        assert 0.0 <= json.load(f)["map"] <= 1.0


def test_demo_report_shows_cocoevals_minus_one_as_na_under_the_headline_metric(demo):
    with open(os.path.join(demo, "mle", "eval", "val", "metrics.json")) as f:
        undefined = [k for k, v in json.load(f).items() if v == -1.0]  # area ranges without objects
    with open(os.path.join(demo, "report.html"), encoding="utf-8") as f:
        text = f.read()
    table = text[text.index('<h2 id="metrics">'):text.index('<h2 id="analysis">')]
    assert undefined and table.index("<tr><th>map</th>") < table.index("<tr><th>ap50</th>")
    for name in undefined:
        assert f"<tr><th>{name}</th><td class='num'>n/a</td><td class='num'>n/a</td><td class='num '></td>" in table
    assert "-1.0000" not in text


def test_rerunning_the_demo_resumes_instead_of_retraining(demo, capsys):
    before = os.path.getmtime(os.path.join(demo, "mle", "checkpoints", "latest"))
    assert main(["demo", "detection", "--quick", "--out", demo]) == 0
    assert os.path.getmtime(os.path.join(demo, "mle", "checkpoints", "latest")) == before


def test_run_config_drives_pretrain_and_eval_and_predict(demo, tmp_path, capsys):
    run = str(tmp_path / "again")
    assert main(["pretrain", os.path.join(demo, "mle", "config.json"), "--out", run, "--set", "train.steps=2",
                 "--set", "train.eval_every=2"]) == 0
    assert main(["eval", run, "--max-images", "4"]) == 0
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((50, 80, 3), 128, np.uint8)).save(image)
    capsys.readouterr()
    assert main(["predict", run, str(image), "--out", str(tmp_path / "pred")]) == 0
    with open(tmp_path / "pred" / "detections.json") as f:
        for det in json.load(f):  # boxes are in the photo's own pixels
            x, y, w, h = det["bbox"]
            assert det["image_id"] == "photo" and x + w <= 80.5 and y + h <= 50.5


def run_cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "rewardtune", *args], capture_output=True, text=True, cwd=cwd)
    return proc.returncode, proc.stderr.strip().splitlines()


@pytest.mark.parametrize("case", ["missing_config", "unknown_key", "bad_value", "missing_data", "truncated_json",
                                  "no_checkpoint", "missing_pred", "negative_width", "zero_height",
                                  "negative_height"])
def test_user_errors_end_with_one_line_and_exit_code_2(case, demo, tmp_path):
    cfg = os.path.join(demo, "mle", "config.json")
    out = str(tmp_path / "out")
    bad_ann = tmp_path / "instances.json"
    bad_ann.write_text('{"images": [')
    gt = os.path.join(demo, "data", "annotations", "instances_val.json")
    with open(gt) as f:
        first_image = json.load(f)["images"][0]["id"]
    boxes = {"negative_width": [1, 2, -3, 4], "zero_height": [1, 2, 3, 0], "negative_height": [1, 2, 3, -4]}
    if case in boxes:  # a results file whose second detection is an impossible box
        field, value = ("width", -3) if case == "negative_width" else ("height", boxes[case][3])
        good = {"image_id": first_image, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}
        (tmp_path / "dets.json").write_text(json.dumps([good, {**good, "bbox": boxes[case]}]))
    args, expected = {
        "missing_config": (["pretrain", "nope.json", "--out", out], "nope.json"),
        "unknown_key": (["pretrain", cfg, "--out", out, "--set", "train.lrr=1"], "train.lrr"),
        "bad_value": (["pretrain", cfg, "--out", out, "--set", "train.batch_size=-3"], "train.batch_size"),
        "missing_data": (["pretrain", cfg, "--out", out, "--set", "data.root=/nonexistent"], "/nonexistent"),
        "truncated_json": (["pretrain", cfg, "--out", out, "--set", f"data.train_annotations={bad_ann}"],
                           "instances.json"),
        "no_checkpoint": (["tune", cfg, "--init", str(tmp_path), "--out", out], str(tmp_path)),
        "missing_pred": (["score", "detection", "--pred", str(tmp_path / "p.json"), "--gt",
                          os.path.join(demo, "data", "annotations", "instances_val.json")], "p.json"),
        **{name: (["score", "detection", "--pred", str(tmp_path / "dets.json"), "--gt", gt],
                  f"dets.json: detection #1 (image_id {first_image}): bbox {field} must be > 0")
           for name in boxes if name == case},
    }[case]
    code, lines = run_cli(*args)
    assert code == 2, lines
    assert len(lines) == 1 and expected in lines[0], lines
    assert not os.path.exists(out) or not os.listdir(out)  # nothing half-written


def test_score_takes_a_user_task_module_with_its_own_files(tmp_path, capsys):
    """`rewardtune score MODULE` for a task the user wrote: its FILE_SCORER names the files and scores them."""
    pred, gt = tmp_path / "pred.json", tmp_path / "gt.json"
    pred.write_text(json.dumps({"1": 2, "2": 0, "3": 1}))
    gt.write_text(json.dumps({"1": 2, "2": 3, "3": 1, "4": 0}))
    capsys.readouterr()
    assert main(["score", "toy_task", "--pred", str(pred), "--gt", str(gt)]) == 0
    assert json.loads(capsys.readouterr().out) == {"accuracy": pytest.approx(2 / 3), "num_images": 3}
    with pytest.raises(SystemExit) as done:
        main(["score", "toy_task", "--help"])
    assert done.value.code == 0
    assert "--pred PATH" in capsys.readouterr().out
    for argv, expected in ((["score", "toy_task", "--pred", str(pred)], "score toy_task: missing --gt"),
                           (["score", "toy_task", "--pred", str(gt), "--gt", str(pred)], "image id 4 is not in"),
                           (["score", "toy_task_eval_index", "--pred", str(pred)], "offers no file scoring"),
                           (["score", "no_such_module", "--pred", str(pred)], "unknown task 'no_such_module'")):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines


def _subparsers(parser, prefix=()):
    """(command words, parser) of every subcommand, nested ones (data shapes) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*prefix, name))
            return
    yield prefix, parser


SUBCOMMANDS = list(_subparsers(build_parser()))


@pytest.mark.parametrize("words, parser", SUBCOMMANDS, ids=[" ".join(words) for words, _ in SUBCOMMANDS])
def test_every_subcommand_help_says_what_it_does_its_choices_and_defaults(words, parser, capsys):
    with pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert parser.description and " ".join(parser.description.split()[:6]) in text
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{action.dest} has no help"
        for choice in action.choices or ():
            assert choice in text, (action.dest, choice)
        if not (action.default is None or action.default is False or action.default == []):
            assert f"(default: {action.default})" in text, action.dest
