"""Regenerate the sample sequence shipped in the package (dro_sfm/assets/sample_indoor/).

    python benchmarks/make_sample.py                      # the shipped sample (16 frames, 240x320, seed 1)
    python benchmarks/make_sample.py --out /tmp/s --frames 24 --seed 3

Renders a furnished room with hand-held motion by dro-sfm's synthetic engine and writes it as a plain image
folder (what `dro-sfm reconstruct` reads) plus ground truth for checking the result:

    000000.png ...            RGB frames
    intrinsics.txt            fx fy cx cy (pixels, pixel centres at integers)
    groundtruth/poses.txt     camera-to-world poses, KITTI format (top 3x4 row-major, one line per image)
    groundtruth/depth/*.png   z-depth, uint16 millimetres (0 = no surface)
    README.md                 what the folder holds and how it was made

The output is deterministic for given arguments (the engine seeds every random draw).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "dro_sfm" / "assets" / "sample_indoor"

README = """# Sample sequence: a synthetic room ({frames} frames, {width}x{height})

Rendered by dro-sfm's synthetic engine (`dro_sfm.data.synthetic`, indoor scene, seed {seed}, hand-held
motion); regenerate it with `python benchmarks/make_sample.py --frames {frames} --seed {seed}`.
Made by the dro-sfm authors; same licence as dro-sfm.

    dro-sfm reconstruct --sample --out out/sample     # reconstructs this folder, reports accuracy
    dro-sfm view out/sample

| file | content |
|---|---|
| `NNNNNN.png` | RGB frames, the input |
| `intrinsics.txt` | `fx fy cx cy` in pixels (pixel centres at integer coordinates) |
| `groundtruth/poses.txt` | camera-to-world poses, KITTI format (top 3x4 row-major, one line per image); |
|  | camera axes x right, y down, z forward; metres |
| `groundtruth/depth/NNNNNN.png` | z-depth, uint16 millimetres, 0 = no surface |

Path length {path_length:.2f} m; depth {depth_min:.2f}-{depth_max:.2f} m.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    from dro_sfm.data.atomic import atomic_write_text
    from dro_sfm.data.formats import write_frames
    from dro_sfm.data.images import depth_to_uint16, save_uint16_png
    from dro_sfm.data.synthetic import render_sequence
    from dro_sfm.eval.trajectory import path_length
    from dro_sfm.recon.export import kitti_lines

    out: Path = args.out
    for old in [*out.glob("[0-9]" * 6 + ".png"), *(out / "groundtruth" / "depth").glob("*.png")]:
        old.unlink()
    sequence = render_sequence("indoor", args.frames, args.height, args.width, seed=args.seed)
    frames = list(sequence)
    write_frames("folder", frames, out)
    depths = []
    for i, frame in enumerate(frames):
        save_uint16_png(out / "groundtruth" / "depth" / f"{i:06d}.png",
                        depth_to_uint16(frame.depth, 1000.0, f"frame {i}"))
        depths.append(frame.depth[frame.depth > 0])
    poses = np.stack([f.T_world_from_cam for f in frames])
    atomic_write_text(out / "groundtruth" / "poses.txt", kitti_lines(poses))
    all_depth = np.concatenate(depths)
    atomic_write_text(out / "README.md", README.format(
        frames=args.frames, width=args.width, height=args.height, seed=args.seed, path_length=path_length(poses),
        depth_min=float(all_depth.min()), depth_max=float(all_depth.max())))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {args.frames} frames to {out} ({size / 1e6:.2f} MB), path {path_length(poses):.2f} m")
    return 0


if __name__ == "__main__":
    sys.exit(main())
