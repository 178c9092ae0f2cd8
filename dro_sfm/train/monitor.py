"""What training logs besides the loss: per-iteration errors and pictures of the current batch."""

from __future__ import annotations

import numpy as np
import torch

from dro_sfm.eval.pose_metrics import rotation_error_deg
from dro_sfm.geometry.pose import euler_vec_to_matrix
from dro_sfm.geometry.warp import inv2depth, warp_to_target
from dro_sfm.models.dro import DroNet, DroOutput
from dro_sfm.viz.depth_color import colorize_depth


def median_scaled_abs_rel(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """AbsRel of depth [B,1,H,W] after per-image median-of-ratios scaling, mean over the batch."""
    vals = []
    for p, g in zip(pred, gt):
        ok = (g > 0) & (p > 0)
        if ok.sum() < 10:
            continue
        scale = torch.median(g[ok] / p[ok])
        vals.append(((p[ok] * scale - g[ok]).abs() / g[ok]).mean().item())
    return float(np.mean(vals)) if vals else float("nan")


@torch.no_grad()
def per_prediction_errors(net: DroNet, out: DroOutput, poses: torch.Tensor, batch: dict) -> dict[str, list[float]]:
    """Median-scaled AbsRel and rotation error (deg, first reference) of every returned prediction."""
    gt = batch["depth"]
    abs_rel = [median_scaled_abs_rel(inv2depth(inv), gt) for inv in out.inv_depths]
    rot = []
    T_gt = batch["T_ref_from_tgt"][:, 0].double().cpu().numpy()
    for k in range(poses.shape[2]):
        T = euler_vec_to_matrix(poses[:, 0, k]).double().cpu().numpy()
        rot.append(float(np.mean(rotation_error_deg(T_gt[:, :3, :3], T[:, :3, :3]))))
    return {"abs_rel": abs_rel, "rot_deg": rot}


@torch.no_grad()
def image_panels(out: DroOutput, poses: torch.Tensor, batch: dict) -> dict[str, np.ndarray]:
    """Pictures of sample 0: predicted and GT depth, the reference warped with the prediction, error map."""
    depth = inv2depth(out.inv_depths[-1])[0, 0].cpu().numpy()
    panels = {"depth/pred": colorize_depth(depth)}
    if "depth" in batch:
        gt = batch["depth"][0, 0].cpu().numpy()
        panels["depth/gt"] = colorize_depth(gt)
        err = np.where(gt > 0, np.abs(depth - gt) / np.maximum(gt, 1e-6), 0)
        grey = np.clip(err / 0.5, 0, 1)[..., None] * np.array([255, 255, 255])
        panels["depth/abs_rel_error"] = grey.astype(np.uint8)
    T = euler_vec_to_matrix(poses[:1, 0, -1])
    warped = warp_to_target(batch["refs"][:1, 0], inv2depth(out.inv_depths[-1][:1]), batch["K"][:1].float(), T)
    panels["warp/ref0_to_target"] = (warped[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    panels["warp/target"] = (batch["target"][0].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
    return panels
