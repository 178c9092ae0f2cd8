"""Warping of maps between views and the inverse-depth conversions of the official code."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dro_sfm.geometry.camera import backproject, project_to_grid


def inv2depth(inv_depth: torch.Tensor) -> torch.Tensor:
    """Depth from inverse depth (any shape): 1/clamp(x, 1e-6), and 0 where x <= 0 (spec §6)."""
    depth = 1.0 / inv_depth.clamp(min=1e-6)
    return depth.masked_fill(inv_depth <= 0, 0.0)


def depth2inv(depth: torch.Tensor) -> torch.Tensor:
    """Inverse depth from depth (any shape): 1/clamp(d, 1e-6), and 0 where d <= 0."""
    inv = 1.0 / depth.clamp(min=1e-6)
    return inv.masked_fill(depth <= 0, 0.0)


def disp_to_depth(disp: torch.Tensor, min_depth: float, max_depth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Monodepth-style (scaled inverse depth, depth) from a raw map in nominally [0,1] (no clamping)."""
    min_disp = 1.0 / max_depth
    max_disp = 1.0 / min_depth
    scaled = min_disp + (max_disp - min_disp) * disp
    return scaled, 1.0 / scaled


def sample_map(src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear, zero-padded, align_corners=True sampling of src [B,C,H,W] at grid [B,h,w,2]."""
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def warp_to_target(
    src: torch.Tensor, depth_tgt: torch.Tensor, K: torch.Tensor, T_src_from_tgt: torch.Tensor
) -> torch.Tensor:
    """Warp a source-view map src [B,C,H,W] into the target view using target depth [B,1,H,W]."""
    X = backproject(depth_tgt, K)
    grid = project_to_grid(X, K, T_src_from_tgt, src.shape[-2:])
    return sample_map(src, grid)
