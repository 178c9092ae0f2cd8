"""The run directory written by ``dro-sfm reconstruct``: layout, per-frame files, ``cameras.json``, ``run.json``.

Layout (see docs/outputs.md for units and conventions)::

    images/NNNNNN.png      RGB at the processed resolution      depth/NNNNNN.npy|png   z-depth (metres)
    depth_vis/NNNNNN.png   colourised inverse depth             confidence/NNNNNN.npy|png  in [0,1]
    cameras.json           intrinsics + per-frame camera-to-world poses (the index of the run)
    run.json               inputs, options, versions, timings

Every file is written atomically, so a crashed run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dro_sfm.data.atomic import atomic_write_bytes, atomic_write_text
from dro_sfm.errors import InputError, OutputError
from dro_sfm.geometry.pose import check_rigid

logger = logging.getLogger(__name__)

CAMERAS_JSON = "cameras.json"
RUN_JSON = "run.json"
CAMERAS_FORMAT = "dro-sfm-cameras"
CAMERAS_VERSION = 1
FRAME_DIRS = ("images", "depth", "depth_vis", "confidence")

# uint16 depth PNG scales (metres per unit): millimetres cover 65.5 m, KITTI's 1/256 m covers 256 m.
DEPTH_PNG_SCALE_MM = 0.001
DEPTH_PNG_SCALE_KITTI = 1.0 / 256.0


def frame_name(index: int) -> str:
    """Zero-padded file stem of frame ``index`` (``000042``)."""
    if index < 0:
        raise InputError(f"frame index must be >= 0, got {index}")
    return f"{index:06d}"


@dataclass
class CameraRecord:
    """One frame of ``cameras.json``: its index, file stem, timestamp, intrinsics [3,3] and pose [4,4]."""

    index: int
    name: str
    K: np.ndarray
    T_world_from_cam: np.ndarray
    timestamp: float
    source: str = ""


@dataclass
class RunCameras:
    """Contents of ``cameras.json``: image size, depth PNG scale and the frames sorted by index."""

    width: int
    height: int
    frames: list[CameraRecord]
    depth_png_scale: float | None = None
    has_confidence: bool = True
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def shared_intrinsics(self) -> bool:
        """True when every frame has the same K (one COLMAP camera, top-level nerfstudio intrinsics)."""
        return all(np.allclose(f.K, self.frames[0].K, rtol=0, atol=1e-9) for f in self.frames)

    def poses(self) -> np.ndarray:
        """Camera-to-world poses [N,4,4] in frame order."""
        return np.stack([f.T_world_from_cam for f in self.frames]) if self.frames else np.zeros((0, 4, 4))


class RunLayout:
    """Paths inside a run directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def frame_file(self, kind: str, name: str, ext: str) -> Path:
        """``root/kind/name.ext`` for one of ``FRAME_DIRS``."""
        if kind not in FRAME_DIRS:
            raise ValueError(f"unknown per-frame folder {kind!r}; expected one of {FRAME_DIRS}")
        return self.root / kind / f"{name}.{ext}"

    @property
    def cameras_json(self) -> Path:
        return self.root / CAMERAS_JSON

    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def pointcloud(self) -> Path:
        return self.root / "pointcloud.ply"

    @property
    def mesh(self) -> Path:
        return self.root / "mesh.ply"

    @property
    def poses_tum(self) -> Path:
        return self.root / "poses_tum.txt"

    @property
    def poses_kitti(self) -> Path:
        return self.root / "poses_kitti.txt"

    @property
    def colmap_dir(self) -> Path:
        return self.root / "colmap"

    @property
    def transforms_json(self) -> Path:
        return self.root / "transforms.json"

    @property
    def summary_png(self) -> Path:
        return self.root / "summary.png"


def prepare_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create the run directory ``path`` and check it is writable; refuse to mix with an earlier run.

    Raises OutputError when ``path`` is a file, cannot be created or written, or already holds a run
    (``cameras.json`` or per-frame files) and ``overwrite`` is False. With ``overwrite`` the per-frame files
    of the earlier run are removed so that stale frames cannot leak into the new one.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise OutputError(f"output directory {root} is a file; choose a directory path for the run")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise OutputError(f"cannot create output directory {root}: a parent path is a file") from err
    except OSError as err:
        raise OutputError(f"cannot create output directory {root}: {err.strerror}; choose another path") from err
    probe = root / f".dro_sfm_write_test_{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"output directory {root} is not writable ({err.strerror}); "
                          "fix its permissions or choose another path") from err
    layout = RunLayout(root)
    old_frames = [p for kind in FRAME_DIRS for p in _frame_files(root / kind)]
    if layout.cameras_json.exists() or old_frames:
        if not overwrite:
            raise OutputError(f"output directory {root} already contains a dro-sfm run; "
                              "pass --overwrite to replace it or choose an empty directory")
        for p in old_frames:
            p.unlink()
        logger.info("removed %d per-frame files of the previous run in %s", len(old_frames), root)
    return root


