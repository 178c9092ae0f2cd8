"""Evaluation of a whole ``dro-sfm reconstruct`` run against a dataset's ground truth (TUM, 7-Scenes, ...).

The run directory provides ``cameras.json`` (per-frame K and camera-to-world poses, each frame's input
``source`` and ``timestamp``) and ``depth/NNNNNN.npy``; the ground truth comes from the dataset folder
the run was made from (TUM RGB-D, 7-Scenes, KITTI raw drive or ScanNet scene).

Run frames are matched to ground-truth frames by the file name of their input image (``source``), else
by timestamp (TUM's association rule, 0.02 s), else — only when asked — by order. Then:

* **trajectory**: ATE (evo APE of positions) after SE(3) and after Sim(3) Umeyama alignment, and RPE
  between consecutive matched frames (translation and rotation, no alignment);
* **depth**: every run depth map against the dataset's depth, resized to the ground-truth size as in the
  benchmarks, under the chosen protocols in the '' and '_gt' (median-scaled) variants (a finished run has
  no flipped pass, so no '_pp' variants);
* **pairwise poses**: the BA-Net errors of each frame's relative pose to its next matched frame.

Baselines: the 0-iteration prediction of a model (``--weights``, default the run's weights) on the run's
own images with the neighbouring frames as references, and COLMAP on the run's images with the run's K.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dro_sfm.data.images import depth_from_uint16, image_size, read_uint16_png
from dro_sfm.errors import ConfigError, InputError
from dro_sfm.eval.colmap_baseline import ColmapOptions, ColmapResult, run_colmap
from dro_sfm.eval.distributed import DistContext
from dro_sfm.eval.pipeline import (
    BenchmarkResult,
    EvalSample,
    EvalSettings,
    Predictor,
    PredictorOutput,
    WorstFrameRenderer,
    benchmark_markdown,
    evaluate_samples,
    output_paths,
    summarize,
    write_plots,
)
from dro_sfm.eval.report import (
    save_trajectory_report,
    to_jsonable,
    trajectory_errors_to_dict,
    trajectory_markdown_table,
    write_json,
    write_markdown,
)
from dro_sfm.eval.trajectory import (
    TrajectoryErrors,
    absolute_trajectory_error,
    associate_by_timestamps,
    relative_trajectory_error,
)
from dro_sfm.geometry.pose import invert_rigid
from dro_sfm.recon.run_dir import RunCameras, RunLayout, load_cameras, read_npy, read_rgb

logger = logging.getLogger(__name__)

SEQUENCE_LAYOUTS = ("tum", "7scenes", "kitti", "scannet")
INDOOR_PROTOCOLS = ("dro_scannet", "deepv2d_scannet")
OUTDOOR_PROTOCOLS = ("dro_kitti", "monodepth2_kitti")
MATCH_MODES = ("auto", "name", "timestamp", "order")
# A run image that is not a plain resize of the input (a crop) cannot be compared pixel by pixel.
_ASPECT_TOLERANCE = 0.02


# ----------------------------------------------------------------------------------------------- ground truth
@dataclass
class GtFrame:
    """One ground-truth frame: matching keys, pose [4,4] (or None), K [3,3] and a lazy depth reader."""

    key: str
    timestamp: float | None
    T_world_from_cam: np.ndarray | None
    K: np.ndarray
    read_depth: Callable[[], np.ndarray | None]


def _tum_frames(path: Path) -> list[GtFrame]:
    from dro_sfm.data.tum import DEPTH_SCALE, TumSequence

    seq = TumSequence(path)
    frames = []
    for stamp, rgb_file, depth_file, pose in seq.entries:
        def read(depth_file=depth_file):
            if depth_file is None:
                return None
            return depth_from_uint16(read_uint16_png(path / depth_file), DEPTH_SCALE)
        frames.append(GtFrame(Path(rgb_file).name, float(stamp), pose, seq.K, read))
    return frames


def _sevenscenes_frames(path: Path) -> list[GtFrame]:
    from dro_sfm.data.sevenscenes import SevenScenesSequence

    seq = SevenScenesSequence(path)
    frames = []
    for fid, color_path in seq.frames:
        def read(fid=fid, color_path=color_path):
            return seq.read_frame(fid, color_path).depth
        frames.append(GtFrame(color_path.name, None, _sevenscenes_pose(color_path), seq.K, read))
    return frames


def _sevenscenes_pose(color_path: Path) -> np.ndarray:
    from dro_sfm.data.scannet import read_matrix_txt
    from dro_sfm.geometry.pose import check_rigid

    stem = color_path.name.split(".")[0]
    pose_path = color_path.with_name(f"{stem}.pose.txt")
    if not pose_path.is_file():
        raise InputError(f"{pose_path}: pose file missing; every 7-Scenes frame has one")
    return check_rigid(read_matrix_txt(pose_path), str(pose_path))


def _kitti_frames(path: Path) -> list[GtFrame]:
    from dro_sfm.data.kitti import KittiDrive, read_kitti_timestamps

    drive = KittiDrive(path)
    stamps_file = drive.image_dir.parent / "timestamps.txt"
    stamps = dict(enumerate(read_kitti_timestamps(stamps_file))) if stamps_file.is_file() else {}
    frames = []
    for index in drive.frame_indices:
        image_path = drive.image_dir / f"{index:010d}.png"

        def read(index=index, image_path=image_path):
            width, height = image_size(image_path)
            return drive.read_depth(index, height, width)
        frames.append(GtFrame(image_path.name, stamps.get(index), drive.poses.get(index), drive.K, read))
    return frames


def _scannet_frames(path: Path) -> list[GtFrame]:
    from dro_sfm.data.scannet import ScanNetScene
    from dro_sfm.eval.scannet import scene_files

    scene = ScanNetScene(path, size="color")
    color = scene_files(str(path)).color
    frames = []
    for fid in scene.frame_ids:
        def read(fid=fid):
            return scene.read_depth(fid)
        frames.append(GtFrame(color[fid].name, None, scene.read_pose(fid), scene.K, read))
    return frames


_GT_READERS: dict[str, Callable[[Path], list[GtFrame]]] = {
    "tum": _tum_frames, "7scenes": _sevenscenes_frames, "kitti": _kitti_frames, "scannet": _scannet_frames,
}


def read_ground_truth(path: str | os.PathLike, layout: str | None = None) -> tuple[str, list[GtFrame]]:
    """(layout, frames) of a dataset folder with ground truth; the layout is detected unless given."""
    from dro_sfm.data.formats import detect_layout

    path = Path(path)
    layout = layout or detect_layout(path)
    if layout not in _GT_READERS:
        raise InputError(f"{path}: layout {layout!r} has no ground truth; evaluate against one of "
                         f"{', '.join(SEQUENCE_LAYOUTS)}")
    frames = _GT_READERS[layout](path)
    if not frames:
        raise InputError(f"{path}: no frames")
    return layout, frames


# ----------------------------------------------------------------------------------------------- matching
def match_frames(run: RunCameras, gt: Sequence[GtFrame], mode: str = "auto",
                 max_dt: float = 0.02) -> tuple[list[tuple[int, int]], str]:
    """Pairs (run frame position, GT frame position) in run order, and the rule that made them."""
    if mode not in MATCH_MODES:
        raise ConfigError(f"match mode must be one of {', '.join(MATCH_MODES)}, got {mode!r}")
    if mode in ("auto", "name"):
        by_key: dict[str, int] = {}
        for j, f in enumerate(gt):
            by_key.setdefault(f.key, j)
        pairs = [(i, by_key[Path(r.source).name]) for i, r in enumerate(run.frames)
                 if r.source and Path(r.source).name in by_key]
        if pairs or mode == "name":
            if not pairs:
                raise InputError("no run frame's source image name matches a ground-truth frame; try "
                                 "--match timestamp or --match order")
            return pairs, "name"
    stamps_gt = [f.timestamp for f in gt]
    if mode in ("auto", "timestamp") and all(s is not None for s in stamps_gt):
        idx_gt, idx_run = associate_by_timestamps(np.asarray(stamps_gt, dtype=np.float64),
                                                  np.array([r.timestamp for r in run.frames]), max_dt)
        pairs = sorted(zip(idx_run.tolist(), idx_gt.tolist()))
        return pairs, "timestamp"
    if mode == "timestamp":
        raise InputError("the ground truth has no timestamps; use --match name or --match order")
    if mode == "order" or len(run.frames) == len(gt):
        if len(run.frames) != len(gt):
            raise InputError(f"--match order needs as many run frames ({len(run.frames)}) as ground-truth frames "
                             f"({len(gt)})")
        logger.warning("matching run and ground-truth frames by order (no names or timestamps to go by)")
        return [(i, i) for i in range(len(gt))], "order"
    raise InputError(
        f"cannot match the {len(run.frames)} run frames to the {len(gt)} ground-truth frames: the sources' "
        "file names do not match and there are no timestamps; pass --match order if they correspond one to one"
    )


# ----------------------------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class SequenceSpec:
    """One matched frame: positions in the run and GT lists, and its reference positions in the match list."""

    position: int
    run_index: int
    gt_index: int
    ref_positions: tuple[int, ...]
    name: str


def build_specs(run: RunCameras, pairs: Sequence[tuple[int, int]]) -> list[SequenceSpec]:
    """Specs [M]; references are the next and the previous matched frame (next first), where they exist."""
    specs = []
    for k, (i, j) in enumerate(pairs):
        refs = tuple(p for p in (k + 1, k - 1) if 0 <= p < len(pairs))
        specs.append(SequenceSpec(k, i, j, refs, run.frames[i].name))
    return specs


class RunPredictor:
    """The run's own results as a predictor: stored depth and the relative pose to the first reference."""

    def __init__(self, root: Path, run: RunCameras, pairs: Sequence[tuple[int, int]]) -> None:
        self.root, self.run, self.pairs = root, run, pairs

    def __call__(self, sample: EvalSample) -> PredictorOutput:
        record = self.run.frames[sample.meta["run_index"]]
        depth = read_npy(RunLayout(self.root).frame_file("depth", record.name, "npy"),
                         (self.run.height, self.run.width))
        refs = [self.run.frames[i] for i in sample.meta["ref_run_indices"]]
        T = np.stack([invert_rigid(r.T_world_from_cam) @ record.T_world_from_cam for r in refs]) if refs else None
        return PredictorOutput(depth=depth.astype(np.float64), T_ref_from_tgt=T)


