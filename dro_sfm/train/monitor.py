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


# The hidden ReLU layer of every head: when all its units are negative on every input the head outputs a
# constant (its last bias) and passes no gradient back: the pose update of the first default model died so.
HEAD_HIDDEN_LAYERS = {
    "pose_head": "pose_head.conv1_pose",
    "depth_head": "depth_head.conv1",
    "upmask_net": "upmask_net.mask.0",
    "update_pose_head": "update_block_pose.pose_head.conv1_pose",
    "update_depth_head": "update_block_depth.depth_head.conv1",
    "update_mask": "update_block_depth.mask.0",
}


@torch.no_grad()
def head_activity(net: DroNet, target: torch.Tensor, refs: list[torch.Tensor], K: torch.Tensor) -> dict[str, float]:
    """Fraction of positive pre-activations of each head's hidden layer over one forward (0 = a dead head).

    Heads that this forward does not run (``upmask_net`` after the first stage in eval) are left out.
    """
    positive: dict[str, list[float]] = {name: [] for name in HEAD_HIDDEN_LAYERS}
    handles = []
    for name, path in HEAD_HIDDEN_LAYERS.items():
        layer = net.get_submodule(path)
        handles.append(layer.register_forward_hook(
            lambda _m, _i, out, name=name: positive[name].append((out > 0).float().mean().item())))
    was_training = net.training
    try:
        net.eval()
        net.forward_full(target, refs, K)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return {name: float(np.mean(v)) for name, v in positive.items() if v}
