"""Plain image folders and video files as frame streams, plus the image decoding every reader shares.

Images are decoded with Pillow, turned upright with their EXIF orientation, and converted to 8-bit RGB
(16-bit greyscale is scaled by 1/257, alpha is dropped). Intrinsics come from, in order: the caller, an
``intrinsics.txt`` (``fx fy cx cy``) in the folder, the EXIF 35 mm-equivalent focal length, and finally a
guess of ``fx = fy = 1.2·max(W, H)`` (COLMAP's prior) that is logged as a warning.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from dro_sfm.data.atomic import atomic_path, atomic_write_text
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")

# EXIF tags (CIPA DC-008): the Exif sub-IFD pointer, and the focal length in 35 mm film equivalent.
_EXIF_IFD = 0x8769
_FOCAL_35MM = 0xA405
_ORIENTATION = 0x0112
# The 35 mm equivalent is defined by the diagonal angle of view of a 36 x 24 mm frame.
_FULL_FRAME_DIAGONAL_MM = float(np.hypot(36.0, 24.0))
# COLMAP's prior focal length factor for images without usable EXIF.
DEFAULT_FOCAL_FACTOR = 1.2

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``frame2`` < ``frame10``."""
    parts = re.split(r"(\d+)", name)
    # Case and zero-padding only break ties between names that are otherwise equal.
    primary = tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts)
    return primary, name


def natural_sorted(paths: Iterable[Path]) -> list[Path]:
    """Paths sorted by file name in natural order."""
    return sorted(paths, key=lambda p: natural_key(p.name))


def _pil_to_rgb8(im: Image.Image) -> np.ndarray:
    """Any Pillow image to RGB uint8 [H,W,3]: 16/32-bit grey scaled to 8 bits, alpha dropped."""
    if im.mode.startswith("I;16") or im.mode == "I":
        # 32-bit integer images are PNG/TIFF 16-bit greyscale in practice; values beyond 16 bits saturate.
        grey = np.clip(np.asarray(im, dtype=np.float64), 0, 65535) / 257.0
        grey8 = np.round(grey).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        # Float images hold either [0,1] or [0,255] intensities; the range tells which.
        top = 1.0 if finite.size == 0 or finite.max() <= 1.0 else 255.0
        grey8 = np.round(np.clip(np.nan_to_num(arr), 0, top) * (255.0 / top)).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to upright RGB uint8 [H,W,3]; raises InputError naming the file on failure."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            upright = ImageOps.exif_transpose(im)
            upright.load()
            return _pil_to_rgb8(upright)
    except FileNotFoundError as err:
        raise InputError(f"{path}: image file not found") from err
    except IsADirectoryError as err:
        raise InputError(f"{path}: expected an image file, found a directory") from err
    except _DECODE_ERRORS as err:
        raise InputError(
            f"{path}: cannot decode image ({err}); the file is corrupt, truncated or not an image. "
            "Replace or remove it (image folders accept skip_bad=True to skip such files)"
        ) from err


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Upright (width, height) of an image from its header only (EXIF orientations 5-8 swap the sides)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(_ORIENTATION, 1)
    except FileNotFoundError as err:
        raise InputError(f"{path}: image file not found") from err
    except _DECODE_ERRORS as err:
        raise InputError(f"{path}: not a readable image ({err}); replace or remove the file") from err
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def exif_focal_length_px(path: str | os.PathLike) -> float | None:
    """Focal length in pixels of the upright image from EXIF ``FocalLengthIn35mmFilm``, or None without it.

    The 35 mm equivalent matches the diagonal field of view of a 36 x 24 mm frame, so
    ``f_px = f_35 · diag_px / 43.27`` (for a 3:2 image this is ``f_35 / 36 · width``).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            f35 = im.getexif().get_ifd(_EXIF_IFD).get(_FOCAL_35MM)
    except FileNotFoundError as err:
        raise InputError(f"{path}: image file not found") from err
    except _DECODE_ERRORS:
        return None
    try:
        f35 = float(f35) if f35 is not None else 0.0
    except (TypeError, ValueError):
        return None
    if not np.isfinite(f35) or f35 <= 0:
        return None
    return f35 * float(np.hypot(width, height)) / _FULL_FRAME_DIAGONAL_MM


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Pinhole K [3,3] float64."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def as_intrinsics(value: np.ndarray | Sequence[float], source: str = "intrinsics") -> np.ndarray:
    """K [3,3] from a 3x3 / 4x4 matrix or ``(fx, fy, cx, cy)``; InputError naming ``source`` otherwise."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 4:
        K = intrinsics_matrix(*arr.reshape(-1).tolist())
    elif arr.size == 9:
        K = arr.reshape(3, 3).copy()
    elif arr.size == 16:
        K = arr.reshape(4, 4)[:3, :3].copy()
    else:
        raise InputError(f"{source}: expected fx fy cx cy, a 3x3 or a 4x4 matrix, got {arr.size} numbers")
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]):
        raise InputError(f"{source}: not a valid pinhole matrix (need fx, fy > 0 and last row 0 0 1): {K.tolist()}")
    return K


