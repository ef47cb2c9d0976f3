"""Tuned vs MLE benchmark for any task: MLE to its plateau, then the task's tuning stages in order
(detection: the recall reward, then the map reward, as the paper did), against the control: the MLE
model trained on for as many steps as tuning took, at the learning rate MLE ended with.

MLE's plateau: the recipe trains with patience; then MLE goes on from its best checkpoint at the learning
rate its schedule ends with (the control's), with the same patience, for up to a third of its steps (run
mle_more), and the better of the two runs by the monitored val metric is the MLE the table shows and the
start of the control and of tuning. A schedule can end before patience stops it, and patience can stop a
run while the learning rate is still high; either way the gain of a lower learning rate belongs to MLE, not
to tuning.

    .venv/bin/python benchmarks/reward_benchmark.py detection --seeds 0 1 2
    .venv/bin/python benchmarks/reward_benchmark.py captioning --seeds 0 1 2
    .venv/bin/python benchmarks/reward_benchmark.py detection --quick       # tiny, checks the chain
    .venv/bin/python benchmarks/reward_benchmark.py detection --level faint --num-train 6000 --hedge
    .venv/bin/python benchmarks/reward_benchmark.py panoptic --codec learned --seeds 0 1 2

`--codec learned` (panoptic, colorization): UViM. Stage I first (recipe <task>_bench_codec: the learned code),
then stage II MLE (<task>_bench_mle with task_options.codec=learned on that run; panoptic: 6000 steps, to its
plateau, on 32000 train images while stage I reads the first 8000), tuning (panoptic: 450 steps of per-cell
credit, train.credit=local) and the control as for the grid code; its runs go to OUT/learned/, its results to
OUT/results_learned.json, and the table puts grid and learned side by side when OUT/results.json (the grid
benchmark) is there too, with the wall time of every stage and the reward step's time split (sampling /
decoding the samples / reward, as the tuning run logged it: train/time_sample, time_decode, time_reward).

Recipes: rewardtune/configs/<task>_bench_mle.json and <task>_bench_tune*.json (sorted by the
"stage_order" in TUNE_STAGES). Every figure is computed by `rewardtune score` from the written
prediction files of RUN/eval/val. Re-running resumes. Results go to OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rewardtune.config import apply_overrides, from_dict  # noqa: E402
from rewardtune.data.shapes import generate_shapes  # noqa: E402
from rewardtune.recipes import recipe_dict  # noqa: E402
from rewardtune.score import score  # noqa: E402
from rewardtune.train import train  # noqa: E402

# Tuning stages per task as (name, the run it starts from); default [("tune", "mle")]. Detection chains the
# paper's recall stage into the map stage; colorization branches twice from MLE (colorfulness alone, and
# colorfulness with the fidelity term).
TUNE_STAGES = {"detection": [("tune_recall", "mle"), ("tune_map", "tune_recall")],
               "colorization": [("tune", "mle"), ("tune_fidelity", "mle")]}
# `--hedge` (detection): one stage from MLE with the hedge token (recipe detection_bench_tune_hedge)
HEDGE_STAGES = [("tune_hedge", "mle")]
COLUMNS = {"detection": ("map", "ap50", "ap75", "ar100"), "captioning": ("cider", "bleu4", "rougeL", "mean_length", "distinct_captions"),
           "colorization": ("colorfulness", "psnr", "ssim", "hist_distance"),
           "panoptic": ("pq", "sq", "rq", "pq_things", "pq_stuff")}
LEARNED_TASKS = ("panoptic", "colorization")  # the tasks with a dense target: --codec learned
QUICK_CODE = ["code.width=32", "code.depth=1", "code.heads=2", "code.codebook_size=32"]  # stage I, with --quick
TIME_SPLIT = ("time_sample", "time_decode", "time_reward")
# --codec learned: what the learned code's stages set beside their recipes (stage II MLE trained to its plateau:
# 6000 cosine steps with patience; panoptic tuning with per-cell credit, docs/results.md#uvim-learned-code).
# Panoptic: stage I learns its code from the first 8000 train images; stage II and tuning read all of
# LEARNED_NUM_TRAIN (stage II on 8000 images calls one thing in six by the wrong class on val; on 32000, one
# in ten, and its MLE is +4.8 PQ higher).
LEARNED_STAGE = {"panoptic": {"codec": ["data.max_train_images=8000"], "mle": ["train.steps=6000"],
                              "tune": ["train.credit=local", "train.steps=450", "train.eval_every=50",
                                       "train.checkpoint_every=50"]}}
LEARNED_NUM_TRAIN = {"panoptic": 32000}  # --num-train's default with --codec learned
QUICK = ["train.steps=4", "train.eval_every=2", "train.checkpoint_every=2", "train.batch_size=8",
         "train.eval_images=16", "model.width=32", "model.encoder_depth=1", "model.decoder_depth=1", "model.heads=2"]


def config(task: str, stage: str, data_root: str, seed: int, extra: list[str]):
    raw = recipe_dict(f"{task}_bench_{stage}")
    return from_dict(apply_overrides(raw, [f"data.root={json.dumps(data_root)}", f"train.seed={seed}", *extra]))


def score_args(task: str, run: str, data: str) -> dict:
    ev, ann = os.path.join(run, "eval", "val"), os.path.join(data, "annotations")
    return {"detection": {"pred": f"{ev}/detections.json", "gt": f"{ann}/instances_val.json"},
            "captioning": {"pred": f"{ev}/captions.json", "gt": f"{ann}/captions_val.json"},
            "colorization": {"pred": f"{ev}/images", "gt": f"{data}/images/val"},
            "panoptic": {"pred_json": f"{ev}/panoptic.json", "pred_dir": f"{ev}/panoptic",
                         "gt_json": f"{ann}/panoptic_val.json", "gt_dir": f"{ann}/panoptic_val"}}[task]


def scored(task: str, run: str, data: str) -> dict:
    metrics = score(task, score_args(task, run, data))
    if task == "detection":
        with open(os.path.join(run, "eval", "val", "detections.json")) as f:
            dets = len(json.load(f))
        with open(os.path.join(data, "annotations", "instances_val.json")) as f:
            gt = json.load(f)
        metrics["boxes_per_image"] = dets / max(1, len(gt["images"]))
        metrics["gt_boxes_per_image"] = len(gt["annotations"]) / max(1, len(gt["images"]))
    return metrics


def timed(fn, *args, **kwargs) -> float:
    t = time.time()
    fn(*args, **kwargs)
    return time.time() - t


def val_curve(run: str, metric: str) -> list:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [(r["step"], r[f"val/{metric}"]) for r in map(json.loads, f) if f"val/{metric}" in r]


def stopped_early(run: str, steps: int) -> bool:
    """Whether RUN's patience stopped it before its `steps` (its last logged step is short of them)."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return max(r["step"] for r in map(json.loads, f)) < steps


