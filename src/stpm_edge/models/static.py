"""Export-time rewrites that make a trunk's shapes static for a known input size.

timm's TF-ported EfficientNet uses "same" padding computed from the input size at run
time (``Conv2dSame``); traced, that becomes Shape/Gather/Ceil arithmetic (and with a
dynamic batch it cannot be folded). For a fixed frame size the padding is a constant:
each such convolution becomes an explicit zero ``Pad`` (folded into the Conv's ``pads`` by
the optimiser) followed by a plain convolution.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _is_dynamic_same(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Conv2d) and type(mod).__name__ == "Conv2dSame"


@torch.no_grad()
def make_static(module: nn.Module, run: Callable[[], Any]) -> nn.Module:
    """Replace dynamic same-padding convolutions in ``module`` (in place) for the input sizes
    they see while ``run()`` executes (a forward pass at the export size)."""
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
             for name, m in module.named_modules() if _is_dynamic_same(m)]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    for name, size in sizes.items():
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        old = getattr(parent, child)
        (top, bottom), (left, right) = (_same_pad(size[i], old.kernel_size[i], old.stride[i], old.dilation[i])
                                        for i in (0, 1))
        conv = nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, 0, old.dilation, old.groups,
                         old.bias is not None).to(old.weight.device)
        conv.load_state_dict(old.state_dict())
        setattr(parent, child, nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv))
    return module
