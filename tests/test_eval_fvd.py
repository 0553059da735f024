"""Fréchet distance against scipy's sqrtm reference, and the pluggable feature networks."""

import json
import textwrap

import numpy as np
import pytest
import scipy.linalg
import torch

from kinema.errors import KinemaError
from kinema.eval.fvd import (
    I3D_LABEL,
    NON_STANDARD_LABEL,
    VideoFeatureConfig,
    VideoFeatureNet,
    feature_extractor,
    feature_stats,
    frechet_distance,
    fvd_from_features,
    i3d_extractor,
    load_network,
    network_info,
    save_network,
    video_features_extractor,
)


def reference_fd(mu1, sigma1, mu2, sigma2):
    """The formula as the FID/FVD reference code computes it, with scipy's matrix square root."""
    covmean, _ = scipy.linalg.sqrtm(sigma1 @ sigma2, disp=False)
    return float(np.real(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * covmean)))


@pytest.mark.parametrize(("n", "m", "d"), [(200, 150, 8), (40, 60, 16), (10, 12, 32)])  # the last: rank-deficient
def test_frechet_distance_matches_scipy(n, m, d):
    rng = np.random.default_rng([n, d])
    a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    b = rng.standard_normal((m, d)) * 1.5 + 0.3
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    assert np.allclose(mu1, a.mean(0)) and np.allclose(s1, np.cov(a, rowvar=False))
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(reference_fd(mu1, s1, mu2, s2), rel=1e-6, abs=1e-6)
    assert fvd_from_features(torch.from_numpy(a), b) == pytest.approx(ours, rel=1e-9)


def test_frechet_distance_of_known_gaussians():
    # Identical: 0. Shifted means only: the squared distance. Diagonal covariances: sum (sqrt(a) - sqrt(b))^2.
    sigma = np.diag([1.0, 4.0, 9.0])
    assert frechet_distance(np.zeros(3), sigma, np.zeros(3), sigma) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(np.zeros(3), sigma, np.array([1.0, 2.0, 2.0]), sigma) == pytest.approx(9.0)
    other = np.diag([4.0, 1.0, 9.0])
    assert frechet_distance(np.zeros(3), sigma, np.zeros(3), other) == pytest.approx(1.0 + 1.0 + 0.0)


def test_frechet_distance_refuses_bad_shapes():
    with pytest.raises(KinemaError, match="N >= 2"):
        feature_stats(np.zeros((1, 4)))
    with pytest.raises(KinemaError, match="one D"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_video_feature_net_takes_any_clip_size_and_round_trips(tmp_path):
    config = VideoFeatureConfig(width=8, feature_dim=12, frames=4, size=16)
    model = VideoFeatureNet(config).eval()
    x = torch.rand(3, 3, 9, 40, 40) * 2 - 1
    feats = model.features(x)
    assert feats.shape == (3, 12)
    assert {k: v.shape for k, v in model(x).items()} == {"colour": (3, 8), "shape": (3, 3), "size": (3, 2), "motion": (3, 5)}
    save_network(model, tmp_path, "video_features", {"validation_accuracy": {"colour": 0.5}})
    again = load_network(VideoFeatureNet, tmp_path, "video_features")
    assert again.config == config and torch.equal(again.features(x), feats)
    info = network_info(tmp_path, "video_features")
    assert info["validation_accuracy"] == {"colour": 0.5} and len(info["sha256"]) == 16
    extractor = video_features_extractor(tmp_path)
    assert extractor.label == NON_STANDARD_LABEL and not extractor.standard
    assert torch.allclose(extractor(x), feats)


def test_missing_network_names_the_training_command(tmp_path):
    with pytest.raises(KinemaError, match="kinema eval train-video-features"):
        load_network(VideoFeatureNet, tmp_path, "video_features")


def test_shipped_video_features_see_motion_and_shape():
    from kinema.data.shapes import SHAPES, ShapesDataset, render_clip

    extractor = feature_extractor(None)  # the shipped weights
    assert extractor.label == "FVD (kinema-shapes features, non-standard)"
    data = ShapesDataset(split="all", seed=1, length=32)
    attrs = [data.attributes(i)[0] for i in range(32)]
    clips = lambda objects: torch.stack([torch.from_numpy(render_clip(a, 64, 17)) for a in objects]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # noqa: E731
    real = clips(attrs)
    reference = extractor(real)
    noisy = (real + 0.02 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    still = real[:, :, :1].expand_as(real)  # motion removed: the first frame held
    reshaped = clips([{**a, "shape": SHAPES[(SHAPES.index(a["shape"]) + 1) % 3]} for a in attrs])  # same scenes, other shapes
    floor = fvd_from_features(reference, extractor(noisy))
    assert fvd_from_features(reference, extractor(still)) > 10 * floor
    assert fvd_from_features(reference, extractor(reshaped)) > 10 * floor


def test_i3d_extractor_calls_a_torchscript_file_as_fvd_does(tmp_path):
    # A stand-in with the I3D's call signature: it records the input it sees as its features.
    source = tmp_path / "fake_i3d.py"
    source.write_text(
        textwrap.dedent(
            """
            import torch

            class FakeI3D(torch.nn.Module):
                def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                            return_features: bool = False) -> torch.Tensor:
                    assert not rescale and not resize and return_features
                    return torch.stack([x.mean(dim=(1, 2, 3, 4)), x.amin(dim=(1, 2, 3, 4)),
                                        torch.full_like(x[:, 0, 0, 0, 0], float(x.shape[3]))], dim=1)
            """
        )
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("fake_i3d", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "i3d.pt"
    torch.jit.script(module.FakeI3D()).save(str(path))

    extractor = feature_extractor(path)
    assert extractor.label == I3D_LABEL and extractor.standard
    x = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    feats = extractor(x)
    assert feats.shape == (2, 3)
    assert feats[:, 2].tolist() == [224.0, 224.0]  # resized to 224x224
    assert feats[:, 1].min() >= -1.0 and feats[:, 0].numpy() == pytest.approx(x.mean(dim=(1, 2, 3, 4)).numpy(), abs=0.02)


def test_i3d_extractor_errors_name_the_file(tmp_path):
    with pytest.raises(KinemaError, match="no such file"):
        i3d_extractor(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(KinemaError, match="cannot load it as TorchScript"):
        i3d_extractor(bad)
    assert json.dumps(NON_STANDARD_LABEL)  # labels are plain strings for the JSON reports
