"""Task proposals (train.proposal_weight > 0, proposals.py): detection's hedge proposal on hand-made
sequences, the proposals' rewards and advantages, the self-imitation loss, and the config errors."""
from functools import partial

import numpy as np
import pytest
import torch

from rewardtune.config import from_dict
from rewardtune.errors import ConfigError
from rewardtune.model.encdec import Generation, sequence_log_probs
from rewardtune.proposals import Proposals, check_proposals, make_proposals, proposal_logs, proposal_loss
from rewardtune.tasks.base import Task
from rewardtune.tasks.detection.codec import DetectionCodec
from rewardtune.tasks.detection.proposals import hedge_proposal
from rewardtune.tasks.detection.rewards import map_reward

CODEC = DetectionCodec(3, bins=5, max_boxes=3, box_order="canonical")
A, B = (0, 0, 2, 2), (2, 2, 4, 4)  # two boxes (bins)


def tokens(*boxes):
    return [t for bins, c in boxes for t in (*bins, CODEC.class_token + c, CODEC.right_token)] + [CODEC.end_token]


def log_probs(seq, class_probs):
    """step log-probs [T, V]: uniform, except each box's class row, which is log(class_probs[k])."""
    lp = torch.full((len(seq), CODEC.vocab_size), -5.0)
    for k, probs in enumerate(class_probs):
        row = torch.full((CODEC.vocab_size,), -30.0)
        row[CODEC.class_token:CODEC.class_token + 3] = torch.log(torch.tensor(probs))
        lp[6 * k + 4] = row
    return lp


def test_each_box_is_followed_by_its_copy_with_the_second_class():
    seq = tokens((A, 0), (B, 2))
    out = hedge_proposal(CODEC, seq, log_probs(seq, [(0.6, 0.3, 0.1), (0.2, 0.1, 0.7)]))
    # room for one hedge (max_boxes 3): the box with the closer call (A: 0.6 vs 0.3) gets it, class 1
    assert out == tokens((A, 0), (A, 1), (B, 2))
    wide = DetectionCodec(3, bins=5, max_boxes=4, box_order="canonical")
    out = hedge_proposal(wide, seq, log_probs(seq, [(0.6, 0.3, 0.1), (0.2, 0.1, 0.7)]))
    assert out == tokens((A, 0), (A, 1), (B, 2), (B, 0))
    # a drawn class that was not the most likely: the hedge is the most likely one
    out = hedge_proposal(CODEC, tokens((A, 2)), log_probs(tokens((A, 2)), [(0.5, 0.3, 0.2)]))
    assert out == tokens((A, 2), (A, 0))
    # the conf token is copied
    wrong = tokens((A, 0))
    wrong[5] = CODEC.wrong_token
    assert hedge_proposal(CODEC, wrong, log_probs(wrong, [(0.6, 0.3, 0.1)]))[6:12] == [*A, CODEC.class_token + 1,
                                                                                     CODEC.wrong_token]


def test_nothing_to_hedge_gives_none():
    assert hedge_proposal(CODEC, [CODEC.end_token], torch.zeros(1, CODEC.vocab_size)) is None
    full = tokens((A, 0), (B, 1), (A, 2))
    assert hedge_proposal(CODEC, full, log_probs(full, [(0.5, 0.4, 0.1)] * 3)) is None  # at max_boxes
    one_class = DetectionCodec(1, bins=5, max_boxes=3)
    seq = [*A, one_class.class_token, one_class.right_token, one_class.end_token]
    assert hedge_proposal(one_class, seq, torch.zeros(len(seq), one_class.vocab_size)) is None


def test_proposals_are_rewarded_and_beat_the_sample_mean_or_are_left_alone():
    """One image, the truth A of class 1, two samples: A called 0 (reward 0; its hedge A/1 matches) and
    B called 1 (a false positive; its hedge too)."""
    truth = {"boxes": np.array([A], np.float32) / 4, "classes": np.array([1])}
    s1, s2 = tokens((A, 0)), tokens((B, 1))
    width = max(len(s1), len(s2))
    toks = torch.full((2, width), CODEC.end_token, dtype=torch.long)
    toks[0, :len(s1)], toks[1, :len(s2)] = torch.tensor(s1), torch.tensor(s2)
    lp = torch.stack([log_probs(s1, [(0.6, 0.3, 0.1)]), log_probs(s2, [(0.1, 0.6, 0.3)])])
    gen = Generation(toks, torch.tensor([len(s1), len(s2)]), torch.zeros(2), torch.ones(2, dtype=torch.bool), lp)
    reward = partial(map_reward, weights=np.ones(3))
    task = Task("detection", CODEC, dict, {}, None, None, None, propose=partial(hedge_proposal, CODEC))
    samples, _ = reward([CODEC.decode(s1), CODEC.decode(s2)], [truth, truth])
    samples = torch.as_tensor(samples, dtype=torch.float32).view(1, 2)
    assert samples.tolist() == [[0.0, 0.0]]
    p = make_proposals(task, gen, torch.zeros(1, 3, 8, 8), [truth, truth], samples, reward)
    assert p.valid.tolist() == [[True, True]]
    assert p.tokens[0, :13].tolist() == tokens((A, 0), (A, 1)) and int(p.lengths[0]) == 13
    assert p.rewards[0, 0] == 1.0 and p.rewards[0, 1] == 0.0  # the hedge A/1 matches at every threshold
    assert p.advantages.tolist() == [[1.0, 0.0]]
    logs = proposal_logs([type("D", (), {"proposals": p})()])
    assert logs == {"proposal_frac": 1.0, "proposal_reward": 0.5, "proposal_better_frac": 0.5}


