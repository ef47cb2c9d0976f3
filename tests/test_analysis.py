"""The paper's analysis: exact best-of-N / reranking statistics, and `analyze_run` end to end on the toy task."""
import itertools
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rewardtune.analysis import (_reward_fns, analyze_run, codec_ceiling, format_summary, pool_headroom,
                                 sample_pool)
from rewardtune.evaluate import load_run, predict_split
from rewardtune.report.stats import best_of_n_curve, rerank_curve, reward_summary, top_of_subset_weights
from test_train_core import toy, toy_mle_and_tuned

# One image, four samples. Rewards 0..3; the most likely sample (log-prob -1) has reward 0.
REWARDS = np.array([[0.0, 1.0, 2.0, 3.0]])
LOG_PROBS = np.array([[-1.0, -3.0, -2.0, -4.0]])


def test_best_of_n_on_a_hand_made_table():
    # N=2: the 6 pairs have maxima 1, 2, 3, 2, 3, 3 -> 14/6; N=3: the 4 triples 2, 3, 3, 3 -> 11/4.
    np.testing.assert_allclose(best_of_n_curve(REWARDS), [1.5, 14 / 6, 11 / 4, 3.0])


def test_likelihood_reranking_on_a_hand_made_table():
    # N=2: of the 6 pairs, the more likely member's reward: (0,1)->0 (0,2)->0 (0,3)->0 (1,2)->2 (1,3)->1
    # (2,3)->2, mean 5/6. N=3: (0,1,2)->0 (0,1,3)->0 (0,2,3)->0 (1,2,3)->2, mean 1/2. N=4: 0.
    np.testing.assert_allclose(rerank_curve(REWARDS, LOG_PROBS), [1.5, 5 / 6, 0.5, 0.0])


def test_reranking_breaks_likelihood_ties_uniformly():
    # Samples 0 and 1 are equally likely: a tie counts as their mean reward.
    rewards, log_probs = np.array([[1.0, 0.0, 0.0]]), np.array([[-1.0, -1.0, -2.0]])
    np.testing.assert_allclose(rerank_curve(rewards, log_probs), [1 / 3, 0.5, 0.5])


def _brute_force(rewards, log_probs, n):
    best, ranked = [], []
    for r, lp in zip(rewards, log_probs):
        subsets = list(itertools.combinations(range(len(r)), n))
        best.append(np.mean([r[list(s)].max() for s in subsets]))
        top = [[r[j] for j in s if lp[j] == lp[list(s)].max()] for s in subsets]
        ranked.append(np.mean([np.mean(t) for t in top]))
    return np.mean(best), np.mean(ranked)


def test_curves_equal_the_average_over_all_subsets_and_images():
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 5, (3, 8)).astype(float)
    log_probs = rng.integers(-3, 0, (3, 8)).astype(float)  # many ties
    best, ranked = best_of_n_curve(rewards), rerank_curve(rewards, log_probs)
    for n in range(1, 9):
        np.testing.assert_allclose((best[n - 1], ranked[n - 1]), _brute_force(rewards, log_probs, n))
    assert np.all(np.diff(best) >= -1e-12)  # more samples never lower the oracle


def test_subset_weights_are_distributions_even_for_a_thousand_samples():
    w = top_of_subset_weights(1000)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-9)
    assert w[0, 0] == pytest.approx(1e-3) and w[-1, -1] == pytest.approx(1.0)


