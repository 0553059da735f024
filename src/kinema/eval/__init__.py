"""Evaluation: metrics, and probes that check generated clips against their prompts.

Modules:
- `shapes_probe`: colour, shape, size and motion measured in a `shapes` clip of one object or two (SHAPES.md, "The probe");
- `digits`: the digits probe (a small shipped MNIST classifier reading each frame) and its evaluation;
- `metrics`: PSNR, SSIM, temporal flicker, Wilson intervals, a VAE's reconstruction evaluation;
- `fvd`: Fréchet distance with a pluggable feature network (a local I3D, or kinema's non-standard one);
- `shapes_eval`: `kinema eval shapes` (tasks as data, reference rows, the within-frame denoiser);
- `report`: JSON, Markdown and contact-sheet writers.

The names below are imported on first use, so `import kinema.eval` stays cheap.
"""

from kinema.lazy import lazy_getattr

_EXPORTS = {
    "probe": ".shapes_probe",
    "score": ".shapes_probe",
    "score_objects": ".shapes_probe",
    "parse_caption": ".shapes_probe",
    "psnr": ".metrics",
    "ssim": ".metrics",
    "flicker": ".metrics",
    "wilson_interval": ".metrics",
    "evaluate_vae": ".metrics",
    "frechet_distance": ".fvd",
    "feature_extractor": ".fvd",
    "score_digits": ".digits",
    "evaluate_digits": ".digits",
    "evaluate_shapes": ".shapes_eval",
    "GenerationSettings": ".shapes_eval",
    "TASKS": ".shapes_eval",
    "write_report": ".report",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
