"""What every task shares: checking a request, prompts, noise, the guided denoiser, sampling, decoding.

A task is "sample the latents that are not given, then decode" (see `kinema.diffusion.conditioning`):

    plan = make_plan(pipe, ...)                         every argument checked before any work
    texts = encode_prompts(pipe.text_encoder, prompts)   (prompt, "") token pairs for guidance
    noise, rngs = prepare_noise(shape, plan.seeds)       sample i from its own generator, seed + i
    latents = run_sampler(pipe, noise, cond, texts, plan, rngs)   known latents pasted at every step
    videos = to_videos(decode(pipe, latents), plan.fps, metadata(...))

(`sample_and_decode` is those four lines for the tasks that start from pure noise.)

Samples run one at a time through the denoiser and the VAE. Batching them changes the last
bits of the DiT's output (attention and matmul kernels depend on the batch size), and those
bits flip uint8 levels of the decoded frames; one at a time, sample i of a batch is exactly
the sample generated alone, and memory is that of one sample. The classifier-free guidance
pair (prompt and "") still runs as one batch of two, the same in both cases.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from kinema.diffusion.conditioning import Conditioning, channels, paste_known
from kinema.diffusion.guidance import guided
from kinema.diffusion.processes import model_to_denoiser
from kinema.diffusion.samplers import STEPS, sample
from kinema.errors import KinemaError

if TYPE_CHECKING:
    from kinema.pipelines.pipeline import Pipeline, SamplingSettings
    from kinema.video import Video

MAX_SEED = 2**63 - 1

# ----------------------------------------------------------------------------------------------
# Checks of single arguments (used by the API and, before the model is loaded, by the CLI)


def check_sampler(sampler: Any) -> str:
    if not isinstance(sampler, str) or sampler not in STEPS:
        raise KinemaError(f"unknown sampler {sampler!r}; choose one of {', '.join(STEPS)}")
    return sampler


def check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise KinemaError(f"steps (num_inference_steps) must be an integer >= 1, got {steps!r}")
    return int(steps)


def check_guidance(guidance: Any) -> float:
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance) or guidance < 0:
        raise KinemaError(
            f"guidance (guidance_scale) must be a number >= 0 (1 turns guidance off, 4-7 is usual), got {guidance!r}"
        )
    return float(guidance)


def check_guidance_interval(interval: Any) -> tuple[float, float] | None:
    """(sigma_lo, sigma_hi), 0 <= lo <= hi (hi may be inf): guide only at those noise levels; None if that is every level."""
    ok = isinstance(interval, (tuple, list)) and len(interval) == 2
    ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v) for v in interval)
    if not ok or not 0 <= interval[0] <= interval[1] or math.isinf(interval[0]):
        raise KinemaError(
            f"guidance_interval must be (sigma_lo, sigma_hi) with 0 <= lo <= hi: the noise levels where guidance "
            f"runs, e.g. (0.3, 1.0) for a flow-matching model; (0, inf) guides every step. Got {interval!r}"
        )
    lo, hi = float(interval[0]), float(interval[1])
    return None if lo == 0 and math.isinf(hi) else (lo, hi)


def resolve_guidance_interval(settings: SamplingSettings, interval: Any) -> tuple[float, float] | None:
    """A call's interval, or the pipeline's default when it gives none; checked, None meaning every step."""
    interval = settings.guidance_interval if interval is None else interval
    return None if interval is None else check_guidance_interval(interval)


def check_shift_value(shift: Any, name: str = "shift") -> float:
    """A sampling shift as a number > 0; name is what the error calls it (e.g. "--shift")."""
    if isinstance(shift, bool) or not isinstance(shift, numbers.Real) or not math.isfinite(shift) or not shift > 0:
        raise KinemaError(f"{name} must be a number > 0 (the sampling schedule's noise-level shift), got {shift!r}")
    return float(shift)


def check_shift(pipe: Pipeline, shift: Any) -> float | None:
    """A sampling shift: None, or a number > 0 for a flow-matching pipeline."""
    from kinema.diffusion import FlowMatching

    if shift is None:
        return None
    shift = check_shift_value(shift)
    if not isinstance(pipe.process, FlowMatching):
        raise KinemaError(
            f"shift applies to flow-matching pipelines; this one samples a {type(pipe.process).__name__}: leave shift unset"
        )
    return shift


def sampling_sigmas(process: Any, steps: int, shift: float | None = None) -> Tensor:
    """The noise levels of a sampling run: a process's schedule of steps, on another shift when one is given
    (flow matching only: see check_shift)."""
    return process.sigmas(steps) if shift is None else process.sigmas(steps, shift=shift)


def parse_guidance_interval(text: str, flag: str = "--guidance-interval") -> tuple[float, float]:
    """The CLI form "LO,HI" (e.g. "0.3,1" or "0,inf") as a checked (lo, hi)."""
    parts = text.split(",")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise KinemaError(f"{flag} {text!r}: give LO,HI, the noise levels where guidance runs (e.g. 0.3,1 or 0,inf)") from None
    checked = check_guidance_interval((lo, hi))
    return (0.0, math.inf) if checked is None else checked


def check_strength(strength: Any) -> float:
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
        raise KinemaError(
            f"strength must be in (0, 1]: the fraction of the noise schedule re-run (0.3 keeps much of the clip, "
            f"1 regenerates it), got {strength!r}"
        )
    return float(strength)


def check_count(value: Any, name: str, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise KinemaError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise KinemaError(f"seed must be an integer in [0, 2**63 - 1], or None for a random one; got {seed!r}")
    return int(seed)


def check_fps(fps: Any, name: str = "fps") -> float:
    from kinema.video.write import FPS_RANGE  # what a video file can hold and read back

    lo, hi = FPS_RANGE
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not lo <= fps <= hi:
        raise KinemaError(f"{name} must be a number > 0 within {lo:g}-{hi:g} (the rates video files hold), got {fps!r}")
    return float(fps)


def check_prompts(prompt: str | Sequence[str], what: str = "prompt") -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise KinemaError(f"{what} must be a string or a non-empty list of strings, got {prompt!r}")
    for p in prompts:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate: bytes from argv or a file that were not UTF-8
            raise KinemaError(
                f"{what} is not valid text: character {e.start} stands for a byte that is not UTF-8 "
                f"({p[max(0, e.start - 20) : e.start]!r}...); pass UTF-8 text (a UTF-8 locale, e.g. LANG=C.UTF-8)"
            ) from None
    return prompts


def draw_seed() -> int:
    """A random seed for a call that gives none (it is recorded in each video's metadata)."""
    import secrets

    return secrets.randbelow(2**31)


# ----------------------------------------------------------------------------------------------
# What the model can make


def latent_multiples(denoiser: torch.nn.Module) -> tuple[int, int, int]:
    """(t, h, w) the latent grid must be a multiple of: a DiT's patch size, a U-Net's downsampling."""
    config = denoiser.config
    if hasattr(config, "patch_size"):
        return tuple(config.patch_size)  # type: ignore[return-value]
    factor = config.downsample_factor
    return (1, factor, factor)


def check_frames(pipe: Pipeline, num_frames: Any, *, least_latents: int = 1, what: str = "num_frames") -> int:
    """num_frames pixel frames -> latent frames; frame counts the model cannot make name the nearest ones."""
    check_count(num_frames, what)
    f = pipe.vae.config.temporal_factor
    pt = latent_multiples(pipe.denoiser)[0]
    valid = lambda t: t >= least_latents and t % pt == 0  # noqa: E731  (latent frame counts the model makes)
    latents = (num_frames - 1) // f + 1
    if (num_frames - 1) % f == 0 and valid(latents):
        return latents
    lower = next((t for t in range(latents, 0, -1) if valid(t) and 1 + f * (t - 1) <= num_frames), None)
    candidates = range(max(latents, 1), latents + least_latents + 2 * pt + 2)
    upper = next(t for t in candidates if valid(t) and 1 + f * (t - 1) >= num_frames)
    near = [1 + f * (t - 1) for t in (lower, upper) if t is not None]
    rule = f"1 + {f}k frames" + (f" with 1 + k a multiple of {pt}" if pt > 1 else "")
    least = f", at least {1 + f * (least_latents - 1)}" if least_latents > 1 else ""
    use = " or ".join(map(str, dict.fromkeys(near)))
    raise KinemaError(f"{what}={num_frames} cannot be made: this model makes {rule}{least}; use {use}")


def check_size(pipe: Pipeline, height: Any, width: Any) -> tuple[int, int]:
    """(height, width) in pixels -> latent (h, w); sizes the model cannot make name the nearest ones."""
    check_count(height, "height")
    check_count(width, "width")
    s = pipe.vae.config.spatial_factor
    m = s * max(latent_multiples(pipe.denoiser)[1:])
    bad = [(name, n) for name, n in (("height", height), ("width", width)) if n % m]
    if bad:
        near = lambda n: " or ".join(str(v) for v in sorted({max(m, n // m * m), -(-n // m) * m}))  # noqa: E731
        sizes = ", ".join(f"{name} {n} (use {near(n)})" for name, n in bad)
        raise KinemaError(
            f"size {height}x{width} (HxW) cannot be made: this model needs multiples of {m} "
            f"(VAE factor {s} x the denoiser's patch); {sizes}"
        )
    return height // s, width // s


# ----------------------------------------------------------------------------------------------
# A checked request


@dataclass(frozen=True, kw_only=True)
class Plan:
    """One call's checked settings: every sample's seed, the sampler, and the clip it makes."""

    seeds: tuple[int, ...]
    """Seed of each sample (seed + i); sample i's noise comes from its own generator."""
    sampler: str
    """Sampler method (kinema.diffusion.samplers.STEPS)."""
    steps: int
    """Denoising steps of the full schedule."""
    guidance: float
    """Classifier-free guidance scale."""
    guidance_interval: tuple[float, float] | None
    """(sigma_lo, sigma_hi): guide only at these noise levels (the conditional pass alone elsewhere); None: always."""
    shift: float | None
    """The sampling schedule's noise-level shift; None: the process's (`SamplingSettings.shift`)."""
    image_first: bool
    """Text-to-video samples frame 0 alone first, then the clip from it (`SamplingSettings.image_first`)."""
    num_frames: int
    """Pixel frames of the clip (of one window, for an extension)."""
    latent_shape: tuple[int, int, int, int]
    """(C, T, h, w) of the clip's latents."""
    height: int
    """Frame height in pixels."""
    width: int
    """Frame width in pixels."""
    fps: float
    """Frame rate of the videos returned."""


def make_plan(
    pipe: Pipeline,
    *,
    num_samples: int,
    seed: int | None,
    sampler: str | None,
    steps: int | None,
    guidance: float | None,
    num_frames: int | None,
    height: int | None,
    width: int | None,
    fps: float | None,
    guidance_interval: tuple[float, float] | None = None,
    shift: float | None = None,
    image_first: bool | None = None,
    least_latents: int = 1,
    frames_name: str = "num_frames",
) -> Plan:
    """Fill the pipeline's defaults in and check everything; raises KinemaError naming the argument."""
    s: SamplingSettings = pipe.settings
    num_frames = s.num_frames if num_frames is None else num_frames
    height = s.height if height is None else height
    width = s.width if width is None else width
    sampler = check_sampler(s.sampler if sampler is None else sampler)
    steps = check_steps(s.steps if steps is None else steps)
    guidance = check_guidance(s.guidance if guidance is None else guidance)
    interval = resolve_guidance_interval(s, guidance_interval)
    shift = check_shift(pipe, s.shift if shift is None else shift)
    image_first = s.image_first if image_first is None else image_first
    if not isinstance(image_first, bool):
        raise KinemaError(f"image_first must be True or False, got {image_first!r}")
    fps = check_fps(s.fps if fps is None else fps)
    seed = draw_seed() if seed is None else check_seed(seed)
    if seed + num_samples - 1 > MAX_SEED:
        raise KinemaError(f"seed {seed} + {num_samples} samples passes 2**63 - 1; use a smaller seed")
    t = check_frames(pipe, num_frames, least_latents=least_latents, what=frames_name)
    h, w = check_size(pipe, height, width)
    return Plan(
        seeds=tuple(seed + i for i in range(num_samples)),
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        guidance_interval=interval,
        shift=shift,
        image_first=image_first,
        num_frames=num_frames,
        latent_shape=(pipe.vae.config.latent_channels, t, h, w),
        height=height,
        width=width,
        fps=fps,
    )


# ----------------------------------------------------------------------------------------------
# Prompts, noise, the denoiser, the sampler, decoding


@dataclass(frozen=True)
class TextInputs:
    """One prompt's inputs to the denoiser: the conditional and the unconditional ("") halves of guidance."""

    cond: dict[str, Tensor]
    """{"context": (1, L, D), "context_mask": (1, L) bool}."""
    uncond: dict[str, Tensor]
    """The same for the empty prompt, padded to the same L."""


def encode_prompts(text_encoder: torch.nn.Module, prompts: Sequence[str]) -> list[TextInputs]:
    """Each prompt encoded alone (so its tokens never depend on the others), paired with "" for guidance."""
    from kinema.models.text import pad_tokens

    empty, empty_mask = text_encoder.encode([""])
    pairs: dict[str, TextInputs] = {}
    for prompt in dict.fromkeys(prompts):
        tokens, mask = text_encoder.encode([prompt])
        length = max(tokens.shape[1], empty.shape[1])
        tokens, mask = pad_tokens(tokens, mask, length)
        e_tokens, e_mask = pad_tokens(empty, empty_mask, length)
        pairs[prompt] = TextInputs({"context": tokens, "context_mask": mask}, {"context": e_tokens, "context_mask": e_mask})
    return [pairs[p] for p in prompts]


@dataclass(frozen=True)
class SampleRandom:
    """A sample's randomness: a CPU generator for its noise (the same on every device) and one for the sampler."""

    noise: torch.Generator
    sampler: torch.Generator


def sample_random(seed: int, device: torch.device) -> SampleRandom:
    noise = torch.Generator().manual_seed(seed)
    # The sampler's own stream (ddpm draws noise on the device), seeded from the sample's.
    sampler_seed = int(torch.randint(0, MAX_SEED, (1,), generator=noise))
    return SampleRandom(noise, torch.Generator(device).manual_seed(sampler_seed))


def prepare_noise(
    shape: tuple[int, ...], seeds: Sequence[int], *, device: torch.device
) -> tuple[Tensor, list[SampleRandom]]:
    """Noise (B, *shape), row i drawn from seed i's own generator, and the generators (to draw more later)."""
    rngs = [sample_random(seed, device) for seed in seeds]
    return draw_noise(shape, rngs, device=device), rngs


def draw_noise(shape: tuple[int, ...], rngs: Sequence[SampleRandom], *, device: torch.device) -> Tensor:
    """N(0, I) of (B, *shape), row i from rngs[i] (a later window of an extension draws again)."""
    return torch.stack([torch.randn(shape, generator=r.noise) for r in rngs]).to(device)


def make_denoiser(
    model: torch.nn.Module,
    process: Any,
    cond: Conditioning,
    text: TextInputs,
    guidance: float,
    interval: tuple[float, float] | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """`denoise(x, sigma) -> x0_hat` for one sample: guided, conditioned on the known latents, and pasting them.

    The known latents go in twice, as in training: as the conditioning channels, and pasted clean into
    x before the network sees it; they are pasted into x0_hat too, so every step keeps them exactly.
    """
    base = model_to_denoiser(model, process)
    denoise = guided(base, {**text.cond, "cond_channels": channels(cond)}, text.uncond, guidance, interval=interval)

    def pasted(x: Tensor, sigma: Tensor) -> Tensor:
        return paste_known(denoise(paste_known(x, cond), sigma), cond)

    return pasted


class Progress:
    """A call's progress on stderr, or nothing: one bar of sampler steps and one of VAE decoding chunks.

    Each stage has its own label, count, rate and ETA: decoding a long clip can take a while, and a
    sampling bar sitting at 100% meanwhile looks hung. `step` and `decoded` are the callbacks to pass on.
    """

    def __init__(self, description: str, *, steps: int, chunks: int, enabled: bool = True) -> None:
        self.bars: list[Any] = []
        if enabled:
            from tqdm.auto import tqdm

            width = len(description) + len(": decoding")
            self.bars = [
                tqdm(total=total, desc=f"{description}: {stage}".ljust(width), unit=unit, position=i, dynamic_ncols=True)
                for i, (stage, total, unit) in enumerate((("sampling", steps, "step"), ("decoding", chunks, "chunk")))
            ]

    def step(self) -> None:
        """One sampler step done."""
        if self.bars:
            self.bars[0].update(1)

    def decoded(self) -> None:
        """One chunk of VAE decoding done."""
        if self.bars:
            self.bars[1].update(1)

    def close(self) -> None:
        for bar in self.bars:
            bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


QUIET = Progress("", steps=0, chunks=0, enabled=False)
"""No progress shown (a task called without a bar)."""


def run_sampler(
    pipe: Pipeline,
    x: Tensor,
    cond: Conditioning,
    texts: Sequence[TextInputs],
    plan: Plan,
    rngs: Sequence[SampleRandom],
    *,
    sigmas: Tensor | None = None,
    progress: Progress = QUIET,
) -> Tensor:
    """Sample latents from x: (B, C, T, h, w) at sigmas[0] down to 0, one sample at a time; known latents kept.

    sigmas: the noise levels (the full schedule of plan.steps by default; an edit starts part way down).
    progress: counts every step.
    """
    sigmas = sampling_sigmas(pipe.process, plan.steps, plan.shift) if sigmas is None else sigmas
    callback = None if progress is QUIET else (lambda *_: progress.step())
    out = []
    for i in range(x.shape[0]):
        cond_i = Conditioning(latents=cond.latents[i : i + 1], mask=cond.mask[i : i + 1])
        denoise = make_denoiser(pipe.denoiser, pipe.process, cond_i, texts[i], plan.guidance, plan.guidance_interval)
        with pipe.autocast():
            sample_i = sample(
                denoise, paste_known(x[i : i + 1], cond_i), sigmas, process=pipe.process, method=plan.sampler,
                generator=rngs[i].sampler, callback=callback,
            )  # fmt: skip
        out.append(paste_known(sample_i.float(), cond_i))
    return torch.cat(out)


def sample_and_decode(
    pipe: Pipeline,
    task: str,
    prompts: Sequence[str],
    cond: Conditioning,
    plan: Plan,
    progress: Progress = QUIET,
    rngs: Sequence[SampleRandom] | None = None,
) -> list[Video]:
    """What text-to-video, image-to-video and interpolation share: noise, sampling under `cond`, decoding.

    rngs: each sample's random streams to draw from (a long video goes on drawing from them); default fresh
    ones from plan.seeds."""
    if rngs is None:
        noise, rngs = prepare_noise(plan.latent_shape, plan.seeds, device=pipe.device)
    else:
        noise = draw_noise(plan.latent_shape, rngs, device=pipe.device)
    latents = run_sampler(pipe, noise, cond, encode_prompts(pipe.text_encoder, prompts), plan, rngs, progress=progress)
    return to_videos(decode(pipe, latents, progress), plan.fps, metadata(pipe, plan, task, prompts))


def encode(pipe: Pipeline, video: Tensor) -> Tensor:
    """Pixels (B, 3, T, H, W) in [-1, 1] -> normalised latents (B, C, t, h, w) (the posterior mean)."""
    with pipe.autocast():
        return torch.cat([pipe.vae.encode(video[i : i + 1].to(pipe.device)).float() for i in range(video.shape[0])])


def decode(pipe: Pipeline, latents: Tensor, progress: Progress = QUIET) -> Tensor:
    """Latents (B, C, t, h, w) -> pixels (B, 3, T, H, W) in [-1, 1] on the CPU, one sample at a time.

    progress counts `pipe.vae.num_chunks(t)` chunks a sample.
    """
    done = None if progress is QUIET else progress.decoded
    with pipe.autocast():
        return torch.cat([pipe.vae.decode(latents[i : i + 1], progress=done).float().cpu() for i in range(latents.shape[0])])


def to_videos(frames: Tensor, fps: float, metadata: Sequence[dict[str, Any]]) -> list[Video]:
    """Pixels (B, 3, T, H, W) in [-1, 1] -> B Videos, each with its metadata."""
    from kinema.video import Video

    return [Video.from_tensor(frames[i], fps=fps, metadata=metadata[i]) for i in range(frames.shape[0])]


def metadata(
    pipe: Pipeline, plan: Plan, task: str, prompts: Sequence[str | Sequence[str]], **extra: Any
) -> list[dict[str, Any]]:
    """What each video records about how it was made (the file keeps it; kinema_version is added on write)."""
    import json

    out = []
    for prompt, seed in zip(prompts, plan.seeds):
        record = {
            "task": task,
            "prompt": prompt if isinstance(prompt, str) else json.dumps(list(prompt)),
            "seed": seed,
            "sampler": plan.sampler,
            "steps": plan.steps,
            "guidance": plan.guidance,
            **({} if plan.guidance_interval is None else {"guidance_interval": "{:g},{:g}".format(*plan.guidance_interval)}),
            **({} if plan.shift is None else {"shift": plan.shift}),
            "model_hash": pipe.model_hash,
            "precision": pipe.precision,
            **{k: v for k, v in extra.items() if v is not None},
        }
        out.append(record)
    return out
