"""The `rewardtune` command line: argument parsing only; each subcommand calls one library function."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

from .errors import UserError


def _config(args, stage: str):
    from .recipes import resolve
    config = resolve(args.config, args.set)
    if not (stage == "mle" and config.train.stage == "codec"):  # pretrain: MLE, or UViM's stage I if the config says
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


def cmd_data_check(args) -> None:
    from .data_check import check_folder
    check_folder(args.task, args.root, args.split, workers=args.workers)


def cmd_score(args) -> None:
    from .score import option, score
    from .tasks import file_scorer
    scorer = file_scorer(args.task)
    parser = argparse.ArgumentParser(prog=f"rewardtune score {args.task}", formatter_class=_Help,
                                     description=f"Score prediction files of task {args.task!r} with its metric; "
                                                 "prints the metrics as JSON.")
    for name, what in scorer.files:
        parser.add_argument(option(name), dest=name, metavar="PATH", help=what)
    files = vars(parser.parse_args(args.files))
    print(json.dumps(score(args.task, files), indent=1))


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


CHECKPOINT_HELP = "default: the checkpoint that stands for the run: best if it trained with patience, else latest"


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default where it has one (not None, False or []), and keeps the
    description's lines (wrapping each; a line indented by two spaces, an example, is kept as it is)."""

    def _fill_text(self, text, width, indent):
        return "\n".join(line if line.startswith("  ") else
                         textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                         for line in text.splitlines())

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == []
        if not unset and action.default is not argparse.SUPPRESS and "%(default)" not in text and (
                action.option_strings or action.nargs == "?"):
            text += " (default: %(default)s)"
        return text


def _subcommand(sub, name: str, summary: str, fn, description: str = ""):
    """A subcommand parser: `summary` in `rewardtune --help`, `summary` + `description` in its own --help."""
    parser = sub.add_parser(name, help=summary, description=summary + (f"\n\n{description}" if description else ""),
                            formatter_class=_Help)
    parser.set_defaults(fn=fn)
    return parser


def _add_demo(sub) -> None:
    from .recipes import QUICK_TIME, demo_tasks  # light: --help must not load torch
    d = _subcommand(sub, "demo", "synthetic data -> MLE -> tune -> eval -> analysis -> report, for one task",
                    cmd_demo, "Generates the shapes world in OUT/data, trains OUT/mle, tunes OUT/tuned from it, "
                    "evaluates both, analyses their sample pools and writes OUT/report.html. Re-running the same "
                    "command resumes stage by stage.")
    d.add_argument("task", nargs="?", default="captioning", choices=demo_tasks(),
                   help="the task (captioning: where tuning pays on the shapes world)")
    d.add_argument("--out", default="demo_run", help="folder for the data, the two runs and the report")
    d.add_argument("--quick", action="store_true", help=f"tiny everything: the whole chain in {QUICK_TIME}, to "
                                                        "check that it runs (its numbers mean nothing)")


def _add_data(sub) -> None:
    from .data.shapes_scene import LEVELS
    data = _subcommand(sub, "data", "generate datasets", None).add_subparsers(dest="kind", required=True)
    s = _subcommand(data, "shapes", "the synthetic shapes world, in the COCO 2017 layout", cmd_data_shapes,
                    "Writes OUT/images/{train,val,test}/ and OUT/annotations/ (instances, captions and panoptic "
                    "files), usable by every task.")
    s.add_argument("--out", required=True, help="the dataset folder to write")
    s.add_argument("--num-train", type=int, default=2000, help="images in the train split")
    s.add_argument("--num-val", type=int, default=256, help="images in the val split")
    s.add_argument("--num-test", type=int, default=256, help="images in the test split")
    s.add_argument("--image-size", type=int, default=64, help="side of the square images, in pixels")
    s.add_argument("--seed", type=int, default=0, help="the world's random seed")
    s.add_argument("--level", default="medium", choices=list(LEVELS), help="how hard the scenes are")
    c = _subcommand(data, "check", "what a COCO-layout folder holds for a task, and what is wrong with it",
                    cmd_data_check, "Reads the task's annotation files under ROOT/annotations/ and every image they "
                    "name under ROOT/images/<split>/ in full; prints, per split, the images, annotations and "
                    "categories and each problem found (missing or unreadable images, annotations of unknown "
                    "images or categories, boxes outside their image, empty categories). Exit 0 when none, "
                    "else 2 with one summary line. Example:\n"
                    "  rewardtune data check --task detection --root coco --split train2017 --workers 8")
    c.add_argument("--task", required=True, help="detection or captioning, or the import path of a task module "
                                                 "that defines DATA_CHECK")
    c.add_argument("--root", required=True, help="the dataset folder (annotations/, images/<split>/)")
    c.add_argument("--split", action="append", default=[], help="a split to check, e.g. val2017 (repeatable; "
                                                                "default: every split with an annotation file)")
    c.add_argument("--workers", type=int, default=0, help="processes that read the images (0: this one)")