def best_value(run: str, metric: str, lower_is_better: bool = False) -> float:
    """RUN's best logged val/<metric>, negated when lower is better (so that larger is better either way)."""
    values = [v for _, v in val_curve(run, metric)]
    return max(-v if lower_is_better else v for v in values)


def last_logged(run: str, key: str):
    """The last value of `key` in RUN/metrics.jsonl (None if never logged)."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        values = [r[key] for r in map(json.loads, f) if key in r]
    return values[-1] if values else None


def logged_means(run: str, keys: list[str]) -> dict:
    """{key: mean over RUN/metrics.jsonl's records of it (None if never logged)}."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    out = {}
    for key in keys:
        values = [r[key] for r in records if key in r]
        out[key.split("/")[-1]] = sum(values) / len(values) if values else None
    return out


def run_seed(task: str, seed: int, args) -> dict:
    # one folder per world: the grid and learned runs of a task share it only when they ask for the same one
    data = os.path.join(args.out, f"data-seed{seed}-{args.level}-{args.num_train}x{args.num_val}")
    if not os.path.exists(os.path.join(data, "world.json")):
        generate_shapes(data, num_train=args.num_train, num_val=args.num_val, num_test=16, image_size=64,
                        seed=seed, level=args.level)
    extra = QUICK if args.quick else []
    plan = HEDGE_STAGES if task == "detection" and args.hedge else TUNE_STAGES.get(task, [("tune", "mle")])
    stages, parent = [name for name, _ in plan], dict(plan)
    runs_dir = os.path.join(args.out, "learned") if args.codec == "learned" else args.out
    run = lambda name: os.path.join(runs_dir, f"seed{seed}", name)  # noqa: E731
    times = {}
    # a stage's own settings for the learned code, before --quick's (which then win)
    own = lambda stage: (LEARNED_STAGE.get(task, {}).get(stage, []) if args.codec == "learned" else [])  # noqa: E731
    if args.codec == "learned":  # stage I: the learned code; every later stage writes it
        times["codec"] = timed(train, config(task, "codec", data, seed,
                                             own("codec") + extra + (QUICK_CODE if args.quick else [])), run("codec"))
        extra = extra + ["task_options.codec=learned", f"task_options.code_run={json.dumps(run('codec'))}"]
    mle_config = config(task, "mle", data, seed, own("mle") + extra)
    times["mle"] = timed(train, mle_config, run("mle"))
    mle = mle_config.train
    floor_lr = mle.lr * max(mle.min_lr_ratio, 0.01)  # the learning rate MLE ended with: the control's and mle_more's
    primary = mle.monitor.lstrip("-") or COLUMNS[task][0]  # the metric MLE's plateau is judged on
    plateau, more_info = "mle", None
    if mle.patience:  # MLE goes on at its final learning rate until val stops improving there too
        more = config(task, "mle", data, seed, own("mle") + [
            f"train.steps={max(1, mle.steps // 3)}", "train.schedule=constant", "train.warmup_steps=0",
            f"train.lr={floor_lr}"] + extra)
        times["mle_more"] = timed(train, more, run("mle_more"), init_dir=run("mle"))
        times["mle"] += times["mle_more"]  # the table's MLE row: to its plateau, both runs
        more_info = {"steps": more.train.steps, "lr": floor_lr, "curve": val_curve(run("mle_more"), primary),
                     "first_stopped_early": stopped_early(run("mle"), mle.steps),
                     "stopped_early": stopped_early(run("mle_more"), more.train.steps)}
        lower = mle.monitor.startswith("-")
        if best_value(run("mle_more"), primary, lower) > best_value(run("mle"), primary, lower):
            plateau = "mle_more"
    start_of = lambda name: run(plateau if name == "mle" else name)  # noqa: E731
    for stage, start in plan:
        times[stage] = timed(train, config(task, stage, data, seed, own(stage) + extra), run(stage),
                             init_dir=start_of(start))
    steps = {s: config(task, s, data, seed, own(s) + extra).train.steps for s in stages}
    chain = lambda s: steps[s] + (chain(parent[s]) if parent[s] != "mle" else 0)  # noqa: E731
    tune_steps = max(chain(s) for s in stages)  # the control trains as long as the longest tuning chain
    control = config(task, "mle", data, seed, own("mle") + extra + [
        f"train.steps={tune_steps}", "train.schedule=constant", "train.warmup_steps=0", "train.patience=0",
        f"train.lr={floor_lr}", f"train.eval_every={max(1, tune_steps // 4)}"])
    times["control"] = timed(train, control, run("control"), init_dir=start_of("mle"))
    names = ["mle", "control", *stages]
    sampling = {s: {k: last_logged(run(s), f"train/{k}") for k in ("reward", "no_end_rate", "all_equal_frac")}
                for s in stages}
    leaves = [s for s in stages if s not in parent.values()]
    extras = {}
    if task == "colorization":
        extras["grid"] = colorization_grid(os.path.join(runs_dir, f"seed{seed}"), data, leaves,
                                           os.path.join(runs_dir, f"seed{seed}", "grid.png"), mle=plateau)
    if task == "panoptic":
        extras["timing"] = sample_vs_reward_time(run(stages[-1]), seed=seed)
    if task == "detection":  # the headroom before and after tuning (rewardtune analyze TUNED --init MLE)
        from rewardtune.analysis import analyze_run
        images, samples = (16, 4) if args.quick else (args.num_val, 16)
        summary = analyze_run(run(stages[-1]), init_dir=start_of("mle"), samples=samples, images=images, seed=seed,
                              out_dir=os.path.join(run(stages[-1]), "analysis"))
        extras["headroom"] = summary.get("headroom", {})
    extras["time_split"] = {s: logged_means(run(s), [f"train/{k}" for k in TIME_SPLIT]) for s in stages}
    metrics = {n: scored(task, start_of(n), data) for n in names}
    if args.codec == "learned":  # the code's ceiling: stage I's last validation, decode(encode(truth)) on val
        metrics["codec"] = {c: last_logged(run("codec"), f"val/{c}") for c in COLUMNS[task]}
    return {**extras, "codec": args.codec, "seed": seed, "data": data, "stages": names, "tuned": stages[-1],
            "leaves": leaves, "tune_steps": tune_steps, "times": times,
            "sampling": sampling,
            "metrics": metrics, "plateau": plateau, "mle_more": more_info,
            "mle_curve": val_curve(run("mle"), primary),
            "mle_curve_metric": primary}


def sample_vs_reward_time(run: str, images: int = 32, samples: int = 8, seed: int = 0) -> dict:
    """Seconds to sample images x samples sequences (one cached, batched call, as the reward step does) and
    to decode and reward them with the run's reward, measured back to back in this process."""
    import torch
    from rewardtune.evaluate import load_run
    from rewardtune.outputs import resolve_reward
    from rewardtune.tasks.base import decode_all
    cfg, task, model = load_run(run)
    split = task.datasets()["val"]
    batch, targets, _ = split.batch(list(range(min(images, len(split)))))
    reward_fn = resolve_reward(task, cfg.train.reward)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.generate(batch[:2], 2)  # warm-up
        t0 = time.perf_counter()
        gen = model.generate(batch, samples)
        t1 = time.perf_counter()
        outputs = decode_all(task.codec, gen, images=batch)
        t2 = time.perf_counter()
        reward_fn(outputs, [t for t in targets for _ in range(samples)])
        t3 = time.perf_counter()
    return {"sequences": len(outputs), "tokens": int(gen.tokens.shape[1]), "sample_s": t1 - t0,
            "decode_s": t2 - t1, "reward_s": t3 - t2}


def colorization_grid(seed_dir: str, data: str, leaves: list[str], out_png: str, count: int = 8,
                      mle: str = "mle") -> str:
    """One row per val image (the first `count` by name): gray input | MLE (run `mle`) | each tuned model | truth."""
    import numpy as np
    from PIL import Image
    val = os.path.join(data, "images", "val")
    names = sorted(os.listdir(val))[:count]
    rows = []
    for name in names:
        truth = np.asarray(Image.open(os.path.join(val, name)).convert("RGB"))
        gray = np.asarray(Image.open(os.path.join(val, name)).convert("L").convert("RGB"))
        cols = [gray] + [np.asarray(Image.open(os.path.join(seed_dir, m, "eval", "val", "images", name)).convert("RGB"))
                         for m in [mle, *leaves]] + [truth]
        rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255) for c in cols], 1))
    Image.fromarray(np.concatenate(rows, 0)).resize((rows[0].shape[1] * 2, len(rows) * rows[0].shape[0] * 2),
                                                    Image.NEAREST).save(out_png)
    return out_png


