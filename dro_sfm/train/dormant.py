"""Dormant ReLU units of the heads: measuring them, and recycling them during training (ReDo).

A head's hidden unit whose pre-activation is negative on every input outputs zero and receives no gradient,
so nothing brings it back. On this project's small CPU batches the pose heads' units drift into that state
one by one (the first default model's pose update head ended with none alive: it added the same increment at
every step, whatever the input). Recycling (Sokar et al., "The Dormant Neuron Phenomenon in Deep
Reinforcement Learning", ICML 2023) re-draws a dormant unit's incoming weights and zeroes its outgoing ones:
the network's outputs are unchanged at that moment, and the unit can learn again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from dro_sfm.models.dro import DroNet

# Each head's hidden ReLU layer and the convolution that reads it.
HEAD_LAYERS: dict[str, tuple[str, str]] = {
    "pose_head": ("pose_head.conv1_pose", "pose_head.conv2_pose"),
    "depth_head": ("depth_head.conv1", "depth_head.conv2"),
    "upmask_net": ("upmask_net.mask.0", "upmask_net.mask.2"),
    "update_pose_head": ("update_block_pose.pose_head.conv1_pose", "update_block_pose.pose_head.conv2_pose"),
    "update_depth_head": ("update_block_depth.depth_head.conv1", "update_block_depth.depth_head.conv2"),
    "update_mask": ("update_block_depth.mask.0", "update_block_depth.mask.2"),
}


@torch.no_grad()
def unit_activity(net: DroNet, target: torch.Tensor, refs: list[torch.Tensor], K: torch.Tensor,
                  ) -> dict[str, torch.Tensor]:
    """Per head, each hidden unit's fraction of positive pre-activations [C] over one eval-mode forward.

    Heads that this forward does not run (``upmask_net`` after the first stage in eval) are left out.
    """
    positive: dict[str, list[torch.Tensor]] = {name: [] for name in HEAD_LAYERS}

    def record(name: str):
        return lambda _m, _i, out: positive[name].append((out > 0).float().mean(dim=(0, 2, 3)))

    handles = [net.get_submodule(hidden).register_forward_hook(record(name))
               for name, (hidden, _) in HEAD_LAYERS.items()]
    was_training = net.training
    try:
        net.eval()
        net.forward_full(target, refs, K)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return {name: torch.stack(v).mean(dim=0) for name, v in positive.items() if v}


def head_activity(net: DroNet, target: torch.Tensor, refs: list[torch.Tensor], K: torch.Tensor) -> dict[str, float]:
    """Fraction of positive pre-activations of each head's hidden layer over one forward (0 = a dead head)."""
    return {name: float(v.mean()) for name, v in unit_activity(net, target, refs, K).items()}


@dataclass
class RecycleReport:
    """What one recycling pass found and did, per head: dormant units (all re-drawn) and layer width."""

    dormant: dict[str, int]
    width: dict[str, int]

    def summary(self) -> str:
        return ", ".join(f"{n} {self.dormant[n]}/{self.width[n]}" for n in self.dormant if self.dormant[n])


def _reset_adam_moments(optimizer: torch.optim.Optimizer | None, param: torch.Tensor, index) -> None:
    """Zero the optimiser's running moments of ``param[index]`` (fresh weights start without history)."""
    if optimizer is None:
        return
    for value in optimizer.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value[index] = 0


@torch.no_grad()
def recycle_dormant_units(
    net: DroNet,
    activity: dict[str, torch.Tensor],
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
) -> RecycleReport:
    """Re-draw the incoming weights of every unit with zero activity and zero its outgoing weights.

    The fresh weights follow PyTorch's default convolution initialisation (as ``reset_parameters``), drawn
    from ``generator`` so that every process of a distributed run recycles identically.
    """
    dormant, width = {}, {}
    for name, frac in activity.items():
        hidden_path, reader_path = HEAD_LAYERS[name]
        hidden: nn.Conv2d = net.get_submodule(hidden_path)
        reader: nn.Conv2d = net.get_submodule(reader_path)
        idx = torch.nonzero(frac.to(hidden.weight.device) == 0).flatten()
        dormant[name], width[name] = int(idx.numel()), int(frac.numel())
        if not idx.numel():
            continue
        fan_in = hidden.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=√5) and the bias both reduce to ±1/√fan_in
        shape = (idx.numel(), *hidden.weight.shape[1:])
        fresh_w = (torch.rand(shape, generator=generator) * 2 - 1) * bound
        hidden.weight[idx] = fresh_w.to(hidden.weight)
        _reset_adam_moments(optimizer, hidden.weight, idx)
        if hidden.bias is not None:
            fresh_b = (torch.rand(idx.numel(), generator=generator) * 2 - 1) * bound
            hidden.bias[idx] = fresh_b.to(hidden.bias)
            _reset_adam_moments(optimizer, hidden.bias, idx)
        reader.weight[:, idx] = 0
        _reset_adam_moments(optimizer, reader.weight, (slice(None), idx))
    return RecycleReport(dormant, width)