def _add_stage(sub, name: str) -> None:
    tune = name == "tune"
    t = _subcommand(sub, name, "REINFORCE reward tuning" if tune else "MLE pretraining", cmd_tune if tune else
                    cmd_pretrain, "Trains one stage into the run folder OUT (config.json, checkpoints/, metrics.jsonl, "
                    "eval/val/); re-running the same command resumes bit-identically from its latest checkpoint."
                    + ("" if tune else " A config with train.stage=codec (e.g. the *_codec recipes) trains UViM's "
                       "stage I code model instead of the MLE stage."))
    t.add_argument("config", help="config file (a run's config.json works) or a recipe name")
    t.add_argument("--out", required=True, help="run folder; re-running resumes from its latest checkpoint")
    t.add_argument("--init", required=tune, help="run folder whose standing checkpoint initialises the model: its "
                                                 "best when it trained with patience (train.patience > 0), else "
                                                 "its latest")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. train.lr=3e-5")
    if tune:
        t.add_argument("--reward", help="a task reward name or package.module:function (default: the config's "
                                        "train.reward)")


def _add_eval(sub) -> None:
    e = _subcommand(sub, "eval", "greedy-decode a split, write predictions and metrics.json", cmd_eval,
                    "Writes RUN/eval/SPLIT/metrics.json and the predictions in the task's standard format.")
    e.add_argument("run", help="the run folder")
    e.add_argument("--split", default="val", help="the data split to decode")
    e.add_argument("--checkpoint", choices=("latest", "best"), help=CHECKPOINT_HELP)
    e.add_argument("--max-images", type=int, default=0, help="the first N images of the split; 0: all")


def _add_predict(sub) -> None:
    p = _subcommand(sub, "predict", "run a trained model on your own images", cmd_predict)
    p.add_argument("run", help="the run folder")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", help="folder for predictions in the task's standard format (default: print them)")
    p.add_argument("--checkpoint", choices=("latest", "best"), help=CHECKPOINT_HELP)


def _add_score(sub) -> None:
    from .tasks import TASKS
    s = _subcommand(sub, "score", "score prediction files with a task's metric (prints JSON)", cmd_score,
                    "The files each task needs: rewardtune score TASK --help. Examples:\n"
                    "  rewardtune score detection --pred detections.json --gt instances_val.json\n"
                    "  rewardtune score panoptic --pred-json J --pred-dir D --gt-json J --gt-dir D")
    s.add_argument("task", help=f"a built-in task ({', '.join(TASKS)}) or the import path of a task module that "
                                "defines FILE_SCORER")
    s.add_argument("files", nargs=argparse.REMAINDER, metavar="FILES",
                   help="the task's files, as --NAME PATH (rewardtune score TASK --help lists them)")


def _add_analyze(sub) -> None:
    a = _subcommand(sub, "analyze", "sample pools of a run (and its MLE init): reward distribution, best-of-N, "
                                    "likelihood reranking", cmd_analyze,
                    "Writes OUT/samples.jsonl, OUT/summary.json and plots; the report picks up RUN/analysis.")
    a.add_argument("run", help="the run folder")
    a.add_argument("--init", help="the MLE run the tuned run started from, analysed as 'mle' at the checkpoint "
                                  "tuning started from (best if it trained with patience, else latest)")
    a.add_argument("--samples", type=int, required=True, help="samples per image (K), e.g. 1000")
    a.add_argument("--images", type=int, default=16, help="the first N val images")
    a.add_argument("--out", help="output folder (default: RUN/analysis, which the report picks up)")
    a.add_argument("--seed", type=int, default=0, help="seed of the samples (image i's draws depend on it and i)")
    a.add_argument("--batch-size", type=int, default=256, help="sequences per sampling call (memory bound)")
    a.add_argument("--checkpoint", choices=("latest", "best"), help=CHECKPOINT_HELP)


def _add_report(sub) -> None:
    r = _subcommand(sub, "report", "one self-contained HTML report of runs side by side", cmd_report,
                    "Validation metrics, the analysis where it ran, training curves, a gallery of the same val "
                    "images for every run and each run's config, in one file with no external resource.")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run folders, e.g. the MLE run then the tuned run")
    r.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    r.add_argument("--images", type=int, default=8, help="val images in the gallery")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rewardtune", description="Tune vision models with task rewards.",
                                epilog="rewardtune COMMAND --help says what a command does and takes.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_data(sub)
    for stage in ("pretrain", "tune"):
        _add_stage(sub, stage)
    for add in (_add_eval, _add_predict, _add_score, _add_analyze, _add_report):
        add(sub)
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
