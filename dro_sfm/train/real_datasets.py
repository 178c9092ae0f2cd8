"""Real training datasets: KITTI raw (Eigen-Zhou split), ScanNet, TUM RGB-D, 7-Scenes and plain image folders.

A dataset is a list of *windows* of one sequence: ``refs_back`` frames, the target and ``refs_forward``
frames, ``frame_stride`` frames apart, read through the readers of :mod:`dro_sfm.data`. Sample ``index``
picks a window through a permutation drawn per epoch from ``(seed, epoch)``, so the trainer's step-indexed
sampler sees shuffled data while every sample stays fixed by its index (exact resume, disjoint DDP ranks).

Every frame is resized to ``data.height`` x ``data.width`` (Lanczos; intrinsics scaled per axis, the
official datasets' rule). With ``data.augment`` the frames are first resized up to ~5 % larger per side
and cropped back at a random offset (the crop keeps >= 90 % of the image area, K shifted), then
colour-jittered and flipped (``dro_sfm.train.augment``); all of it is drawn from ``(seed, index)``.

Sample keys follow :func:`dro_sfm.train.datasets.frames_to_sample`, plus ``index``. Supervised data
always carry ``depth`` (zeros = invalid where a frame has none) and ``T_ref_from_tgt``; self-supervised
samples carry both only when the window has them, never one without the other.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dro_sfm.data.images import (
    ImageFolder,
    depth_from_uint16,
    list_images,
    natural_key,
    read_rgb,
    read_uint16_png,
)
from dro_sfm.data.kitti import KittiDrive, KittiSplitEntry, read_kitti_split
from dro_sfm.data.scannet import ScanNetScene, resample_depth
from dro_sfm.data.sevenscenes import SevenScenesSequence, list_sevenscenes_frames
from dro_sfm.data.tum import DEPTH_SCALE as TUM_DEPTH_SCALE
from dro_sfm.data.tum import TumSequence
from dro_sfm.data.types import Frame
from dro_sfm.errors import ConfigError, InputError
from dro_sfm.geometry.camera import scale_intrinsics_resize
from dro_sfm.train.augment import augment_sample, random_crop
from dro_sfm.train.config import TrainConfig
from dro_sfm.train.datasets import frames_to_sample

logger = logging.getLogger(__name__)

REAL_KINDS = ("kitti", "scannet", "tum", "7scenes", "folder")
MIN_CROP_AREA = 0.9                       # a random crop keeps at least this fraction of the resized image
MAX_UPSCALE = float(np.sqrt(1.0 / MIN_CROP_AREA))
DENSE_DEPTH_FRACTION = 0.5                # below this valid fraction a depth map is sparse (LiDAR)
MAX_WINDOW_TRIES = 32                     # supervised windows without poses are replaced by the next ones
EIGEN_ZHOU_HINT = (
    "the Eigen-Zhou training list is splits/eigen_zhou/train_files.txt of monodepth2 "
    "(github.com/nianticlabs/monodepth2); lines look like '2011_09_26/2011_09_26_drive_0022_sync 473 r'"
)


# ------------------------------------------------------------------------------------------------ paths
def resolve_data_path(value: str | None, key: str) -> Path:
    """``data.root``-like config text -> existing Path; ``$VAR``/``${VAR}`` and ``~`` are expanded."""
    if not value:
        raise ConfigError(f"{key} is not set: give it in the config or pass --data-root DIR")
    expanded = os.path.expanduser(os.path.expandvars(value))
    unset = re.search(r"\$\{?(\w+)", expanded)
    if unset:
        name = unset.group(1)
        raise ConfigError(
            f"{key} = {value!r}: environment variable {name} is not set; export it "
            f"(export {name}=/path/to/data) or pass --data-root DIR"
        )
    path = Path(expanded)
    if not path.exists():
        raise InputError(f"{key}: {path} does not exist; point it at the dataset (or pass --data-root DIR)")
    return path


def _resolve_split(value: str, root: Path) -> Path:
    """The split file: absolute, or relative to ``data.root`` first and then to the working directory."""
    expanded = Path(os.path.expanduser(os.path.expandvars(value)))
    if "$" in str(expanded):
        return resolve_data_path(value, "data.split")  # raises the unset-variable error
    for candidate in ([expanded] if expanded.is_absolute() else [root / expanded, expanded]):
        if candidate.is_file():
            return candidate
    raise InputError(f"data.split: {value} not found (looked in {root} and the working directory)")


# ---------------------------------------------------------------------------------------- frame sources
class FrameSource:
    """One sequence with random access to its frames by position 0..len-1."""

    name: str = ""
    has_depth: bool = False
    has_poses: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def frame(self, position: int) -> Frame:
        raise NotImplementedError


class KittiSource(FrameSource):
    """One camera of a KITTI raw drive; the reader (calibration, all OXTS poses) is opened on first use."""

    def __init__(self, drive_dir: Path, camera: int) -> None:
        self.drive_dir, self.camera = drive_dir, camera
        image_dir = drive_dir / f"image_{camera:02d}" / "data"
        if not image_dir.is_dir():
            raise InputError(f"{image_dir}: missing; the drive has no images for camera {camera}")
        with os.scandir(image_dir) as entries:
            stems = [e.name[:-4] for e in entries if e.name.endswith(".png") and e.name[:-4].isdigit()]
        self.frame_numbers = sorted(int(s) for s in stems)
        self._position = {n: i for i, n in enumerate(self.frame_numbers)}
        self.name = f"{drive_dir.parent.name}/{drive_dir.name}/image_{camera:02d}"
        cam = f"image_{camera:02d}"
        self.has_poses = (drive_dir / "oxts" / "data").is_dir()
        self.has_depth = any(p.is_dir() for p in (
            drive_dir / "proj_depth" / "groundtruth" / cam, drive_dir / "velodyne_points" / "data",
            drive_dir / "proj_depth" / "velodyne" / cam,
        ))
        self._drive: KittiDrive | None = None

    def __len__(self) -> int:
        return len(self.frame_numbers)

    def position_of(self, frame_number: int) -> int | None:
        return self._position.get(frame_number)

    def frame(self, position: int) -> Frame:
        if self._drive is None:
            self._drive = KittiDrive(self.drive_dir, camera=self.camera, depth="auto")
        return self._drive.read_frame(self.frame_numbers[position])


class ScanNetSource(FrameSource):
    """An exported ScanNet scene at its depth resolution (colour resized, depth in the colour camera)."""

    def __init__(self, scene_dir: Path) -> None:
        self.scene = ScanNetScene(scene_dir)
        self.name = scene_dir.name
        self.has_depth = self.scene.has_depth
        self.has_poses = self.scene.pose_dir.is_dir()

    def __len__(self) -> int:
        return len(self.scene.frame_ids)

    def frame(self, position: int) -> Frame:
        return self.scene.read_frame(self.scene.frame_ids[position])


class SevenScenesSource(FrameSource):
    """A 7-Scenes sequence folder (colour, depth, camera-to-world poses)."""

    def __init__(self, seq_dir: Path) -> None:
        self.seq = SevenScenesSequence(seq_dir)
        self.name = seq_dir.name
        first = self.seq.frames[0][1]
        self.has_depth = (seq_dir / (first.name.split(".color")[0] + ".depth.png")).is_file()
        self.has_poses = True  # the reader requires a pose file for every frame

    def __len__(self) -> int:
        return len(self.seq.frames)

    def frame(self, position: int) -> Frame:
        return self.seq.read_frame(*self.seq.frames[position])


class TumSource(FrameSource):
    """A TUM RGB-D sequence: colour frames associated with depth and ground-truth poses."""

    def __init__(self, seq_dir: Path) -> None:
        self.seq = TumSequence(seq_dir)
        self.name = seq_dir.name
        self.has_depth = any(entry[2] is not None for entry in self.seq.entries)
        self.has_poses = self.seq.groundtruth is not None

    def __len__(self) -> int:
        return len(self.seq.entries)

    def frame(self, position: int) -> Frame:
        stamp, rgb_file, depth_file, pose = self.seq.entries[position]
        image_path = self.seq.seq_dir / rgb_file
        image = read_rgb(image_path)
        depth = None
        if depth_file is not None:
            depth_path = self.seq.seq_dir / depth_file
            depth = depth_from_uint16(read_uint16_png(depth_path), TUM_DEPTH_SCALE)
            if depth.shape != image.shape[:2]:
                raise InputError(
                    f"{depth_path}: depth is {depth.shape[1]}x{depth.shape[0]} but {image_path.name} is "
                    f"{image.shape[1]}x{image.shape[0]}; TUM depth is registered to colour, sizes must match"
                )
        return Frame(image=image, K=self.seq.K.copy(), depth=depth,
                     T_world_from_cam=None if pose is None else pose.copy(), timestamp=stamp,
                     name=Path(rgb_file).stem, extras={"path": str(image_path)})


class FolderSource(FrameSource):
    """A folder of images in natural name order (no depth, no poses: self-supervised only)."""

    def __init__(self, folder: Path) -> None:
        self.images = ImageFolder(folder)
        self.name = folder.name

    def __len__(self) -> int:
        return len(self.images.paths)

    def frame(self, position: int) -> Frame:
        path = self.images.paths[position]
        image = read_rgb(path)
        if (image.shape[1], image.shape[0]) != self.images.size:
            raise InputError(f"{path}: image is {image.shape[1]}x{image.shape[0]} but the folder's are "
                             f"{self.images.size[0]}x{self.images.size[1]}")
        return Frame(image=image, K=self.images.K.copy(), name=path.stem, extras={"path": str(path)})


_SOURCES: dict[str, Callable[[Path], FrameSource]] = {
    "scannet": ScanNetSource, "tum": TumSource, "7scenes": SevenScenesSource, "folder": FolderSource,
}
_IS_SEQUENCE: dict[str, Callable[[Path], bool]] = {
    "scannet": lambda p: (p / "color").is_dir() and (p / "intrinsic").is_dir(),
    "tum": lambda p: (p / "rgb.txt").is_file(),
    "7scenes": lambda p: bool(list_sevenscenes_frames(p)),
    "folder": lambda p: bool(list_images(p)),
}
_LAYOUT_NAMES = {
    "scannet": "exported ScanNet scenes (color/, depth/, pose/, intrinsic/)",
    "tum": "TUM RGB-D sequences (rgb.txt, depth.txt, groundtruth.txt)",
    "7scenes": "7-Scenes sequences (frame-XXXXXX.color.png, .depth.png, .pose.txt)",
    "folder": "image folders",
}


def find_sequences(root: Path, kind: str, max_depth: int = 3) -> list[Path]:
    """Sequence folders of layout ``kind``: ``root`` itself or folders below it (natural order)."""
    is_sequence = _IS_SEQUENCE[kind]
    if is_sequence(root):
        return [root]
    if max_depth == 0:
        return []
    children = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: natural_key(p.name))
    return [seq for child in children for seq in find_sequences(child, kind, max_depth - 1)]


def _read_sequence_list(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a split file naming sequence folders (first column)."""
    lines = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"{path}: split file lists no sequences")
    return lines


