"""Sliding windows over a frame stream: which frames form each target's window, the bounded deque holding
them (with their features), and keyframe selection.

Window of target ``t`` with ``n`` references: the ``n + 1`` consecutive keyframes centred on ``t``
(``t - n/2 .. t + n/2``), shifted to stay inside the sequence at its start and end, so every target always
has ``n`` references and consecutive keyframes are always in each other's windows. Only the frames of the
current window are held (``SlidingWindow``): memory does not grow with the sequence length.

Keyframe selection skips frames that moved too little since the last keyframe (a standing camera, a video
at a high frame rate): too little parallax makes depth ill-posed and only costs time. Motion is the mean
optical displacement estimated by Lucas-Kanade on 8x8-pixel blocks of half-resolution grey images.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from dro_sfm.errors import ConfigError


@dataclass
class FrameResult:
    """What the predictor produced for a frame as target, at the processing resolution.

    ``depth`` [H,W] float32 metres (checkpoint units); ``ref_indices`` the keyframe indices of its references;
    ``T_ref_from_tgt`` [N,4,4]; ``cost_map`` [h,w] final feature-metric cost or None; ``step_costs`` [S].
    """

    depth: np.ndarray
    ref_indices: list[int]
    T_ref_from_tgt: np.ndarray
    cost_map: np.ndarray | None
    step_costs: np.ndarray

    def T_from(self, ref: int) -> np.ndarray:
        """T_ref_from_tgt [4,4] for keyframe ``ref`` (one of the references)."""
        return self.T_ref_from_tgt[self.ref_indices.index(ref)]


@dataclass
class FrameSlot:
    """One keyframe while it is in the window: image and intrinsics at the processing resolution, optional
    ground truth, lazily computed features and, once it has been a target, its result."""

    index: int  # keyframe index in the run (0, 1, ...): the run directory's frame number
    name: str
    timestamp: float
    source: str
    image: np.ndarray  # [H,W,3] uint8 at the processing resolution
    K: np.ndarray  # [3,3] at the processing resolution
    gt_depth: np.ndarray | None = None  # [H,W] float32 metres, 0 = invalid
    gt_pose: np.ndarray | None = None  # [4,4] camera-to-world
    features: Any = None
    encoded: bool = False  # features computed (a predictor may legitimately return None)
    result: FrameResult | None = None
    written: bool = False
    extras: dict = field(default_factory=dict)

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


def window_indices(target: int, n_refs: int, newest: int, final: bool) -> list[int] | None:
    """Keyframe indices of target's window (target included, ascending), or None while frames are missing.

    ``newest`` is the last keyframe index received; ``final`` says no more frames will come. With fewer than
    ``n_refs + 1`` frames in the whole sequence the window is all frames.
    """
    if n_refs < 1:
        raise ConfigError(f"a window needs at least one reference, got {n_refs}")
    if target > newest:
        return None
    n = min(n_refs, newest) if final else n_refs
    start = max(0, target - n // 2)
    end = start + n
    if end > newest:
        if not final:
            return None
        start, end = newest - n, newest
    return list(range(start, end + 1))


class SlidingWindow:
    """The frames of the current window, oldest first; never more than ``capacity``.

    ``peak`` records the largest number of frames held at once (memory flatness is tested on it).
    """

    def __init__(self, capacity: int):
        if capacity < 2:
            raise ConfigError(f"window capacity must be at least 2, got {capacity}")
        self.capacity = capacity
        self._slots: collections.deque[FrameSlot] = collections.deque()
        self.peak = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[FrameSlot]:
        return iter(self._slots)

    def __contains__(self, index: int) -> bool:
        return any(s.index == index for s in self._slots)

    @property
    def newest(self) -> int:
        return self._slots[-1].index if self._slots else -1

    def get(self, index: int) -> FrameSlot:
        for slot in self._slots:
            if slot.index == index:
                return slot
        raise KeyError(f"keyframe {index} is not in the window (holds {[s.index for s in self._slots]})")

    def push(self, slot: FrameSlot) -> FrameSlot | None:
        """Append ``slot`` (its index must follow the newest); returns the evicted oldest slot when full."""
        if self._slots and slot.index != self.newest + 1:
            raise ValueError(f"keyframe {slot.index} pushed after {self.newest}; frames must arrive in order")
        evicted = self._slots.popleft() if len(self._slots) == self.capacity else None
        self._slots.append(slot)
        self.peak = max(self.peak, len(self._slots))
        return evicted


# --- keyframe selection ------------------------------------------------------------------------------------

_LK_BLOCK = 8  # block size (pixels at half resolution) of the Lucas-Kanade flow estimate
_LK_BLUR = 1.0  # Gaussian sigma before differentiating (half-resolution pixels)
# Blocks whose structure tensor's smaller eigenvalue is below this (grey levels in [0,1], per pixel) are
# textureless or pure edges: their flow is undetermined and they are left out of the mean.
_LK_MIN_EIGEN = 1e-5


def grey_half(image: np.ndarray) -> np.ndarray:
    """Grey [H/2,W/2] float64 in [0,1] of an RGB uint8 [H,W,3] image (2x2 box average)."""
    grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    h, w = (grey.shape[0] // 2) * 2, (grey.shape[1] // 2) * 2
    g = grey[:h, :w]
    return 0.25 * (g[0::2, 0::2] + g[1::2, 0::2] + g[0::2, 1::2] + g[1::2, 1::2])


def mean_displacement_px(grey_a: np.ndarray, grey_b: np.ndarray) -> float:
    """Mean optical displacement in full-resolution pixels between two half-resolution grey images [h,w].

    One Lucas-Kanade step per 8x8 block (blurred images, structure tensor of their mean). Accurate to a few
    tenths of a pixel for displacements below ~4 px, it underestimates larger motion, which only matters
    for deciding "too little motion". Returns inf when no block has enough texture to tell.
    """
    a = ndimage.gaussian_filter(grey_a, _LK_BLUR)
    b = ndimage.gaussian_filter(grey_b, _LK_BLUR)
    mean = 0.5 * (a + b)
    gy, gx = np.gradient(mean)
    it = b - a
    h, w = (a.shape[0] // _LK_BLOCK) * _LK_BLOCK, (a.shape[1] // _LK_BLOCK) * _LK_BLOCK
    if h == 0 or w == 0:
        return float("inf")

    def block_sum(x: np.ndarray) -> np.ndarray:
        return x[:h, :w].reshape(h // _LK_BLOCK, _LK_BLOCK, w // _LK_BLOCK, _LK_BLOCK).sum(axis=(1, 3))

    sxx, sxy, syy = block_sum(gx * gx), block_sum(gx * gy), block_sum(gy * gy)
    sxt, syt = block_sum(gx * it), block_sum(gy * it)
    n = _LK_BLOCK * _LK_BLOCK
    trace, det = sxx + syy, sxx * syy - sxy * sxy
    min_eig = 0.5 * (trace - np.sqrt(np.maximum(trace * trace - 4.0 * det, 0.0)))
    ok = min_eig / n > _LK_MIN_EIGEN
    if not ok.any():
        return float("inf")
    det_ok = det[ok]
    u = -(syy[ok] * sxt[ok] - sxy[ok] * syt[ok]) / det_ok
    v = -(sxx[ok] * syt[ok] - sxy[ok] * sxt[ok]) / det_ok
    return float(2.0 * np.mean(np.hypot(u, v)))


class KeyframeSelector:
    """Keeps a frame when its mean optical displacement from the last kept frame reaches ``min_motion_px``
    (pixels at the processing resolution); 0 keeps every frame. The first frame is always kept."""

    def __init__(self, min_motion_px: float):
        if not min_motion_px >= 0:
            raise ConfigError(f"minimum motion must be >= 0 pixels, got {min_motion_px}")
        self.min_motion_px = float(min_motion_px)
        self._last: np.ndarray | None = None
        self.skipped = 0

    def accept(self, image: np.ndarray) -> tuple[bool, float]:
        """(keep?, displacement from the last keyframe in px) for an RGB uint8 [H,W,3] image."""
        if self.min_motion_px == 0:
            return True, float("nan")
        grey = grey_half(image)
        if self._last is None:
            self._last = grey
            return True, float("inf")
        motion = mean_displacement_px(self._last, grey)
        if motion >= self.min_motion_px:
            self._last = grey
            return True, motion
        self.skipped += 1
        return False, motion
