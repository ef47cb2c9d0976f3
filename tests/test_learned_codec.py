"""The learned code (UViM stage II) behind the Task contract: decoding any token sequence, each sequence decoded
with its own image, encoding cached and batched, the frozen stage I model inside the run folder, and the
error lines of a bad `task_options.code_run`. On the toy task with a dense target (tests/toy_dense_task.py)."""
import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch

import toy_dense_task
from rewardtune import checkpoint
from rewardtune.analysis import analyze_run
from rewardtune.cli import main
from rewardtune.config import from_dict
from rewardtune.evaluate import load_run, predict_split
from rewardtune.model.encdec import Generation
from rewardtune.model.uvim import CodeModel
from rewardtune.tasks.base import decode_all, decode_tokens
from rewardtune.tasks.learned_codec import LearnedCodec, fingerprint
from rewardtune.train import make_optimizer, train

CODE = dict(grid=2, codebook_size=8, code_dim=4, width=16, depth=1, heads=2, head_channels=8)
BASE = {"task": "toy_dense_task", "data": {"image_size": 16},
        "model": {"patch_size": 4, "width": 32, "encoder_depth": 1, "decoder_depth": 1, "heads": 2},
        "train": {"steps": 4, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "eval_every": 4,
                  "checkpoint_every": 4, "log_every": 1, "seed": 3, "threads": 1}}


def code_model(seed=0):
    torch.manual_seed(seed)
    return CodeModel(16, 1, 1, **CODE).eval()


