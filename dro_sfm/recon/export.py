"""Writing the outputs of a reconstruction: per-frame files while it runs, then cloud, mesh, poses, COLMAP,
nerfstudio and the summary figure from the run directory.

``RunWriter`` is what the pipeline uses::

    writer = RunWriter(out_dir)
    for i, ...: writer.add_frame(i, image, depth, confidence, K, T_world_from_cam, timestamp=t)
    report = writer.finalize(poses=refined_poses, cost_curve=costs)

``add_frame`` writes the frame's files at once and keeps only its metadata in memory; ``finalize`` writes
``cameras.json`` with the final (possibly refined) poses, then re-reads the frames one at a time to fuse
them. ``export_run`` redoes any export from a finished run directory (``dro-sfm export``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dro_sfm.data.atomic import atomic_path, atomic_write_text
from dro_sfm.errors import ConfigError, InputError, OutputError
from dro_sfm.geometry.pose import check_rigid, invert_rigid, quat_trans_from_pose
from dro_sfm.recon.fusion import FusionOptions, FusionResult, ResolvedFusion, fuse_run, valid_mask
from dro_sfm.recon.run_dir import (
    CameraRecord,
    FrameData,
    RunCameras,
    RunLayout,
    choose_depth_png_scale,
    depth_to_png16,
    frame_name,
    load_cameras,
    prepare_output_dir,
    read_frame,
    read_rgb,
    write_cameras_json,
    write_npy,
    write_png,
)
from dro_sfm.viz.depth_color import colorize_depth, confidence_to_gray

logger = logging.getLogger(__name__)

EXPORT_TARGETS = ("ply", "mesh", "poses", "colmap", "nerfstudio", "summary")

# OpenCV camera axes (x right, y down, z forward) -> OpenGL/nerfstudio axes (x right, y up, z back).
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


# --- single-format writers (pure: arrays in, file out) ----------------------------------------------------


def write_point_cloud_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray) -> Path:
    """Binary PLY of points [N,3] with colours [N,3] in [0,1]."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(np.clip(np.asarray(colors, dtype=np.float64), 0.0, 1.0))
    with atomic_path(path) as tmp:
        if not o3d.io.write_point_cloud(str(tmp), pcd, write_ascii=False):
            raise OutputError(f"Open3D could not write the point cloud {path}")
    return Path(path)


def write_mesh_ply(path: str | os.PathLike, mesh: Any) -> Path:
    """Binary PLY of a legacy ``open3d.geometry.TriangleMesh`` (vertex colours and normals kept)."""
    import open3d as o3d

    with atomic_path(path) as tmp:
        if not o3d.io.write_triangle_mesh(str(tmp), mesh, write_ascii=False):
            raise OutputError(f"Open3D could not write the mesh {path}")
    return Path(path)


def tum_lines(timestamps: Sequence[float], poses: np.ndarray) -> str:
    """TUM trajectory text: ``timestamp tx ty tz qx qy qz qw`` per camera-to-world pose [N,4,4]."""
    lines = ["# dro-sfm camera-to-world poses (camera x right, y down, z forward); metres",
             "# timestamp tx ty tz qx qy qz qw"]
    for ts, T in zip(timestamps, poses):
        q, t = quat_trans_from_pose(T)
        lines.append(f"{ts:.6f} {t[0]:.9g} {t[1]:.9g} {t[2]:.9g} {q[1]:.9g} {q[2]:.9g} {q[3]:.9g} {q[0]:.9g}")
    return "\n".join(lines) + "\n"


def kitti_lines(poses: np.ndarray) -> str:
    """KITTI odometry text: the top 3x4 of each camera-to-world pose [N,4,4], row-major, 12 numbers a line."""
    return "".join(" ".join(f"{v:.9g}" for v in T[:3, :4].reshape(-1)) + "\n" for T in poses)


def colmap_intrinsics(K: np.ndarray) -> tuple[float, float, float, float]:
    """COLMAP PINHOLE params (fx, fy, cx, cy): COLMAP puts the top-left pixel's centre at (0.5, 0.5)."""
    return float(K[0, 0]), float(K[1, 1]), float(K[0, 2]) + 0.5, float(K[1, 2]) + 0.5


