"""Benchmark of `dro-sfm reconstruct`: speed, memory and accuracy, with pycolmap side by side.

    python benchmarks/bench_reconstruct.py                       # every section (RSS at 100 frames only)
    python benchmarks/bench_reconstruct.py --long                # RSS at 100 and 1000 frames (slow)
    python benchmarks/bench_reconstruct.py --skip speed,inference,rss   # accuracy only
    python benchmarks/bench_reconstruct.py --skip speed,inference,accuracy --rss-sizes 100,1000 \
        --rss-predictor ground-truth --rss-path pingpong         # RSS of the pipeline + fusion alone
    python benchmarks/bench_reconstruct.py --json results.json   # also write every number as JSON

Sections:

* speed: a 100-frame 240x320 synthetic indoor sequence (an image folder on disk) reconstructed end to end
  (decode, keyframes, windows, fusion, every export), with the stage breakdown from run.json.
* inference: on the same frames, inference only, window by window, interleaved: the pipeline's predictor
  (each frame encoded once, features reused) vs the official ``infer_video.py`` way of calling the model
  independently per window (``DroModel.predict``: every image of every window encoded again).
* rss: peak resident memory of a fresh process per run reconstructing ``--rss-sizes`` frames of one room,
  fusion and exports included, and the peak up to the last window (inference and per-frame writes, before
  fusion). ``--rss-path subsample``: every k-th frame of one 1000-frame hand-held walk, so the runs fuse the
  same part of the room (the longer run sees slightly more of it); ``pingpong``: back and forth along the
  walk's first 100 poses, identical views, only more of them. ``--rss-predictor ground-truth`` replaces the
  network by exact depth/poses (pipeline and fusion memory alone, and fast enough for 1000 frames).
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
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DRO_SFM_SHARED", REPO.parent / "shared"))
SECTIONS = ("speed", "inference", "rss", "accuracy")
RSS_PATH_FRAMES = 1000


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# --- speed -------------------------------------------------------------------------------------------------


def _speed_input(args: argparse.Namespace, work: Path) -> Path:
    """The speed sequence as an image folder (written once per benchmark run)."""
    from dro_sfm.data.formats import write_frames
    from dro_sfm.data.synthetic import render_sequence

    folder = work / "speed_input"
    if not (folder / "intrinsics.txt").is_file():
        write_frames("folder", render_sequence("indoor", args.frames, 240, 320, seed=args.seed), folder)
    return folder


def bench_speed(args: argparse.Namespace, work: Path) -> dict:
    """`reconstruct` end to end on the speed folder, with the stage breakdown."""
    from dro_sfm.models.predict import load_model
    from dro_sfm.recon.pipeline import ReconstructOptions, reconstruct

    folder = _speed_input(args, work)
    load_model(args.weights, "cpu")  # the weights file is read from disk once before timing
    options = ReconstructOptions(weights=args.weights, height=args.height, width=args.width, min_motion=0.0,
                                 overwrite=True)
    result = reconstruct(folder, work / "speed_run", options, progress=False)
    return {
        "frames": result.n_keyframes,
        "seconds": result.timings["total"],
        "frames_per_second": result.frames_per_second,
        "inference_seconds": result.timings.get("encode", 0.0) + result.timings.get("solve", 0.0),
        "stages": {k: round(v, 3) for k, v in result.timings.items()},
        "model": result.model_name,
        "processing_hw": list(result.processing_hw),
        "points": result.report.counts.get("points"),
        "mesh_triangles": result.report.counts.get("mesh_triangles"),
        "voxel_m": result.report.fusion.get("voxel_size"),
    }


def bench_inference(args: argparse.Namespace, work: Path) -> dict:
    """Inference only on the speed folder: the pipeline's predictor vs per-window ``DroModel.predict``."""
    from dro_sfm.data.images import read_rgb
    from dro_sfm.models.predict import load_model

    folder = _speed_input(args, work)
    model = load_model(args.weights, "cpu")
    images = [read_rgb(p) for p in sorted(folder.glob("*.png"))]
    fx, fy, cx, cy = np.loadtxt(folder / "intrinsics.txt")
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    shape = (args.height, args.width) if args.height else tuple(model.info.image_shape)
    model.predict(images[1], [images[0], images[2]], K, image_shape=shape)  # warm-up: first calls are slower
    return _interleaved_inference(model, images, K, shape)