def print_table(task: str, results: list[dict]) -> None:
    cols = COLUMNS[task]
    extra = ["boxes_per_image"] if task == "detection" else []
    print(f"\n{'seed':>4} {'model':<12} " + " ".join(f"{c:>11}" for c in cols + tuple(extra)) + f" {'wall s':>7}")
    for r in results:
        for name in r["stages"]:
            m = r["metrics"][name]
            print(f"{r['seed']:>4} {name:<12} " + " ".join(f"{m[c]:11.4f}" for c in cols + tuple(extra))
                  + f" {r['times'][name]:7.0f}")
    if task == "detection":
        print(f"(ground truth: {results[0]['metrics']['mle']['gt_boxes_per_image']:.2f} boxes per image)")
    leaves = results[0].get("leaves", [results[0]["tuned"]])
    avg = lambda name, c: sum(r["metrics"][name][c] for r in results) / len(results)  # noqa: E731
    for name in ("mle", "control", *leaves):
        print(f"mean {name:<12}" + " ".join(f"{avg(name, c):11.4f}" for c in cols))
    for c in cols:
        for name in leaves:
            print(f"{c}: {name} - MLE {avg(name, c) - avg('mle', c):+.4f} (x{avg(name, c) / (avg('mle', c) or float('nan')):.3f}); "
                  f"{name} - control {avg(name, c) - avg('control', c):+.4f} (mean of {len(results)} seeds)")
    for r in results:
        for stage, logged in r.get("sampling", {}).items():
            print(f"seed {r['seed']} {stage}: last logged train reward {logged['reward']}, share of samples with "
                  f"no end token {logged['no_end_rate']}, share of images whose samples all scored the same "
                  f"{logged['all_equal_frac']}")
    for r in results:
        for label, headroom in r.get("headroom", {}).items():
            print(f"seed {r['seed']} headroom ({label}): " + ", ".join(
                f"{k} {v:.4f}" for k, v in headroom.items() if isinstance(v, float)))
    for r in results:
        if "grid" in r:
            print(f"seed {r['seed']} grid (gray input | MLE | {' | '.join(leaves)} | truth): {r['grid']}")
        if "timing" in r:
            t = r["timing"]
            print(f"seed {r['seed']} {t['sequences']} maps of {t['tokens']} tokens: sample {t['sample_s']:.3f} s, "
                  f"decode {t['decode_s']:.3f} s, reward {t['reward_s']:.3f} s (decode + reward "
                  f"{(t['decode_s'] + t['reward_s']) / t['sample_s']:.2f}x the sampling time)")
    for r in results:
        print(f"seed {r['seed']} MLE val/{r.get('mle_curve_metric', cols[0])} curve (step: value): "
              + ", ".join(f"{s}: {v:.4f}" for s, v in r["mle_curve"]))
        if r.get("mle_more"):
            m = r["mle_more"]
            first = "stopped by patience" if m["first_stopped_early"] else "ran all its steps"
            ended = "stopped by patience" if m["stopped_early"] else "ran all its steps"
            print(f"seed {r['seed']} MLE {first}; from its best checkpoint it went on at lr {m['lr']:.3g} (run "
                  f"mle_more, up to {m['steps']} steps, {ended}): " + ", ".join(f"{s}: {v:.4f}" for s, v in m["curve"])
                  + f"; the MLE row, the control's and tuning's start: run {r['plateau']}")
    for r in results:
        for stage, split in r.get("time_split", {}).items():
            if all(split.get(k) is not None for k in TIME_SPLIT):
                print(f"seed {r['seed']} {stage}: reward step {sum(split.values()):.3f} s: sampling "
                      f"{split['time_sample']:.3f} s, decoding {split['time_decode']:.3f} s, reward "
                      f"{split['time_reward']:.3f} s (mean over the logged steps)")


