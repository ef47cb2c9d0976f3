"""Per-box credit assignment (train.credit = "token", credit.py) on hand-made detection samples."""
import numpy as np
import pytest
import torch

from rewardtune.config import from_dict
from rewardtune.credit import check_credit, item_contributions, token_advantages
from rewardtune.errors import ConfigError
from rewardtune.losses import leave_one_out_advantage, reward_to_go_advantage, reinforce_loss, token_reinforce_loss
from rewardtune.model.encdec import sequence_log_probs
from rewardtune.tasks.base import Task
from rewardtune.tasks.detection import box_tokens
from rewardtune.tasks.detection.codec import DetectionCodec
from rewardtune.tasks.detection.rewards import map_reward, recall_reward

W = np.array([0.5, 1.5])
CODEC = DetectionCodec(2, bins=5, max_boxes=4, box_order="canonical")
FULL, LEFT = (0, 0, 4, 4), (0, 0, 4, 1)  # bins: the whole image; a sliver on the left (IoU 1/4 with FULL)


def sequence(*boxes):
    """Tokens of boxes (bins, class), then the end token."""
    tokens = [t for bins, c in boxes for t in (*bins, CODEC.class_token + c, CODEC.right_token)]
    return tokens + [CODEC.end_token]


def truth(*boxes):
    return {"boxes": np.array([b for b, _ in boxes], np.float32).reshape(-1, 4) / 4,
            "classes": np.array([c for _, c in boxes], np.int64)}


def task():
    return Task("detection", CODEC, dict, {}, None, None, None, item_tokens=box_tokens)


def test_map_reward_splits_over_boxes_matched_duplicate_and_false_positive():
    outputs = [CODEC.decode(sequence((FULL, 1), (FULL, 1), (LEFT, 0)))]
    reward, parts = map_reward(outputs, [truth((FULL, 1))], W)
    # matched at every threshold: w = 1.5; the repeat: a duplicate at every threshold, -0.3 * 1.5; the other
    # class: nothing
    np.testing.assert_allclose(parts["per_item"].numpy(), [[1.5, -0.45, 0.0]], rtol=1e-6)
    assert float(reward[0]) == pytest.approx(1.5 - 0.45)


