"""DEQ vs unrolled: training-step memory/time, and (``--video``) reconstruction of a synthetic video.

Training (default): activation memory and time of one training step, 12 / 24 / 48 iterations.

Activation memory = peak RSS during one training step (forward + supervised loss + backward) minus the RSS
after building the model and running one no-grad forward (the peak is reset in between through
/proc/self/clear_refs). Every measurement runs in its own subprocess. Iterations: unrolled = 3 stages of
4/8/16 steps (12/24/48 depth and pose GRU steps); DEQ = a budget of 12/24/48 evaluations of f (one depth
and one pose step each), which training always spends (docs/deq.md). Prints a Markdown table.

    python benchmarks/bench_deq.py                      # small preset, 240x320, 3 timed steps each
    python benchmarks/bench_deq.py --quick              # 1 timed step each
    python benchmarks/bench_deq.py --preset official --grad ift

Video (``--video``): ``reconstruct`` on synthetic indoor sequences (default one, 100 frames rendered at
240x320 and processed at the model's training shape, as ``reconstruct`` does by default; every frame a
keyframe, fusion off so that only the per-window model and the pose graph differ) with the given weights
(default: the shipped ``default`` model), once with the model's unrolled schedule and once per DEQ setting:
warm-started from the previous window and, for comparison, cold. Reports frames/s (end to end, and model
only = encode + solve), depth AbsRel against the rendered depth, ATE RMSE after Sim(3) alignment
(``dro_sfm.eval.trajectory``, evo), per-window pose errors against the rendered poses, and optimiser steps per
frame (one step = one depth and one pose GRU step, so unrolled 3x4 = 12). All runs of a sequence share one
process and one loaded model, in the order listed; with several ``--seeds`` a table of means comes first.

    python benchmarks/bench_deq.py --video --out benchmarks/results/deq_video.md
    python benchmarks/bench_deq.py --video --seeds 0 1 2 --deq-weights default-deq --deq-tols 1e-2 --deq-max-steps 12
    python benchmarks/bench_deq.py --video --frames 30 --deq-tols 1e-3   # quicker

Solver statistics (``--solver-stats``): cold solves of held-out synthetic samples (the model card's first
``--samples`` of each kind), unrolled vs each DEQ setting: accuracy, how many converged, steps, and the median
residual after each evaluation of f.

    python benchmarks/bench_deq.py --solver-stats --deq-weights default-deq --deq-tols 1e-2 --deq-max-steps 12 24

Pooled (``--pool``): the video runs of several ``--json`` files with the same settings and disjoint seeds, as
one set of sequences (means and paired differences over all of them). Each pair stays within its own run,
so runs with different thread counts can be pooled; their frame rates cannot be compared with each other.

    python benchmarks/bench_deq.py --pool benchmarks/results/deq_video_24seq.json \
        benchmarks/results/deq_video_seeds24_47.json --out benchmarks/results/deq_video_48seq.md
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ITERATIONS = (12, 24, 48)
VIDEO_DEQ_TOLS = (1e-3, 1e-2)


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
    net = DroNet(cfg.with_(recompute_activations=spec["recompute"]))
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
    if spec["freeze_bn"]:
        net.freeze_batchnorm()
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


# --- video: reconstruct a synthetic sequence, unrolled vs DEQ ---------------------------------------------------


def _deq_settings(dcfg, args: argparse.Namespace) -> list:
    """The model's DeqConfig with each (stop mode, budget, tolerance, depth anchor) of the command line, stop modes
    outermost."""
    import dataclasses

    anchors = args.deq_depth_anchors if args.deq_depth_anchors is not None else [dcfg.depth_anchor]
    modes = args.deq_stop_modes or [dcfg.stop_mode]
    return [dataclasses.replace(dcfg, stop_mode=mode, tol=tol, max_steps=budget, depth_anchor=anchor,
                                verify_returned=dcfg.verify_returned and not args.deq_iterate_judged,
                                project_hidden=dcfg.project_hidden and not args.deq_iterate_judged)
            for mode in modes for budget in args.deq_max_steps for tol in args.deq_tols for anchor in anchors]


def _deq_label(deq, model_stop_mode: str) -> str:
    """'tol 0.01, budget 12' (and the stop mode when it is not the model's, the depth anchor when set, and
    whether the returned state is not checked)."""
    mode = f"`{deq.stop_mode}` " if deq.stop_mode != model_stop_mode else ""
    anchor = f", anchor {deq.depth_anchor:g}" if deq.depth_anchor > 0 else ""
    unchecked = ", iterate judged" if not deq.verify_returned else ""
    return f"{mode}tol {deq.tol:g}, budget {deq.max_steps}{anchor}{unchecked}"


class _WindowPoseErrors:
    """Wraps a window predictor and compares every window's T_ref_from_tgt with the rendered poses.

    Per-window errors do not pass through pose chaining and the photometric refinement, whose accept/reject
    decisions make the ATE of one sequence jump by tenths of a percent for tiny pose changes.
    """

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.errors: list[tuple[float, float, float]] = []  # rotation deg, translation direction deg, |t| error m

    def __getattr__(self, name: str):
        return getattr(self.predictor, name)

    def __call__(self, target, refs):
        import numpy as np

        from dro_sfm.eval.pose_metrics import rotation_error_deg, translation_direction_error_deg

        window = self.predictor(target, refs)
        T_gt = np.stack([np.linalg.inv(ref.gt_pose) @ target.gt_pose for ref in refs])  # [N,4,4] T_ref_from_tgt
        T = window.T_ref_from_tgt.astype(np.float64)
        rot = rotation_error_deg(T_gt[:, :3, :3], T[:, :3, :3])
        tdir = translation_direction_error_deg(T_gt[:, :3, 3], T[:, :3, 3])
        tlen = np.abs(np.linalg.norm(T[:, :3, 3], axis=1) - np.linalg.norm(T_gt[:, :3, 3], axis=1))
        self.errors.extend(zip(rot.tolist(), tdir.tolist(), tlen.tolist()))
        return window


def video_runs(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Render each sequence, then reconstruct it once per solver setting; (setup, one row per sequence and run)."""
    import numpy as np
    import torch

    from dro_sfm.data.synthetic import render_sequence
    from dro_sfm.models.predict import load_model
    from dro_sfm.recon.pipeline import DroPredictor, ReconstructOptions, reconstruct

    torch.set_num_threads(args.threads)
    model = load_model(args.weights, "cpu")
    deq_model = load_model(args.deq_weights, "cpu") if args.deq_weights else model
    cfg = model.net.config
    dcfg = deq_model.net.config.deq
    tag = f" [{args.deq_weights}]" if args.deq_weights else ""
    settings: list[tuple[str, object, dict]] = [(f"unrolled {cfg.stages}x{cfg.steps_per_stage}", model, {})]
    if args.deq_weights and args.unrolled_deq_weights:
        settings.append((f"unrolled {cfg.stages}x{cfg.steps_per_stage}{tag}", deq_model, {}))
    for deq in _deq_settings(dcfg, args):
        name = f"{_deq_label(deq, dcfg.stop_mode)}{tag}"
        settings.append((f"DEQ warm, {name}", deq_model, {"solver": "deq", "deq": deq, "warm_start": True}))
        if args.warm_poses:
            settings.append((f"DEQ warm with poses, {name}", deq_model,
                             {"solver": "deq", "deq": deq, "warm_start": True, "warm_poses": True}))
        if not args.no_cold:
            settings.append((f"DEQ cold, {name}", deq_model, {"solver": "deq", "deq": deq, "warm_start": False}))
    process = None if args.process_shape == "native" else tuple(int(v) for v in args.process_shape.split("x"))
    options = ReconstructOptions(weights=args.weights, height=process[0] if process else None,
                                 width=process[1] if process else None, min_motion=0.0, overwrite=True,
                                 fusion="none")
    rows = []
    path_lengths = []
    render_s = 0.0
    with tempfile.TemporaryDirectory(prefix="dro_sfm_deq_video_") as tmp:
        for seed in args.seeds:
            t0 = time.perf_counter()
            frames = list(render_sequence("indoor", args.frames, args.height, args.width, seed=seed))
            render_s += time.perf_counter() - t0
            path_lengths.append(_path_length(frames))
            # Warm-up (first calls allocate and pick kernels) on three frames, not timed.
            reconstruct(frames[:3], Path(tmp) / "warmup", options, predictor=DroPredictor(model), progress=False)
            for label, net_model, kwargs in settings:
                spy = _WindowPoseErrors(DroPredictor(net_model, **kwargs))
                result = reconstruct(frames, Path(tmp) / "run", options, predictor=spy, progress=False)
                s, m, t = result.solver, result.metrics, result.timings
                err = np.array(spy.errors)
                row = {
                    "seed": seed, "setting": label, "frames": result.n_keyframes, "seconds": t["total"],
                    "processing_hw": list(result.processing_hw),
                    "fps_end_to_end": result.frames_per_second,
                    "fps_model": result.n_keyframes / (t.get("encode", 0.0) + t.get("solve", 0.0)),
                    "depth_abs_rel": m.get("depth_abs_rel"),
                    "depth_abs_rel_median_scaled": m.get("depth_abs_rel_median_scaled"),
                    "ate_rmse_m": m.get("ate_rmse_m"), "ate_percent_of_path": m.get("ate_percent_of_path"),
                    "ate_percent_before_refine": m.get("ate_percent_of_path_before_refine"),
                    "window_rot_deg": float(err[:, 0].mean()), "window_tdir_deg": float(np.nanmean(err[:, 1])),
                    "window_tlen_err_m": float(err[:, 2].mean()),
                    "steps_mean": s.get("steps_mean"), "steps_max": s.get("steps_max"), "budget": s.get("budget"),
                    "non_converged": s.get("non_converged"), "warm_started": s.get("warm_started"),
                    "tol": s.get("tol"),
                }
                rows.append(row)
                print(f"  seed {seed} {label:40s} {row['fps_end_to_end']:.2f} frames/s, {row['steps_mean']:.1f} "
                      f"steps/frame, AbsRel {row['depth_abs_rel']:.3f}, ATE {row['ate_percent_of_path']:.2f} %, "
                      f"window rotation {row['window_rot_deg']:.2f} deg", file=sys.stderr, flush=True)
    setup = {
        "frames": args.frames, "height": args.height, "width": args.width, "seeds": list(args.seeds),
        "processing_hw": rows[0]["processing_hw"] if rows else None,
        "weights": args.weights, "model": model.info.name, "trained": model.info.trained,
        "model_notes": model.info.notes, "deq_weights": args.deq_weights or args.weights,
        "deq_solver": dcfg.forward_solver, "deq_max_steps": args.deq_max_steps, "stop_mode": dcfg.stop_mode,
        "threads": args.threads, "render_seconds": render_s, "native": process is None,
        "path_length_m": path_lengths,
        "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}",
    }
    return setup, rows


