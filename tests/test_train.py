"""Training: one batch is overfitted, resume equals an uninterrupted run, every real dataset yields consistent
samples (ground truth explains the images after resizing, cropping and flipping), checkpoint errors are clear.

The frames come from a textured box room rendered here in closed form (exact depth and poses), written to
disk with the project's own dataset writers; the real ../shared samples are read where their layout fits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import require_shared

from dro_sfm.cli import main
from dro_sfm.data.formats import write_frames
from dro_sfm.data.types import Frame
from dro_sfm.errors import ConfigError, InputError
from dro_sfm.geometry.camera import backproject, project_points_pixels, transform_points
from dro_sfm.geometry.warp import warp_to_target
from dro_sfm.train.config import TrainConfig
from dro_sfm.train.datasets import build_dataset, collate
from dro_sfm.train.launch import apply_overrides
from dro_sfm.train.real_datasets import resize_depth
from dro_sfm.train.trainer import CHECKPOINT_NAME, Trainer, compact_checkpoint

# A network small enough for a CPU test step in well under a second at 64x96.
TINY_MODEL = (
    "model.overrides={stages: 1, steps_per_stage: 2, hidden_dim: 32, context_dim: 16, feature_dim: 32, "
    "head_dim: 32, motion_dim: 16, encoder: {stem: 16, layer2: 32, layer3: 64, fusion: 32}}"
)



pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------ a textured box room
ROOM_MIN = np.array([-2.0, -1.5, -1.0])
ROOM_MAX = np.array([2.0, 1.5, 4.0])


def _rotation(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation [3,3] of an axis-angle vector [3]."""
    theta = float(np.linalg.norm(axis_angle))
    if theta < 1e-12:
        return np.eye(3)
    k = axis_angle / theta
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * Kx + (1 - np.cos(theta)) * Kx @ Kx


def _wall_texture(p: np.ndarray, q: np.ndarray, wall: int, seed: int) -> np.ndarray:
    """RGB [N,3] in [0,1] at in-plane coordinates p, q [N] (metres) of one wall: sums of sinusoids."""
    rng = np.random.default_rng([seed, wall])
    out = np.zeros(p.shape + (3,))
    for c in range(3):
        acc = np.zeros(p.shape)
        for _ in range(4):
            fp, fq = rng.uniform(2, 9, 2)
            ph = rng.uniform(0, 2 * np.pi, 2)
            acc += np.sin(fp * p + ph[0]) * np.sin(fq * q + ph[1])
        out[..., c] = 0.5 + 0.12 * acc
    return np.clip(out, 0, 1)


