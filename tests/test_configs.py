"""The shipped training configs: the official experiments are mirrored (spec §17), and every config in configs/
runs one reduced training step through ``dro-sfm train`` on small data written to a temporary folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_train import box_frames

from dro_sfm.cli import main
from dro_sfm.data.formats import write_frames
from dro_sfm.models.official import parse_official_version
from dro_sfm.train.config import load_train_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))

# spec §17: version, (H, W), (refs back, forward), batch, depth range, loss, epochs (StepLR every 30, x0.5)
OFFICIAL = {
    "kitti_supervised": ("it12-h", (320, 960), (1, 1), 2, (0.2, 80.0), "supervised", 50),
    "kitti_selfsup": ("it8-seq4-inter-out", (320, 960), (1, 1), 2, (0.5, 80.0), "selfsup", 50),
    "scannet_supervised_view3": ("it12-h-out", (240, 320), (1, 1), 8, (0.2, 10.0), "supervised", 100),
    "scannet_supervised_view5": ("it12-h-out", (384, 512), (2, 2), 2, (0.2, 10.0), "supervised", 100),
    "scannet_selfsup": ("it12-h-out", (320, 512), (1, 1), 3, (0.2, 10.0), "selfsup", 100),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_official_experiments_are_mirrored() -> None:
    names = {p.stem for p in CONFIGS}
    assert set(OFFICIAL) <= names
    assert "synthetic_small_cpu" in names
    for name, (version, hw, refs, batch, depth, loss, epochs) in OFFICIAL.items():
        cfg = load_train_config(Path(CONFIGS[0].parent / f"{name}.yaml"))
        d, o = cfg.data, cfg.optim
        assert cfg.model.official_version == version, name
        assert (d.height, d.width) == hw and (d.refs_back, d.refs_forward) == refs, name
        assert o.batch_size == batch and o.lr == 2e-4 and o.lr_gamma == 0.5, name
        assert (d.min_depth, d.max_depth) == depth and cfg.loss.kind == loss, name
        assert o.steps / o.lr_step == pytest.approx(epochs / 30, rel=1e-4), name  # same epoch length in both
        built = cfg.model.build_config(d.min_depth, d.max_depth)
        assert built == parse_official_version(version, *depth), name
        assert d.kind in ("kitti", "scannet") and d.root.startswith("${"), name  # the data path comes from the env


def _kitti_data(root: Path) -> Path:
    frames = box_frames(5, 96, 320)
    drive = write_frames("kitti", frames, root, beams=32, groundtruth=False)
    split = root / "splits" / "eigen_zhou" / "train_files.txt"  # where the KITTI configs look for the split
    split.parent.mkdir(parents=True)
    split.write_text("".join(f"{drive.parent.name}/{drive.name} {i} l\n" for i in (1, 2, 3)))
    return root


def _scannet_data(root: Path) -> Path:
    write_frames("scannet", box_frames(21, 64, 96, step_m=0.02, step_deg=0.5), root / "scene0000_00")
    (root / "scannetv2_train.txt").write_text("scene0000_00\n")
    return root


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_runs_one_reduced_step(tmp_path: Path, config: Path) -> None:
    cfg = load_train_config(config)
    kind = cfg.data.kind
    args = ["train", str(config), "--out", str(tmp_path / "run"), "--quiet",
            "--set", "data.height=64", "--set", "data.width=96", "--set", "optim.steps=1",
            "--set", "optim.batch_size=2", "--set", "data.workers=0", "--set", "model.overrides.stages=1"]
    if kind == "kitti":
        args += ["--data-root", str(_kitti_data(tmp_path / "kitti"))]
    elif kind == "scannet":
        args += ["--data-root", str(_scannet_data(tmp_path / "scannet"))]
    else:
        assert kind == "synthetic", f"{config.name}: add small data for data.kind {kind} to this test"
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "steps 0 -> 1 of 1" in res.output
    loss = float(res.output.split("last loss ")[1].split()[0])
    assert loss == loss and 0 < loss < 1e3
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    d = cfg.data
    terms = (cfg.loss.deq_residual_weight > 0, cfg.loss.deq_jacobian_weight > 0)
    expected = dataclasses.asdict(cfg.model.build_config(d.min_depth, d.max_depth, *terms).with_(stages=1))
    assert payload["model_config"] == expected  # the architecture the config names, iterations reduced
    assert payload["step"] == 1 and payload["config"]["name"] == cfg.name