def _interleaved_inference(model, images: list[np.ndarray], K: np.ndarray, shape: tuple[int, int]) -> dict:
    """Inference only, window by window, alternating the two ways so that load changes on shared cores hit
    both alike: (a) the pipeline's (resize and encode each frame once, reuse its features), (b) the official
    per-window call (DroModel.predict: resize and encode every image of every window)."""
    from dro_sfm.recon.intrinsics import scale_intrinsics
    from dro_sfm.recon.pipeline import DroPredictor, _resize_rgb
    from dro_sfm.recon.windows import FrameSlot, window_indices

    n = len(images)
    predictor = DroPredictor(model)
    K_proc = scale_intrinsics(K, images[0].shape[:2], shape)
    slots: dict[int, FrameSlot] = {}
    reuse: list[float] = []
    official: list[float] = []
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
            official.append(theirs())
            reuse.append(ours())
        else:
            reuse.append(ours())
            official.append(theirs())
    a, b = np.array(reuse), np.array(official)
    return {
        "frames": n, "reuse_seconds": float(a.sum()), "reuse_frames_per_second": n / float(a.sum()),
        "official_seconds": float(b.sum()), "official_frames_per_second": n / float(b.sum()),
        "speedup": float(b.sum() / a.sum()),
        "reuse_median_window_s": float(np.median(a)), "official_median_window_s": float(np.median(b)),
        # Per window the two calls ran back to back: the median of their ratio is robust to load spikes.
        "median_paired_ratio_official_over_reuse": float(np.median(b / a)),
    }


# --- peak RSS ----------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM): unlike ru_maxrss it is not inherited from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_probe(inner: object) -> object:
    """``inner`` predictor that also records this process's peak RSS (MB) after every window: the last value
    is the peak through the windows stage (inference and per-frame writes), before fusion and exports."""
    from dro_sfm.recon.pipeline import WindowPredictor

    class RssProbe(WindowPredictor):
        def __init__(self) -> None:
            self.name, self.trained, self.image_shape = inner.name, inner.trained, inner.image_shape
            self.windows_peak_mb = 0.0

        @property
        def identity(self) -> str:
            return inner.identity

        def encode(self, slot):  # noqa: ANN001, ANN201 (same signature as the wrapped predictor)
            return inner.encode(slot)

        def __call__(self, target, refs):  # noqa: ANN001, ANN201
            out = inner(target, refs)
            self.windows_peak_mb = _peak_rss_mb()
            return out

    return RssProbe()


