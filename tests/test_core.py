"""The small shared pieces: config JSON round trips, the causal conv, the CLI entry point."""

import dataclasses
import subprocess
import sys

import pytest
import torch

from kinema import config as cfg
from kinema.nn.conv import CausalConv3d


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner:
    width: int = 4
    """A width."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outer:
    name: str = "x"
    """A name."""
    scale: float = 1.0
    """A scale."""
    patch: tuple[int, int, int] = (1, 2, 2)
    """A patch."""
    inner: Inner = dataclasses.field(default_factory=Inner)
    """A nested config."""
    maybe: int | None = None
    """An optional value."""


def test_config_round_trip_keeps_types():
    c = Outer(name="y", scale=2, patch=(2, 4, 4), inner=Inner(width=8), maybe=3)
    back = cfg.from_dict(Outer, cfg.to_dict(c))
    assert back == c
    assert isinstance(back.patch, tuple) and isinstance(back.inner, Inner)
    assert cfg.config_hash(c) == cfg.config_hash(back) != cfg.config_hash(Outer())


def test_config_unknown_field_is_named():
    with pytest.raises(ValueError, match="widht"):
        cfg.from_dict(Inner, {"widht": 3})


def test_causal_conv_never_sees_the_future():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, 3)
    x = torch.randn(1, 2, 6, 5, 5)
    y = conv(x)
    assert y.shape == (1, 3, 6, 5, 5)
    x2 = x.clone()
    x2[:, :, 4:] = torch.randn_like(x2[:, :, 4:])  # change frames 4 and 5
    y2 = conv(x2)
    torch.testing.assert_close(y2[:, :, :4], y[:, :, :4], rtol=0, atol=0)
    assert not torch.allclose(y2[:, :, 4:], y[:, :, 4:])


def test_causal_conv_chunks_with_cache_equal_whole():
    conv = CausalConv3d(2, 3, (3, 3, 3))
    x = torch.randn(1, 2, 9, 4, 4)
    parts, prev = [], None
    for chunk in (x[:, :, :1], x[:, :, 1:5], x[:, :, 5:9]):
        parts.append(conv(chunk, cache=prev))
        prev = chunk if prev is None else torch.cat([prev, chunk], 2)[:, :, -conv.cache_frames :]
    torch.testing.assert_close(torch.cat(parts, 2), conv(x), rtol=0, atol=1e-6)


def test_causal_conv_one_frame_is_an_image():
    conv = CausalConv3d(2, 3, 3, stride=(1, 2, 2))
    assert conv(torch.randn(2, 2, 1, 8, 8)).shape == (2, 3, 1, 4, 4)


def test_cli_help_and_bad_command_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "kinema", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "data" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "kinema", "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2
