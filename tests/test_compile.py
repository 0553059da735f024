"""torch.compile of the denoisers: no graph break in their forward, compiled = eager (outputs and
gradients, at batch 1), regional compilation (`compile_blocks`) with one graph per distinct block,
and a compiled pipeline that makes the same frames."""

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from kinema.models.dit import DiT, DiTBlock, dit_shapes, dit_tiny, wan_1_3b
from kinema.models.unet3d import UNet3D, unet_shapes, unet_tiny
from kinema.nn import compile_blocks, modulation_rows, rope_frequencies, split_modulation


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def wan_tiny(**overrides):
    """The Wan2.1-1.3B layout (16 channels in and out) at a CPU test's width."""
    return wan_1_3b(**{**dict(dim=64, num_heads=2, num_layers=2, ffn_dim=128, text_dim=32, freq_dim=32), **overrides})


def build(config, seed=0):
    """The model, with every weight moved off its init (zero heads and gates would hide most gradients)."""
    torch.manual_seed(seed)
    model = (DiT if hasattr(config, "num_layers") else UNet3D)(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs(config, batch=1, frames=2, size=8, text=5, seed=1):
    """(x, timestep, context, context_mask) for a denoiser of `config`; the mask hides the last two tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, frames, size, size, generator=g)
    timestep = torch.rand(batch, generator=g) * 1000
    context = torch.randn(batch, text, config.text_dim, generator=g)
    mask = torch.ones(batch, text, dtype=torch.bool)
    mask[:, -2:] = False
    return x, timestep, context, mask


def step(model, args, autocast=False):
    """Forward and backward of a squared-output loss: (output, {name: grad})."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(*args)
    out.float().square().mean().backward()
    model = getattr(model, "_orig_mod", model)  # torch.compile(model) wraps it
    return out.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_close_to(out, grads, ref_out, ref_grads, tol):
    """Outputs and every parameter's gradient within tol of the reference, relative to its largest value."""
    assert (out - ref_out).abs().max() <= tol * ref_out.abs().max()
    for name, ref in ref_grads.items():
        assert grads[name].shape == ref.shape, name
        assert (grads[name] - ref).abs().max() <= tol * ref.abs().max() + 1e-7, name


# ----------------------------------------------------------------------------------------------
# No graph breaks


CONFIGS = {
    "dit_tiny": lambda: dit_tiny(),
    "dit_tiny_factorized": lambda: dit_tiny(attention="factorized"),
    "dit_shapes": lambda: dit_shapes(),
    "wan_tiny_checkpointed": lambda: wan_tiny(gradient_checkpointing=True),
    "unet_tiny": lambda: unet_tiny(),
    "unet_shapes": pytest.param(lambda: unet_shapes(), marks=pytest.mark.slow),  # ~35 s of tracing per mode
}


def assert_one_graph(model, *args):
    explanation = torch._dynamo.explain(model)(*args)
    assert explanation.graph_break_count == 0, [b.reason.splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_count == 1
    # No complex tensor either (the RoPE tables go in as real cos/sin): inductor would run those ops eagerly.
    values = [node.meta.get("example_value") for node in explanation.graphs[0].graph.nodes]
    assert not any(isinstance(v, torch.Tensor) and v.is_complex() for v in values)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("make", list(CONFIGS.values()), ids=list(CONFIGS))
def test_the_denoisers_forward_traces_as_one_graph(make, train):
    config = make()
    model = build(config).train(train)
    x, timestep, context, mask = inputs(config)
    if train:
        assert_one_graph(model, x, timestep, context, mask)
    else:  # and the other half of the input contract: a scalar timestep, no mask
        assert_one_graph(model, x, timestep[0], context, None)


# ----------------------------------------------------------------------------------------------
# Whole-model compile = eager, at batch 1


SLOW_UNET = pytest.param(unet_tiny(), id="unet", marks=pytest.mark.slow)  # inductor on the U-Net: about a minute


@pytest.mark.parametrize("config", [pytest.param(wan_tiny(num_layers=1), id="dit_wan_layout"), SLOW_UNET])
def test_fullgraph_compile_matches_eager_forward_and_gradients_at_batch_1(config):
    model = build(config).train()
    args = inputs(config, batch=1)
    ref = step(model, args)
    compiled = torch.compile(model, fullgraph=True)
    assert_close_to(*step(compiled, args), *ref, tol=1e-4)


@pytest.mark.slow
def test_fullgraph_compile_under_bf16_autocast_trains_at_batch_1():
    # The shape of a reported crash on CUDA ("CompiledFunctionBackward returned an invalid gradient at
    # index 14 - got [1536] but expected shape compatible with [1, 1, 1536]"): Wan layout, batch 1, bf16.
    config = wan_tiny()
    model = build(config).train()
    args = inputs(config, batch=1)
    ref = step(model, args, autocast=True)
    compiled = torch.compile(model, fullgraph=True)
    assert_close_to(*step(compiled, args, autocast=True), *ref, tol=5e-2)


# ----------------------------------------------------------------------------------------------
# Regional compilation


def count_graphs(config, **compile_kwargs):
    """Distinct graphs dynamo compiles for the blocks of a model of `config`, over a training step and a no-grad call."""
    torch._dynamo.reset()
    model = build(config)
    counter = CompileCounter()
    compile_blocks(model, backend=counter, fullgraph=True, **compile_kwargs)
    args = inputs(config)
    step(model, args)
    step(model, args)  # a second call of the same shapes compiles nothing
    with torch.no_grad():
        model(*args)
    return counter.frame_count


def test_compile_blocks_compiles_one_graph_per_distinct_block_whatever_the_depth():
    # Identical blocks share one graph (per grad mode): the count does not grow with the layers.
    assert count_graphs(dit_tiny(num_layers=2)) == count_graphs(dit_tiny(num_layers=5)) == 2
    # Factorized attention has two kinds of block (spatial, temporal).
    assert count_graphs(dit_tiny(num_layers=2, attention="factorized")) == 4
    # A U-Net's blocks differ from level to level, but not within one: more blocks per level add no graph.
    assert count_graphs(unet_tiny(num_res_blocks=1)) == count_graphs(unet_tiny(num_res_blocks=3))


def test_compile_blocks_compiles_in_place_and_keeps_the_state_dict():
    model = DiT(dit_tiny(num_layers=3))
    keys = list(model.state_dict())
    assert compile_blocks(model, backend="eager") is model
    assert list(model.state_dict()) == keys
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    assert model.patch_embed._compiled_call_impl is None and model.head._compiled_call_impl is None  # glue stays eager
    unet = compile_blocks(UNet3D(unet_tiny()), backend="eager")
    compiled = {type(m).__name__ for m in unet.modules() if getattr(m, "_compiled_call_impl", None) is not None}
    assert compiled == {"ResBlock", "AttentionBlock"}
    with pytest.raises(TypeError, match="repeated_blocks"):
        compile_blocks(torch.nn.Linear(2, 2))
    assert compile_blocks(DiT(dit_tiny()), blocks=(DiTBlock,), backend="eager").blocks[0]._compiled_call_impl


@pytest.mark.parametrize("config", [pytest.param(wan_tiny(), id="dit_wan_layout"), SLOW_UNET])
def test_compile_blocks_matches_eager_forward_and_gradients_at_batch_1(config):
    model = build(config).train()
    args = inputs(config, batch=1)
    ref = step(model, args)
    compile_blocks(model, fullgraph=True)
    assert_close_to(*step(model, args), *ref, tol=1e-4)


# ----------------------------------------------------------------------------------------------
# The modulation rows


def test_modulation_rows_are_slices_with_the_values_and_gradients_of_split():
    params = torch.randn(2, 6, 8, requires_grad=True)
    rows = modulation_rows(params)
    assert len(rows) == 6 and all(r.shape == (2, 1, 8) and r._base is params for r in rows)
    for row, ref in zip(rows, params.split(1, dim=-2)):
        assert torch.equal(row, ref)
    weights = torch.randn(6)
    (grad,) = torch.autograd.grad(sum(w * r.square().sum() for w, r in zip(weights, rows)), params)
    (ref,) = torch.autograd.grad(sum(w * r.square().sum() for w, r in zip(weights, params.split(1, -2))), params)
    assert torch.equal(grad, ref)
    attn, mlp = split_modulation(params, 2)
    assert torch.equal(attn.gate, params[:, 2:3]) and torch.equal(mlp.shift, params[:, 3:4])


def test_compiled_backward_keeps_each_modulation_row_gradient_in_its_own_buffer():
    # The mechanism of the batch-1 crash on CUDA: with `split`, inductor writes every row's gradient (a
    # sum over tokens) into a view of one concatenated buffer ("reinterpret_tensor(...)  # alias"), which
    # CUDA's mix-order reduction then drops or misshapes (pytorch#193061). The slices of
    # `modulation_rows` leave each row's sum a buffer of its own. The CPU code shows the layout too.
    from torch._inductor.utils import run_and_get_code

    config = wan_tiny()
    block = build(config).blocks[0]
    tokens = torch.randn(1, 32, config.dim, requires_grad=True)
    time_mod = torch.randn(1, 6, config.dim, requires_grad=True)
    context, rope = torch.randn(1, 5, config.dim), rope_frequencies(config.head_dim, (2, 4, 4), real=True)
    compiled = torch.compile(block, fullgraph=True)
    _, code = run_and_get_code(lambda: compiled(tokens, time_mod, context, None, rope, (2, 4, 4)).sum().backward())
    rows = [line for line in code[-1].splitlines() if "# alias" in line and f"(1, 1, {config.dim})" in line]
    assert time_mod.grad.shape == (1, 6, config.dim) and not rows, rows


# ----------------------------------------------------------------------------------------------
# Sampling


def test_a_compiled_pipeline_makes_the_same_frames():
    from kinema.pipelines.pipeline import Pipeline

    request = dict(num_frames=9, height=32, width=32, num_inference_steps=2, seed=0)
    ref = Pipeline.load("shapes", precision="fp32").generate("a red circle moving right", **request)
    pipe = Pipeline.load("shapes", precision="fp32")
    assert pipe.compile() is pipe
    video = pipe.generate("a red circle moving right", **request)
    diff = np.abs(video.frames.astype(np.int16) - ref.frames.astype(np.int16))
    assert diff.max() <= 2 and diff.mean() < 0.05
    assert video.metadata["model_hash"] == ref.metadata["model_hash"]


def test_generate_compile_flag_compiles_the_pipeline(tmp_path, monkeypatch):
    from kinema.cli import main
    from kinema.pipelines.pipeline import Pipeline
    from kinema.pipelines.presets import random_pipeline

    model = random_pipeline("tiny", seed=0).save(tmp_path / "pipe")
    calls = []
    monkeypatch.setattr(Pipeline, "compile", lambda self, **kw: calls.append(self) or self)  # what it asks, not the cost
    main(["generate", "a red circle moving right", "--model", str(model), "--steps", "1", "--quiet",
          "--out", str(tmp_path / "a.gif"), "--compile"])  # fmt: skip
    main(["generate", "a red circle moving right", "--model", str(model), "--steps", "1", "--quiet",
          "--out", str(tmp_path / "b.gif")])  # fmt: skip
    assert len(calls) == 1 and (tmp_path / "a.gif").is_file() and (tmp_path / "b.gif").is_file()
