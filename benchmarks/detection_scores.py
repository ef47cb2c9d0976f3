"""How well each box score ranks a detection run's boxes: mAP of the same greedy boxes ranked by
token probability, by the paper's expected IoU, by a fitted score (`--score learned`, the default, or
`verifier`: fitted here on the model's own boxes of training images, as `task_options.score` does
before every validation), and by the oracle (true IoU), with the fraction of the oracle gap each score
closes and each score's Spearman correlation with the true IoU.

    .venv/bin/python benchmarks/detection_scores.py MLE_RUN CONTROL_RUN TUNED_RUN [--score verifier]
        [--calib-root DATA] [--out DIR]

Each run is read at the checkpoint that stands for it; the fitted score's detections are written to
OUT/<run name>/detections.json and its mAP is re-read from that file by pycocotools (`rewardtune score
detection`). `--calib-root`: fit on the train split of another data root (fresh images of the same world)
instead of the run's own training images. `--hedge-all`: read every box as hedged (task_options.hedge_all):
each box is followed by its copy with its second most likely class, in the fit and in the ranking; on a model
that never hedged (MLE, control) these are its boxes hedged after the fact, the reference a hedge-token model
must beat. Results go to OUT/scores.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rewardtune import checkpoint  # noqa: E402
from rewardtune.config import load as load_config  # noqa: E402
from rewardtune.evaluate import predict_split  # noqa: E402
from rewardtune.model.encdec import build_model  # noqa: E402
from rewardtune.score import score  # noqa: E402
from rewardtune.tasks import make_task  # noqa: E402

FITTED = ("learned", "verifier")


def measure(run: str, out_dir: str, images: int, samples: int, seed: int, fitted_score: str = "learned",
            calib_root: str = "", hedge_all: bool = False) -> dict:
    scores = ("token_prob", "expected_iou", fitted_score)
    config = load_config(os.path.join(run, "config.json"))
    config.task_options = {**config.task_options, "score": fitted_score, "calibrate_images": images,
                           "calibrate_samples": samples}
    if hedge_all:  # every box read as hedged (task_options.hedge_all), also a hedge-token model's
        config.task_options.update(hedge_all=True, hedge_token=False)
    name = checkpoint.standing(run)
    path = checkpoint.find(run, name)
    saved = checkpoint.load(path, optimizer_state=False)
    state = {k: v for k, v in saved["state"]["task_state"].items() if k not in ("score_head", "verifier")}
    task = make_task(config, state)
    model = build_model(config.model, config.data.image_size, task.codec)
    checkpoint.load_weights(model, saved["model"], path, config.task, saved["state"].get("task"))
    model.eval()
    splits = task.datasets()
    t0 = time.time()
    calib = splits["train"]
    if calib_root:
        calib_config = copy.deepcopy(config)
        calib_config.data.root = calib_root
        calib = make_task(calib_config, state).datasets()["train"]  # its codec is not used
    fitted = task.calibrate(model, calib, seed)
    fit_s = time.time() - t0
    val = splits["val"]
    outputs, targets, ids = predict_split(model, task, val, range(len(val)))
    metrics = task.metrics(outputs, targets, ids)
    os.makedirs(out_dir, exist_ok=True)
    task.write_predictions(outputs, targets, ids, out_dir)
    gt = os.path.join(config.data.root, "annotations", "instances_val.json")
    from_file = score("detection", {"pred": os.path.join(out_dir, "detections.json"), "gt": gt})
    gap = metrics["map_by_oracle_iou"] - metrics["map_by_token_prob"]
    return {"run": run, "checkpoint": name, "score": fitted_score, "hedge_all": hedge_all, "fit": fitted, "fit_s": fit_s,
            "map_fitted_from_file": from_file["map"], "ar100": metrics["ar100"],
            **{f"map_by_{s}": metrics[f"map_by_{s}"] for s in (*scores, "oracle_iou")},
            **{f"spearman_{s}": metrics.get(f"spearman_{s}", float("nan")) for s in scores},  # undefined: left out
            **{f"gap_closed_{s}": (metrics[f"map_by_{s}"] - metrics["map_by_token_prob"]) / gap if gap else float("nan")
               for s in scores}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="bench_out/detection_scores")
    p.add_argument("--score", choices=FITTED, default="learned", help="the fitted score to measure")
    p.add_argument("--calib-root", default="", help="fit on this data root's train split instead of the run's")
    p.add_argument("--images", type=int, default=1024, help="training images the fitted score is fitted on")
    p.add_argument("--samples", type=int, default=4, help="samples per image beside the greedy output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hedge-all", action="store_true", help="read every box as hedged (the boxes hedged after the "
                   "fact): each box followed by its copy with its second most likely class")
    args = p.parse_args()
    if args.hedge_all and args.score != "verifier":
        p.error("--hedge-all: with --score verifier (the learned score reads no hedge copies)")
    rows = []
    for run in args.runs:
        label = os.path.basename(os.path.normpath(run))
        rows.append(measure(run, os.path.join(args.out, label), args.images, args.samples, args.seed, args.score,
                            args.calib_root, args.hedge_all))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "scores.json"), "w") as f:
            json.dump(rows, f, indent=1)
    scores = ("token_prob", "expected_iou", args.score)
    fit_key = "score_head" if args.score == "learned" else "verifier"
    print(f"\n{'run':<28} {'ckpt':<7} " + " ".join(f"{'mAP ' + s:>17}" for s in (*scores, "oracle_iou"))
          + f" {'AR@100':>7} " + " ".join(f"{'gap closed ' + s:>24}" for s in scores[1:]))
    for r in rows:
        print(f"{r['run'][-28:]:<28} {r['checkpoint']:<7} "
              + " ".join(f"{r[f'map_by_{s}']:17.4f}" for s in (*scores, "oracle_iou")) + f" {r['ar100']:7.4f} "
              + " ".join(f"{r[f'gap_closed_{s}']:24.2f}" for s in scores[1:]))
    for r in rows:
        print(f"{r['run']}: Spearman with true IoU " + ", ".join(f"{s} {r[f'spearman_{s}']:.3f}" for s in scores)
              + f"; {args.score}-score mAP re-read from the written file {r['map_fitted_from_file']:.4f}; "
              f"fit on {int(r['fit'].get(f'{fit_key}_boxes', 0))} boxes in {r['fit_s']:.0f} s "
              f"(fit Spearman {r['fit'].get(f'{fit_key}_fit_spearman', float('nan')):.3f})")


if __name__ == "__main__":
    main()
