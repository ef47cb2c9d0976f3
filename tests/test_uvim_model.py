"""UViM's stage I pieces: the vector quantiser (hand cases) and the code model (shapes, any code decodes, overfit)."""
import torch
import torch.nn.functional as F

from rewardtune.model.uvim import CodeModel
from rewardtune.model.vq import VectorQuantizer, code_stats


def plain_quantizer(book):
    q = VectorQuantizer(len(book), len(book[0]), beta=0.25, normalize=False)
    q.codebook.data = torch.tensor(book, dtype=torch.float32)
    return q


def test_nearest_code_and_straight_through_gradient():
    q = plain_quantizer([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[[0.9, 0.2], [0.1, 0.1], [-0.2, 0.7]]], requires_grad=True)
    zq, idx, loss = q(z)
    assert idx.tolist() == [[1, 0, 2]]
    assert torch.allclose(zq, q.codebook[idx])  # forward: the code vectors
    (zq * torch.tensor([1.0, 2.0])).sum().backward(retain_graph=True)
    # straight through: d zq / d z is the identity, whatever the code
    assert torch.allclose(z.grad, torch.tensor([[[1.0, 2.0]] * 3]))


def test_codebook_loss_pulls_codes_toward_encoder_outputs_and_commitment_pulls_back():
    q = plain_quantizer([[0.0, 0.0], [1.0, 0.0]])
    z = torch.tensor([[[0.8, 0.4]]], requires_grad=True)
    _, idx, loss = q(z)
    loss.backward()
    e = torch.tensor([1.0, 0.0])
    # codebook term mean((e - z)^2) over D=2 values: d/de = (e - z); commitment 0.25 * mean((z - e)^2): d/dz
    assert torch.allclose(q.codebook.grad[1], (e - z.detach()[0, 0]))
    assert torch.allclose(q.codebook.grad[0], torch.zeros(2))  # unused code: no gradient
    assert torch.allclose(z.grad[0, 0], 0.25 * (z.detach()[0, 0] - e))
    before = q.codebook.detach().clone()
    torch.optim.SGD(q.parameters(), lr=0.5).step()
    assert torch.dist(q.codebook[1], z.detach()[0, 0]) < torch.dist(before[1], z.detach()[0, 0])


def test_usage_counts_and_dead_code_restart():
    q = plain_quantizer([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    z = torch.tensor([[[0.1, 0.0], [0.9, 0.1], [1.1, -0.1], [0.0, 0.2]]])
    q.train()
    for _ in range(600):  # codes 2 and 3 are never chosen: their share decays toward 0
        q(z)
    assert q.usage[2] < 0.03 / 4 and q.usage[3] < 0.03 / 4
    assert torch.allclose(q.usage[:2], torch.tensor([0.5, 0.5]), atol=0.01)
    restarted = q.restart_dead(torch.Generator().manual_seed(0))
    assert restarted == 2
    pool = z.reshape(-1, 2)
    for k in (2, 3):  # each restarted code is one of the batch's vectors
        assert (q.codebook.data[k] - pool).abs().sum(1).min() == 0
        assert q.usage[k] == 0.25
    assert q.restart_dead() == 0  # no dead code left
    q.eval()
    usage = q.usage.clone()
    q(z)
    assert torch.equal(q.usage, usage)  # evaluation does not count


def test_code_stats():
    stats = code_stats(torch.tensor([0, 0, 1, 1]), 8)
    assert stats["code_usage"] == 2 / 8
    assert abs(stats["code_perplexity"] - 2.0) < 1e-9


def test_code_model_shapes_and_any_code_decodes():
    torch.manual_seed(0)
    m = CodeModel(32, 5, 7, grid=4, codebook_size=16, code_dim=8, width=32, depth=1, heads=2, head_channels=8)
    images, dense = torch.rand(3, 3, 32, 32), torch.rand(3, 5, 32, 32)
    pred, loss, codes = m(images, dense)
    assert pred.shape == (3, 7, 32, 32) and codes.shape == (3, 16) and loss.ndim == 0
    assert codes.min() >= 0 and codes.max() < 16
    assert torch.equal(m.encode(dense), codes)
    m.eval()
    for bad in (torch.randint(-100, 100, (3, 16)), torch.zeros(3, 16, dtype=torch.long)):
        out = m.decode(images, bad)
        assert out.shape == (3, 7, 32, 32) and torch.isfinite(out).all()
    assert m.decode(images, None).shape == (3, 7, 32, 32)
    assert CodeModel(**m.arch).arch == m.arch


def test_code_dropout_decodes_from_the_image_alone():
    torch.manual_seed(0)
    m = CodeModel(16, 2, 3, grid=4, codebook_size=8, code_dim=4, width=16, depth=1, heads=2, head_channels=4)
    images, dense = torch.rand(2, 3, 16, 16), torch.rand(2, 2, 16, 16)
    pred, _, _ = m(images, dense, drop=torch.tensor([True, False]))
    m.eval()
    assert torch.allclose(pred[0], m.decode(images[:1], None)[0], atol=1e-6)
    assert torch.allclose(pred[1], m.decode(images[1:], m.encode(dense[1:]))[0], atol=1e-6)


def test_code_model_overfits_a_tiny_set_to_near_perfect_reconstruction():
    """Four 16x16 two-class masks the image does not show (a blank image): only the code can carry them."""
    torch.manual_seed(0)
    masks = torch.zeros(4, 16, 16, dtype=torch.long)
    masks[0, :8] = 1
    masks[1, :, :8] = 1
    masks[2, 4:12, 4:12] = 1
    masks[3, ::4] = 1
    dense = F.one_hot(masks, 2).permute(0, 3, 1, 2).float()
    images = torch.zeros(4, 3, 16, 16)
    m = CodeModel(16, 2, 2, grid=4, codebook_size=16, code_dim=8, width=32, depth=1, heads=2,
                  head_channels=8, code_dropout=0.0)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for step in range(300):
        pred, vq_loss, _ = m(images, dense)
        loss = F.cross_entropy(pred, masks) + vq_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            m.restart_dead_codes(torch.Generator().manual_seed(step))
    m.eval()
    recon = m.decode(images, m.encode(dense)).argmax(1)
    assert (recon == masks).float().mean() > 0.99


def test_the_code_enters_the_decoder_at_the_scale_of_its_patch_tokens():
    """At initialisation a code vector's addition is as large as a patch token (with its position), so the
    decoder starts out reading the code instead of learning to ignore it."""
    torch.manual_seed(0)
    m = CodeModel(64, 5, 5, grid=8, codebook_size=32, code_dim=32, width=128, depth=1, heads=4)
    images, dense = torch.rand(4, 3, 64, 64), torch.rand(4, 5, 64, 64)
    zq = m.quantizer.lookup(m.encode(dense))
    added = m.from_code(zq).norm(dim=-1).mean()
    tokens = (m.base.stem(images * 2 - 1).flatten(2).transpose(1, 2) + m.base.pos).norm(dim=-1).mean()
    assert 0.5 < added / tokens < 3.0
    assert (m.decode(images, m.encode(dense)) - m.decode(images, None)).abs().mean() > 0.05 * m.decode(images, None).abs().mean()