def test_self_imitation_loss_raises_only_the_proposals_that_beat_the_mean():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, requires_grad=True)
    toks, lengths = torch.randint(0, 7, (3, 5)), torch.tensor([5, 3, 4])
    p = Proposals(toks, lengths, torch.tensor([[True, True, False]]), torch.zeros(1, 3),
                  torch.tensor([[2.0, -1.0, 0.0]]))
    seq_lp = sequence_log_probs(torch.log_softmax(logits, -1), toks, lengths)  # any per-proposal log-probs
    loss = proposal_loss(seq_lp, p)
    torch.testing.assert_close(loss, -(2.0 * seq_lp[0]) / 3)
    g, = torch.autograd.grad(loss, logits)
    assert torch.count_nonzero(g[0]) > 0 and torch.count_nonzero(g[1:]) == 0


def test_only_the_tokens_a_proposal_changes_are_imitated():
    from rewardtune.proposals import departing_log_probs
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 7, requires_grad=True)
    lp = torch.log_softmax(logits, -1)
    samples = torch.tensor([[1, 2, 3, 6, 6], [1, 2, 3, 4, 6], [5, 6, 6, 6, 6]])
    sample_lengths = torch.tensor([4, 5, 2])
    props = torch.tensor([[1, 2, 4, 6, 6, 6],  # one token changed (a hedge token)
                          [1, 2, 3, 4, 6, 6],  # nothing changed
                          [5, 1, 2, 6, 6, 6]])  # two tokens where the sample had ended, then its own end
    lengths = torch.tensor([4, 5, 4])
    got = departing_log_probs(lp, props, lengths, samples, sample_lengths)
    torch.testing.assert_close(got, torch.stack([lp[0, 2, 4], torch.tensor(0.0), lp[2, 1, 1] + lp[2, 2, 2] + lp[2, 3, 6]]))
    g, = torch.autograd.grad(got.sum(), logits)
    assert torch.count_nonzero(g[0, [0, 1, 3]]) == 0 and torch.count_nonzero(g[0, 2]) > 0 and torch.count_nonzero(g[1]) == 0


def test_proposal_weight_errors_name_the_key():
    with pytest.raises(ConfigError, match="'train.proposal_weight'"):
        from_dict({"train": {"proposal_weight": -1.0}})
    config = from_dict({"train": {"stage": "reward", "proposal_weight": 0.5}})
    check_proposals(Task("detection", CODEC, dict, {}, None, None, None, propose=partial(hedge_proposal, CODEC)),
                    config.train)
    with pytest.raises(ConfigError, match="'train.proposal_weight': 0.5 needs a task that proposes"):
        check_proposals(Task("toy", CODEC, dict, {}, None, None, None), config.train)
    check_proposals(Task("toy", CODEC, dict, {}, None, None, None), from_dict({"train": {"stage": "reward"}}).train)


def test_samples_and_proposals_in_one_forward_equal_two_forwards():
    from types import SimpleNamespace

    from rewardtune.config import ModelConfig
    from rewardtune.model.encdec import build_model
    from rewardtune.steps import StepContext, forward_with_proposals
    torch.manual_seed(0)
    model = build_model(ModelConfig(patch_size=4, width=32, encoder_depth=1, decoder_depth=1, heads=2), 8, CODEC).eval()
    task = Task("detection", CODEC, dict, {}, None, None, None)
    ctx = StepContext(task, model, model, SimpleNamespace(num_samples=2, precision="fp32"))
    images = torch.rand(2, 3, 8, 8)
    tokens = torch.randint(0, CODEC.bins, (4, 7))
    proposals = torch.randint(0, CODEC.bins, (4, 13))
    samples_lp, prop_lp, padded = forward_with_proposals(ctx, images, tokens, proposals)
    torch.testing.assert_close(samples_lp, model(images, tokens, 2))
    torch.testing.assert_close(prop_lp, model(images, proposals, 2))
    assert torch.equal(padded, proposals)


