"""Re-score the captioning benchmark's written caption files with pycocoevalcap itself (its Java PTB
tokenizer and Cider), independently of rewardtune's scorer.

    .venv/bin/python benchmarks/captioning_check_pycocoevalcap.py [--out bench_out/captioning]

Needs pycocoevalcap (test extra) and a Java runtime for its tokenizer.
"""
from __future__ import annotations

import argparse
import json
import os


def main() -> None:
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join("bench_out", "captioning"))
    args = p.parse_args()
    with open(os.path.join(args.out, "results.json")) as f:
        results = json.load(f)
    print(f"{'seed':>4} " + " ".join(f"{m:>10}" for m in results[0]["stages"]) + "   (pycocoevalcap Cider)")
    table = []
    for r in results:
        seed = r["seed"]
        data = r.get("data") or os.path.join(args.out, f"data-seed{seed}")  # the world the benchmark wrote
        with open(os.path.join(data, "annotations", "captions_val.json")) as f:
            gt = json.load(f)
        refs: dict = {}
        for a in gt["annotations"]:
            refs.setdefault(a["image_id"], []).append({"caption": a["caption"]})
        row = {}
        for model in r["stages"]:
            with open(os.path.join(args.out, f"seed{seed}", model, "eval", "val", "captions.json")) as f:
                res = {c["image_id"]: [{"caption": c["caption"]}] for c in json.load(f)}
            tok = PTBTokenizer()
            row[model], _ = Cider().compute_score(tok.tokenize({i: refs[i] for i in res}), tok.tokenize(res))
        table.append(row)
        print(f"{seed:>4} " + " ".join(f"{row[m]:10.4f}" for m in r["stages"]))
    mean = {m: sum(row[m] for row in table) / len(table) for m in table[0]}
    print("mean " + " ".join(f"{mean[m]:10.4f}" for m in results[0]["stages"]))
    tuned = results[0]["tuned"]
    print(f"{tuned} / mle = {mean[tuned] / mean['mle']:.3f}; {tuned} / control = {mean[tuned] / mean['control']:.3f}")


if __name__ == "__main__":
    main()