def test_reward_summary_on_a_hand_made_table():
    s = reward_summary(np.arange(200.0).reshape(2, 100), greedy=np.array([3.0, 5.0]))
    assert s["mean"] == pytest.approx(99.5) and s["median"] == pytest.approx(99.5)
    assert s["p99"] == pytest.approx(197.01) and s["top1_mean"] == pytest.approx(198.5)
    assert s["greedy"] == 4.0 and s["max"] == 199.0


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    return toy_mle_and_tuned(tmp_path_factory.mktemp("runs"))


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_analyze_run_end_to_end_on_the_toy_task(toy_runs, tmp_path):
    mle, tuned = toy_runs
    out = str(tmp_path / "analysis")
    summary = analyze_run(tuned, init_dir=mle, samples=20, images=4, out_dir=out, seed=5, batch_size=8)
    rows = _rows(os.path.join(out, "samples.jsonl"))
    assert len(rows) == 2 * 4 * 20
    assert {r["model"] for r in rows} == {"mle", "tuned"} and {r["sample"] for r in rows} == set(range(20))
    assert all(r["log_prob"] <= 0 and r["accuracy"] in (0.0, 1.0) for r in rows)
    for label in ("mle", "tuned"):
        s = summary["models"][label]["accuracy"]
        mine = [r["accuracy"] for r in rows if r["model"] == label]
        assert s["mean"] == pytest.approx(np.mean(mine)) == pytest.approx(s["best_of_n"][1])
        assert s["best_of_n"][10] >= s["best_of_n"][1] and len(s["best_of_n_curve"]) == 20
        # greedy reward = the accuracy of the model's greedy outputs on the same 4 images
        _, task, model = load_run(mle if label == "mle" else tuned, "best" if label == "mle" else "latest")
        outputs, targets, _ = predict_split(model, task, task.datasets()["val"], range(4))
        assert s["greedy"] == pytest.approx(np.mean([o == t for o, t in zip(outputs, targets)]))
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["models"]["tuned"]["accuracy"]["mean"] == summary["models"]["tuned"]["accuracy"]["mean"]
    assert summary["codec_ceiling"] == {"rewards": {"accuracy": 1.0}, "metrics": {"accuracy": 1.0}}  # lossless code
    for name in ("distribution_accuracy.png", "best_of_n_accuracy.png", "progression.png"):
        with Image.open(os.path.join(out, name)) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    # deterministic given the seed: the tuned model's pool again, from the library function
    _, task, model = load_run(tuned)
    pool = sample_pool(model, task, task.datasets()["val"], range(4), 20, seed=5, batch_size=8)
    mine = np.array([r["log_prob"] for r in rows if r["model"] == "tuned"]).reshape(4, 20)
    np.testing.assert_allclose(pool.log_probs, mine, atol=1e-5)


def test_codec_ceiling_scores_the_truth_through_the_codec():
    import toy_task
    task = toy_task.make_task(toy())
    split = task.datasets()["val"]
    assert codec_ceiling(task, split, range(8)) == {"rewards": {"accuracy": 1.0}, "metrics": {"accuracy": 1.0}}

    class Lossy(toy_task.CountCodec):  # a code that cannot say "3": the ceiling must show the loss
        def encode(self, target, rng=None):
            return super().encode(min(target, 2))
    task.codec = Lossy()
    targets = split.batch(list(range(16)))[1]
    expected = float(np.mean([t < 3 for t in targets]))
    assert 0 < expected < 1
    got = codec_ceiling(task, split, range(16))
    assert got["rewards"]["accuracy"] == pytest.approx(expected) and got["metrics"]["accuracy"] == pytest.approx(expected)


def test_the_user_reward_a_run_was_tuned_on_is_analysed_with_the_task_rewards():
    import toy_task
    fns = _reward_fns(toy_task.make_task(toy()), "toy_task:accuracy_reward")
    assert list(fns) == ["accuracy", "toy_task:accuracy_reward"]
    assert _reward_fns(toy_task.make_task(toy()), "accuracy").keys() == {"accuracy"}


def test_the_task_headroom_reads_the_pools_own_draws_with_their_step_log_probs(toy_runs):
    _, tuned = toy_runs
    _, task, model = load_run(tuned)
    seen = {}

    def record(greedy, samples, targets, ids):
        seen.update(greedy=greedy, samples=samples, targets=targets, ids=ids)
        return {"samples": float(len(samples[0])), "what": "text"}
    split = task.datasets()["val"]
    plain = sample_pool(model, task, split, range(3), 6, seed=2, batch_size=4)
    assert pool_headroom(task, plain, split.targets[:3]) is None  # the toy task has no headroom
    task.headroom = record
    pool = sample_pool(model, task, split, range(3), 6, seed=2, batch_size=4, keep_outputs=True)
    np.testing.assert_array_equal(pool.log_probs, plain.log_probs)  # the same draws
    np.testing.assert_array_equal(pool.rewards["accuracy"], plain.rewards["accuracy"])
    assert pool_headroom(task, pool, split.targets[:3]) == {"samples": 6.0, "what": "text"}
    assert seen["ids"] == split.ids[:3] and seen["targets"] == split.targets[:3]
    outputs, _, _ = predict_split(model, task, split, range(3))
    for (tokens, lp), output in zip(seen["greedy"], outputs):
        assert lp.shape == (len(tokens), task.codec.vocab_size) and tokens[-1] == task.codec.end_token
        assert torch.allclose(lp.logsumexp(-1), torch.zeros(len(tokens)), atol=1e-5)  # log-distributions
        assert task.codec.decode(tokens.tolist()) == output
    decoded = np.array([[o == t for o in row] for row, t in zip(seen["samples"], split.targets[:3])], np.float64)
    np.testing.assert_array_equal(decoded, pool.rewards["accuracy"])  # the samples the rewards scored
    line = format_summary({"samples": 6, "images": 3, "task": "toy", "models": {},
                           "headroom": {"tuned": {"samples": 6.0, "what": "text"}}})
    assert "headroom (tuned): samples 6.000 what text" in line