def test_a_hedge_is_scored_by_the_first_box_s_class_distribution_and_a_same_class_repeat_by_zero():
    seq = tokens((A, 0), (A, 1), (B, 2), (B, 2))
    lp = log_probs(seq, [(0.6, 0.3, 0.1), (0.01, 0.98, 0.01), (0.2, 0.1, 0.7), (0.1, 0.1, 0.8)])
    for k in range(4):  # coordinate tokens at log 0.5
        lp[6 * k:6 * k + 4] = -30.0
        lp[torch.arange(6 * k, 6 * k + 4), torch.tensor(seq[6 * k:6 * k + 4])] = float(np.log(0.5))
    wide = DetectionCodec(3, bins=5, max_boxes=4, box_order="canonical")
    out = wide.decode(seq, lp)
    half = np.log(0.5)
    expected = [np.exp((4 * half + np.log(0.6)) / 5), np.exp((4 * half + np.log(0.3)) / 5),  # not log(0.98)
                np.exp((4 * half + np.log(0.7)) / 5), 0.0]
    np.testing.assert_allclose(out["score_prob"], expected, rtol=1e-5)
    # the same as `rewardtune analyze`'s hedged output of the first box alone
    from rewardtune.tasks.detection.headroom import hedge
    single = wide.decode(seq[:6] + [wide.end_token], lp[:7])
    hedged = hedge(single, lp[:7], wide.class_token, 3)
    np.testing.assert_allclose(hedged["scores"], out["score_prob"][:2], rtol=1e-5)


# -- the hedge token (task_options.hedge_token): the conf token "wrong" reads as "this box, and again with its
# second class"
HEDGE = DetectionCodec(3, bins=5, max_boxes=3, box_order="canonical", hedge_token=True)


def test_a_hedge_token_decodes_to_the_box_and_its_copy_with_the_second_class():
    seq = tokens((A, 0), (B, 2))
    seq[5] = HEDGE.wrong_token  # box A hedged, box B not
    lp = log_probs(seq, [(0.6, 0.3, 0.1), (0.2, 0.1, 0.7)])
    out = HEDGE.decode(seq, lp)
    assert out["classes"].tolist() == [0, 1, 2] and out["hedged"].tolist() == [False, True, False]
    np.testing.assert_array_equal(out["boxes"][0], out["boxes"][1])
    assert out["conf_pos"].tolist() == [5, 5, 11]  # the copy's tokens are its box's
    # the copy's token probability: the box's, with the second class's log-prob in place of the first's
    first = np.exp((4 * -5.0 + np.log(0.6)) / 5)
    np.testing.assert_allclose(out["scores"][:2], [first, first * np.exp((np.log(0.3) - np.log(0.6)) / 5)], rtol=1e-5)
    np.testing.assert_array_equal(out["scores"], out["score_prob"])
    # without the log-probs nobody knows the second class: a plain box; without the option "wrong" is a score
    assert HEDGE.decode(seq)["classes"].tolist() == [0, 2]
    assert CODEC.decode(seq, lp)["classes"].tolist() == [0, 2]
    # the training log counts the copies
    from rewardtune.tasks.detection.rewards import detection_stats
    truth = {"boxes": CODEC.boxes_from_bins(np.array([A])), "classes": np.array([1])}
    assert detection_stats([out], [truth])["hedges_per_image"] == 1.0
    assert "hedges_per_image" not in detection_stats([CODEC.decode(seq, lp)], [truth])
    # the post-hoc headroom hedge leaves a box the model hedged itself alone and hedges the other
    from rewardtune.tasks.detection.headroom import hedge
    both = hedge(out, lp, HEDGE.class_token, 3)
    assert both["classes"].tolist() == [0, 1, 2, 0]


def test_the_reward_pays_for_a_hedge_that_finds_the_right_class():
    truth = {"boxes": CODEC.boxes_from_bins(np.array([A])), "classes": np.array([1])}
    seq = tokens((A, 0))
    lp = log_probs(seq, [(0.6, 0.3, 0.1)])
    hedged = list(seq)
    hedged[5] = HEDGE.wrong_token
    rewards, _ = map_reward([HEDGE.decode(seq, lp), HEDGE.decode(hedged, lp)], [truth, truth], weights=[1.0] * 3)
    assert float(rewards[0]) == 0.0 and float(rewards[1]) > 0.0