def load_sample(root: Path, run: RunCameras, gt: Sequence[GtFrame], pairs: Sequence[tuple[int, int]],
                spec: SequenceSpec) -> EvalSample:
    """Run image and K, neighbouring run images as references, GT depth and GT relative poses."""
    layout = RunLayout(root)
    shape = (run.height, run.width)
    record = run.frames[spec.run_index]
    target = read_rgb(layout.frame_file("images", record.name, "png"), shape)
    ref_runs = [pairs[p][0] for p in spec.ref_positions]
    refs = [read_rgb(layout.frame_file("images", run.frames[i].name, "png"), shape) for i in ref_runs]
    gt_frame = gt[spec.gt_index]
    depth = gt_frame.read_depth()
    meta: dict[str, Any] = {"run_index": spec.run_index, "ref_run_indices": ref_runs,
                            "gt_key": gt_frame.key}
    if depth is not None:
        _check_alignment(run, record.K, gt_frame, depth.shape, meta)
    T_gt = None
    refs_gt = [gt[pairs[p][1]].T_world_from_cam for p in spec.ref_positions]
    if gt_frame.T_world_from_cam is not None and refs_gt and all(T is not None for T in refs_gt):
        T_gt = np.stack([invert_rigid(T) @ gt_frame.T_world_from_cam for T in refs_gt])
    return EvalSample(record.name, target, refs, record.K, depth, T_gt, meta=meta)


