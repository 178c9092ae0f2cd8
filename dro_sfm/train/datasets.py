"""Training datasets: samples are fixed by their index, so a run is reproducible and resumable exactly.

A sample is a dict of tensors: ``target`` [3,H,W] and ``refs`` [N,3,H,W] in [0,1], ``K`` [3,3],
``depth`` [1,H,W] metres (0 invalid, supervised data only), ``T_ref_from_tgt`` [N,4,4].
"""

from __future__ import annotations

import numpy as np
import torch

from dro_sfm.data.types import Frame
from dro_sfm.errors import ConfigError
from dro_sfm.geometry.pose import relative_pose
from dro_sfm.train.augment import augment_sample
from dro_sfm.train.config import TrainConfig

# Synthetic scene seeds at or above this value are reserved for evaluation; training never draws them.
RESERVED_SEED_START = 1_000_000_000
SEED_MIX = 0x9E3779B1


def training_seed(base_seed: int, index: int) -> int:
    """A pseudo-random scene seed in [0, RESERVED_SEED_START) for training sample group ``index``."""
    seed = int(np.random.SeedSequence([base_seed, index]).generate_state(1, dtype=np.uint64)[0])
    return seed % RESERVED_SEED_START


def reserved_seed(index: int) -> int:
    """The evaluation seed number ``index`` (never produced by ``training_seed``)."""
    return RESERVED_SEED_START + index


def frames_to_sample(frames: list[Frame], target_index: int) -> dict:
    """Stack posed frames into a sample: frame ``target_index`` is the target, the others references in order."""
    tgt = frames[target_index]
    refs = [f for i, f in enumerate(frames) if i != target_index]
    img = lambda f: torch.from_numpy(np.ascontiguousarray(f.image)).permute(2, 0, 1).float() / 255.0  # noqa: E731
    sample = {
        "target": img(tgt),
        "refs": torch.stack([img(f) for f in refs]),
        "K": torch.from_numpy(np.asarray(tgt.K, dtype=np.float32)),
    }
    if tgt.depth is not None:
        sample["depth"] = torch.from_numpy(np.asarray(tgt.depth, dtype=np.float32))[None]
    if tgt.T_world_from_cam is not None and all(f.T_world_from_cam is not None for f in refs):
        rel = [relative_pose(tgt.T_world_from_cam, f.T_world_from_cam) for f in refs]
        sample["T_ref_from_tgt"] = torch.from_numpy(np.stack(rel))
    return sample


def render_window(
    scene, n_frames: int, height: int, width: int, rng: np.random.Generator, motion_scale: float = 1.0
) -> list[Frame]:
    """``n_frames`` consecutive frames of a synthetic scene along a fresh random camera path."""
    from dro_sfm.data.synthetic import TrajectoryConfig, camera_trajectory, default_intrinsics

    traj = TrajectoryConfig().scaled(motion_scale)
    start_x = None
    if scene.kind == "outdoor":
        room = scene.layout.x_end - scene.layout.x_start - (n_frames + 1) * traj.forward_range_m[1]
        start_x = scene.layout.x_start + rng.uniform(0.0, max(room, 0.0))
    poses = camera_trajectory(scene, n_frames, rng, traj, start_x=start_x)
    K = default_intrinsics(scene.kind, height, width)
    return [scene.render(K, T, height, width, name=f"{i:06d}") for i, T in enumerate(poses)]


class SyntheticDataset(torch.utils.data.Dataset):
    """On-the-fly synthetic windows (target between its references) from procedurally generated scenes."""

    def __init__(self, cfg: TrainConfig, reserved: bool = False, length: int = 10**9) -> None:
        self.cfg = cfg
        self.reserved = reserved
        self.length = length
        self._scene_cache: dict[tuple[str, int], object] = {}

    def __len__(self) -> int:
        return self.length

    def kind_of(self, index: int) -> str:
        scenes = self.cfg.data.scenes
        if scenes != "mixed":
            return scenes
        return "indoor" if (index // self.cfg.data.samples_per_scene) % 2 == 0 else "outdoor"

    def scene_seed(self, index: int) -> int:
        group = index // self.cfg.data.samples_per_scene
        if self.reserved:
            return reserved_seed(group)
        seed = training_seed(self.cfg.seed, group)
        assert seed < RESERVED_SEED_START
        return seed

    def motion_scale(self, index: int) -> float:
        d = self.cfg.data
        if d.motion_curriculum_steps <= 0:
            return d.motion_scale
        step = index // max(self.cfg.optim.batch_size, 1)
        ramp = min(1.0, step / d.motion_curriculum_steps)
        return d.motion_scale * (0.3 + 0.7 * ramp)

    def frames(self, index: int) -> list[Frame]:
        """Rendered frames of sample ``index``: refs_back frames, the target, refs_forward frames."""
        from dro_sfm.data.synthetic import make_scene

        d = self.cfg.data
        kind = self.kind_of(index)
        seed = self.scene_seed(index)
        key = (kind, seed)
        scene = self._scene_cache.get(key)
        if scene is None:
            scene = make_scene(kind, seed)
            self._scene_cache = {key: scene}  # one scene at a time keeps memory flat
        return render_window(
            scene, n_frames=d.refs_back + 1 + d.refs_forward, height=d.height, width=d.width,
            rng=np.random.default_rng([seed, index]), motion_scale=self.motion_scale(index),
        )

    def __getitem__(self, index: int) -> dict:
        d = self.cfg.data
        sample = frames_to_sample(self.frames(index), d.refs_back)
        sample["index"] = torch.tensor(index)
        if d.augment and not self.reserved:
            rng = np.random.default_rng([self.cfg.seed, index, 17])
            sample = augment_sample(sample, rng, self.cfg.loss.flip_lr_prob)
        return sample


def build_dataset(cfg: TrainConfig) -> torch.utils.data.Dataset:
    """The dataset named by ``cfg.data.kind``."""
    kind = cfg.data.kind
    if kind == "synthetic":
        return SyntheticDataset(cfg)
    from dro_sfm.train.real_datasets import build_real_dataset

    dataset = build_real_dataset(cfg)
    if dataset is None:
        raise ConfigError(f"data.kind {kind!r} is not supported")
    return dataset


class StepBatchSampler(torch.utils.data.Sampler):
    """Indices of steps [start, end): step s, rank r gets s·world·B + r·B + [0, B) (disjoint across ranks)."""

    def __init__(self, start: int, end: int, batch_size: int, rank: int = 0, world: int = 1, modulo: int | None = None):
        self.start, self.end, self.batch_size, self.rank, self.world = start, end, batch_size, rank, world
        self.modulo = modulo

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self):
        for step in range(self.start, self.end):
            first = (step * self.world + self.rank) * self.batch_size
            idx = list(range(first, first + self.batch_size))
            yield [i % self.modulo for i in idx] if self.modulo else idx


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch (all keys must be present in every sample)."""
    keys = set(samples[0])
    for s in samples[1:]:
        keys &= set(s)
    return {k: torch.stack([s[k] for s in samples]) for k in sorted(keys)}