def _frame_files(folder: Path) -> list[Path]:
    """Files named like a frame (six digits + .npy/.png) in ``folder``; other files are the user's."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir()
            if p.suffix in (".npy", ".png") and len(p.stem) == 6 and p.stem.isdigit()]


# --- per-frame files -------------------------------------------------------------------------------------


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 [H,W] / [H,W,3] or uint16 [H,W] array as PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as .npy, atomically."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def read_npy(path: Path, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a float32 [H,W] map written by ``write_npy``; InputError if missing, corrupt or mis-sized."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise InputError(f"{path} is missing; the run directory is incomplete (re-run reconstruct)") from err
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path} is not a readable .npy file ({err}); re-run reconstruct") from err
    if expected_shape is not None and arr.shape != expected_shape:
        raise InputError(f"{path} has shape {arr.shape}, but cameras.json says {expected_shape}")
    return arr.astype(np.float32, copy=False)


def read_rgb(path: Path, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an RGB image [H,W,3] uint8; InputError if missing, unreadable or mis-sized."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError as err:
        raise InputError(f"{path} is missing; the run directory is incomplete (re-run reconstruct)") from err
    except OSError as err:
        raise InputError(f"{path} is not a readable image ({err})") from err
    if expected_shape is not None and rgb.shape[:2] != expected_shape:
        raise InputError(f"{path} has size {rgb.shape[1]}x{rgb.shape[0]}, but cameras.json says "
                         f"{expected_shape[1]}x{expected_shape[0]}")
    return rgb


def depth_to_png16(depth: np.ndarray, scale: float) -> np.ndarray:
    """Depth [H,W] metres to uint16 [H,W] units of ``scale`` metres; 0 stays invalid, overflow is clipped."""
    units = np.where(np.isfinite(depth) & (depth > 0), np.round(depth / scale), 0.0)
    return np.clip(units, 0, 65535).astype(np.uint16)


def choose_depth_png_scale(max_depth: float) -> float:
    """Metres per uint16 unit: 1 mm when the deepest value fits in 65.5 m (indoor), else KITTI's 1/256 m."""
    return DEPTH_PNG_SCALE_MM if max_depth <= 65535 * DEPTH_PNG_SCALE_MM else DEPTH_PNG_SCALE_KITTI


@dataclass
class FrameData:
    """One frame read back from a run directory (arrays at the processed resolution)."""

    record: CameraRecord
    image: np.ndarray  # [H,W,3] uint8
    depth: np.ndarray  # [H,W] float32 metres, 0 = invalid
    confidence: np.ndarray  # [H,W] float32 in [0,1]


def read_frame(root: str | os.PathLike, cameras: RunCameras, record: CameraRecord,
               with_image: bool = True) -> FrameData:
    """Read one frame's image, depth and confidence from the run directory ``root``."""
    layout, shape = RunLayout(root), (cameras.height, cameras.width)
    depth = read_npy(layout.frame_file("depth", record.name, "npy"), shape)
    conf_path = layout.frame_file("confidence", record.name, "npy")
    conf = read_npy(conf_path, shape) if conf_path.exists() else np.ones(shape, np.float32)
    image = read_rgb(layout.frame_file("images", record.name, "png"), shape) if with_image else \
        np.zeros((0, 0, 3), np.uint8)
    return FrameData(record, image, depth, conf)


# --- cameras.json ----------------------------------------------------------------------------------------


def write_cameras_json(root: str | os.PathLike, cameras: RunCameras) -> Path:
    """Write ``cameras.json`` (intrinsics, size, depth PNG scale, per-frame K and camera-to-world)."""
    if not cameras.frames:
        raise OutputError(f"no frames to write to {RunLayout(root).cameras_json}; the run produced no output")
    K0 = cameras.frames[0].K
    doc: dict[str, Any] = {
        "format": CAMERAS_FORMAT,
        "version": CAMERAS_VERSION,
        "convention": "camera-to-world, camera axes x right / y down / z forward (OpenCV); "
                      "pixel (0,0) is the centre of the top-left pixel; metres",
        "width": cameras.width,
        "height": cameras.height,
        "intrinsics": _intrinsics_dict(K0),
        "shared_intrinsics": cameras.shared_intrinsics,
        "depth_units": "metres",
        "depth_png_scale": cameras.depth_png_scale,
        "has_confidence": cameras.has_confidence,
        "frames": [
            {
                "index": f.index,
                "name": f.name,
                "timestamp": f.timestamp,
                "source": f.source,
                "image": f"images/{f.name}.png",
                "depth": f"depth/{f.name}.npy",
                "depth_png": f"depth/{f.name}.png",
                "confidence": f"confidence/{f.name}.npy",
                "intrinsics": _intrinsics_dict(f.K),
                "T_world_from_cam": np.asarray(f.T_world_from_cam, dtype=np.float64).tolist(),
            }
            for f in cameras.frames
        ],
    }
    doc.update(cameras.extras)
    path = RunLayout(root).cameras_json
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def _intrinsics_dict(K: np.ndarray) -> dict[str, float]:
    return {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}


