"""The ``dro-sfm`` command line. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import sys

import click

from dro_sfm.errors import DroSfmError


class _FriendlyGroup(click.Group):
    """A click group that prints a ``DroSfmError`` as one line and exits 1, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DroSfmError as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=_FriendlyGroup)
@click.version_option(package_name="dro-sfm")
def main() -> None:
    """dro-sfm: depth, camera poses, point clouds and meshes from image sequences with DRO."""


# Subcommands are registered below; each lives beside the concept it drives.
# --- commands ---


@main.command("predict")
@click.argument("target", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.argument("refs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for depth.npy, depth.png and poses.json.")
@click.option("--weights", default="default", show_default=True, help="Weights name or model file.")
@click.option("--intrinsics", default=None, help="fx,fy,cx,cy in pixels of the input images.")
@click.option("--device", default="cpu", show_default=True)
def predict_command(target: str, refs: tuple[str, ...], out_dir: str, weights: str, intrinsics: str | None,
                    device: str) -> None:
    """Depth of TARGET and its pose relative to each REF image (one network call)."""
    from pathlib import Path

    from dro_sfm.models.predict import load_model
    from dro_sfm.recon.single import predict_files

    K = None
    if intrinsics:
        try:
            fx, fy, cx, cy = (float(v) for v in intrinsics.split(","))
        except ValueError as err:
            raise click.BadParameter("expected four numbers fx,fy,cx,cy", param_hint="--intrinsics") from err
        K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
    model = load_model(weights, device)
    res = predict_files(model, Path(target), [Path(r) for r in refs], Path(out_dir), K)
    if not model.info.trained:
        click.secho("warning: these outputs come from UNTRAINED weights", fg="yellow", err=True)
    click.echo(f"depth: {res.depth_path} (range {res.depth_range[0]:.2f}-{res.depth_range[1]:.2f} "
               f"{model.info.depth_units}); poses: {res.poses_path}")


# --- reconstruct: image folder / video / dataset -> depth, poses, cloud, mesh, exports ---
@main.command("reconstruct")
@click.argument("input_path", metavar="INPUT", required=False, type=str)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=str), help="Run directory to write.")
@click.option("--sample", is_flag=True, help="Reconstruct the sample sequence that ships with dro-sfm "
              "(same as INPUT = sample).")
@click.option("--weights", default="default", show_default=True, help="Weights name (dro-sfm weights list) or file.")
@click.option("--intrinsics", default=None,
              help="fx,fy,cx,cy in pixels of the input images, or a file with fx fy cx cy / a 3x3 matrix "
                   "[default: dataset calibration, intrinsics.txt, EXIF, else a 45 degree field of view].")
@click.option("--height", type=int, default=None, help="Processing height, multiple of 16 [default: the model's].")
@click.option("--width", type=int, default=None, help="Processing width, multiple of 16 [default: the model's].")
@click.option("--step", type=click.IntRange(min=1), default=1, show_default=True, help="Use every N-th input frame.")
@click.option("--min-motion", type=click.FloatRange(min=0.0), default=1.0, show_default=True,
              help="Keyframe selection: skip frames whose mean optical displacement from the last keyframe is "
                   "below this many pixels (at the processing size); 0 keeps every frame.")
@click.option("--refs", type=click.Choice(["2", "4"]), default="2", show_default=True,
              help="Reference views around each target.")
@click.option("--fusion", type=click.Choice(["tsdf", "points", "none"]), default="tsdf", show_default=True,
              help="tsdf: point cloud and mesh; points: point cloud only; none: depth and poses only.")
