"""Plain image folders and videos: ordering, EXIF, pixel formats, intrinsics, and bad input."""

from __future__ import annotations

import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dro_sfm.data.images import (
    ImageFolder,
    VideoFile,
    exif_focal_length_px,
    natural_sorted,
    read_rgb,
    write_image_folder,
)
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError


def _exif(orientation: int | None = None, focal_35mm: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if focal_35mm is not None:
        exif[0x8769] = {0xA405: focal_35mm}
    return exif


def _png16_rgb(path, rgb16: np.ndarray) -> None:
    """Minimal 16-bit RGB PNG encoder (Pillow cannot write 48-bit PNGs)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_natural_order(tmp_path) -> None:
    for name in ("frame10.png", "frame2.png", "frame1.png", "Frame3.png", "notes.txt"):
        (tmp_path / name).touch()
    assert [p.name for p in natural_sorted(tmp_path.glob("*.png"))] == [
        "frame1.png", "frame2.png", "Frame3.png", "frame10.png"
    ]


def test_exif_orientation_is_applied(tmp_path) -> None:
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:10, :10] = (255, 0, 0)  # red block at the stored top-left
    path = tmp_path / "rot.jpg"
    Image.fromarray(stored).save(path, exif=_exif(orientation=6), quality=98)
    upright = read_rgb(path)
    # Orientation 6: the stored image is displayed rotated 90° clockwise, so top-left goes to top-right.
    assert upright.shape == (30, 20, 3)
    assert upright[:10, -10:, 0].mean() > 200 and upright[-10:, :10, 0].mean() < 40


def test_pixel_formats(tmp_path) -> None:
    grey16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 257 * 20)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    out = read_rgb(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.shape == (3, 4, 3)
    assert np.array_equal(out[..., 0], (np.arange(12).reshape(3, 4) * 20).astype(np.uint8))
    assert np.array_equal(out[..., 0], out[..., 2])

    rgb16 = np.random.default_rng(0).integers(0, 65536, (5, 6, 3)).astype(np.uint16)
    _png16_rgb(tmp_path / "c16.png", rgb16)
    assert np.array_equal(read_rgb(tmp_path / "c16.png"), (rgb16 >> 8).astype(np.uint8))

    Image.fromarray(np.full((4, 4), 77, np.uint8), mode="L").save(tmp_path / "l.png")
    assert np.all(read_rgb(tmp_path / "l.png") == 77)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (10, 20, 30), 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert np.all(read_rgb(tmp_path / "a.png") == (10, 20, 30))
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 0] + [0] * 762)
    palette.save(tmp_path / "p.png")
    assert np.all(read_rgb(tmp_path / "p.png") == (200, 100, 0))


def test_exif_focal_length(tmp_path) -> None:
    image = Image.new("RGB", (600, 400))
    image.save(tmp_path / "f.jpg", exif=_exif(focal_35mm=36))
    # For a 3:2 frame the 35 mm equivalent is focal / 36 mm x width.
    assert exif_focal_length_px(tmp_path / "f.jpg") == pytest.approx(600.0)
    image.save(tmp_path / "rot.jpg", exif=_exif(orientation=8, focal_35mm=24))
    assert exif_focal_length_px(tmp_path / "rot.jpg") == pytest.approx(400.0)  # the diagonal ignores rotation
    image.save(tmp_path / "none.jpg")
    assert exif_focal_length_px(tmp_path / "none.jpg") is None
    image.save(tmp_path / "zero.jpg", exif=_exif(focal_35mm=0))
    assert exif_focal_length_px(tmp_path / "zero.jpg") is None


def test_folder_intrinsics_sources(tmp_path, caplog) -> None:
    exif_dir = tmp_path / "exif"
    exif_dir.mkdir()
    for i in range(3):
        Image.new("RGB", (60, 40), (i, i, i)).save(exif_dir / f"img{i}.jpg", exif=_exif(focal_35mm=36))
    folder = ImageFolder(exif_dir)
    assert folder.intrinsics_source == "exif" and folder.K[0, 0] == pytest.approx(60.0)
    assert np.allclose(folder.K[:2, 2], [29.5, 19.5])
    frames = list(folder)
    assert [f.name for f in frames] == ["img0", "img1", "img2"] and frames[0].depth is None

    plain = tmp_path / "plain"
    plain.mkdir()
    Image.new("RGB", (50, 30)).save(plain / "a.png")
    with caplog.at_level(logging.WARNING, logger="dro_sfm.data.images"):
        folder = ImageFolder(plain)
    assert folder.intrinsics_source == "default" and folder.K[0, 0] == pytest.approx(60.0)
    assert "guessing fx = fy = 60.0" in caplog.text
    (plain / "intrinsics.txt").write_text("70 71 24.5 14.5\n")
    assert ImageFolder(plain).K[1, 1] == 71.0
    assert ImageFolder(plain, intrinsics=[[80, 0, 25], [0, 80, 15], [0, 0, 1]]).K[0, 0] == 80.0


def test_folder_errors_and_skip_bad(tmp_path, caplog) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(InputError, match="no images found"):
        ImageFolder(tmp_path / "empty")
    seq = tmp_path / "seq"
    seq.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(seq / f"{i}.jpg")
    good = (seq / "2.jpg").read_bytes()
    (seq / "2.jpg").write_bytes(good[: int(len(good) * 0.8)])  # truncated: the header reads, the pixels do not
    (seq / "3.jpg").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"3\.jpg: not a readable image"):
        ImageFolder(seq, intrinsics=(30, 30, 16, 12))
    folder = ImageFolder(seq, intrinsics=(30, 30, 16, 12), skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="dro_sfm.data.images"):
        names = [f.name for f in folder]
    assert names == ["0", "1"]
    assert "2.jpg: cannot decode image" in caplog.text and "3.jpg: not a readable image" in caplog.text
    with pytest.raises(InputError, match=r"2\.jpg: cannot decode image"):
        list(ImageFolder(seq, intrinsics=(30, 30, 16, 12), step=2))
    (seq / "2.jpg").unlink()
    (seq / "3.jpg").unlink()
    Image.new("RGB", (24, 32)).save(seq / "5.jpg")
    with pytest.raises(InputError, match=r"5\.jpg: image is 24x32 but 0\.jpg is 32x24"):
        ImageFolder(seq)


def test_write_image_folder_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    K = np.array([[40.0, 0, 15.5], [0, 41.0, 11.5], [0, 0, 1]])
    frames = [Frame(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), K) for _ in range(12)]
    out = write_image_folder(frames, tmp_path / "out")
    folder = ImageFolder(out)
    assert folder.intrinsics_source.endswith("intrinsics.txt") and np.array_equal(folder.K, K)
    back = list(folder)
    assert [f.name for f in back][:3] == ["000000", "000001", "000002"]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, back, strict=True))


def test_video_with_frame_step(tmp_path) -> None:
    import imageio.v3 as iio

    path = tmp_path / "clip.mp4"
    frames = np.stack([np.full((48, 64, 3), 20 * i, np.uint8) for i in range(10)])
    iio.imwrite(path, frames, plugin="FFMPEG", fps=10, codec="libx264", macro_block_size=16)
    video = VideoFile(path, step=3, intrinsics=(50, 50, 31.5, 23.5))
    out = list(video)
    assert [f.extras["video_frame"] for f in out] == [0, 3, 6, 9]
    assert [f.timestamp for f in out] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert out[0].image.shape == (48, 64, 3) and out[0].K[0, 0] == 50.0
    # Lossy codec: the grey levels survive to within a few units and keep their order.
    means = [f.image.mean() for f in out]
    assert np.allclose(means, [0, 60, 120, 180], atol=6)
    assert len(list(VideoFile(path, max_frames=2))) == 2
    (tmp_path / "fake.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError, match=r"fake\.mp4: cannot open video"):
        VideoFile(tmp_path / "fake.mp4")