def _check_alignment(run: RunCameras, K_run: np.ndarray, gt: GtFrame, gt_shape: tuple[int, int],
                     meta: dict[str, Any]) -> None:
    """Refuse a run image that is not a resize of the GT image; note differing intrinsics.

    A model's processing shape may have another aspect ratio than the input (the default model runs at 128×160
    on 240×320 frames): such a run is still a plain resize when its intrinsics are the dataset's scaled by the
    two factors. With another aspect ratio and other intrinsics it is a crop or another camera: refused.
    """
    H, W = gt_shape
    sx, sy = run.width / W, run.height / H
    K_expected = np.array(gt.K, dtype=np.float64)
    K_expected[0] *= sx
    K_expected[1] *= sy
    plain_resize = np.allclose(K_run, K_expected, rtol=0.01, atol=0.5 * max(sx, sy))
    if abs(sx - sy) > _ASPECT_TOLERANCE * max(sx, sy):
        if not plain_resize:
            raise InputError(
                f"run frames are {run.width}x{run.height} but the ground truth is {W}x{H}: the aspect ratio differs "
                "and the run's intrinsics are not the dataset's scaled to that size, so the run images are not a "
                "plain resize of the input and cannot be compared pixel by pixel"
            )
        meta["anisotropic_resize"] = [sx, sy]
    if not plain_resize:
        meta["intrinsics_differ"] = {"run": K_run.tolist(), "dataset_scaled": K_expected.tolist()}