MEAN_KEYS = ("fps_end_to_end", "fps_model", "depth_abs_rel", "depth_abs_rel_median_scaled", "ate_rmse_m",
             "ate_percent_of_path", "ate_percent_before_refine", "window_rot_deg", "window_tdir_deg",
             "window_tlen_err_m", "steps_mean")
# Per-sequence figures compared in pairs (each DEQ or tagged row minus the first unrolled row of its sequence).
PAIRED_KEYS = (("depth_abs_rel", "depth AbsRel"), ("depth_abs_rel_median_scaled", "AbsRel median-scaled"),
               ("ate_percent_of_path", "ATE % of path"), ("ate_percent_before_refine", "ATE % before refinement"),
               ("window_rot_deg", "window rotation °"))


def mean_rows(rows: list[dict]) -> list[dict]:
    """One row per setting: the mean over sequences of each figure; counts summed, maxima maximal."""
    import numpy as np

    out = []
    for label in dict.fromkeys(r["setting"] for r in rows):
        group = [r for r in rows if r["setting"] == label]
        row = {"seed": "mean", "setting": label, "frames": sum(r["frames"] for r in group),
               "steps_max": max(r["steps_max"] for r in group), "budget": group[0]["budget"]}
        for key in MEAN_KEYS:
            values = [r[key] for r in group if r.get(key) is not None]
            row[key] = float(np.mean(values)) if values else None
        for key in ("non_converged", "warm_started"):
            row[key] = None if group[0][key] is None else sum(r[key] for r in group)
        out.append(row)
    return out


