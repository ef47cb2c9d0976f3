import pytest
import torch

from rewardtune.losses import leave_one_out_advantage, mle_loss, reinforce_loss
from rewardtune.model.encdec import EncoderDecoder, sequence_log_probs


def tiny_model(grammar=None, vocab=12, max_len=9):
    torch.manual_seed(0)
    return EncoderDecoder(16, vocab, max_len, vocab - 1, patch_size=4, width=32, encoder_depth=1,
                          decoder_depth=2, heads=2, grammar=grammar).eval()


def test_cached_and_uncached_sampling_agree():
    model = tiny_model()
    images = torch.rand(3, 3, 16, 16)
    a = model.generate(images, 2, greedy=True, return_step_log_probs=True)
    b = model.generate(images, 2, greedy=True, use_cache=False, return_step_log_probs=True)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.log_probs, b.log_probs, atol=1e-5)
    assert torch.allclose(a.step_log_probs, b.step_log_probs, atol=1e-5)
    g = torch.Generator().manual_seed(3)
    s1 = model.generate(images, 4, generator=g)
    g = torch.Generator().manual_seed(3)
    s2 = model.generate(images, 4, generator=g, use_cache=False)
    assert torch.equal(s1.tokens, s2.tokens)


def test_generation_log_probs_match_teacher_forcing():
    model = tiny_model()
    images = torch.rand(2, 3, 16, 16)
    gen = model.generate(images, 3, generator=torch.Generator().manual_seed(0))
    step_lp = model.log_probs(images, gen.tokens, 3)
    assert torch.allclose(sequence_log_probs(step_lp, gen.tokens, gen.lengths), gen.log_probs, atol=1e-4)
    # after the end token every position holds the end token and counts nothing
    for row, length in zip(gen.tokens, gen.lengths):
        assert (row[length:] == model.end_token).all()


def test_grammar_mask_is_obeyed_and_sampling_stops_early():
    vocab, max_len = 12, 9
    grammar = torch.zeros(max_len, vocab, dtype=torch.bool)
    grammar[:, 0:3] = True  # only tokens 0..2 or the end token
    grammar[:, vocab - 1] = True
    grammar[2:, :] = False
    grammar[2:, vocab - 1] = True  # the end token is forced at position 2
    model = tiny_model(grammar, vocab, max_len)
    gen = model.generate(torch.rand(4, 3, 16, 16), 5, generator=torch.Generator().manual_seed(1))
    assert gen.tokens.shape[1] <= 3  # stopped as soon as every sequence ended
    assert gen.ended.all()
    assert ((gen.tokens <= 2) | (gen.tokens == vocab - 1)).all()


def test_top_k_one_equals_greedy():
    model = tiny_model()
    images = torch.rand(2, 3, 16, 16)
    greedy = model.generate(images, 1, greedy=True)
    top1 = model.generate(images, 1, top_k=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(greedy.tokens, top1.tokens)


def test_leave_one_out_advantage_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    adv = leave_one_out_advantage(rewards)
    assert torch.allclose(adv, torch.tensor([[1 - 2.5, 2 - 2.0, 3 - 1.5], [0.0, 0.0, 0.0]]))


def test_reinforce_loss_gradient_pushes_up_good_samples():
    logp = torch.tensor([-1.0, -1.0], requires_grad=True)
    reinforce_loss(logp, torch.tensor([1.0, -1.0])).backward()
    assert logp.grad[0] < 0 < logp.grad[1]  # descending the loss raises the good sample's log-prob


def test_mle_loss_ignores_positions_after_the_end():
    step_lp = torch.log_softmax(torch.randn(2, 4, 5), -1)
    tokens = torch.tensor([[1, 4, 0, 0], [2, 3, 4, 0]])
    lengths = torch.tensor([2, 3])
    expected = -(step_lp[0, 0, 1] + step_lp[0, 1, 4] + step_lp[1, 0, 2] + step_lp[1, 1, 3] + step_lp[1, 2, 4]) / 5
    assert torch.allclose(mle_loss(step_lp, tokens, lengths), expected)


def test_per_image_generators_make_samples_independent_of_the_batch():
    model = tiny_model()
    images = torch.rand(3, 3, 16, 16)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (7, 8, 9)]
    together = model.generate(images, 4, generator=gens())
    alone = model.generate(images[1:2], 4, generator=[gens()[1]])
    T = alone.tokens.shape[1]
    assert torch.equal(together.tokens[4:8, :T], alone.tokens)
    assert (together.tokens[4:8, T:] == model.end_token).all()
    assert torch.allclose(together.log_probs[4:8], alone.log_probs, atol=1e-5)


def test_read_back_table_feeds_the_mapped_token_everywhere():
    """Token 3 is read back as 4: teacher forcing, cached and uncached sampling all see 4 after a 3,
    and generation log-probs still equal teacher forcing."""
    vocab, max_len = 12, 9
    read_back = torch.arange(vocab)
    read_back[3] = 4
    torch.manual_seed(0)
    model = EncoderDecoder(16, vocab, max_len, vocab - 1, patch_size=4, width=32, encoder_depth=1,
                           decoder_depth=2, heads=2, read_back=read_back).eval()
    images = torch.rand(2, 3, 16, 16)
    with_3 = torch.tensor([[3, 5, 3, 6, 11], [1, 3, 2, 3, 11]])
    with_4 = torch.where(with_3 == 3, torch.full_like(with_3, 4), with_3)
    a, b = model.log_probs(images, with_3), model.log_probs(images, with_4)
    assert torch.allclose(a, b)  # every position conditions on 4, whichever was emitted
    plain = EncoderDecoder(16, vocab, max_len, vocab - 1, patch_size=4, width=32, encoder_depth=1,
                           decoder_depth=2, heads=2)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    assert not torch.allclose(plain.log_probs(images, with_3)[:, 1:], a[:, 1:])  # the table mattered
    g = torch.Generator().manual_seed(1)
    s1 = model.generate(images, 6, generator=g)
    g = torch.Generator().manual_seed(1)
    s2 = model.generate(images, 6, generator=g, use_cache=False)
    assert torch.equal(s1.tokens, s2.tokens) and (s1.tokens == 3).any()
    step_lp = model.log_probs(images, s1.tokens, 6)
    assert torch.allclose(sequence_log_probs(step_lp, s1.tokens, s1.lengths), s1.log_probs, atol=1e-4)


def test_eval_mode_restores_the_mode_even_on_an_error_and_image_draws_depend_on_seed_and_index_only():
    from rewardtune.model.encdec import eval_mode, image_generator
    net = torch.nn.Dropout(0.5)
    net.train()
    with pytest.raises(RuntimeError):
        with eval_mode(net):
            assert not net.training
            raise RuntimeError("boom")
    assert net.training
    net.eval()
    with eval_mode(net):
        pass
    assert not net.training
    draw = lambda seed, i: torch.rand(4, generator=image_generator(seed, i, "cpu"))  # noqa: E731
    torch.rand(3)  # the global RNG moves; the draws do not
    assert torch.equal(draw(0, 5), draw(0, 5))
    assert not torch.equal(draw(0, 5), draw(0, 6)) and not torch.equal(draw(0, 5), draw(1, 5))
