"""Public entry points: build a scene, render a posed sequence (streamed), sample training triplets.

Seeding: every random draw comes from ``numpy.random.default_rng`` seeded with ``(seed, kind, purpose)``
(scene layout, trajectory, per-frame nuisances), so the same arguments always give the same frames and
changing, say, the nuisances never changes the scene or the trajectory.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator

import numpy as np

from dro_sfm.data.synthetic.config import (
    SCENE_KINDS,
    NuisanceConfig,
    SceneConfig,
    SceneKind,
    TrajectoryConfig,
    check_kind,
)
from dro_sfm.data.synthetic.indoor import build_indoor
from dro_sfm.data.synthetic.outdoor import build_outdoor
from dro_sfm.data.synthetic.render import SyntheticScene
from dro_sfm.data.synthetic.trajectories import driving_trajectory, handheld_trajectory
from dro_sfm.data.types import Frame
from dro_sfm.errors import ConfigError

logger = logging.getLogger(__name__)

FRAME_RATE_HZ = {"indoor": 30.0, "outdoor": 10.0}
_PURPOSE_SCENE, _PURPOSE_TRAJECTORY, _PURPOSE_NUISANCE = 0, 1, 2

# Reference cameras: ScanNet/7-Scenes-like (525 px at 640x480) and KITTI (721.5 px at 1242x375).
_INDOOR_F_OVER_W = 525.0 / 640.0
_KITTI_F_OVER_W = 721.5377 / 1242.0
_KITTI_CX_OVER_W = 609.5593 / 1242.0
_KITTI_CY_OVER_H = 172.854 / 375.0


def _rng(seed: int, kind: str, purpose: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SCENE_KINDS.index(kind), purpose, *more])


def default_intrinsics(kind: SceneKind, height: int, width: int) -> np.ndarray:
    """Pixel intrinsics K [3,3] for an image of ``height`` x ``width``: RGB-D-like indoor, KITTI-like outdoor.

    The horizontal field of view of the reference camera is kept and pixels are square, so other aspect
    ratios change the vertical field of view only.
    """
    check_kind(kind)
    if height < 8 or width < 8:
        raise ConfigError(f"image size must be at least 8x8 pixels, got {height}x{width}")
    if kind == "indoor":
        f, cx, cy = _INDOOR_F_OVER_W * width, (width - 1) / 2.0, (height - 1) / 2.0
    else:
        f, cx, cy = _KITTI_F_OVER_W * width, _KITTI_CX_OVER_W * width, _KITTI_CY_OVER_H * height
    return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def make_scene(kind: SceneKind, seed: int, config: SceneConfig | None = None) -> SyntheticScene:
    """Build the procedural scene ``kind`` ("indoor" room or "outdoor" street) for ``seed``."""
    check_kind(kind)
    cfg = config or SceneConfig()
    rng = _rng(seed, kind, _PURPOSE_SCENE)
    build = build_indoor if kind == "indoor" else build_outdoor
    soup, materials, lighting, layout = build(rng, cfg)
    logger.debug(
        "built %s scene seed=%d: %d triangles, %d materials", kind, seed, len(soup), len(materials.names)
    )
    return SyntheticScene(
        kind=kind, seed=int(seed), soup=soup, materials=materials, lighting=lighting, layout=layout
    )


@functools.lru_cache(maxsize=2)
def _cached_scene(kind: str, seed: int, config: SceneConfig) -> SyntheticScene:
    return make_scene(kind, seed, config)  # type: ignore[arg-type]


def camera_trajectory(
    scene: SyntheticScene,
    n_frames: int,
    rng: np.random.Generator,
    config: TrajectoryConfig | None = None,
    start_x: float | None = None,
) -> np.ndarray:
    """Camera-to-world poses [N,4,4] suited to the scene: hand-held in a room, driving on a street."""
    if n_frames < 1:
        raise ConfigError(f"a trajectory needs at least one frame, got {n_frames}")
    cfg = config or TrajectoryConfig()
    if scene.kind == "indoor":
        return handheld_trajectory(scene.layout, n_frames, rng, cfg)
    return driving_trajectory(scene.layout, n_frames, rng, cfg, start_x=start_x)


@dataclasses.dataclass
class SyntheticSequence:
    """A rendered-on-demand sequence: ``len()``, indexing and iteration render frames one at a time.

    Only the scene and the poses are held in memory, so 1000-frame sequences stream in bounded memory.
    """

    scene: SyntheticScene
    poses: np.ndarray  # [N,4,4] camera-to-world
    K: np.ndarray  # [3,3]
    height: int
    width: int
    seed: int
    nuisance: NuisanceConfig | None = None

    def __len__(self) -> int:
        return len(self.poses)

    def __getitem__(self, index: int) -> Frame:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} out of range for a {len(self)}-frame sequence")
        index %= len(self)
        rng = _rng(self.seed, self.scene.kind, _PURPOSE_NUISANCE, index)
        frame = self.scene.render(
            self.K,
            self.poses[index],
            self.height,
            self.width,
            nuisance=self.nuisance,
            rng=rng,
            name=f"{index:06d}",
            timestamp=index / FRAME_RATE_HZ[self.scene.kind],
        )
        frame.extras["index"] = index
        return frame

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self[i]


def render_sequence(
    kind: SceneKind,
    n_frames: int,
    height: int,
    width: int,
    seed: int = 0,
    scene_config: SceneConfig | None = None,
    trajectory_config: TrajectoryConfig | None = None,
    nuisance: NuisanceConfig | None = None,
    K: np.ndarray | None = None,
) -> SyntheticSequence:
    """A posed RGB-D sequence of ``n_frames`` in one scene (one room / one street), rendered lazily.

    Outdoor streets are lengthened automatically to fit the drive.
    """
    check_kind(kind)
    traj_cfg = trajectory_config or TrajectoryConfig()
    scene_cfg = scene_config or SceneConfig()
    if kind == "outdoor":
        needed = n_frames * traj_cfg.forward_range_m[1] + 10.0
        if scene_cfg.street_length_m < needed:
            scene_cfg = dataclasses.replace(scene_cfg, street_length_m=needed)
    scene = make_scene(kind, seed, scene_cfg)
    poses = camera_trajectory(scene, n_frames, _rng(seed, kind, _PURPOSE_TRAJECTORY), traj_cfg)
    K = default_intrinsics(kind, height, width) if K is None else np.asarray(K, np.float64)
    return SyntheticSequence(scene, poses, K, height, width, seed, nuisance)


def sample_triplet(
    kind: SceneKind,
    seed: int,
    height: int,
    width: int,
    motion_scale: float = 1.0,
    scene_config: SceneConfig | None = None,
    trajectory_config: TrajectoryConfig | None = None,
    nuisance: NuisanceConfig | None = None,
    scene_reuse: int = 1,
) -> list[Frame]:
    """Three consecutive frames ``[target, previous, next]`` for on-the-fly training.

    ``motion_scale`` multiplies every inter-frame motion range (curricula). ``scene_reuse`` > 1 shares one
    scene between that many consecutive seeds (kept in a small per-process cache), which amortises the
    scene build when sampling many triplets.
    """
    check_kind(kind)
    if scene_reuse < 1:
        raise ConfigError(f"scene_reuse must be >= 1, got {scene_reuse}")
    traj_cfg = (trajectory_config or TrajectoryConfig()).scaled(motion_scale)
    scene = _cached_scene(kind, seed // scene_reuse, scene_config or SceneConfig())
    rng = _rng(seed, kind, _PURPOSE_TRAJECTORY)
    start_x = None
    if kind == "outdoor":
        room = scene.layout.x_end - scene.layout.x_start - 3 * traj_cfg.forward_range_m[1]
        if room < 0:
            raise ConfigError("street too short for the requested motion; raise SceneConfig.street_length_m")
        start_x = scene.layout.x_start + rng.uniform(0.0, room)
    poses = camera_trajectory(scene, 3, rng, traj_cfg, start_x=start_x)
    K = default_intrinsics(kind, height, width)
    frames = []
    for slot, index in enumerate((1, 0, 2)):
        frame = scene.render(
            K,
            poses[index],
            height,
            width,
            nuisance=nuisance,
            rng=_rng(seed, kind, _PURPOSE_NUISANCE, index),
            name=f"{seed}_{index}",
            timestamp=index / FRAME_RATE_HZ[kind],
        )
        frame.extras.update(index=index, role="target" if slot == 0 else "context")
        frames.append(frame)
    return frames
