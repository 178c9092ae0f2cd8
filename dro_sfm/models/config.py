"""Typed configuration of the DRO network, with the official and the small CPU presets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal


@dataclass(frozen=True)
class EncoderWidths:
    """Channel widths of the ResNet-18 trunk (stem/layer1, layer2, layer3) and the fusion convolutions."""

    stem: int = 64
    layer2: int = 128
    layer3: int = 256
    fusion: int = 128


@dataclass(frozen=True)
class DroConfig:
    """Hyper-parameters of the DRO network (spec §2–§5); ``official()`` gives the released architecture."""

    hidden_dim: int = 128            # ConvGRU hidden size `hd`
    context_dim: int = 32            # context features `cd`
    feature_dim: int = 128           # fnet output channels (= cost channels)
    head_dim: int = 128              # hidden width of the initial depth/pose heads
    motion_dim: int = 64             # width of the depth/pose feature branch in the update encoders
    encoder: EncoderWidths = field(default_factory=EncoderWidths)
    stages: int = 3                  # m: alternating depth/pose stages
    steps_per_stage: int = 4         # n: GRU steps per stage
    min_depth: float = 0.2
    max_depth: float = 10.0
    normalize_output: bool = True    # official `out`: map raw inverse depth through disp_to_depth
    all_steps_in_train: bool = False # official `inter`: train mode returns every step
    with_unused_cnet: bool = True    # official checkpoints carry a never-used `cnet` encoder
    solver: Literal["unrolled", "deq"] = "unrolled"
    fast: bool = True                # optimised path; False runs the literal spec path

    @property
    def total_steps(self) -> int:
        return self.stages * self.steps_per_stage

    def with_(self, **changes) -> DroConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


def small_config(**overrides) -> DroConfig:
    """The `small` preset: narrower encoders and GRUs, same code, for CPU training."""
    base = DroConfig(
        hidden_dim=64,
        context_dim=32,
        feature_dim=64,
        head_dim=64,
        motion_dim=32,
        encoder=EncoderWidths(stem=32, layer2=64, layer3=128, fusion=64),
        with_unused_cnet=False,
    )
    return replace(base, **overrides)


PRESETS = {"official": DroConfig, "small": small_config}
