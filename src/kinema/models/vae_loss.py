"""The VAE's training objective.

    loss = l1 * |x - recon| + mse * (x - recon)^2 + kl * KL(q(z|x) || N(0, 1))
         + temporal * |diff_t(recon) - diff_t(x)|

Every term is a mean over elements (the KL over latent elements), so the weights
do not depend on the clip's size. The temporal term compares consecutive-frame
differences of the reconstruction with those of the input, penalising flicker
that a per-frame loss does not see.

MSE leads by default (l1 0.1, mse 1): on clips that are mostly one flat
background, such as the shapes dataset, a large L1 weight holds a fresh model
at "background everywhere" (the per-pixel median) for hundreds of steps, while
MSE pulls it out within a few dozen; the L1 term then sharpens edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    RETIRED = {"adversarial_weight": 0.0}  # not annotated: a class attribute, not a field
    """Fields read from old configs where they hold these values, and dropped (no training loop had the
    discriminator the adversarial term needed)."""

    def __post_init__(self) -> None:
        for name in ("l1_weight", "mse_weight", "kl_weight", "temporal_weight"):
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
) -> dict[str, torch.Tensor]:
    """The VAE loss and each term (unweighted), for logging.

    x, recon: (B, C, T, H, W); posterior_mean, posterior_logvar: (B, c, t, h, w), as `VideoVAE.forward` returns.
    Returns {"loss", "l1", "mse", "kl", "temporal"}, fp32 scalars.
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
    return {"loss": loss, **terms}