def mean_over_seeds(results: list[dict], get) -> Optional[float]:
    values = [get(r) for r in results]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def print_side_by_side(task: str, by_codec: dict) -> None:
    """Grid and learned code, mean over each one's seeds: every model's metrics, each stage's wall time and
    the tuning runs' reward step split."""
    codecs = [c for c in ("grid", "learned") if by_codec.get(c)]
    cols = COLUMNS[task]
    print(f"\n{'model':<14} {'codec':<8} " + " ".join(f"{c:>11}" for c in cols) + f" {'wall s':>8} {'seeds':>5}")
    names = []
    for c in codecs:
        names += [n for n in ["codec", *by_codec[c][0]["stages"]] if n not in names]
    for name in names:
        for c in codecs:
            results = [r for r in by_codec[c] if name in r["times"]]
            if not results:
                continue
            nums = [mean_over_seeds(results, lambda r, k=k: r["metrics"].get(name, {}).get(k)) for k in cols]
            wall = mean_over_seeds(results, lambda r: r["times"].get(name))
            print(f"{name:<14} {c:<8} " + " ".join(f"{v:11.4f}" if v is not None else f"{'':>11}" for v in nums)
                  + f" {wall:8.0f} {len(results):>5}")
    for c in codecs:
        for stage in by_codec[c][0].get("time_split", {}):
            split = {k: mean_over_seeds(by_codec[c], lambda r, k=k: r.get("time_split", {}).get(stage, {}).get(k))
                     for k in TIME_SPLIT}
            if all(v is not None for v in split.values()):
                print(f"{c} {stage}: reward step sampling {split['time_sample']:.3f} s, decoding "
                      f"{split['time_decode']:.3f} s, reward {split['time_reward']:.3f} s")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("task", choices=sorted(COLUMNS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", help="default bench_out/<task>")
    p.add_argument("--level", default=None, help="shapes world level (default: medium)")
    p.add_argument("--num-train", type=int, default=None,
                   help="train images of the shapes world (default 8000; panoptic --codec learned: 32000)")
    p.add_argument("--num-val", type=int, default=256)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--hedge", action="store_true", help="detection: tune from MLE with the hedge token "
                   "(detection_bench_tune_hedge) instead of the paper's recall then map stages")
    p.add_argument("--codec", choices=("grid", "learned"), default="grid",
                   help="learned: UViM (stage I, then stage II on its code); panoptic and colorization")
    args = p.parse_args()
    if args.hedge and args.task != "detection":
        p.error("--hedge: detection only")
    if args.codec == "learned" and args.task not in LEARNED_TASKS:
        p.error(f"--codec learned: only {', '.join(LEARNED_TASKS)} have a dense target")
    args.out = args.out or os.path.join("bench_out", args.task)
    args.level = args.level or "medium"
    if args.num_train is None:
        args.num_train = LEARNED_NUM_TRAIN.get(args.task, 8000) if args.codec == "learned" else 8000
    if args.quick:
        args.num_train, args.num_val = 64, 16
    print(f"{args.task} benchmark: shapes world '{args.level}', {args.num_train} train / {args.num_val} val images, "
          "seeds " + " ".join(map(str, args.seeds)), flush=True)
    results = []
    os.makedirs(args.out, exist_ok=True)
    names = {"grid": "results.json", "learned": "results_learned.json"}
    for seed in args.seeds:
        results.append(run_seed(args.task, seed, args))
        with open(os.path.join(args.out, names[args.codec]), "w") as f:
            json.dump(results, f, indent=1)
    print_table(args.task, results)
    by_codec = {args.codec: results}
    other = "grid" if args.codec == "learned" else "learned"
    if args.task in LEARNED_TASKS and os.path.exists(os.path.join(args.out, names[other])):
        with open(os.path.join(args.out, names[other])) as f:
            by_codec[other] = [r for r in json.load(f) if r.get("codec", "grid") == other]
    if args.codec == "learned" or by_codec.get("learned"):
        print_side_by_side(args.task, by_codec)
    if args.quick:
        return
    sys.argv = [sys.argv[0]]
    if args.task == "captioning":  # the scoring-speed line, in the same run
        import captioning_cider_speed
        captioning_cider_speed.main()
    if args.task == "detection":  # the sampler-speed and MFU lines, in the same run
        import speed
        speed.main()


if __name__ == "__main__":
    main()
