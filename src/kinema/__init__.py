"""kinema: latent video diffusion you can read.

Clips are compressed by a causal 3D VAE into latents; a denoiser (a spatiotemporal
DiT or a factorized 3D U-Net) learns to remove noise across space and time,
conditioned on text and on known frames; sampling denoises from noise in latent
space and decodes to video. See DESIGN.md for the package map.
"""

from __future__ import annotations

from kinema.lazy import lazy_getattr

__version__ = "0.1.0"

# Public names, imported on first use so `import kinema` (and the CLI) start fast.
_EXPORTS = {
    "Video": "kinema.video",
    "VideoError": "kinema.video",
    "read_video": "kinema.video",
    "write_video": "kinema.video",
    "KinemaError": "kinema.errors",
    "Pipeline": "kinema.pipelines",
}

__all__ = [*_EXPORTS, "__version__"]

__getattr__ = lazy_getattr(__name__, _EXPORTS)