def render_box(T_world_from_cam: np.ndarray, K: np.ndarray, height: int, width: int, seed: int = 0) -> Frame:
    """Exact image, z-depth and pose of a camera inside the textured box room."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.linalg.solve(K, np.stack([u.ravel(), v.ravel(), np.ones(u.size)]))  # z = 1: hit distance = depth
    d = T_world_from_cam[:3, :3] @ rays
    o = T_world_from_cam[:3, 3]
    depth = np.full(u.size, np.inf)
    wall = np.zeros(u.size, dtype=int)
    for axis in range(3):
        for side, plane in enumerate((ROOM_MIN[axis], ROOM_MAX[axis])):
            with np.errstate(divide="ignore", invalid="ignore"):
                s = (plane - o[axis]) / d[axis]
            hit = (s > 0) & (s < depth)
            depth[hit] = s[hit]
            wall[hit] = 2 * axis + side
    points = o[:, None] + d * depth
    rgb = np.zeros((u.size, 3))
    for w in range(6):
        m = wall == w
        a, b = [i for i in range(3) if i != w // 2]
        rgb[m] = _wall_texture(points[a, m], points[b, m], w, seed)
    image = np.round(rgb.reshape(height, width, 3) * 255).astype(np.uint8)
    return Frame(image=image, K=K.copy(), depth=depth.reshape(height, width).astype(np.float32),
                 T_world_from_cam=T_world_from_cam.copy())


def box_frames(n: int, height: int, width: int, seed: int = 0, step_m: float = 0.08, step_deg: float = 2.0):
    """``n`` frames along a straight, steadily turning path (``step_m`` / ``step_deg`` per frame)."""
    rng = np.random.default_rng(seed)
    f = 0.7 * width
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    T = np.eye(4)
    T[:3, 3] = rng.uniform(-0.3, 0.3, 3)
    velocity = rng.normal(size=3)
    velocity *= step_m / np.linalg.norm(velocity)
    omega = rng.normal(size=3)
    omega *= np.radians(step_deg) / np.linalg.norm(omega)
    frames = []
    for i in range(n):
        frame = render_box(T, K, height, width, seed)
        frame.timestamp, frame.name = 0.1 * (i + 1), f"{i:06d}"
        frames.append(frame)
        T = T.copy()
        T[:3, :3] = T[:3, :3] @ _rotation(omega)
        T[:3, 3] += velocity
    return frames


def write_box_dataset(kind: str, root: Path, n: int = 8, height: int = 64, width: int = 96, seed: int = 0,
                      sequences: int = 1) -> tuple[Path, str | None]:
    """Box-room sequences written in layout ``kind`` under ``root``; returns (data.root, data.split or None)."""
    split = None
    for s in range(sequences):
        frames = box_frames(n, height, width, seed=seed + s)
        if kind == "kitti":
            # sparse LiDAR-like depth: 24 beams only, no dense ground truth
            drive = write_frames("kitti", frames, root, drive_number=s + 1, beams=24, groundtruth=False)
            lines = [f"{drive.parent.name}/{drive.name} {i} l" for i in range(n)]
            split = root / "train_files.txt"
            with open(split, "a") as fh:
                fh.write("\n".join(lines) + "\n")
        else:
            write_frames(kind, frames, root / f"seq{s:02d}")
    return root, None if split is None else split.name


def tiny_config(tmp_path: Path, kind: str, root: Path, *extra: str, split: str | None = None) -> TrainConfig:
    assignments = [
        f"data.kind={kind}", f"data.root={root}", "data.height=64", "data.width=96", "data.max_depth=20",
        "optim.batch_size=2", f"out_dir={tmp_path / 'run'}", TINY_MODEL, "checkpoint_every=0", "log_every=1000",
        "image_log_every=0",
    ]
    if split:
        assignments.append(f"data.split={split}")
    return apply_overrides(TrainConfig(), assignments + list(extra))


# -------------------------------------------------------------------------------------- warp check
def warp_errors(sample: dict) -> tuple[float, float]:
    """Mean |target - warped ref| over pixels valid under both hypotheses: (ground-truth pose, identity)."""
    depth, K = sample["depth"][None], sample["K"][None].float()
    H, W = depth.shape[-2:]
    gt, ident = [], []
    for i in range(sample["refs"].shape[0]):
        ref = sample["refs"][i][None]
        valid = depth[:, 0] > 0
        residual = {}
        for name, T in (("gt", sample["T_ref_from_tgt"][i]), ("identity", torch.eye(4))):
            T = T.float()[None]
            uv, z = project_points_pixels(transform_points(T, backproject(depth, K)), K)
            valid &= (z[:, 0] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= W - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= H - 1)
            residual[name] = (warp_to_target(ref, depth, K, T) - sample["target"][None]).abs().mean(1)
        assert int(valid.sum()) > 200, "too few pixels valid under both hypotheses"
        gt.append(float(residual["gt"][valid].mean()))
        ident.append(float(residual["identity"][valid].mean()))
    return float(np.mean(gt)), float(np.mean(ident))


def check_samples(dataset, cfg: TrainConfig, indices, supervised: bool = True, max_ratio: float = 0.6) -> None:
    """Shapes, dtypes, key consistency and the warp check on samples ``indices``."""
    d = cfg.data
    for index in indices:
        s = dataset[index]
        assert s["target"].shape == (3, d.height, d.width)
        assert s["refs"].shape == (d.n_refs, 3, d.height, d.width)
        assert 0.0 <= float(s["target"].min()) and float(s["target"].max()) <= 1.0
        assert int(s["index"]) == index
        K = s["K"]
        assert K.shape == (3, 3) and K[0, 0] > 0 and K[1, 1] > 0 and K[2, 2] == 1
        assert -1 < float(K[0, 2]) < d.width and -1 < float(K[1, 2]) < d.height
        if not supervised:
            assert "depth" not in s and "T_ref_from_tgt" not in s
            continue
        assert s["depth"].shape == (1, d.height, d.width)
        assert s["T_ref_from_tgt"].shape == (d.n_refs, 4, 4)
        gt, ident = warp_errors(s)
        assert gt < max_ratio * ident, (index, gt, ident)


# ------------------------------------------------------------------------------------------ datasets
@pytest.mark.parametrize("kind", ["7scenes", "scannet", "tum", "kitti"])
def test_written_datasets_yield_consistent_samples(tmp_path: Path, kind: str) -> None:
    height, width = (96, 320) if kind == "kitti" else (64, 96)
    root, split = write_box_dataset(kind, tmp_path / "data", n=7, height=height, width=width, sequences=2)
    size = ("data.height=64", "data.width=192") if kind == "kitti" else ()
    cfg = tiny_config(tmp_path, kind, root, *size, split=split)
    dataset = build_dataset(cfg)
    assert len(dataset) == 2 * (7 - 2)  # every frame with a neighbour on both sides, two sequences
    check_samples(dataset, cfg, range(0, 14))
    batch = collate([dataset[i] for i in range(3)])
    assert set(batch) == {"target", "refs", "K", "depth", "T_ref_from_tgt", "index"}


def test_samples_are_fixed_by_index_and_shuffled_per_epoch(tmp_path: Path) -> None:
    root, _ = write_box_dataset("7scenes", tmp_path / "data", n=10)
    cfg = tiny_config(tmp_path, "7scenes", root, "data.refs_back=2", "data.refs_forward=2")
    a, b = build_dataset(cfg), build_dataset(cfg)
    n = len(a)
    assert n == 10 - 4
    for index in (0, 3, n + 1):
        sa, sb = a[index], b[index]
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    # one epoch visits every window once, in a different order in the next epoch
    first = [a.window_of(i)[1][2] for i in range(n)]
    second = [a.window_of(n + i)[1][2] for i in range(n)]
    assert sorted(first) == sorted(second) == list(range(2, 8))
    assert first != second or n < 3
    assert a.window_of(0)[1] == [first[0] - 2, first[0] - 1, first[0], first[0] + 1, first[0] + 2]


def test_frame_stride_and_selfsup_folder(tmp_path: Path) -> None:
    root, _ = write_box_dataset("folder", tmp_path / "data", n=9, sequences=2)
    cfg = tiny_config(tmp_path, "folder", root, "loss.kind=selfsup", "data.frame_stride=3")
    dataset = build_dataset(cfg)
    assert len(dataset) == 2 * (9 - 6)
    check_samples(dataset, cfg, range(6), supervised=False)
    _, positions = dataset.window_of(0)
    assert np.diff(positions).tolist() == [3, 3]
    with pytest.raises(ConfigError, match="selfsup"):
        build_dataset(tiny_config(tmp_path, "folder", root))


def test_dataset_configuration_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, split = write_box_dataset("kitti", tmp_path / "data", n=4, height=96, width=320)
    monkeypatch.delenv("DRO_SFM_TEST_ROOT", raising=False)
    with pytest.raises(ConfigError, match="DRO_SFM_TEST_ROOT is not set"):
        build_dataset(tiny_config(tmp_path, "kitti", "${DRO_SFM_TEST_ROOT}/kitti"))
    monkeypatch.setenv("DRO_SFM_TEST_ROOT", str(tmp_path / "data"))
    assert len(build_dataset(tiny_config(tmp_path, "kitti", "${DRO_SFM_TEST_ROOT}", split=split))) == 2
    (root / "bad_split.txt").write_text("2011_09_26/2011_09_26_drive_0001_sync 5 l\n")
    with pytest.raises(InputError, match="not under"):
        build_dataset(tiny_config(tmp_path, "kitti", root, split="bad_split.txt"))
    with pytest.raises(ConfigError, match="multiples of 16"):
        build_dataset(tiny_config(tmp_path, "kitti", root, "data.height=60", split=split))
    with pytest.raises(InputError, match="no training window"):
        build_dataset(tiny_config(tmp_path, "kitti", root, "data.frame_stride=3", split=split))


def test_sparse_depth_resize_keeps_points_at_their_pixels() -> None:
    rng = np.random.default_rng(0)
    depth = np.zeros((100, 300), dtype=np.float32)
    rows, cols = rng.integers(0, 100, 400), rng.integers(0, 300, 400)
    depth[rows, cols] = rng.uniform(1, 50, 400)
    K = np.array([[200.0, 0, 150], [0, 200, 50], [0, 0, 1]])
    K2 = K.copy()
    K2[0] *= 0.5
    K2[1] *= 0.5
    out = resize_depth(depth, K, K2, (50, 150))
    assert (out > 0).sum() > 0.8 * (depth > 0).sum()  # nearest sampling would keep only about a quarter
    r, c = np.nonzero(out)
    # every kept value is the nearest (smallest) of the source points that land on that pixel
    for rr, cc in zip(r[:50], c[:50]):
        src = depth[max(0, 2 * rr - 1):2 * rr + 2, max(0, 2 * cc - 1):2 * cc + 2]
        assert out[rr, cc] in src[src > 0]


@pytest.mark.shared
def test_shared_7scenes_samples_are_consistent(tmp_path: Path) -> None:
    root = require_shared("data", "7scenes")
    cfg = tiny_config(tmp_path, "7scenes", root, "data.height=240", "data.width=320", "data.frame_stride=12")
    dataset = build_dataset(cfg)
    assert len(dataset) == 50 - 24
    # The Kinect depth is not registered to the colour image, so the ground truth explains less (cf.
    # test_data_realwarp: gt/identity 0.49-0.74 at full resolution).
    check_samples(dataset, cfg, range(4), max_ratio=0.85)


@pytest.mark.shared
def test_shared_kitti_tiny_samples_are_consistent(tmp_path: Path) -> None:
    root = require_shared("data", "kitti_tiny")
    cfg = tiny_config(tmp_path, "kitti", root, "data.height=128", "data.width=416", split="kitti_tiny.txt")
    dataset = build_dataset(cfg)
    assert len(dataset) == 5  # frames 1-5 of image_02, each with frames on both sides
    check_samples(dataset, cfg, range(4))


# ------------------------------------------------------------------------------------------ training
def test_one_batch_is_overfitted(tmp_path: Path) -> None:
    root, _ = write_box_dataset("7scenes", tmp_path / "data", n=6)
    cfg = tiny_config(tmp_path, "7scenes", root, "data.augment=false", "optim.lr=1e-3")
    trainer = Trainer(cfg)
    batch = collate([trainer.dataset[0], trainer.dataset[1]])
    results = [trainer.train_step(batch) for _ in range(30)]
    losses = np.array([r.loss for r in results])
    pose = np.array([r.terms["pose"] for r in results])
    # measured over seeds 0-2: half by step 2-4; last five 0.03-0.10 (total) and 0.05-0.22 (pose term)
    assert losses[:10].min() < 0.5 * losses[0], losses
    assert np.median(losses[-5:]) < 0.25 * losses[0], losses
    assert pose[0] > 0 and np.median(pose[-5:]) < 0.5 * pose[0], pose  # the pose branch learns too


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    root, _ = write_box_dataset("7scenes", tmp_path / "data", n=8)
    full_cfg = tiny_config(tmp_path / "full", "7scenes", root, "optim.steps=5", "optim.lr_step=2")
    full = Trainer(full_cfg).run(progress=False)
    assert [r.step for r in full] == [1, 2, 3, 4, 5]
    full_params = {k: v.clone() for k, v in Trainer(full_cfg, resume=True).net.state_dict().items()}

    part_cfg = tiny_config(tmp_path / "part", "7scenes", root, "optim.steps=5", "optim.lr_step=2")
    first = Trainer(part_cfg).run(max_steps=3, progress=False)
    assert [r.loss for r in first] == [r.loss for r in full[:3]]
    resumed = Trainer(part_cfg, resume=True)
    assert resumed.step == 3 and resumed.scheduler.get_last_lr()[0] == pytest.approx(2e-4 * 0.5)
    rest = resumed.run(progress=False)
    assert [r.step for r in rest] == [4, 5]
    for a, b in zip(rest, full[3:]):
        assert a.loss == pytest.approx(b.loss, abs=1e-6, rel=1e-6)
    for key, value in resumed.net.state_dict().items():
        assert torch.allclose(value, full_params[key], atol=1e-6, rtol=0), key


def test_compact_checkpoint_resumes_with_fresh_adam_and_everything_else_restored(tmp_path: Path, caplog) -> None:
    root, _ = write_box_dataset("7scenes", tmp_path / "data", n=8)
    cfg = tiny_config(tmp_path / "run", "7scenes", root, "optim.steps=5", "optim.lr_step=2")
    Trainer(cfg).run(max_steps=3, progress=False)
    path = Path(cfg.out_dir) / CHECKPOINT_NAME
    full_size = path.stat().st_size
    weights = {k: v.clone() for k, v in Trainer(cfg, resume=True).net.state_dict().items()}
    assert compact_checkpoint(path) < 0.5 * full_size  # Adam keeps two moments per parameter
    with caplog.at_level("WARNING"):
        resumed = Trainer(cfg, resume=True)
    assert "without optimiser state" in caplog.text
    assert resumed.step == 3 and resumed.scheduler.get_last_lr()[0] == pytest.approx(2e-4 * 0.5)
    assert resumed.optimizer.state_dict()["state"] == {}
    for key, value in resumed.net.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert [r.step for r in resumed.run(progress=False)] == [4, 5]


# ---------------------------------------------------------------------------------------------- CLI
def _write_config(path: Path, root: Path) -> Path:
    path.write_text(
        "name: tiny\n"
        "data: {kind: 7scenes, root: " + str(root) + ", height: 64, width: 96, max_depth: 10.0}\n"
        "model: {preset: small}\n"
        "optim: {batch_size: 2, steps: 2, lr: 2e-4}\n"
        "checkpoint_every: 0\n"
    )
    return path


def test_cli_trains_and_rejects_bad_checkpoints(tmp_path: Path) -> None:
    root, _ = write_box_dataset("7scenes", tmp_path / "data", n=5)
    config = _write_config(tmp_path / "tiny.yaml", root)
    out = tmp_path / "run"
    runner = CliRunner()
    tiny = ["--set", TINY_MODEL, "--quiet"]
    res = runner.invoke(main, ["train", str(config), "--out", str(out), *tiny])
    assert res.exit_code == 0, res.output
    assert "steps 0 -> 2 of 2" in res.output
    assert (out / "checkpoint.pt").is_file() and (out / "model.pt").is_file() and (out / "config.yaml").is_file()

    from dro_sfm.models.predict import DroModel

    model = DroModel.load(out / "model.pt")
    assert model.info.trained and model.info.image_shape == (64, 96) and model.config.hidden_dim == 32

    def fails(*args: str) -> str:
        r = runner.invoke(main, ["train", str(config), "--out", str(out), "--resume", *args])
        assert r.exit_code == 1, r.output
        assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
        return r.output

    good = (out / "checkpoint.pt").read_bytes()
    # an incompatible model: the checkpoint was trained with hidden_dim 32
    assert "different model configuration" in fails("--set", "model.overrides={hidden_dim: 48}")
    # corrupt and truncated files
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    assert "corrupt" in fails(*tiny)
    (out / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    assert "corrupt" in fails(*tiny)
    # a model file is not a training checkpoint
    shutil.copy(out / "model.pt", out / "checkpoint.pt")
    assert "not a dro-sfm training checkpoint" in fails(*tiny)
    (out / "checkpoint.pt").unlink()
    assert "does not exist" in fails(*tiny)
    # the intact checkpoint resumes, and there is nothing left to do at the last step
    (out / "checkpoint.pt").write_bytes(good)
    res = runner.invoke(main, ["train", str(config), "--out", str(out), "--resume", *tiny])
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output
    res = runner.invoke(main, ["train", str(config), "--out", str(out), "--compact", *tiny])
    assert res.exit_code == 0 and "without optimiser state" in res.output, res.output
    assert (out / "checkpoint.pt").stat().st_size < 0.5 * len(good)
    bad = runner.invoke(main, ["train", str(config), "--set", "optim.lr=fast"])
    assert bad.exit_code == 1 and "optim.lr" in bad.output


def test_validation_scores_in_eval_mode_without_changing_training(tmp_path: Path) -> None:
    """Eval-mode validation on reserved samples is logged and leaves the training trajectory untouched."""
    base = [
        "data.kind=synthetic", "data.scenes=indoor", "data.height=64", "data.width=96", "data.samples_per_scene=2",
        "data.augment=false", "optim.batch_size=1", "optim.steps=2", TINY_MODEL, "checkpoint_every=0",
        "log_every=1000", "image_log_every=0",
    ]
    plain = Trainer(apply_overrides(TrainConfig(), base + [f"out_dir={tmp_path / 'a'}"])).run(progress=False)
    trainer = Trainer(apply_overrides(
        TrainConfig(), base + [f"out_dir={tmp_path / 'b'}", "val_every=1", "val_samples=2"]))
    validated = trainer.run(progress=False)
    assert [r.loss for r in validated] == [r.loss for r in plain]
    assert trainer.net.training, "validation must hand the network back in train mode"
    rows = trainer.validation_scores()
    total = trainer.net.config.stages * trainer.net.config.steps_per_stage
    assert {r.predictor for r in rows} == {"dro-0", f"dro-{total}"}
    assert all(r.kind == "indoor" and r.n == 2 and np.isfinite(r.abs_rel) and np.isfinite(r.rot_deg) for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(tmp_path / "b" / "tb")).Reload().Tags()["scalars"]
    assert "val_indoor/abs_rel_it0" in tags and "val_indoor/rot_deg_it0" in tags
    assert "val_indoor/depth_scale_it0" in tags and "val_indoor/translation_scale_it0" in tags


def test_reinit_resets_the_named_modules_after_the_warm_start(tmp_path: Path) -> None:
    """model.reinit re-draws the named heads of a warm-started model and leaves every other weight as loaded."""
    from dro_sfm.models.predict import DroModel, ModelInfo

    base = ["data.kind=synthetic", "data.height=64", "data.width=96", TINY_MODEL, f"out_dir={tmp_path / 'run'}"]
    donor = Trainer(apply_overrides(TrainConfig(), base))
    for p in donor.net.parameters():
        p.data.fill_(0.5)
    DroModel(donor.net, ModelInfo(name="donor", image_shape=(64, 96))).save(tmp_path / "donor.pt")
    cfg = apply_overrides(TrainConfig(), base + [
        f"model.init_weights={tmp_path / 'donor.pt'}", "model.reinit=[pose_head, update_block_pose.pose_head]"])
    assert cfg.model.reinit == ["pose_head", "update_block_pose.pose_head"]
    net = Trainer(cfg).net
    for name, p in net.named_parameters():
        redrawn = name.startswith(("pose_head.", "update_block_pose.pose_head."))
        assert bool((p != 0.5).any()) == redrawn, name


def test_warm_start_from_another_runs_training_checkpoint(tmp_path: Path) -> None:
    """model.init_weights also takes a run's checkpoint.pt: its weights, but a fresh step, optimiser and schedule."""
    base = ["data.kind=synthetic", "data.height=64", "data.width=96", TINY_MODEL]
    donor = Trainer(apply_overrides(TrainConfig(), base + [f"out_dir={tmp_path / 'donor'}"]))
    for p in donor.net.parameters():
        p.data.fill_(0.25)
    donor.step = 7
    ckpt = donor.save_checkpoint()
    trainer = Trainer(apply_overrides(TrainConfig(), base + [f"out_dir={tmp_path / 'run'}",
                                                             f"model.init_weights={ckpt}"]))
    assert trainer.step == 0
    assert all(bool((p == 0.25).all()) for p in trainer.net.parameters())


