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
def train_command(config: str, resume: bool, steps: int | None, out_dir: str | None, data_root: str | None,
                  assignments: tuple[str, ...], quiet: bool) -> None:
    """Train DRO from the YAML file CONFIG (see configs/); run it under torchrun for several processes."""
    from dro_sfm.train.launch import prepare_config, run_training

    cfg = prepare_config(config, out_dir=out_dir, data_root=data_root, overrides=assignments)
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
    from dro_sfm.models.checkpoint import load_official_checkpoint, parameter_counts
    from dro_sfm.models.weights import resolve_weights

    path = resolve_weights(checkpoint, download=False)
    model, info = load_official_checkpoint(
        path, version=net_version, min_depth=min_depth, max_depth=max_depth
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
    counts = parameter_counts(model)
    click.echo("parameters:")
    for module, count in [*counts.items(), ("total", sum(counts.values()))]:
        click.echo(f"  {module:<20}{count:>12,}")
