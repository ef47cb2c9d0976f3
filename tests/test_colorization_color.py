"""Colour conversions: Lab round trip, reference values, luma as PIL computes it."""
import numpy as np
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from rewardtune.tasks.colorization.color import gray_uint8, lab_to_rgb, lightness_of_gray, luma, rgb_to_lab


def test_lab_reference_values():
    # sRGB red and white in CIE Lab (D65), as published colour calculators give them
    np.testing.assert_allclose(rgb_to_lab(np.array([1.0, 0.0, 0.0])), [53.2408, 80.0925, 67.2032], atol=1e-3)
    np.testing.assert_allclose(rgb_to_lab(np.array([1.0, 1.0, 1.0])), [100.0, 0.0, 0.0], atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3))
def test_lab_round_trip(rgb):
    x = np.array(rgb)
    np.testing.assert_allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-6)  # the sRGB knee is not exactly continuous


def test_torch_and_numpy_agree_and_grays_are_neutral():
    x = np.random.default_rng(0).random((5, 7, 3))
    np.testing.assert_allclose(rgb_to_lab(torch.from_numpy(x)).numpy(), rgb_to_lab(x))
    gray = np.linspace(0, 1, 11)[:, None].repeat(3, axis=1)
    lab = rgb_to_lab(gray)
    np.testing.assert_allclose(lab[:, 1:], 0.0, atol=1e-9)
    np.testing.assert_allclose(lab[:, 0], lightness_of_gray(np.linspace(0, 255, 11)), atol=1e-9)


def test_luma_is_rec601_and_matches_pil():
    np.testing.assert_allclose(luma(np.array([255.0, 0, 0])), 0.299 * 255)
    img = np.random.default_rng(1).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(img).convert("L")).astype(int)
    assert np.abs(gray_uint8(img).astype(int) - pil).max() <= 1
