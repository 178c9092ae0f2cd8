"""Training-step activation memory and time: unrolled optimiser vs DEQ solve, 12 / 24 / 48 iterations.

Activation memory = peak RSS during one training step (forward + supervised loss + backward) minus the RSS
after building the model and running one no-grad forward (the peak is reset in between through
/proc/self/clear_refs). Every measurement runs in its own subprocess. Iterations: unrolled = 3 stages of
4/8/16 steps (12/24/48 depth and pose GRU steps); DEQ = a budget of 12/24/48 evaluations of f (one depth
and one pose step each), which training always spends (docs/deq.md). Prints a Markdown table.

    python benchmarks/bench_deq.py                      # small preset, 240x320, 3 timed steps each
    python benchmarks/bench_deq.py --quick              # 1 timed step each
    python benchmarks/bench_deq.py --preset official --grad ift
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

ITERATIONS = (12, 24, 48)


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(spec: dict) -> dict:
    """One measurement in this process: build, one no-grad forward, then timed training steps."""
    import torch

    from dro_sfm.geometry.pose import euler_vec_to_matrix
    from dro_sfm.losses.supervised import supervised_loss
    from dro_sfm.models.config import DeqConfig, DroConfig, small_config
    from dro_sfm.models.dro import DroNet

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    base = small_config() if spec["preset"] == "small" else DroConfig(with_unused_cnet=False)
    n = spec["iters"]
    if spec["mode"] == "deq":
        cfg = base.with_(solver="deq", deq=DeqConfig(max_steps=n, grad=spec["grad"], n_states=spec["n_states"]))
    elif spec["mode"] == "heads":  # no optimiser at all: fnet and the initial heads, the floor of both modes
        cfg = base.with_(stages=0)
    else:
        cfg = base.with_(stages=3, steps_per_stage=n // 3)
    net = DroNet(cfg)
    H, W = spec["height"], spec["width"]
    g = torch.Generator().manual_seed(1)
    target = torch.rand(1, 3, H, W, generator=g)
    refs = [torch.rand(1, 3, H, W, generator=g) for _ in range(2)]
    K = torch.tensor([[[0.9 * W, 0, W / 2], [0, 0.9 * W, H / 2], [0, 0, 1]]])
    gt_depth = 1.0 + torch.rand(1, 1, H, W, generator=g)
    gt_poses = [euler_vec_to_matrix(torch.tensor([[0.05 * (i + 1), 0.0, 0.02, 0.0, 0.01, 0.0]])) for i in range(2)]
    with torch.no_grad():
        net.eval()
        net.forward_full(target, refs, K)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-5)
    baseline = _rss_mib()
    exact_peak = _reset_peak()
    times, peaks, solver_steps = [], [], []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = net.forward_full(target, refs, K)
        mats = euler_vec_to_matrix(torch.stack(out.poses, dim=2))
        per_pred = [[mats[:, v, k] for v in range(2)] for k in range(mats.shape[2])]
        loss = supervised_loss(out.inv_depths, per_pred, gt_depth, gt_poses, K, 0.2, 10.0).total
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        peaks.append(_peak_mib())
        if out.extras.get("deq") is not None:
            solver_steps.append(out.extras["deq"].steps)
        del out, loss, mats, per_pred
    return {
        "activation_mib": peaks[0] - baseline,
        "baseline_mib": baseline,
        "step_s": statistics.median(times),
        "exact_peak": exact_peak,
        "solver_steps": solver_steps,
        "predictions": spec["iters"],
    }


def run_subprocess(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--preset", choices=["small", "official"], default="small")
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--grad", choices=["phantom", "ift"], default="phantom")
    ap.add_argument("--n-states", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, nargs="+", default=list(ITERATIONS))
    ap.add_argument("--quick", action="store_true", help="one timed step per measurement")
    ap.add_argument("--json", help="also write the raw numbers here")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    repeats = 1 if args.quick else args.repeats
    rows = []
    floor = dict(mode="heads", iters=0, preset=args.preset, height=args.height, width=args.width,
                 grad=args.grad, n_states=args.n_states, repeats=repeats, threads=args.threads)
    rows.append({**floor, **run_subprocess(floor)})
    for n in args.iterations:
        for mode in ("unrolled", "deq"):  # interleaved so that machine noise hits both alike
            spec = dict(mode=mode, iters=n, preset=args.preset, height=args.height, width=args.width,
                        grad=args.grad, n_states=args.n_states, repeats=repeats, threads=args.threads)
            res = run_subprocess(spec)
            rows.append({**spec, **res})
            print(f"  {mode:8s} {n:3d} it: {res['activation_mib']:8.1f} MiB  {res['step_s']:7.2f} s",
                  file=sys.stderr)
    ref = {r["mode"]: r for r in rows if r["iters"] == min(args.iterations)}
    print(f"\nTraining step, {args.preset} preset, {args.height}x{args.width}, batch 1, 2 references, "
          f"{args.threads} thread(s); DEQ: anderson, {args.grad} gradient, n_states {args.n_states}\n")
    print("| mode | iterations | activation MiB | × unrolled-" + str(min(args.iterations)) + " | step s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["activation_mib"] / ref["unrolled"]["activation_mib"]
        print(f"| {r['mode']} | {r['iters']} | {r['activation_mib']:.1f} | {ratio:.2f} | {r['step_s']:.2f} |")
    print("\n(heads: fnet + initial heads only, no optimiser and no context encoders: the common floor)")
    deq = [r for r in rows if r["mode"] == "deq"]
    if len(deq) > 1:
        flat = deq[-1]["activation_mib"] / deq[0]["activation_mib"]
        print(f"\nDEQ activation memory {max(args.iterations)} vs {min(args.iterations)} iterations: {flat:.2f}×")
    if not all(r["exact_peak"] for r in rows):
        print("\n(peak RSS could not be reset: numbers include the no-grad forward's peak)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
