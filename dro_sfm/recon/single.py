"""One target with its reference images: depth and relative poses written to a folder (``dro-sfm predict``)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dro_sfm.data.atomic import atomic_path, atomic_write_text
from dro_sfm.data.images import as_intrinsics, exif_focal_length_px, read_rgb
from dro_sfm.errors import InputError
from dro_sfm.models.predict import DroModel
from dro_sfm.viz.depth_color import colorize_depth

log = logging.getLogger(__name__)


@dataclass
class SingleResult:
    depth_path: Path
    poses_path: Path
    depth_range: tuple[float, float]


def default_intrinsics_for(path: Path, height: int, width: int) -> np.ndarray:
    """K [3,3] from the image's EXIF focal length, else fx = fy = 1.2·W with a warning (infer_video's rule)."""
    f = exif_focal_length_px(path)
    if f is None:
        log.warning("no intrinsics given and %s has no EXIF focal length: assuming fx = fy = 1.2 x width", path.name)
        f = 1.2 * width
    return np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1]])


def predict_files(
    model: DroModel, target: Path, refs: list[Path], out_dir: Path, K: np.ndarray | None = None
) -> SingleResult:
    """Run the model on image files and write depth (.npy metres, colourised .png) and poses (.json)."""
    if not refs:
        raise InputError("give at least one reference image besides the target")
    tgt = read_rgb(target)
    ref_imgs = [read_rgb(r) for r in refs]
    for path, img in zip(refs, ref_imgs):
        if img.shape != tgt.shape:
            raise InputError(f"{path}: size {img.shape[1]}x{img.shape[0]} differs from the target's "
                             f"{tgt.shape[1]}x{tgt.shape[0]}; all images must have one size")
    H, W = tgt.shape[:2]
    K = default_intrinsics_for(target, H, W) if K is None else as_intrinsics(K)
    pred = model.predict(tgt, ref_imgs, K)
    depth = pred.depth[0, 0].cpu().numpy().astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    depth_path = out_dir / "depth.npy"
    with atomic_path(depth_path) as tmp:
        np.save(tmp, depth)
    with atomic_path(out_dir / "depth.png") as tmp:
        Image.fromarray(colorize_depth(depth)).save(tmp, format="PNG")
    poses = {
        "convention": "T_ref_from_tgt maps target-camera points to the reference camera (x right, y down, z fwd)",
        "units": model.info.depth_units,
        "trained_weights": model.info.trained,
        "weights": model.info.name,
        "intrinsics": np.asarray(K).tolist(),
        "references": [
            {"image": str(r), "T_ref_from_tgt": pred.T_ref_from_tgt[0, i].cpu().double().numpy().tolist()}
            for i, r in enumerate(refs)
        ],
    }
    poses_path = out_dir / "poses.json"
    atomic_write_text(poses_path, json.dumps(poses, indent=1))
    valid = depth[depth > 0]
    rng = (float(valid.min()), float(valid.max())) if valid.size else (0.0, 0.0)
    return SingleResult(depth_path, poses_path, rng)
