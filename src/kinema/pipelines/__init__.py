"""Pipelines: a trained model as one directory, and the tasks that generate with it.

    pipe = Pipeline.load("shapes")                       # a shipped name, or a pipeline directory
    video = pipe.generate("a red circle moving right", num_frames=17, seed=0)

Modules: `pipeline` (the `Pipeline` container and its `SamplingSettings`), `storage` (the
directory format: save, load, validation), `tasks` (one thin function per task), `common`
(what the tasks share: checks, prompts, noise, the guided denoiser, sampling, decoding),
`inputs` (images, clips and masks given as paths, arrays, tensors or `Video`s).
The names below are imported on first use, so `import kinema.pipelines` stays cheap.
"""

from kinema.lazy import lazy_getattr

_EXPORTS = {
    "Pipeline": ".pipeline",
    "SamplingSettings": ".pipeline",
    "shipped_pipelines": ".storage",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