def require_same_intrinsics(K: np.ndarray, K_first: np.ndarray, label: str, why: str) -> None:
    """InputError unless K [3,3] equals the first frame's K_first [3,3]; ``why`` says the layout keeps one K."""
    # Writers compare against the K they already stored: only float round-off may differ.
    if not np.allclose(K, K_first, rtol=1e-9, atol=1e-9):
        raise InputError(f"{label}: intrinsics differ from the first frame's; {why}")


def read_intrinsics_txt(path: str | os.PathLike) -> np.ndarray:
    """K [3,3] from a text file holding ``fx fy cx cy`` or a 3x3 / 4x4 matrix (whitespace separated)."""
    path = Path(path)
    try:
        tokens = path.read_text(encoding="utf-8").split()
    except FileNotFoundError as err:
        raise InputError(f"{path}: intrinsics file not found") from err
    except OSError as err:
        raise InputError(f"{path}: cannot read intrinsics file ({err.strerror})") from err
    try:
        values = [float(t) for t in tokens]
    except ValueError as err:
        raise InputError(f"{path}: intrinsics file must contain only numbers") from err
    return as_intrinsics(values, str(path))


def write_intrinsics_txt(path: str | os.PathLike, K: np.ndarray) -> Path:
    """Write ``fx fy cx cy`` of K [3,3] on one line."""
    path = Path(path)
    values = (K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    # repr of a Python float is the shortest text that reads back to the same double.
    atomic_write_text(path, " ".join(repr(float(v)) for v in values) + "\n")
    return path


def default_intrinsics(width: int, height: int, focal_px: float | None = None) -> np.ndarray:
    """K [3,3] with the principal point at the image centre (pixel centres at integers)."""
    f = focal_px if focal_px is not None else DEFAULT_FOCAL_FACTOR * max(width, height)
    return intrinsics_matrix(f, f, (width - 1) / 2.0, (height - 1) / 2.0)


def save_rgb(path: str | os.PathLike, image: np.ndarray, quality: int = 95) -> Path:
    """Write RGB uint8 [H,W,3] atomically; the format follows the extension (JPEG at ``quality``)."""
    path = Path(path)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{path}: frame image must be uint8 [H,W,3], got {image.dtype} {image.shape}")
    kwargs = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, **kwargs)
    return path


def save_uint16_png(path: str | os.PathLike, values: np.ndarray) -> Path:
    """Write a uint16 [H,W] array as a 16-bit greyscale PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(values, dtype=np.uint16)).save(tmp)
    return path


def read_uint16_png(path: str | os.PathLike) -> np.ndarray:
    """Read a 16-bit greyscale PNG as uint16 [H,W]; InputError naming the file on failure."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError as err:
        raise InputError(f"{path}: depth file not found") from err
    except _DECODE_ERRORS as err:
        raise InputError(f"{path}: cannot decode depth image ({err}); the file is corrupt or truncated") from err
    if arr.ndim != 2 or arr.dtype not in (np.uint16, np.int32, np.uint8):
        raise InputError(f"{path}: expected a single-channel 16-bit depth PNG, got {arr.dtype} {arr.shape}")
    return arr.astype(np.uint16)


