"""The mathematical core of diffusion: noise processes, samplers, guidance and the conditioning timeline.

Pure functions and small frozen values; no scheduler objects. The one convention: a denoiser
`denoise(x, sigma) -> x0_hat` returns the clean estimate (see `kinema.diffusion.processes`).
Modules: `processes`, `samplers`, `guidance`, `conditioning`; the names below are re-exported lazily.
"""

from kinema.lazy import lazy_getattr

_EXPORTS = {
    "FlowMatching": ".processes",
    "VPDiffusion": ".processes",
    "Process": ".processes",
    "model_to_denoiser": ".processes",
    "training_loss": ".processes",
    "process_to_dict": ".processes",
    "process_from_dict": ".processes",
    "sample": ".samplers",
    "guided": ".guidance",
    "Conditioning": ".conditioning",
    "ConditioningMix": ".conditioning",
    "channels": ".conditioning",
    "num_channels": ".conditioning",
    "paste_known": ".conditioning",
    "sample_conditioning": ".conditioning",
    "sample_known_mask": ".conditioning",
    "text_to_video": ".conditioning",
    "image_to_video": ".conditioning",
    "interpolation": ".conditioning",
    "extension": ".conditioning",
    "inpainting": ".conditioning",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
