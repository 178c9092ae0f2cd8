"""Pinhole cameras with the official DRO conventions: intrinsics scaling, back-projection, projection.

Pixel ``(u, v)`` is column, row with integer values at pixel centres. Camera axes: x right, y down,
z forward. All functions are batched over a leading ``B``.
"""

from __future__ import annotations

import numpy as np
import torch


def scale_intrinsics_feature(K: torch.Tensor, scale: float) -> torch.Tensor:
    """K [B,3,3] for a map ``scale`` times the size, half-pixel rule ``c' = (c + 0.5)·s − 0.5`` (spec §7)."""
    K = K.float().clone()
    if scale == 1.0:
        return K
    K[:, 0, 0] *= scale
    K[:, 1, 1] *= scale
    K[:, 0, 2] = (K[:, 0, 2] + 0.5) * scale - 0.5
    K[:, 1, 2] = (K[:, 1, 2] + 0.5) * scale - 0.5
    return K


def scale_intrinsics_resize(K: np.ndarray | torch.Tensor, sx: float, sy: float) -> np.ndarray | torch.Tensor:
    """K [...,3,3] after resizing an image by (sx, sy): row 0 × sx, row 1 × sy (the datasets' rule, spec §12)."""
    K = K.clone() if isinstance(K, torch.Tensor) else np.array(K, dtype=np.float64, copy=True)
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K


def inverse_intrinsics(K: torch.Tensor) -> torch.Tensor:
    """Element-wise K⁻¹ [B,3,3] as the official code forms it (skew copied unchanged, spec §7)."""
    Kinv = K.clone()
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    Kinv[:, 0, 0] = 1.0 / fx
    Kinv[:, 1, 1] = 1.0 / fy
    Kinv[:, 0, 2] = -1.0 * cx / fx
    Kinv[:, 1, 2] = -1.0 * cy / fy
    return Kinv


def pixel_grid(batch: int, height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Homogeneous pixel coordinates [B,3,H·W] with rows (u, v, 1), row-major over the image."""
    u = torch.linspace(0, width - 1, width, dtype=dtype, device=device)
    v = torch.linspace(0, height - 1, height, dtype=dtype, device=device)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    grid = torch.stack([uu, vv, torch.ones_like(uu)], dim=0).reshape(1, 3, -1)
    return grid.expand(batch, 3, height * width)


def camera_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Rays K⁻¹·[u,v,1] [B,3,H,W] (z = 1); depth times these rays gives camera points."""
    B = K.shape[0]
    grid = pixel_grid(B, height, width, dtype=K.dtype, device=K.device)
    return inverse_intrinsics(K).bmm(grid).view(B, 3, height, width)


def backproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera points [B,3,H,W] of depth [B,1,H,W] with intrinsics K [B,3,3]."""
    return camera_rays(K, depth.shape[-2], depth.shape[-1]) * depth


def transform_points(T: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Apply rigid transforms T [B,4,4] (or [B,3,4]) to points X [B,3,H,W]."""
    B, _, H, W = X.shape
    out = T[:, :3, :3].bmm(X.reshape(B, 3, -1)) + T[:, :3, 3].unsqueeze(-1)
    return out.view(B, 3, H, W)


def project_to_grid(X: torch.Tensor, K: torch.Tensor, T: torch.Tensor, map_hw: tuple[int, int]) -> torch.Tensor:
    """Project points X [B,3,h,w] through T [B,4,4] and K [B,3,3] to a grid_sample grid [B,h,w,2].

    Coordinates are normalised by ``(w−1, h−1)`` of the sampled map (``align_corners=True``); depths are
    clamped at 1e-5 and nothing is masked, as in the official code.
    """
    B, _, h, w = X.shape
    pc = K.bmm(transform_points(T, X).view(B, 3, -1))
    Z = pc[:, 2].clamp(min=1e-5)
    x = pc[:, 0] / Z
    y = pc[:, 1] / Z
    H_map, W_map = map_hw
    gx = 2 * x / (W_map - 1) - 1.0
    gy = 2 * y / (H_map - 1) - 1.0
    return torch.stack([gx, gy], dim=-1).view(B, h, w, 2)


def project_points_pixels(X: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates [B,2,H,W] and depth [B,1,H,W] of camera points X [B,3,H,W] (no clamping)."""
    B, _, H, W = X.shape
    pc = K.bmm(X.reshape(B, 3, -1)).view(B, 3, H, W)
    z = pc[:, 2:3]
    return pc[:, :2] / z, z
