"""Convex upsampling (RAFT): each fine pixel is a softmax-weighted mix of its coarse 3×3 neighbourhood."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def convex_upsample(x: torch.Tensor, mask: torch.Tensor, ratio: int = 8) -> torch.Tensor:
    """Upsample x [B,1,h,w] with weights mask [B,9·r·r,h,w] (channel 64k+8i+j) to [B,1,r·h,r·w]."""
    B, _, h, w = x.shape
    weights = torch.softmax(mask.view(B, 1, 9, ratio, ratio, h, w), dim=2)
    neighbours = F.unfold(x, [3, 3], padding=1).view(B, 1, 9, 1, 1, h, w)
    up = torch.sum(weights * neighbours, dim=2)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(B, 1, ratio * h, ratio * w)
