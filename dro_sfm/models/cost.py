"""The feature-metric cost: squared difference between target features and warped reference features."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dro_sfm.geometry.camera import camera_rays, project_to_grid
from dro_sfm.geometry.pose import euler_vec_to_matrix
from dro_sfm.geometry.warp import sample_map


@dataclass
class FeatureCost:
    """Cost of depth/pose hypotheses for one target and its references, at feature resolution.

    ``fmap_tgt`` [B,C,h,w], ``fmaps_ref`` list of N [B,C,h,w], ``K`` [B,3,3] at feature resolution.
    The rays K⁻¹·[u,v,1] are computed once (the literal path rebuilds them for every evaluation,
    with identical values).
    """

    fmap_tgt: torch.Tensor
    fmaps_ref: list[torch.Tensor]
    K: torch.Tensor
    cache_rays: bool = True

    def __post_init__(self) -> None:
        h, w = self.fmap_tgt.shape[-2:]
        self._rays = camera_rays(self.K, h, w) if self.cache_rays else None

    def rays(self) -> torch.Tensor:
        """[B,3,h,w]."""
        if self._rays is not None:
            return self._rays
        h, w = self.fmap_tgt.shape[-2:]
        return camera_rays(self.K, h, w)

    def points(self, depth: torch.Tensor) -> torch.Tensor:
        """Target-camera points [B,3,h,w] of depth [B,1,h,w]."""
        return self.rays() * depth

    def single(self, ref: int, pose_vec: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Per-channel cost [B,C,h,w] of reference ``ref`` under pose [B,6] for target points [B,3,h,w]."""
        return self.single_T(ref, euler_vec_to_matrix(pose_vec), points)

    def single_T(self, ref: int, T_ref_from_tgt: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Per-channel cost [B,C,h,w] of reference ``ref`` under a pose matrix [B,4,4]."""
        fmap_ref = self.fmaps_ref[ref]
        grid = project_to_grid(points, self.K, T_ref_from_tgt, fmap_ref.shape[-2:])
        return (self.fmap_tgt - sample_map(fmap_ref, grid)) ** 2

    def mean_over_refs(self, poses: list[torch.Tensor], depth: torch.Tensor) -> torch.Tensor:
        """Mean over references of the per-channel costs [B,C,h,w] for depth [B,1,h,w]."""
        X = self.points(depth)
        costs = [self.single(i, p, X) for i, p in enumerate(poses)]
        return torch.stack(costs, dim=1).mean(dim=1)

