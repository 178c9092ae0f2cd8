"""Direct photometric refinement of the trajectory: RGB-D odometry on the network's depth, fused with the
network's pose estimates in one pose graph.

The network's relative poses are consistent between the windows that estimate them, but that agreement says
little about their accuracy: indoors, forward and backward estimates of a pair agree to ~0.1° while their
error against ground truth is ~1°. Given the network's depth, Open3D's RGB-D odometry (colour term, coarse to
fine) aligns each frame to the frames 1, 2 and 4 keyframes before it, starting from the network's estimate,
and gives a second, independent estimate of each pair. The two sources are weighted by noise levels measured
on the sequence itself:

- photometric σ from cycle consistency: the composed pairs (i, i+1), (i+1, i+2) against the direct pair
  (i, i+2) differ by the noise of three edges;
- network σ from its disagreement with the photometric estimate of the same pair, minus the photometric share
  (independent errors add in quadrature), floored at a fifth of the disagreement.

A photometric estimate is dropped when Open3D reports failure or no information, or when it rotates more than
``max_rotation_deg`` away from the network's estimate (a wrong basin). Frames are held only while a later frame
may still pair with them (``max(gaps) + 1`` frames), so memory stays flat in the sequence length.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from dro_sfm.geometry.pose import invert_rigid
from dro_sfm.recon.trajectory import GraphEdge, PairEdge, rotation_angle_rad, solve_pose_graph

logger = logging.getLogger(__name__)

# Median norm of a 3-D isotropic Gaussian vector, in units of its per-axis sigma.
_MEDIAN_NORM_3D = 1.5382
_FAR = float(np.finfo(np.float32).max)  # no depth cut-off: the network's depth decides


@dataclass(frozen=True)
class PhotometricOptions:
    """How pairs are aligned and which alignments are kept."""

    gaps: tuple[int, ...] = (1, 2, 4)  # align each keyframe to the ones this many keyframes earlier
    depth_diff: float = 0.06  # correspondences whose depths differ by more than this fraction of the median are cut
    max_rotation_deg: float = 5.0  # drop an alignment that rotates further than this from the network's estimate
    min_information: float = 1e3  # drop an alignment whose information matrix trace is below this
    iterations: tuple[int, ...] = (20, 10, 5)  # Gauss-Newton iterations per pyramid level, coarse to fine


@dataclass
class PhotometricEdge:
    """Odometry result for keyframes a < b: ``T_b_from_a`` [4,4] and Open3D's information matrix [6,6]."""

    a: int
    b: int
    T_b_from_a: np.ndarray
    information: np.ndarray


@dataclass
class _Buffered:
    index: int
    rgbd: object  # open3d.geometry.RGBDImage
    K: np.ndarray
    T_world_from_cam: np.ndarray
    median_depth: float


@dataclass
class NoiseLevels:
    """Per-axis standard deviations (rad, depth units) of the two edge sources, as measured on the sequence."""

    photometric_rot: float
    photometric_trans: float
    network_rot: float
    network_trans: float
    cycles: int
    pairs_compared: int

    def to_dict(self) -> dict[str, float]:
        return {"photometric_rot_deg": float(np.degrees(self.photometric_rot)),
                "photometric_trans": self.photometric_trans,
                "network_rot_deg": float(np.degrees(self.network_rot)), "network_trans": self.network_trans,
                "cycles": self.cycles, "pairs_compared": self.pairs_compared}


