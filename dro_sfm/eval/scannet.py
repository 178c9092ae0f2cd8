"""ScanNet evaluation on the BA-Net/DeepV2D test pairs, as the official DRO evaluation runs it (spec §16).

Data: ``--data`` holds exported scenes ``<scene>/color/<N>.jpg`` (or DeepV2D's ``rgb/frame-<N>.color.jpg``),
``depth/<N>.png`` (uint16 mm), ``pose/<N>.txt`` (camera-to-world) and ``intrinsic/intrinsic_color.txt``;
frame numbers are ScanNet's original frame numbers, as in the pair list.

Views (``views``), following the official ``ScannetTestDataset``, with ``t`` the keyframe (first frame of
the pair), ``p`` its partner and ``s = sign(p − t)`` (every listed pair has ``p > t``):

* 2 — references ``[p]``: the official test context of the released 3-view model (forward 1, back 0);
* 3 — ``[p, t − 5s]``: the partner plus the frame 5 frames on the other side of the keyframe;
* 5 — ``[p, t − 5s, t + 5s, t − 10s]``: the official test context of the 5-view model (forward 2, back 2).

The extra views sit on both sides of the keyframe because the models were trained with context on both
sides (``±1`` or ``±2`` frames of a stride-5 subsampled sequence, i.e. ±5 / ±10 original frames). The
official dataset silently drops pairs whose extra frames do not exist; here they are listed as skipped.

The ground truth is the raw depth PNG at its own resolution (640×480 in ScanNet); the prediction is resized
to it as the official code does (it treats the colour and depth images as covering the same view).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dro_sfm.data.images import depth_from_uint16, read_rgb, read_uint16_png
from dro_sfm.data.scannet import (
    DEPTH_SCALE,
    ScanNetPair,
    read_matrix_txt,
    read_scannet_intrinsics,
    read_scannet_test_pairs,
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
from dro_sfm.geometry.pose import check_rigid, invert_rigid

logger = logging.getLogger(__name__)

NAMED_PAIRS = {"banet": "scannet/scannet_test_pairs.txt"}
DEFAULT_PROTOCOLS = ("dro_scannet", "deepv2d_scannet")
#: Extra reference offsets per view count, in units of ``s = sign(partner − keyframe)``.
VIEW_OFFSETS: dict[int, tuple[int, ...]] = {2: (), 3: (-5,), 5: (-5, 5, -10)}
_STEM_ID = re.compile(r"(?:frame-)?(\d+)(?:\.color)?")
_PAIRS_HELP = (
    "the BA-Net/DeepV2D pair list is public but not shipped with dro-sfm: download DeepV2D's "
    "data/scannet/scannet_test.txt (https://github.com/princeton-vl/DeepV2D) as <DIR>/scannet/scannet_test_pairs.txt "
    "and pass --splits-dir DIR (or set DRO_SFM_SPLITS=DIR), or pass the file itself with --pairs"
)


def resolve_pairs(pairs: str | os.PathLike, splits_dir: str | os.PathLike | None = None) -> Path:
    """The pair-list file: ``pairs`` itself if it is a file, else the named list (``banet``) in the splits dir."""
    named = {name: (relative, Path(relative).name) for name, relative in NAMED_PAIRS.items()}
    return resolve_test_list(pairs, named, "pair list", _PAIRS_HELP, splits_dir)


# ----------------------------------------------------------------------------------------------- scene files
@dataclass(frozen=True)
class SceneFiles:
    """Where one exported scene keeps its frames: colour file per frame number, and the other folders."""

    scene_dir: Path
    color: dict[int, Path]

    def depth_path(self, fid: int) -> Path | None:
        stem = self.color[fid].stem
        for name in (f"{fid}.png", f"{stem}.png", stem.replace(".color", ".depth") + ".png", f"{fid:06d}.png"):
            path = self.scene_dir / "depth" / name
            if path.is_file():
                return path
        return None

    def pose(self, fid: int) -> np.ndarray | None:
        """Camera-to-world [4,4], or None when ScanNet marks it invalid (-inf) or there is no pose file."""
        stem = self.color[fid].stem
        for name in (f"{fid}.txt", f"{stem}.txt", stem.replace(".color", ".pose") + ".txt", f"{fid:06d}.txt"):
            path = self.scene_dir / "pose" / name
            if path.is_file():
                T = read_matrix_txt(path)
                return check_rigid(T, str(path)) if np.all(np.isfinite(T)) else None
        return None


@functools.lru_cache(maxsize=16)
def scene_files(scene_dir: str) -> SceneFiles:
    """The frames of a scene folder (``color/`` or DeepV2D's ``rgb/``); InputError if it has neither."""
    root = Path(scene_dir)
    for sub in ("color", "rgb"):
        folder = root / sub
        if folder.is_dir():
            color = {}
            for p in folder.iterdir():
                m = _STEM_ID.fullmatch(p.stem)
                if m and p.suffix.lower() in (".jpg", ".jpeg", ".png"):
                    color[int(m.group(1))] = p
            return SceneFiles(root, color)
    raise InputError(f"{root}: no color/ (or rgb/) folder; not an exported ScanNet scene")


@functools.lru_cache(maxsize=16)
def _intrinsics(scene_dir: str) -> np.ndarray:
    return read_scannet_intrinsics(Path(scene_dir) / "intrinsic" / "intrinsic_color.txt")


# ----------------------------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class ScanNetSpec:
    """One test pair with the frame numbers of its references for the chosen view count."""

    pair: ScanNetPair
    ref_ids: tuple[int, ...]

    @property
    def sample_id(self) -> str:
        return f"{self.pair.scene} {self.pair.frame_a} {self.pair.frame_b}"


def reference_ids(pair: ScanNetPair, views: int) -> tuple[int, ...]:
    """Reference frame numbers [views − 1]: the partner first, then the official extra views."""
    if views not in VIEW_OFFSETS:
        raise ConfigError(f"views must be one of {sorted(VIEW_OFFSETS)}, got {views}")
    sign = 1 if pair.frame_b > pair.frame_a else -1
    return (pair.frame_b, *(pair.frame_a + sign * o for o in VIEW_OFFSETS[views]))


def load_sample(root: Path, spec: ScanNetSpec) -> EvalSample:
    """Colour images at full size with K_color, raw GT depth, and ground-truth target→reference poses."""
    pair = spec.pair
    scene_dir = root / pair.scene
    if not scene_dir.is_dir():
        raise SkipSample(f"scene folder {pair.scene} not in {root}")
    files = scene_files(str(scene_dir))
    missing = [f for f in (pair.frame_a, *spec.ref_ids) if f not in files.color]
    if missing:
        raise SkipSample(f"frame(s) {missing} of {pair.scene} not found (needed as target/reference)")
    depth_path = files.depth_path(pair.frame_a)
    if depth_path is None:
        raise SkipSample(f"no depth map for frame {pair.frame_a} of {pair.scene}")
    target = read_rgb(files.color[pair.frame_a])
    refs = [read_rgb(files.color[f]) for f in spec.ref_ids]
    gt = depth_from_uint16(read_uint16_png(depth_path), DEPTH_SCALE)
    T_tgt = files.pose(pair.frame_a)
    T_gt = np.full((len(refs), 4, 4), np.nan)
    if T_tgt is not None:
        for i, f in enumerate(spec.ref_ids):
            T_ref = files.pose(f)
            if T_ref is not None:
                T_gt[i] = invert_rigid(T_ref) @ T_tgt
    meta: dict[str, Any] = {"refs": list(spec.ref_ids)}
    if not np.all(np.isfinite(T_gt[0])):
        meta["gt_pose"] = "invalid (ScanNet lost tracking) or missing"
    return EvalSample(spec.sample_id, target, refs, _intrinsics(str(scene_dir)), gt, T_gt, meta=meta)


# ----------------------------------------------------------------------------------------------- entry point
@dataclass(frozen=True)
class ScanNetEvalOptions:
    """Pair list, view count, protocols, post-processing, COLMAP."""

    pairs: str = "banet"
    splits_dir: str | None = None
    views: int = 2
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    post_process: bool = True
    colmap: ColmapOptions | None = None
    limit: int | None = None


def evaluate_scannet(
    data_root: str | os.PathLike,
    methods: dict[str, Predictor],
    descriptions: dict[str, dict[str, Any]],
    options: ScanNetEvalOptions = ScanNetEvalOptions(),
    ctx: DistContext | None = None,
    out: str | os.PathLike | None = None,
    plots: bool = True,
) -> BenchmarkResult:
    """Evaluate ``methods`` on the ScanNet test pairs; writes results (rank 0) when ``out`` is given."""
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(f"ScanNet root {root} does not exist; pass the folder holding the scene<NNNN>_<NN> folders")
    ctx = ctx or DistContext()
    pairs_path = resolve_pairs(options.pairs, options.splits_dir)
    pairs = read_scannet_test_pairs(pairs_path)
    if options.limit is not None:
        pairs = pairs[: options.limit]
    specs = [ScanNetSpec(p, reference_ids(p, options.views)) for p in pairs]
    settings = EvalSettings.from_protocol_names(options.protocols, options.post_process, options.colmap)

    def load(spec: ScanNetSpec) -> EvalSample:
        return load_sample(root, spec)

    offsets = ", ".join(f"{o:+d}·s" for o in VIEW_OFFSETS[options.views])
    header = {"data": str(root), "pairs": str(pairs_path), "views": options.views,
              "extra_ref_offsets": list(VIEW_OFFSETS[options.views]), "protocols": list(options.protocols)}
    notes = [
        f"Pairs: {pairs_path} (BA-Net/DeepV2D protocol); target = first frame of each pair.",
        f"{options.views} views: references = partner" + (f", keyframe {offsets} (s = sign(partner − keyframe))"
                                                          if offsets else "")
        + {2: " — the official test context of the 3-view model.", 3: " — the official 3-view (1/1) context.",
           5: " — the official test context of the 5-view model."}[options.views],
        "Depth: raw depth PNG as ground truth, prediction resized to it (bilinear, align_corners), no crop; "
        "variants '' raw, '_pp' flip post-processing, '_gt' per-image median scaling, '_pp_gt' both"
        + ("" if options.post_process else " (post-processing disabled)") + ".",
    ]
    title = f"ScanNet depth and pose evaluation — {options.views} views"
    return run_benchmark("scannet", title, specs, load, methods, descriptions, settings, header, notes, ctx, out,
                         plots, sample_id=lambda s: s.sample_id)
