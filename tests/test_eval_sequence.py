"""Evaluation of whole reconstruct runs: run directories built from synthetic frames (exact, in another
world frame, or scaled) against 7-Scenes and TUM layouts of the same frames; baselines; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy.spatial.transform import Rotation

from dro_sfm.cli import main
from dro_sfm.data.formats import write_frames
from dro_sfm.data.synthetic import render_sequence
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError
from dro_sfm.eval.colmap_baseline import ColmapOptions
from dro_sfm.eval.pipeline import model_methods
from dro_sfm.eval.sequence import (
    SequenceEvalOptions,
    _check_alignment,
    evaluate_sequence,
    match_frames,
    read_ground_truth,
    run_weights,
)
from dro_sfm.models.config import small_config
from dro_sfm.models.dro import DroNet
from dro_sfm.models.predict import DroModel, ModelInfo
from dro_sfm.recon.run_dir import (
    CameraRecord,
    RunCameras,
    RunLayout,
    load_cameras,
    write_cameras_json,
    write_npy,
    write_png,
)

N_FRAMES = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    return list(render_sequence("indoor", N_FRAMES, 48, 64, seed=11))


@pytest.fixture(scope="module")
def datasets(frames, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gt")
    return {"7scenes": write_frames("7scenes", frames, root / "seq-01"),
            "tum": write_frames("tum", frames, root / "rgbd_dataset_synthetic")}


def similarity(scale: float = 1.0) -> np.ndarray:
    """A world change [4,4]: rotation, translation and scale."""
    S = np.eye(4)
    S[:3, :3] = scale * Rotation.from_euler("xyz", [10, -25, 40], degrees=True).as_matrix()
    S[:3, 3] = [1.0, -2.0, 0.5]
    return S


def make_run(root: Path, frames: list[Frame], scale: float = 1.0, quantum: float = 1e-3, half: bool = False,
             sources: list[str] | None = None, stamps: bool = False) -> Path:
    """A run directory whose poses are the GT in another world frame (scaled) and whose depth is GT × scale."""
    S = similarity(scale)
    records = []
    for i, f in enumerate(frames):
        name = f"{i:06d}"
        image, K = f.image, f.K.copy()
        depth = np.round(np.asarray(f.depth, np.float64) / quantum) * quantum * scale
        if half:
            h, w = image.shape[0] // 2, image.shape[1] // 2
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
            depth = np.asarray(Image.fromarray(depth.astype(np.float32)).resize((w, h), Image.Resampling.NEAREST))
            K[:2] *= 0.5
        T = np.eye(4)
        T[:3, :3] = S[:3, :3] / scale @ f.T_world_from_cam[:3, :3]
        T[:3, 3] = S[:3, :3] @ f.T_world_from_cam[:3, 3] + S[:3, 3]
        layout = RunLayout(root)
        write_png(layout.frame_file("images", name, "png"), image)
        write_npy(layout.frame_file("depth", name, "npy"), depth.astype(np.float32))
        records.append(CameraRecord(i, name, K, T, f.timestamp if stamps else float(i),
                                    sources[i] if sources else ""))
    write_cameras_json(root, RunCameras(image.shape[1], image.shape[0], records))
    return root


def sevenscenes_sources() -> list[str]:
    return [f"/data/7scenes/seq-01/frame-{i:06d}.color.png" for i in range(N_FRAMES)]


def test_exact_run_in_another_world_frame_has_zero_error(frames, datasets, tmp_path) -> None:
    run = make_run(tmp_path / "run", frames, sources=sevenscenes_sources())
    result, extra = evaluate_sequence(run, datasets["7scenes"])
    assert result.header["match"] == "name" and result.header["n_matched"] == N_FRAMES
    metrics = extra["trajectory"]["run"]["metrics"]
    assert set(metrics) == {"ape_translation_se3", "ape_translation_sim3", "rpe_translation_d1_none",
                            "rpe_rotation_deg_d1_none"}
    for m in metrics.values():
        assert m["stats"]["rmse"] < 1e-6, m["name"]
    run_method = result.method("run")
    assert [s.variant for s in run_method.depth] == ["dro_scannet", "dro_scannet_gt", "deepv2d_scannet",
                                                     "deepv2d_scannet_gt"]
    for s in run_method.depth:
        assert s.n_images == N_FRAMES and s.mean["abs_rel"] < 1e-6
    assert run_method.pose.rot_deg.shape == (N_FRAMES,) and np.all(run_method.pose.rot_deg < 1e-4)


def test_scaled_run_needs_sim3_and_median_scaling(frames, datasets, tmp_path) -> None:
    run = make_run(tmp_path / "run", frames, scale=2.0, sources=sevenscenes_sources())
    result, extra = evaluate_sequence(run, datasets["7scenes"])
    stats = {k: v["stats"]["rmse"] for k, v in extra["trajectory"]["run"]["metrics"].items()}
    assert stats["ape_translation_sim3"] < 1e-6
    assert stats["ape_translation_se3"] > 1e-2 and stats["rpe_translation_d1_none"] > 1e-3
    assert stats["rpe_rotation_deg_d1_none"] < 1e-6
    assert extra["trajectory"]["run"]["metrics"]["ape_translation_sim3"]["alignment"]["scale"] == \
        pytest.approx(0.5, rel=1e-6)
    assert result.variant("run", "dro_scannet").mean["abs_rel"] == pytest.approx(1.0, abs=1e-6)
    assert result.variant("run", "dro_scannet_gt").mean["abs_rel"] < 1e-6
    # The BA-Net translation error fits the scale, so doubling changes nothing there.
    assert np.all(result.method("run").pose.t_cm < 1e-4)


def test_tum_by_timestamp_at_half_resolution(frames, datasets, tmp_path) -> None:
    run = make_run(tmp_path / "run", frames, quantum=1 / 5000, half=True, stamps=True)
    result, extra = evaluate_sequence(run, datasets["tum"], options=SequenceEvalOptions(layout="tum"))
    assert result.header["match"] == "timestamp" and result.header["n_matched"] == N_FRAMES
    assert extra["trajectory"]["run"]["metrics"]["ape_translation_se3"]["stats"]["rmse"] < 1e-5
    s = result.variant("run", "dro_scannet")
    assert s.n_images == N_FRAMES and 0 < s.mean["abs_rel"] < 0.2  # resizing a half-size map is not exact
    assert not any("intrinsics_differ" in r.meta for r in result.records)


def test_baselines_and_outputs(frames, datasets, tmp_path) -> None:
    run = make_run(tmp_path / "run", frames, sources=sevenscenes_sources())
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    DroModel(DroNet(small_config(stages=1, steps_per_stage=1)), ModelInfo(image_shape=(48, 64))).save(weights)
    (run / "run.json").write_text(json.dumps({"inputs": {"weights": str(weights)}}))
    assert run_weights(run) == str(weights)
    methods, descriptions = model_methods(run_weights(run), baseline=True)
    methods.pop("dro"), descriptions.pop("dro")
    out = tmp_path / "out" / "seq.json"
    result, extra = evaluate_sequence(run, datasets["7scenes"], methods, descriptions,
                                      SequenceEvalOptions(colmap=ColmapOptions(num_threads=1)), out=out)
    base = result.method("dro_0iter")
    assert base.depth[0].n_images == N_FRAMES and base.pose.rot_deg.shape == (N_FRAMES,)
    colmap = extra["colmap_sequence"]
    assert colmap["n_images"] == N_FRAMES and colmap["n_registered"] + len(colmap["unregistered"]) == N_FRAMES
    assert "colmap" in extra["trajectory"]
    doc = json.loads(out.read_text())
    assert doc["layout"] == "7scenes" and doc["match"] == "name"
    assert set(doc["methods"]) == {"run", "dro_0iter"} and "trajectory" in doc
    md = out.with_suffix(".md").read_text()
    assert "## Trajectory" in md and "ape_translation_sim3" in md
    plots = {p.name for p in (out.parent / "seq_plots").iterdir()}
    assert "run_ape_translation_se3_traj.png" in plots and "run_dro_scannet_gt_worst.png" in plots


def test_cli_7scenes_and_sequence(frames, datasets, tmp_path) -> None:
    run = make_run(tmp_path / "run", frames, sources=sevenscenes_sources())
    out = tmp_path / "cli.json"
    res = CliRunner().invoke(main, ["eval", "7scenes", "--run", str(run), "--data", str(datasets["7scenes"]),
                                    "--out", str(out), "--no-plots"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "## Trajectory" in res.output
    doc = json.loads(out.read_text())
    assert doc["trajectory"]["run"]["metrics"]["ape_translation_se3"]["stats"]["rmse"] < 1e-6
    res = CliRunner().invoke(main, ["eval", "sequence", "--run", str(run), "--data", str(datasets["tum"]),
                                    "--out", str(tmp_path / "seq.json"), "--no-plots", "--match", "order",
                                    "--protocol", "deepv2d_scannet"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    doc = json.loads((tmp_path / "seq.json").read_text())
    assert doc["layout"] == "tum" and doc["match"] == "order" and doc["protocols"] == ["deepv2d_scannet"]


def test_mismatches_are_errors(frames, datasets, tmp_path) -> None:
    run = make_run(tmp_path / "run", frames, sources=[f"other_{i}.png" for i in range(N_FRAMES)])
    _, gt = read_ground_truth(datasets["7scenes"])
    with pytest.raises(InputError, match="--match"):
        match_frames(load_cameras(run), gt, "name")
    with pytest.raises(InputError, match="no timestamps"):
        match_frames(load_cameras(run), gt, "timestamp")
    # A run image that is a crop (other aspect ratio) of the input cannot be compared pixel by pixel.
    cams = load_cameras(run)
    with pytest.raises(InputError, match="aspect ratio"):
        _check_alignment(cams, cams.frames[0].K, gt[0], (48, 96), {})
    meta: dict = {}
    _check_alignment(cams, cams.frames[0].K * 1.1, gt[0], (48, 64), meta)
    assert "intrinsics_differ" in meta
    # Another aspect ratio with the dataset's intrinsics scaled by both factors is a plain (anisotropic) resize,
    # as when a model processes 240x320 frames at 128x160.
    H, W = 60, 64
    K_scaled = np.array(gt[0].K, dtype=np.float64)
    K_scaled[0] *= cams.width / W
    K_scaled[1] *= cams.height / H
    meta = {}
    _check_alignment(cams, K_scaled, gt[0], (H, W), meta)
    assert meta["anisotropic_resize"] == [cams.width / W, cams.height / H] and "intrinsics_differ" not in meta