def _K_from_dict(d: dict[str, Any], source: str) -> np.ndarray:
    try:
        fx, fy, cx, cy = (float(d[k]) for k in ("fx", "fy", "cx", "cy"))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{source}: intrinsics need numeric fx, fy, cx, cy ({err})") from err
    if fx <= 0 or fy <= 0:
        raise InputError(f"{source}: focal lengths must be positive, got fx={fx}, fy={fy}")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def load_cameras(root: str | os.PathLike) -> RunCameras:
    """Read and validate ``cameras.json`` of the run directory ``root``."""
    path = RunLayout(root).cameras_json
    if not Path(root).is_dir():
        raise InputError(f"run directory {root} does not exist; pass the output folder of dro-sfm reconstruct")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InputError(f"{path} is missing: {root} is not a finished dro-sfm run "
                         "(reconstruct writes cameras.json last; re-run it)") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({err}); re-run reconstruct") from err
    if not isinstance(doc, dict) or doc.get("format") != CAMERAS_FORMAT:
        raise InputError(f"{path} is not a dro-sfm cameras file (missing \"format\": \"{CAMERAS_FORMAT}\")")
    try:
        width, height = int(doc["width"]), int(doc["height"])
        raw_frames = list(doc["frames"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: needs integer width, height and a frames list ({err})") from err
    if not raw_frames:
        raise InputError(f"{path} lists no frames; the run produced no output")
    shared_K = _K_from_dict(doc["intrinsics"], str(path)) if "intrinsics" in doc else None
    frames = []
    for i, fr in enumerate(raw_frames):
        where = f"{path} frame {i}"
        try:
            index, name = int(fr["index"]), str(fr["name"])
            T = np.asarray(fr["T_world_from_cam"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{where}: needs index, name and T_world_from_cam ({err})") from err
        if "intrinsics" in fr:
            K = _K_from_dict(fr["intrinsics"], where)
        elif shared_K is not None:
            K = shared_K
        else:
            raise InputError(f"{where}: no intrinsics (neither per frame nor top-level)")
        ts = fr.get("timestamp")
        frames.append(CameraRecord(index=index, name=name, K=K, T_world_from_cam=check_rigid(T, where),
                                   timestamp=float(index if ts is None else ts), source=str(fr.get("source", ""))))
    frames.sort(key=lambda f: f.index)
    if len({f.index for f in frames}) != len(frames):
        raise InputError(f"{path}: duplicate frame indices")
    scale = doc.get("depth_png_scale")
    extras = {k: doc[k] for k in ("fusion_options",) if isinstance(doc.get(k), dict)}
    return RunCameras(width=width, height=height, frames=frames,
                      depth_png_scale=None if scale is None else float(scale),
                      has_confidence=bool(doc.get("has_confidence", True)), extras=extras)


# --- run.json --------------------------------------------------------------------------------------------


def package_versions(names: tuple[str, ...] = ("dro-sfm", "torch", "numpy", "open3d", "open3d-cpu", "pycolmap",
                                               "scipy", "pillow")) -> dict[str, str]:
    """Installed versions of the packages that shape a run's results (read from metadata, no imports)."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


class RunRecord:
    """Collects what ``run.json`` records: inputs, options, versions and wall time per stage.

    ``with record.stage("depth"):`` adds the elapsed seconds to stage ``depth`` (repeated entries add up,
    so a per-frame stage can be timed inside the frame loop).
    """

    def __init__(self, inputs: dict[str, Any] | None = None, options: dict[str, Any] | None = None):
        self.inputs: dict[str, Any] = dict(inputs or {})
        self.options: dict[str, Any] = dict(options or {})
        self.timings: dict[str, float] = {}
        self.results: dict[str, Any] = {}
        self.started = time.time()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def add_timings(self, timings: dict[str, float]) -> None:
        for name, seconds in timings.items():
            self.timings[name] = self.timings.get(name, 0.0) + float(seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "dro-sfm-run",
            "version": 1,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "total_seconds": time.time() - self.started,
            "command": sys.argv,
            "inputs": self.inputs,
            "options": self.options,
            "versions": package_versions(),
            "timings_seconds": self.timings,
            "results": self.results,
        }

    def write(self, root: str | os.PathLike) -> Path:
        """Write ``run.json`` into the run directory ``root``; non-JSON values are stored as strings."""
        path = RunLayout(root).run_json
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, default=_json_default) + "\n")
        return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


__all__ = [
    "CameraRecord", "FrameData", "RunCameras", "RunLayout", "RunRecord", "choose_depth_png_scale",
    "depth_to_png16", "frame_name", "load_cameras", "prepare_output_dir", "read_frame", "read_npy", "read_rgb",
    "write_cameras_json", "write_npy", "write_png",
]
