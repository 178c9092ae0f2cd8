"""Every `dro-sfm eval` command end to end through the CLI, the way benchmarks/eval_tables.py runs them: on
layouts written by `dro-sfm synth` (ScanNet, TUM, 7-Scenes, after `dro-sfm reconstruct` for the whole-run
commands) and on the real ../shared samples (KITTI tiny with its own split file, the 7-Scenes snippet), each
with --baselines, using a tiny untrained model so that each test stays within seconds."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import REPO_ROOT, require_shared

from dro_sfm.cli import main
from dro_sfm.models.config import small_config
from dro_sfm.models.dro import DroNet
from dro_sfm.models.predict import DroModel, ModelInfo

H, W = 48, 64
FAST_RECON = ["--height", str(H), "--width", str(W), "--fusion", "none", "--min-motion", "0", "--threads", "1",
              "--quiet"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """An untrained small model with one GRU step: the commands' plumbing, not accuracy, is under test."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    DroModel(DroNet(small_config(min_depth=0.2, max_depth=80.0, stages=1, steps_per_stage=1)),
             ModelInfo(name="untrained-tiny", image_shape=(H, W))).save(path)
    return path


def cli(*args: str) -> str:
    """Run `dro-sfm ARGS` in-process; the output, after checking the exit code."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def baseline_args(weights: Path, out: Path) -> list[str]:
    return ["--weights", str(weights), "--out", str(out), "--baselines", "--colmap-threads", "1", "--no-plots"]


def check_depth_methods(doc: dict, methods: set[str], variants: list[str], n_images: int) -> None:
    """Every method has every variant, with n_images finite means."""
    assert set(doc["methods"]) == methods
    for name, method in doc["methods"].items():
        assert list(method["depth"]) == variants, name
        for variant in method["depth"].values():
            assert variant["n_images"] == n_images
            assert all(math.isfinite(variant["mean"][k]) for k in ("abs_rel", "rmse", "a1")), name


# ----------------------------------------------------------------------------------------------- KITTI tiny
@pytest.mark.shared
def test_eval_kitti_on_kitti_tiny_with_its_split_file(tiny_weights, tmp_path) -> None:
    root = require_shared("data", "kitti_tiny")
    out = tmp_path / "kitti.json"
    text = cli("eval", "kitti", "--data", str(root), "--split", str(root / "kitti_tiny.txt"), "--limit", "2",
               *baseline_args(tiny_weights, out))
    doc = json.loads(out.read_text())
    assert doc["gt"] == "npz" and doc["ref_offsets"] == [1] and doc["post_processing"] is True
    assert doc["counts"] == {"listed": 2, "evaluated": 2, "skipped": 0}
    assert [s["sample_id"] for s in doc["per_sample"]] == [
        f"2011_09_26/2011_09_26_drive_0023_sync {i:010d} l" for i in (1, 2)]
    variants = [p + s for p in ("dro_kitti", "monodepth2_kitti") for s in ("", "_pp", "_gt", "_pp_gt")]
    check_depth_methods(doc, {"dro", "dro_0iter"}, variants, 2)
    assert all(m["pose"]["n_pairs"] == 2 for m in doc["methods"].values())  # OXTS poses
    colmap = doc["colmap"]
    assert colmap["n_samples"] == 2 and colmap["n_all_views_registered"] + len(colmap["failures"]) == 2
    assert "# KITTI depth evaluation" in text and "COLMAP baseline" in out.with_suffix(".md").read_text()


# ----------------------------------------------------------------------------------------------- ScanNet
def test_eval_scannet_on_synth_scenes(tiny_weights, tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("eval_tables", REPO_ROOT / "benchmarks" / "eval_tables.py")
    eval_tables = importlib.util.module_from_spec(spec)
    sys.modules["eval_tables"] = eval_tables  # dataclasses look their module up there
    spec.loader.exec_module(eval_tables)
    scannet_pairs, write_pair_list = eval_tables.scannet_pairs, eval_tables.write_pair_list

    root = tmp_path / "scannet"
    for i, scene in enumerate(("scene0000_00", "scene0001_00")):
        cli("synth", "--format", "scannet", "--frames", "14", "--height", str(H), "--width", str(W), "--seed",
            str(40 + i), "--motion-scale", "0.2", "--out", str(root / scene))
    pairs = scannet_pairs(14, 2)
    assert pairs == [(5, 12)]  # a second keyframe (10) has no partner 7 frames ahead in 14 frames
    pair_file = write_pair_list(tmp_path / "pairs.txt", ["scene0000_00", "scene0001_00"], pairs)
    out = tmp_path / "scannet.json"
    cli("eval", "scannet", "--data", str(root), "--pairs", str(pair_file), "--views", "3",
        *baseline_args(tiny_weights, out))
    doc = json.loads(out.read_text())
    assert doc["views"] == 3 and doc["extra_ref_offsets"] == [-5]
    assert doc["counts"] == {"listed": 2, "evaluated": 2, "skipped": 0}
    assert [s["refs"] for s in doc["per_sample"]] == [[12, 0], [12, 0]]
    variants = [p + s for p in ("dro_scannet", "deepv2d_scannet") for s in ("", "_pp", "_gt", "_pp_gt")]
    check_depth_methods(doc, {"dro", "dro_0iter"}, variants, 2)
    assert doc["colmap"]["n_samples"] == 2


# ----------------------------------------------------------------------------------------------- whole runs
@pytest.mark.parametrize("layout", ["tum", "7scenes"])
def test_reconstruct_then_eval_on_synth_layout(layout, tiny_weights, tmp_path) -> None:
    data = tmp_path / f"data_{layout}"
    cli("synth", "--format", layout, "--frames", "5", "--height", str(H), "--width", str(W), "--seed", "41",
        "--motion-scale", "0.5", "--out", str(data))
    run = tmp_path / "run"
    cli("reconstruct", str(data), "--out", str(run), "--weights", str(tiny_weights), *FAST_RECON)
    out = tmp_path / "eval.json"
    text = cli("eval", layout, "--run", str(run), "--data", str(data), *baseline_args(tiny_weights, out))
    doc = json.loads(out.read_text())
    assert doc["layout"] == layout and doc["n_matched"] == 5
    variants = [p + s for p in ("dro_scannet", "deepv2d_scannet") for s in ("", "_gt")]
    check_depth_methods(doc, {"run", "dro_0iter"}, variants, 5)
    metrics = doc["trajectory"]["run"]["metrics"]
    assert {"ape_translation_se3", "ape_translation_sim3", "rpe_rotation_deg_d1_none"} <= set(metrics)
    assert all(math.isfinite(m["stats"]["rmse"]) for m in metrics.values())
    colmap = doc["colmap_sequence"]
    assert colmap["n_images"] == 5 and colmap["n_registered"] + len(colmap["unregistered"]) == 5
    assert "## Trajectory" in text


@pytest.mark.shared
def test_reconstruct_then_eval_7scenes_on_the_shared_snippet(tiny_weights, tmp_path) -> None:
    """Real 7-Scenes poses are stored as rounded text (rotations orthonormal to ~1e-4 only)."""
    data = require_shared("data", "7scenes")
    run = tmp_path / "run"
    cli("reconstruct", str(data), "--out", str(run), "--weights", str(tiny_weights), "--step", "10", *FAST_RECON)
    out = tmp_path / "eval.json"
    cli("eval", "7scenes", "--run", str(run), "--data", str(data), *baseline_args(tiny_weights, out))
    doc = json.loads(out.read_text())
    assert doc["match"] == "name" and doc["n_matched"] == 5 and doc["n_gt_frames"] == 50
    check_depth_methods(doc, {"run", "dro_0iter"}, ["dro_scannet", "dro_scannet_gt", "deepv2d_scannet",
                                                    "deepv2d_scannet_gt"], 5)
    assert math.isfinite(doc["trajectory"]["run"]["metrics"]["rpe_rotation_deg_d1_none"]["stats"]["rmse"])
