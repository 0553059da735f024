"""Training: one loop for the VAE and the denoisers, exact resume, checkpoints, torchrun.

    from kinema.train import load_config, train
    result = train(load_config("shapes-vae", {"steps": 2000}), "runs/shapes-vae")   # -> runs/shapes-vae/pipeline

Modules: `config` (TrainConfig and its parts), `presets` (named recipes, config files, --set),
`loop` (`train`), `stages` (the vae and diffusion step functions), `data` (the seeded plan of
samples), `checkpoint`, `ema`, `schedule`, `distributed`, `cache`, `observe`, `estimate` (--dry-run).
The names below are imported on first use.
"""

from kinema.lazy import lazy_getattr

_EXPORTS = {
    "train": ".loop",
    "Result": ".loop",
    "TrainConfig": ".config",
    "load_config": ".presets",
    "PRESETS": ".presets",
    "estimate": ".estimate",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