def paired_rows(rows: list[dict]) -> list[dict]:
    """Each setting against the first (unrolled) setting, sequence by sequence: for every figure of
    PAIRED_KEYS the mean difference, its standard error and how many sequences the setting is better on."""
    import numpy as np

    labels = list(dict.fromkeys(r["setting"] for r in rows))
    base = {r["seed"]: r for r in rows if r["setting"] == labels[0]}
    out = []
    for label in labels[1:]:
        row: dict = {"setting": label, "baseline": labels[0]}
        for key, _ in PAIRED_KEYS:
            diffs = np.array([r[key] - base[r["seed"]][key] for r in rows
                              if r["setting"] == label and r.get(key) is not None
                              and base.get(r["seed"], {}).get(key) is not None])
            if len(diffs) < 2:
                row[key] = None
                continue
            row[key] = {"mean": float(diffs.mean()), "sem": float(diffs.std(ddof=1) / np.sqrt(len(diffs))),
                        "better": int((diffs < 0).sum()), "n": len(diffs)}
        out.append(row)
    return out


def paired_table(rows: list[dict]) -> str:
    """Markdown: mean difference ± standard error (sequences where the setting is better / all)."""
    lines = ["| setting | " + " | ".join(name for _, name in PAIRED_KEYS) + " |",
             "|---|" + "---:|" * len(PAIRED_KEYS)]
    for r in paired_rows(rows):
        cells = []
        for key, _ in PAIRED_KEYS:
            d = r[key]
            cells.append("n/a" if d is None else f"{d['mean']:+.4f} ± {d['sem']:.4f} ({d['better']}/{d['n']})")
        lines.append(f"| {r['setting']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _path_length(frames: list) -> float:
    import numpy as np

    from dro_sfm.eval.trajectory import path_length

    return float(path_length(np.stack([f.T_world_from_cam for f in frames])))


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def video_table(setup: dict, rows: list[dict]) -> str:
    """Markdown table of the video runs."""
    lines = ["| sequence | setting | frames/s end to end | frames/s model | depth AbsRel | AbsRel median-scaled | "
             "ATE % of path | ATE % before refinement | window rotation ° | window t-direction ° | "
             "window \\|t\\| error cm | steps/frame mean | max | not converged | warm-started |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        deq = r["non_converged"] is not None
        n = r["frames"]
        cells = [str(r["seed"]), r["setting"], f"{r['fps_end_to_end']:.2f}", f"{r['fps_model']:.2f}",
                 _fmt(r["depth_abs_rel"], ".3f"), _fmt(r["depth_abs_rel_median_scaled"], ".3f"),
                 _fmt(r["ate_percent_of_path"], ".2f"), _fmt(r.get("ate_percent_before_refine"), ".2f"),
                 _fmt(r["window_rot_deg"], ".2f"),
                 _fmt(r["window_tdir_deg"], ".1f"), _fmt(100.0 * r["window_tlen_err_m"], ".2f"),
                 f"{r['steps_mean']:.2f}", str(r["steps_max"]), f"{r['non_converged']}/{n}" if deq else "-",
                 f"{r['warm_started']}/{n}" if deq else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def video_report(setup: dict, rows: list[dict], command: str) -> str:
    """The Markdown file: command, setup, tables (mean over sequences first) and what the columns mean."""
    notes = setup["model_notes"]
    step = notes.get("training_step")
    hw = setup["processing_hw"]
    lengths = ", ".join(f"{v:.2f}" for v in setup["path_length_m"])
    tables = []
    if len(setup["seeds"]) > 1:
        tables += [f"Mean over the {len(setup['seeds'])} sequences (counts summed over their frames):", "",
                   video_table(setup, mean_rows(rows)), "",
                   f"Paired over the sequences, each setting minus `{rows[0]['setting']}` on the same sequence: "
                   "mean ± standard error (sequences where the setting is better / sequences); negative is better:",
                   "", paired_table(rows), "", "Each sequence:", ""]
    tables += [video_table(setup, rows), ""]
    return "\n".join([
        "# DEQ vs unrolled on a synthetic video",
        "",
        f"Command (from the repository root): `{command}`",
        "",
        f"Sequences: synthetic indoor (`dro_sfm.data.synthetic.render_sequence`), seeds {setup['seeds']}, "
        f"{setup['frames']} frames rendered at {setup['width']}x{setup['height']} and processed at "
        f"{hw[1]}x{hw[0]}" + (" (the model's training shape, `reconstruct`'s default)" if setup["native"] else "")
        + f"; camera paths {lengths} m. Every frame a keyframe, 2 references per window, fusion off. "
        f"Weights: `{setup['weights']}` = {setup['model']}" + (f" (training step {step})" if step is not None else "")
        + f". DEQ: {setup['deq_solver']}, `{setup['stop_mode']}` residual, budgets {setup['deq_max_steps']} steps. "
        f"{setup['threads']} torch thread(s); {setup['machine']}.",
        "",
        *tables,
        (f"* DEQ rows use `{setup['deq_weights']}`, unrolled rows `{setup['weights']}` unless tagged (the same "
         "weights serve both modes, docs/deq.md)." if setup["deq_weights"] != setup["weights"] else
         "* Every row uses the same weights; if they were trained in the unrolled mode only, the DEQ rows measure how "
         "far that model's iteration settles, not what a DEQ-trained model would do."),
        "* Warm: each window starts from the previous window's solution re-projected to its target (depth and "
        "depth GRU state; poses from the pose head), but only when that solve converged (otherwise cold: carrying "
        "a non-fixed-point state over compounds its error along the video). Warm with poses: the composed poses "
        "and pose GRU states are carried over too. Cold: every window starts from the initial heads.",
        "* One step = one depth GRU step and one pose GRU step (the unrolled 3x4 schedule is 12). "
        "frames/s end to end: keyframes / wall time of `reconstruct` (reading, encoding, solving, confidence, "
        "writing, pose graph with photometric refinement; no fusion). frames/s model: keyframes / (encode + "
        "solve time), warm-start re-projection included.",
        "* ATE: Sim(3)-aligned RMSE of the final trajectory (`dro_sfm.eval.trajectory`, evo), in % of the path; "
        "before refinement: the same for the network's pose graph before the photometric refinement fuses in "
        "RGB-D odometry on the predicted depth (the network's own trajectory). "
        "Window errors: each window's network estimate `T_ref_from_tgt` against the rendered relative pose, "
        "mean over all windows and references (rotation angle, translation direction angle, |t| difference); "
        "they skip the pose graph, whose refinement accepts or rejects pair alignments and so moves one "
        "sequence's ATE by tenths of a percent for tiny pose changes. Depth AbsRel: mean over frames against "
        "the rendered depth; median-scaled: after per-frame median scaling.",
        "* Timings come from a shared 2-core machine: compare rows with that in mind.",
        "",
    ])


def solver_stats_runs(args: argparse.Namespace) -> tuple[dict, list[dict], dict[str, list[float]]]:
    """Cold solves of held-out synthetic samples (model-card samples 0..n-1 of each kind): the unrolled schedule
    and each DEQ setting; (setup, one row per kind and setting, median residual per solver step per setting)."""
    import numpy as np
    import torch

    from dro_sfm.models.deq import dominant_eigenvalue
    from dro_sfm.models.predict import load_model
    from dro_sfm.train.scorecard import prediction_errors, reserved_dataset

    torch.set_num_threads(args.threads)
    model = load_model(args.weights, "cpu")
    deq_model = load_model(args.deq_weights, "cpu") if args.deq_weights else model
    cfg, dcfg = model.net.config, deq_model.net.config.deq
    unrolled = f"unrolled {cfg.stages}x{cfg.steps_per_stage}"
    settings = [(unrolled, model, None)]
    for deq in _deq_settings(dcfg, args):
        settings.append((f"DEQ cold, {_deq_label(deq, dcfg.stop_mode)}", deq_model, deq))
    rows: list[dict] = []
    traces: dict[str, list[float]] = {}
    with torch.no_grad():
        for kind in ("indoor", "outdoor"):
            ds = reserved_dataset(kind, args.height, args.width)
            per: dict[str, list[dict]] = {label: [] for label, _, _ in settings}
            steps_trace: dict[str, list[np.ndarray]] = {label: [] for label, _, _ in settings[1:]}
            for i in range(args.samples):
                s = ds[i]
                target, refs, K = s["target"], list(s["refs"]), s["K"]
                gt, T_gt = s["depth"][0].numpy(), s["T_ref_from_tgt"].numpy()
                for label, net_model, deq in settings:
                    pred = net_model.predict(target, refs, K, deq_config=deq)
                    rec = prediction_errors(pred.depth[0, 0].numpy(), gt, pred.T_ref_from_tgt[0].double().numpy(),
                                            T_gt)
                    stats = pred.output.extras.get("deq") if deq is not None else None
                    if stats is not None:
                        rec.update(steps=int(stats.steps), converged=bool(stats.converged),
                                   residual=float(stats.judged_residual.max()))
                        steps_trace[label].append(stats.abs_trace[:, 0].numpy())
                        if args.eigen:
                            value, shares = dominant_eigenvalue(pred.output.extras["deq_map"], pred.output.state)
                            rec.update(eigen=float(value[0]), eigen_depth_share=float(shares["inv_depth"][0]))
                    per[label].append(rec)
            for label, recs in per.items():
                row = {"kind": kind, "setting": label, "n": len(recs)}
                for key in ("abs_rel", "abs_rel_median_scaled", "rot_deg", "tdir_deg"):
                    row[key] = float(np.nanmean([r[key] for r in recs]))
                if label != unrolled:
                    row["converged"] = sum(r["converged"] for r in recs)
                    row["steps_mean"] = float(np.mean([r["steps"] for r in recs]))
                    conv = [r["steps"] for r in recs if r["converged"]]
                    row["steps_mean_converged"] = float(np.mean(conv)) if conv else None
                    row["residual_median"] = float(np.median([r["residual"] for r in recs]))
                    row["residual_max"] = float(np.max([r["residual"] for r in recs]))
                    if args.eigen:
                        row["eigen_median"] = float(np.median([r["eigen"] for r in recs]))
                        row["eigen_max"] = float(np.max([r["eigen"] for r in recs]))
                        row["eigen_depth_share"] = float(np.median([r["eigen_depth_share"] for r in recs]))
                    longest = max(len(t) for t in steps_trace[label])
                    # a converged solve stops early; its residual after that step is its final one
                    padded = [np.pad(t, (0, longest - len(t)), mode="edge") for t in steps_trace[label]]
                    traces[f"{kind}: {label}"] = np.median(np.stack(padded), axis=0).tolist()
                rows.append(row)
                print(f"  {kind:7s} {label:32s} AbsRel {row['abs_rel']:.3f} rot {row['rot_deg']:.2f}"
                      + (f" converged {row['converged']}/{row['n']}, {row['steps_mean']:.1f} steps"
                         if "converged" in row else ""), file=sys.stderr, flush=True)
    setup = {"samples": args.samples, "height": args.height, "width": args.width, "weights": args.weights,
             "deq_weights": args.deq_weights or args.weights, "model_notes": model.info.notes,
             "deq_model_notes": deq_model.info.notes, "process_shape": list(model.info.image_shape),
             "deq_solver": dcfg.forward_solver, "stop_mode": dcfg.stop_mode, "threads": args.threads,
             "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}"}
    return setup, rows, traces


def solver_stats_report(setup: dict, rows: list[dict], traces: dict[str, list[float]], command: str) -> str:
    """Markdown: accuracy and convergence per kind and setting, then the median residual after each step."""
    lines = [
        "# DEQ solver statistics on held-out synthetic samples", "",
        f"Command (from the repository root): `{command}`", "",
        f"Samples: the first {setup['samples']} model-card samples of each kind (reserved seeds, never drawn in "
        f"training), three views at {setup['height']}x{setup['width']}, processed at "
        f"{setup['process_shape'][0]}x{setup['process_shape'][1]}. Every solve starts cold (initial heads). "
        f"Unrolled rows: `{setup['weights']}`; DEQ rows: `{setup['deq_weights']}` "
        f"({setup['deq_model_notes']}); {setup['deq_solver']}, `{setup['stop_mode']}` residual. "
        f"{setup['threads']} torch thread(s); {setup['machine']}.", "",
        "| kind | setting | AbsRel | AbsRel median-scaled | rot. err. ° | transl. dir. err. ° | converged | "
        "steps mean | steps mean (converged) | residual median | max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        conv = f"{r['converged']}/{r['n']}" if "converged" in r else "-"
        lines.append(f"| {r['kind']} | {r['setting']} | {r['abs_rel']:.3f} | {r['abs_rel_median_scaled']:.3f} | "
                     f"{r['rot_deg']:.2f} | {r['tdir_deg']:.2f} | {conv} | {_fmt(r.get('steps_mean'), '.1f')} | "
                     f"{_fmt(r.get('steps_mean_converged'), '.1f')} | {_fmt(r.get('residual_median'), '.4f')} | "
                     f"{_fmt(r.get('residual_max'), '.4f')} |")
    eigen_rows = [r for r in rows if "eigen_median" in r]
    if eigen_rows:
        lines += ["", "Largest |eigenvalue| of ∂f/∂z at the returned state (power method, 40 backward passes of f; "
                  "`dro_sfm.models.deq.dominant_eigenvalue`) and the share of its eigenvector in the inverse-depth "
                  "block:", "", "| kind | setting | median | max | depth share (median) |", "|---|---|---:|---:|---:|"]
        lines += [f"| {r['kind']} | {r['setting']} | {r['eigen_median']:.3f} | {r['eigen_max']:.3f} | "
                  f"{r['eigen_depth_share']:.2f} |" for r in eigen_rows]
    lines += ["", "Median `abs` residual after each evaluation of f (a solve that stopped early keeps its last "
              "value):", ""]
    for name, trace in traces.items():
        lines.append(f"- {name}: " + ", ".join(f"{v:.3g}" for v in trace))
    lines += ["", "* A solve that does not reach the tolerance within its budget returns the lowest-residual state it "
              "saw, flagged as not converged (`DeqStats.converged`); its errors are included in the means. "
              "Residual columns: that of the state returned, or in rows marked \"iterate judged\" that of the "
              "solver's best iterate x (the state returned is f(x), docs/deq.md §3); in the row's stop mode "
              "(`abs` unless the row names `rel`: the same change divided by the norm of f(z)).", ""]
    return "\n".join(lines)


def solver_stats_main(args: argparse.Namespace) -> None:
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    setup, rows, traces = solver_stats_runs(args)
    report = solver_stats_report(setup, rows, traces, command)
    print(report)
    if args.out:
        from dro_sfm.data.atomic import atomic_write_text

        atomic_write_text(args.out, report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"setup": setup, "rows": rows, "median_residual_per_step": traces}, fh, indent=1, default=str)


def video_main(args: argparse.Namespace) -> None:
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    setup, rows = video_runs(args)
    report = video_report(setup, rows, command)
    print(report)
    if args.out:
        from dro_sfm.data.atomic import atomic_write_text

        atomic_write_text(args.out, report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"setup": setup, "rows": rows, "mean": mean_rows(rows), "paired": paired_rows(rows)}, fh,
                      indent=1, default=str)


def pooled_rows(runs: list[dict]) -> list[dict]:
    """The per-sequence rows of several video runs (JSON dicts), checked to share settings and not seeds."""
    labels = [list(dict.fromkeys(r["setting"] for r in run["rows"])) for run in runs]
    if any(ls != labels[0] for ls in labels):
        raise SystemExit(f"--pool: the runs have different settings: {labels}")
    seeds = [seed for run in runs for seed in run["setup"]["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--pool: a seed occurs in more than one run: {sorted(seeds)}")
    return [row for run in runs for row in run["rows"]]


def pool_report(paths: list[str], runs: list[dict], rows: list[dict], command: str, plot: str | None = None) -> str:
    """Markdown: the pooled runs, then means and paired differences over all their sequences (and the plot's
    file name when there is one)."""
    sources = [f"- `{p}`: seeds {run['setup']['seeds'][0]}–{run['setup']['seeds'][-1]} "
               f"({len(run['setup']['seeds'])} sequences), {run['setup']['threads']} thread(s), "
               f"DEQ weights `{run['setup']['deq_weights']}`" for p, run in zip(paths, runs)]
    n = sum(len(run["setup"]["seeds"]) for run in runs)
    return "\n".join([
        "# DEQ vs unrolled on synthetic videos, pooled", "",
        f"Command (from the repository root): `{command}`", "",
        f"{n} sequences from {len(runs)} runs of `bench_deq.py --video` (each file's Markdown twin has its "
        "command, setup and per-sequence table):", "", *sources, "",
        f"Mean over the {n} sequences (counts summed over their frames; frame rates mix the runs' thread counts):",
        "", video_table(runs[0]["setup"], mean_rows(rows)), "",
        f"Paired over the sequences, each setting minus `{rows[0]['setting']}` on the same sequence in the same run: "
        "mean ± standard error (sequences where the setting is better / sequences); negative is better:", "",
        paired_table(rows), "",
        *([f"Each sequence, DEQ against unrolled (below the diagonal: DEQ better): `{Path(plot).name}`", ""]
          if plot else []),
    ])


def plot_paired(rows: list[dict], out_png: str) -> None:
    """Per sequence, each DEQ setting against the unrolled one: depth AbsRel, final ATE, window rotation; a point
    below the diagonal is a sequence where the setting is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dro_sfm.data.atomic import atomic_path

    labels = list(dict.fromkeys(r["setting"] for r in rows))
    base = {r["seed"]: r for r in rows if r["setting"] == labels[0]}
    panels = (("depth_abs_rel", "depth AbsRel"), ("ate_percent_of_path", "final ATE % of path"),
              ("window_rot_deg", "window rotation °"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.8))
    for ax, (key, name) in zip(axes, panels):
        lo, hi = float("inf"), float("-inf")
        for label in labels[1:]:
            pairs = [(base[r["seed"]][key], r[key]) for r in rows if r["setting"] == label and r.get(key) is not None]
            x, y = zip(*pairs)
            better = sum(b < a for a, b in pairs)
            ax.scatter(x, y, s=14, alpha=0.7, label=f"{label} (better on {better}/{len(pairs)})")
            lo, hi = min(lo, *x, *y), max(hi, *x, *y)
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=1, ls="--")
        ax.set_xlabel(f"{labels[0]}: {name}")
        ax.set_ylabel(f"DEQ: {name}")
        ax.set_title(f"{name}, one point per sequence")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def pool_main(args: argparse.Namespace) -> None:
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    runs = [json.loads(Path(p).read_text()) for p in args.pool]
    rows = pooled_rows(runs)
    report = pool_report(args.pool, runs, rows, command, args.plot)
    print(report)
    if args.out:
        from dro_sfm.data.atomic import atomic_write_text

        atomic_write_text(args.out, report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"sources": args.pool, "rows": rows, "mean": mean_rows(rows), "paired": paired_rows(rows)},
                      fh, indent=1, default=str)
    if args.plot:
        plot_paired(rows, args.plot)


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
    ap.add_argument("--train-bn", action="store_true",
                    help="BatchNorm in train mode (default: frozen, as the shipped training configs run)")
    ap.add_argument("--recompute", action="store_true",
                    help="both modes recompute activations in backward (model option recompute_activations)")
    ap.add_argument("--json", help="also write the raw numbers here")
    video = ap.add_argument_group("video benchmark (--video)")
    video.add_argument("--video", action="store_true", help="reconstruct a synthetic video: unrolled vs DEQ")
    video.add_argument("--frames", type=int, default=100)
    video.add_argument("--seeds", type=int, nargs="+", default=[0], help="one synthetic sequence per seed")
    video.add_argument("--process-shape", default="native",
                       help="processing resolution HxW, or 'native' (the model's training shape, reconstruct's "
                            "default); frames are rendered at --height x --width")
    video.add_argument("--weights", default="default")
    video.add_argument("--deq-tols", type=float, nargs="+", default=list(VIDEO_DEQ_TOLS))
    video.add_argument("--deq-max-steps", type=int, nargs="+", default=[24], help="DEQ step budgets to run")
    video.add_argument("--deq-depth-anchors", type=float, nargs="+",
                       help="DEQ depth anchor weights to run (deq.depth_anchor; default: the DEQ model's own)")
    video.add_argument("--deq-stop-modes", nargs="+", choices=["abs", "rel"],
                       help="residuals the DEQ stops on (deq.stop_mode; default: the DEQ model's own); rows with "
                            "another mode than the model's name it")
    video.add_argument("--deq-iterate-judged", action="store_true",
                       help="the solve as before session 17: convergence judged on the solver's iterate, the "
                            "returned state not checked, f not projected (deq.verify_returned and "
                            "deq.project_hidden false; rows marked 'iterate judged')")
    video.add_argument("--deq-weights", help="weights of the DEQ rows (default: --weights), e.g. default-deq")
    video.add_argument("--no-cold", action="store_true", help="skip the cold-start DEQ rows")
    video.add_argument("--unrolled-deq-weights", action="store_true",
                       help="add an unrolled row with the --deq-weights (separates weights from solver)")
    video.add_argument("--warm-poses", action="store_true",
                       help="add rows whose warm starts also carry the poses (reconstruct --warm-start-poses)")
    video.add_argument("--out", help="write the Markdown report here")
    stats = ap.add_argument_group("solver statistics (--solver-stats; uses --weights, --deq-weights, --deq-tols, "
                                  "--deq-max-steps, --out)")
    stats.add_argument("--solver-stats", action="store_true",
                       help="cold DEQ solves of held-out synthetic samples: convergence, residual per step, accuracy")
    stats.add_argument("--samples", type=int, default=16, help="samples per kind (indoor, outdoor)")
    stats.add_argument("--eigen", action="store_true",
                       help="also estimate the largest |eigenvalue| of df/dz at each returned state (40 backward "
                            "passes of f per solve)")
    video.add_argument("--pool", nargs="+", metavar="JSON",
                       help="pool the --json files of earlier --video runs (same settings, disjoint seeds)")
    video.add_argument("--plot", metavar="PNG",
                       help="with --pool: per-sequence scatter of each DEQ setting against unrolled")
    args = ap.parse_args()
    if args.pool:
        pool_main(args)
        return
    if args.solver_stats:
        solver_stats_main(args)
        return
    if args.video:
        video_main(args)
        return
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    repeats = 1 if args.quick else args.repeats
    rows = []
    floor = dict(mode="heads", iters=0, preset=args.preset, height=args.height, width=args.width,
                 grad=args.grad, n_states=args.n_states, repeats=repeats, threads=args.threads,
                 freeze_bn=not args.train_bn, recompute=args.recompute)
    rows.append({**floor, **run_subprocess(floor)})
    for n in args.iterations:
        for mode in ("unrolled", "deq"):  # interleaved so that machine noise hits both alike
            spec = dict(mode=mode, iters=n, preset=args.preset, height=args.height, width=args.width,
                        grad=args.grad, n_states=args.n_states, repeats=repeats, threads=args.threads,
                 freeze_bn=not args.train_bn, recompute=args.recompute)
            res = run_subprocess(spec)
            rows.append({**spec, **res})
            print(f"  {mode:8s} {n:3d} it: {res['activation_mib']:8.1f} MiB  {res['step_s']:7.2f} s",
                  file=sys.stderr)
    ref = {r["mode"]: r for r in rows if r["iters"] == min(args.iterations)}
    print(f"\nTraining step, {args.preset} preset, {args.height}x{args.width}, batch 1, 2 references, "
          f"{args.threads} thread(s); DEQ: anderson, {args.grad} gradient, n_states {args.n_states}; BatchNorm "
          f"{'train mode' if args.train_bn else 'frozen'}; recomputed activations "
          f"{'on' if args.recompute else 'off'} (both modes)\n")
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
