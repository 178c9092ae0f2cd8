"""KITTI evaluation end to end: synthetic drives in the KITTI raw layout (oracle and perturbed predictions with
known errors, every ground-truth source), the untrained model through the CLI with baselines, split lookup,
and the real kitti_tiny sample with a split file naming its frames."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import require_shared
from scipy.spatial.transform import Rotation

from dro_sfm.cli import main
from dro_sfm.data.kitti import write_kitti_drive
from dro_sfm.data.synthetic import render_sequence
from dro_sfm.data.types import Frame
from dro_sfm.errors import ConfigError, InputError
from dro_sfm.eval.kitti import KittiEvalOptions, evaluate_kitti, resolve_split
from dro_sfm.eval.pipeline import EvalSample, PredictorOutput, model_methods
from dro_sfm.geometry.pose import invert_rigid
from dro_sfm.models.config import small_config
from dro_sfm.models.dro import DroNet
from dro_sfm.models.predict import DroModel, ModelInfo

DATE = "2011_09_26"
DRIVE = f"{DATE}/{DATE}_drive_0001_sync"
N_FRAMES = 5
MAX_GT_DEPTH = 60.0  # below 80/1.1, so a 10% over-estimate is never clamped by the 80 m cap


# ----------------------------------------------------------------------------------------------- helpers
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_street(n_frames: int = N_FRAMES, height: int = 48, width: int = 160, seed: int = 3) -> list[Frame]:
    """Rendered street frames with depth beyond MAX_GT_DEPTH (and sky) set to 0 = no measurement."""
    frames = list(render_sequence("outdoor", n_frames, height, width, seed=seed))
    for f in frames:
        depth = np.asarray(f.depth, dtype=np.float32)
        f.depth = np.where((depth > 0) & (depth < MAX_GT_DEPTH), depth, 0.0).astype(np.float32)
    return frames


def write_kitti_layout(frames: list[Frame], root: Path) -> Path:
    """The frames as drive 0001 of 2011_09_26 (camera 2, with .bin scans, npz and improved GT)."""
    return write_kitti_drive(frames, root, date=DATE, drive_number=1, camera=2)


def write_split(path: Path, indices, drive: str = DRIVE) -> Path:
    path.write_text("".join(f"{drive} {i} l\n" for i in indices))
    return path


def frame_index(sample: EvalSample) -> int:
    return int(sample.sample_id.split()[1])


class Oracle:
    """Predicts from the rendered frames (not from the loaded sample): depth × factor, poses rotated."""

    def __init__(self, frames: list[Frame], depth_factor: float = 1.0, rot_deg: float = 0.0,
                 tdir_deg: float = 0.0, quantum: float | None = None) -> None:
        self.frames, self.factor, self.rot_deg, self.tdir_deg, self.quantum = (
            frames, depth_factor, rot_deg, tdir_deg, quantum)

    def __call__(self, sample: EvalSample) -> PredictorOutput:
        i = frame_index(sample)
        depth = np.asarray(self.frames[i].depth, dtype=np.float64)
        if self.quantum is not None:  # the improved GT png stores metres·256 as integers
            depth = np.round(depth / self.quantum) * self.quantum
        depth = np.where(depth > 0, depth * self.factor, 1.0)
        if sample.flipped:
            depth = depth[:, ::-1]
        refs = [i + o for o in sample.meta["refs"]]
        T = np.stack([invert_rigid(self.frames[r].T_world_from_cam) @ self.frames[i].T_world_from_cam
                      for r in refs])
        T[:, :3, :3] = Rotation.from_euler("y", self.rot_deg, degrees=True).as_matrix() @ T[:, :3, :3]
        T[:, :3, 3] = T[:, :3, 3] @ Rotation.from_euler("x", self.tdir_deg, degrees=True).as_matrix().T
        return PredictorOutput(depth=depth, T_ref_from_tgt=T)


@pytest.fixture(scope="module")
def street(tmp_path_factory) -> tuple[list[Frame], Path, Path]:
    root = tmp_path_factory.mktemp("kitti_raw")
    frames = synthetic_street()
    write_kitti_layout(frames, root)
    split = write_split(root / "split.txt", range(N_FRAMES))
    return frames, root, split


def tiny_model_file(path: Path, image_shape: tuple[int, int] = (32, 96)) -> Path:
    torch.manual_seed(0)
    model = DroModel(DroNet(small_config(min_depth=0.2, max_depth=80.0, stages=1, steps_per_stage=1)),
                     ModelInfo(name="untrained-small", image_shape=image_shape))
    model.save(path)
    return path


# ----------------------------------------------------------------------------------------------- oracle tests
@pytest.mark.parametrize("gt", ["velodyne", "npz", "improved"])
def test_perfect_predictions_give_zero_error(street, gt: str) -> None:
    frames, root, split = street
    quantum = 1.0 / 256.0 if gt == "improved" else None
    methods = {"oracle": Oracle(frames, quantum=quantum)}
    result = evaluate_kitti(root, methods, {"oracle": {}}, KittiEvalOptions(split=str(split), gt=gt))

    assert len(result.records) == N_FRAMES and len(result.evaluated) == N_FRAMES - 1
    (skipped,) = result.skipped  # the last frame has no next frame: reported, not dropped silently
    assert skipped.sample_id == f"{DRIVE} {N_FRAMES - 1:010d} l" and "reference frame" in skipped.skipped
    m = result.method("oracle")
    assert [s.variant for s in m.depth] == [
        "dro_kitti", "dro_kitti_pp", "dro_kitti_gt", "dro_kitti_pp_gt",
        "monodepth2_kitti", "monodepth2_kitti_pp", "monodepth2_kitti_gt", "monodepth2_kitti_pp_gt"]
    for summary in m.depth:
        assert summary.n_images == N_FRAMES - 1
        assert all(r.n_valid > 100 for r in summary.per_image)
        assert summary.mean["abs_rel"] < 1e-6 and summary.mean["rmse"] < 1e-4, summary.variant
        assert summary.mean["a1"] == 1.0
    # OXTS round trip: the relative poses come back through lat/lon/alt text files.
    assert m.pose is not None and m.pose.rot_deg.shape == (N_FRAMES - 1,)
    assert np.all(m.pose.rot_deg < 1e-4) and np.all(m.pose.t_cm < 1e-3)


def test_known_perturbation_gives_known_error(street) -> None:
    frames, root, split = street
    methods = {"over": Oracle(frames, depth_factor=1.1, rot_deg=2.0, tdir_deg=5.0)}
    result = evaluate_kitti(root, methods, {"over": {}}, KittiEvalOptions(split=str(split), gt="npz"))
    for variant in ("dro_kitti", "dro_kitti_pp", "monodepth2_kitti", "monodepth2_kitti_pp"):
        s = result.variant("over", variant)
        assert s.mean["abs_rel"] == pytest.approx(0.1, abs=1e-6)
        assert s.mean["rmse_log"] == pytest.approx(math.log(1.1), abs=1e-6)
        assert s.mean["a1"] == 1.0 and s.mean["silog"] < 1e-6
    for variant in ("dro_kitti_gt", "dro_kitti_pp_gt", "monodepth2_kitti_gt", "monodepth2_kitti_pp_gt"):
        s = result.variant("over", variant)
        assert s.mean["abs_rel"] < 1e-6
        assert all(r.scale == pytest.approx(1 / 1.1, rel=1e-6) for r in s.per_image)
    pose = result.method("over").pose
    assert np.allclose(pose.rot_deg, 2.0, atol=1e-3)
    assert np.allclose(pose.tdir_deg, 5.0, atol=2e-3)
    # The least-squares scale leaves the component orthogonal to the predicted direction: |t|·sin 5°.
    t_norms = np.array([np.linalg.norm((invert_rigid(frames[i + 1].T_world_from_cam)
                                        @ frames[i].T_world_from_cam)[:3, 3]) for i in range(N_FRAMES - 1)])
    assert np.allclose(pose.t_cm, 100 * t_norms * math.sin(math.radians(5.0)), rtol=1e-3)


def test_mirror_policy_evaluates_the_last_frame_with_the_previous_one(street) -> None:
    frames, root, split = street
    options = KittiEvalOptions(split=str(split), gt="velodyne", missing_ref="mirror", post_process=False)
    result = evaluate_kitti(root, {"oracle": Oracle(frames)}, {"oracle": {}}, options)
    assert not result.skipped
    last = result.records[-1]
    assert last.meta == {"refs": [-1], "mirrored_reference": True}
    assert [s.variant for s in result.method("oracle").depth] == [
        "dro_kitti", "dro_kitti_gt", "monodepth2_kitti", "monodepth2_kitti_gt"]
    assert np.all(result.method("oracle").pose.rot_deg < 1e-4)


# ----------------------------------------------------------------------------------------------- model + CLI
def test_cli_untrained_model_with_baselines(street, tmp_path) -> None:
    frames, root, _ = street
    split = write_split(tmp_path / "split.txt", [0, 1])
    weights = tiny_model_file(tmp_path / "tiny.pt")
    out = tmp_path / "res" / "results.json"
    args = ["eval", "kitti", "--data", str(root), "--split", str(split), "--weights", str(weights),
            "--out", str(out), "--baselines", "--colmap-threads", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    doc = json.loads(out.read_text())
    assert doc["gt"] == "velodyne"  # auto: the root has raw .bin scans
    assert doc["counts"] == {"listed": 2, "evaluated": 2, "skipped": 0}
    assert set(doc["methods"]) == {"dro", "dro_0iter"}
    assert doc["methods"]["dro"]["iterations"] == 1 and doc["methods"]["dro_0iter"]["iterations"] == 0
    for method in doc["methods"].values():
        depth = method["depth"]
        assert list(depth)[:4] == ["dro_kitti", "dro_kitti_pp", "dro_kitti_gt", "dro_kitti_pp_gt"]
        for variant in depth.values():
            assert len(variant["per_frame"]) == 2 and variant["n_images"] == 2
            assert all(math.isfinite(variant["mean"][k]) for k in ("abs_rel", "rmse", "a1"))
        assert method["pose"]["n_pairs"] == 2
    colmap = doc["colmap"]
    assert colmap["n_samples"] == 2
    assert colmap["n_all_views_registered"] + len(colmap["failures"]) == 2
    for failure in colmap["failures"]:
        assert failure["unregistered"]
    md = out.with_suffix(".md").read_text()
    assert "| variant | images | abs_rel | sq_rel | rmse | rmse_log | a1 | a2 | a3 | silog | l1_inv |" in md
    assert "## dro_0iter" in md and "COLMAP baseline" in md and "official DRO test context" in md
    plots = sorted(p.name for p in (out.parent / "results_plots").iterdir())
    assert "dro_dro_kitti_pp_gt_worst.png" in plots and "dro_0iter_dro_kitti_pp_gt_abs_rel_hist.png" in plots
    assert "# KITTI depth evaluation" in res.output


def test_model_methods_share_one_model(tmp_path) -> None:
    methods, descriptions = model_methods(str(tiny_model_file(tmp_path / "m.pt")), baseline=True)
    assert methods["dro"].model is methods["dro_0iter"].model
    assert descriptions["dro_0iter"]["stages"] == 0 and descriptions["dro"]["image_shape"] == [32, 96]


# ----------------------------------------------------------------------------------------------- splits
def test_named_splits_resolve_in_the_splits_directory(monkeypatch) -> None:
    splits = require_shared("data", "splits")
    assert resolve_split("eigen", splits).read_text().count("\n") >= 696
    monkeypatch.setenv("DRO_SFM_SPLITS", str(splits))
    assert resolve_split("eigen_benchmark").name == "test_files.txt"
    assert resolve_split("eigen_benchmark").parent.name == "eigen_benchmark"


def test_named_split_without_directory_says_where_to_get_it(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("DRO_SFM_SPLITS", raising=False)
    with pytest.raises(ConfigError, match="monodepth2"):
        resolve_split("eigen")
    with pytest.raises(InputError, match="not found in"):
        resolve_split("eigen", tmp_path)
    with pytest.raises(InputError, match="neither a file"):
        resolve_split(str(tmp_path / "nope.txt"))


def test_eigen_split_on_a_root_without_those_drives_reports_every_frame(tmp_path, street) -> None:
    _, root, _ = street
    splits = require_shared("data", "splits")
    options = KittiEvalOptions(split="eigen", splits_dir=str(splits), gt="npz", limit=3)
    result = evaluate_kitti(root, {"oracle": lambda s: None}, {"oracle": {}}, options)
    assert len(result.skipped) == 3 and all("missing" in r.skipped for r in result.skipped)
    with pytest.raises(InputError, match="KITTI raw root"):
        evaluate_kitti(tmp_path, {}, {}, KittiEvalOptions(split="eigen", splits_dir=str(splits), limit=3))


# ----------------------------------------------------------------------------------------------- kitti_tiny
@pytest.mark.shared
def test_kitti_tiny_with_a_split_file_naming_its_frames(tmp_path) -> None:
    root = require_shared("data", "kitti_tiny")
    split = write_split(tmp_path / "kitti_tiny.txt", range(7), drive="2011_09_26/2011_09_26_drive_0023_sync")
    methods, descriptions = model_methods(str(tiny_model_file(tmp_path / "tiny.pt")))
    out = tmp_path / "tiny.json"
    result = evaluate_kitti(root, methods, descriptions, KittiEvalOptions(split=str(split), post_process=False),
                            out=out, plots=False)
    assert result.header["gt"] == "npz"  # kitti_tiny ships packnet npz, no .bin scans
    assert len(result.evaluated) == 6
    assert [r.sample_id for r in result.skipped] == ["2011_09_26/2011_09_26_drive_0023_sync 0000000006 l"]
    s = result.variant("dro", "dro_kitti_gt")
    assert s.n_images == 6 and all(r.n_valid > 5000 for r in s.per_image)
    assert 0.0 < s.mean["abs_rel"] < 5.0
    pose = result.method("dro").pose
    assert pose is not None and pose.rot_deg.shape == (6,)  # ground truth from the OXTS packets
    doc = json.loads(out.read_text())
    assert doc["skipped"][0]["reason"].startswith("reference frame(s) [7]")