def stage_one_run(folder, task="toy_dense_task", stage="codec", saved=True, seed=0):
    """A stage I run folder as the trainer leaves it: config.json (train.stage "codec", the `code` section)
    and a checkpoint whose model.pt is the CodeModel's state dict and whose state records its code_arch."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"task": task, "data": {"image_size": 16}, "train": {"stage": stage}, "code": CODE}, f)
    model = code_model(seed)
    if saved:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        checkpoint.save(folder, 1, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                        {"task": task, "task_state": {}, "code_arch": model.arch})
    return folder, model


def config(code_run="", codec="learned", **train):
    raw = json.loads(json.dumps(BASE))
    raw["task_options"] = {"codec": codec, "code_run": code_run}
    raw["train"].update(train)
    return from_dict(raw)


def toy_codec():
    return LearnedCodec(code_model(), toy_dense_task.DENSE, batch_size=4)


def test_random_token_sequences_decode_to_valid_outputs():
    codec = toy_codec()
    assert (codec.vocab_size, codec.end_token, codec.max_len) == (9, 8, 5)
    assert codec.codes_of([3, 99, -1]).tolist() == [3, 0, 0, 0]  # out of range -> 0, missing -> 0
    assert codec.codes_of([1, codec.end_token, 2, 2]).tolist() == [1, 0, 0, 0]  # stops at the first end
    assert codec.codes_of(torch.tensor([5, 6, 7, 4, 3, 2])).tolist() == [5, 6, 7, 4]  # too long: the first grid^2
    assert codec.codes_of([10 ** 30, "x", None, 2.0]).tolist() == [0, 0, 0, 2]
    rng = np.random.default_rng(0)
    sequences = [[], [codec.end_token], [codec.end_token] * 9] + [
        rng.integers(-20, 30, int(rng.integers(0, 12))).tolist() for _ in range(40)]  # wrong lengths, no end
    images = torch.rand(len(sequences), 3, 16, 16)
    outputs = codec.decode_batch(sequences, images)
    assert len(outputs) == len(sequences) and all(o in (0, 1, 2, 3) for o in outputs)
    # the batched decode is each sequence's own decode, with its image
    for i in (0, 5, 17):
        assert codec.decode(sequences[i], image=images[i]) == outputs[i]
    with pytest.raises(ValueError, match="image"):
        codec.decode([1, 2, 3, 4])


def test_the_grammar_allows_codes_then_only_the_end():
    g = toy_codec().grammar()
    assert g.shape == (5, 9) and g[:4, :8].all() and not g[:4, 8].any()
    assert g[4].tolist() == [False] * 8 + [True]


class Recorder:
    """A codec that returns, as each output, the mean of the image it was given (and records the calls)."""
    vocab_size, max_len, end_token = 5, 4, 4

    def __init__(self, batched):
        self.calls = []
        if batched:
            self.decode_batch = self._decode_batch

    def decode(self, tokens, step_log_probs=None, image=None):
        self.calls.append("one")
        return (tokens, float(image.mean()))

    def _decode_batch(self, token_lists, images, step_log_probs):
        self.calls.append(len(token_lists))
        return [(t, float(im.mean())) for t, im in zip(token_lists, images)]


@pytest.mark.parametrize("batched", [False, True])
def test_decode_all_gives_each_sample_its_own_image(batched):
    b, n = 3, 4
    images = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 2, 2).contiguous()
    tokens = torch.arange(b * n).view(-1, 1).repeat(1, 2)
    gen = Generation(tokens, torch.full((b * n,), 2), torch.zeros(b * n), torch.ones(b * n, dtype=torch.bool))
    codec = Recorder(batched)
    outputs = decode_all(codec, gen, images=images)
    assert [o[1] for o in outputs] == [float(i // n) for i in range(b * n)]  # sequence i: image i // N
    assert [o[0] for o in outputs] == [[i, i] for i in range(b * n)]
    assert codec.calls == ([b * n] if batched else ["one"] * (b * n))
    with pytest.raises(ValueError):
        decode_all(codec, gen, images=torch.zeros(5, 3, 2, 2))  # 12 sequences do not split over 5 images
    with pytest.raises(ValueError, match="3 token sequences but 2 images"):
        decode_tokens(codec, [[0], [1], [2]], images=torch.zeros(2, 3, 2, 2))  # one image each, for any codec
    assert codec.calls == ([b * n] if batched else ["one"] * (b * n))  # refused before the codec is called


def test_encoding_is_batched_and_cached_by_content():
    codec = toy_codec()
    calls = []
    original = codec.code_model.encode
    codec.code_model.encode = lambda dense: calls.append(len(dense)) or original(dense)
    targets = [0, 1, 2, 3, 1, 2, 0, 3, 3, 2]
    codec.prepare(targets)
    first = codec.encode_batch([2, 3])
    assert calls == [4]  # the queued split, encoded once: 4 distinct targets in one chunk
    again = codec.encode_batch(copy.deepcopy(targets))
    assert calls == [4]  # cached: equal targets (other objects) are not encoded again
    assert [t.tolist() for t in first] == [again[2].tolist(), again[3].tolist()]
    assert all(len(t) == 5 and t[-1] == codec.end_token and 0 <= t[:-1].min() and t[:-1].max() < 8 for t in again)
    direct = original(toy_dense_task.to_input([0, 1, 2, 3]))
    assert torch.equal(torch.stack(again[:4])[:, :-1], direct)  # the cache holds what the oracle says
    assert codec.encode(3).tolist() == again[3].tolist() and calls == [4]
    assert fingerprint({"a": np.zeros(3)}) != fingerprint({"a": np.zeros(4)})
    assert fingerprint({"a": np.zeros(3), "b": [1]}) == fingerprint({"b": [1], "a": np.zeros(3)})


def test_the_frozen_codec_stays_in_eval_mode_and_out_of_the_optimizer():
    from rewardtune.model.encdec import build_model
    codec = toy_codec()
    model = build_model(config().model, 16, codec)
    model.train()
    assert model.training and not codec.training and not codec.code_model.training
    frozen = {id(p) for p in codec.parameters()}
    assert frozen and not any(p.requires_grad for p in codec.parameters())
    optimizer, _ = make_optimizer(model, config().train)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & frozen
    assert in_optimizer == {id(p) for p in model.parameters() if id(p) not in frozen}


@pytest.fixture(scope="module")
def learned_runs(tmp_path_factory):
    """A stage I run, a stage II MLE run on its code and a tuning run from that: (stage I, its model, MLE, tuned)."""
    root = tmp_path_factory.mktemp("learned")
    code_run, stage_one = stage_one_run(str(root / "stage1"))
    mle, tuned = str(root / "mle"), str(root / "tuned")
    train(config(code_run), mle)
    train(config(code_run="/no/such/run", stage="reward", lr=1e-3, schedule="constant", num_samples=3, steps=2,
                 eval_every=2, checkpoint_every=2), tuned, init_dir=mle)  # rebuilt from the state, never read
    return code_run, stage_one, mle, tuned


def test_the_run_folder_carries_the_stage_one_weights_and_decodes_alone(learned_runs, tmp_path):
    code_run, stage_one, mle, tuned = learned_runs
    weights = torch.load(os.path.join(checkpoint.find(mle), "model.pt"), weights_only=True)
    for key, value in stage_one.state_dict().items():
        assert torch.equal(weights[f"codec.code_model.{key}"], value), key  # frozen: unchanged by training
    with open(os.path.join(checkpoint.find(mle), "state.json")) as f:
        state = json.load(f)["task_state"]
    assert state["codec"] == "learned" and state["code_run"] == os.path.abspath(code_run)
    assert state["code_checkpoint"] == "step-1" and state["arch"] == stage_one.arch
    _, task, model = load_run(mle)
    split = task.datasets()["val"]
    before = predict_split(model, task, split, range(8))
    copy_of_run = str(tmp_path / "mle")
    shutil.copytree(mle, copy_of_run)
    moved = str(tmp_path / "stage1-moved")
    shutil.move(code_run, moved)  # the stage I run is gone
    try:
        _, task2, model2 = load_run(copy_of_run)
        assert predict_split(model2, task2, task2.datasets()["val"], range(8)) == before
        assert isinstance(task2.codec, LearnedCodec)
        # the tuned run too, and `analyze` shows the learned code's ceiling beside the grid code's
        summary = analyze_run(tuned, init_dir=mle, samples=4, images=4, out_dir=str(tmp_path / "analysis"))
    finally:
        shutil.move(moved, code_run)
    assert set(summary["codec_ceiling"]["rewards"]) == set(summary["grid_codec_ceiling"]["rewards"]) == {"accuracy",
                                                                                                 "regions"}
    assert summary["grid_codec_ceiling"]["rewards"]["accuracy"] == 1.0  # the toy's grid code is lossless
    images, targets, _ = split.batch(range(4))
    codes = [task.codec.encode(t).tolist() for t in targets]
    expected = np.mean([o == t for o, t in zip(task.codec.decode_batch(codes, images), targets)])
    assert summary["codec_ceiling"]["rewards"]["accuracy"] == pytest.approx(expected)


def test_the_reward_step_logs_its_time_split(learned_runs):
    tuned = learned_runs[3]
    with open(os.path.join(tuned, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if "train/loss" in line]
    for key in ("train/time_sample", "train/time_decode", "train/time_reward"):
        assert all(r[key] >= 0 for r in rows) and any(r[key] > 0 for r in rows), key


# ---- bad code_run: one line naming it, exit 2, nothing written ------------------------------------------------

def pretrain(tmp_path, capsys, code_run, codec="learned", init=None, stage="mle"):
    path = str(tmp_path / "config.json")
    raw = json.loads(json.dumps(BASE))
    raw["task_options"] = {"codec": codec, "code_run": code_run}
    raw["train"]["stage"] = stage
    if stage == "reward":
        raw["train"]["num_samples"] = 2
    with open(path, "w") as f:
        json.dump(raw, f)
    out = str(tmp_path / "out")
    capsys.readouterr()
    argv = ["tune" if init else "pretrain", path, "--out", out] + (["--init", init] if init else [])
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err, out


def test_a_missing_code_run_is_one_line_exit_2(tmp_path, capsys):
    code, err, out = pretrain(tmp_path, capsys, str(tmp_path / "nowhere"))
    assert code == 2 and len(err) == 1 and "task_options.code_run" in err[0] and "nowhere" in err[0]
    assert not os.path.exists(out)
    code, err, _ = pretrain(tmp_path, capsys, "")
    assert code == 2 and len(err) == 1 and "task_options.code_run" in err[0]


def test_a_stage_one_run_without_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    run, _ = stage_one_run(str(tmp_path / "empty"), saved=False)
    code, err, out = pretrain(tmp_path, capsys, run)
    assert code == 2 and len(err) == 1 and run in err[0] and "no checkpoint" in err[0]
    assert not os.path.exists(out)


def test_another_tasks_stage_one_run_is_one_line_exit_2(tmp_path, capsys):
    run, _ = stage_one_run(str(tmp_path / "panoptic_codec"), task="panoptic")
    code, err, out = pretrain(tmp_path, capsys, run)
    assert code == 2 and len(err) == 1 and run in err[0] and "'panoptic'" in err[0]
    assert not os.path.exists(out)


def test_a_run_that_is_not_stage_one_is_one_line_exit_2(tmp_path, capsys):
    run, _ = stage_one_run(str(tmp_path / "mle"), stage="mle")
    code, err, out = pretrain(tmp_path, capsys, run)
    assert code == 2 and len(err) == 1 and run in err[0] and "not a stage I run" in err[0]
    assert not os.path.exists(out)


def test_tuning_a_learned_code_run_as_grid_is_one_line_exit_2(learned_runs, tmp_path, capsys):
    mle = learned_runs[2]
    code, err, out = pretrain(tmp_path, capsys, "", codec="grid", init=mle, stage="reward")
    assert code == 2 and len(err) == 1 and "task_options.codec" in err[0] and "learned" in err[0]
    assert not os.path.exists(os.path.join(out, "checkpoints"))


def test_a_task_without_a_dense_target_has_no_learned_code(tmp_path):
    from rewardtune.tasks.learned_codec import with_codec
    import toy_task
    c = config("x")
    with pytest.raises(Exception, match="no dense target"):
        with_codec(toy_task.make_task(c), c, "learned", "x", None)
    with pytest.raises(Exception, match="not one of"):
        with_codec(toy_task.make_task(c), c, "vq", "", None)


def test_the_report_shows_the_truth_through_the_code_beside_the_runs(learned_runs, tmp_path):
    from rewardtune.report.gallery import build_gallery
    from rewardtune.report.html import write_report
    _, _, mle, tuned = learned_runs
    gallery = build_gallery([mle, tuned], ["mle", "tuned"], images=3)
    assert [c.label for c in gallery.columns] == ["mle", "tuned"]  # one column per run, as the tables read them
    assert gallery.code.label == "truth through the code" and len(gallery.code.cells) == 3
    assert all(cell.png and "accuracy" in cell.rewards for cell in gallery.code.cells)
    with open(write_report([mle, tuned], str(tmp_path / "report.html"), images=3)) as f:
        html = f.read()
    assert "<th>truth through the code</th><th>mle</th><th>tuned</th>" in html
