"""PSNR, SSIM, flicker and Wilson intervals against independent references (numpy, scipy)."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from kinema.errors import KinemaError
from kinema.eval.metrics import PSNR_MAX, flicker, frame_psnr, frame_ssim, proportion, psnr, ssim, wilson_interval


def video(seed, shape=(2, 3, 4, 24, 20)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_psnr_per_frame_matches_the_formula_and_averages_over_frames():
    x = video(0)
    y = (x + 0.1 * video(1)).clamp(-1, 1)
    a, b = x.double().numpy(), y.double().numpy()
    mse = ((a - b) ** 2).mean(axis=(1, 3, 4))  # (B, T)
    expected = 10 * np.log10(4.0 / mse)
    assert frame_psnr(x, y).numpy() == pytest.approx(expected, rel=1e-5)
    assert psnr(x, y).numpy() == pytest.approx(expected.mean(axis=1), rel=1e-5)


def test_psnr_of_identical_frames_is_capped_not_infinite():
    x = video(2)
    y = x.clone()
    y[:, :, 1] = 0  # one frame differs
    per_frame = frame_psnr(x, y)
    assert per_frame[:, 0].tolist() == [PSNR_MAX, PSNR_MAX] and torch.isfinite(per_frame).all()
    assert (per_frame[:, 1] < 20).all()


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of one grey image in [-1, 1] as the paper defines it, with scipy's Gaussian filter."""
    blur = lambda z: ndimage.gaussian_filter(z, sigma=1.5, truncate=3.5)[5:-5, 5:-5]  # noqa: E731  (11x11, valid part)
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    return float((((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean())


def test_ssim_matches_a_scipy_reference_per_channel_and_frame():
    x = video(3)
    y = (0.8 * x + 0.2 * video(4)).clamp(-1, 1)
    a, b = x.double().numpy(), y.double().numpy()
    expected = np.array(
        [[np.mean([reference_ssim(a[i, c, t], b[i, c, t]) for c in range(3)]) for t in range(4)] for i in range(2)]
    )
    assert frame_ssim(x, y).numpy() == pytest.approx(expected, abs=1e-6)
    assert ssim(x, y).numpy() == pytest.approx(expected.mean(axis=1), abs=1e-6)


def test_ssim_is_one_for_identical_videos_and_lower_for_noise():
    x = video(5)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert (ssim(x, (x + 0.3 * video(6)).clamp(-1, 1)) < 0.9).all()


def test_flicker_is_the_mean_absolute_frame_difference_in_grey_levels():
    x = torch.full((1, 3, 3, 8, 8), -1.0)
    x[:, :, 1] = 1.0  # black, white, black: every pixel changes by 255 levels twice
    assert flicker(x).tolist() == pytest.approx([255.0])
    still = video(7)[:, :, :1].expand(-1, -1, 5, -1, -1)
    assert flicker(still).tolist() == [0.0, 0.0]


def test_metrics_refuse_mismatched_or_too_small_inputs():
    with pytest.raises(KinemaError, match="same shape"):
        psnr(video(0), video(0)[:, :, :2])
    with pytest.raises(KinemaError, match="at least 11x11"):
        ssim(video(0, (1, 3, 2, 8, 8)), video(1, (1, 3, 2, 8, 8)))
    with pytest.raises(KinemaError, match="T >= 2"):
        flicker(video(0, (1, 3, 1, 8, 8)))


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (47, 64), (1, 1)])
def test_wilson_interval_matches_scipy(k, n):
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((expected.low, expected.high), abs=1e-6)


def test_proportion_and_empty_trials():
    p = proportion(3, 4)
    assert p["rate"] == 0.75 and p["k"] == 3 and p["n"] == 4 and 0 < p["ci95"][0] < 0.75 < p["ci95"][1] < 1
    assert proportion(0, 0) == {"rate": None, "ci95": [0.0, 1.0], "k": 0, "n": 0}
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    assert not math.isnan(wilson_interval(0, 3)[1])
