"""`kinema eval vae`: reconstruction PSNR, SSIM and flicker of a saved VAE, end to end."""

import json

import pytest
import torch

from kinema.cli import main
from kinema.data import ShapesDataset
from kinema.eval.metrics import evaluate_vae, flicker, psnr, ssim
from kinema.models.checkpoint import load_model, save_model
from kinema.models.vae import VideoVAE, vae_tiny


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("vae")
    save_model(VideoVAE(vae_tiny()), directory, "vae")
    return directory


def test_eval_vae_command_end_to_end(vae_dir, tmp_path, capsys):
    out = tmp_path / "vae.json"
    main(["eval", "vae", "--model", str(vae_dir), "--data", "shapes", "--n", "2", "--frames", "5", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["kind"] == "kinema-eval-vae" and report["n"] == 2
    assert report["clip"] == {"frames": 5, "height": 64, "width": 64}
    assert report["fvd_label"] == "FVD (kinema-shapes features, non-standard)" and report["fvd"] > 0
    assert (tmp_path / "vae.md").is_file() and "PSNR" in capsys.readouterr().out

    # The numbers are the metrics of the reconstructions, quantised as a saved file would be, in the precision
    # "auto" picks on this CPU (the default), which the report records.
    from kinema.precision import autocast, resolve

    assert report["precision"] == resolve("auto", "cpu")
    vae = load_model(vae_dir, "vae")
    data = ShapesDataset(size=64, frames=5)
    x = torch.stack([data[i]["video"] for i in range(2)])
    with torch.no_grad(), autocast(report["precision"], "cpu"):
        recon = vae.decode(vae.encode(x)).float()
    recon = ((recon + 1) * 127.5).round() / 127.5 - 1
    assert report["psnr"] == pytest.approx(float(psnr(recon, x).mean()), abs=1e-3)
    assert report["ssim"] == pytest.approx(float(ssim(recon, x).mean()), abs=1e-4)
    assert report["flicker_real"] == pytest.approx(float(flicker(x).mean()), abs=1e-3)
    assert report["flicker"] == pytest.approx(float(flicker(recon).mean()), abs=1e-3)


def test_a_perfect_autoencoder_scores_the_cap():
    class Identity(torch.nn.Module):
        def encode(self, x):
            return x

        def decode(self, z):
            return z

    report = evaluate_vae(Identity(), ShapesDataset(size=64, frames=3), n=2)
    assert report["psnr"] == 100.0 and report["ssim"] == pytest.approx(1.0)
    assert report["flicker"] == pytest.approx(report["flicker_real"]) and report["fvd"] == pytest.approx(0.0, abs=1e-3)


def test_eval_vae_refuses_a_folder_without_a_vae(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["eval", "vae", "--model", str(tmp_path), "--data", "shapes", "--out", str(tmp_path / "r.json")])
    assert e.value.code == 2


def test_eval_vae_accepts_a_shipped_pipeline_name(tmp_path, monkeypatch):
    # `--model shapes` means the shipped pipeline's VAE, as for `kinema generate` and `kinema eval shapes`;
    # run from an empty folder so no local ./shapes can be what is found
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "vae.json"
    main(["eval", "vae", "--model", "shapes", "--data", "shapes", "--n", "1", "--frames", "5", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["n"] == 1 and report["model"] == "shapes"
    assert report["psnr"] > 20  # the trained shipped VAE was loaded, not a random one: it reconstructs shapes well
