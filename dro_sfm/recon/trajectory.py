"""One camera trajectory from the network's per-window relative poses: combine, chain, refine.

Every target ``t`` yields ``T_ref_from_tgt`` for each reference ``r`` of its window, so the transform
between two keyframes ``a < b`` is usually estimated twice: forward by target ``a`` (``T_b_from_a``) and
backward by target ``b`` (``T_a_from_b``, inverted). The estimates of a pair are averaged on SE(3)
(weighted quaternion mean of the rotations, weighted mean of the translations; weights are the windows'
mean depth confidence). Chaining the consecutive pairs from frame 0 (the world frame) gives the initial
trajectory; Open3D's pose-graph optimisation then refines it with every pair (consecutive pairs as
odometry edges, wider pairs as loop-closure-like edges that the line process may prune), each weighted
by its confidence. Perfect relative poses stay exactly as they are.

Open3D builds the normal equations densely ((6·nodes)² doubles), so the graph is optimised in overlapping
segments of ``segment`` frames: memory stays flat in the sequence length. Edges only join frames at most
``refs`` apart, so segments with an overlap of a few windows lose essentially nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from dro_sfm.errors import InputError
from dro_sfm.geometry.pose import invert_rigid

logger = logging.getLogger(__name__)

MIN_WEIGHT = 1e-3


@dataclass
class PairEdge:
    """Combined estimate of the transform between keyframes ``a < b``: ``T_b_from_a`` [4,4], total weight,
    and how many window estimates it averages."""

    a: int
    b: int
    T_b_from_a: np.ndarray
    weight: float
    n_estimates: int


def average_poses(Ts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean [4,4] of rigid transforms [k,4,4]: quaternion eigen-mean (Markley) and mean translation."""
    Ts = np.asarray(Ts, dtype=np.float64)
    w = np.maximum(np.asarray(weights, dtype=np.float64), 0.0)
    if Ts.shape[0] == 1:
        return Ts[0].copy()
    if w.sum() <= 0:
        w = np.ones_like(w)
    q = Rotation.from_matrix(Ts[:, :3, :3]).as_quat()  # [k,4] x y z w
    M = (w[:, None, None] * q[:, :, None] * q[:, None, :]).sum(axis=0)
    _, vecs = np.linalg.eigh(M)
    out = np.eye(4)
    out[:3, :3] = Rotation.from_quat(vecs[:, -1]).as_matrix()
    out[:3, 3] = (w[:, None] * Ts[:, :3, 3]).sum(axis=0) / w.sum()
    return out


def rotation_angle_rad(R: np.ndarray) -> float:
    """Angle of a rotation matrix [3,3] in radians."""
    return float(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)))


class TrajectoryBuilder:
    """Collects relative-pose estimates window by window and turns them into camera-to-world poses.

    Holds two 4x4 matrices per estimate and one per frame: fine for thousands of frames.
    """

    def __init__(self) -> None:
        self._estimates: dict[tuple[int, int], list[tuple[np.ndarray, float]]] = {}
        self._chain: list[np.ndarray] = []
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._chain)

    def add_window(self, target: int, ref_indices: list[int], T_ref_from_tgt: np.ndarray, weight: float) -> None:
        """Record target's estimates T_ref_from_tgt [N,4,4] for its references (keyframe indices)."""
        weight = max(float(weight), MIN_WEIGHT) if np.isfinite(weight) else MIN_WEIGHT
        for ref, T in zip(ref_indices, np.asarray(T_ref_from_tgt, dtype=np.float64)):
            if ref == target:
                continue
            if not np.all(np.isfinite(T)):
                self.rejected += 1
                logger.warning("non-finite relative pose from target %d to reference %d ignored", target, ref)
                continue
            a, b = (target, ref) if target < ref else (ref, target)
            T_b_from_a = T if target < ref else invert_rigid(T)
            self._estimates.setdefault((a, b), []).append((T_b_from_a, weight))

    def pair(self, a: int, b: int) -> PairEdge | None:
        """The combined estimate of the pair ``a < b``, or None when no window estimated it."""
        est = self._estimates.get((a, b))
        if not est:
            return None
        Ts = np.stack([e[0] for e in est])
        ws = np.array([e[1] for e in est])
        return PairEdge(a, b, average_poses(Ts, ws), float(ws.sum()), len(est))

    def edges(self) -> list[PairEdge]:
        """Every combined pair, sorted by (a, b)."""
        return [e for key in sorted(self._estimates) if (e := self.pair(*key)) is not None]

    def chained_pose(self, index: int) -> np.ndarray:
        """Camera-to-world pose [4,4] of keyframe ``index`` by chaining consecutive pairs from frame 0.

        Call it in frame order once the pair (index - 1, index) has all its estimates (after target
        ``index`` ran); the chain is extended incrementally.
        """
        while len(self._chain) <= index:
            i = len(self._chain)
            if i == 0:
                self._chain.append(np.eye(4))
                continue
            edge = self.pair(i - 1, i)
            if edge is None:
                raise InputError(f"no relative pose between keyframes {i - 1} and {i}; cannot chain the trajectory")
            self._chain.append(self._chain[i - 1] @ invert_rigid(edge.T_b_from_a))
        return self._chain[index].copy()

    def chained_poses(self, n_frames: int) -> np.ndarray:
        """Chained camera-to-world poses [n,4,4] of keyframes 0..n-1."""
        return np.stack([self.chained_pose(i) for i in range(n_frames)])

    def disagreement(self) -> tuple[float, float]:
        """Median rotation (rad) and translation disagreement between the estimates of each pair and their
        mean (0, 0 when no pair has two estimates)."""
        rot, trans = [], []
        for key, est in self._estimates.items():
            if len(est) < 2:
                continue
            mean = self.pair(*key).T_b_from_a  # type: ignore[union-attr]
            for T, _ in est:
                rot.append(rotation_angle_rad(mean[:3, :3].T @ T[:3, :3]))
                trans.append(float(np.linalg.norm(T[:3, 3] - mean[:3, 3])))
        if not rot:
            return 0.0, 0.0
        return float(np.median(rot)), float(np.median(trans))

    def optimize(self, n_frames: int, segment: int = 100, overlap: int = 20) -> np.ndarray:
        """Pose-graph refined camera-to-world poses [n,4,4] (frame 0 fixed at the identity)."""
        poses = self.chained_poses(n_frames)
        edges = [e for e in self.edges() if e.b < n_frames]
        if n_frames < 3 or len(edges) <= n_frames - 1:
            return poses  # a chain without redundant edges is its own optimum
        sigma_r, sigma_t = self.noise_scales(poses)
        return optimize_pose_graph(poses, edges, sigma_r, sigma_t, segment=segment, overlap=overlap)

    def noise_scales(self, poses: np.ndarray) -> tuple[float, float]:
        """Rotation (rad) and translation standard deviations for the information matrices: the estimates'
        disagreement, floored at 1 mrad and 1 % of the median step so that perfect estimates stay usable."""
        rot, trans = self.disagreement()
        steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
        step = float(np.median(steps)) if steps.size else 1.0
        return max(rot, 1e-3), max(trans, 0.01 * step, 1e-6)


