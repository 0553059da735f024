"""Regional compilation: `torch.compile` each repeated block of a model, not the whole model.

    compile_blocks(model)                      # DiT: every DiTBlock; UNet3D: every ResBlock and AttentionBlock
    compile_blocks(model, mode="max-autotune") # any torch.compile keyword goes through

Why blocks: a denoiser is mostly a stack of identical blocks. Compiled one by one in
place (`nn.Module.compile`), identical blocks share one compiled graph, so compile time
is that of one block (plus one per distinct block shape), not of the whole depth, and
it does not grow with the number of layers. The glue between the blocks (input checks,
patch embedding, the timestep embedding, the RoPE table, which is cached) stays eager:
it is cheap, and keeping it out of the graph keeps guards and recompiles few. The
blocks hold all the time that compiling saves (attention, MLPs, the fused norms and
modulation).

The module keeps its class, its parameter names and its state dict (unlike
`torch.compile(model)`, which wraps it and prefixes every key with `_orig_mod.`), so a
compiled model saves, loads and converts as before. Shapes are static (`dynamic=False`
unless given): each new input shape (frame count, size, batch, text length) compiles its
own graph on first use, and later calls reuse it. Blocks of different shapes (a U-Net's
levels) would otherwise make dynamo mark their sizes dynamic, which gives slower kernels
and, in torch 2.13, an inductor error on the U-Net's blocks.

A model names its repeated blocks in a class attribute `repeated_blocks` (module
classes); `blocks=` overrides it. Dynamo keeps at most `torch._dynamo.config.recompile_limit`
graphs per block class (8 by default) and runs the rest eagerly; a U-Net's blocks differ
in channels and resolution from level to level, so `compile_blocks` raises that limit
to twice the number of blocks of a class (a graph per distinct block, with and without
gradients) when it is lower.

On CUDA with torch 2.10-2.13, see `kinema.nn.modulation.modulation_rows` for why the
AdaLN rows are slices: an inductor fusion (mix-order reduction) otherwise mishandles
their gradients. To rule that fusion out entirely, pass
`options={"triton.mix_order_reduction": False}`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn


def compile_blocks(
    model: nn.Module, *, blocks: tuple[type[nn.Module], ...] | None = None, **compile_kwargs: Any
) -> nn.Module:
    """Compile every repeated block of `model` in place with `module.compile(**compile_kwargs)`; returns `model`.

    blocks: the module classes to compile (default: `repeated_blocks` of the model's class, or of the
    module a DistributedDataParallel wraps). A block inside another compiled block is left to its parent.
    compile_kwargs: `torch.compile` keywords (backend, mode, options, fullgraph; dynamic defaults to False).
    Compiling again replaces the compiled blocks with ones made with the new keywords.
    """
    if blocks is None:
        inner = getattr(model, "module", model)  # DDP wraps the model; FSDP2 keeps its class as a base
        blocks = getattr(type(inner), "repeated_blocks", None)
        if not blocks:
            raise TypeError(
                f"{type(model).__name__} names no repeated blocks (class attribute repeated_blocks); "
                "pass blocks=(BlockClass, ...)"
            )
    blocks = tuple(blocks)
    compile_kwargs.setdefault("dynamic", False)
    compiled: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, blocks) and not any(name.startswith(parent + ".") for parent in compiled):
            module.compile(**compile_kwargs)
            compiled[name] = module
    if not compiled:
        raise TypeError(f"{type(model).__name__} has no module of the classes {[b.__name__ for b in blocks]} to compile")
    most = 2 * max(Counter(type(m) for m in compiled.values()).values())
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, most)
    return model
