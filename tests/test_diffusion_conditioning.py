"""The conditioning timeline: builders per task, the denoiser's channels, the training mix."""

import pytest
import torch

from kinema.diffusion.conditioning import (
    KINDS,
    Conditioning,
    ConditioningMix,
    channels,
    extension,
    image_to_video,
    inpainting,
    interpolation,
    num_channels,
    paste_known,
    sample_conditioning,
    text_only,
    text_to_video,
)
from kinema.errors import KinemaError

B, C, T, H, W = 2, 4, 5, 6, 8


def latents(frames=T, seed=0):
    return torch.randn(B, C, frames, H, W, generator=torch.Generator().manual_seed(seed))


def known_frames(cond):
    """Which latent frames are fully known, per batch item."""
    return cond.mask.amin(dim=(1, 3, 4)).bool()


def test_builders_mark_the_given_frames():
    x = latents()
    t2v = text_to_video((B, C, T, H, W))
    assert t2v.mask.sum() == 0 and t2v.latents.shape == (B, C, T, H, W)

    i2v = image_to_video(x[:, :, :1], T)
    assert known_frames(i2v).tolist() == [[True, False, False, False, False]] * B
    assert torch.equal(i2v.latents[:, :, 0], x[:, :, 0])

    interp = interpolation(x[:, :, :1], x[:, :, -1:], T)
    assert known_frames(interp).tolist() == [[True, False, False, False, True]] * B
    assert torch.equal(interp.latents[:, :, -1], x[:, :, -1])

    ext = extension(x[:, :, :2], T)
    assert known_frames(ext).tolist() == [[True, True, False, False, False]] * B
    assert torch.equal(ext.latents[:, :, :2], x[:, :, :2])

    repaint = torch.zeros(B, 1, 1, H, W)
    repaint[:, :, :, 2:4, 3:6] = 1
    edit = inpainting(x, repaint)
    assert edit.mask.shape == (B, 1, T, H, W)
    assert edit.mask[:, :, :, 2:4, 3:6].sum() == 0 and edit.mask.sum() == B * T * (H * W - 6)
    per_frame = torch.zeros(B, 1, T, H, W)
    per_frame[:, :, 1] = 1  # repaint frame 1 only
    assert known_frames(inpainting(x, per_frame)).tolist() == [[True, False, True, True, True]] * B


def test_channels_and_paste():
    x = latents()
    cond = extension(x[:, :, :2], T)
    extra = channels(cond)
    assert extra.shape == (B, num_channels(C), T, H, W) == (B, C + 1, T, H, W)
    assert torch.equal(extra[:, :C, :2], x[:, :, :2]) and extra[:, :C, 2:].abs().sum() == 0
    assert torch.equal(extra[:, C:], cond.mask)
    noise = torch.randn_like(x)
    pasted = paste_known(noise, cond)
    assert torch.equal(pasted[:, :, :2], x[:, :, :2]) and torch.equal(pasted[:, :, 2:], noise[:, :, 2:])
    assert num_channels(16) == 17  # a DiT with 16 latent channels takes 16 + 17 = 33 inputs


def test_builders_reject_bad_shapes_with_a_fix():
    x = latents()
    with pytest.raises(KinemaError, match="one-frame video: x.unsqueeze\\(2\\)"):
        image_to_video(x[:, :, 0], T)
    with pytest.raises(KinemaError, match="needs num_frames >= 3"):
        interpolation(x[:, :, :1], x[:, :, -1:], 2)
    with pytest.raises(KinemaError, match="same shape"):
        interpolation(x[:, :, :1], x[:1, :, -1:], T)
    with pytest.raises(KinemaError, match="needs num_frames >= 4"):
        extension(x[:, :, :3], 3)
    with pytest.raises(KinemaError, match="repaint mask must be"):
        inpainting(x, torch.zeros(B, 1, 2, H, W))
    with pytest.raises(KinemaError, match="conditioning mask must be"):
        Conditioning(latents=x, mask=torch.zeros(B, C, T, H, W))


