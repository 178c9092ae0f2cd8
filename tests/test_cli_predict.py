"""End-to-end tests of `dro-sfm predict` and of the CLI's error handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from dro_sfm.cli import main
from dro_sfm.models.config import small_config
from dro_sfm.models.dro import DroNet
from dro_sfm.models.predict import DroModel, ModelInfo, load_model


def _tiny_model(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = small_config(stages=1, steps_per_stage=2, min_depth=0.5, max_depth=20.0)
    DroModel(DroNet(cfg), ModelInfo(name="tiny-test", image_shape=(64, 96), trained=False)).save(path)
    return path


def _images(tmp: Path, n: int = 3, size=(70, 100)) -> list[Path]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size[0], size[1] + 4 * n, 3), dtype=np.uint8)
    paths = []
    for i in range(n):
        p = tmp / f"img{i}.png"
        Image.fromarray(np.ascontiguousarray(base[:, 2 * i: 2 * i + size[1]])).save(p)
        paths.append(p)
    return paths


def test_predict_writes_depth_and_poses(tmp_path: Path) -> None:
    weights = _tiny_model(tmp_path / "tiny.pt")
    imgs = _images(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["predict", str(imgs[1]), str(imgs[0]), str(imgs[2]), "--out", str(out),
                                    "--weights", str(weights), "--intrinsics", "80,80,50,35"])
    assert res.exit_code == 0, res.output
    depth = np.load(out / "depth.npy")
    assert depth.shape == (70, 100) and depth.dtype == np.float32  # returned at the input size
    assert np.all(depth >= 0) and np.isfinite(depth).all()
    poses = json.loads((out / "poses.json").read_text())
    assert len(poses["references"]) == 2
    for ref in poses["references"]:
        T = np.array(ref["T_ref_from_tgt"])
        np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-5)
    assert Image.open(out / "depth.png").size == (100, 70)
    assert "UNTRAINED" in res.output  # untrained weights are labelled as such


def test_predict_rejects_mixed_sizes_without_traceback(tmp_path: Path) -> None:
    weights = _tiny_model(tmp_path / "tiny.pt")
    a = _images(tmp_path, 1, (70, 100))[0]
    b = tmp_path / "small.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(b)
    res = CliRunner().invoke(main, ["predict", str(a), str(b), "--out", str(tmp_path / "o"), "--weights", str(weights)])
    assert res.exit_code == 1
    assert "differs from the target" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "o" / "depth.npy").exists()


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    imgs = _images(tmp_path, 2)
    res = CliRunner().invoke(main, ["predict", str(imgs[0]), str(imgs[1]), "--out", str(tmp_path / "o"),
                                    "--weights", str(tmp_path / "nope.pt")])
    assert res.exit_code == 1
    assert "nope.pt" in res.output and "Traceback" not in res.output


def test_model_round_trip_preserves_outputs(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "m.pt")
    a, b = DroModel.load(path), DroModel.load(path)
    assert a.info.image_shape == (64, 96)
    x = torch.rand(1, 3, 64, 96)
    K = torch.tensor([[60.0, 0, 48], [0, 60, 32], [0, 0, 1]])
    pa, pb = a.predict(x, [x.flip(-1)], K), b.predict(x, [x.flip(-1)], K)
    assert torch.equal(pa.depth, pb.depth) and torch.equal(pa.T_ref_from_tgt, pb.T_ref_from_tgt)


def test_load_model_falls_back_to_untrained_default_with_warning(caplog, monkeypatch, tmp_path: Path) -> None:
    from dro_sfm.models import weights

    monkeypatch.setattr(weights, "PACKAGE_WEIGHTS_DIR", tmp_path)  # pretend the shipped file is absent
    monkeypatch.setenv("DRO_SFM_CACHE", str(tmp_path / "cache"))
    model = load_model("default")
    assert not model.info.trained
    assert any("UNTRAINED" in r.message for r in caplog.records)