@pytest.mark.parametrize(("value", "message"), [
    ("[no_such_head]", "no module 'no_such_head'"),
    ("[update_block_pose.pose_head.relu]", "no parameters"),
    ("pose_head", "expected a list"),
])
def test_reinit_names_are_checked(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Trainer(apply_overrides(TrainConfig(), [
            "data.kind=synthetic", "data.height=64", "data.width=96", TINY_MODEL, f"out_dir={tmp_path}",
            f"model.reinit={value}"]))


def test_head_activity_reports_a_dead_head_and_training_warns(tmp_path: Path, caplog) -> None:
    """A head whose hidden ReLUs are all negative reads 0 % active; image logging warns about it."""
    from dro_sfm.train.dormant import head_activity

    trainer = Trainer(apply_overrides(TrainConfig(), [
        "data.kind=synthetic", "data.scenes=indoor", "data.height=64", "data.width=96", "data.samples_per_scene=2",
        "data.augment=false", "optim.batch_size=1", "optim.steps=1", TINY_MODEL, "checkpoint_every=0",
        "image_log_every=1", f"out_dir={tmp_path}"]))
    batch = collate([trainer.dataset[0]])
    args = (batch["target"], list(batch["refs"].unbind(1)), batch["K"].float())
    alive = head_activity(trainer.net, *args)
    assert all(0.0 < v < 1.0 for v in alive.values()), alive
    with torch.no_grad():
        trainer.net.update_block_pose.pose_head.conv1_pose.bias.fill_(-1e3)
    activity = head_activity(trainer.net, *args)
    assert activity["update_pose_head"] == 0.0 and activity["pose_head"] > 0.0
    assert trainer.net.training
    with caplog.at_level("WARNING"):
        trainer.run(progress=False)
    assert "no active unit in update_pose_head" in caplog.text


def test_recycling_redraws_dormant_units_without_changing_the_outputs(tmp_path: Path) -> None:
    """ReDo: a dormant unit gets fresh incoming weights and zero outgoing ones; the outputs stay the same."""
    from dro_sfm.train.dormant import recycle_dormant_units, unit_activity

    trainer = Trainer(apply_overrides(TrainConfig(), [
        "data.kind=synthetic", "data.scenes=indoor", "data.height=64", "data.width=96", "data.samples_per_scene=2",
        "data.augment=false", "optim.batch_size=1", "optim.steps=1", TINY_MODEL, "checkpoint_every=0",
        "image_log_every=0", f"out_dir={tmp_path}"]))
    trainer.run(progress=False)  # the optimiser now holds moments for every parameter
    net = trainer.net
    batch = collate([trainer.dataset[1]])
    args = (batch["target"], list(batch["refs"].unbind(1)), batch["K"].float())
    hidden, reader = net.update_block_pose.pose_head.conv1_pose, net.update_block_pose.pose_head.conv2_pose
    with torch.no_grad():
        hidden.bias[[0, 3]] = -1e3  # units 0 and 3 never fire
    net.eval()
    with torch.no_grad():
        before = net.forward_full(*args)
    w_before, r_before = hidden.weight.clone(), reader.weight.clone()
    activity = unit_activity(net, *args)
    assert activity["update_pose_head"][[0, 3]].tolist() == [0.0, 0.0]
    assert (activity["update_pose_head"] > 0).sum() >= 0.5 * hidden.out_channels  # the others are alive
    report = recycle_dormant_units(net, activity, torch.Generator().manual_seed(0), trainer.optimizer)
    assert report.dormant["update_pose_head"] >= 2 and "update_pose_head" in report.summary()
    dormant = activity["update_pose_head"] == 0
    assert not torch.equal(hidden.weight[dormant], w_before[dormant])
    assert torch.equal(hidden.weight[~dormant], w_before[~dormant])
    assert -1.0 < float(hidden.bias.detach()[0]) < 1.0
    assert bool((reader.weight[:, dormant] == 0).all()) and torch.equal(reader.weight[:, ~dormant],
                                                                        r_before[:, ~dormant])
    moments = trainer.optimizer.state[hidden.weight]
    assert bool((moments["exp_avg"][dormant] == 0).all()) and bool((moments["exp_avg_sq"][dormant] == 0).all())
    with torch.no_grad():
        after = net.forward_full(*args)
    torch.testing.assert_close(after.inv_depths[-1], before.inv_depths[-1])
    torch.testing.assert_close(after.poses[-1], before.poses[-1])


def test_training_recycles_dormant_units_when_configured(tmp_path: Path, caplog) -> None:
    trainer = Trainer(apply_overrides(TrainConfig(), [
        "data.kind=synthetic", "data.scenes=indoor", "data.height=64", "data.width=96", "data.samples_per_scene=2",
        "data.augment=false", "optim.batch_size=1", "optim.steps=2", TINY_MODEL, "checkpoint_every=0",
        "image_log_every=0", "optim.recycle_dormant_every=2", f"out_dir={tmp_path}"]))
    with torch.no_grad():
        trainer.net.pose_head.conv1_pose.bias.fill_(-1e3)  # the whole initial pose head is dormant
    with caplog.at_level("INFO"):
        trainer.run(progress=False)
    width = trainer.net.pose_head.conv1_pose.out_channels
    assert f"pose_head {width}/{width}" in caplog.text
    assert float(trainer.net.pose_head.conv1_pose.bias.detach().abs().max()) < 1.0


def test_weight_average_resumes_exactly_and_is_what_validation_and_export_use(tmp_path: Path) -> None:
    from dro_sfm.train.model_card import read_training_run

    root, _ = write_box_dataset("7scenes", tmp_path / "data", n=8)
    extra = ("optim.steps=4", "optim.ema_decay=0.5", "checkpoint_every=2")
    full = Trainer(tiny_config(tmp_path / "full", "7scenes", root, *extra))
    snapshots = []
    for _ in range(4):
        full.run(max_steps=1, progress=False)
        snapshots.append({k: v.detach().clone() for k, v in full.net.state_dict().items()})
    # EMA with decay 0.5: the first update copies, each later one halves the distance to the new weights
    key = next(k for k, v in full.net.state_dict().items() if v.is_floating_point() and "weight" in k)
    expected = snapshots[0][key]
    for snap in snapshots[1:]:
        expected = 0.5 * expected + 0.5 * snap[key]
    assert torch.allclose(full.shipped_net.state_dict()[key], expected, atol=1e-6)
    assert not torch.allclose(full.shipped_net.state_dict()[key], snapshots[-1][key])

    part_cfg = tiny_config(tmp_path / "part", "7scenes", root, *extra)
    Trainer(part_cfg).run(max_steps=2, progress=False)
    resumed = Trainer(part_cfg, resume=True)
    assert int(resumed.ema.n_averaged) == 2
    resumed.run(progress=False)
    for k, v in resumed.shipped_net.state_dict().items():
        assert torch.allclose(v, full.shipped_net.state_dict()[k], atol=1e-6, rtol=0), k

    run = read_training_run(Path(part_cfg.out_dir))
    assert run.averaged and torch.equal(run.state_dict[key], resumed.shipped_net.state_dict()[key])
