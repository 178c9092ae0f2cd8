"""Classical structure-from-motion baseline with pycolmap: SIFT, exhaustive matching, incremental mapping.

The intrinsics are known and held fixed (PINHOLE camera, no focal/principal-point refinement), so the
baseline solves the same problem as DRO: poses (and structure) of calibrated images. COLMAP's pixel
centres are at +0.5 (the top-left pixel covers [0, 1]), dro-sfm's at integer coordinates, so
``cx + 0.5, cy + 0.5`` are handed to COLMAP. The reconstruction is up to an unknown scale.

When COLMAP builds several disconnected models, the one with the most registered images is kept; every
image outside it is reported as not registered.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dro_sfm.errors import ConfigError, InputError
from dro_sfm.geometry.pose import invert_rigid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ColmapOptions:
    """Knobs of the baseline.

    COLMAP's mapper defaults target large unordered photo collections. Three are changed because the
    baseline runs on a few frames of a video (two to five views per test sample, or a short sequence):
    two-view tracks are triangulated (by default they are ignored, which leaves a two-view problem with no
    3-D point at all), the initial pair may move straight forward (a driving car; the default rejects
    pairs whose motion is more than 95% along the viewing direction), and it needs a triangulation angle
    of only 1° (default 16°, far above the parallax of consecutive video frames).
    """

    max_image_size: int = 1600          # SIFT runs on images downscaled to this longest side
    max_num_features: int = 8192
    min_model_size: int = 2             # COLMAP's default (10) would reject two- and three-view problems
    init_min_num_inliers: int = 100     # COLMAP's default; lower it for tiny images
    init_min_tri_angle: float = 1.0     # degrees (COLMAP: 16)
    init_max_forward_motion: float = 1.0  # COLMAP: 0.95; 1.0 admits pure forward motion (driving)
    ignore_two_view_tracks: bool = False  # COLMAP: True
    num_threads: int = -1               # -1 = all cores
    seed: int = 0                       # fixed RANSAC seed so that a run is repeatable

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass
class ColmapResult:
    """Outcome per input image (in input order): registered or not, and camera-to-world [4,4] poses."""

    names: list[str]
    registered: list[bool]
    T_world_from_cam: dict[str, np.ndarray] = field(repr=False)
    n_points3d: int = 0
    n_models: int = 0
    message: str = ""

    @property
    def n_registered(self) -> int:
        return sum(self.registered)

    @property
    def unregistered(self) -> list[str]:
        """Names of the images that are not in the kept model."""
        return [n for n, ok in zip(self.names, self.registered, strict=True) if not ok]

    def pose(self, name: str) -> np.ndarray | None:
        """Camera-to-world [4,4] of ``name``, or None if it is not registered."""
        return self.T_world_from_cam.get(name)

    def relative_pose(self, name_to: str, name_from: str) -> np.ndarray | None:
        """T_to_from [4,4] (points of camera ``name_from`` into camera ``name_to``), None unless both registered."""
        a, b = self.pose(name_to), self.pose(name_from)
        if a is None or b is None:
            return None
        return invert_rigid(a) @ b

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (no poses)."""
        return {
            "n_images": len(self.names),
            "n_registered": self.n_registered,
            "unregistered": self.unregistered,
            "n_models": self.n_models,
            "n_points3d": self.n_points3d,
            "message": self.message,
        }


def _import_pycolmap():
    try:
        import pycolmap
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ConfigError(
            "the COLMAP baseline needs pycolmap; install it with `pip install 'dro-sfm[colmap]'` "
            "(or `pip install pycolmap`), or run without --baselines"
        ) from err
    return pycolmap


def _write_images(images: Sequence[np.ndarray], names: Sequence[str], folder: Path) -> tuple[int, int]:
    """Save RGB images [H,W,3] uint8 as PNG; returns their common (height, width)."""
    size = None
    for image, name in zip(images, names, strict=True):
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise InputError(f"COLMAP baseline: image {name} must be RGB uint8 [H,W,3], got {arr.dtype} {arr.shape}")
        if size is None:
            size = arr.shape[:2]
        elif arr.shape[:2] != size:
            raise InputError(f"COLMAP baseline: image {name} is {arr.shape[1]}x{arr.shape[0]}, the first "
                             f"{size[1]}x{size[0]}; one camera needs one image size")
        Image.fromarray(arr).save(folder / name)
    return size  # type: ignore[return-value]