@click.option("--conf-threshold", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Fuse only pixels with at least this confidence.")
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu or cuda:0.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in OUT: frames already written are kept.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in OUT.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable image files with a warning instead of stopping.")
@click.option("--max-frames", type=click.IntRange(min=2), default=None, help="Stop after this many keyframes.")
@click.option("--layout", type=click.Choice(["kitti", "scannet", "tum", "7scenes", "folder", "video"]),
              default=None, help="Input layout [default: detected].")
@click.option("--no-pose-graph", is_flag=True,
              help="Keep the chained poses (skip pose-graph refinement, and with it --pose-refine).")
@click.option("--pose-refine", type=click.Choice(["photometric", "none"]), default="photometric", show_default=True,
              help="photometric: align each keyframe to the 1, 2 and 4 keyframes before it by RGB-D odometry on the "
                   "predicted depth and fuse those poses with the network's in the pose graph, each weighted by "
                   "the noise measured on the sequence; none: the network's poses only.")
@click.option("--stages", type=click.IntRange(min=1), default=None,
              help="Optimiser stages per window [default: the model's].")
@click.option("--steps-per-stage", type=click.IntRange(min=1), default=None,
              help="GRU steps per stage [default: the model's].")
@click.option("--solver", type=click.Choice(["unrolled", "deq"]), default="unrolled", show_default=True,
              help="unrolled: the model's fixed iteration schedule; deq: solve for the fixed point of the update "
                   "(same weights), stopping once converged, each window warm-started from the previous one.")
@click.option("--deq-tol", type=click.FloatRange(min=0.0), default=None,
              help="DEQ stopping tolerance on the state's RMS change per step [default: the model's deq.tol].")
@click.option("--deq-max-steps", type=click.IntRange(min=1), default=None,
              help="DEQ step budget per window [default: the model's deq.max_steps, or stages x steps-per-stage "
                   "when those are given].")
@click.option("--no-warm-start", is_flag=True,
              help="DEQ: start every window cold from the initial heads (for comparison).")
@click.option("--warm-start-poses", is_flag=True,
              help="DEQ: warm starts also carry the previous window's poses (composed) and pose GRU states; by "
                   "default they carry depth and the depth GRU state, and poses start from the pose head.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch [default: torch's choice]; 1 is often fastest on busy shared cores.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def reconstruct_command(input_path: str | None, out_dir: str, sample: bool, weights: str, intrinsics: str | None,
                        height: int | None, width: int | None, step: int, min_motion: float, refs: str,
                        fusion: str, conf_threshold: float, device: str, resume: bool, overwrite: bool,
                        skip_bad: bool, max_frames: int | None, layout: str | None, no_pose_graph: bool,
                        pose_refine: str, stages: int | None, steps_per_stage: int | None, solver: str,
                        deq_tol: float | None, deq_max_steps: int | None, no_warm_start: bool, warm_start_poses: bool,
                        threads: int | None,
                        quiet: bool) -> None:
    """Depth, camera poses, point cloud, mesh and COLMAP/nerfstudio exports from INPUT: an image folder, a
    video file, or a dataset folder (KITTI raw drive, ScanNet scene, TUM or 7-Scenes sequence)."""
    from pathlib import Path

    from dro_sfm.recon.pipeline import FolderGroundTruth, ReconstructOptions, reconstruct, sample_path

    use_sample = sample or (input_path == "sample" and not Path("sample").exists())
    if sample and input_path:
        raise click.UsageError("give either INPUT or --sample, not both")
    if not use_sample and not input_path:
        raise click.UsageError("give INPUT (image folder, video or dataset) or --sample")
    options = ReconstructOptions(
        weights=weights, intrinsics=intrinsics, height=height, width=width, step=step, min_motion=min_motion,
        refs=int(refs), fusion=fusion, conf_threshold=conf_threshold, device=device, resume=resume,
        overwrite=overwrite, skip_bad=skip_bad, max_frames=max_frames, layout=layout,
        pose_graph=not no_pose_graph, pose_refine=pose_refine, stages=stages, steps_per_stage=steps_per_stage,
        solver=solver, deq_tol=deq_tol, deq_max_steps=deq_max_steps, warm_start=not no_warm_start,
        warm_start_poses=warm_start_poses,
    )
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    source = sample_path() if use_sample else input_path
    ground_truth = FolderGroundTruth(source) if use_sample else None
    result = reconstruct(source, out_dir, options, ground_truth=ground_truth, progress=not quiet)

    if not result.trained:
        click.secho("warning: these results come from UNTRAINED weights (the default model is not installed); "
                    "depth and poses are not meaningful", fg="yellow", err=True)
    if result.intrinsics.guessed:
        click.secho("warning: no intrinsics were known; a default field of view was assumed "
                    f"(fx = fy = {result.intrinsics.K[0, 0]:.1f} px). Pass --intrinsics fx,fy,cx,cy for correct "
                    "geometry", fg="yellow", err=True)
    resumed = f", {result.n_resumed} resumed" if result.n_resumed else ""
    click.echo(f"{result.n_keyframes} keyframes of {result.n_input_frames} frames{resumed} at "
               f"{result.processing_hw[1]}x{result.processing_hw[0]} with {result.model_name} in "
               f"{result.timings.get('total', 0.0):.1f} s ({result.frames_per_second:.2f} frames/s)")
    m = result.metrics
    if "ate_rmse_m" in m:
        click.echo(f"vs ground truth: ATE {m['ate_rmse_m']:.4f} m after Sim(3) ({m['ate_percent_of_path']:.1f} % of "
                   f"the {m['path_length_m']:.2f} m path), depth AbsRel {m['depth_abs_rel']:.3f} "
                   f"(median-scaled {m['depth_abs_rel_median_scaled']:.3f})")
        if "ate_percent_of_path_before_refine" in m:
            click.echo(f"  the network's pose graph before photometric refinement: ATE "
                       f"{m['ate_rmse_m_before_refine']:.4f} m ({m['ate_percent_of_path_before_refine']:.1f} %)")
    s = result.solver
    if s.get("mode") == "deq":
        click.echo(f"DEQ solver: {s['steps_mean']:.1f} steps per frame on average (max {s['steps_max']} of "
                   f"{s['budget']}, tol {s['tol']:g}); {s['warm_started']} of {s['frames']} frames warm-started; "
                   f"{s['non_converged']} did not converge")
    root = result.out_dir
    click.echo(f"outputs in {root}:")
    for label, path in result.report.paths.items():
        click.echo(f"  {label + ':':<13}{path}")
    click.echo(f"  {'run record:':<13}{root / 'run.json'}")
    click.echo(f"view it with:  dro-sfm view {root}")


# --- train: supervised / self-supervised training, resumable, DDP under torchrun ---
@main.command("train")
@click.argument("config", type=click.Path(dir_okay=False, path_type=str))
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt (model, optimiser, RNG, step).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Stop after at most N more steps in this run (the total and the LR schedule stay "
                   "optim.steps / optim.lr_step); use it to split a long run into sessions.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Run folder for checkpoint.pt, model.pt, config.yaml and TensorBoard logs [default: out_dir].")
@click.option("--data-root", default=None, help="Dataset root, overriding data.root (which may use ${ENV_VARS}).")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a config value (YAML), e.g. --set optim.lr=1e-4 --set model.overrides.stages=1.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--compact", is_flag=True,
              help="Rewrite OUT/checkpoint.pt without the optimiser state (a third of the size, e.g. to commit it) "
                   "and exit; --resume from it restarts Adam's moment estimates.")