@dataclass
class GraphEdge:
    """One pose-graph constraint: ``T_b_from_a`` [4,4] between keyframes a < b with its information [6,6]
    (Open3D order: rotation first). Uncertain edges go through the line process and may be pruned."""

    a: int
    b: int
    T_b_from_a: np.ndarray
    information: np.ndarray
    uncertain: bool = False


def optimize_pose_graph(poses: np.ndarray, edges: list[PairEdge], sigma_r: float, sigma_t: float,
                        segment: int = 100, overlap: int = 20) -> np.ndarray:
    """Refine camera-to-world poses [N,4,4] with Open3D's pose graph over the network's pair ``edges``.

    Information: weight · diag(1/σ_r² ×3, 1/σ_t² ×3). Consecutive pairs are certain; wider ones uncertain
    (line process, pruned when they disagree by more than about three sigmas).
    """
    base_info = np.diag([1.0 / sigma_r**2] * 3 + [1.0 / sigma_t**2] * 3)
    graph_edges = [GraphEdge(e.a, e.b, e.T_b_from_a, e.weight * base_info, uncertain=e.b - e.a > 1) for e in edges]
    return solve_pose_graph(poses, graph_edges, max_correspondence_distance=3.0 * sigma_t, segment=segment,
                            overlap=overlap)


def solve_pose_graph(poses: np.ndarray, edges: list[GraphEdge], max_correspondence_distance: float,
                     segment: int = 100, overlap: int = 20) -> np.ndarray:
    """Open3D pose-graph optimisation of camera-to-world poses [N,4,4] (frame 0 fixed), segment by segment.

    Node ``i`` holds T_world_from_i; an edge (a, b) holds T_b_from_a (Open3D: source a, target b, the
    transform that maps source into target).
    """
    import open3d as o3d

    reg = o3d.pipelines.registration
    n = len(poses)
    if segment < 2 * overlap + 2:
        raise ValueError(f"segment ({segment}) must exceed twice the overlap ({overlap}) by 2")
    out = np.array(poses, dtype=np.float64, copy=True)
    by_start: dict[int, list[GraphEdge]] = {}
    for e in edges:
        by_start.setdefault(e.a, []).append(e)
    option = reg.GlobalOptimizationOption(max_correspondence_distance=max_correspondence_distance,
                                          edge_prune_threshold=0.25, preference_loop_closure=1.0, reference_node=0)
    criteria = reg.GlobalOptimizationConvergenceCriteria()
    start = 0
    previous = o3d.utility.get_verbosity_level()
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    try:
        while True:
            end = min(start + segment, n)
            graph = reg.PoseGraph()
            for i in range(start, end):
                graph.nodes.append(reg.PoseGraphNode(out[i]))
            for a in range(start, end):
                for e in by_start.get(a, []):
                    if e.b < end:
                        graph.edges.append(reg.PoseGraphEdge(e.a - start, e.b - start, e.T_b_from_a,
                                                             e.information, uncertain=e.uncertain))
            reg.global_optimization(graph, reg.GlobalOptimizationLevenbergMarquardt(), criteria, option)
            refined = np.stack([np.asarray(node.pose) for node in graph.nodes])
            if end < n:
                # Later frames were chained from the old pose of the segment's last frame: move them along.
                correction = refined[-1] @ invert_rigid(out[end - 1])
                out[end:] = correction @ out[end:]
            out[start:end] = refined
            if end == n:
                break
            start = end - overlap
    finally:
        o3d.utility.set_verbosity_level(previous)
    # Re-orthonormalise: the optimiser composes many small exponentials.
    for T in out:
        U, _, Vt = np.linalg.svd(T[:3, :3])
        T[:3, :3] = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    return out
