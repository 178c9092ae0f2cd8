"""Rendering speed of the synthetic engine: frames/s for indoor and outdoor scenes.

Builds one scene per kind (build time reported separately), renders a warm-up frame, then times
``--runs`` runs of ``--frames`` consecutive trajectory frames each and prints the median frames/s, with
the process CPU time per frame alongside (on a shared machine wall time also counts other processes).

    python benchmarks/bench_synth.py                         # 240x320, 5 runs of 30 frames
    python benchmarks/bench_synth.py --height 480 --width 640 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import time


def bench(
    kind: str, height: int, width: int, frames: int, runs: int, seed: int, nuisances: bool, shadows: bool
) -> dict:
    """Time rendering of one scene kind; returns build seconds, median frames/s and CPU ms per frame."""
    from dro_sfm.data.synthetic import NuisanceConfig, SceneConfig, render_sequence

    t0 = time.perf_counter()
    seq = render_sequence(
        kind,
        frames * runs + 1,
        height,
        width,
        seed=seed,
        nuisance=NuisanceConfig.realistic() if nuisances else None,
        scene_config=SceneConfig(shadows=shadows),
    )
    seq[0]  # builds the Embree BVH, triangle table and ray cache
    build_s = time.perf_counter() - t0
    fps, cpu_ms = [], []
    for r in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(1 + r * frames, 1 + (r + 1) * frames):
            seq[i]
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        fps.append(frames / wall)
        cpu_ms.append(1000.0 * cpu / frames)
    return {
        "kind": kind,
        "build_s": build_s,
        "triangles": seq.scene.n_triangles,
        "fps_median": statistics.median(fps),
        "fps_min": min(fps),
        "fps_max": max(fps),
        "cpu_ms_per_frame": statistics.median(cpu_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--frames", type=int, default=30, help="frames per timed run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="indoor,outdoor")
    parser.add_argument("--nuisances", action="store_true", help="also apply the realistic nuisance preset")
    parser.add_argument("--no-shadows", action="store_true", help="skip the outdoor sun-shadow rays")
    args = parser.parse_args()
    print(
        f"synthetic rendering at {args.height}x{args.width}, {args.runs} runs x {args.frames} frames"
        f"{' with nuisances' if args.nuisances else ''}"
    )
    print(
        f"{'scene':<8} {'triangles':>9} {'build s':>8} {'fps median':>11} {'fps min-max':>13} "
        f"{'cpu ms/frame':>13}"
    )
    for kind in args.kinds.split(","):
        r = bench(
            kind,
            args.height,
            args.width,
            args.frames,
            args.runs,
            args.seed,
            args.nuisances,
            not args.no_shadows,
        )
        print(
            f"{kind:<8} {r['triangles']:>9} {r['build_s']:>8.2f} {r['fps_median']:>11.1f} "
            f"{r['fps_min']:>6.1f}-{r['fps_max']:<6.1f} {r['cpu_ms_per_frame']:>13.1f}"
        )


if __name__ == "__main__":
    main()