def train_command(config: str, resume: bool, steps: int | None, out_dir: str | None, data_root: str | None,
                  assignments: tuple[str, ...], quiet: bool, compact: bool) -> None:
    """Train DRO from the YAML file CONFIG (see configs/); run it under torchrun for several processes."""
    import logging
    import os

    from dro_sfm.train.launch import prepare_config, run_training

    if not logging.getLogger().handlers:  # dataset summaries and warnings; other torchrun ranks stay quiet
        main_rank = os.environ.get("RANK", "0") == "0"
        logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(levelname)s: %(message)s")

    cfg = prepare_config(config, out_dir=out_dir, data_root=data_root, overrides=assignments)
    if compact:
        from pathlib import Path

        from dro_sfm.train.trainer import CHECKPOINT_NAME, compact_checkpoint

        path = Path(cfg.out_dir) / CHECKPOINT_NAME
        click.echo(f"{path}: {compact_checkpoint(path) / 2**20:.1f} MB without optimiser state")
        return
    summary = run_training(cfg, resume=resume, max_steps=steps, progress=not quiet,
                           source=f"dro-sfm train {config}")
    if not summary.is_main:
        return
    if summary.last_step == summary.first_step:
        click.echo(f"{summary.name}: already at step {summary.last_step} of {summary.total_steps}; nothing to do")
        return
    processes = f" on {summary.world} processes" if summary.world > 1 else ""
    click.echo(f"{summary.name}: steps {summary.first_step} -> {summary.last_step} of {summary.total_steps}"
               f"{processes}, last loss {summary.final_loss:.4f}")
    click.echo(f"checkpoint: {summary.checkpoint}")
    click.echo(f"model:      {summary.model_file}")


