"""Teacher and student trunks in one graph: two parallel branches, or one *stacked* trunk.

Teacher and student have the same architecture and see the same input, so they can run as
one network of twice the width: the first convolution gets the concatenated output
channels of both (its input is shared), every later convolution becomes a grouped
convolution with twice the groups (weights concatenated along the output axis, so the
teacher's channels come first and the student's second), batch norms get concatenated
statistics, and element-wise layers are unchanged. Each tapped level is split back into
(teacher, student) halves before the head. Both forms compute exactly the same features.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from stpm_edge.errors import StpmError
from stpm_edge.models.backbones import FeatureExtractor

FUSIONS = ("stacked", "parallel")


class ParallelTrunks(nn.Module):
    """Teacher and student as two branches on one input."""

    def __init__(self, teacher: FeatureExtractor, student: FeatureExtractor) -> None:
        super().__init__()
        self.teacher, self.student = teacher, student

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.teacher(x), self.student(x)


class StackedTrunks(nn.Module):
    """One trunk of doubled width whose tapped levels are split into (teacher, student)."""

    def __init__(self, teacher: FeatureExtractor, student: FeatureExtractor) -> None:
        super().__init__()
        self.trunk = stack_extractors(teacher, student)
        self.channels = list(teacher.channels)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feats = self.trunk(x)
        return ([f[:, :c] for f, c in zip(feats, self.channels)],
                [f[:, c:] for f, c in zip(feats, self.channels)])


def _cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None else torch.cat([a.detach(), b.detach()], 0)


def stack_extractors(teacher: FeatureExtractor, student: FeatureExtractor) -> FeatureExtractor:
    """A copy of ``teacher`` whose convolutions and batch norms hold both networks' weights."""
    stacked = copy.deepcopy(teacher).eval()
    t_mods, s_mods = dict(teacher.named_modules()), dict(student.named_modules())
    if t_mods.keys() != s_mods.keys():
        raise StpmError("teacher and student architectures differ; cannot stack them")
    first = True
    for name, mod in stacked.named_modules():
        t, s = t_mods[name], s_mods[name]
        if isinstance(mod, nn.Conv2d):
            mod.weight = nn.Parameter(_cat(t.weight, s.weight), requires_grad=False)
            if mod.bias is not None:
                mod.bias = nn.Parameter(_cat(t.bias, s.bias), requires_grad=False)
            mod.out_channels *= 2
            if first:  # the shared input: concatenated output channels, same groups
                if mod.in_channels != 3 or mod.groups != 1:
                    raise StpmError(f"cannot stack: first convolution {name} is not a plain RGB convolution")
                first = False
            else:
                mod.in_channels *= 2
                mod.groups *= 2
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.num_features *= 2
            for attr in ("weight", "bias"):
                if getattr(mod, attr) is not None:
                    setattr(mod, attr, nn.Parameter(_cat(getattr(t, attr), getattr(s, attr)), requires_grad=False))
            mod.running_mean = _cat(t.running_mean, s.running_mean)
            mod.running_var = _cat(t.running_var, s.running_var)
        elif any(True for _ in mod.parameters(recurse=False)) or isinstance(mod, (nn.Linear, nn.GroupNorm, nn.LayerNorm)):
            raise StpmError(f"cannot stack layer {name} ({type(mod).__name__}); use --fusion parallel")
    return stacked


def build_trunks(teacher: FeatureExtractor, student: FeatureExtractor, fusion: str) -> nn.Module:
    if fusion == "stacked":
        return StackedTrunks(teacher, student)
    if fusion == "parallel":
        return ParallelTrunks(teacher, student)
    raise StpmError(f"--fusion {fusion}: choose from {', '.join(FUSIONS)}")
