"""ScanNet evaluation end to end on a synthetic scene written in the exported ScanNet layout: oracle and
perturbed predictions with known errors, the 2/3/5-view reference rules, invalid poses, the untrained
model through the CLI with baselines, and the BA-Net pair list from the splits directory."""

from __future__ import annotations

import copy
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
from dro_sfm.data.scannet import ScanNetPair, write_scannet_scene
from dro_sfm.data.synthetic import render_sequence
from dro_sfm.data.types import Frame
from dro_sfm.errors import ConfigError, InputError
from dro_sfm.eval.pipeline import EvalSample, PredictorOutput
from dro_sfm.eval.scannet import ScanNetEvalOptions, evaluate_scannet, reference_ids, resolve_pairs
from dro_sfm.geometry.pose import invert_rigid
from dro_sfm.models.config import small_config
from dro_sfm.models.dro import DroNet
from dro_sfm.models.predict import DroModel, ModelInfo

SCENE = "scene0000_00"
N_FRAMES = 16
PAIRS = [(10, 14), (12, 15), (3, 6)]
NO_POSE_FRAME = 6  # written with ScanNet's -inf "tracking lost" pose


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_pair_list(path: Path, pairs, scene: str = SCENE) -> Path:
    """The DeepV2D list format: blocks of rgb1, rgb2, depth1, depth2 with the authors' path prefix."""
    lines = []
    for a, b in pairs:
        prefix = f"/local-scratch/scannet/{scene}"
        lines += [f"{prefix}/rgb/frame-{a:06d}.color.jpg", f"{prefix}/rgb/frame-{b:06d}.color.jpg",
                  f"{prefix}/depth/frame-{a:06d}.depth.png", f"{prefix}/depth/frame-{b:06d}.depth.png"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> tuple[list[Frame], Path, Path]:
    root = tmp_path_factory.mktemp("scannet")
    frames = list(render_sequence("indoor", N_FRAMES, 48, 64, seed=5))
    written = copy.deepcopy(frames)
    written[NO_POSE_FRAME].T_world_from_cam = None
    write_scannet_scene(written, root / SCENE)
    return frames, root, write_pair_list(root / "pairs.txt", PAIRS)


class Oracle:
    """Predicts from the rendered frames: mm-quantised depth × factor, poses perturbed by known angles."""

    def __init__(self, frames: list[Frame], depth_factor: float = 1.0, rot_deg: float = 0.0) -> None:
        self.frames, self.factor, self.rot_deg = frames, depth_factor, rot_deg

    def __call__(self, sample: EvalSample) -> PredictorOutput:
        t = int(sample.sample_id.split()[1])
        depth = np.round(np.asarray(self.frames[t].depth, dtype=np.float64) * 1000.0) / 1000.0
        depth = np.where(depth > 0, depth * self.factor, 1.0)
        if sample.flipped:
            depth = depth[:, ::-1]
        T = np.stack([invert_rigid(self.frames[r].T_world_from_cam) @ self.frames[t].T_world_from_cam
                      for r in sample.meta["refs"]])
        T[:, :3, :3] = Rotation.from_euler("z", self.rot_deg, degrees=True).as_matrix() @ T[:, :3, :3]
        return PredictorOutput(depth=depth, T_ref_from_tgt=T)


def test_reference_rules_follow_the_official_test_dataset() -> None:
    pair = ScanNetPair("scene0001_00", 100, 107, ("", ""), ("", ""))
    assert reference_ids(pair, 2) == (107,)
    assert reference_ids(pair, 3) == (107, 95)
    assert reference_ids(pair, 5) == (107, 95, 105, 90)
    backwards = ScanNetPair("scene0001_00", 100, 93, ("", ""), ("", ""))
    assert reference_ids(backwards, 5) == (93, 105, 95, 110)
    with pytest.raises(ConfigError):
        reference_ids(pair, 4)


def test_perfect_predictions_give_zero_error(room) -> None:
    frames, root, pairs = room
    result = evaluate_scannet(root, {"oracle": Oracle(frames)}, {"oracle": {}}, ScanNetEvalOptions(pairs=str(pairs)))
    assert [r.sample_id for r in result.evaluated] == [f"{SCENE} {a} {b}" for a, b in PAIRS]
    m = result.method("oracle")
    assert [s.variant for s in m.depth][:4] == ["dro_scannet", "dro_scannet_pp", "dro_scannet_gt",
                                                 "dro_scannet_pp_gt"]
    assert {s.protocol.name for s in m.depth} == {"dro_scannet", "deepv2d_scannet"}
    for s in m.depth:
        assert s.n_images == 3 and s.mean["abs_rel"] < 1e-6 and s.mean["a1"] == 1.0, s.variant
    # The pair (3, 6) has an invalid ground-truth partner pose: no pose error, depth still scored.
    assert m.pose_ids == [f"{SCENE} 10 14", f"{SCENE} 12 15"] and m.n_pose_missing == 1
    assert np.all(m.pose.rot_deg < 1e-4) and np.all(m.pose.t_cm < 1e-4)
    assert result.records[2].meta["gt_pose"].startswith("invalid")


def test_known_perturbation_gives_known_error(room) -> None:
    frames, root, pairs = room
    oracle = Oracle(frames, depth_factor=0.85, rot_deg=1.5)
    result = evaluate_scannet(root, {"under": oracle}, {"under": {}},
                              ScanNetEvalOptions(pairs=str(pairs), post_process=False))
    for protocol in ("dro_scannet", "deepv2d_scannet"):
        raw, scaled = result.variant("under", protocol), result.variant("under", protocol + "_gt")
        assert raw.mean["abs_rel"] == pytest.approx(0.15, abs=1e-6)
        assert raw.mean["rmse_log"] == pytest.approx(-math.log(0.85), abs=1e-6)
        assert raw.mean["a1"] == 1.0 and scaled.mean["abs_rel"] < 1e-6
    assert np.allclose(result.method("under").pose.rot_deg, 1.5, atol=1e-3)


@pytest.mark.parametrize(("views", "evaluated"), [(3, [(10, 14), (12, 15)]), (5, [(10, 14)])])
def test_extra_views_come_from_the_sequence_and_missing_ones_are_reported(room, views, evaluated) -> None:
    frames, root, pairs = room
    result = evaluate_scannet(root, {"oracle": Oracle(frames)}, {"oracle": {}},
                              ScanNetEvalOptions(pairs=str(pairs), views=views, post_process=False))
    assert [r.sample_id for r in result.evaluated] == [f"{SCENE} {a} {b}" for a, b in evaluated]
    assert all("not found" in r.skipped for r in result.skipped)
    first = result.evaluated[0]
    assert first.meta["refs"] == list(reference_ids(ScanNetPair(SCENE, 10, 14, ("", ""), ("", "")), views))
    assert result.method("oracle").depth[0].mean["abs_rel"] < 1e-6


def test_cli_untrained_model_with_baselines(room, tmp_path) -> None:
    _, root, pairs = room
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    DroModel(DroNet(small_config(stages=1, steps_per_stage=1)), ModelInfo(image_shape=(48, 64))).save(weights)
    out = tmp_path / "scannet.json"
    res = CliRunner().invoke(main, ["eval", "scannet", "--data", str(root), "--pairs", str(pairs), "--views", "3",
                                    "--weights", str(weights), "--out", str(out), "--baselines", "--no-pp",
                                    "--colmap-threads", "1", "--no-plots"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    doc = json.loads(out.read_text())
    assert doc["views"] == 3 and doc["extra_ref_offsets"] == [-5]
    assert doc["counts"] == {"listed": 3, "evaluated": 2, "skipped": 1}
    assert set(doc["methods"]) == {"dro", "dro_0iter"}
    assert list(doc["methods"]["dro"]["depth"]) == ["dro_scannet", "dro_scannet_gt", "deepv2d_scannet",
                                                    "deepv2d_scannet_gt"]
    assert doc["colmap"]["n_samples"] == 2
    assert doc["colmap"]["n_all_views_registered"] + len(doc["colmap"]["failures"]) == 2
    assert "ScanNet depth and pose evaluation" in out.with_suffix(".md").read_text()


def test_named_pair_list(tmp_path, monkeypatch) -> None:
    splits = require_shared("data", "splits")
    assert resolve_pairs("banet", splits).name == "scannet_test_pairs.txt"
    monkeypatch.delenv("DRO_SFM_SPLITS", raising=False)
    with pytest.raises(ConfigError, match="DeepV2D"):
        resolve_pairs("banet")
    with pytest.raises(InputError, match="not found in"):
        resolve_pairs("banet", tmp_path)
    result = evaluate_scannet(tmp_path, {}, {}, ScanNetEvalOptions(splits_dir=str(splits), limit=4))
    assert len(result.records) == 4 and len(result.skipped) == 4
    assert result.skipped[0].skipped == f"scene folder scene0688_00 not in {tmp_path}"
