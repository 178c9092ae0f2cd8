"""7-Scenes: the real 50-frame sample, writer round trip, invalid-depth codes and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared
from PIL import Image
from scipy.spatial.transform import Rotation

from dro_sfm.data.sevenscenes import SevenScenesSequence, write_sevenscenes_sequence
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError


@pytest.mark.shared
def test_real_sample_matches_source_md() -> None:
    seq = SevenScenesSequence(require_shared("data", "7scenes"))
    assert len(seq) == 50 and seq.intrinsics_source == "camera-intrinsics.txt"
    # SOURCE.md: fx = fy = 585, cx = 320, cy = 240.
    assert np.allclose(seq.K, [[585, 0, 320], [0, 585, 240], [0, 0, 1]])
    frames = list(seq)
    assert [f.name for f in frames[:2]] == ["frame-000150", "frame-000151"] and frames[-1].name == "frame-000199"
    first = frames[0]
    assert first.image.shape == (480, 640, 3) and first.depth.shape == (480, 640)
    valid = first.depth[first.depth > 0]
    assert valid.min() == pytest.approx(0.94, abs=0.01) and valid.max() == pytest.approx(2.86, abs=0.01)
    # Values read off frame-000150.pose.txt.
    assert first.T_world_from_cam[0, 0] == pytest.approx(0.70352107)
    assert np.allclose(first.T_world_from_cam[:3, 3], [-0.91287065, -0.34388667, 0.75986093])
    for f in frames:
        R = f.T_world_from_cam[:3, :3]
        assert np.abs(R @ R.T - np.eye(3)).max() < 2e-4
    positions = np.array([f.T_world_from_cam[:3, 3] for f in frames])
    path = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    assert 0.002 * 0.5 < np.median(path) < 0.008 * 1.5  # "2-8 mm per frame"
    assert 0.15 < np.linalg.norm(positions[-1] - positions[0]) < 0.35  # "about 0.25 m over the 50 frames"


def _frames(n: int = 3, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    K = np.array([[50.0, 0, 24.0], [0, 50.0, 18.0], [0, 0, 1]])
    out = []
    for i in range(n):
        T = np.eye(4)
        T[:3, :3] = Rotation.from_rotvec(rng.normal(0, 1, 3)).as_matrix()
        T[:3, 3] = rng.uniform(-1, 1, 3)
        depth = rng.uniform(0.3, 4.0, (36, 48)).astype(np.float32)
        depth[:3] = 0
        out.append(Frame(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8), K.copy(), depth, T, name=f"f{i}"))
    return out


def test_writer_round_trip_and_defaults(tmp_path) -> None:
    frames = _frames()
    out = write_sevenscenes_sequence(frames, tmp_path / "seq-01", start=100)
    assert (out / "frame-000100.color.png").is_file() and (out / "frame-000102.pose.txt").is_file()
    back = list(SevenScenesSequence(out))
    for src, got in zip(frames, back, strict=True):
        assert np.array_equal(got.image, src.image)
        assert np.allclose(got.K, src.K)
        assert np.allclose(got.T_world_from_cam, src.T_world_from_cam, atol=1e-12)
        assert np.array_equal(got.depth > 0, src.depth > 0)
        assert np.abs(got.depth - src.depth).max() <= 0.0005 + 1e-6
    # The original dataset ships no intrinsics file and marks invalid depth with 65535.
    (out / "camera-intrinsics.txt").unlink()
    Image.fromarray(np.full((36, 48), 65535, np.uint16)).save(out / "frame-000101.depth.png")
    seq = SevenScenesSequence(out, frames=[101])
    assert seq.intrinsics_source == "7scenes-default" and np.allclose(seq.K[0], [585, 0, 320])
    assert not next(iter(seq)).depth.any()


def test_bad_input_errors(tmp_path) -> None:
    out = write_sevenscenes_sequence(_frames(), tmp_path / "s")
    Image.fromarray(np.zeros((10, 12), np.uint16)).save(out / "frame-000001.depth.png")
    with pytest.raises(InputError, match=r"frame-000001\.depth\.png: depth is 12x10 .* same size"):
        list(SevenScenesSequence(out))
    (out / "frame-000002.pose.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 3 0\n0 0 0 1\n")
    with pytest.raises(InputError, match=r"frame-000002\.pose\.txt: pose is not rigid"):
        list(SevenScenesSequence(out, frames=[2]))
    (out / "frame-000002.pose.txt").unlink()
    with pytest.raises(InputError, match=r"frame-000002\.pose\.txt: pose file missing"):
        list(SevenScenesSequence(out, frames=[2]))
    (out / "frame-000000.color.png").write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match=r"frame-000000\.color\.png: cannot decode image"):
        list(SevenScenesSequence(out, frames=[0]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no frame-XXXXXX.color.png files"):
        SevenScenesSequence(tmp_path / "empty")
    no_pose = _frames(n=1)
    no_pose[0].T_world_from_cam = None
    with pytest.raises(InputError, match=r"frame 0 \(f0\): has no pose"):
        write_sevenscenes_sequence(no_pose, tmp_path / "w")
