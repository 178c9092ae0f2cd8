"""Output heads: initial depth, pose (with the official 0.01 rotation factor) and the convex-upsampling mask."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn


class DepthHead(nn.Module):
    """Two 3×3 convs to one channel, then ``act`` (sigmoid for the initial head, tanh in updates)."""

    def __init__(self, in_ch: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 1, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor] = torch.tanh) -> torch.Tensor:
        """[B,C,h,w] -> [B,1,h,w]."""
        return act(self.conv2(self.relu(self.conv1(x))))


class PoseHead(nn.Module):
    """Two 3×3 convs to 6 channels, spatial mean, rotation scaled (official 0.01): [B,C,h,w] -> [B,6]."""

    OFFICIAL_ROTATION_SCALE = 0.01

    def __init__(self, in_ch: int, hidden: int, rotation_scale: float = OFFICIAL_ROTATION_SCALE) -> None:
        super().__init__()
        self.rotation_scale = rotation_scale
        self.conv1_pose = nn.Conv2d(in_ch, hidden, 3, padding=1)
        self.conv2_pose = nn.Conv2d(hidden, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,C,h,w] -> [B,6] (translation, Euler angles)."""
        out = self.conv2_pose(self.relu(self.conv1_pose(x))).mean(3).mean(2)
        return torch.cat([out[:, :3], self.rotation_scale * out[:, 3:]], dim=1)


class MaskHead(nn.Module):
    """Convex-upsampling weights: 3×3 conv, ReLU, 1×1 conv to 9·8·8 channels, ×0.25: [B,C,h,w] -> [B,576,h,w]."""

    def __init__(self, in_ch: int, hidden: int, ratio: int = 8) -> None:
        super().__init__()
        self.mask = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 9 * ratio * ratio, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.25 * self.mask(x)