def test_reward_to_go_advantage_against_the_other_samples_from_the_same_position():
    contributions = torch.tensor([[[1.0, -0.3], [1.0, 5.0], [0.0, 0.0]], [[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    valid = torch.tensor([[[True, True], [True, False], [False, False]],  # 5.0: no item there, ignored
                          [[True, False], [False, False], [False, False]]])
    adv = reward_to_go_advantage(contributions, valid)
    # still to come, image 0: [0.7, -0.3, 0] | [1.0, 0, 0] | [0, 0, 0]; baseline: the other two's mean
    expected = torch.tensor([[[0.7 - 0.5, -0.3 - 0.0, 0.0], [1.0 - 0.35, 0.0 + 0.15, 0.0], [0.0 - 0.85, 0.15, 0.0]],
                             [[0.5, 0.0, 0.0], [-0.25, 0.0, 0.0], [-0.25, 0.0, 0.0]]])
    torch.testing.assert_close(adv, expected)
    # the first position is the sequence's leave-one-out advantage
    totals = torch.where(valid, contributions, torch.zeros(())).sum(-1)
    torch.testing.assert_close(adv[..., 0], leave_one_out_advantage(totals))
    with pytest.raises(ValueError, match=">= 2 samples"):
        reward_to_go_advantage(contributions[:, :1], valid[:, :1])


def tokens_and_advantages(sequences, target, n):
    outputs = [CODEC.decode(s) for s in sequences]
    rewards, parts = map_reward(outputs, [target] * len(outputs), W)
    seq_adv = leave_one_out_advantage(rewards.view(-1, n))
    T = max(len(s) for s in sequences) + 2  # two padding positions past the longest
    lengths = torch.tensor([len(s) for s in sequences])
    return token_advantages(task(), outputs, parts, n, lengths, T), seq_adv.flatten(), lengths


def test_each_box_s_tokens_get_the_reward_still_to_come_the_end_token_that_of_stopping():
    # one image, 3 samples: [matched, duplicate] | [matched] | [other class]
    samples = [sequence((FULL, 1), (FULL, 1)), sequence((FULL, 1)), sequence((LEFT, 0))]
    adv, seq_adv, lengths = tokens_and_advantages(samples, truth((FULL, 1)), 3)
    assert adv.shape == (3, 15)
    # rewards 1.05, 1.5, 0: sequence advantages 1.05 - 0.75, 1.5 - 0.525, 0 - 1.275
    torch.testing.assert_close(seq_adv, torch.tensor([0.3, 0.975, -1.275]))
    # still to come by position: [1.05, -0.45, 0] | [1.5, 0, 0] | [0, 0, 0]
    # sample 0: the first box gets the sequence's advantage; the duplicate -0.45 against the others' 0;
    # its end token (nothing to come) against the others' 0 at position 2
    expected0 = [0.3] * 6 + [-0.45] * 6 + [0.0] + [0.0] * 2  # box, duplicate, end token, padding
    # sample 1: stopping after one box (0 to come) against the others' (-0.45 + 0) / 2: +0.225
    expected1 = [0.975] * 6 + [0.225] + [0.0] * 8
    expected2 = [-1.275] * 6 + [0.225] + [0.0] * 8
    torch.testing.assert_close(adv, torch.tensor([expected0, expected1, expected2]))
    assert lengths.tolist() == [13, 7, 7]


def test_a_second_matched_box_is_credited_and_stopping_before_it_is_not():
    target = truth((FULL, 1), ((0, 0, 1, 4), 1))  # two objects of class 1
    same = [sequence((FULL, 1)), sequence(((0, 0, 1, 4), 1))]  # one matched box each: 1.5 and 1.5
    adv, seq_adv, _ = tokens_and_advantages(same, target, 2)
    assert torch.count_nonzero(adv) == 0 and torch.count_nonzero(seq_adv) == 0
    more = [sequence((FULL, 1), ((0, 0, 1, 4), 1)), sequence((FULL, 1))]  # 3.0 vs 1.5
    adv, seq_adv, _ = tokens_and_advantages(more, target, 2)
    torch.testing.assert_close(seq_adv, torch.tensor([1.5, -1.5]))
    # still to come: [3.0, 1.5, 0] | [1.5, 0, 0]
    torch.testing.assert_close(adv[0], torch.tensor([1.5] * 12 + [0.0] + [0.0] * 2))
    torch.testing.assert_close(adv[1], torch.tensor([-1.5] * 6 + [-1.5] + [0.0] * 8))  # it stopped too soon


def test_token_loss_with_the_sequence_advantage_on_every_token_is_reinforce_loss():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 9, requires_grad=True)
    step_lp = torch.log_softmax(logits, -1)
    tokens, lengths = torch.randint(0, 9, (4, 6)), torch.tensor([6, 3, 1, 4])
    seq_adv = torch.tensor([0.5, -1.0, 2.0, 0.25])
    broadcast = seq_adv[:, None].expand(4, 6) * (torch.arange(6)[None] < lengths[:, None])
    token = token_reinforce_loss(step_lp, tokens, lengths, broadcast)
    sequence_level = reinforce_loss(sequence_log_probs(step_lp, tokens, lengths), seq_adv)
    torch.testing.assert_close(token, sequence_level)
    g_token, = torch.autograd.grad(token, logits, retain_graph=True)
    g_seq, = torch.autograd.grad(sequence_level, logits, retain_graph=True)
    torch.testing.assert_close(g_token, g_seq)
    # advantages past a sequence's end are ignored; a token with advantage 0 gets no gradient
    noisy = broadcast + 5.0 * (torch.arange(6)[None] >= lengths[:, None])
    torch.testing.assert_close(token_reinforce_loss(step_lp, tokens, lengths, noisy), token)
    only_first = torch.zeros(4, 6)
    only_first[0, 0] = 1.0
    g, = torch.autograd.grad(token_reinforce_loss(step_lp, tokens, lengths, only_first), logits)
    assert torch.count_nonzero(g[0, 0]) > 0 and torch.count_nonzero(g[0, 1:]) == 0 and torch.count_nonzero(g[1:]) == 0


def test_token_credit_errors_name_the_key():
    with pytest.raises(ConfigError, match="'train.credit': 'token' needs train.baseline 'loo'"):
        from_dict({"train": {"credit": "token", "baseline": "greedy"}})
    with pytest.raises(ConfigError, match="'train.credit': 'box' is not one of sequence, token"):
        from_dict({"train": {"credit": "box"}})
    config = from_dict({"train": {"stage": "reward", "credit": "token"}})
    check_credit(task(), config.train)  # detection maps boxes to tokens
    with pytest.raises(ConfigError, match="task 'toy' has none"):
        check_credit(Task("toy", CODEC, dict, {}, None, None, None), config.train)
    outputs = [CODEC.decode(sequence((FULL, 1)))]
    _, parts = recall_reward(outputs, [truth((FULL, 1))])
    with pytest.raises(ConfigError, match="reward 'recall' does not"):
        item_contributions(parts, outputs, "recall")