def test_the_hedge_token_proposal_sets_every_conf_token_to_hedge():
    from rewardtune.tasks.detection.proposals import hedge_token_proposal
    seq = tokens((A, 0), (B, 2))
    lp = log_probs(seq, [(0.6, 0.3, 0.1), (0.2, 0.1, 0.7)])
    out = hedge_token_proposal(HEDGE, seq, lp)
    assert len(out) == len(seq) and out[5] == out[11] == HEDGE.wrong_token
    assert [t for i, t in enumerate(out) if i not in (5, 11)] == [t for i, t in enumerate(seq) if i not in (5, 11)]
    assert hedge_token_proposal(HEDGE, out, lp) is None  # every box already hedged
    assert hedge_token_proposal(HEDGE, [HEDGE.end_token], torch.zeros(1, HEDGE.vocab_size)) is None
    # a full sequence (max_boxes) can still be hedged: the copies take no positions
    full = tokens((A, 0), (B, 1), (A, 2))
    assert hedge_token_proposal(HEDGE, full, log_probs(full, [(0.5, 0.4, 0.1)] * 3)) is not None


@pytest.mark.parametrize("key, value, named", [("aux_weight", 0.3, "aux_weight"), ("score", "learned", "score"),
                                               ("score", "expected_iou", "score"), ("mle_conf", "self_iou", "mle_conf")])
def test_hedge_token_config_errors_name_the_key(key, value, named):
    from rewardtune.tasks.detection import detection_options
    options = {"hedge_token": True, "aux_weight": 0.0, key: value}
    config = from_dict({"task": "detection", "task_options": options})
    with pytest.raises(ConfigError, match=f"'task_options.{named}'.*hedge_token"):
        detection_options(config)
    assert detection_options(from_dict({"task": "detection", "task_options": {"hedge_token": True, "aux_weight": 0}})
                             ).hedge_token


def test_the_kl_term_leaves_the_hedge_decisions_out():
    from rewardtune.losses import kl_to_reference
    exempt = HEDGE.kl_exempt()
    assert exempt.shape == (HEDGE.max_len,) and torch.nonzero(exempt).flatten().tolist() == [5, 11, 17]
    assert CODEC.kl_exempt() is None
    torch.manual_seed(0)
    lp, ref = torch.log_softmax(torch.randn(2, 13, 4), -1), torch.log_softmax(torch.randn(2, 13, 4), -1)
    lengths = torch.tensor([13, 7])
    per_token = (lp.exp() * (lp - ref)).sum(-1)
    keep = [(0, t) for t in range(13) if t not in (5, 11)] + [(1, t) for t in range(7) if t != 5]
    torch.testing.assert_close(kl_to_reference(lp, ref, lengths, exempt),
                               torch.stack([per_token[b, t] for b, t in keep]).mean())
    # a policy that moved only at the exempt positions has no KL at all
    moved = ref.clone()
    moved[:, 5] = torch.log_softmax(torch.randn(2, 4), -1)
    assert float(kl_to_reference(moved, ref, lengths, exempt)) == 0.0 < float(kl_to_reference(moved, ref, lengths))


def test_hedge_all_reads_every_box_as_hedged_whatever_its_conf_token():
    every = DetectionCodec(3, bins=5, max_boxes=3, box_order="canonical", hedge_all=True)
    seq = tokens((A, 0), (B, 2))
    lp = log_probs(seq, [(0.6, 0.3, 0.1), (0.2, 0.1, 0.7)])
    out = every.decode(seq, lp)
    assert out["classes"].tolist() == [0, 1, 2, 0] and out["hedged"].tolist() == [False, True, False, True]
    assert out["conf_pos"].tolist() == [5, 5, 11, 11]
    # the same copies as the post-hoc headroom hedge (in the box-then-copy order) and as the hedge token on every box
    from rewardtune.tasks.detection.headroom import hedge
    plain = CODEC.decode(seq, lp)
    posthoc = hedge(plain, lp, CODEC.class_token, 3)
    np.testing.assert_allclose(np.sort(out["score_prob"]), np.sort(posthoc["scores"]), rtol=1e-6)
    all_hedged = list(seq)
    all_hedged[5] = all_hedged[11] = HEDGE.wrong_token
    np.testing.assert_array_equal(HEDGE.decode(all_hedged, lp)["classes"], out["classes"])
    assert every.decode(seq)["classes"].tolist() == [0, 2]  # without the log-probs: plain boxes
    assert every.reads_step_log_probs


@pytest.mark.parametrize("options, named", [({"hedge_token": True, "aux_weight": 0}, "hedge_all"),
                                            ({"score": "learned"}, "score"), ({"score": "expected_iou"}, "score")])
def test_hedge_all_config_errors_name_the_key(options, named):
    from rewardtune.tasks.detection import detection_options
    config = from_dict({"task": "detection", "task_options": {"hedge_all": True, **options}})
    with pytest.raises(ConfigError, match=f"'task_options.{named}'.*hedge"):
        detection_options(config)
    assert detection_options(from_dict({"task": "detection", "task_options": {"hedge_all": True}})).hedge_all