# --- synth: synthetic posed RGB-D sequences ---
@main.command("synth")
@click.option("--scene", "kind", type=click.Choice(["indoor", "outdoor"]), default="indoor",
              show_default=True, help="A furnished room (hand-held motion) or a street (driving motion).")
@click.option("--frames", type=click.IntRange(min=1), default=100, show_default=True,
              help="Number of frames.")
@click.option("--height", type=click.IntRange(min=8), default=240, show_default=True,
              help="Image height (px).")
@click.option("--width", type=click.IntRange(min=8), default=320, show_default=True, help="Image width (px).")
@click.option("--seed", type=int, default=0, show_default=True, help="Scene, trajectory and noise seed.")
@click.option("--format", "fmt", type=click.Choice(["scannet", "kitti", "tum", "7scenes", "folder"]),
              default="folder", show_default=True, help="Dataset layout to write.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=str), required=True,
              help="Output directory.")
@click.option("--motion-scale", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True,
              help="Multiply the inter-frame motion ranges (indoor 1-10 cm / 0.5-5 deg, outdoor 0.5-1.5 m).")
@click.option("--nuisances", is_flag=True,
              help="Add sensor effects: exposure, noise, blur, vignetting and depth holes.")
def synth_command(kind: str, frames: int, height: int, width: int, seed: int, fmt: str, out_dir: str,
                  motion_scale: float, nuisances: bool) -> None:
    """Render a synthetic posed RGB-D sequence with exact depth and poses, written as a dataset."""
    from dro_sfm.data.formats import write_frames
    from dro_sfm.data.synthetic import NuisanceConfig, TrajectoryConfig, render_sequence

    sequence = render_sequence(
        kind, frames, height, width, seed=seed, trajectory_config=TrajectoryConfig().scaled(motion_scale),
        nuisance=NuisanceConfig.realistic() if nuisances else None,
    )
    path = write_frames(fmt, sequence, out_dir)
    click.echo(f"wrote {frames} {kind} frames ({height}x{width}, seed {seed}) as {fmt}: {path}")


# --- outputs: export from a run directory, 3-D viewer ---
@main.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--to", "targets", multiple=True, required=True,
              help="What to (re)write: ply, mesh, colmap, nerfstudio, poses, summary; repeat or comma-separate.")
@click.option("--conf-threshold", type=float, default=None,
              help="Drop depth pixels with confidence below this (cloud, mesh, COLMAP) [default: the run's].")
@click.option("--voxel-size", type=float, default=None,
              help="TSDF and cloud voxel size in metres [default: the run's, else from the depth range].")
@click.option("--depth-max", type=float, default=None,
              help="Ignore depths beyond this, metres [default: the run's, else largest per-frame p99].")
@click.option("--no-colmap-tracks", is_flag=True, help="Write COLMAP images without 2-D observations.")
def export_command(run_dir: str, targets: tuple[str, ...], conf_threshold: float | None,
                   voxel_size: float | None, depth_max: float | None, no_colmap_tracks: bool) -> None:
    """Redo exports of the finished run in RUN_DIR from its cameras.json and per-frame files."""
    from dro_sfm.recon.export import export_run, run_fusion_options
    from dro_sfm.recon.run_dir import load_cameras

    options = run_fusion_options(load_cameras(run_dir), conf_threshold=conf_threshold, voxel_size=voxel_size,
                                 depth_max=depth_max)
    report = export_run(run_dir, targets, options, colmap_observations=not no_colmap_tracks)
    for name, path in report.paths.items():
        click.echo(f"{name + ':':<13}{path}")
    if report.fusion:
        click.echo(f"{'voxel:':<13}{report.fusion['voxel_size']:g} m, confidence >= "
                   f"{report.fusion['conf_threshold']:g}, depth <= {report.fusion['depth_max']:.3g} m")
    click.echo(", ".join(f"{k}: {v}" for k, v in report.counts.items()))


