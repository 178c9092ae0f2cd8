"""TUM RGB-D: the associate.py rule, writer round trip, intrinsics resolution and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.spatial.transform import Rotation

from dro_sfm.data.trajectory import read_tum_trajectory
from dro_sfm.data.tum import TUM_INTRINSICS, TumSequence, associate, write_tum_sequence
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError


def _associate_reference(first, second, max_difference, offset=0.0):
    """TUM associate.py restated over indices: every close pair, smallest difference first, each key once."""
    candidates = sorted(
        (abs(a - (b + offset)), a, b, i, j)
        for i, a in enumerate(first)
        for j, b in enumerate(second)
        if abs(a - (b + offset)) < max_difference
    )
    free_a, free_b, matches = set(range(len(first))), set(range(len(second))), []
    for _, _, _, i, j in candidates:
        if i in free_a and j in free_b:
            free_a.remove(i)
            free_b.remove(j)
            matches.append((i, j))
    return sorted(matches, key=lambda m: (first[m[0]], m[0]))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(0, 2, allow_nan=False), max_size=25, unique=True),
    st.lists(st.floats(0, 2, allow_nan=False), max_size=25, unique=True),
    st.floats(0.001, 0.3),
)
def test_associate_matches_reference(first, second, max_difference) -> None:
    first, second = sorted(first), sorted(second)
    assert associate(first, second, max_difference) == _associate_reference(first, second, max_difference)


@pytest.mark.shared
def test_associate_real_estimate_with_groundtruth() -> None:
    d = require_shared("data", "trajectories")
    gt = read_tum_trajectory(d / "freiburg1_xyz-groundtruth.txt").timestamps
    est = read_tum_trajectory(d / "freiburg1_xyz-rgbdslam.txt").timestamps
    ours = associate(est, gt, 0.02)
    assert len(ours) >= 0.99 * len(est)  # ground truth runs at 100 Hz; it has a few gaps
    assert max(abs(est[i] - gt[j]) for i, j in ours) < 0.02
    # Greedy matching is maximal: an unmatched estimate has no unused ground truth within the window.
    used_gt = {j for _, j in ours}
    for i in set(range(len(est))) - {i for i, _ in ours}:
        near = np.flatnonzero(np.abs(gt - est[i]) < 0.02)
        assert set(near.tolist()) <= used_gt
    # Brute force (associate.py) on a window of the real timestamps; the full 788 x 3000 is too slow in Python.
    e = est[:120]
    g = gt[(gt > e[0] - 0.05) & (gt < e[-1] + 0.05)]
    assert associate(e, g, 0.02) == _associate_reference(list(e), list(g), 0.02)


def _frames(n: int = 4, h: int = 30, w: int = 40, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    K = np.array([[40.0, 0, 19.5], [0, 41.0, 14.5], [0, 0, 1]])
    out = []
    for i in range(n):
        T = np.eye(4)
        T[:3, :3] = Rotation.from_rotvec(rng.normal(0, 0.4, 3)).as_matrix()
        T[:3, 3] = rng.uniform(-2, 2, 3)
        depth = rng.uniform(0.5, 5.0, (h, w)).astype(np.float32)
        depth[0, :5] = 0
        depth[1, 0] = 20.0  # beyond uint16/5000: written as invalid
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out.append(Frame(image, K.copy(), depth, T, timestamp=1305031102.175304 + i / 30.0, name=f"f{i}"))
    return out


def test_writer_round_trip(tmp_path) -> None:
    frames = _frames()
    frames[2].T_world_from_cam = None  # no ground truth for this one: dropped on reading, as TUM does
    seq_dir = write_tum_sequence(frames, tmp_path / "mine")
    assert (seq_dir / "calibration.txt").is_file() and (seq_dir / "groundtruth.txt").is_file()
    seq = TumSequence(seq_dir)
    assert seq.intrinsics_source.endswith("calibration.txt")
    back = list(seq)
    kept = [f for f in frames if f.T_world_from_cam is not None]
    assert len(back) == len(kept) == 3
    for src, got in zip(kept, back):
        assert np.array_equal(got.image, src.image)
        assert np.allclose(got.K, src.K, atol=1e-12)
        assert got.timestamp == pytest.approx(src.timestamp, abs=1e-6)
        assert np.allclose(got.T_world_from_cam, src.T_world_from_cam, atol=1e-8)
        in_range = src.depth < 65535 / 5000
        assert np.array_equal(got.depth > 0, (src.depth > 0) & in_range)
        assert np.abs(got.depth - src.depth)[in_range].max() <= 0.5 / 5000 + 1e-6


def _write_list(path, entries, header="# list"):
    path.write_text(header + "\n" + "".join(f"{t:.6f} {f}\n" for t, f in entries))


def test_reader_associates_like_tum(tmp_path) -> None:
    seq = tmp_path / "rgbd_dataset_freiburg2_desk"
    (seq / "rgb").mkdir(parents=True)
    (seq / "depth").mkdir()
    t_rgb = [10.0, 10.033, 10.066, 10.1, 10.5]
    t_depth = [10.012, 10.030, 10.079, 10.11, 10.6]  # 10.0 <- 10.012, 10.033 <- 10.030, 10.5 has none
    rgb, dep = [], []
    for t in t_rgb:
        Image.new("RGB", (8, 6), (int(t * 10) % 256, 0, 0)).save(seq / "rgb" / f"{t:.6f}.png")
        rgb.append((t, f"rgb/{t:.6f}.png"))
    for t in t_depth:
        Image.fromarray(np.full((6, 8), int(t * 1000), np.uint16)).save(seq / "depth" / f"{t:.6f}.png")
        dep.append((t, f"depth/{t:.6f}.png"))
    _write_list(seq / "rgb.txt", rgb)
    _write_list(seq / "depth.txt", dep)
    gt = np.arange(9.95, 10.2, 0.01)
    (seq / "groundtruth.txt").write_text("".join(f"{t:.4f} {t:.4f} 0 0 0 0 0 1\n" for t in gt))
    seq_obj = TumSequence(seq)
    assert seq_obj.intrinsics_source == "tum-sensor"
    assert np.allclose(seq_obj.K[[0, 1, 0, 1], [0, 1, 2, 2]], TUM_INTRINSICS["freiburg2"])
    frames = list(seq_obj)
    assert [f.timestamp for f in frames] == [10.0, 10.033, 10.066, 10.1]
    # Each frame got the depth image of its associated timestamp (stored as the value in mm x 5).
    assert [round(float(f.depth[0, 0]) * 5000) for f in frames] == [10012, 10030, 10079, 10110]
    # And the nearest ground-truth pose (its x coordinate is the pose timestamp).
    assert [f.T_world_from_cam[0, 3] for f in frames] == pytest.approx([10.0, 10.03, 10.07, 10.1], abs=1e-9)
    override = TumSequence(seq, intrinsics=(500.0, 501.0, 3.5, 2.5))
    assert override.K[0, 0] == 500.0 and override.intrinsics_source == "argument"


def test_bad_input_errors(tmp_path) -> None:
    seq_dir = write_tum_sequence(_frames(n=2), tmp_path / "s")
    (seq_dir / "calibration.txt").unlink()
    with pytest.raises(InputError, match="does not contain freiburg1/2/3 and there is no calibration.txt"):
        TumSequence(seq_dir)
    # Depth of a different size than the colour image.
    name = sorted((seq_dir / "depth").iterdir())[0]
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(name)
    with pytest.raises(InputError, match=rf"{name.name}: depth is 5x5 .* sizes must match"):
        list(TumSequence(seq_dir, intrinsics=(40, 40, 20, 15)))
    (seq_dir / "rgb.txt").write_text("1.0\n")
    with pytest.raises(InputError, match=r"rgb\.txt:1: expected 'timestamp filename'"):
        TumSequence(seq_dir, intrinsics=(40, 40, 20, 15))
    with pytest.raises(InputError, match="not a TUM RGB-D sequence"):
        TumSequence(tmp_path)
    bad = _frames(n=2)
    bad[1].timestamp = bad[0].timestamp
    with pytest.raises(InputError, match="not after the previous"):
        write_tum_sequence(bad, tmp_path / "b")