def run_colmap(
    images: Sequence[np.ndarray],
    K: np.ndarray,
    names: Sequence[str] | None = None,
    options: ColmapOptions | None = None,
    work_dir: str | os.PathLike | None = None,
) -> ColmapResult:
    """Reconstruct RGB images [N][H,W,3] (uint8) sharing intrinsics K [3,3]; poses up to scale.

    ``names`` label the images in the result (default ``000000``, ...); ``work_dir`` keeps COLMAP's database and
    model there (default: a temporary folder that is removed).
    """
    pycolmap = _import_pycolmap()
    opts = options or ColmapOptions()
    n = len(images)
    if n < 2:
        raise InputError(f"COLMAP needs at least two images, got {n}")
    names = [f"{i:06d}" for i in range(n)] if names is None else [str(x) for x in names]
    if len(names) != n or len(set(names)) != n:
        raise InputError("COLMAP baseline: need one unique name per image")
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"COLMAP baseline: K must be 3x3 with positive focal lengths, got {K.tolist()}")
    with tempfile.TemporaryDirectory(prefix="dro_sfm_colmap_") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        image_dir, model_dir = root / "images", root / "sparse"
        image_dir.mkdir(parents=True, exist_ok=True)
        model_dir.mkdir(parents=True, exist_ok=True)
        database = root / "database.db"
        if database.exists():
            database.unlink()
        # COLMAP sees neutral file names; results are reported under the caller's names.
        files = [f"{i:06d}.png" for i in range(n)]
        _write_images(images, files, image_dir)
        result = _reconstruct(pycolmap, database, image_dir, model_dir, files, K, opts)
    by_file = dict(zip(files, names, strict=True))
    result.names = list(names)
    result.T_world_from_cam = {by_file[f]: T for f, T in result.T_world_from_cam.items()}
    return result


def _reconstruct(pycolmap, database: Path, image_dir: Path, model_dir: Path, names: list[str], K: np.ndarray,
                 opts: ColmapOptions) -> ColmapResult:
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "PINHOLE"
    reader.camera_params = ",".join(repr(float(v)) for v in (K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5))
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.use_gpu = False
    extraction.num_threads = opts.num_threads
    extraction.max_image_size = opts.max_image_size
    extraction.sift.max_num_features = opts.max_num_features
    matching = pycolmap.FeatureMatchingOptions()
    matching.use_gpu = False
    matching.num_threads = opts.num_threads
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.num_threads = opts.num_threads
    mapping.min_model_size = min(opts.min_model_size, len(names))
    mapping.ba_refine_focal_length = False
    mapping.ba_refine_principal_point = False
    mapping.ba_refine_extra_params = False
    mapping.random_seed = opts.seed
    mapping.mapper.init_min_num_inliers = opts.init_min_num_inliers
    mapping.mapper.init_min_tri_angle = opts.init_min_tri_angle
    mapping.mapper.init_max_forward_motion = opts.init_max_forward_motion
    mapping.triangulation.ignore_two_view_tracks = opts.ignore_two_view_tracks
    mapping.mapper.abs_pose_refine_focal_length = False
    mapping.mapper.abs_pose_refine_extra_params = False
    cpu = pycolmap.Device.cpu
    pycolmap.extract_features(database, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, extraction_options=extraction, device=cpu)
    pycolmap.match_exhaustive(database, matching_options=matching, device=cpu)
    models = pycolmap.incremental_mapping(database, image_dir, model_dir, options=mapping)
    poses: dict[str, np.ndarray] = {}
    n_points = 0
    if models:
        best = max(models.values(), key=lambda rec: rec.num_reg_images())
        n_points = int(best.num_points3D())
        for image in best.images.values():
            if not _has_pose(image):
                continue
            cam_from_world = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
            T_cam_from_world = np.eye(4)
            T_cam_from_world[:3, :] = np.asarray(cam_from_world.matrix(), dtype=np.float64)
            poses[image.name] = invert_rigid(T_cam_from_world)
    registered = [name in poses for name in names]
    message = "" if models else "COLMAP found no initial image pair (too few matches or too little parallax)"
    if models and not all(registered):
        message = f"{len(names) - sum(registered)} of {len(names)} images not registered"
    logger.info("COLMAP registered %d of %d images (%d models)", sum(registered), len(names), len(models))
    return ColmapResult(list(names), registered, poses, n_points, len(models), message)


def _has_pose(image) -> bool:
    has = getattr(image, "has_pose", None)
    if has is None:
        return bool(getattr(image, "registered", True))
    return bool(has() if callable(has) else has)


def quiet_colmap_logging() -> None:
    """Keep COLMAP's INFO, WARNING and ERROR lines off the terminal; failures are reported in the results."""
    try:
        import pycolmap
    except ImportError:  # pragma: no cover
        return
    pycolmap.logging.minloglevel = 3
