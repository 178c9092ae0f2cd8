"""The 3-D viewer: key actions, headless screenshots (hidden Open3D window, EGL offscreen) and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_recon_export import make_scene

from dro_sfm.errors import InputError, OutputError
from dro_sfm.recon.export import RunWriter
from dro_sfm.recon.fusion import FusionOptions
from dro_sfm.viz.viewer import ViewerState, parse_keys, view_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    scene = make_scene()
    out = tmp_path_factory.mktemp("viewrun")
    writer = RunWriter(out, options=FusionOptions(voxel_size=0.03))
    for i in range(len(scene.images)):
        writer.add_frame(i, scene.images[i], scene.depths[i], None, scene.K, scene.poses[i])
    writer.finalize(targets=["ply", "mesh"])
    return out


def _gray(rgb: np.ndarray, size: tuple[int, int] = (128, 96)) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L").resize(size, Image.BOX), dtype=np.float64)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_state_machine():
    s = ViewerState(n_frames=3, available={"cloud": True, "mesh": False, "frustums": True, "trajectory": True})
    assert s.visible == {"cloud": True, "mesh": False, "frustums": True, "trajectory": True}
    s.apply("C")
    assert not s.visible["cloud"]
    assert "no mesh" in s.apply("M") and not s.visible["mesh"]
    for _ in range(4):
        s.apply("N")
    assert s.frame == 0  # wrapped around: 0, 1, 2, 0
    s.apply("P")
    assert s.frame == 2
    s.apply("V")
    assert s.view == 2
    s.apply("A")
    assert s.view == "overview"
    assert parse_keys("n, n,T") == ["N", "N", "T"]
    with pytest.raises(InputError, match="unknown viewer key"):
        parse_keys("N,X")


def test_screenshot_from_camera_resembles_the_frame(run, tmp_path):
    images = [np.asarray(Image.open(run / f"images/{i:06d}.png")) for i in (0, 4)]
    scores = {}
    for cam in (0, 4):
        # Frustums and trajectory hidden (keys F, T) so that only the reconstruction is compared.
        shot = view_run(run, screenshot=tmp_path / f"cam{cam}.png", from_camera=cam, keys="F,T")
        assert shot.shape == (480, 640, 3)  # the camera's 4:3 aspect at >= 640 px
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"cam{cam}.png")), shot)
        scores[cam] = [ncc(_gray(shot), _gray(img)) for img in images]
    assert scores[0][0] >= 0.5 and scores[4][1] >= 0.5
    # Each view matches its own frame better than the other one.
    assert scores[0][0] > scores[0][1] + 0.3 and scores[4][1] > scores[4][0] + 0.3


def test_scripted_keys_change_the_view(run, tmp_path):
    base = view_run(run, screenshot=tmp_path / "a.png").astype(np.float64)
    highlighted = view_run(run, screenshot=tmp_path / "b.png", keys="N,N").astype(np.float64)
    no_cloud = view_run(run, screenshot=tmp_path / "c.png", keys="C").astype(np.float64)
    # N highlights frame 1's depth in orange: many pixels turn orange (red high, blue low).
    orange = lambda im: ((im[..., 0] > 200) & (im[..., 2] < 80)).mean()  # noqa: E731
    assert orange(highlighted) > orange(base) + 0.02
    # C hides the cloud: the frame becomes mostly background (white).
    assert (no_cloud.mean(axis=2) > 250).mean() > (base.mean(axis=2) > 250).mean() + 0.1


def test_bad_arguments(run, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="out of range"):
        view_run(run, screenshot=tmp_path / "x.png", from_camera=9)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(OutputError, match="no display"):
        view_run(run)
    with pytest.raises(InputError, match="not a finished dro-sfm run"):
        view_run(tmp_path, screenshot=tmp_path / "x.png")


def test_cli_and_app_screenshot(run, tmp_path):
    from click.testing import CliRunner

    from dro_sfm.cli import main

    result = CliRunner().invoke(main, ["view", str(run), "--screenshot", str(tmp_path / "v.png"), "--frame", "2",
                                       "--keys", "T", "--size", "320", "240"])
    assert result.exit_code == 0, result.output
    assert "trajectory off" in result.output
    assert np.asarray(Image.open(tmp_path / "v.png")).shape == (240, 320, 3)
    proc = subprocess.run([sys.executable, str(REPO / "apps/viewer.py"), str(run), "--screenshot",
                           str(tmp_path / "app.png"), "--size", "200", "150"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert np.asarray(Image.open(tmp_path / "app.png")).shape == (150, 200, 3)
