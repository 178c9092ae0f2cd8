"""Plain in-memory records shared by every reader, writer and the synthetic engine."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    """One posed RGB(-D) frame.

    ``image`` is ``[H,W,3]`` uint8 RGB; ``depth`` ``[H,W]`` float32 z-depth in metres (0 = invalid) or None;
    ``K`` ``[3,3]`` float64 pixel intrinsics at the image resolution; ``T_world_from_cam`` ``[4,4]`` float64
    camera-to-world pose (camera axes x right, y down, z forward) or None when unknown.
    """

    image: np.ndarray
    K: np.ndarray
    depth: np.ndarray | None = None
    T_world_from_cam: np.ndarray | None = None
    timestamp: float | None = None
    name: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def label(self, index: int) -> str:
        """How writers name the ``index``-th frame of a stream in errors: ``frame 3 (name)``, or ``frame 3``."""
        return f"frame {index} ({self.name})" if self.name else f"frame {index}"
