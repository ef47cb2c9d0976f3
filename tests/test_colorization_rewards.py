"""Colorfulness (Hasler & Suesstrunk) and PSNR on hand-computed images; the two rewards."""
import math

import numpy as np
import pytest
import torch

from rewardtune.tasks.colorization.codec import ColorTarget, cell_chroma
from rewardtune.tasks.colorization.rewards import (PSNR_CAP, colorfulness, colorfulness_fidelity_reward,
                                                   colorfulness_reward, psnr)


def _solid(rgb, size=4):
    return np.zeros((size, size, 3), np.uint8) + np.array(rgb, np.uint8)


def test_gray_image_scores_zero():
    gray = np.random.default_rng(0).integers(0, 256, (1, 6, 6, 1)).repeat(3, axis=-1)
    assert colorfulness(gray).item() == 0.0


def test_half_red_half_green_by_hand():
    img = np.zeros((1, 4, 4, 3), np.uint8)
    img[0, :2] = (255, 0, 0)  # rg = 255, yb = 127.5
    img[0, 2:] = (0, 255, 0)  # rg = -255, yb = 127.5
    # std(rg) = 255, mean(rg) = 0, std(yb) = 0, mean(yb) = 127.5 -> 255 + 0.3 * 127.5
    assert colorfulness(img).item() == pytest.approx(293.25)
    # a solid red: only the mean term, 0.3 * sqrt(255^2 + 127.5^2)
    assert colorfulness(_solid((255, 0, 0))[None]).item() == pytest.approx(0.3 * math.hypot(255, 127.5))


def test_colorfulness_matches_numpy_formula_with_population_std():
    imgs = np.random.default_rng(1).integers(0, 256, (3, 5, 7, 3)).astype(np.float64)
    for img, c in zip(imgs, colorfulness(torch.from_numpy(imgs))):
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        rg, yb = r - g, (r + g) / 2 - b
        ref = np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
        assert c.item() == pytest.approx(ref, rel=1e-12)


def test_psnr_closed_form_and_identical():
    a = np.random.default_rng(2).integers(10, 200, (2, 8, 8, 3)).astype(np.uint8)
    assert torch.isinf(psnr(a, a)).all()
    got = psnr(a + 5, a)  # constant offset d = 5: MSE = 25
    np.testing.assert_allclose(got.numpy(), 20 * math.log10(255 / 5))


def _targets(n=3, size=8):
    rng = np.random.default_rng(3)
    return [ColorTarget.from_rgb(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_rewards_on_decoded_outputs():
    targets = _targets()
    gray_out = [np.zeros((2, 2, 2), np.float32)] * 3
    true_out = [cell_chroma(t.rgb, 2).float().numpy() for t in targets]
    r_gray, parts = colorfulness_reward(gray_out, targets)
    assert r_gray.shape == (3,) and r_gray.dtype == torch.float32 and (r_gray.abs() < 1e-6).all()
    r_true, _ = colorfulness_reward(true_out, targets)
    assert (r_true > 5).all() and set(parts) == {"colorfulness"}
    total, parts = colorfulness_fidelity_reward(true_out, targets, fidelity_weight=2.0)
    torch.testing.assert_close(total, parts["colorfulness"] + 2.0 * parts["psnr"])
    assert (parts["psnr"] <= PSNR_CAP).all()
    # weight 0 is plain colorfulness
    torch.testing.assert_close(colorfulness_fidelity_reward(true_out, targets, 0.0)[0], r_true)
