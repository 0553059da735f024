"""kinema: latent video diffusion you can read.

Clips are compressed by a causal 3D VAE into latents; a denoiser (a spatiotemporal
DiT or a factorized 3D U-Net) learns to remove noise across space and time,
conditioned on text and on known frames; sampling denoises from noise in latent
space and decodes to video. See DESIGN.md for the package map.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kinema' has no attribute {name!r}")
