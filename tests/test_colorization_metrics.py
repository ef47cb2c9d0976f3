"""SSIM, histogram distance, split metrics and `score_dirs` folder checks."""
import math

import numpy as np
import pytest
from PIL import Image

from rewardtune.errors import DataError
from rewardtune.tasks.colorization.metrics import (_gaussian_window, ab_histogram, chi_square_distance,
                                                   image_metrics, score_dirs, ssim)

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _rng_images(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_ssim_identical_is_one_and_constant_images_closed_form():
    a = _rng_images(2, 16, 16)
    np.testing.assert_allclose(ssim(a, a).numpy(), 1.0)
    x, y = np.full((1, 12, 12, 3), 100, np.uint8), np.full((1, 12, 12, 3), 150, np.uint8)
    # sigma = 0 everywhere: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    expected = (2 * 100 * 150 + C1) / (100 ** 2 + 150 ** 2 + C1)
    np.testing.assert_allclose(ssim(x, y).numpy(), expected, rtol=1e-9)


def test_ssim_matches_window_by_window_reference():
    x, y = _rng_images(1, 13, 14, seed=1)[0].astype(float), _rng_images(1, 13, 14, seed=2)[0].astype(float)
    w = _gaussian_window(11, 1.5).numpy()
    per_channel = []
    for ch in range(3):
        vals = []
        for i in range(13 - 10):
            for j in range(14 - 10):
                px, py = x[i:i + 11, j:j + 11, ch], y[i:i + 11, j:j + 11, ch]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + C1) * (2 * cxy + C2) / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2)))
        per_channel.append(np.mean(vals))
    got = ssim(x[None].astype(np.uint8), y[None].astype(np.uint8)).item()
    assert got == pytest.approx(np.mean(per_channel), abs=1e-9)


def test_histogram_distance():
    a = _rng_images(3, 8, 8)
    assert chi_square_distance(ab_histogram(a), ab_histogram(a)) == 0.0
    red, green = np.full((1, 4, 4, 3), (255, 0, 0), np.uint8), np.full((1, 4, 4, 3), (0, 255, 0), np.uint8)
    assert chi_square_distance(ab_histogram(red), ab_histogram(green)) == pytest.approx(1.0)


def test_image_metrics_identical_and_offset():
    a = list(_rng_images(2, 16, 16, seed=3) // 2 + 50)
    m = image_metrics(a, a)
    assert m["psnr"] == 100.0 and m["ssim"] == pytest.approx(1.0) and m["hist_distance"] == 0.0
    assert m["colorfulness"] == pytest.approx(m["colorfulness_truth"])
    m = image_metrics([x + 3 for x in a], a)
    assert m["psnr"] == pytest.approx(20 * math.log10(255 / 3))


def _write(folder, names, size=(8, 8), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(_rng_images(1, size[1], size[0], seed + i)[0]).save(folder / name)


def test_score_dirs_ok_and_nested_images_folder(tmp_path):
    _write(tmp_path / "gt", ["a.png", "b.jpg"])
    _write(tmp_path / "pred" / "images", ["a.png", "b.png"], seed=5)
    m = score_dirs(str(tmp_path / "pred"), str(tmp_path / "gt"))
    assert m["images"] == 2 and {"psnr", "ssim", "colorfulness", "hist_distance"} <= set(m)


def test_score_dirs_names_the_missing_extra_and_resized_images(tmp_path):
    _write(tmp_path / "gt", ["a.png", "b.png", "c.png"])
    _write(tmp_path / "pred", ["a.png"])
    with pytest.raises(DataError, match=r"lacks 2 images.*b\.png, c\.png"):
        score_dirs(str(tmp_path / "pred"), str(tmp_path / "gt"))
    _write(tmp_path / "pred", ["b.png", "c.png", "zz.png"])
    with pytest.raises(DataError, match=r"1 image not in .*zz\.png"):
        score_dirs(str(tmp_path / "pred"), str(tmp_path / "gt"))
    (tmp_path / "pred" / "zz.png").unlink()
    _write(tmp_path / "pred", ["b.png"], size=(16, 8))
    with pytest.raises(DataError, match=r"differ in size.*b\.png \(16x8 vs 8x8\)"):
        score_dirs(str(tmp_path / "pred"), str(tmp_path / "gt"))
    with pytest.raises(DataError, match="nowhere"):
        score_dirs(str(tmp_path / "nowhere"), str(tmp_path / "gt"))
