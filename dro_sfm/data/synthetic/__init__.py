"""Synthetic posed RGB-D scenes rendered by ray casting (Open3D/Embree): exact depth, poses and intrinsics.

Two procedural worlds: furnished rooms (hand-held motion) and streets (driving). Typical use::

    from dro_sfm.data.synthetic import render_sequence, sample_triplet

    for frame in render_sequence("indoor", n_frames=100, height=240, width=320, seed=0):
        ...  # frame.image, frame.depth (z-depth, metres), frame.K, frame.T_world_from_cam

    target, ref_prev, ref_next = sample_triplet("outdoor", seed=7, height=192, width=640, motion_scale=0.5)
"""

from __future__ import annotations

from dro_sfm.data.synthetic.config import NuisanceConfig, SceneConfig, SceneKind, TrajectoryConfig
from dro_sfm.data.synthetic.render import SyntheticScene
from dro_sfm.data.synthetic.sequences import (
    SyntheticSequence,
    camera_trajectory,
    default_intrinsics,
    make_scene,
    render_sequence,
    sample_triplet,
)

__all__ = [
    "NuisanceConfig",
    "SceneConfig",
    "SceneKind",
    "SyntheticScene",
    "SyntheticSequence",
    "TrajectoryConfig",
    "camera_trajectory",
    "default_intrinsics",
    "make_scene",
    "render_sequence",
    "sample_triplet",
]