@main.command("view")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--screenshot", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Render offscreen to this PNG instead of opening a window.")
@click.option("--frame", type=int, default=None, help="Highlight this frame (0-based) from the start.")
@click.option("--from-camera", type=int, default=None, help="Look through this frame's camera (0-based).")
@click.option("--keys", default="", help='Key presses applied before showing, e.g. "N,N,T" (see H for keys).')
@click.option("--size", type=(int, int), default=(None, None), metavar="W H",
              help="Window size in pixels [default: 1024 768, or the camera's aspect with --from-camera].")
@click.option("--conf-threshold", type=float, default=0.5, show_default=True,
              help="Confidence threshold for the highlighted frame's points.")
def view_command(run_dir: str, screenshot: str | None, frame: int | None, from_camera: int | None, keys: str,
                 size: tuple[int | None, int | None], conf_threshold: float) -> None:
    """Show the cloud/mesh, cameras and trajectory of RUN_DIR; keys C M F T toggle layers, N/P step frames."""
    from dro_sfm.viz.viewer import view_run

    view_run(run_dir, screenshot=screenshot, frame=frame, from_camera=from_camera, keys=keys,
             width=size[0], height=size[1], conf_threshold=conf_threshold, echo=click.echo)
    if screenshot:
        click.echo(f"screenshot: {screenshot}")


# --- weights: named checkpoints, download cache, safe inspection ---
@main.group("weights")
def weights_group() -> None:
    """List, download and inspect model weights (released DRO checkpoints and shipped models)."""


@weights_group.command("list")
def weights_list() -> None:
    """Show every named set of weights with its network version, depth range and whether it is present."""
    from dro_sfm.models.weights import REGISTRY, cache_dir, is_available

    rows = [("name", "version", "depth (m)", "image HxW", "refs", "cached")]
    for entry in REGISTRY.values():
        present = "shipped" if entry.source == "package" else ("yes" if is_available(entry) else "no")
        refs = ",".join(f"{offset:+d}" for offset in entry.ref_offsets)
        rows.append((entry.name, entry.version, f"{entry.min_depth:g}-{entry.max_depth:g}",
                     f"{entry.image_shape[0]}x{entry.image_shape[1]}", refs, present))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    click.echo(f"\ncache: {cache_dir() / 'weights'}")


@weights_group.command("download")
@click.argument("name")
@click.option("--force", is_flag=True, help="Download again even when the file is already cached.")
def weights_download(name: str, force: bool) -> None:
    """Download the weights called NAME into the cache (resumes an interrupted download)."""
    from dro_sfm.models.weights import download_weights

    click.echo(str(download_weights(name, force=force)))


@weights_group.command("info")
@click.argument("checkpoint")
@click.option("--net-version", default=None, help="Network version for a bare state dict (e.g. it12-h-out).")
@click.option("--min-depth", type=float, default=None, help="Minimum depth (m) for a bare state-dict file.")
@click.option("--max-depth", type=float, default=None, help="Maximum depth (m) for a bare state-dict file.")
def weights_info(checkpoint: str, net_version: str | None, min_depth: float | None,
                 max_depth: float | None) -> None:
    """Load CHECKPOINT (a file or a cached name) without running code from it and describe it."""
    from dro_sfm.models.checkpoint import official_model_from_payload, read_checkpoint_file
    from dro_sfm.models.predict import OWN_FORMAT, DroModel
    from dro_sfm.models.weights import resolve_weights

    path = resolve_weights(checkpoint, download=False)
    payload = read_checkpoint_file(path)  # read once: the format decides which loader describes it
    if isinstance(payload, dict) and payload.get("format") == OWN_FORMAT:
        _describe_own_model(DroModel.from_own_payload(payload, path))
        return
    model, info = official_model_from_payload(
        payload, path, version=net_version, min_depth=min_depth, max_depth=max_depth
    )
    shape = f"{info.image_shape[0]} x {info.image_shape[1]} (H x W)" if info.image_shape else "not stored"
    for label, value in (
        ("file", str(info.path)), ("layout", info.layout), ("version", info.version),
        ("depth range", f"{info.min_depth:g} - {info.max_depth:g} m"), ("image shape", shape),
        ("training", {True: "supervised, metric depth", False: "self-supervised, depth up to scale",
                      None: "unknown"}[info.supervised] + (f" ({info.model_name})" if info.model_name else "")),
        ("epoch", "not stored" if info.epoch is None else str(info.epoch)),
        ("tensors", str(info.num_tensors)),
    ):
        click.echo(f"{label + ':':<13}{value}")
    _echo_parameter_counts(model)


