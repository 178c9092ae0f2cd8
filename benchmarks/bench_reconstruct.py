"""Benchmark of `dro-sfm reconstruct`: speed, memory and accuracy, with pycolmap side by side.

    python benchmarks/bench_reconstruct.py                       # speed (100 frames), RSS at 100, accuracy
    python benchmarks/bench_reconstruct.py --long                # also RSS at 1000 frames (slow)
    python benchmarks/bench_reconstruct.py --skip speed,rss      # accuracy only
    python benchmarks/bench_reconstruct.py --json results.json   # also write every number as JSON

Sections:

* speed: a 100-frame 240x320 synthetic indoor sequence (an image folder on disk) reconstructed end to end
  (decode, keyframes, windows, fusion, every export) vs the official ``infer_video.py`` way of calling the
  model independently per window (``DroModel.predict`` on each target with its references: features
  recomputed for every window, images resized every time; inference only, no fusion). Stage breakdown
  from run.json.
* rss: peak resident memory of a fresh process reconstructing 100 and (with ``--long``) 1000 frames of one
  room, fusion and exports included; the ratio should be <= 1.3. Both follow the same 1000-frame hand-held
  path (100 frames = every 10th), so both fuse the same part of the room: a longer walk that explores more
  of it would grow the cloud and mesh with the scene, which no streaming can avoid.
* accuracy: synthetic indoor and outdoor sequences with exact ground truth and the 7-Scenes snippet in
  ../shared/data/7scenes: ATE after Sim(3) alignment (evo) and depth AbsRel (raw and median-scaled), with
  every weights file available locally (the shipped default, or an untrained model when it is missing,
  plus cached official checkpoints); pycolmap (SIFT, exhaustive matching, incremental mapping, fixed
  intrinsics) on the same frames: time, registered frames, ATE on the registered frames.

Numbers depend on the machine; ``--threads`` (default 1) sets torch's CPU threads for every run: on shared
busy cores OpenMP's spinning threads make 2 threads far slower than 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DRO_SFM_SHARED", REPO.parent / "shared"))
SECTIONS = ("speed", "rss", "accuracy")
RSS_PATH_FRAMES = 1000


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# --- speed -------------------------------------------------------------------------------------------------


def bench_speed(args: argparse.Namespace, work: Path) -> dict:
    from dro_sfm.data.formats import write_frames
    from dro_sfm.data.images import read_rgb
    from dro_sfm.data.synthetic import render_sequence
    from dro_sfm.models.predict import load_model
    from dro_sfm.recon.pipeline import DroPredictor, ReconstructOptions, reconstruct
    from dro_sfm.recon.windows import window_indices

    n = args.frames
    folder = write_frames("folder", render_sequence("indoor", n, 240, 320, seed=args.seed), work / "speed_input")
    model = load_model(args.weights, "cpu")
    images = [read_rgb(p) for p in sorted(folder.glob("*.png"))]
    K = np.loadtxt(folder / "intrinsics.txt")
    K = np.array([[K[0], 0, K[2]], [0, K[1], K[3]], [0, 0, 1.0]])
    shape = (args.height, args.width) if args.height else tuple(model.info.image_shape)
    model.predict(images[1], [images[0], images[2]], K, image_shape=shape)  # warm-up: first calls JIT kernels

    options = ReconstructOptions(weights=args.weights, height=args.height, width=args.width, min_motion=0.0,
                                 overwrite=True)
    result = reconstruct(folder, work / "speed_run", options, progress=False)
    ours = {
        "frames": result.n_keyframes,
        "seconds": result.timings["total"],
        "frames_per_second": result.frames_per_second,
        "inference_seconds": result.timings.get("encode", 0.0) + result.timings.get("solve", 0.0),
        "stages": {k: round(v, 3) for k, v in result.timings.items()},
        "model": result.model_name,
        "processing_hw": list(result.processing_hw),
        "points": result.report.counts.get("points"),
        "voxel_m": result.report.fusion.get("voxel_size"),
    }
    ab = _interleaved_inference(model, images, K, shape, n, DroPredictor, window_indices)
    return {"ours": ours, **ab}


def _interleaved_inference(model, images, K, shape, n, DroPredictor, window_indices) -> dict:
    """Inference only, window by window, alternating the two ways so that load changes on shared cores hit
    both alike: (a) the pipeline's (resize and encode each frame once, reuse its features), (b) the official
    per-window call (DroModel.predict: resize and encode every image of every window)."""
    from dro_sfm.recon.intrinsics import scale_intrinsics
    from dro_sfm.recon.pipeline import _resize_rgb
    from dro_sfm.recon.windows import FrameSlot

    predictor = DroPredictor(model)
    K_proc = scale_intrinsics(K, images[0].shape[:2], shape)
    slots: dict[int, FrameSlot] = {}
    reuse = official = 0.0
    for t in range(n):
        ids = window_indices(t, 2, n - 1, final=True)
        refs = [i for i in ids if i != t]

        def ours(t: int = t, ids: list[int] = ids, refs: list[int] = refs) -> float:
            t0 = time.perf_counter()
            for i in ids:
                if i not in slots:
                    slot = FrameSlot(i, str(i), float(i), "", _resize_rgb(images[i], shape), K_proc)
                    slot.features = predictor.encode(slot)
                    slots[i] = slot
            predictor(slots[t], [slots[i] for i in refs])
            for i in [i for i in slots if i < ids[0]]:
                del slots[i]
            return time.perf_counter() - t0

        def theirs(t: int = t, refs: list[int] = refs) -> float:
            t0 = time.perf_counter()
            model.predict(images[t], [images[i] for i in refs], K, image_shape=shape)
            return time.perf_counter() - t0

        if t % 2:
            official += theirs()
            reuse += ours()
        else:
            reuse += ours()
            official += theirs()
    return {
        "inference_interleaved": {
            "frames": n, "reuse_seconds": reuse, "reuse_frames_per_second": n / reuse,
            "official_seconds": official, "official_frames_per_second": n / official,
            "speedup": official / reuse,
        },
    }


# --- peak RSS ----------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM): unlike ru_maxrss it is not inherited from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_child(n: int, args: argparse.Namespace) -> None:
    """Runs in a fresh process: reconstruct n frames of one room, print peak RSS (MB) as JSON."""
    import torch  # noqa: F401  (counted in the baseline: every run imports it)

    from dro_sfm.data.synthetic import render_sequence
    from dro_sfm.recon.pipeline import GroundTruthPredictor, ReconstructOptions, reconstruct

    baseline = _peak_rss_mb()
    # Both runs follow the same 1000-frame hand-held path (the shorter one takes every k-th frame), so they
    # see the same part of the room: any difference in memory comes from the number of frames.
    path = render_sequence("indoor", RSS_PATH_FRAMES, 240, 320, seed=args.seed)
    stride = RSS_PATH_FRAMES // n
    seq = (path[i] for i in range(0, stride * n, stride))
    predictor = GroundTruthPredictor() if args.rss_predictor == "ground-truth" else None
    with tempfile.TemporaryDirectory(prefix="dro_sfm_rss_") as tmp:
        options = ReconstructOptions(weights=args.weights, height=args.height, width=args.width, min_motion=0.0)
        result = reconstruct(seq, Path(tmp) / "run", options, predictor=predictor, progress=False)
        peak = _peak_rss_mb()
        print(json.dumps({"frames": n, "peak_rss_mb": peak, "rss_after_imports_mb": baseline,
                          "predictor": result.model_name, "voxel_m": result.report.fusion.get("voxel_size"),
                          "seconds": result.timings["total"], "points": result.report.counts.get("points"),
                          "peak_window_frames": result.peak_window_frames,
                          "mesh_triangles": result.report.counts.get("mesh_triangles")}))


def bench_rss(args: argparse.Namespace) -> dict:
    sizes = [100, 1000] if args.long else [100]
    out: dict = {}
    for n in sizes:
        cmd = [sys.executable, __file__, "--rss-child", str(n), "--threads", str(args.threads),
               "--weights", args.weights, "--seed", str(args.seed), "--rss-predictor", args.rss_predictor]
        if args.height:
            cmd += ["--height", str(args.height), "--width", str(args.width)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"RSS run with {n} frames failed:\n{proc.stderr[-2000:]}")
        out[str(n)] = json.loads(proc.stdout.strip().splitlines()[-1])
    if "1000" in out:
        out["ratio_1000_over_100"] = out["1000"]["peak_rss_mb"] / out["100"]["peak_rss_mb"]
    return out


# --- accuracy ----------------------------------------------------------------------------------------------


def _sequences(args: argparse.Namespace) -> dict[str, list]:
    from dro_sfm.data.formats import read_sequence
    from dro_sfm.data.synthetic import render_sequence

    seqs = {
        "synthetic indoor": list(render_sequence("indoor", args.acc_frames, 240, 320, seed=args.seed + 1000)),
        "synthetic outdoor": list(render_sequence("outdoor", args.acc_frames, 240, 320, seed=args.seed + 1000)),
    }
    sevenscenes = SHARED / "data" / "7scenes"
    if sevenscenes.is_dir():
        seqs["7-Scenes (50 frames)"] = list(read_sequence(sevenscenes, "7scenes"))
    else:
        print(f"skipping 7-Scenes: {sevenscenes} not found", file=sys.stderr)
    return seqs


def _available_weights(requested: str) -> list[str]:
    from dro_sfm.models.weights import REGISTRY, is_available

    names = [requested]
    for name, entry in REGISTRY.items():
        if name != requested and entry.source == "url" and is_available(entry) and name.startswith("indoor"):
            names.append(name)
    return names


def _colmap(frames: list) -> dict:
    from dro_sfm.eval.colmap_baseline import run_colmap
    from dro_sfm.eval.trajectory import absolute_trajectory_error, path_length

    names = [f"{i:06d}" for i in range(len(frames))]
    t0 = time.perf_counter()
    res = run_colmap([f.image for f in frames], frames[0].K, names)
    seconds = time.perf_counter() - t0
    reg = [i for i, n in enumerate(names) if res.pose(n) is not None]
    out = {"seconds": seconds, "registered": len(reg), "frames": len(frames), "points3d": res.n_points3d}
    if len(reg) >= 3:
        gt = np.stack([frames[i].T_world_from_cam for i in reg])
        est = np.stack([res.pose(names[i]) for i in reg])
        ate = absolute_trajectory_error(gt, est, align="sim3").stats["rmse"]
        out.update(ate_rmse_m=ate, ate_percent_of_path=100 * ate / path_length(gt))
    return out


def bench_accuracy(args: argparse.Namespace, work: Path) -> dict:
    from dro_sfm.recon.pipeline import GroundTruthPredictor, ReconstructOptions, reconstruct

    results: dict = {}
    for label, frames in _sequences(args).items():
        row: dict = {"frames": len(frames), "input_hw": list(frames[0].image.shape[:2])}
        # The pipeline fed exact depth and relative poses: what windows, chaining and the pose graph lose.
        exact = reconstruct(frames, work / "acc_run", ReconstructOptions(min_motion=0.0, overwrite=True,
                                                                         fusion="none", height=240, width=320),
                            predictor=GroundTruthPredictor(), progress=False)
        row["pipeline[ground-truth depth+poses]"] = {**{k: float(v) for k, v in exact.metrics.items()},
                                                     "seconds": exact.timings["total"]}
        for weights in _available_weights(args.weights):
            options = ReconstructOptions(weights=weights, min_motion=0.0, overwrite=True, fusion="points")
            run = reconstruct(frames, work / "acc_run", options, progress=False)
            key = f"dro[{run.model_name}{'' if run.trained else ', UNTRAINED'}]"
            row[key] = {**{k: float(v) for k, v in run.metrics.items()}, "seconds": run.timings["total"],
                        "processing_hw": list(run.processing_hw)}
        if not args.no_colmap:
            row["pycolmap"] = _colmap(frames)
        results[label] = row
    return results


# --- report ------------------------------------------------------------------------------------------------


def _fmt(v: object, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def print_report(report: dict) -> None:
    if "speed" in report:
        s = report["speed"]
        o, b = s["ours"], s["inference_interleaved"]
        print(f"\n## Speed: {o['frames']} frames 240x320, processed at {o['processing_hw'][1]}x"
              f"{o['processing_hw'][0]} ({o['model']}, {report['threads']} thread(s))")
        print("| run | seconds | frames/s |\n|---|---|---|")
        print(f"| dro-sfm reconstruct, end to end | {o['seconds']:.1f} | {o['frames_per_second']:.3f} |")
        print(f"| dro-sfm inference only (encode + solve) | {o['inference_seconds']:.1f} | "
              f"{o['frames'] / o['inference_seconds']:.3f} |")
        print(f"| inference, interleaved A/B: features reused (pipeline) | {b['reuse_seconds']:.1f} | "
              f"{b['reuse_frames_per_second']:.3f} |")
        print(f"| inference, interleaved A/B: per-window predict (official way) | {b['official_seconds']:.1f} | "
              f"{b['official_frames_per_second']:.3f} |")
        print(f"speed-up of feature reuse: {b['speedup']:.2f}x; fused {o['points']} points at voxel {o['voxel_m']} m")
        print("\nstage breakdown (s): " + ", ".join(f"{k} {v:.2f}" for k, v in o["stages"].items()))
    if "rss" in report:
        r = report["rss"]
        print("\n## Peak RSS (fresh process, fusion and exports included)")
        print("| frames | predictor | peak RSS (MB) | after imports (MB) | seconds | cloud points | voxel (m) |")
        print("|---|---|---|---|---|---|---|")
        for n in ("100", "1000"):
            if n in r:
                x = r[n]
                print(f"| {n} | {x['predictor']} | {x['peak_rss_mb']:.0f} | {x['rss_after_imports_mb']:.0f} | "
                      f"{x['seconds']:.0f} | {x['points']} | {x['voxel_m']} |")
        if "ratio_1000_over_100" in r:
            print(f"RSS(1000)/RSS(100) = {r['ratio_1000_over_100']:.3f} (target <= 1.3)")
    if "accuracy" in report:
        print("\n## Accuracy (ATE after Sim(3), evo; depth AbsRel over valid ground-truth pixels)")
        print("| sequence | method | ATE (m) | ATE % path | AbsRel | AbsRel med-scaled | registered | s |")
        print("|---|---|---|---|---|---|---|---|")
        for label, row in report["accuracy"].items():
            for method, m in row.items():
                if not isinstance(m, dict):
                    continue
                reg = f"{m['registered']}/{m['frames']}" if "registered" in m else f"{row['frames']}/{row['frames']}"
                print(f"| {label} | {method} | {_fmt(m.get('ate_rmse_m'), 4)} | "
                      f"{_fmt(m.get('ate_percent_of_path'), 1)} | {_fmt(m.get('depth_abs_rel'))} | "
                      f"{_fmt(m.get('depth_abs_rel_median_scaled'))} | {reg} | {_fmt(m.get('seconds'), 1)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="default")
    parser.add_argument("--frames", type=int, default=100, help="frames of the speed run")
    parser.add_argument("--acc-frames", type=int, default=24, help="frames of the synthetic accuracy sequences")
    parser.add_argument("--height", type=int, default=240, help="processing height for speed/RSS (0: model's)")
    parser.add_argument("--width", type=int, default=320, help="processing width for speed/RSS (0: model's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--long", action="store_true", help="also measure peak RSS at 1000 frames (slow)")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
    parser.add_argument("--no-colmap", action="store_true", help="accuracy without the pycolmap baseline")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers to this JSON file")
    parser.add_argument("--rss-predictor", choices=("model", "ground-truth"), default="model",
                        help="per-window predictor of the RSS runs: the network, or exact depth/poses (isolates "
                             "the pipeline's and fusion's memory; an untrained network's inconsistent depth never "
                             "fills a bounded volume)")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.height:
        args.height = args.width = None
    _set_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.rss_child is not None:
        rss_child(args.rss_child, args)
        return 0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    report: dict = {"threads": args.threads, "weights": args.weights}
    with tempfile.TemporaryDirectory(prefix="dro_sfm_bench_") as tmp:
        work = Path(tmp)
        if "speed" not in skip:
            report["speed"] = bench_speed(args, work)
        if "rss" not in skip:
            report["rss"] = bench_rss(args)
        if "accuracy" not in skip:
            report["accuracy"] = bench_accuracy(args, work)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
