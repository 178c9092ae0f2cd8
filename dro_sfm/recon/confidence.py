"""Per-pixel depth confidence in [0, 1] from two independent cues, used to filter the fused cloud and mesh.

* Feature-metric cost: the optimiser's final cost per pixel (mean squared difference between the target's
  features and the references' features warped with the solved depth and poses). A pixel whose features
  still disagree after optimisation is badly explained. The cost's absolute scale depends on the weights,
  so it is normalised by the frame's median: ``c_cost = 1 / (1 + (cost / (k · median))²)`` with k = 3
  (median cost → 0.9, three times the median → 0.5).
* Multi-view depth consistency: the target's depth is reprojected into a neighbouring keyframe with the
  network's relative pose and compared with that frame's own predicted depth. With ``r = (z − d_nb) / d_nb``
  (z: the point's depth in the neighbour, d_nb: the neighbour's depth at that pixel),
  ``c_geo = exp(−r² / 2σ²)``, σ = 5 %. A point well *behind* the neighbour's surface (r > 3σ) may simply be
  occluded there and pixels that leave the neighbour's image cannot be checked: both count as unknown
  (``c_geo = 0.5``). With several neighbours the checked ones are averaged.

The two are combined by their geometric mean, ``sqrt(c_cost · c_geo)``, so either cue can veto a pixel;
the default fusion threshold 0.5 then keeps pixels that are unchecked but have a typical cost.
Pixels without a valid depth get 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

COST_SCALE = 3.0  # cost / median at which the cost confidence is 0.5
CONSISTENCY_SIGMA = 0.05  # relative depth disagreement at which the consistency confidence is exp(-1/2)
OCCLUSION_SIGMAS = 3.0  # farther behind the neighbour's surface than this many sigmas: possibly occluded
UNKNOWN = 0.5  # consistency of pixels that could not be checked


@dataclass
class Neighbour:
    """A neighbouring keyframe for the consistency check: its depth [H,W] (same K) and T_nb_from_tgt [4,4]."""

    depth: np.ndarray
    T_nb_from_tgt: np.ndarray


def upsample_cost(cost_map: np.ndarray | torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """Feature-resolution cost [h,w] (or [1,1,h,w]) bilinearly resized to [H,W] float32."""
    t = torch.as_tensor(np.asarray(cost_map) if not isinstance(cost_map, torch.Tensor) else cost_map)
    t = t.detach().float().cpu().reshape(1, 1, *t.shape[-2:])
    if tuple(t.shape[-2:]) != tuple(hw):
        t = F.interpolate(t, size=tuple(hw), mode="bilinear", align_corners=False)
    return t[0, 0].numpy()


def cost_confidence(cost: np.ndarray) -> np.ndarray:
    """Confidence [H,W] in (0,1] from a cost map [H,W]: 1 / (1 + (cost / (3·median))²)."""
    cost = np.nan_to_num(np.maximum(cost, 0.0), nan=np.inf).astype(np.float64)
    finite = cost[np.isfinite(cost)]
    scale = COST_SCALE * float(np.median(finite)) if finite.size else 0.0
    if scale <= 0:  # all costs zero: every pixel is explained equally well
        return np.where(np.isfinite(cost), 1.0, 0.0).astype(np.float32)
    return (1.0 / (1.0 + (cost / scale) ** 2)).astype(np.float32)


def reproject_depth(depth: np.ndarray, K: np.ndarray, T_nb_from_tgt: np.ndarray, hw_nb: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Target depth [H,W] into the neighbour: (depth in the neighbour [H,W], pixel u [H,W] int, v [H,W] int,
    inside [H,W] bool: valid depth, in front of the neighbour and inside its image). Nearest-pixel lookup,
    so depth edges are not blended."""
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    z = depth.astype(np.float64)
    X = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=0).reshape(3, -1)
    Xn = T_nb_from_tgt[:3, :3] @ X + T_nb_from_tgt[:3, 3:4]
    zn = Xn[2]
    front = (zn > 1e-9) & (z.reshape(-1) > 0)
    safe = np.where(front, zn, 1.0)
    un = np.round(K[0, 0] * Xn[0] / safe + K[0, 2]).astype(np.int64)
    vn = np.round(K[1, 1] * Xn[1] / safe + K[1, 2]).astype(np.int64)
    inside = front & (un >= 0) & (vn >= 0) & (un < hw_nb[1]) & (vn < hw_nb[0])
    shape = (H, W)
    return zn.reshape(shape), np.clip(un, 0, hw_nb[1] - 1).reshape(shape), \
        np.clip(vn, 0, hw_nb[0] - 1).reshape(shape), inside.reshape(shape)


def consistency_confidence(depth: np.ndarray, K: np.ndarray, neighbours: Sequence[Neighbour]) -> np.ndarray:
    """Multi-view consistency [H,W] in [0,1] of a target depth [H,W] with neighbours' depths (module doc)."""
    total = np.zeros(depth.shape, np.float64)
    checked = np.zeros(depth.shape, np.int64)
    for nb in neighbours:
        zn, un, vn, inside = reproject_depth(depth, K, nb.T_nb_from_tgt, nb.depth.shape)
        d_nb = nb.depth[vn, un].astype(np.float64)
        ok = inside & (d_nb > 0)
        r = np.where(ok, (zn - d_nb) / np.where(ok, d_nb, 1.0), 0.0)
        occluded = r > OCCLUSION_SIGMAS * CONSISTENCY_SIGMA
        use = ok & ~occluded
        total += np.where(use, np.exp(-0.5 * (r / CONSISTENCY_SIGMA) ** 2), 0.0)
        checked += use
    return np.where(checked > 0, total / np.maximum(checked, 1), UNKNOWN).astype(np.float32)


def combine_confidence(depth: np.ndarray, c_cost: np.ndarray | None, c_geo: np.ndarray | None) -> np.ndarray:
    """Geometric mean [H,W] of the available cues, 0 where depth [H,W] is not a positive finite number."""
    cues = [c for c in (c_cost, c_geo) if c is not None]
    conf = np.ones(depth.shape, np.float64)
    for c in cues:
        conf *= np.clip(c, 0.0, 1.0)
    if len(cues) > 1:
        conf = conf ** (1.0 / len(cues))
    valid = np.isfinite(depth) & (depth > 0)
    return np.where(valid, conf, 0.0).astype(np.float32)


def frame_confidence(depth: np.ndarray, K: np.ndarray, cost_map: np.ndarray | torch.Tensor | None,
                     neighbours: Sequence[Neighbour]) -> np.ndarray:
    """Confidence [H,W] of a frame's depth [H,W] from its cost map (any resolution) and its neighbours."""
    c_cost = cost_confidence(upsample_cost(cost_map, depth.shape)) if cost_map is not None else None
    c_geo = consistency_confidence(depth, K, neighbours) if neighbours else None
    return combine_confidence(depth, c_cost, c_geo)