def _describe_own_model(model) -> None:
    """What ``weights info`` prints for a dro-sfm model file (shipped or exported from a training run)."""
    cfg, info = model.net.config, model.info
    schedule = (f"{cfg.stages} x {cfg.steps_per_stage} unrolled steps" if cfg.solver == "unrolled" else
                f"deq ({cfg.deq.forward_solver}, tol {cfg.deq.tol:g}, budget {cfg.deq.max_steps})")
    for label, value in (
        ("file", info.source), ("layout", "dro-sfm model file"), ("name", info.name),
        ("widths", f"hidden {cfg.hidden_dim}, context {cfg.context_dim}, features {cfg.feature_dim}"),
        ("solver", schedule),
        ("depth range", f"{cfg.min_depth:g} - {cfg.max_depth:g} {info.depth_units}"),
        ("image shape", f"{info.image_shape[0]} x {info.image_shape[1]} (H x W)"),
        ("trained", "yes" if info.trained else "no (random weights)"),
        *((key.replace("_", " "), str(value)) for key, value in info.notes.items()),
    ):
        click.echo(f"{label + ':':<15}{value}")
    _echo_parameter_counts(model.net)


def _echo_parameter_counts(net) -> None:
    from dro_sfm.models.checkpoint import parameter_counts

    counts = parameter_counts(net)
    click.echo("parameters:")
    for module, count in [*counts.items(), ("total", sum(counts.values()))]:
        click.echo(f"  {module:<20}{count:>12,}")


# --- eval: benchmarks by the standard protocols, with baselines ---
def _eval_common(func):
    """Options shared by every ``eval`` subcommand."""
    options = [
        click.option("--out", "out", type=click.Path(dir_okay=False, path_type=str), required=True,
                     help="Results JSON; a Markdown table (.md) and a <stem>_plots/ folder are written beside it."),
        click.option("--device", default="cpu", show_default=True,
                     help="Torch device (cpu, cuda, cuda:1); under torchrun, cuda means cuda:<local rank>."),
        click.option("--baselines", is_flag=True,
                     help="Also evaluate the model's 0-iteration prediction and COLMAP (pycolmap) on the same frames."),
        click.option("--protocol", "protocols", multiple=True,
                     help="Depth protocol(s): dro_kitti, monodepth2_kitti, dro_scannet, deepv2d_scannet "
                          "[default: both of the dataset's]."),
        click.option("--no-plots", is_flag=True, help="Skip the plots."),
        click.option("--colmap-threads", type=int, default=-1, show_default=True,
                     help="Threads per COLMAP run (-1: all cores)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _model_options(required: bool):
    def decorate(func):
        options = [
            click.option("--weights", required=required, default=None,
                         help="Model file or registered name (see `dro-sfm weights list`)."
                              + ("" if required else " Used for the 0-iteration baseline [default: the run's]")),
            click.option("--image-shape", type=(int, int), default=None, metavar="H W",
                         help="Processing size [default: the model's training size]."),
            click.option("--stages", type=click.IntRange(min=0), default=None,
                         help="Optimizer stages [default: the model's]."),
            click.option("--steps-per-stage", type=click.IntRange(min=1), default=None,
                         help="GRU steps per stage [default: the model's]."),
        ]
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


def _run_eval(device: str, body) -> None:
    """Join torchrun's process group if launched by it, run ``body(ctx, device)``, print on rank 0."""
    from dro_sfm.eval.distributed import device_for_process, init_distributed, shutdown_distributed

    ctx = init_distributed(device)
    try:
        text = body(ctx, device_for_process(device, ctx))
        if ctx.is_main and text:
            click.echo(text)
    finally:
        shutdown_distributed(ctx)


def _colmap_options(baselines: bool, threads: int):
    if not baselines:
        return None
    from dro_sfm.eval.colmap_baseline import ColmapOptions, quiet_colmap_logging

    quiet_colmap_logging()
    return ColmapOptions(num_threads=threads)


@main.group("eval")
def eval_group() -> None:
    """Evaluate depth and poses by the standard protocols (KITTI Eigen, ScanNet pairs, whole runs).

    Every command also runs under `torchrun --nproc_per_node N`, sharding the test set across processes.
    """


@eval_group.command("kitti")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=str),
              help="KITTI raw root holding <date>/<date>_drive_XXXX_sync.")
