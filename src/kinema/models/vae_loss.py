"""The VAE's training objective, and an optional 3D patch discriminator.

    loss = l1 * |x - recon| + mse * (x - recon)^2 + kl * KL(q(z|x) || N(0, 1))
         + temporal * |diff_t(recon) - diff_t(x)| + adversarial * (-D(recon))

Every term is a mean over elements (the KL over latent elements), so the weights
do not depend on the clip's size. The temporal term compares consecutive-frame
differences of the reconstruction with those of the input, penalising flicker
that a per-frame loss does not see. The adversarial term (hinge loss, off by
default) needs the discriminator's logits on the reconstruction.

MSE leads by default (l1 0.1, mse 1): on clips that are mostly one flat
background, such as the shapes dataset, a large L1 weight holds a fresh model
at "background everywhere" (the per-pixel median) for hundreds of steps, while
MSE pulls it out within a few dozen; the L1 term then sharpens edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, kw_only=True)
class VAELossConfig:
    """Weights of the VAE's loss terms; a weight of 0 turns its term off."""

    l1_weight: float = 0.1
    """Weight of the mean absolute reconstruction error."""
    mse_weight: float = 1.0
    """Weight of the mean squared reconstruction error."""
    kl_weight: float = 1e-6
    """Weight of the KL divergence to N(0, 1), a mean over latent elements; small, so latents stay informative."""
    temporal_weight: float = 0.0
    """Weight of the mean absolute error of frame-to-frame differences (anti-flicker); about 0.1 when used."""
    adversarial_weight: float = 0.0
    """Weight of the generator's hinge loss against a PatchDiscriminator3d; 0 (off) by default."""

    def __post_init__(self) -> None:
        for name in ("l1_weight", "mse_weight", "kl_weight", "temporal_weight", "adversarial_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"VAELossConfig.{name} must be a number >= 0, got {value!r}")
        if self.l1_weight == 0 and self.mse_weight == 0:
            raise ValueError("VAELossConfig: l1_weight and mse_weight are both 0; at least one must be > 0")


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per element: 0.5 * (mean^2 + exp(logvar) - 1 - logvar)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)


def vae_loss(
    x: torch.Tensor,
    recon: torch.Tensor,
    posterior_mean: torch.Tensor,
    posterior_logvar: torch.Tensor,
    *,
    weights: VAELossConfig,
    disc_fake_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The VAE loss and each term (unweighted), for logging.

    x, recon: (B, C, T, H, W); posterior_mean, posterior_logvar: (B, c, t, h, w), as `VideoVAE.forward` returns.
    disc_fake_logits: the discriminator's logits on `recon`, needed when weights.adversarial_weight > 0.
    Returns {"loss", "l1", "mse", "kl", "temporal"[, "adversarial"]}, fp32 scalars.
    """
    if x.shape != recon.shape:
        raise ValueError(f"x {tuple(x.shape)} and recon {tuple(recon.shape)} must have the same shape")
    x, recon = x.float(), recon.float()
    error = recon - x
    terms = {
        "l1": error.abs().mean(),
        "mse": error.square().mean(),
        "kl": kl_divergence(posterior_mean.float(), posterior_logvar.float()).mean(),
    }
    if x.shape[2] > 1:
        terms["temporal"] = (recon.diff(dim=2) - x.diff(dim=2)).abs().mean()
    else:  # a single frame has no flicker
        terms["temporal"] = error.new_zeros(())
    loss = (
        weights.l1_weight * terms["l1"]
        + weights.mse_weight * terms["mse"]
        + weights.kl_weight * terms["kl"]
        + weights.temporal_weight * terms["temporal"]
    )
    if weights.adversarial_weight > 0:
        if disc_fake_logits is None:
            raise ValueError("adversarial_weight > 0 needs disc_fake_logits (the discriminator's logits on recon)")
        terms["adversarial"] = -disc_fake_logits.float().mean()
        loss = loss + weights.adversarial_weight * terms["adversarial"]
    return {"loss": loss, **terms}


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: mean(relu(1 - D(x))) + mean(relu(1 + D(recon.detach())))."""
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


class PatchDiscriminator3d(nn.Module):
    """A 3D PatchGAN: strided 3D convs that score overlapping space-time patches as real or reconstructed.

    Strides halve H and W only, so a one-frame video (an image) works too.
    x: (B, C, T, H, W) -> logits (B, 1, T, H / 2^layers, W / 2^layers)
    """

    def __init__(self, in_channels: int = 3, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv3d(in_channels, channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)), nn.LeakyReLU(0.2)]
        dim = channels
        for i in range(1, layers):
            out = channels * min(2**i, 8)
            blocks += [
                nn.Conv3d(dim, out, (3, 4, 4), (1, 2, 2), (1, 1, 1), bias=False),
                nn.GroupNorm(min(32, out // 4), out),
                nn.LeakyReLU(0.2),
            ]
            dim = out
        blocks.append(nn.Conv3d(dim, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