@dataclass
class ColmapObservations:
    """2D observations of the exported points: per image, pixel positions [k,2] (COLMAP convention) and
    0-based point indices [k]."""

    xy: list[np.ndarray]
    point_index: list[np.ndarray]

    @property
    def count(self) -> int:
        """Total number of observations over all images."""
        return int(sum(len(i) for i in self.point_index))


def observe_points(root: str | os.PathLike, cameras: RunCameras, points: np.ndarray, params: ResolvedFusion,
                   max_per_image: int | None = None, max_observations: int | None = None) -> ColmapObservations:
    """Which fused points each frame sees: projects inside the image, in front of the camera, and agrees with
    that frame's own confident depth (so occluded points are not observed). Streams over the frames.

    The 2D position is the projection of the 3D point, so reprojection errors are zero by construction.
    The total is capped at ``max_observations`` (default: twice the number of points), so the model's size
    follows the scene, not the frame count: each frame gets an equal share of what is left of the budget
    (optionally at most ``max_per_image``), and takes the points with the fewest observations so far so that
    as many points as possible get a track.
    """
    budget = 2 * len(points) if max_observations is None else max(int(max_observations), 0)
    n_obs = np.zeros(len(points), np.int64)
    xy_all, idx_all = [], []
    for k, rec in enumerate(cameras.frames):
        quota = -(-budget // (len(cameras.frames) - k))  # ceil: an equal share of what is left
        if max_per_image is not None:
            quota = min(quota, max_per_image)
        sel = _points_seen(root, cameras, rec, points, params) if quota > 0 else np.zeros(0, np.int64)
        if sel.size > quota:
            # Fewest observations first; random tie-break so equal points are not taken in index order.
            key = n_obs[sel] + np.random.default_rng(rec.index).random(sel.size)
            sel = np.sort(sel[np.argpartition(key, quota - 1)[:quota]])
        n_obs[sel] += 1
        budget -= sel.size
        xy_all.append(_project_points(rec, points[sel]) + 0.5)
        idx_all.append(sel)
    return ColmapObservations(xy=xy_all, point_index=idx_all)


def _project_points(rec: CameraRecord, points: np.ndarray) -> np.ndarray:
    """Pixel positions [N,2] (pixel centres at integers) of world points [N,3] in front of camera ``rec``."""
    T_cam_from_world = invert_rigid(rec.T_world_from_cam)
    cam = points @ T_cam_from_world[:3, :3].T + T_cam_from_world[:3, 3]
    return cam[:, :2] / cam[:, 2:3] * rec.K[[0, 1], [0, 1]] + rec.K[[0, 1], [2, 2]]


def _points_seen(root: str | os.PathLike, cameras: RunCameras, rec: CameraRecord, points: np.ndarray,
                 params: ResolvedFusion) -> np.ndarray:
    """Sorted indices of the points [N,3] that frame ``rec`` sees: in front, inside the image, at the depth of
    a confident pixel of that frame (within max(2 cloud voxels, 3 %))."""
    frame = read_frame(root, cameras, rec, with_image=False)
    T_cam_from_world = invert_rigid(rec.T_world_from_cam)
    z = points @ T_cam_from_world[2, :3] + T_cam_from_world[2, 3]
    sel = np.nonzero(z > 1e-6)[0]
    uv = np.round(_project_points(rec, points[sel])).astype(np.int64)
    inside = (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] < cameras.width) & (uv[:, 1] < cameras.height)
    sel, ui, vi = sel[inside], uv[inside, 0], uv[inside, 1]
    ok = valid_mask(frame.depth, frame.confidence, params.conf_threshold, params.depth_max)
    d = frame.depth[vi, ui]
    tol = np.maximum(2.0 * params.cloud_voxel_size, 0.03 * d)
    return sel[ok[vi, ui] & (np.abs(z[sel] - d) <= tol)]


# Rows per formatting chunk of the COLMAP writer: its scratch arrays scale with these, not with the model.
_OBS_CHUNK = 1 << 17
_POINT_CHUNK = 1 << 15


