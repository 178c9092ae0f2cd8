"""Fusing per-frame depth into one scene: a voxel-averaged coloured point cloud and a TSDF mesh.

Both are built by streaming over the frames of a run directory one at a time, so memory grows with the
size of the scene (occupied voxels), never with the number of frames. The TSDF uses Open3D's tensor
``VoxelBlockGrid`` (the legacy ``ScalableTSDFVolume`` returns empty meshes in Open3D 0.20). Its hash map
keeps every slot of its capacity resident and doubles it when a frame could overflow it, so a grid left to
grow costs up to twice the scene; ``fuse_run`` therefore sizes it once from a cheap pass over the depth maps
(``count_tsdf_blocks``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from dro_sfm.errors import ConfigError, InputError
from dro_sfm.geometry.pose import invert_rigid
from dro_sfm.recon.run_dir import FrameData, RunCameras, RunLayout, read_frame, read_npy

logger = logging.getLogger(__name__)

# Voxel keys pack three signed 21-bit voxel coordinates into one int64 (±1,048,575 voxels per axis).
_KEY_BITS = 21
_KEY_OFFSET = 1 << (_KEY_BITS - 1)
# uint16 TSDF weights count the frames that saw a voxel and would wrap past this many.
_UINT16_MAX_FRAMES = 65535


@dataclass
class FusionOptions:
    """User options of fusion; ``None`` means "choose from the depth statistics" (see ``resolve``)."""

    conf_threshold: float = 0.5
    voxel_size: float | None = None
    cloud_voxel_size: float | None = None
    depth_max: float | None = None
    mesh_weight_threshold: float | None = None
    trunc_voxels: float = 6.0

    def validate(self) -> None:
        if not 0.0 <= self.conf_threshold <= 1.0:
            raise ConfigError(f"confidence threshold must be in [0, 1], got {self.conf_threshold}")
        for name in ("voxel_size", "cloud_voxel_size", "depth_max"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.trunc_voxels < 1:
            raise ConfigError(f"trunc_voxels must be >= 1, got {self.trunc_voxels}")


@dataclass
class DepthStats:
    """Depth statistics of a run in metres: median and robust max (largest per-frame p99) of confident
    pixels on a subsampled grid, and the exact largest depth of any pixel (for the uint16 PNG scale)."""

    median: float
    robust_max: float
    max: float
    focal: float
    valid_fraction: float


@dataclass
class ResolvedFusion:
    """The parameters actually used for one fusion (recorded in run.json)."""

    conf_threshold: float
    voxel_size: float
    cloud_voxel_size: float
    depth_max: float
    mesh_weight_threshold: float
    trunc_voxels: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def valid_mask(depth: np.ndarray, confidence: np.ndarray, conf_threshold: float,
               depth_max: float = np.inf) -> np.ndarray:
    """Pixels [H,W] bool with finite positive depth <= depth_max and confidence >= threshold."""
    return np.isfinite(depth) & (depth > 0) & (depth <= depth_max) & (confidence >= conf_threshold)


def backproject(depth: np.ndarray, K: np.ndarray, T_world_from_cam: np.ndarray,
                mask: np.ndarray) -> np.ndarray:
    """World points [N,3] of the masked pixels of a z-depth map [H,W] (pixel centres at integer coordinates)."""
    v, u = np.nonzero(mask)
    z = depth[v, u].astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    cam = np.stack([x, y, z], axis=1)
    return cam @ T_world_from_cam[:3, :3].T + T_world_from_cam[:3, 3]


def scan_depth_stats(root: str | os.PathLike, cameras: RunCameras, conf_threshold: float,
                     stride: int = 4) -> DepthStats:
    """Depth statistics over all frames of a run, reading a subsampled grid of each depth map (cheap)."""
    layout = RunLayout(root)
    medians, p99s, maxima, valid, total = [], [], [0.0], 0, 0
    shape = (cameras.height, cameras.width)
    for rec in cameras.frames:
        full = read_npy(layout.frame_file("depth", rec.name, "npy"), shape)
        maxima.append(float(np.max(full, initial=0.0, where=np.isfinite(full))))
        depth = full[::stride, ::stride]
        conf_path = layout.frame_file("confidence", rec.name, "npy")
        conf = read_npy(conf_path, shape)[::stride, ::stride] if conf_path.exists() else np.ones_like(depth)
        d = depth[valid_mask(depth, conf, conf_threshold)]
        total += depth.size
        valid += d.size
        if d.size:
            medians.append(float(np.median(d)))
            p99s.append(float(np.percentile(d, 99)))
    if not medians:
        raise InputError(f"no frame of {root} has a valid depth with confidence >= {conf_threshold}; "
                         "lower the confidence threshold (--conf-threshold)")
    focal = float(np.mean([0.5 * (r.K[0, 0] + r.K[1, 1]) for r in cameras.frames]))
    return DepthStats(median=float(np.median(medians)), robust_max=float(max(p99s)), max=float(max(maxima)),
                      focal=focal, valid_fraction=valid / max(total, 1))


def resolve(options: FusionOptions, stats: DepthStats, n_frames: int) -> ResolvedFusion:
    """Fill the automatic parameters of ``options`` from the depth statistics of the run.

    The voxel is 1.5x the footprint of a pixel at the median depth (finer wastes memory on noise that
    the depth network cannot resolve), but at least 1/1000 of the far range so that outdoor scenes stay
    within memory. Points beyond the largest per-frame 99th percentile are dropped as outliers.
    """
    options.validate()
    voxel = options.voxel_size
    if voxel is None:
        voxel = max(1.5 * stats.median / stats.focal, stats.robust_max / 1000.0)
        voxel = float(f"{voxel:.2g}")  # a round number is easier to read in run.json and to reuse
    depth_max = options.depth_max if options.depth_max is not None else stats.robust_max
    weight = options.mesh_weight_threshold
    if weight is None:
        # Surfaces seen by a single frame are kept in short runs, required to be seen 3 times in long ones.
        weight = float(min(3, max(1, n_frames // 3)))
    return ResolvedFusion(conf_threshold=options.conf_threshold, voxel_size=voxel,
                          cloud_voxel_size=options.cloud_voxel_size or voxel, depth_max=float(depth_max),
                          mesh_weight_threshold=weight, trunc_voxels=options.trunc_voxels)


class VoxelCloud:
    """Running voxel-grid average of coloured points: one point (mean position and colour) per voxel.

    Equivalent to concatenating all frames and calling ``voxel_down_sample`` once, but memory is bounded
    by the number of occupied voxels.
    """

    def __init__(self, voxel_size: float):
        if not voxel_size > 0:
            raise ConfigError(f"cloud voxel size must be positive, got {voxel_size}")
        self.voxel_size = float(voxel_size)
        self._keys = np.zeros(0, np.int64)
        self._sum_xyz = np.zeros((0, 3))
        self._sum_rgb = np.zeros((0, 3))
        self._count = np.zeros(0, np.int64)
        self.dropped = 0

    def __len__(self) -> int:
        return int(self._keys.size)

    def add(self, points: np.ndarray, colors: np.ndarray) -> None:
        """Add world points [N,3] with colours [N,3] in [0,1]."""
        grid = np.floor(points / self.voxel_size).astype(np.int64)
        inside = np.all(np.abs(grid) < _KEY_OFFSET, axis=1)
        if not inside.all():
            # Only reachable for points ~1e6 voxels from the origin: diverged depth or poses.
            self.dropped += int((~inside).sum())
            grid, points, colors = grid[inside], points[inside], colors[inside]
        g = grid + _KEY_OFFSET
        keys = (g[:, 0] << (2 * _KEY_BITS)) | (g[:, 1] << _KEY_BITS) | g[:, 2]
        all_keys = np.concatenate([self._keys, keys])
        uniq, inverse = np.unique(all_keys, return_inverse=True)
        n_old = self._keys.size
        count = np.bincount(inverse, minlength=uniq.size)
        count[inverse[:n_old]] += self._count - 1  # old entries stand for their accumulated counts
        sums_xyz = np.concatenate([self._sum_xyz, points.astype(np.float64)])
        sums_rgb = np.concatenate([self._sum_rgb, colors.astype(np.float64)])
        self._sum_xyz = np.stack([np.bincount(inverse, sums_xyz[:, c], uniq.size) for c in range(3)], axis=1)
        self._sum_rgb = np.stack([np.bincount(inverse, sums_rgb[:, c], uniq.size) for c in range(3)], axis=1)
        self._keys, self._count = uniq, count

    def points(self) -> np.ndarray:
        """Voxel mean positions [M,3] float64."""
        return self._sum_xyz / self._count[:, None]

    def colors(self) -> np.ndarray:
        """Voxel mean colours [M,3] in [0,1]."""
        return self._sum_rgb / self._count[:, None]

    def counts(self) -> np.ndarray:
        """Number of fused points per voxel [M]."""
        return self._count.copy()


def pack_keys(grid: np.ndarray) -> np.ndarray | None:
    """Integer grid coordinates [N,3] packed into int64 keys [N], or None if one lies beyond the 21-bit range."""
    if grid.size and np.abs(grid).max() >= _KEY_OFFSET:
        return None
    g = grid.astype(np.int64) + _KEY_OFFSET
    return (g[:, 0] << (2 * _KEY_BITS)) | (g[:, 1] << _KEY_BITS) | g[:, 2]


class TsdfFusion:
    """Truncated signed distance fusion of posed RGB-D frames into an Open3D tensor VoxelBlockGrid.

    ``block_count`` is the capacity of the block hash map. Open3D allocates (and zero-fills) all of it up
    front and doubles it whenever the blocks already stored plus the blocks of the next frame exceed it, so
    pass ``count_tsdf_blocks``' total + largest frame to never rehash. ``max_frames`` below 65535 lets
    weights and colours be stored as uint16 (12 instead of 20 bytes per voxel, same geometry).
    """

    def __init__(self, voxel_size: float, depth_max: float, trunc_voxels: float = 6.0,
                 block_resolution: int = 8, block_count: int = 4096, max_frames: int | None = None):
        import open3d as o3d
        import open3d.core as o3c

        if block_count < 1:
            raise ConfigError(f"TSDF block count must be >= 1, got {block_count}")
        self._o3d, self._o3c = o3d, o3c
        self.voxel_size, self.depth_max, self.trunc_voxels = float(voxel_size), float(depth_max), trunc_voxels
        self.compact = max_frames is not None and max_frames < _UINT16_MAX_FRAMES
        # Open3D supports (float32, float32) and (uint16, uint16) weight/colour pairs. It stores uint16 colour
        # as 255 x the input and extracts input units, so 0-255 input keeps the mean in 1/65025 steps (a [0, 1]
        # input would be rounded to 1/255); float32 colour is fed and returned in [0, 1].
        store = o3c.uint16 if self.compact else o3c.float32
        self._color_scale = 255.0 if self.compact else 1.0
        self.grid = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"),
            attr_dtypes=(o3c.float32, store, store),
            attr_channels=((1), (1), (3)),
            voxel_size=self.voxel_size,
            block_resolution=block_resolution,
            block_count=int(block_count),
            device=o3c.Device("CPU:0"),
        )
        self.frames_integrated = 0

    @property
    def capacity(self) -> int:
        """Blocks the hash map holds without rehashing."""
        return int(self.grid.hashmap().capacity())

    @property
    def blocks(self) -> int:
        """Blocks allocated so far."""
        return int(self.grid.hashmap().size())

    def _tensors(self, depth: np.ndarray, K: np.ndarray, T_world_from_cam: np.ndarray) -> tuple:
        """Open3D depth image [H,W], intrinsics [3,3] and extrinsic (camera-from-world) [4,4] of one frame."""
        o3d, o3c = self._o3d, self._o3c
        depth_t = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(depth, dtype=np.float32)))
        K_t = o3c.Tensor(np.asarray(K, dtype=np.float64))
        extrinsic = o3c.Tensor(invert_rigid(np.asarray(T_world_from_cam, dtype=np.float64)))
        return depth_t, K_t, extrinsic

    def block_coordinates(self, depth: np.ndarray, K: np.ndarray, T_world_from_cam: np.ndarray) -> np.ndarray:
        """Blocks [M,3] int32 that ``integrate`` would allocate for this frame (nothing is allocated)."""
        if not np.any(depth > 0):
            return np.zeros((0, 3), np.int32)
        depth_t, K_t, extrinsic = self._tensors(depth, K, T_world_from_cam)
        blocks = self.grid.compute_unique_block_coordinates(depth_t, K_t, extrinsic, 1.0, self.depth_max,
                                                            self.trunc_voxels)
        return blocks.numpy().reshape(-1, 3)

    def integrate(self, depth: np.ndarray, image: np.ndarray, K: np.ndarray, T_world_from_cam: np.ndarray) -> None:
        """Fuse one frame: depth [H,W] float32 metres (0 = skip), image [H,W,3] uint8, K [3,3], pose [4,4]."""
        o3d, o3c = self._o3d, self._o3c
        if not np.any(depth > 0):
            return
        if self.compact and self.frames_integrated + 1 >= _UINT16_MAX_FRAMES:
            raise ConfigError(f"this TSDF stores uint16 weights and cannot fuse more than "
                              f"{_UINT16_MAX_FRAMES - 1} frames; create it with max_frames=None")
        depth_t, K_t, extrinsic = self._tensors(depth, K, T_world_from_cam)
        color = np.ascontiguousarray(image, dtype=np.float32)
        color_t = o3d.t.geometry.Image(o3c.Tensor(color if self.compact else color / 255.0))
        blocks = self.grid.compute_unique_block_coordinates(depth_t, K_t, extrinsic, 1.0, self.depth_max,
                                                            self.trunc_voxels)
        self.grid.integrate(blocks, depth_t, color_t, K_t, K_t, extrinsic, 1.0, self.depth_max, self.trunc_voxels)
        self.frames_integrated += 1

    def extract_mesh(self, weight_threshold: float):
        """The zero level set as a legacy ``open3d.geometry.TriangleMesh`` with vertex colours and normals."""
        o3d = self._o3d
        if self.frames_integrated == 0:
            return o3d.geometry.TriangleMesh()
        mesh = self.grid.extract_triangle_mesh(weight_threshold=weight_threshold)
        if "colors" in mesh.vertex:
            # Scaled in place on the float32 tensor: one conversion to the legacy (float64) mesh, no copies.
            colors = mesh.vertex.colors.numpy()
            colors *= np.float32(1.0 / self._color_scale)
            np.clip(colors, 0.0, 1.0, out=colors)
        return mesh.to_legacy()


def count_tsdf_blocks(root: str | os.PathLike, cameras: RunCameras, params: ResolvedFusion,
                      block_resolution: int = 8) -> tuple[int, int]:
    """TSDF blocks a run will allocate: (all frames together, largest single frame).

    Reads depth and confidence only (no images) and asks Open3D for each frame's blocks without allocating
    them, so its memory is one frame plus one int64 key per block.
    """
    probe = TsdfFusion(params.voxel_size, params.depth_max, params.trunc_voxels, block_resolution, block_count=1)
    seen = np.zeros(0, np.int64)
    pending: list[np.ndarray] = []
    n_pending, largest = 0, 0
    for rec in cameras.frames:
        frame = read_frame(root, cameras, rec, with_image=False)
        mask = valid_mask(frame.depth, frame.confidence, params.conf_threshold, params.depth_max)
        blocks = probe.block_coordinates(np.where(mask, frame.depth, 0.0).astype(np.float32), rec.K,
                                         rec.T_world_from_cam)
        keys = pack_keys(blocks)
        if keys is None:  # blocks ~1e6 blocks from the origin: diverged depth or poses; let the grid grow
            return 0, 0
        largest = max(largest, keys.size)
        pending.append(keys)
        n_pending += keys.size
        if n_pending > max(seen.size, 1 << 16):  # merge when the pending keys outnumber the union: O(N log N)
            seen = np.unique(np.concatenate([seen, *pending]))
            pending, n_pending = [], 0
    seen = np.unique(np.concatenate([seen, *pending]))
    return int(seen.size), largest


@dataclass
class FusionResult:
    """Outputs of ``fuse_run``: cloud points [M,3] and colours [M,3] in [0,1], the mesh, and parameters."""

    points: np.ndarray
    colors: np.ndarray
    mesh: object | None
    params: ResolvedFusion
    stats: DepthStats


def fuse_run(root: str | os.PathLike, cameras: RunCameras, options: FusionOptions, *, cloud: bool = True,
             mesh: bool = True, per_frame: Callable[[FrameData], None] | None = None) -> FusionResult:
    """Stream over the frames of a run directory once, fusing them into a cloud and/or a TSDF mesh.

    ``per_frame`` is called with every frame read (e.g. to write derived per-frame files in the same pass).
    Poses and intrinsics come from ``cameras`` (possibly refined after the frames were written).
    """
    stats = scan_depth_stats(root, cameras, options.conf_threshold)
    params = resolve(options, stats, len(cameras.frames))
    logger.info("fusion parameters: %s (median depth %.3g m, focal %.4g px)", params.to_dict(), stats.median,
                stats.focal)
    acc = VoxelCloud(params.cloud_voxel_size) if cloud else None
    tsdf = None
    if mesh:
        total, largest = count_tsdf_blocks(root, cameras, params)
        # Each integrate needs room for the stored blocks plus all of the frame's (Open3D checks before it
        # knows which are new); the 4096 floor only matters when the pass found nothing.
        tsdf = TsdfFusion(params.voxel_size, params.depth_max, params.trunc_voxels,
                          block_count=max(total + largest, 4096), max_frames=len(cameras.frames))
        logger.info("TSDF: %d blocks (largest frame %d), hash map sized for %d", total, largest, tsdf.capacity)
    need_image = cloud or mesh or per_frame is not None
    for rec in tqdm(cameras.frames, desc="fusing frames", unit="frame", disable=None):
        frame = read_frame(root, cameras, rec, with_image=need_image)
        if per_frame is not None:
            per_frame(frame)
        mask = valid_mask(frame.depth, frame.confidence, params.conf_threshold, params.depth_max)
        if acc is not None:
            pts = backproject(frame.depth, rec.K, rec.T_world_from_cam, mask)
            acc.add(pts, frame.image[mask].astype(np.float64) / 255.0)
        if tsdf is not None:
            tsdf.integrate(np.where(mask, frame.depth, 0.0).astype(np.float32), frame.image, rec.K,
                           rec.T_world_from_cam)
    if acc is not None and acc.dropped:
        logger.warning("%d points lay more than 1e6 voxels from the origin and were dropped", acc.dropped)
    points = acc.points() if acc is not None else np.zeros((0, 3))
    colors = acc.colors() if acc is not None else np.zeros((0, 3))
    del acc  # the voxel sums are not needed while the mesh is extracted (fusion's peak)
    mesh_out = None
    if tsdf is not None:
        if tsdf.capacity > max(total + largest, 4096):
            logger.warning("TSDF hash map grew to %d blocks (sized for %d)", tsdf.capacity, total + largest)
        mesh_out = tsdf.extract_mesh(params.mesh_weight_threshold)
        del tsdf
    return FusionResult(points=points, colors=colors, mesh=mesh_out, params=params, stats=stats)