# ------------------------------------------------------------------------------------------ resampling
def resize_depth(depth: np.ndarray, K_src: np.ndarray, K_dst: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Depth [H,W] of camera ``K_src`` resampled [h,w] for ``K_dst``: nearest for dense maps, z-buffered
    splatting for sparse ones (LiDAR), so that downscaling keeps every measured point it can."""
    valid = depth > 0
    if valid.mean() >= DENSE_DEPTH_FRACTION:
        return resample_depth(depth, K_src, K_dst, out_hw)
    h, w = out_hw
    rows, cols = np.nonzero(valid)
    z = depth[rows, cols].astype(np.float32)
    M = K_dst @ np.linalg.inv(K_src)
    pix = M @ np.stack([cols.astype(np.float64), rows.astype(np.float64), np.ones(len(z))])
    u = np.round(pix[0] / pix[2]).astype(np.int64)
    v = np.round(pix[1] / pix[2]).astype(np.int64)
    inside = (u >= 0) & (v >= 0) & (u < w) & (v < h)
    out = np.full(h * w, np.inf, dtype=np.float32)
    np.minimum.at(out, v[inside] * w + u[inside], z[inside])
    out[np.isinf(out)] = 0.0
    return out.reshape(h, w)


def resize_frame(frame: Frame, width: int, height: int, with_depth: bool) -> Frame:
    """``frame`` at ``width`` x ``height``: Lanczos image, K row 0 x sx and row 1 x sy, resampled depth."""
    H0, W0 = frame.image.shape[:2]
    if (W0, H0) == (width, height):
        image, K = np.array(frame.image), np.asarray(frame.K, dtype=np.float64)  # writable for torch
    else:
        image = np.array(Image.fromarray(frame.image).resize((width, height), Image.Resampling.LANCZOS))
        K = scale_intrinsics_resize(np.asarray(frame.K, dtype=np.float64), width / W0, height / H0)
    depth = None
    if with_depth and frame.depth is not None:
        depth = frame.depth if (W0, H0) == (width, height) else resize_depth(frame.depth, frame.K, K, (height, width))
    return Frame(image=image, K=K, depth=depth, T_world_from_cam=frame.T_world_from_cam,
                 timestamp=frame.timestamp, name=frame.name, extras=frame.extras)


# ------------------------------------------------------------------------------------------------ dataset
class WindowDataset(torch.utils.data.Dataset):
    """Training windows over real sequences; sample ``index`` is fixed by ``(seed, index)``."""

    def __init__(self, cfg: TrainConfig, sources: Sequence[FrameSource], window_source: np.ndarray,
                 window_target: np.ndarray, description: str) -> None:
        d = cfg.data
        self.cfg = cfg
        self.sources = list(sources)
        self.window_source = np.asarray(window_source, dtype=np.int32)
        self.window_target = np.asarray(window_target, dtype=np.int64)
        self.offsets = d.frame_stride * np.concatenate(
            [np.arange(-d.refs_back, 0), [0], np.arange(1, d.refs_forward + 1)]
        ).astype(np.int64)
        self.supervised = cfg.loss.kind == "supervised"
        self.description = description
        self._perm_epoch: int | None = None
        self._perm: np.ndarray | None = None
        if len(self.window_target) == 0:
            raise InputError(
                f"{description}: no training window fits: every sequence is shorter than "
                f"{len(self.offsets)} frames at frame_stride {d.frame_stride}"
            )

    def __len__(self) -> int:
        return len(self.window_target)

    def window_of(self, index: int, attempt: int = 0) -> tuple[FrameSource, list[int]]:
        """(source, frame positions: refs back, target, refs forward) of sample ``index``."""
        n = len(self)
        epoch, slot = divmod(int(index), n)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.cfg.seed, epoch, 0x5EED]).permutation(n)
            self._perm_epoch = epoch
        w = int(self._perm[(slot + attempt) % n])
        source = self.sources[int(self.window_source[w])]
        return source, [int(p) for p in self.window_target[w] + self.offsets]

    def frames(self, index: int) -> list[Frame]:
        """The frames of sample ``index`` at their stored resolution (supervised: only windows with poses)."""
        for attempt in range(MAX_WINDOW_TRIES):
            source, positions = self.window_of(index, attempt)
            frames = [source.frame(p) for p in positions]
            if not self.supervised or all(f.T_world_from_cam is not None for f in frames):
                return frames
            logger.debug("%s frames %s: a pose is missing (invalid); using the next window", source.name, positions)
        raise InputError(f"{self.description}: {MAX_WINDOW_TRIES} windows in a row lack a valid pose; "
                         "check the pose files or train self-supervised (loss.kind: selfsup)")

    def __getitem__(self, index: int) -> dict:
        d = self.cfg.data
        frames = self.frames(index)
        rng = np.random.default_rng([self.cfg.seed, int(index), 29])
        width, height = d.width, d.height
        if d.augment:
            scale = rng.uniform(1.0, MAX_UPSCALE)
            width, height = max(d.width, int(d.width * scale)), max(d.height, int(d.height * scale))
        t = d.refs_back
        frames = [resize_frame(f, width, height, with_depth=(i == t)) for i, f in enumerate(frames)]
        sample = frames_to_sample(frames, t)
        has_gt = "depth" in sample and "T_ref_from_tgt" in sample
        if self.supervised and "depth" not in sample:
            logger.debug("%s: target has no depth; its depth loss is empty", frames[t].name)
            sample["depth"] = torch.zeros(1, height, width)
        elif not self.supervised and not has_gt:
            sample.pop("depth", None)
            sample.pop("T_ref_from_tgt", None)
        sample["index"] = torch.tensor(int(index))
        if d.augment:
            sample = random_crop(sample, rng, d.height, d.width)
            sample = augment_sample(sample, rng, self.cfg.loss.flip_lr_prob)
        return sample


# ----------------------------------------------------------------------------------------------- builders
def _check_window_config(cfg: TrainConfig) -> None:
    d = cfg.data
    if d.height % 16 or d.width % 16 or d.height <= 0 or d.width <= 0:
        raise ConfigError(f"data.height x data.width = {d.height}x{d.width}: both must be positive multiples of 16")
    if d.refs_back < 0 or d.refs_forward < 0 or d.n_refs == 0:
        raise ConfigError("data.refs_back + data.refs_forward must be at least 1 (DRO needs a reference view)")
    if d.frame_stride < 1:
        raise ConfigError(f"data.frame_stride must be >= 1, got {d.frame_stride}")


def _usable(cfg: TrainConfig, sources: list[FrameSource], what: str) -> list[FrameSource]:
    """Sources that can train ``loss.kind``: supervised needs depth and poses."""
    if cfg.loss.kind != "supervised":
        return sources
    usable = [s for s in sources if s.has_depth and s.has_poses]
    dropped = [s.name for s in sources if s not in usable]
    if dropped:
        logger.warning("%s: %d of %d sequences have no depth or no poses and are left out of supervised "
                       "training (first: %s)", what, len(dropped), len(sources), dropped[0])
    if not usable:
        raise ConfigError(f"{what}: no sequence has both depth and poses, which loss.kind 'supervised' needs; "
                          "use loss.kind: selfsup")
    return usable


def _windows(cfg: TrainConfig, lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(source index, target position) of every full window of sequences with ``lengths``."""
    d = cfg.data
    lo, hi = d.refs_back * d.frame_stride, d.refs_forward * d.frame_stride
    src, tgt = [], []
    for i, n in enumerate(lengths):
        positions = np.arange(lo, n - hi, dtype=np.int64)
        src.append(np.full(len(positions), i, dtype=np.int32))
        tgt.append(positions)
    return np.concatenate(src) if src else np.zeros(0, np.int32), np.concatenate(tgt) if tgt else np.zeros(0)


def _kitti_drives(root: Path) -> list[Path]:
    """Drive folders under a KITTI raw root, a date folder, or the drive itself."""
    if any((root / f"image_0{c}" / "data").is_dir() for c in range(4)):
        return [root]
    pattern = "*_drive_*_sync" if (root / "calib_cam_to_cam.txt").is_file() else "*/*_drive_*_sync"
    return sorted((p for p in root.glob(pattern) if p.is_dir()), key=lambda p: natural_key(str(p)))


def build_kitti_dataset(cfg: TrainConfig) -> WindowDataset:
    """KITTI raw: the targets of ``data.split`` (Eigen-Zhou), or every frame of every drive under the root."""
    d = cfg.data
    root = resolve_data_path(d.root, "data.root")
    if d.split:
        split_path = _resolve_split(d.split, root)
        entries = read_kitti_split(split_path)
        missing = sorted({e.drive for e in entries if not (root / e.drive).is_dir()})
        if missing:
            raise InputError(
                f"{split_path}: {len(missing)} drive folder(s) of the split are not under {root} (first: "
                f"{missing[0]}); download them or use a split file that lists only the drives you have"
            )
        keys = sorted({(e.drive, e.camera) for e in entries})
        index_of = {k: i for i, k in enumerate(keys)}
        sources = [KittiSource(root / drive, camera) for drive, camera in keys]
        what = f"KITTI {root} ({split_path.name})"
    else:
        drives = _kitti_drives(root)
        if not drives:
            raise InputError(f"data.root {root}: no KITTI raw drive folders (<date>/<date>_drive_NNNN_sync); "
                             f"point it at the raw data root, or give data.split ({EIGEN_ZHOU_HINT})")
        sources = [KittiSource(drv, c) for drv in drives for c in (2, 3) if (drv / f"image_0{c}" / "data").is_dir()]
        what = f"KITTI {root}"
    usable = set(map(id, _usable(cfg, sources, what)))
    lo, hi = d.refs_back * d.frame_stride, d.refs_forward * d.frame_stride
    src: list[int] = []
    tgt: list[int] = []
    if d.split:
        skipped = 0
        for entry in entries:
            i = index_of[(entry.drive, entry.camera)]
            source = sources[i]
            pos = source.position_of(entry.frame_index)
            if pos is None:
                raise InputError(f"{split_path}: {_describe(entry)} is listed but its image is missing under {root}")
            if id(source) not in usable or pos < lo or pos + hi >= len(source):
                skipped += 1
                continue
            src.append(i)
            tgt.append(pos)
        if skipped:
            logger.info("%s: %d of %d split entries left out (no neighbours at frame_stride %d, or no GT)",
                        what, skipped, len(entries), d.frame_stride)
        return WindowDataset(cfg, sources, np.array(src), np.array(tgt), what)
    kept = [s for s in sources if id(s) in usable]
    window_source, window_target = _windows(cfg, [len(s) for s in kept])
    return WindowDataset(cfg, kept, window_source, window_target, what)


def _describe(entry: KittiSplitEntry) -> str:
    return f"{entry.drive} frame {entry.frame_index} (image_0{entry.camera})"


def build_sequence_dataset(cfg: TrainConfig) -> WindowDataset:
    """ScanNet, TUM, 7-Scenes or image folders: all sequences under ``data.root`` (or listed in ``data.split``)."""
    d = cfg.data
    kind = d.kind
    if kind == "folder" and cfg.loss.kind == "supervised":
        raise ConfigError("data.kind 'folder' has no depth or poses: it trains only with loss.kind: selfsup")
    root = resolve_data_path(d.root, "data.root")
    if d.split:
        split_path = _resolve_split(d.split, root)
        paths = [root / name for name in _read_sequence_list(split_path)]
        for path in paths:
            if not path.is_dir() or not _IS_SEQUENCE[kind](path):
                raise InputError(f"{split_path}: {path} is not one of the {_LAYOUT_NAMES[kind]}")
    else:
        paths = find_sequences(root, kind)
        if not paths:
            raise InputError(f"data.root {root}: found no {_LAYOUT_NAMES[kind]} in it or in its sub-folders")
    what = f"{kind} {root}"
    sources = _usable(cfg, [_SOURCES[kind](p) for p in paths], what)
    window_source, window_target = _windows(cfg, [len(s) for s in sources])
    return WindowDataset(cfg, sources, window_source, window_target, what)


def build_real_dataset(cfg: TrainConfig) -> WindowDataset | None:
    """The dataset of ``cfg.data.kind`` for a real layout, or None for a kind this module does not build."""
    if cfg.data.kind not in REAL_KINDS:
        return None
    _check_window_config(cfg)
    dataset = build_kitti_dataset(cfg) if cfg.data.kind == "kitti" else build_sequence_dataset(cfg)
    logger.info("%s: %d training windows from %d sequences", dataset.description, len(dataset),
                len(dataset.sources))
    return dataset