def rss_child(n: int, args: argparse.Namespace) -> None:
    """Runs in a fresh process: reconstruct n frames of one room, print peak RSS (MB) as JSON."""
    import torch  # noqa: F401  (counted in the baseline: every run imports it)

    from dro_sfm.data.synthetic import render_sequence
    from dro_sfm.recon.pipeline import GroundTruthPredictor, ReconstructOptions, load_predictor, reconstruct

    baseline = _peak_rss_mb()
    # Both runs follow the same 1000-frame hand-held path (the shorter one takes every k-th frame), so they
    # see the same part of the room: any difference in memory comes from the number of frames.
    path = render_sequence("indoor", RSS_PATH_FRAMES, 240, 320, seed=args.seed)
    if args.rss_path == "subsample":
        stride = RSS_PATH_FRAMES // n
        order = list(range(0, stride * n, stride))
    else:  # back and forth along the first 100 poses: exactly the same views, only more of them
        k = 100
        order = [i % (k - 1) if (i // (k - 1)) % 2 == 0 else (k - 1) - i % (k - 1) for i in range(n)]
    seq = (path[i] for i in order)
    options = ReconstructOptions(weights=args.weights, height=args.height, width=args.width, min_motion=0.0)
    inner = GroundTruthPredictor() if args.rss_predictor == "ground-truth" else load_predictor(options)
    predictor = _rss_probe(inner)
    with tempfile.TemporaryDirectory(prefix="dro_sfm_rss_") as tmp:
        result = reconstruct(seq, Path(tmp) / "run", options, predictor=predictor, progress=False)
        peak = _peak_rss_mb()
        print(json.dumps({"frames": n, "path": args.rss_path, "path_poses_used": len(set(order)),
                          "peak_rss_mb": peak, "windows_stage_peak_rss_mb": predictor.windows_peak_mb,
                          "rss_after_imports_mb": baseline,
                          "predictor": result.model_name, "voxel_m": result.report.fusion.get("voxel_size"),
                          "seconds": result.timings["total"], "points": result.report.counts.get("points"),
                          "peak_window_frames": result.peak_window_frames,
                          "mesh_triangles": result.report.counts.get("mesh_triangles"),
                          "stages": {k: round(v, 2) for k, v in result.timings.items()}}))


def bench_rss(args: argparse.Namespace) -> dict:
    sizes = [int(x) for x in args.rss_sizes.split(",")] if args.rss_sizes else ([100, 1000] if args.long else [100])
    out: dict = {"predictor": args.rss_predictor, "path": args.rss_path}
    for n in sizes:
        cmd = [sys.executable, __file__, "--rss-child", str(n), "--threads", str(args.threads),
               "--weights", args.weights, "--seed", str(args.seed), "--rss-predictor", args.rss_predictor,
               "--rss-path", args.rss_path]
        if args.height:
            cmd += ["--height", str(args.height), "--width", str(args.width)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"RSS run with {n} frames failed:\n{proc.stderr[-2000:]}")
        out[str(n)] = json.loads(proc.stdout.strip().splitlines()[-1])
    if len(sizes) > 1:
        small, large = str(min(sizes)), str(max(sizes))
        out["ratio"] = {"of": f"{large}/{small}", "peak": out[large]["peak_rss_mb"] / out[small]["peak_rss_mb"],
                        "windows_stage": out[large]["windows_stage_peak_rss_mb"]
                        / out[small]["windows_stage_peak_rss_mb"]}
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
        frames = list(read_sequence(sevenscenes, "7scenes"))
        seqs[f"7-Scenes ({len(frames)} frames)"] = frames
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


def _colmap(frames: list, threads: int) -> dict:
    from dro_sfm.eval.colmap_baseline import ColmapOptions, run_colmap
    from dro_sfm.eval.trajectory import absolute_trajectory_error, path_length

    names = [f"{i:06d}" for i in range(len(frames))]
    t0 = time.perf_counter()
    # Same thread count as torch's, so that the seconds compare like for like.
    res = run_colmap([f.image for f in frames], frames[0].K, names, ColmapOptions(num_threads=threads))
    seconds = time.perf_counter() - t0
    reg = [i for i, n in enumerate(names) if res.pose(n) is not None]
    out = {"seconds": seconds, "registered": len(reg), "frames": len(frames), "points3d": res.n_points3d,
           "threads": threads}
    if len(reg) >= 3:
        gt = np.stack([frames[i].T_world_from_cam for i in reg])
        est = np.stack([res.pose(names[i]) for i in reg])
        ate = absolute_trajectory_error(gt, est, align="sim3").stats["rmse"]
        out.update(ate_rmse_m=ate, ate_percent_of_path=100 * ate / path_length(gt))
    return out


def zero_motion_reference(frames: list) -> dict:
    """ATE of a camera that never moves: the best Sim(3) fit of identical positions has scale 0, so its ATE is
    the RMS spread of the ground-truth positions about their mean (what a collapsed trajectory would score)."""
    from dro_sfm.eval.trajectory import path_length

    gt = np.stack([f.T_world_from_cam for f in frames])
    positions = gt[:, :3, 3]
    rmse = float(np.sqrt(np.mean(np.sum((positions - positions.mean(0)) ** 2, axis=1))))
    return {"ate_rmse_m": rmse, "ate_percent_of_path": 100 * rmse / path_length(gt)}


def bench_accuracy(args: argparse.Namespace, work: Path) -> dict:
    from dro_sfm.recon.pipeline import GroundTruthPredictor, ReconstructOptions, reconstruct

    results: dict = {}
    for label, frames in _sequences(args).items():
        row: dict = {"frames": len(frames), "input_hw": list(frames[0].image.shape[:2])}
        row["zero motion (reference)"] = zero_motion_reference(frames)
        # The pipeline fed exact depth and relative poses: what windows, chaining and the pose graph lose.
        exact = reconstruct(frames, work / "acc_run", ReconstructOptions(min_motion=0.0, overwrite=True,
                                                                         fusion="none", height=240, width=320,
                                                                         pose_refine="none"),
                            predictor=GroundTruthPredictor(), progress=False)
        row["pipeline[ground-truth depth+poses]"] = {**{k: float(v) for k, v in exact.metrics.items()},
                                                     "seconds": exact.timings["total"]}
        for weights in _available_weights(args.weights):
            options = ReconstructOptions(weights=weights, min_motion=0.0, overwrite=True, fusion="points")
            run = reconstruct(frames, work / "acc_run", options, progress=False)
            key = f"dro[{run.model_name}{'' if run.trained else ', UNTRAINED'}]"
            row[key] = {**{k: float(v) for k, v in run.metrics.items()}, "seconds": run.timings["total"],
                        "processing_hw": list(run.processing_hw)}
            # The same run without the photometric refinement: what the network's own poses give.
            plain = reconstruct(frames, work / "acc_run", replace(options, pose_refine="none"), progress=False)
            row[key[:-1] + ", network poses only]"] = {**{k: float(v) for k, v in plain.metrics.items()},
                                                       "seconds": plain.timings["total"],
                                                       "processing_hw": list(plain.processing_hw)}
        if not args.no_colmap:
            row["pycolmap"] = _colmap(frames, args.threads)
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
        o = report["speed"]
        print(f"\n## Speed: {o['frames']} frames 240x320, processed at {o['processing_hw'][1]}x"
              f"{o['processing_hw'][0]} ({o['model']}, {report['threads']} thread(s))")
        print("| run | seconds | frames/s |\n|---|---|---|")
        print(f"| dro-sfm reconstruct, end to end | {o['seconds']:.1f} | {o['frames_per_second']:.3f} |")
        print(f"| dro-sfm inference only (encode + solve stages) | {o['inference_seconds']:.1f} | "
              f"{o['frames'] / o['inference_seconds']:.3f} |")
        print(f"fused {o['points']} points, {o['mesh_triangles']} mesh triangles at voxel {o['voxel_m']} m")
        print("\nstage breakdown (s): " + ", ".join(f"{k} {v:.2f}" for k, v in o["stages"].items()))
    if "inference" in report:
        b = report["inference"]
        print(f"\n## Inference only, interleaved A/B per window ({b['frames']} windows)")
        print("| way | seconds | frames/s | median s/window |\n|---|---|---|---|")
        print(f"| features reused (pipeline's DroPredictor) | {b['reuse_seconds']:.1f} | "
              f"{b['reuse_frames_per_second']:.3f} | {b['reuse_median_window_s']:.3f} |")
        print(f"| per-window DroModel.predict (official infer_video way) | {b['official_seconds']:.1f} | "
              f"{b['official_frames_per_second']:.3f} | {b['official_median_window_s']:.3f} |")
        print(f"speed-up of feature reuse: {b['speedup']:.3f}x (sums), "
              f"{b['median_paired_ratio_official_over_reuse']:.3f}x (median of paired per-window ratios)")
    if "rss" in report:
        r = report["rss"]
        print(f"\n## Peak RSS (fresh process per run; predictor {r['predictor']}, path {r['path']})")
        print("| frames | predictor | peak RSS, whole run (MB) | peak RSS, end of windows stage (MB) | "
              "after imports (MB) | seconds | cloud points | voxel (m) |")
        print("|---|---|---|---|---|---|---|---|")
        for n, x in r.items():
            if isinstance(x, dict) and "peak_rss_mb" in x:
                print(f"| {n} | {x['predictor']} | {x['peak_rss_mb']:.0f} | {x['windows_stage_peak_rss_mb']:.0f} | "
                      f"{x['rss_after_imports_mb']:.0f} | {x['seconds']:.0f} | {x['points']} | {x['voxel_m']} |")
        if "ratio" in r:
            q = r["ratio"]
            print(f"RSS ratio {q['of']}: whole run {q['peak']:.3f}, windows stage {q['windows_stage']:.3f}")
    if "accuracy" in report:
        print("\n## Accuracy (ATE after Sim(3), evo; depth AbsRel over valid ground-truth pixels)")
        print("| sequence | method | ATE (m) | ATE % path | AbsRel | AbsRel med-scaled | registered | s |")
        print("|---|---|---|---|---|---|---|---|")
        for label, row in report["accuracy"].items():
            for method, m in row.items():
                if not isinstance(m, dict):
                    continue
                if "registered" in m:
                    reg = f"{m['registered']}/{m['frames']}"
                else:  # the pipeline places every frame; the zero-motion reference is no run
                    reg = f"{row['frames']}/{row['frames']}" if "seconds" in m else "-"
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
    parser.add_argument("--rss-path", choices=("subsample", "pingpong"), default="subsample",
                        help="RSS runs: every k-th frame of one 1000-frame walk (same part of the room, the "
                             "longer run sees slightly more of it), or back and forth along its first 100 poses "
                             "(identical views: growth can only come from the frame count)")
    parser.add_argument("--rss-sizes", default="", help="comma-separated frame counts of the RSS runs "
                        "(default: 100, and 1000 with --long)")
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
        if "inference" not in skip:
            report["inference"] = bench_inference(args, work)
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