@dataclass
class PhotometricRefiner:
    """Collects photometric pair alignments frame by frame (in keyframe order) and fuses them at the end."""

    options: PhotometricOptions = field(default_factory=PhotometricOptions)
    edges: list[PhotometricEdge] = field(default_factory=list)
    rejected: int = 0
    attempted: int = 0

    def __post_init__(self) -> None:
        self._buffer: deque[_Buffered] = deque(maxlen=max(self.options.gaps) + 1)

    def add_frame(self, index: int, image: np.ndarray, depth: np.ndarray, K: np.ndarray,
                  T_world_from_cam: np.ndarray) -> None:
        """Align keyframe ``index`` (RGB uint8 [H,W,3], depth [H,W], K [3,3], network pose [4,4]) to the
        buffered keyframes ``gaps`` before it."""
        current = _Buffered(index, _rgbd(image, depth), np.asarray(K, dtype=np.float64),
                            np.asarray(T_world_from_cam, dtype=np.float64), _median_depth(depth))
        for earlier in self._buffer:
            if index - earlier.index in self.options.gaps:
                self._align(earlier, current)
        self._buffer.append(current)

    def _align(self, src: _Buffered, dst: _Buffered) -> None:
        import open3d as o3d

        odometry = o3d.pipelines.odometry
        if not np.allclose(src.K, dst.K) or not np.isfinite(src.median_depth):
            return  # one intrinsic matrix per pair in Open3D; a frame without depth has nothing to align
        self.attempted += 1
        h, w = np.asarray(src.rgbd.color).shape[:2]
        K = src.K
        intrinsic = o3d.camera.PinholeCameraIntrinsic(w, h, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        init = invert_rigid(dst.T_world_from_cam) @ src.T_world_from_cam
        option = odometry.OdometryOption(
            iteration_number_per_pyramid_level=o3d.utility.IntVector(list(self.options.iterations)),
            depth_diff_max=self.options.depth_diff * src.median_depth, depth_min=0.0, depth_max=_FAR)
        ok, T, info = odometry.compute_rgbd_odometry(src.rgbd, dst.rgbd, intrinsic, init,
                                                     odometry.RGBDOdometryJacobianFromColorTerm(), option)
        T = np.asarray(T, dtype=np.float64)
        info = np.asarray(info, dtype=np.float64)
        off = np.degrees(rotation_angle_rad(init[:3, :3].T @ T[:3, :3]))
        if not ok or not np.all(np.isfinite(T)) or np.trace(info) < self.options.min_information \
                or off > self.options.max_rotation_deg:
            self.rejected += 1
            return
        self.edges.append(PhotometricEdge(src.index, dst.index, T, info))

    def noise_levels(self, network_edges: list[PairEdge]) -> NoiseLevels | None:
        """Both sources' noise from this sequence (module docstring); None when too few cycles or shared pairs."""
        by_pair = {(e.a, e.b): e.T_b_from_a for e in self.edges}
        cyc_r, cyc_t = [], []
        for (a, b), T_ab in by_pair.items():
            if b != a + 1 or (b, b + 1) not in by_pair or (a, a + 2) not in by_pair:
                continue
            composed = by_pair[(b, b + 1)] @ T_ab
            r, t = _difference(composed, by_pair[(a, a + 2)])
            cyc_r.append(r)
            cyc_t.append(t)
        dis_r, dis_t = [], []
        for e in network_edges:
            if (e.a, e.b) in by_pair:
                r, t = _difference(e.T_b_from_a, by_pair[(e.a, e.b)])
                dis_r.append(r)
                dis_t.append(t)
        if len(cyc_r) < 3 or len(dis_r) < 3:
            return None
        scale = _MEDIAN_NORM_3D * np.sqrt(3.0)  # a cycle carries three edges' noise
        photo_r = max(float(np.median(cyc_r)) / scale, 1e-6)
        photo_t = max(float(np.median(cyc_t)) / scale, 1e-9)
        both_r = float(np.median(dis_r)) / _MEDIAN_NORM_3D
        both_t = float(np.median(dis_t)) / _MEDIAN_NORM_3D
        net_r = max(np.sqrt(max(both_r**2 - photo_r**2, 0.0)), 0.2 * both_r, 1e-6)
        net_t = max(np.sqrt(max(both_t**2 - photo_t**2, 0.0)), 0.2 * both_t, 1e-9)
        return NoiseLevels(photo_r, photo_t, float(net_r), float(net_t), len(cyc_r), len(dis_r))

    def fuse(self, poses: np.ndarray, network_edges: list[PairEdge]) -> tuple[np.ndarray, NoiseLevels | None]:
        """Camera-to-world poses [N,4,4] optimised over the network's and the photometric edges, starting from
        ``poses`` (the network's trajectory); returned unchanged with None when the noise cannot be measured."""
        noise = self.noise_levels(network_edges)
        if noise is None:
            logger.warning("photometric refinement skipped: too few aligned frame pairs (%d of %d attempts kept) "
                           "to measure its noise; the network's trajectory is kept", len(self.edges), self.attempted)
            return poses, None
        n = len(poses)
        mean_weight = float(np.mean([e.weight for e in network_edges])) or 1.0
        net_info = np.diag([1.0 / noise.network_rot**2] * 3 + [1.0 / noise.network_trans**2] * 3)
        graph = [GraphEdge(e.a, e.b, e.T_b_from_a, (e.weight / mean_weight) * net_info) for e in network_edges
                 if e.b < n]
        for e in self.edges:
            if e.b >= n:
                continue
            # Open3D's information is that of unit-noise point correspondences: keep its shape (which
            # directions the pair constrains) and calibrate its rotation block to the measured noise.
            scale = (1.0 / noise.photometric_rot**2) / float(np.mean(np.diag(e.information)[:3]))
            graph.append(GraphEdge(e.a, e.b, e.T_b_from_a, scale * e.information))
        step = float(np.median(np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1))) if n > 1 else 1.0
        return solve_pose_graph(poses, graph, max_correspondence_distance=max(3.0 * noise.network_trans, step)), noise


def _difference(T_a: np.ndarray, T_b: np.ndarray) -> tuple[float, float]:
    """Rotation angle (rad) and translation distance between two transforms [4,4]."""
    return rotation_angle_rad(T_a[:3, :3].T @ T_b[:3, :3]), float(np.linalg.norm(T_a[:3, 3] - T_b[:3, 3]))


def _median_depth(depth: np.ndarray) -> float:
    valid = depth[np.isfinite(depth) & (depth > 0)]
    return float(np.median(valid)) if valid.size else float("nan")


def _rgbd(image: np.ndarray, depth: np.ndarray) -> object:
    """Open3D RGBD image from RGB uint8 [H,W,3] and depth [H,W] (0 or non-finite: no depth)."""
    import open3d as o3d

    d = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    return o3d.geometry.RGBDImage.create_from_color_and_depth(
        o3d.geometry.Image(np.ascontiguousarray(image, dtype=np.uint8)), o3d.geometry.Image(d),
        depth_scale=1.0, depth_trunc=_FAR, convert_rgb_to_intensity=True)
