"""Self-supervised multi-view photometric loss with decay (official ``MultiViewPhotometricDecayLoss``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dro_sfm.geometry.warp import inv2depth, warp_to_target
from dro_sfm.losses.supervised import sequence_weights


@dataclass(frozen=True)
class PhotometricConfig:
    """Weights of the self-supervised loss (official config values)."""

    ssim_weight: float = 0.85
    smooth_weight: float = 0.001
    C1: float = 1e-4
    C2: float = 9e-4
    automask: bool = True


@dataclass
class PhotometricLossTerms:
    total: torch.Tensor
    photometric: torch.Tensor
    smoothness: torch.Tensor


def ssim(x: torch.Tensor, y: torch.Tensor, C1: float = 1e-4, C2: float = 9e-4) -> torch.Tensor:
    """Per-pixel SSIM [B,C,H,W] with 3×3 average pooling after reflection padding."""
    x, y = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
    pool = lambda t: F.avg_pool2d(t, 3, stride=1)  # noqa: E731
    mu_x, mu_y = pool(x), pool(y)
    mu_xy, mu_x2, mu_y2 = mu_x * mu_y, mu_x.pow(2), mu_y.pow(2)
    sigma_x = pool(x.pow(2)) - mu_x2
    sigma_y = pool(y.pow(2)) - mu_y2
    sigma_xy = pool(x * y) - mu_xy
    num = (2 * mu_xy + C1) * (2 * sigma_xy + C2)
    den = (mu_x2 + mu_y2 + C1) * (sigma_x + sigma_y + C2)
    return num / den


def photometric_map(estimate: torch.Tensor, target: torch.Tensor, cfg: PhotometricConfig) -> torch.Tensor:
    """SSIM + L1 photometric error [B,1,H,W] of estimate vs target images [B,3,H,W]."""
    ssim_err = torch.clamp((1.0 - ssim(estimate, target, cfg.C1, cfg.C2)) / 2.0, 0.0, 1.0)
    l1 = (estimate - target).abs()
    return cfg.ssim_weight * ssim_err.mean(1, True) + (1 - cfg.ssim_weight) * l1.mean(1, True)


def smoothness(inv_depths: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """Edge-aware smoothness of mean-normalised inverse depths, decayed by 2^k, averaged over n."""
    gx_img = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    gy_img = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    wx, wy = torch.exp(-gx_img), torch.exp(-gy_img)
    n = len(inv_depths)
    total = 0.0
    for k, inv in enumerate(inv_depths):
        norm = inv / inv.mean(2, True).mean(3, True).clamp(min=1e-6)
        sx = (norm[..., :, :-1] - norm[..., :, 1:]) * wx
        sy = (norm[..., :-1, :] - norm[..., 1:, :]) * wy
        total = total + (sx.abs().mean() + sy.abs().mean()) / 2**k
    return total / n


def photometric_loss(
    inv_preds: list[torch.Tensor],
    pose_mats: list[list[torch.Tensor]],
    target: torch.Tensor,
    refs: list[torch.Tensor],
    K: torch.Tensor,
    cfg: PhotometricConfig | None = None,
) -> PhotometricLossTerms:
    """Per-pixel minimum reprojection (with auto-masking) over references, γ-decayed over predictions.

    ``inv_preds`` k× [B,1,H,W]; ``pose_mats[k][v]`` [B,4,4] T_ref_from_tgt; images [B,3,H,W] in [0,1].
    """
    cfg = cfg or PhotometricConfig()
    static = [photometric_map(r, target, cfg) for r in refs] if cfg.automask else []
    weights = sequence_weights(len(inv_preds))
    photo = 0.0
    for w, inv, views in zip(weights, inv_preds, pose_mats):
        depth = inv2depth(inv)
        candidates = [photometric_map(warp_to_target(r, depth, K, T), target, cfg) for r, T in zip(refs, views)]
        per_pixel_min = torch.cat(candidates + static, dim=1).min(1, True)[0]
        photo = photo + w * per_pixel_min.mean()
    smooth = cfg.smooth_weight * smoothness(inv_preds, target)
    return PhotometricLossTerms(photo + smooth, photo, smooth)
