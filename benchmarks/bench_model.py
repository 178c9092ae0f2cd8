"""Latency and peak memory of the DRO network: optimised path vs the literal spec path, interleaved.

Each measurement runs in a fresh subprocess (peak RSS is per process), alternating between variants so
that machine noise hits both alike. Prints a Markdown table; ``--json`` also writes the raw numbers.

    python benchmarks/bench_model.py                 # full table (a few minutes on 2 cores)
    python benchmarks/bench_model.py --quick         # fewer repeats, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from dro_sfm.models.dro import FAST_PARTS

VARIANTS = {
    "literal": {"fast": False, "compile": False, "release_cnet": False},
    "optimised": {"fast": True, "compile": False, "release_cnet": True},
    "optimised+compile": {"fast": True, "compile": True, "release_cnet": True},
}
# Ablations: the optimised path without one optimisation, to see what each gives (240x320, 12 iterations).
for _part in (*FAST_PARTS, "release_cnet"):
    VARIANTS[f"optimised-{_part}"] = {"fast": True, "compile": False, "release_cnet": _part != "release_cnet",
                                      "disable": () if _part == "release_cnet" else (_part,)}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(spec: dict) -> dict:
    """Run one measurement in this process and return its numbers."""
    import torch

    from dro_sfm.models.official import build_official_model

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    variant = VARIANTS[spec["variant"]]
    net = build_official_model("it12-h-out", 0.2, 10.0)
    net.set_fast(variant["fast"], disable=variant.get("disable", ()))
    if variant["release_cnet"] and spec["mode"] == "infer":
        net.release_unused_encoder()
    H, W = spec["height"], spec["width"]
    g = torch.Generator().manual_seed(1)
    target = torch.rand(1, 3, H, W, generator=g)
    refs = [torch.rand(1, 3, H, W, generator=g) for _ in range(spec["refs"])]
    K = torch.tensor([[[0.9 * W, 0, W / 2], [0, 0.9 * W, H / 2], [0, 0, 1]]])
    stages = spec["iters"] // 4
    rss_model = _peak_rss_mib()
    times = []
    if spec["mode"] == "infer":
        net.eval()
        fn = net.forward_full
        if variant["compile"]:
            fn = torch.compile(net.forward_full, dynamic=False)
        with torch.no_grad():
            for i in range(spec["warmup"] + spec["repeats"]):
                t0 = time.perf_counter()
                fn(target, refs, K, stages=stages, steps_per_stage=4)
                if i >= spec["warmup"]:
                    times.append(time.perf_counter() - t0)
    else:
        from dro_sfm.geometry.pose import euler_vec_to_matrix
        from dro_sfm.losses.supervised import supervised_loss

        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        depth = torch.rand(1, 1, H, W, generator=g) * 5 + 1
        gt = [torch.eye(4)[None] for _ in refs]
        for i in range(spec["warmup"] + spec["repeats"]):
            t0 = time.perf_counter()
            out = net.forward_full(target, refs, K, stages=stages, steps_per_stage=4)
            mats = euler_vec_to_matrix(torch.stack(out.poses, 2))
            per = [[mats[:, v, k] for v in range(mats.shape[1])] for k in range(mats.shape[2])]
            loss = supervised_loss(out.inv_depths, per, depth, gt, K, 0.2, 10.0).total
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times": times, "peak_rss_mib": _peak_rss_mib(),
            "rss_after_model_mib": rss_model}


def run_spec(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per configuration")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json", help="also write raw results here")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    repeats = 3 if args.quick else 5
    variants = ["literal", "optimised"]
    compiled = [] if args.no_compile or args.quick else ["optimised+compile"]
    rows = [("infer", 240, 320, 2, 12), ("infer", 320, 960, 2, 12)]
    rows += [("infer", 240, 320, 2, it) for it in (0, 4, 8, 24)]
    rows += [("train", 240, 320, 2, 12)]
    results = []
    ablations = [v for v in VARIANTS if v.startswith("optimised-")]
    for mode, H, W, refs, iters in rows:
        main_row = (mode, H, W, iters) == ("infer", 240, 320, 12)
        row_variants = variants + (compiled + ablations if main_row else [])
        per_variant: dict[str, list[dict]] = {v: [] for v in row_variants}
        for _ in range(1 if args.quick else args.rounds):
            for v in row_variants:  # interleaved: literal, optimised, ... then again
                if mode == "train" and v == "optimised+compile":
                    continue
                spec = {"variant": v, "mode": mode, "height": H, "width": W, "refs": refs, "iters": iters,
                        "warmup": 1 if mode == "train" else 2, "repeats": 3 if mode == "train" else repeats,
                        "threads": args.threads}
                per_variant[v].append(run_spec(spec))
        for v, runs in per_variant.items():
            ok = [r for r in runs if "error" not in r]
            if not runs:
                continue
            if not ok:
                results.append({"mode": mode, "H": H, "W": W, "iters": iters, "variant": v, "error": runs[0]["error"]})
                continue
            results.append({
                "mode": mode, "H": H, "W": W, "iters": iters, "variant": v,
                "median_s": statistics.median([t for r in ok for t in r["times"]]),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in ok),
            })
    print("| mode | size | iters | variant | median s | speed-up vs literal | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['mode']} | {r['H']}x{r['W']} | {r['iters']} | {r['variant']} | failed: {r['error'][:60]} |||")
            continue
        base = next(x for x in results if x["mode"] == r["mode"] and x["H"] == r["H"] and x["iters"] == r["iters"]
                    and x["variant"] == "literal")
        ratio = base["median_s"] / r["median_s"] if "median_s" in base else float("nan")
        print(f"| {r['mode']} | {r['H']}x{r['W']} | {r['iters']} | {r['variant']} | {r['median_s']:.3f} | "
              f"{ratio:.2f}x | {r['peak_rss_mib']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
