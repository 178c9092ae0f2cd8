"""Compatibility layer with the official DRO code: the only place where version strings live.

``it12-h-out`` and friends are parsed here into a typed ``DroConfig`` (spec §2); official state dicts
(keys relative to ``depth_net.`` or prefixed ``model.depth_net.``) are mapped onto ``DroNet``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from dro_sfm.errors import CheckpointError, ConfigError
from dro_sfm.models.config import DroConfig
from dro_sfm.models.dro import DroNet

_PREFIXES = ("model.depth_net.", "depth_net.", "module.")


def parse_official_version(version: str, min_depth: float = 0.1, max_depth: float = 100.0) -> DroConfig:
    """Typed config of an official version string such as ``it12-h-out`` (substring rules of spec §2)."""
    tokens = version.split("-")
    m = re.fullmatch(r"it(\d+)", tokens[0])
    if m is None:
        raise ConfigError(f"official version {version!r} must start with 'itK' (e.g. 'it12-h-out')")
    total = int(m.group(1))
    seq_len = 4
    for tok in tokens:
        if "seq" in tok:
            digits = re.search(r"seq(\d+)", tok)
            if digits is None:
                raise ConfigError(f"official version {version!r}: token {tok!r} has no number after 'seq'")
            seq_len = int(digits.group(1))
    if seq_len <= 0:
        raise ConfigError(f"official version {version!r}: steps per stage must be positive")
    return DroConfig(
        hidden_dim=128 if "h" in version else 64,
        stages=total // seq_len,
        steps_per_stage=seq_len,
        min_depth=float(min_depth),
        max_depth=float(max_depth),
        normalize_output="out" in version,
        all_steps_in_train="inter" in version,
        with_unused_cnet=True,
    )


def build_official_model(version: str, min_depth: float, max_depth: float) -> DroNet:
    """A ``DroNet`` with the architecture of the official ``DepthPoseNet(version, min_depth, max_depth)``."""
    return DroNet(parse_official_version(version, min_depth, max_depth))


def strip_official_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys relative to the network: drops ``model.depth_net.`` (official .ckpt) and similar prefixes."""
    out = {}
    for key, value in state_dict.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def load_official_state_dict(model: DroNet, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Load official weights into ``model``; strict mode names every missing, unexpected or mis-shaped key."""
    sd = strip_official_prefix(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong_shape = [
        f"{k} (file {tuple(sd[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if strict and missing:
        problems.append(f"missing {len(missing)} key(s), e.g. {', '.join(missing[:3])}")
    if strict and unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s), e.g. {', '.join(unexpected[:3])}")
    if wrong_shape:
        problems.append(f"shape mismatch for {', '.join(wrong_shape[:3])}")
    if problems:
        raise CheckpointError(
            "state dict does not match the model (" + "; ".join(problems) + "); check that the checkpoint's "
            "version string and depth range match the model you built"
        )
    converted = {}
    for k, v in sd.items():
        if k not in own:
            continue
        converted[k] = v.to(own[k].dtype) if v.is_floating_point() else v
    model.load_state_dict(converted, strict=strict)
