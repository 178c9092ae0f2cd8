"""Camera intrinsics for a reconstruction: where they come from, whether they are plausible, and how they
follow an image resize.

Order of precedence (first that applies): ``--intrinsics fx,fy,cx,cy`` or ``--intrinsics FILE``; the
dataset's calibration (KITTI, ScanNet, TUM, 7-Scenes, an ``intrinsics.txt`` beside the images); the EXIF
35 mm-equivalent focal length; a default field of view (``fx = fy = 1.2 x the larger side``, about 45 degrees
horizontally for landscape images, COLMAP's prior) with a warning. Intrinsics always describe the *input*
images; the pipeline scales them to the processing resolution.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dro_sfm.data.images import as_intrinsics, read_intrinsics_txt
from dro_sfm.errors import InputError

logger = logging.getLogger(__name__)

# How far outside the image the principal point may lie, as a fraction of the image size. Real cameras keep
# it within a few percent of the centre; anything beyond this is a unit or resolution mistake.
PRINCIPAL_POINT_MARGIN = 0.25

# Labels of ``Frame.extras["intrinsics_source"]`` that mean "guessed, not measured".
GUESSED_SOURCES = ("default",)


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole K [3,3] of the input images (pixel centres at integers) and where it came from."""

    K: np.ndarray
    source: str  # "argument", "file:<path>", "calibration:<what>", "exif" or "default"

    @property
    def guessed(self) -> bool:
        return self.source in GUESSED_SOURCES


def parse_intrinsics_option(value: str) -> Intrinsics:
    """``fx,fy,cx,cy`` (four comma-separated numbers) or the path of a text file (``fx fy cx cy`` or a 3x3 /
    4x4 matrix); InputError naming the problem otherwise."""
    text = value.strip()
    path = Path(text).expanduser()
    if path.is_file():
        return Intrinsics(read_intrinsics_txt(path), f"file:{path}")
    if "," in text:
        try:
            numbers = [float(v) for v in text.split(",")]
        except ValueError as err:
            raise InputError(f"--intrinsics {value!r}: expected four numbers fx,fy,cx,cy in pixels") from err
        if len(numbers) != 4:
            raise InputError(f"--intrinsics {value!r}: expected four numbers fx,fy,cx,cy, got {len(numbers)}")
        fx, fy, cx, cy = numbers
        if not all(math.isfinite(v) for v in numbers) or fx <= 0 or fy <= 0:
            raise InputError(f"--intrinsics {value!r}: focal lengths must be positive and finite "
                             f"(got fx={fx:g}, fy={fy:g})")
        return Intrinsics(as_intrinsics(numbers, "--intrinsics"), "argument")
    raise InputError(f"--intrinsics {value!r}: neither fx,fy,cx,cy nor an existing intrinsics file")


def validate_intrinsics(K: np.ndarray, width: int, height: int, source: str) -> np.ndarray:
    """K [3,3] for a ``width`` x ``height`` image, or InputError when it cannot be right: non-finite values,
    a non-positive focal length, or a principal point far outside the image."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise InputError(f"intrinsics from {source}: need a finite 3x3 matrix, got {K.tolist()}")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if fx <= 0 or fy <= 0:
        raise InputError(f"intrinsics from {source}: focal lengths must be positive, got fx={fx:g}, fy={fy:g} px")
    mx, my = PRINCIPAL_POINT_MARGIN * width, PRINCIPAL_POINT_MARGIN * height
    if not (-mx <= cx <= width - 1 + mx and -my <= cy <= height - 1 + my):
        raise InputError(
            f"intrinsics from {source}: principal point ({cx:g}, {cy:g}) lies far outside the {width}x{height} "
            "image; are the intrinsics for another resolution? Give them for the input images "
            "(--intrinsics fx,fy,cx,cy)"
        )
    return K


def frame_intrinsics_source(extras: dict, layout: str) -> str:
    """Where a reader's K came from, as a label for run.json (``Frame.extras["intrinsics_source"]``)."""
    raw = str(extras.get("intrinsics_source", "")).strip()
    if raw in ("default", "exif", "argument"):
        return raw
    if raw:
        return f"calibration:{raw}"
    return f"calibration:{layout}"


def horizontal_fov_deg(K: np.ndarray, width: int) -> float:
    """Horizontal field of view in degrees of K [3,3] for an image ``width`` pixels wide."""
    return float(np.degrees(2.0 * np.arctan(0.5 * width / K[0, 0])))


def scale_intrinsics(K: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """K [3,3] after resizing an image from ``src_hw`` to ``dst_hw`` (H, W).

    Uses the exact half-pixel rule ``c' = (c + 0.5)·s − 0.5`` (pixel centres at integers), so that the K
    written to cameras.json, COLMAP and nerfstudio describes the resized images exactly. The datasets'
    row-scaling rule differs by (s − 1)/2 px, far below what the network resolves.
    """
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 1] *= sx
    out[0, 2] = (out[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (out[1, 2] + 0.5) * sy - 0.5
    return out