# ----------------------------------------------------------------------------------------------- trajectory
@dataclass
class TrajectoryEvaluation:
    """APE/RPE results, or the reason they could not be computed."""

    results: list[TrajectoryErrors]
    n_poses: int
    problem: str | None = None


def evaluate_trajectory(T_gt: np.ndarray, T_est: np.ndarray, delta: int = 1) -> TrajectoryEvaluation:
    """ATE after SE(3) and Sim(3) alignment and RPE (translation, rotation) of poses [M,4,4]."""
    n = int(T_gt.shape[0])
    if n < 2:
        return TrajectoryEvaluation([], n, f"{n} pose(s) with ground truth; need at least 2")
    results: list[TrajectoryErrors] = []
    problem = None
    for align in ("se3", "sim3"):
        try:
            results.append(absolute_trajectory_error(T_gt, T_est, align=align))
        except InputError as err:
            problem = str(err)
    results.append(relative_trajectory_error(T_gt, T_est, delta=delta, pose_relation="translation"))
    results.append(relative_trajectory_error(T_gt, T_est, delta=delta, pose_relation="rotation_deg"))
    return TrajectoryEvaluation(results, n, problem)


def _trajectory_dict(ev: TrajectoryEvaluation, per_frame: bool = True) -> dict[str, Any]:
    return {"n_poses": ev.n_poses, "problem": ev.problem,
            "metrics": {r.name: trajectory_errors_to_dict(r, per_frame) for r in ev.results}}


def colmap_trajectory(root: Path, run: RunCameras, gt: Sequence[GtFrame], pairs: Sequence[tuple[int, int]],
                      options: ColmapOptions) -> tuple[ColmapResult, TrajectoryEvaluation]:
    """COLMAP on the run's matched images with the run's K; trajectory errors on the registered frames."""
    layout, shape = RunLayout(root), (run.height, run.width)
    records = [run.frames[i] for i, _ in pairs]
    if not run.shared_intrinsics:
        logger.warning("the run's frames have different intrinsics; COLMAP uses the first frame's K for all")
    images = [read_rgb(layout.frame_file("images", r.name, "png"), shape) for r in records]
    result = run_colmap(images, records[0].K, names=[r.name for r in records], options=options)
    keep = [k for k, r in enumerate(records) if result.pose(r.name) is not None
            and gt[pairs[k][1]].T_world_from_cam is not None]
    T_est = np.stack([result.pose(records[k].name) for k in keep]) if keep else np.zeros((0, 4, 4))
    T_gt = np.stack([gt[pairs[k][1]].T_world_from_cam for k in keep]) if keep else np.zeros((0, 4, 4))
    ev = evaluate_trajectory(T_gt, T_est) if len(keep) >= 2 else \
        TrajectoryEvaluation([], len(keep), f"COLMAP registered {len(keep)} frame(s) with ground truth")
    # COLMAP's scale is arbitrary: only the Sim(3)-aligned ATE and the rotation RPE are meaningful.
    ev.results = [r for r in ev.results if r.alignment.mode == "sim3" or r.pose_relation == "rotation_deg"]
    return result, ev


# ----------------------------------------------------------------------------------------------- entry point
@dataclass(frozen=True)
class SequenceEvalOptions:
    """Dataset layout, frame matching, protocols and the COLMAP baseline."""

    layout: str | None = None
    match: str = "auto"
    max_dt: float = 0.02
    protocols: tuple[str, ...] | None = None
    colmap: ColmapOptions | None = None


def run_weights(run_dir: str | os.PathLike) -> str | None:
    """The weights recorded in the run's ``run.json`` (inputs or options), if any."""
    path = RunLayout(run_dir).run_json
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    for section in ("inputs", "options"):
        value = doc.get(section, {}).get("weights") if isinstance(doc.get(section), dict) else None
        if value:
            return str(value)
    return None