@click.option("--split", default="eigen", show_default=True,
              help="eigen (697 frames), eigen_benchmark (652, improved GT) or a split file.")
@click.option("--splits-dir", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Where named splits live (kitti/eigen/test_files.txt, ...) [default: $DRO_SFM_SPLITS].")
@click.option("--gt", type=click.Choice(["auto", "velodyne", "npz", "improved"]), default="auto", show_default=True,
              help="Ground truth: raw LiDAR .bin scans, packnet npz, or improved maps; auto = improved for "
                   "eigen_benchmark, else whichever raw LiDAR the root has.")
@click.option("--ref-offsets", default="+1", show_default=True,
              help="Reference frame offsets, comma-separated; +1 (next frame) is the official test context.")
@click.option("--missing-ref", type=click.Choice(["skip", "mirror"]), default="skip", show_default=True,
              help="A frame without its neighbour: skip (reported) or use the mirrored offset.")
@click.option("--no-pp", is_flag=True, help="Skip flip post-processing (no _pp variants; halves the run time).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N split lines.")
@_model_options(required=True)
@_eval_common
def eval_kitti_command(data, split, splits_dir, gt, ref_offsets, missing_ref, no_pp, limit, weights, image_shape,
                       stages, steps_per_stage, out, device, baselines, protocols, no_plots, colmap_threads) -> None:
    """KITTI depth on the Eigen split: Garg crop, both protocols' caps, median scaling and flip post-processing."""
    from dro_sfm.errors import ConfigError
    from dro_sfm.eval.kitti import DEFAULT_PROTOCOLS, KittiEvalOptions, evaluate_kitti
    from dro_sfm.eval.pipeline import benchmark_markdown, model_methods

    try:
        offsets = tuple(int(o) for o in ref_offsets.split(",") if o.strip())
    except ValueError as err:
        raise ConfigError(f"--ref-offsets {ref_offsets!r}: give comma-separated integers such as +1 or -1,+1") from err
    options = KittiEvalOptions(split=split, splits_dir=splits_dir, gt=gt, ref_offsets=offsets,
                               missing_ref=missing_ref, protocols=tuple(protocols) or DEFAULT_PROTOCOLS,
                               post_process=not no_pp, colmap=_colmap_options(baselines, colmap_threads), limit=limit)

    def body(ctx, dev):
        methods, descriptions = model_methods(weights, dev, image_shape, stages, steps_per_stage, baselines)
        result = evaluate_kitti(data, methods, descriptions, options, ctx, out, plots=not no_plots)
        return benchmark_markdown(result)

    _run_eval(device, body)


def _default_views(weights: str) -> int:
    from dro_sfm.models.weights import REGISTRY

    entry = REGISTRY.get(weights)
    return 5 if entry is not None and len(entry.ref_offsets) == 4 else 2


@eval_group.command("scannet")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder holding the exported scene<NNNN>_<NN> folders.")
@click.option("--pairs", default="banet", show_default=True,
              help="Test-pair list: banet (looked up in the splits directory) or a file.")
@click.option("--splits-dir", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Where named lists live (scannet/scannet_test_pairs.txt) [default: $DRO_SFM_SPLITS].")
@click.option("--views", type=click.Choice(["2", "3", "5"]), default=None,
              help="Views per sample (see docs/evaluation.md) [default: 5 for the 5-view weights, else 2].")
@click.option("--no-pp", is_flag=True, help="Skip flip post-processing (no _pp variants).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N pairs.")
@_model_options(required=True)
@_eval_common
def eval_scannet_command(data, pairs, splits_dir, views, no_pp, limit, weights, image_shape, stages,
                         steps_per_stage, out, device, baselines, protocols, no_plots, colmap_threads) -> None:
    """ScanNet depth and poses on the BA-Net/DeepV2D test pairs (0.1-10 m and 0.2-10 m caps)."""
    from dro_sfm.eval.pipeline import benchmark_markdown, model_methods
    from dro_sfm.eval.scannet import DEFAULT_PROTOCOLS, ScanNetEvalOptions, evaluate_scannet

    options = ScanNetEvalOptions(pairs=pairs, splits_dir=splits_dir,
                                 views=int(views) if views else _default_views(weights),
                                 protocols=tuple(protocols) or DEFAULT_PROTOCOLS, post_process=not no_pp,
                                 colmap=_colmap_options(baselines, colmap_threads), limit=limit)

    def body(ctx, dev):
        methods, descriptions = model_methods(weights, dev, image_shape, stages, steps_per_stage, baselines)
        result = evaluate_scannet(data, methods, descriptions, options, ctx, out, plots=not no_plots)
        return benchmark_markdown(result)

    _run_eval(device, body)


def _sequence_command(layout: str | None, run_dir, data, match, weights, image_shape, stages, steps_per_stage,
                      out, device, baselines, protocols, no_plots, colmap_threads) -> None:
    from pathlib import Path

    from dro_sfm.eval.pipeline import model_methods
    from dro_sfm.eval.sequence import SequenceEvalOptions, evaluate_sequence, run_weights

    options = SequenceEvalOptions(layout=layout, match=match, protocols=tuple(protocols) or None,
                                  colmap=_colmap_options(baselines, colmap_threads))
    weights = weights or (run_weights(run_dir) if baselines else None)
    if baselines and weights is None:
        click.echo("note: no --weights and none recorded in run.json; the 0-iteration baseline is skipped", err=True)

    def body(ctx, dev):
        methods, descriptions = {}, {}
        if baselines and weights is not None:
            methods, descriptions = model_methods(weights, dev, image_shape, stages, steps_per_stage, True)
            methods.pop("dro")
            descriptions.pop("dro")
        evaluate_sequence(run_dir, data, methods, descriptions, options, ctx, out, plots=not no_plots)
        return Path(out).with_suffix(".md").read_text()

    _run_eval(device, body)


def _sequence_options(func):
    options = [
        click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=str),
                     help="Run directory written by `dro-sfm reconstruct` (cameras.json, depth/).",),
        click.option("--data", required=True, type=click.Path(file_okay=False, path_type=str),
                     help="The dataset folder the run was made from (ground truth)."),
        click.option("--match", type=click.Choice(["auto", "name", "timestamp", "order"]), default="auto",
                     show_default=True, help="How run frames are paired with ground-truth frames."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@eval_group.command("tum")
@_sequence_options
@_model_options(required=False)
@_eval_common
def eval_tum_command(**kwargs) -> None:
    """ATE/RPE and depth of a reconstruct run on a TUM RGB-D sequence."""
    _sequence_command("tum", **kwargs)


@eval_group.command("7scenes")
@_sequence_options
@_model_options(required=False)
@_eval_common
def eval_7scenes_command(**kwargs) -> None:
    """ATE/RPE and depth of a reconstruct run on a 7-Scenes sequence."""
    _sequence_command("7scenes", **kwargs)


@eval_group.command("sequence")
@_sequence_options
@click.option("--layout", type=click.Choice(["tum", "7scenes", "kitti", "scannet"]), default=None,
              help="Ground-truth layout [default: detected].")
@_model_options(required=False)
@_eval_common
def eval_sequence_command(layout, **kwargs) -> None:
    """ATE/RPE and depth of a reconstruct run against any dataset folder with ground truth."""
    _sequence_command(layout, **kwargs)
