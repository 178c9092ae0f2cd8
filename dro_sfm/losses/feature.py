"""Direct supervision of the feature-metric cost: the true correspondence must cost less than others.

Training DRO from random initialisation (no ImageNet weights here) leaves the cost surface flat; this
term shapes the features so that the cost the optimiser minimises has its minimum at the ground truth.
"""

from __future__ import annotations

import torch

from dro_sfm.geometry.camera import backproject, project_to_grid, scale_intrinsics_feature
from dro_sfm.geometry.warp import sample_map


def feature_contrastive_loss(
    fmap_tgt: torch.Tensor,
    fmap_ref: torch.Tensor,
    depth: torch.Tensor,
    K: torch.Tensor,
    T_ref_from_tgt: torch.Tensor,
    n_negatives: int = 4,
    margin: float = 1.0,
    shift_px: tuple[float, float] = (1.0, 4.0),
) -> torch.Tensor:
    """Hinge loss making the cost at the true match lower than at shifted positions.

    ``fmap_*`` [B,C,h,w] (stride 8), ``depth`` [B,1,H,W] ground truth (0 invalid), ``K`` [B,3,3] at H×W,
    ``T_ref_from_tgt`` [B,4,4].
    """
    B, C, h, w = fmap_tgt.shape
    stride = depth.shape[-1] / w
    depth_small = torch.nn.functional.interpolate(depth, size=(h, w), mode="nearest")
    K8 = scale_intrinsics_feature(K, 1.0 / stride)
    grid = project_to_grid(backproject(depth_small, K8), K8, T_ref_from_tgt.float(), (h, w))
    valid = (depth_small[:, 0] > 0) & (grid.abs() <= 1).all(-1)
    positive = ((fmap_tgt - sample_map(fmap_ref, grid)) ** 2).mean(1)
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=grid.device)
    losses = []
    for _ in range(n_negatives):
        angle = torch.rand(B, h, w, 1, device=grid.device) * 2 * torch.pi
        radius = torch.empty(B, h, w, 1, device=grid.device).uniform_(*shift_px)
        offset = torch.cat([angle.cos(), angle.sin()], -1) * radius * scale
        negative = ((fmap_tgt - sample_map(fmap_ref, grid + offset)) ** 2).mean(1)
        losses.append(torch.relu(margin + positive - negative))
    per_pixel = torch.stack(losses, 0).mean(0)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)
