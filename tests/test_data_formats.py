"""Layout dispatch: every writable layout is written, recognised and read back through one entry point."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared
from scipy.spatial.transform import Rotation

from dro_sfm.data.formats import WRITABLE_LAYOUTS, detect_layout, open_sequence, read_sequence, write_frames
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError
from dro_sfm.geometry.pose import invert_rigid


def _frame_stream(n: int = 3, h: int = 40, w: int = 56, seed: int = 0):
    """A generator (not a list), as a long sequence would be fed to a writer."""
    rng = np.random.default_rng(seed)
    K = np.array([[45.0, 0, 27.5], [0, 45.0, 19.5], [0, 0, 1]])
    for i in range(n):
        T = np.eye(4)
        T[:3, :3] = Rotation.from_rotvec(rng.normal(0, 0.05, 3)).as_matrix()
        T[:3, 3] = [0.1 * i, 0.0, 0.8 * i]
        depth = rng.uniform(2.0, 9.0, (h, w)).astype(np.float32)
        yield Frame(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), K.copy(), depth, T, timestamp=100.0 + 0.1 * i,
                    name=f"f{i}")


@pytest.mark.parametrize("fmt", WRITABLE_LAYOUTS)
def test_write_detect_read(tmp_path, fmt) -> None:
    source = list(_frame_stream())
    kwargs = {"image_ext": ".png"} if fmt == "scannet" else {}
    path = write_frames(fmt, _frame_stream(), tmp_path / fmt, **kwargs)
    assert detect_layout(path) == fmt
    stream = read_sequence(path)
    assert iter(stream) is stream  # an iterator: frames are produced one at a time
    back = list(stream)
    assert len(back) == len(source)
    for src, got in zip(source, back):
        assert np.array_equal(got.image, src.image)
        assert np.allclose(got.K, src.K, atol=1e-12)
        if fmt == "folder":
            assert got.depth is None and got.T_world_from_cam is None
            continue
        expected = src.T_world_from_cam
        if fmt == "kitti":  # world = the first camera
            expected = invert_rigid(source[0].T_world_from_cam) @ expected
        assert np.allclose(got.T_world_from_cam, expected, atol=1e-6)
        assert got.depth is not None and got.depth.shape == src.depth.shape


def test_frames_are_decoded_lazily(tmp_path) -> None:
    path = write_frames("7scenes", _frame_stream(n=3), tmp_path / "s")
    (path / "frame-000002.color.png").write_bytes(b"broken")
    stream = read_sequence(path)
    first = next(stream)  # the broken last frame is not touched yet
    assert first.name == "frame-000000"
    next(stream)
    with pytest.raises(InputError, match=r"frame-000002\.color\.png"):
        next(stream)


@pytest.mark.shared
def test_detects_real_layouts() -> None:
    assert detect_layout(require_shared("data", "7scenes")) == "7scenes"
    drive = require_shared("data", "kitti_tiny", "2011_09_26", "2011_09_26_drive_0023_sync")
    assert detect_layout(drive) == "kitti"
    with pytest.raises(InputError, match="KITTI date folder; pass one drive folder"):
        detect_layout(drive.parent)
    frames = open_sequence(drive, camera=3, depth="none")
    assert len(frames) == 7 and next(iter(frames)).extras["camera"] == 3


def test_detect_and_dispatch_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        detect_layout(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a recognised layout"):
        detect_layout(tmp_path / "empty")
    (tmp_path / "one.png").write_bytes(b"")
    with pytest.raises(InputError, match="a single file is read only as a video"):
        detect_layout(tmp_path / "one.png")
    (tmp_path / "clip.MP4").write_bytes(b"")
    assert detect_layout(tmp_path / "clip.MP4") == "video"
    path = write_frames("folder", _frame_stream(n=1), tmp_path / "f")
    with pytest.raises(InputError, match="option not understood by the folder reader"):
        open_sequence(path, camera=2)
    with pytest.raises(InputError, match="cannot write layout 'colmap'"):
        write_frames("colmap", [], tmp_path / "x")
    with pytest.raises(InputError, match="no frames to write"):
        write_frames("tum", iter([]), tmp_path / "t")