def write_colmap_text(out_dir: str | os.PathLike, cameras: RunCameras, points: np.ndarray, colors: np.ndarray,
                      observations: ColmapObservations | None = None, image_prefix: str = "") -> Path:
    """COLMAP text model (cameras.txt, images.txt, points3D.txt) in ``out_dir``.

    One PINHOLE camera per distinct K; images hold world-to-camera rotation (qw qx qy qz) and translation;
    image names are ``image_prefix + NNNNNN.png`` (relative to the image folder passed to COLMAP). Points
    [M,3] with colours [M,3] in [0,1]; their tracks come from ``observations`` (empty lines when None).
    Observations and tracks are formatted with numpy and streamed in chunks, never held as Python strings.
    """
    out = Path(out_dir)
    if not np.isfinite(points).all():
        raise OutputError("cannot write a COLMAP model of points with non-finite coordinates")
    cam_ids: dict[tuple[float, ...], int] = {}
    frame_cam: list[int] = []
    for rec in cameras.frames:
        key = colmap_intrinsics(rec.K)
        frame_cam.append(cam_ids.setdefault(key, len(cam_ids) + 1))
    cam_lines = ["# Camera list with one line of data per camera:",
                 "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(cam_ids)}"]
    cam_lines += [f"{cid} PINHOLE {cameras.width} {cameras.height} {p[0]:.9g} {p[1]:.9g} {p[2]:.9g} {p[3]:.9g}"
                  for p, cid in cam_ids.items()]
    atomic_write_text(out / "cameras.txt", "\n".join(cam_lines) + "\n")

    with _atomic_binary(out / "images.txt") as f:
        f.write(("# Image list with two lines of data per image:\n"
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
                 f"# Number of images: {len(cameras.frames)}\n").encode())
        for i, rec in enumerate(cameras.frames):
            q, t = quat_trans_from_pose(invert_rigid(rec.T_world_from_cam))
            f.write(f"{i + 1} {q[0]:.12g} {q[1]:.12g} {q[2]:.12g} {q[3]:.12g} {t[0]:.12g} {t[1]:.12g} "
                    f"{t[2]:.12g} {frame_cam[i]} {image_prefix}{rec.name}.png\n".encode())
            if observations is not None:
                _write_points2d(f, observations.xy[i], observations.point_index[i])
            f.write(b"\n")

    with _atomic_binary(out / "points3D.txt") as f:
        f.write(("# 3D point list with one line of data per point:\n"
                 "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
                 f"# Number of points: {len(points)}\n").encode())
        _write_points3d(f, points, colors, observations)
    return out