def test_mix_config_is_checked():
    with pytest.raises(ValueError, match="must sum to 1"):
        ConditioningMix(text_to_video=0.5)
    with pytest.raises(ValueError, match="ConditioningMix.inpainting must be >= 0"):
        ConditioningMix(text_to_video=0.6, inpainting=-0.1, image_to_video=0.35)
    with pytest.raises(ValueError, match="repaint_size"):
        ConditioningMix(repaint_size=(0.5, 0.2))
    assert text_only().probabilities() == (1.0, 0.0, 0.0, 0.0, 0.0)


def classify(cond):
    """The task each item's mask shows (the inverse of the builders)."""
    out = []
    for mask in cond.mask[:, 0]:
        frames = mask.amin(dim=(1, 2)).bool().tolist()
        partial = bool(((mask > 0) & (mask.amin(dim=(1, 2), keepdim=True) == 0)).any())
        if partial or (mask.sum() > 0 and not any(frames)):
            out.append("inpainting")
        elif not any(frames):
            out.append("text_to_video")
        elif frames == [True] + [False] * (len(frames) - 2) + [True]:
            out.append("interpolation")
        elif frames[0] and sum(frames) == 1:
            out.append("image_to_video or extension")
        else:
            out.append("extension")
    return out


def test_sample_conditioning_follows_the_mix():
    mix = ConditioningMix(
        text_to_video=0.2, image_to_video=0.0, interpolation=0.3, extension=0.2, inpainting=0.3, max_extension_frames=3
    )
    x0 = torch.randn(4000, 2, T, H, W)
    cond = sample_conditioning(x0, mix, generator=torch.Generator().manual_seed(0))
    kinds = classify(cond)
    share = {k: kinds.count(k) / len(kinds) for k in set(kinds)}
    assert share["text_to_video"] == pytest.approx(0.2, abs=0.03)
    assert share["interpolation"] == pytest.approx(0.3, abs=0.03)
    assert share["inpainting"] == pytest.approx(0.3, abs=0.03)
    assert share["extension"] + share.get("image_to_video or extension", 0) == pytest.approx(0.2, abs=0.03)
    lengths = {int(known_frames(c).sum()) for c, k in zip(cond_items(cond), kinds) if "extension" in k}
    assert lengths == {1, 2, 3}
    assert torch.equal(cond.latents, x0 * cond.mask)
    boxes = [1 - m for m, k in zip(cond.mask, kinds) if k == "inpainting"]
    areas = torch.stack([b[0, 0].mean() for b in boxes])
    assert 0.25**2 - 0.05 < areas.min() and areas.max() < 0.75**2 + 0.05
    assert all(torch.equal(b[0, 0], b[0, t]) for b in boxes[:20] for t in range(T))  # the same box in every frame


def cond_items(cond):
    return [Conditioning(latents=cond.latents[i : i + 1], mask=cond.mask[i : i + 1]) for i in range(len(cond.mask))]


def test_sample_conditioning_is_seeded_and_respects_short_clips():
    mix = ConditioningMix()
    x0 = torch.randn(64, 2, T, H, W)
    a = sample_conditioning(x0, mix, generator=torch.Generator().manual_seed(3))
    b = sample_conditioning(x0, mix, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.mask, b.mask)
    image = torch.randn(300, 2, 1, H, W)  # an image: only text and inpainting make sense
    kinds = set(classify(sample_conditioning(image, mix, generator=torch.Generator().manual_seed(0))))
    assert kinds == {"text_to_video", "inpainting"}
    two = sample_conditioning(torch.randn(300, 2, 2, H, W), mix, generator=torch.Generator().manual_seed(0))
    assert not known_frames(two).all(dim=1).any()  # never every frame given
    assert set(KINDS) == {"text_to_video", "image_to_video", "interpolation", "extension", "inpainting"}