def evaluate_sequence(
    run_dir: str | os.PathLike,
    data: str | os.PathLike,
    baseline_methods: dict[str, Predictor] | None = None,
    baseline_descriptions: dict[str, dict[str, Any]] | None = None,
    options: SequenceEvalOptions = SequenceEvalOptions(),
    ctx: DistContext | None = None,
    out: str | os.PathLike | None = None,
    plots: bool = True,
) -> tuple[BenchmarkResult, dict[str, Any]]:
    """Evaluate a run against ground truth: (depth/pose benchmark result, trajectory report dict)."""
    root = Path(run_dir)
    ctx = ctx or DistContext()
    run = load_cameras(root)
    layout, gt = read_ground_truth(data, options.layout)
    pairs, rule = match_frames(run, gt, options.match, options.max_dt)
    if len(pairs) < 1:
        raise InputError(f"no run frame of {root} matches a ground-truth frame of {data}")
    protocols = options.protocols or (OUTDOOR_PROTOCOLS if layout == "kitti" else INDOOR_PROTOCOLS)
    settings = EvalSettings.from_protocol_names(protocols, post_process=False)
    specs = build_specs(run, pairs)
    methods: dict[str, Predictor] = {"run": RunPredictor(root, run, pairs), **(baseline_methods or {})}
    descriptions = {"run": {"label": "the reconstruct run (its depth maps and poses)", "run_dir": str(root)},
                    **(baseline_descriptions or {})}

    def load(spec: SequenceSpec) -> EvalSample:
        return load_sample(root, run, gt, pairs, spec)

    records = evaluate_samples(specs, load, methods, settings, ctx, sample_id=lambda s: s.name)
    with_pose = [(i, gt[j].T_world_from_cam) for i, j in pairs if gt[j].T_world_from_cam is not None]
    T_est = np.stack([run.frames[i].T_world_from_cam for i, _ in with_pose]) if with_pose else np.zeros((0, 4, 4))
    T_gt = np.stack([T for _, T in with_pose]) if with_pose else np.zeros((0, 4, 4))
    trajectory = {"run": evaluate_trajectory(T_gt, T_est)}
    colmap_info = None
    if options.colmap is not None and ctx.is_main:
        colmap_result, trajectory["colmap"] = colmap_trajectory(root, run, gt, pairs, options.colmap)
        colmap_info = colmap_result.to_dict()
    header = {"run_dir": str(root), "data": str(data), "layout": layout, "match": rule,
              "n_run_frames": len(run.frames), "n_gt_frames": len(gt), "n_matched": len(pairs),
              "protocols": list(protocols)}
    notes = [
        f"Run {root} against {layout} ground truth {data}: {len(pairs)} of {len(run.frames)} run frames matched "
        f"by {rule}.",
        "Trajectory: ATE = evo APE of positions after SE(3) / Sim(3) Umeyama alignment; RPE between consecutive "
        "matched frames, no alignment.",
        "Depth: run depth resized to the ground-truth size (bilinear, align_corners), no crop; '' raw, '_gt' per-image "
        "median scaling.",
        "Pairwise poses: BA-Net errors of each frame to the next matched frame (the previous one for the last).",
    ]
    result = summarize("sequence", f"Sequence evaluation — {layout}, {Path(root).name}", records, descriptions,
                       settings, header, notes, ctx.world_size)
    extra = {"trajectory": {name: _trajectory_dict(ev) for name, ev in trajectory.items()}}
    if colmap_info is not None:
        extra["colmap_sequence"] = colmap_info
    if out is not None and ctx.is_main:
        _write_sequence_outputs(result, extra, trajectory, out, plots,
                                WorstFrameRenderer(result, specs, load, methods))
    return result, extra


def _write_sequence_outputs(result: BenchmarkResult, extra: dict[str, Any],
                            trajectory: dict[str, TrajectoryEvaluation], out: str | os.PathLike, plots: bool,
                            worst: WorstFrameRenderer) -> None:
    json_path, md_path, plot_dir = output_paths(out)
    write_json(json_path, to_jsonable({**result.to_dict(), **extra}))
    lines = [benchmark_markdown(result), "## Trajectory", ""]
    for name, ev in trajectory.items():
        lines.append(f"### {name} ({ev.n_poses} poses with ground truth)")
        lines.append("")
        if ev.problem:
            lines += [f"Note: {ev.problem}", ""]
        if ev.results:
            lines.append(trajectory_markdown_table(ev.results))
    if "colmap_sequence" in extra:
        c = extra["colmap_sequence"]
        lines += [f"COLMAP registered {c['n_registered']} of {c['n_images']} frames"
                  + (f"; not registered: {', '.join(c['unregistered'])}" if c["unregistered"] else "") + ".", ""]
    write_markdown(md_path, "\n".join(lines))
    if plots:
        write_plots(result, plot_dir, worst, 4)
        for name, ev in trajectory.items():
            for r in ev.results:
                if r.metric == "ape" or r.pose_relation == "translation":
                    save_trajectory_report(r, plot_dir, stem=f"{name}_{r.name}")
