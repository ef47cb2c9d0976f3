"""What is wrong with panoptic predictions: each ground-truth thing sorted into matched, wrong class,
merged, fragmented or missed (rewardtune/tasks/panoptic/errors.py), beside PQ things, for one or more runs.

    .venv/bin/python benchmarks/panoptic_errors.py --gt-json DATA/annotations/panoptic_val.json \\
        MLE_RUN TUNED_RUN [...]

Each argument is a run folder (its `eval/val/panoptic.json`, written by `rewardtune eval` or the training
loop's validation) or a predictions JSON with its PNG folder beside it (the JSON's path without `.json`).
The ground-truth PNG folder is --gt-dir, by default the gt JSON's path without `.json`. Prints a table:
per run PQ things (the file scorer's), the count and share of each kind, spurious predictions, and the
most frequent confusions.
"""
from __future__ import annotations

import argparse
import os
import sys

from rewardtune.errors import DataError
from rewardtune.tasks.panoptic.errors import ThingErrors, format_errors
from rewardtune.tasks.panoptic.io import png_folder
from rewardtune.tasks.panoptic.metrics import read_files


def predictions_json(path: str) -> str:
    """A run folder's val predictions, or the JSON itself."""
    return os.path.join(path, "eval", "val", "panoptic.json") if os.path.isdir(path) else path


def run_errors(pred_json: str, gt_json: str, gt_dir: str) -> tuple[ThingErrors, dict, list[dict]]:
    """(the kinds of error, the file scorer's metrics, the gt categories) of one predictions JSON."""
    pairs, categories = read_files(pred_json, png_folder(pred_json), gt_json, gt_dir)
    isthing = {int(c["id"]): int(c.get("isthing", 0)) == 1 for c in categories}
    errors = ThingErrors()
    for pred, gt in pairs:
        errors.update([pred], [gt], isthing)
    return errors, errors.pq.results(categories), categories


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders or predictions JSONs")
    parser.add_argument("--gt-json", required=True, help="COCO panoptic JSON of the ground truth")
    parser.add_argument("--gt-dir", default="", help="its PNG folder (default: the JSON's path without .json)")
    args = parser.parse_args(argv)
    gt_dir = args.gt_dir or png_folder(args.gt_json)
    rows, names = [], {}
    try:
        for run in args.runs:
            errors, metrics, categories = run_errors(predictions_json(run), args.gt_json, gt_dir)
            names = {int(c["id"]): c.get("name", c["id"]) for c in categories}
            rows.append((f"{run} (PQ things {metrics['pq_things']:.4f})", errors))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_errors(rows, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
