"""ScanNet exported scenes (writer round trip, colour/depth of different size) and the test-pair list."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared
from PIL import Image
from scipy.spatial.transform import Rotation

from dro_sfm.data.scannet import (
    ScanNetScene,
    read_scannet_test_pairs,
    resample_depth,
    write_matrix_txt,
    write_scannet_scene,
)
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError


def _frames(n: int = 3, h: int = 48, w: int = 64, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    K = np.array([[55.0, 0, 31.2], [0, 54.0, 23.9], [0, 0, 1]])
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        T = np.eye(4)
        T[:3, :3] = Rotation.from_rotvec(rng.normal(0, 0.5, 3)).as_matrix()
        T[:3, 3] = rng.uniform(-3, 3, 3)
        depth = (1.0 + 2.0 * xx / w + 0.5 * np.cos(yy / 5.0 + i)).astype(np.float32)
        depth[rng.uniform(size=depth.shape) < 0.05] = 0
        # Smooth colours, so that the JPEG variant loses little.
        image = np.stack([128 + 100 * np.sin(xx / 7.0 + i), 128 + 90 * np.cos(yy / 6.0), 60 + 2 * xx + yy], -1)
        image = np.round(image).astype(np.uint8)
        out.append(Frame(image, K.copy(), depth, T, name=f"f{i}"))
    return out


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_writer_round_trip(tmp_path, ext) -> None:
    frames = _frames()
    frames[1].T_world_from_cam = None  # written as ScanNet's -inf "tracking lost" pose
    scene = write_scannet_scene(frames, tmp_path / "scene0000_00", image_ext=ext)
    assert (scene / "color" / f"0{ext}").is_file() and (scene / "intrinsic" / "intrinsic_depth.txt").is_file()
    back = list(ScanNetScene(scene))
    assert len(back) == 3
    for src, got in zip(frames, back):
        assert np.allclose(got.K, src.K, atol=1e-12)
        if ext == ".png":
            assert np.array_equal(got.image, src.image)
        else:
            assert np.abs(got.image.astype(int) - src.image).mean() < 3
        assert np.array_equal(got.depth > 0, src.depth > 0)
        assert np.abs(got.depth - src.depth).max() <= 0.0005 + 1e-6  # millimetre rounding
        if src.T_world_from_cam is None:
            assert got.T_world_from_cam is None
        else:
            assert np.allclose(got.T_world_from_cam, src.T_world_from_cam, atol=1e-12)


def _plane_depth(K: np.ndarray, h: int, w: int) -> np.ndarray:
    """Depth [h,w] of the plane 0.2x - 0.1y + z = 2 seen by a camera K at the origin."""
    u, v = np.meshgrid(np.arange(w, dtype=float), np.arange(h, dtype=float))
    rays = np.linalg.solve(K, np.stack([u.ravel(), v.ravel(), np.ones(u.size)]))
    return (2.0 / (np.array([0.2, -0.1, 1.0]) @ rays)).reshape(h, w).astype(np.float32)


def _scene_with_sizes(root, K_color, color_wh, K_depth, depth_wh):
    scene = root / "scene0001_00"
    (scene / "color").mkdir(parents=True)
    (scene / "depth").mkdir()
    for M, name in ((K_color, "intrinsic_color.txt"), (K_depth, "intrinsic_depth.txt")):
        K4 = np.eye(4)
        K4[:3, :3] = M
        write_matrix_txt(scene / "intrinsic" / name, K4)
    Image.new("RGB", color_wh, (10, 200, 30)).save(scene / "color" / "0.jpg")
    depth = _plane_depth(K_depth, depth_wh[1], depth_wh[0])
    Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(scene / "depth" / "0.png")
    write_matrix_txt(scene / "pose" / "0.txt", np.eye(4))
    return scene


def test_colour_and_depth_of_different_size(tmp_path) -> None:
    # ScanNet-like: colour 2x the depth size, principal points that do not scale exactly.
    K_color = np.array([[234.0, 0, 129.5], [0, 233.0, 96.8], [0, 0, 1]])
    K_depth = np.array([[115.6, 0, 63.9], [0, 115.4, 47.7], [0, 0, 1]])
    scene = _scene_with_sizes(tmp_path, K_color, (260, 194), K_depth, (128, 96))
    for size, wh in (("depth", (128, 96)), ("color", (260, 194)), ((200, 150), (200, 150))):
        seq = ScanNetScene(scene, size=size)
        frame = next(iter(seq))
        assert (frame.width, frame.height) == wh and frame.depth.shape == (wh[1], wh[0])
        assert np.allclose(frame.K[0], K_color[0] * wh[0] / 260) and np.allclose(frame.K[1], K_color[1] * wh[1] / 194)
        expected = _plane_depth(frame.K, wh[1], wh[0])
        valid = frame.depth > 0
        assert valid.mean() > 0.9
        # Nearest-neighbour resampling of a smooth plane: within the depth change of about one depth pixel.
        assert np.median(np.abs(frame.depth - expected)[valid] / expected[valid]) < 0.005
        assert np.max(np.abs(frame.depth - expected)[valid] / expected[valid]) < 0.03


def test_resample_depth_is_identity_for_same_camera() -> None:
    K = np.array([[50.0, 0, 20], [0, 50, 15], [0, 0, 1]])
    depth = np.random.default_rng(0).uniform(0.5, 3, (30, 40)).astype(np.float32)
    assert np.array_equal(resample_depth(depth, K, K, (30, 40)), depth)


@pytest.mark.shared
def test_test_pairs_from_shared() -> None:
    pairs = read_scannet_test_pairs(require_shared("data", "splits", "scannet", "scannet_test_pairs.txt"))
    assert len(pairs) == 2000  # SOURCE.md: 2,000 test pairs
    first = pairs[0]
    assert (first.scene, first.frame_a, first.frame_b) == ("scene0688_00", 346, 350)
    assert first.rgb == ("scene0688_00/rgb/frame-000346.color.jpg", "scene0688_00/rgb/frame-000350.color.jpg")
    assert first.depth[1] == "scene0688_00/depth/frame-000350.depth.png"
    assert all(not p.rgb[0].startswith("/") for p in pairs)
    assert pairs[1].scene == "scene0672_01" and (pairs[1].frame_a, pairs[1].frame_b) == (1342, 1349)


def test_bad_input_errors(tmp_path) -> None:
    scene = write_scannet_scene(_frames(n=2), tmp_path / "s", image_ext=".png")
    # Non-rigid pose.
    write_matrix_txt(scene / "pose" / "1.txt", np.diag([2.0, 1, 1, 1]))
    with pytest.raises(InputError, match=r"pose/1\.txt: pose is not rigid"):
        list(ScanNetScene(scene))
    write_matrix_txt(scene / "pose" / "1.txt", np.eye(4))
    # A depth map of another size than the scene's.
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(scene / "depth" / "1.png")
    with pytest.raises(InputError, match=r"depth/1\.png: depth is 10x10"):
        list(ScanNetScene(scene))
    # Corrupt colour image.
    (scene / "color" / "1.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match=r"color/1\.png: .*(not a readable image|cannot decode)"):
        list(ScanNetScene(scene))
    # Missing calibration.
    (scene / "intrinsic" / "intrinsic_color.txt").unlink()
    with pytest.raises(InputError, match=r"intrinsic_color\.txt: missing calibration"):
        ScanNetScene(scene)
    with pytest.raises(InputError, match="missing; not an exported ScanNet scene"):
        ScanNetScene(tmp_path / "empty")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("/x/scene0000_00/rgb/frame-000001.color.jpg\n/x/scene0000_00/rgb/frame-000002.color.jpg\n"
                     "/x/scene0000_00/depth/frame-000001.depth.png\n/x/scene0000_00/depth/frame-000003.depth.png\n")
    with pytest.raises(InputError, match=r"pairs\.txt:1: rgb frames 1,2 do not match depth frames 1,3"):
        read_scannet_test_pairs(pairs)
    pairs.write_text("/x/scene0000_00/rgb/frame-000001.color.jpg\n")
    with pytest.raises(InputError, match="blocks of 4"):
        read_scannet_test_pairs(pairs)
