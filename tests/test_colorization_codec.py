"""ColorCodec: round trip up to quantisation, any tokens decode, grammar, rendering."""
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from rewardtune.tasks.colorization.color import rgb_to_lab
from rewardtune.tasks.colorization.codec import (ColorCodec, ColorTarget, cell_chroma, kmeans_palette,
                                                 render, render_outputs)


def _image(seed=0, size=16):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_round_trip_exact_when_palette_holds_every_cell():
    img = _image()
    cells = cell_chroma(img, 4).numpy()  # (4, 4, 2): 16 distinct cell colours
    codec = ColorCodec(np.concatenate([[[0.0, 0.0]], cells.reshape(-1, 2)]), grid=4)
    tokens = codec.encode(ColorTarget.from_rgb(img))
    assert tokens.shape == (codec.max_len,) and tokens[-1] == codec.end_token
    np.testing.assert_allclose(codec.decode(tokens), cells, atol=1e-4)


def test_round_trip_up_to_quantisation():
    imgs = [_image(s, 32) for s in range(4)]
    cells = cell_chroma(np.stack(imgs), 8).numpy()  # (4, 8, 8, 2)
    palette = kmeans_palette(cells.reshape(-1, 2), 32)
    codec = ColorCodec(palette, grid=8)
    for img, c in zip(imgs, cells):
        decoded = codec.decode(codec.encode(img))
        err = np.linalg.norm(decoded - c, axis=-1)  # (8, 8) distance to the true cell chroma
        # each cell gets its nearest palette colour: no other entry is closer
        nearest = np.linalg.norm(c.reshape(-1, 1, 2) - palette[None], axis=-1).min(1)
        np.testing.assert_allclose(err.reshape(-1), nearest, atol=1e-4)
        assert err.mean() < 10.0  # Lab units; the cells spread over ~40 units


def test_cells_are_adaptive_average_pooling_cells():
    img = _image(4, 23)[:, :19]  # 23 x 19: neither side a multiple of 5
    ab = torch.from_numpy(rgb_to_lab(img / 255.0)[..., 1:]).permute(2, 0, 1)[None]  # (1, 2, H, W)
    expected = F.adaptive_avg_pool2d(ab, 5)[0].permute(1, 2, 0)
    torch.testing.assert_close(cell_chroma(img, 5), expected)


def test_kmeans_is_deterministic_and_keeps_neutral():
    pts = np.random.default_rng(3).normal(0, 30, (500, 2))
    a, b = kmeans_palette(pts, 16, seed=0), kmeans_palette(pts, 16, seed=0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (16, 2) and (a[0] == 0).all()
    assert kmeans_palette(np.zeros((3, 2)), 8).shape == (8, 2)  # fewer distinct points than k


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 12) | st.integers(-2**70, 2**70) | st.just(10**400), max_size=40))
def test_decode_of_any_tokens_never_fails(tokens):
    codec = ColorCodec(np.random.default_rng(0).normal(0, 20, (8, 2)), grid=5)
    out = codec.decode(tokens)
    assert out.shape == (5, 5, 2) and out.dtype == np.float32 and np.isfinite(out).all()
    assert render(np.full((10, 10), 128, np.uint8), out).shape == (10, 10, 3)


def test_decode_stops_at_end_and_fills_neutral():
    palette = np.array([[0, 0], [10, 20], [-30, 5]], np.float32)
    codec = ColorCodec(palette, grid=2)
    np.testing.assert_array_equal(codec.decode(torch.tensor([1, 2, 3, 1])).reshape(-1, 2),
                                  [[10, 20], [-30, 5], [0, 0], [0, 0]])
    np.testing.assert_array_equal(codec.decode([2, 99, -1, 1]).reshape(-1, 2), [[-30, 5], [0, 0], [0, 0], [10, 20]])


def test_grammar():
    codec = ColorCodec(np.zeros((6, 2)), grid=3)
    g = codec.grammar()
    assert g.shape == (10, 7) and g.dtype == torch.bool
    assert g[:9, :6].all() and not g[:9, 6].any()
    assert g[9, 6] and not g[9, :6].any()


def test_neutral_chroma_renders_the_gray_input_and_colour_survives():
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = render(gray, np.zeros((4, 4, 2))).numpy()
    assert (out == gray[..., None]).all()
    for colour, tol in (((180, 90, 60), 2), ((200, 0, 0), 5)):  # pure red sits on the gamut edge
        img = np.zeros((8, 8, 3), np.uint8) + np.array(colour, np.uint8)
        back = render_outputs([cell_chroma(img, 2).float().numpy()], [ColorTarget.from_rgb(img)])[0].numpy()
        assert np.abs(back.astype(int) - img).max() <= tol, colour  # the luma input's lightness is kept
