"""The `rewardtune` command line: argument parsing only; each subcommand calls one library function."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import UserError


def _config(args, stage: str):
    from .recipes import resolve
    config = resolve(args.config, args.set)
    config.train.stage = stage
    if stage == "reward" and getattr(args, "reward", None):
        config.train.reward = args.reward
    from .config import validate
    validate(config)
    return config


def cmd_pretrain(args) -> None:
    from .train import train
    metrics = train(_config(args, "mle"), args.out, init_dir=args.init)
    if metrics:
        print(json.dumps(metrics, indent=1))


def cmd_tune(args) -> None:
    from .train import train
    metrics = train(_config(args, "reward"), args.out, init_dir=args.init)
    if metrics:
        print(json.dumps(metrics, indent=1))


def cmd_eval(args) -> None:
    from .evaluate import evaluate_run
    print(json.dumps(evaluate_run(args.run, split=args.split, checkpoint_name=args.checkpoint,
                                  max_images=args.max_images), indent=1))


def cmd_predict(args) -> None:
    from .predict import predict_images
    predict_images(args.run, args.images, args.out, checkpoint_name=args.checkpoint)


def cmd_data_shapes(args) -> None:
    from .data.shapes import generate_shapes
    summary = generate_shapes(args.out, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                              image_size=args.image_size, seed=args.seed, level=args.level)
    print(json.dumps(summary, indent=1))


def cmd_score(args) -> None:
    from .score import score
    print(json.dumps(score(args.task, vars(args)), indent=1))


def cmd_demo(args) -> None:
    from .demo import run_demo
    run_demo(args.task, args.out, quick=args.quick)


def cmd_analyze(args) -> None:
    from .analysis import analyze_run
    analyze_run(args.run, init_dir=args.init, samples=args.samples, images=args.images, out_dir=args.out,
                seed=args.seed, batch_size=args.batch_size, checkpoint_name=args.checkpoint)


def cmd_report(args) -> None:
    from .report.html import write_report
    print(write_report(args.runs, args.out, images=args.images))


def build_parser() -> argparse.ArgumentParser:
    from .data.shapes import LEVELS
    p = argparse.ArgumentParser(prog="rewardtune", description="Tune vision models with task rewards.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="synthetic data -> MLE -> tune -> eval -> report")
    d.add_argument("task", nargs="?", default="detection")
    d.add_argument("--out", default="demo_run")
    d.add_argument("--quick", action="store_true", help="tiny everything: the whole chain in about a minute")
    d.set_defaults(fn=cmd_demo)

    data = sub.add_parser("data", help="generate datasets").add_subparsers(dest="kind", required=True)
    s = data.add_parser("shapes", help="the synthetic shapes world (COCO 2017 layout)")
    s.add_argument("--out", required=True)
    s.add_argument("--num-train", type=int, default=2000)
    s.add_argument("--num-val", type=int, default=256)
    s.add_argument("--num-test", type=int, default=256)
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--level", default="medium", choices=list(LEVELS),
                   help="the world's difficulty (rewardtune/data/shapes.py, LEVELS); default medium")
    s.set_defaults(fn=cmd_data_shapes)

    for name, fn, stage_help in (("pretrain", cmd_pretrain, "MLE pretraining"),
                                 ("tune", cmd_tune, "REINFORCE reward tuning")):
        t = sub.add_parser(name, help=stage_help)
        t.add_argument("config", help="config file (a run's config.json works) or a recipe name")
        t.add_argument("--out", required=True, help="run folder; re-running resumes from its latest checkpoint")
        t.add_argument("--init", help="run folder whose standing checkpoint initialises the model: its best if it "
                                      "trained with patience (early stopping), else its latest",
                       required=(name == "tune"))
        t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. train.lr=3e-5")
        if name == "tune":
            t.add_argument("--reward", help="a task reward name or package.module:function")
        t.set_defaults(fn=fn)

    e = sub.add_parser("eval", help="greedy-decode a split, write predictions and metrics.json")
    e.add_argument("run")
    e.add_argument("--split", default="val")
    e.add_argument("--checkpoint", default=None, choices=("latest", "best"),
                    help="default: the checkpoint that stands for the run: best if it trained with patience, else latest")
    e.add_argument("--max-images", type=int, default=0)
    e.set_defaults(fn=cmd_eval)

    pr = sub.add_parser("predict", help="run a trained model on your own images")
    pr.add_argument("run")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--out", help="folder for predictions in the task's standard format (default: print)")
    pr.add_argument("--checkpoint", default=None, choices=("latest", "best"),
                    help="default: the checkpoint that stands for the run: best if it trained with patience, else latest")
    pr.set_defaults(fn=cmd_predict)

    sc = sub.add_parser("score", help="score a predictions file with the project's metric (prints JSON)")
    sc.add_argument("task", choices=("detection", "captioning", "colorization", "panoptic"))
    sc.add_argument("--pred", help="detection/captioning: results JSON; colorization: folder")
    sc.add_argument("--gt", help="detection/captioning: annotations JSON; colorization: folder")
    sc.add_argument("--pred-json")
    sc.add_argument("--pred-dir")
    sc.add_argument("--gt-json")
    sc.add_argument("--gt-dir")
    sc.set_defaults(fn=cmd_score)

    a = sub.add_parser("analyze", help="sample pools of a run (and its MLE init): reward distribution, "
                                       "best-of-N, likelihood reranking")
    a.add_argument("run")
    a.add_argument("--init", help="the MLE run the tuned run started from (its standing checkpoint, the one "
                                   "tuning started from: best with patience, else latest; analysed as 'mle')")
    a.add_argument("--samples", type=int, required=True, help="samples per image (K), e.g. 1000")
    a.add_argument("--images", type=int, default=16, help="the first N val images")
    a.add_argument("--out", help="output folder (default RUN/analysis, which the report picks up)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--batch-size", type=int, default=256, help="sequences per sampling call (memory bound)")
    a.add_argument("--checkpoint", default=None, choices=("latest", "best"),
                    help="default: the checkpoint that stands for the run: best if it trained with patience, else latest")
    a.set_defaults(fn=cmd_analyze)

    r = sub.add_parser("report", help="one self-contained HTML report of runs side by side")
    r.add_argument("runs", nargs="+", metavar="RUN")
    r.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    r.add_argument("--images", type=int, default=8, help="val images in the gallery")
    r.set_defaults(fn=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except UserError as e:
        print(f"rewardtune: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `rewardtune score ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("rewardtune: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
