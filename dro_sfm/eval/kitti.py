"""KITTI depth evaluation on the Eigen test split, as the official DRO evaluation runs it (spec §16).

* **Split**: ``eigen`` (697 frames), ``eigen_benchmark`` (652 frames with improved ground truth) or any
  split file in monodepth2 (``<date>/<drive> <frame> <l|r>``) or path form. The standard lists are not
  shipped; named splits are looked up in a splits directory (``--splits-dir`` or ``$DRO_SFM_SPLITS``).
* **Ground truth** (``gt``): ``velodyne`` (raw ``velodyne_points/data/*.bin`` projected like monodepth2's
  ``generate_depth_map``), ``npz`` (packnet-sfm's cached projection ``proj_depth/velodyne/image_0X/*.npz``),
  ``improved`` (KITTI's annotated maps ``proj_depth/groundtruth/image_0X/*.png``, uint16/256; the
  official DRO configs use these, which leaves 652 of the 697 Eigen frames), or ``auto``.
* **References**: the official configs test with ``forward_context: 1, back_context: 0`` — the *next*
  frame is the single reference (offset ``+1``). The official dataset silently drops a frame whose
  neighbour does not exist; here such frames are listed as skipped with the reason, or, with
  ``missing_ref="mirror"``, evaluated with the mirrored offset (``-1`` for ``+1``) and marked so.
* **Metrics**: the Garg crop and both protocols' depth caps (``dro_kitti`` 0.2–80 m with the median of
  ratios, ``monodepth2_kitti`` 1e-3–80 m with the ratio of medians), each in the four official variants.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dro_sfm.data.images import read_rgb
from dro_sfm.data.kitti import (
    KittiDrive,
    KittiSplitEntry,
    project_velodyne,
    read_groundtruth_png,
    read_kitti_calib,
    read_kitti_split,
    read_proj_depth_npz,
    read_velodyne_bin,
)
from dro_sfm.errors import ConfigError, InputError
from dro_sfm.eval.colmap_baseline import ColmapOptions
from dro_sfm.eval.distributed import DistContext
from dro_sfm.eval.pipeline import (
    BenchmarkResult,
    EvalSample,
    EvalSettings,
    Predictor,
    SkipSample,
    run_benchmark,
)
from dro_sfm.eval.splits import resolve_test_list
from dro_sfm.geometry.pose import invert_rigid

logger = logging.getLogger(__name__)

GtSource = Literal["auto", "velodyne", "npz", "improved"]
GT_SOURCES: tuple[str, ...] = ("auto", "velodyne", "npz", "improved")
NAMED_SPLITS = {"eigen": "eigen/test_files.txt", "eigen_benchmark": "eigen_benchmark/test_files.txt"}
DEFAULT_PROTOCOLS = ("dro_kitti", "monodepth2_kitti")
OFFICIAL_REF_OFFSETS = (1,)
GT_DESCRIPTIONS = {
    "velodyne": "raw LiDAR: velodyne_points .bin scans projected as monodepth2's generate_depth_map",
    "npz": "raw LiDAR: packnet-sfm projected depth proj_depth/velodyne/image_0X/*.npz",
    "improved": "KITTI improved annotated depth proj_depth/groundtruth/image_0X/*.png (uint16 / 256)",
}
_SPLIT_HELP = (
    "the standard lists are public but not shipped with dro-sfm: download monodepth2's "
    "splits/eigen/test_files.txt and splits/eigen_benchmark/test_files.txt "
    "(https://github.com/nianticlabs/monodepth2/tree/master/splits) into <DIR>/kitti/eigen/ and "
    "<DIR>/kitti/eigen_benchmark/, then pass --splits-dir DIR or set DRO_SFM_SPLITS=DIR"
)


# ----------------------------------------------------------------------------------------------- split
def resolve_split(split: str | os.PathLike, splits_dir: str | os.PathLike | None = None) -> Path:
    """The split file: ``split`` itself if it is a file, else the named split in the splits directory.

    A splits directory may hold ``kitti/<name>/test_files.txt`` or ``<name>/test_files.txt``.
    """
    named = {name: (f"kitti/{relative}", relative) for name, relative in NAMED_SPLITS.items()}
    return resolve_test_list(split, named, "split", _SPLIT_HELP, splits_dir)


# ----------------------------------------------------------------------------------------------- ground truth
def drive_dir(root: Path, entry: KittiSplitEntry) -> Path:
    return root / entry.drive


def gt_path(root: Path, entry: KittiSplitEntry, source: str) -> Path:
    """Where the ground truth of ``entry`` lives for a GT source."""
    stem = f"{entry.frame_index:010d}"
    cam = f"image_{entry.camera:02d}"
    d = drive_dir(root, entry)
    if source == "velodyne":
        return d / "velodyne_points" / "data" / f"{stem}.bin"
    if source == "npz":
        return d / "proj_depth" / "velodyne" / cam / f"{stem}.npz"
    if source == "improved":
        return d / "proj_depth" / "groundtruth" / cam / f"{stem}.png"
    raise ConfigError(f"unknown KITTI ground truth {source!r}; use one of {', '.join(GT_SOURCES)}")


def detect_gt_source(root: Path, entries: Sequence[KittiSplitEntry], split_name: str) -> str:
    """``improved`` for the Eigen-benchmark split, else raw LiDAR: ``.bin`` scans if present, else npz.

    Presence is judged on the entries' files; when no raw LiDAR exists but improved maps do, those are used.
    """
    if split_name == "eigen_benchmark":
        return "improved"
    for source in ("velodyne", "npz", "improved"):
        if any(gt_path(root, e, source).is_file() for e in entries):
            return source
    raise InputError(
        f"{root}: none of the split's frames has ground truth (looked for {gt_path(root, entries[0], 'velodyne')}, "
        f"{gt_path(root, entries[0], 'npz')} and {gt_path(root, entries[0], 'improved')}); is --data the KITTI "
        "raw root holding the <date>/<date>_drive_XXXX_sync folders?"
    )


@functools.lru_cache(maxsize=8)
def _calib(date_dir: str):
    return read_kitti_calib(date_dir)


def read_gt_depth(root: Path, entry: KittiSplitEntry, source: str, height: int, width: int) -> np.ndarray:
    """Ground-truth depth [H,W] float32 metres of ``entry`` (0 = no measurement); SkipSample if absent."""
    path = gt_path(root, entry, source)
    if not path.is_file():
        raise SkipSample(f"no ground truth ({path.relative_to(root)} missing)")
    if source == "velodyne":
        calib = _calib(str(root / entry.date))
        return project_velodyne(read_velodyne_bin(path), calib, entry.camera, height, width)
    depth = read_proj_depth_npz(path, "velodyne") if source == "npz" else read_groundtruth_png(path)
    if depth.shape != (height, width):
        raise InputError(f"{path}: ground truth is {depth.shape[1]}x{depth.shape[0]}, the image {width}x{height}")
    return depth


# ----------------------------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class KittiSpec:
    """One split line resolved against the data: the target and the reference frame numbers to use."""

    entry: KittiSplitEntry
    ref_indices: tuple[int, ...]
    problem: str | None = None
    mirrored: bool = False

    @property
    def sample_id(self) -> str:
        """The split line in monodepth2 form, e.g. ``2011_09_26/2011_09_26_drive_0002_sync 0000000069 l``."""
        side = {2: "l", 3: "r"}.get(self.entry.camera, f"cam{self.entry.camera}")
        return f"{self.entry.drive} {self.entry.frame_index:010d} {side}"


def _frame_exists(root: Path, entry: KittiSplitEntry, index: int) -> bool:
    return (index >= 0) and KittiSplitEntry(entry.drive, index, entry.camera).image_path(root).is_file()


def build_specs(root: Path, entries: Sequence[KittiSplitEntry], ref_offsets: Sequence[int],
                missing_ref: str = "skip") -> list[KittiSpec]:
    """Specs [N] in split order; a frame whose image or neighbour is missing carries the problem."""
    if missing_ref not in ("skip", "mirror"):
        raise ConfigError(f"missing_ref must be 'skip' or 'mirror', got {missing_ref!r}")
    if not ref_offsets or any(o == 0 for o in ref_offsets):
        raise ConfigError(f"reference offsets must be non-zero frame offsets, got {list(ref_offsets)}")
    specs = []
    for entry in entries:
        if not entry.image_path(root).is_file():
            specs.append(KittiSpec(entry, (), f"image {entry.image_path(root).relative_to(root)} missing"))
            continue
        refs, mirrored, missing = [], False, []
        for offset in ref_offsets:
            index = entry.frame_index + offset
            if _frame_exists(root, entry, index):
                refs.append(index)
            elif missing_ref == "mirror" and _frame_exists(root, entry, entry.frame_index - offset):
                refs.append(entry.frame_index - offset)
                mirrored = True
            else:
                missing.append(index)
        if missing:
            specs.append(KittiSpec(entry, (), f"reference frame(s) {missing} (offset "
                                               f"{[m - entry.frame_index for m in missing]}) not in the drive"))
        else:
            specs.append(KittiSpec(entry, tuple(refs), None, mirrored))
    return specs


def _read_poses(root: Path, entry: KittiSplitEntry, frames: Sequence[int]) -> dict[int, np.ndarray]:
    """Camera-to-world [4,4] from OXTS for ``frames``; empty (with a log line) when the drive has none."""
    try:
        drive = KittiDrive(drive_dir(root, entry), camera=entry.camera, depth="none", frames=list(frames))
    except InputError as err:
        logger.info("%s: no ground-truth poses (%s)", entry.drive, err)
        return {}
    return drive.poses


def load_sample(root: Path, spec: KittiSpec, gt_source: str) -> EvalSample:
    """Images, K = P_rect_0X[:, :3], ground-truth depth and OXTS relative poses of one spec."""
    if spec.problem is not None:
        raise SkipSample(spec.problem)
    entry = spec.entry
    target = read_rgb(entry.image_path(root))
    refs = [read_rgb(KittiSplitEntry(entry.drive, i, entry.camera).image_path(root)) for i in spec.ref_indices]
    height, width = target.shape[:2]
    gt = read_gt_depth(root, entry, gt_source, height, width)
    K = _calib(str(root / entry.date)).K(entry.camera)
    poses = _read_poses(root, entry, (entry.frame_index, *spec.ref_indices))
    T_gt = None
    if all(i in poses for i in (entry.frame_index, *spec.ref_indices)):
        T_gt = np.stack([invert_rigid(poses[i]) @ poses[entry.frame_index] for i in spec.ref_indices])
    meta: dict[str, Any] = {"refs": [i - entry.frame_index for i in spec.ref_indices]}
    if spec.mirrored:
        meta["mirrored_reference"] = True
    return EvalSample(spec.sample_id, target, refs, K, gt, T_gt, meta=meta)


# ----------------------------------------------------------------------------------------------- entry point
@dataclass(frozen=True)
class KittiEvalOptions:
    """What to evaluate: split, ground truth, references, protocols, post-processing, COLMAP."""

    split: str = "eigen"
    splits_dir: str | None = None
    gt: str = "auto"
    ref_offsets: tuple[int, ...] = OFFICIAL_REF_OFFSETS
    missing_ref: str = "skip"
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    post_process: bool = True
    colmap: ColmapOptions | None = None
    limit: int | None = None


def evaluate_kitti(
    data_root: str | os.PathLike,
    methods: dict[str, Predictor],
    descriptions: dict[str, dict[str, Any]],
    options: KittiEvalOptions = KittiEvalOptions(),
    ctx: DistContext | None = None,
    out: str | os.PathLike | None = None,
    plots: bool = True,
) -> BenchmarkResult:
    """Evaluate ``methods`` on a KITTI split; writes results (rank 0) when ``out`` is given."""
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(f"KITTI root {root} does not exist; pass the folder holding <date>/<date>_drive_*_sync")
    ctx = ctx or DistContext()
    split_path = resolve_split(options.split, options.splits_dir)
    entries = read_kitti_split(split_path)
    if options.limit is not None:
        entries = entries[: options.limit]
    split_name = options.split if options.split in NAMED_SPLITS else split_path.name
    if options.gt not in GT_SOURCES:
        raise ConfigError(f"unknown KITTI ground truth {options.gt!r}; use one of {', '.join(GT_SOURCES)}")
    gt_source = detect_gt_source(root, entries, split_name) if options.gt == "auto" else options.gt
    specs = build_specs(root, entries, options.ref_offsets, options.missing_ref)
    settings = EvalSettings.from_protocol_names(options.protocols, options.post_process, options.colmap)

    def load(spec: KittiSpec) -> EvalSample:
        return load_sample(root, spec, gt_source)

    official_refs = tuple(options.ref_offsets) == OFFICIAL_REF_OFFSETS and options.missing_ref == "skip"
    header = {
        "data": str(root), "split": split_name, "split_file": str(split_path), "gt": gt_source,
        "gt_description": GT_DESCRIPTIONS[gt_source], "ref_offsets": list(options.ref_offsets),
        "missing_ref": options.missing_ref, "protocols": list(options.protocols),
    }
    notes = [
        f"Split `{split_name}` ({split_path}); ground truth `{gt_source}`: {GT_DESCRIPTIONS[gt_source]}.",
        "Reference frame(s): offsets " + ", ".join(f"{o:+d}" for o in options.ref_offsets)
        + (" — the official DRO test context (next frame only)." if official_refs else
           " — NOT the official test context (+1)." if tuple(options.ref_offsets) != OFFICIAL_REF_OFFSETS else
           f"; a missing neighbour is replaced by the mirrored offset ({options.missing_ref})."),
        "Depth: prediction resized to the GT size (bilinear, align_corners), Garg crop; variants '' raw, "
        "'_pp' flip post-processing, '_gt' per-image median scaling, '_pp_gt' both"
        + ("" if options.post_process else " (post-processing disabled: no _pp variants)") + ".",
    ]
    if gt_source != "improved" and split_name == "eigen_benchmark":
        notes.append("Warning: the Eigen-benchmark split is meant for the improved ground truth.")
    title = f"KITTI depth evaluation — {split_name}, {gt_source} ground truth"
    return run_benchmark("kitti", title, specs, load, methods, descriptions, settings, header, notes, ctx, out, plots,
                         sample_id=lambda s: s.sample_id)