def save_frame_depth_png(path: str | os.PathLike, frame: Frame, scale: float, label: str) -> Path:
    """Write the frame's depth [H,W] (metres) as a uint16 PNG of ``depth·scale``; it must match the image size."""
    if frame.depth.shape != frame.image.shape[:2]:
        raise InputError(f"{label}: depth {frame.depth.shape} and image {frame.image.shape[:2]} differ")
    return save_uint16_png(path, depth_to_uint16(frame.depth, scale, label))


def depth_from_uint16(raw: np.ndarray, scale: float, invalid: Sequence[int] = (0,)) -> np.ndarray:
    """Metric depth [H,W] float32 from integer depth [H,W] divided by ``scale``; ``invalid`` codes become 0."""
    depth = raw.astype(np.float32) / np.float32(scale)
    for code in invalid:
        depth[raw == code] = 0.0
    return depth


def depth_to_uint16(depth: np.ndarray, scale: float, source: str) -> np.ndarray:
    """Integer depth [H,W] uint16 = round(depth·scale); values beyond the range become 0 with a warning."""
    scaled = np.round(np.nan_to_num(depth.astype(np.float64), nan=0.0, posinf=0.0) * scale)
    over = scaled > 65535
    if over.any():
        logger.warning(
            "%s: %d depth values above %.3f m cannot be stored as uint16/%g and are written as invalid (0)",
            source, int(over.sum()), 65535 / scale, scale,
        )
    scaled[over | (scaled < 0)] = 0
    return scaled.astype(np.uint16)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (by extension, hidden files excluded) in natural order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory")
    files = [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return natural_sorted(files)


class ImageFolder:
    """A folder of images as a stream of frames (no depth, no poses), in natural file-name order.

    Every header is checked on construction so that a mixed-size folder fails before any work is done;
    pixels are decoded only while iterating. ``skip_bad`` turns unreadable files into logged warnings.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        intrinsics: np.ndarray | Sequence[float] | None = None,
        step: int = 1,
        skip_bad: bool = False,
    ) -> None:
        self.folder = Path(folder)
        if step < 1:
            raise InputError(f"{self.folder}: frame step must be >= 1, got {step}")
        self.skip_bad = skip_bad
        paths = list_images(self.folder)
        if not paths:
            raise InputError(
                f"{self.folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "point to a folder that contains the frames"
            )
        self.paths: list[Path] = []
        self.size: tuple[int, int] | None = None
        for path in paths[::step]:
            try:
                size = image_size(path)
            except InputError as err:
                if not skip_bad:
                    raise
                logger.warning("skipping %s", err)
                continue
            if self.size is None:
                self.size = size
            elif size != self.size:
                raise InputError(
                    f"{path}: image is {size[0]}x{size[1]} but {self.paths[0].name} is "
                    f"{self.size[0]}x{self.size[1]}; all frames of a sequence must have the same size "
                    "(resize them or split the folder)"
                )
            self.paths.append(path)
        if not self.paths:
            raise InputError(f"{self.folder}: none of the {len(paths)} images could be read")
        self.K, self.intrinsics_source = self._intrinsics(intrinsics)

    def _intrinsics(self, intrinsics: np.ndarray | Sequence[float] | None) -> tuple[np.ndarray, str]:
        width, height = self.size
        if intrinsics is not None:
            return as_intrinsics(intrinsics), "argument"
        txt = self.folder / "intrinsics.txt"
        if txt.is_file():
            return read_intrinsics_txt(txt), str(txt)
        focal = exif_focal_length_px(self.paths[0])
        if focal is not None:
            return default_intrinsics(width, height, focal), "exif"
        logger.warning(
            "%s: no intrinsics given, no intrinsics.txt and no EXIF focal length; guessing fx = fy = %.1f px "
            "(%.1f x the larger side). Pass intrinsics for metric results.",
            self.folder, DEFAULT_FOCAL_FACTOR * max(width, height), DEFAULT_FOCAL_FACTOR,
        )
        return default_intrinsics(width, height), "default"

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for path in self.paths:
            try:
                image = read_rgb(path)
            except InputError as err:
                if not self.skip_bad:
                    raise
                logger.warning("skipping %s", err)
                continue
            if (image.shape[1], image.shape[0]) != self.size:
                raise InputError(f"{path}: decoded size {image.shape[1]}x{image.shape[0]} differs from its header")
            yield Frame(
                image=image,
                K=self.K.copy(),
                name=path.stem,
                extras={"path": str(path), "intrinsics_source": self.intrinsics_source},
            )


class VideoFile:
    """A video file (decoded by imageio-ffmpeg) as a stream of every ``step``-th frame."""

    def __init__(
        self,
        path: str | os.PathLike,
        intrinsics: np.ndarray | Sequence[float] | None = None,
        step: int = 1,
        max_frames: int | None = None,
    ) -> None:
        import imageio.v3 as iio

        self.path = Path(path)
        if step < 1:
            raise InputError(f"{self.path}: frame step must be >= 1, got {step}")
        if not self.path.is_file():
            raise InputError(f"{self.path}: video file not found")
        self.step = step
        self.max_frames = max_frames
        try:
            meta = iio.immeta(self.path, plugin="FFMPEG")
        except Exception as err:  # imageio raises several unrelated types for undecodable input
            raise InputError(f"{self.path}: cannot open video ({err}); is it a video file ffmpeg can read?") from err
        self.fps = float(meta.get("fps") or 0.0) or None
        width, height = meta.get("size") or (0, 0)
        if width <= 0 or height <= 0:
            raise InputError(f"{self.path}: video reports no frame size; the file may be corrupt")
        self.size = (int(width), int(height))
        if intrinsics is not None:
            self.K, self.intrinsics_source = as_intrinsics(intrinsics), "argument"
        else:
            logger.warning(
                "%s: no intrinsics given for the video; guessing fx = fy = %.1f px",
                self.path, DEFAULT_FOCAL_FACTOR * max(self.size),
            )
            self.K, self.intrinsics_source = default_intrinsics(*self.size), "default"

    def __iter__(self) -> Iterator[Frame]:
        import imageio.v3 as iio

        produced = 0
        try:
            for index, image in enumerate(iio.imiter(self.path, plugin="FFMPEG")):
                if index % self.step:
                    continue
                if self.max_frames is not None and produced >= self.max_frames:
                    return
                image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
                yield Frame(
                    image=image,
                    K=self.K.copy(),
                    timestamp=index / self.fps if self.fps else None,
                    name=f"{self.path.stem}_{index:06d}",
                    extras={"path": str(self.path), "video_frame": index, "intrinsics_source": self.intrinsics_source},
                )
                produced += 1
        except (OSError, RuntimeError, ValueError) as err:
            raise InputError(f"{self.path}: video decoding failed after {produced} frames ({err})") from err


def write_image_folder(frames: Iterable[Frame], out_dir: str | os.PathLike, digits: int = 6) -> Path:
    """Write frames as ``000000.png, 000001.png, ...`` plus ``intrinsics.txt`` (``fx fy cx cy``)."""
    out_dir = Path(out_dir)
    K0: np.ndarray | None = None
    count = 0
    for index, frame in enumerate(tqdm(frames, desc=f"writing {out_dir.name}", unit="frame")):
        if K0 is None:
            K0 = np.asarray(frame.K, dtype=np.float64)
            write_intrinsics_txt(out_dir / "intrinsics.txt", K0)
        else:
            require_same_intrinsics(frame.K, K0, frame.label(index), "an image folder stores a single intrinsics.txt")
        save_rgb(out_dir / f"{index:0{digits}d}.png", frame.image)
        count += 1
    if count == 0:
        raise InputError(f"{out_dir}: no frames to write")
    return out_dir