@contextlib.contextmanager
def _atomic_binary(path: Path) -> Iterator[BinaryIO]:
    """A binary file handle whose content appears at ``path`` only once the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def _write_points2d(f: BinaryIO, xy: np.ndarray, point_index: np.ndarray) -> None:
    """One image's POINTS2D[] (``X Y POINT3D_ID`` with 1-based ids) from xy [k,2] and 0-based indices [k],
    without the closing newline."""
    for start in range(0, len(point_index), _OBS_CHUNK):
        stop = min(start + _OBS_CHUNK, len(point_index))
        sep = _ascii_const(stop - start, " ")
        text = _pack_rows([sep, _ascii_fixed(xy[start:stop, 0], 3), sep, _ascii_fixed(xy[start:stop, 1], 3), sep,
                           _ascii_fixed(np.asarray(point_index[start:stop], np.int64) + 1)])
        f.write(text[1:] if start == 0 else text)  # no space before the line's first observation


def _write_points3d(f: BinaryIO, points: np.ndarray, colors: np.ndarray,
                    observations: ColmapObservations | None) -> None:
    """points3D.txt lines ``ID X Y Z R G B 0 [IMAGE_ID POINT2D_IDX]...`` in chunks of points.

    Tracks: every observation is (image, its position in that image's POINTS2D); a stable sort by point index
    lists each point's track in image order.
    """
    n_points = len(points)
    rgb = np.round(np.clip(colors, 0.0, 1.0) * 255.0).astype(np.int64)
    decimals = _coordinate_decimals(points)
    if observations is not None and observations.point_index:
        obs_point = np.concatenate([np.asarray(i, np.int64) for i in observations.point_index])
        per_image = np.array([len(i) for i in observations.point_index], np.int64)
    else:
        obs_point, per_image = np.zeros(0, np.int64), np.zeros(0, np.int64)
    image_start = np.cumsum(per_image) - per_image  # first observation of each image in obs_point
    track_order = np.argsort(obs_point, kind="stable")  # observations grouped by point, in image order
    track_start = np.concatenate([[0], np.cumsum(np.bincount(obs_point, minlength=n_points))])
    del obs_point
    start = 0
    while start < n_points:
        # Up to _POINT_CHUNK points, fewer if their tracks exceed _OBS_CHUNK observations (at least one point).
        stop = int(np.searchsorted(track_start, track_start[start] + _OBS_CHUNK, side="right")) - 1
        stop = min(max(stop, start + 1), start + _POINT_CHUNK, n_points)
        f.write(_points3d_chunk(start, stop, points, rgb, decimals, track_order[track_start[start]:track_start[stop]],
                                track_start[start:stop + 1] - track_start[start], image_start))
        start = stop


def _points3d_chunk(start: int, stop: int, points: np.ndarray, rgb: np.ndarray, decimals: int,
                    track_obs: np.ndarray, track_start: np.ndarray, image_start: np.ndarray) -> np.ndarray:
    """ASCII lines (uint8 bytes) of points ``start:stop``; ``track_obs`` are their observations (global
    indices, grouped by point), ``track_start`` [n+1] where each point's group begins in it."""
    n = stop - start
    sep = _ascii_const(n, " ")
    xyz, color = points[start:stop], rgb[start:stop]
    head = [_ascii_fixed(np.arange(start + 1, stop + 1)), sep, _ascii_fixed(xyz[:, 0], decimals), sep,
            _ascii_fixed(xyz[:, 1], decimals), sep, _ascii_fixed(xyz[:, 2], decimals), sep,
            _ascii_fixed(color[:, 0]), sep, _ascii_fixed(color[:, 1]), sep, _ascii_fixed(color[:, 2]), sep,
            _ascii_const(n, "0")]  # ERROR: the 2-D positions are exact projections
    image = np.searchsorted(image_start, track_obs, side="right") - 1  # 0-based image of each observation
    obs_sep = _ascii_const(len(track_obs), " ")
    track = [obs_sep, _ascii_fixed(image + 1), obs_sep, _ascii_fixed(track_obs - image_start[image])]
    bytes_before = np.concatenate([[0], np.cumsum(_row_lengths(track))])
    track_len = bytes_before[track_start[1:]] - bytes_before[track_start[:-1]]
    return _concat_rows([(_pack_rows(head), _row_lengths(head)), (_pack_rows(track), track_len),
                         (np.full(n, ord("\n"), np.uint8), np.ones(n, np.int64))])


def _coordinate_decimals(points: np.ndarray) -> int:
    """Decimals that give the largest coordinate of points [N,3] 9 significant digits (like ``%.9g``)."""
    largest = float(np.abs(points).max()) if points.size else 0.0
    return int(np.clip(8 - np.floor(np.log10(largest)), 0, 12)) if largest > 0 else 12


# --- vectorised ASCII formatting: columns of bytes per row, NUL bytes are padding and dropped ----------------


def _ascii_fixed(values: np.ndarray, decimals: int = 0) -> np.ndarray:
    """Decimal text of numbers [k] rounded to ``decimals`` digits after the point (integers when 0), as bytes
    [k,w] uint8, right-aligned: NUL padding on the left."""
    values = np.asarray(values)
    if values.dtype.kind in "iu" and decimals == 0:
        negative, magnitude = values < 0, np.abs(values.astype(np.int64)).astype(np.uint64)
    else:
        scaled = np.rint(values.astype(np.float64) * 10.0**decimals)
        negative, magnitude = scaled < 0, np.abs(scaled).astype(np.uint64)
    largest = int(magnitude.max()) if magnitude.size else 0
    width = max(len(str(largest)), decimals + 1)
    digits = np.empty((width, magnitude.size), np.uint8)  # one row per digit position: contiguous writes
    rest = magnitude.astype(np.uint32) if largest < 2**32 else magnitude  # 32-bit division is much faster
    for j in range(width - 1, -1, -1):
        quotient = rest // 10
        digits[j] = rest - quotient * 10
        rest = quotient
    digits += ord("0")
    for j in range(width - decimals - 1):  # leading zeros of the integer part (keep its last digit)
        digits[j][magnitude < 10 ** (width - 1 - j)] = 0
    sign = np.where(negative & (magnitude > 0), ord("-"), 0).astype(np.uint8)[None]
    if decimals == 0:
        return np.concatenate([sign, digits]).T
    point = np.full((1, magnitude.size), ord("."), np.uint8)
    return np.concatenate([sign, digits[:-decimals], point, digits[-decimals:]]).T


def _ascii_const(k: int, char: str) -> np.ndarray:
    """The character ``char`` as a column [k,1] uint8."""
    return np.full((k, 1), ord(char), np.uint8)


def _pack_rows(columns: Sequence[np.ndarray]) -> np.ndarray:
    """The rows of the side-by-side byte columns [k,w_i], one after another, NUL padding dropped: uint8."""
    block = np.concatenate(columns, axis=1)
    return block[block != 0]


def _row_lengths(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Bytes [k] that ``_pack_rows`` keeps of each row."""
    return sum(np.count_nonzero(c, axis=1) for c in columns)


def _concat_rows(pieces: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Row-wise concatenation of byte streams: piece p is a uint8 buffer cut into consecutive per-row segments of
    lengths [R]; the result holds row 0 of every piece in order, then row 1, and so on."""
    lengths = np.stack([np.asarray(n, np.int64) for _, n in pieces], axis=1)
    out_start = (np.cumsum(lengths) - lengths.ravel()).reshape(lengths.shape)
    out = np.empty(int(lengths.sum()), np.uint8)
    for p, (buf, _) in enumerate(pieces):
        in_start = np.cumsum(lengths[:, p]) - lengths[:, p]
        out[np.arange(buf.size) + np.repeat(out_start[:, p] - in_start, lengths[:, p])] = buf
    return out


def nerfstudio_transforms(cameras: RunCameras, depth_png: bool, ply_file: str | None) -> dict[str, Any]:
    """nerfstudio ``transforms.json`` content: OpenGL camera-to-world matrices, COLMAP-style pixel centres.

    nerfstudio's cameras look down -z with y up; its rays go through pixel centres (i + 0.5), so the principal
    point is shifted by half a pixel like COLMAP's. ``depth_file_path`` points at the uint16 depth PNGs
    (set nerfstudio's ``depth_unit_scale_factor`` to ``depth_png_scale``).
    """
    def intrinsics(K: np.ndarray) -> dict[str, float]:
        fx, fy, cx, cy = colmap_intrinsics(K)
        return {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy}

    doc: dict[str, Any] = {"camera_model": "OPENCV", "w": cameras.width, "h": cameras.height,
                           "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0}
    shared = cameras.shared_intrinsics
    if shared:
        doc.update(intrinsics(cameras.frames[0].K))
    if depth_png and cameras.depth_png_scale is not None:
        doc["depth_unit_scale_factor"] = cameras.depth_png_scale
    if ply_file is not None:
        doc["ply_file_path"] = ply_file
    frames = []
    for i, rec in enumerate(cameras.frames):
        fr: dict[str, Any] = {"file_path": f"images/{rec.name}.png",
                              "transform_matrix": (rec.T_world_from_cam @ CV_TO_GL).tolist(),
                              "colmap_im_id": i + 1}
        if depth_png:
            fr["depth_file_path"] = f"depth/{rec.name}.png"
        if not shared:
            fr.update(intrinsics(rec.K))
        frames.append(fr)
    doc["frames"] = frames
    return doc


# --- exports from a run directory -------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What ``export_run`` wrote: output paths, counts, the fusion parameters and seconds per stage."""

    paths: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    fusion: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"paths": self.paths, "counts": self.counts, "fusion": self.fusion, "timings": self.timings}


def parse_targets(targets: Iterable[str]) -> list[str]:
    """Validate export target names (comma-separated items allowed); keeps the canonical order."""
    wanted = {t.strip().lower() for item in targets for t in item.split(",") if t.strip()}
    unknown = wanted - set(EXPORT_TARGETS)
    if unknown:
        raise ConfigError(f"unknown export target(s) {sorted(unknown)}; choose from {', '.join(EXPORT_TARGETS)}")
    return [t for t in EXPORT_TARGETS if t in wanted]


def run_fusion_options(cameras: RunCameras, **overrides: Any) -> FusionOptions:
    """The fusion options the run was finalized with (``fusion_options`` in cameras.json, else defaults),
    with the given non-None ``overrides``; so a re-export reproduces the run's cloud unless told otherwise."""
    recorded = cameras.extras.get("fusion_options", {})
    known = {f.name for f in fields(FusionOptions)}
    values = {k: v for k, v in recorded.items() if k in known}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown fusion option(s) {sorted(unknown)}")
    options = FusionOptions(**values)
    options.validate()
    return options


def export_run(root: str | os.PathLike, targets: Iterable[str] = EXPORT_TARGETS,
               options: FusionOptions | None = None, *, cost_curve: object | None = None,
               write_depth_png: bool = False, colmap_observations: bool = True) -> ExportReport:
    """Write the requested exports of the finished run directory ``root`` from cameras.json + per-frame files.

    ``options`` default to those the run was finalized with. Frames are read one at a time.
    ``write_depth_png`` also (re)writes ``depth/NNNNNN.png`` with the scale in cameras.json in the same pass.
    """
    targets = parse_targets(targets)
    layout = RunLayout(root)
    cameras = load_cameras(root)
    options = options or run_fusion_options(cameras)
    report = ExportReport()
    timer = _Timer(report.timings)

    if "poses" in targets:
        with timer("poses"):
            ts, poses = [f.timestamp for f in cameras.frames], cameras.poses()
            atomic_write_text(layout.poses_tum, tum_lines(ts, poses))
            atomic_write_text(layout.poses_kitti, kitti_lines(poses))
            report.paths.update(poses_tum=str(layout.poses_tum), poses_kitti=str(layout.poses_kitti))

    need_cloud = "ply" in targets or "colmap" in targets
    need_mesh = "mesh" in targets
    fused: FusionResult | None = None
    if need_cloud or need_mesh or write_depth_png:
        per_frame = _DepthPngWriter(layout, cameras) if write_depth_png else None
        with timer("fusion"):
            fused = fuse_run(root, cameras, options, cloud=need_cloud, mesh=need_mesh, per_frame=per_frame)
        report.fusion = fused.params.to_dict()
        report.counts["points"] = len(fused.points)
        if "ply" in targets:
            with timer("write_pointcloud"):
                write_point_cloud_ply(layout.pointcloud, fused.points, fused.colors)
            report.paths["pointcloud"] = str(layout.pointcloud)
        if need_mesh:
            mesh = fused.mesh
            report.counts["mesh_vertices"] = len(mesh.vertices)
            report.counts["mesh_triangles"] = len(mesh.triangles)
            if len(mesh.triangles) == 0:
                logger.warning("TSDF fusion produced an empty mesh (voxel %.3g m, weight threshold %g); "
                               "try a larger --voxel-size or a lower --conf-threshold",
                               fused.params.voxel_size, fused.params.mesh_weight_threshold)
            with timer("write_mesh"):
                write_mesh_ply(layout.mesh, mesh)
            report.paths["mesh"] = str(layout.mesh)
            del mesh
            fused.mesh = None  # written: free it before the COLMAP export

    if "colmap" in targets:
        assert fused is not None
        with timer("colmap"):
            obs = observe_points(root, cameras, fused.points, fused.params) if colmap_observations else None
            write_colmap_text(layout.colmap_dir, cameras, fused.points, fused.colors, obs)
        report.paths["colmap"] = str(layout.colmap_dir)
        if obs is not None:
            report.counts["colmap_observations"] = obs.count

    if "nerfstudio" in targets:
        with timer("nerfstudio"):
            depth_png = all(layout.frame_file("depth", f.name, "png").exists() for f in cameras.frames)
            ply = layout.pointcloud.name if layout.pointcloud.exists() else None
            doc = nerfstudio_transforms(cameras, depth_png=depth_png, ply_file=ply)
            atomic_write_text(layout.transforms_json, json.dumps(doc, indent=1) + "\n")
        report.paths["nerfstudio"] = str(layout.transforms_json)

    if "summary" in targets:
        with timer("summary"):
            write_run_summary(root, cameras, cost_curve)
        report.paths["summary"] = str(layout.summary_png)
    report.counts["frames"] = len(cameras.frames)
    return report


def write_run_summary(root: str | os.PathLike, cameras: RunCameras, cost_curve: object | None = None) -> Path:
    """``summary.png`` from the poses and a few frames' images and depth_vis PNGs (read from disk)."""
    from dro_sfm.viz.summary import SampleFrame, sample_indices, write_summary

    layout = RunLayout(root)
    shape = (cameras.height, cameras.width)
    samples = []
    for i in sample_indices(len(cameras.frames)):
        rec = cameras.frames[i]
        vis_path = layout.frame_file("depth_vis", rec.name, "png")
        if vis_path.exists():
            vis = read_rgb(vis_path, shape)
        else:
            frame = read_frame(root, cameras, rec, with_image=False)
            vis = colorize_depth(frame.depth)
        samples.append(SampleFrame(f"frame {rec.name}", read_rgb(layout.frame_file("images", rec.name, "png"),
                                                                  shape), vis))
    write_summary(layout.summary_png, cameras.poses(), samples, cost_curve, title=Path(root).resolve().name)
    return layout.summary_png


class _DepthPngWriter:
    """Per-frame callback of the fusion pass writing uint16 depth PNGs with the run's scale."""

    def __init__(self, layout: RunLayout, cameras: RunCameras):
        if cameras.depth_png_scale is None:
            raise InputError(f"{layout.cameras_json} has no depth_png_scale; cannot write depth PNGs")
        self.layout, self.scale = layout, cameras.depth_png_scale

    def __call__(self, frame: FrameData) -> None:
        write_png(self.layout.frame_file("depth", frame.record.name, "png"), depth_to_png16(frame.depth, self.scale))


class _Timer:
    """``with timer("stage"):`` adds wall seconds to ``timings["stage"]``."""

    def __init__(self, timings: dict[str, float]):
        self.timings = timings

    def __call__(self, name: str) -> _Timer._Span:
        return _Timer._Span(self.timings, name)

    class _Span:
        def __init__(self, timings: dict[str, float], name: str):
            self.timings, self.name = timings, name

        def __enter__(self) -> None:
            self.t0 = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0


# --- streaming writer used by the pipeline ----------------------------------------------------------------


class RunWriter:
    """Writes a run directory frame by frame; ``finalize`` writes everything that needs all frames.

    Memory stays bounded: per frame only its metadata (name, K, pose, timestamp) is kept.
    """

    def __init__(self, out_dir: str | os.PathLike, *, overwrite: bool = False,
                 options: FusionOptions | None = None):
        self._init_state(prepare_output_dir(out_dir, overwrite=overwrite), options or FusionOptions())

    def _init_state(self, root: Path, options: FusionOptions) -> None:
        """An empty writer on the prepared directory ``root``."""
        options.validate()
        self.options = options
        self.root = root
        self.layout = RunLayout(self.root)
        self._records: dict[int, CameraRecord] = {}
        self._size: tuple[int, int] | None = None
        self._max_depth = 0.0
        self._has_confidence = True
        self.timings: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._records)

    def add_frame(self, index: int, image: np.ndarray, depth: np.ndarray, confidence: np.ndarray | None,
                  K: np.ndarray, T_world_from_cam: np.ndarray, *, timestamp: float | None = None,
                  source: str = "") -> None:
        """Write frame ``index``: RGB [H,W,3] uint8, depth [H,W] metres (0/NaN = invalid), confidence [H,W] in
        [0,1] or None, K [3,3] at this resolution, camera-to-world pose [4,4]."""
        t0 = time.perf_counter()
        name = frame_name(index)
        if index in self._records:
            raise InputError(f"frame {index} was added twice to the run in {self.root}")
        image, depth, conf, K, T = self._check_frame(name, image, depth, confidence, K, T_world_from_cam)
        write_png(self.layout.frame_file("images", name, "png"), image)
        write_npy(self.layout.frame_file("depth", name, "npy"), depth)
        write_npy(self.layout.frame_file("confidence", name, "npy"), conf)
        write_png(self.layout.frame_file("confidence", name, "png"), confidence_to_gray(conf))
        write_png(self.layout.frame_file("depth_vis", name, "png"), colorize_depth(depth))
        self._max_depth = max(self._max_depth, float(depth.max(initial=0.0)))
        self._records[index] = CameraRecord(index=index, name=name, K=K, T_world_from_cam=T,
                                            timestamp=float(index if timestamp is None else timestamp),
                                            source=source)
        self.timings["write_frames"] = self.timings.get("write_frames", 0.0) + time.perf_counter() - t0

    def _check_frame(self, name: str, image: np.ndarray, depth: np.ndarray, confidence: np.ndarray | None,
                     K: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, ...]:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"frame {name}: image must be [H,W,3] uint8 RGB, got {image.shape} {image.dtype}")
        hw = image.shape[:2]
        if self._size is None:
            self._size = hw
        elif hw != self._size:
            raise InputError(f"frame {name}: image is {hw[1]}x{hw[0]} but earlier frames are "
                             f"{self._size[1]}x{self._size[0]}; all frames of a run share one resolution")
        depth = np.asarray(depth, dtype=np.float32)
        if depth.shape != hw:
            raise InputError(f"frame {name}: depth shape {depth.shape} does not match the image {hw}")
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        if confidence is None:
            self._has_confidence = False
            conf = np.ones(hw, np.float32)
        else:
            conf = np.asarray(confidence, dtype=np.float32)
            if conf.shape != hw:
                raise InputError(f"frame {name}: confidence shape {conf.shape} does not match the image {hw}")
            conf = np.clip(np.nan_to_num(conf, nan=0.0), 0.0, 1.0).astype(np.float32)
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3) or not (K[0, 0] > 0 and K[1, 1] > 0):
            raise InputError(f"frame {name}: K must be a 3x3 matrix with positive focal lengths")
        return image, depth, conf, K, check_rigid(T, f"frame {name} pose")

    def cameras(self, poses: Mapping[int, np.ndarray] | Sequence[np.ndarray] | np.ndarray | None = None
                ) -> RunCameras:
        """The run's cameras, with ``poses`` (by frame index, or a sequence in index order) replacing the
        poses given to ``add_frame``."""
        if not self._records or self._size is None:
            raise OutputError(f"no frames were added to the run in {self.root}; nothing to finalize")
        records = [self._records[i] for i in sorted(self._records)]
        if poses is not None:
            if isinstance(poses, Mapping):
                unknown = set(poses) - set(self._records)
                if unknown:
                    raise InputError(f"refined poses given for unknown frames {sorted(unknown)[:5]}")
                updates = dict(poses)
            else:
                if len(poses) != len(records):
                    raise InputError(f"{len(poses)} refined poses for {len(records)} frames")
                updates = {r.index: p for r, p in zip(records, poses)}
            for rec in records:
                if rec.index in updates:
                    rec.T_world_from_cam = check_rigid(updates[rec.index], f"refined pose of frame {rec.name}")
        return RunCameras(width=self._size[1], height=self._size[0], frames=records,
                          depth_png_scale=choose_depth_png_scale(self._max_depth),
                          has_confidence=self._has_confidence,
                          extras={"fusion_options": asdict(self.options)})

    def finalize(self, poses: Mapping[int, np.ndarray] | Sequence[np.ndarray] | np.ndarray | None = None,
                 cost_curve: object | None = None, targets: Iterable[str] = EXPORT_TARGETS,
                 colmap_observations: bool = True) -> ExportReport:
        """Write cameras.json with the final ``poses``, depth PNGs, and every export in ``targets``."""
        cameras = self.cameras(poses)
        if self._max_depth > 65535 * cameras.depth_png_scale:
            logger.warning("depths above %.1f m are clipped in the uint16 depth PNGs (the .npy files keep them)",
                           65535 * cameras.depth_png_scale)
        write_cameras_json(self.root, cameras)
        report = export_run(self.root, targets, self.options, cost_curve=cost_curve, write_depth_png=True,
                            colmap_observations=colmap_observations)
        report.timings.update(self.timings)
        report.paths["cameras"] = str(self.layout.cameras_json)
        logger.info("run written to %s (%d frames, %d points)", self.root, len(cameras.frames),
                    report.counts.get("points", 0))
        return report
