"""The evaluation tables of the README's protocols, re-runnable for any checkpoint (issue #6).

    nice -n 15 env OMP_NUM_THREADS=1 python benchmarks/eval_tables.py --weights default

Runs the `dro-sfm eval` commands end to end, each with `--baselines` (the model's 0-iteration prediction and
COLMAP on the same frames), and gathers their Markdown tables into benchmarks/results/eval_tables.md:

1. `eval kitti` on the KITTI tiny sample (../shared/data/kitti_tiny, its own split file kitti_tiny.txt),
   protocols dro_kitti and monodepth2_kitti, every variant (raw, flip post-processed, median-scaled, both);
2. `eval scannet` (3 views) on small scenes written by `dro-sfm synth --format scannet`, with a test-pair
   list in the BA-Net/DeepV2D format written here, protocols dro_scannet and deepv2d_scannet;
3. `dro-sfm reconstruct` + `eval 7scenes` on the ../shared 7-Scenes snippet, and `dro-sfm synth --format tum`
   + `reconstruct` + `eval tum` on a synthetic TUM sequence.

Every table is preceded by the exact commands and a legend that says, for each variant name, the depth caps,
crop, median-scaling rule, flip post-processing, ground truth and reference frames it follows; the header
gives the weights file's sha256 and the date. Results (JSON, Markdown, plots) go to
benchmarks/results/eval/<benchmark>/; generated data and run directories to a scratch folder (deleted unless
--keep-work). Nothing depends on a particular checkpoint: sizes and iterations come from the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dro_sfm.data.atomic import atomic_write_text
from dro_sfm.models.weights import resolve_weights

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DRO_SFM_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS = ("kitti", "scannet", "7scenes", "tum")
# Seeds far above the training draws (the scorecard reserves >= 1e9), so no scene here was seen in training.
SCANNET_SEED, TUM_SEED = 1_600_000_000, 1_600_000_100
SCANNET_EXTRA_OFFSET = 5  # the 3-view context adds the keyframe -5 frames (docs/evaluation.md)

GT_KINDS = {
    "scannet": "synthetic depth PNG, uint16 millimetres (dro-sfm synth: exact rendered depth, mm-quantised)",
    "7scenes": "7-Scenes Kinect depth PNG, uint16 millimetres, 0 = invalid (not registered to the colour image)",
    "tum": "synthetic depth PNG in the TUM layout, uint16 / 5000 (dro-sfm synth: exact rendered depth, quantised)",
}


# ----------------------------------------------------------------------------------------------- commands
@dataclass
class Step:
    """One command as run: its display form, wall time, exit code and the last lines of its output."""

    command: str
    seconds: float
    returncode: int
    log: Path
    tail: str = ""


@dataclass
class Section:
    """One benchmark: its commands, its results JSON (when produced) and the legend of its numbers."""

    key: str
    title: str
    steps: list[Step] = field(default_factory=list)
    results: Path | None = None
    setup: list[str] = field(default_factory=list)
    gt_kind: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(s.returncode == 0 for s in self.steps)


def cli_prefix() -> list[str]:
    """How to start the dro-sfm CLI of this interpreter's environment."""
    script = Path(sys.executable).with_name("dro-sfm")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from dro_sfm.cli import main; main()"]


def display(args: Sequence[str]) -> str:
    """The command as a person would type it: `dro-sfm ...` with the real paths."""
    return "dro-sfm " + " ".join(shlex.quote(a) for a in args)


def run_cli(args: Sequence[str], log_dir: Path, name: str) -> Step:
    """Run `dro-sfm ARGS`, output to log_dir/<name>.log; a failure is recorded, never raised."""
    log = log_dir / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {display(args)}", flush=True)
    t0 = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.run([*cli_prefix(), *args], stdout=fh, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - t0
    lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    step = Step(display(args), seconds, proc.returncode, log, "\n".join(lines[-15:]))
    print(f"  exit {proc.returncode} after {seconds:.0f} s", flush=True)
    return step


def eval_args(kind: str, out: Path, weights: str, colmap_threads: int, plots: bool) -> list[str]:
    """The options every eval command here shares."""
    args = ["eval", kind, "--weights", weights, "--out", str(out / "results.json"), "--baselines",
            "--colmap-threads", str(colmap_threads)]
    return args + ([] if plots else ["--no-plots"])


def fresh_dir(path: Path) -> Path:
    """An empty directory at path (this script's own output folder from an earlier run is replaced)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# ----------------------------------------------------------------------------------------------- benchmarks
@dataclass(frozen=True)
class Config:
    """What the benchmarks run on and how big they are."""

    weights: str
    out_dir: Path
    work: Path
    colmap_threads: int
    threads: int
    plots: bool
    scannet_scenes: int
    scannet_frames: int
    scannet_pairs: int
    scannet_motion_scale: float
    tum_frames: int
    tum_motion_scale: float
    sevenscenes_step: int


def shared_file_present(section: Section, path: Path) -> bool:
    """Whether a ../shared file a section needs exists; if not, the section records why it cannot run."""
    if path.is_file():
        return True
    section.error = f"{path} not found (set DRO_SFM_SHARED)"
    return False


def kitti_section(cfg: Config) -> Section:
    """`eval kitti` on the KITTI tiny sample with its own split file."""
    root = SHARED / "data" / "kitti_tiny"
    section = Section("kitti", "KITTI tiny sample (real images, projected LiDAR)")
    if not shared_file_present(section, root / "kitti_tiny.txt"):
        return section
    out = fresh_dir(cfg.out_dir / "kitti_tiny")
    section.setup = [
        f"Data: {root} (drive 2011_09_26_drive_0023_sync, frames 0-6; see its SOURCE.md). The split file "
        "kitti_tiny.txt lists frames 1-5 as image_02/image_03 path pairs; the evaluation reads the first path "
        "of each line (camera 2).",
        "Ground-truth poses for the pose table come from the OXTS packets (poses.txt of the sample is not "
        "metric and is not read).",
    ]
    args = eval_args("kitti", out, cfg.weights, cfg.colmap_threads, cfg.plots)
    args[2:2] = ["--data", str(root), "--split", str(root / "kitti_tiny.txt")]
    section.steps.append(run_cli(args, out, "eval"))
    section.results = out / "results.json"
    return section


def scannet_pairs(n_frames: int, per_scene: int) -> list[tuple[int, int]]:
    """(keyframe, partner) frame numbers: keyframes from 5 on (so keyframe − 5 exists), partner 7 ahead.

    7 frames is the median partner distance of the BA-Net list (docs/evaluation.md).
    """
    pairs, t = [], SCANNET_EXTRA_OFFSET
    while len(pairs) < per_scene and t + 7 < n_frames:
        pairs.append((t, t + 7))
        t += 5
    return pairs


def write_pair_list(path: Path, scenes: Sequence[str], pairs: Sequence[tuple[int, int]]) -> Path:
    """A test-pair list in DeepV2D's format: blocks of rgb1, rgb2, depth1, depth2 under a foreign prefix."""
    lines = []
    for scene in scenes:
        prefix = f"/scannet/{scene}"
        for a, b in pairs:
            lines += [f"{prefix}/rgb/frame-{a:06d}.color.jpg", f"{prefix}/rgb/frame-{b:06d}.color.jpg",
                      f"{prefix}/depth/frame-{a:06d}.depth.png", f"{prefix}/depth/frame-{b:06d}.depth.png"]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def scannet_section(cfg: Config) -> Section:
    """`dro-sfm synth --format scannet` scenes, a pair list, and `eval scannet --views 3`."""
    section = Section("scannet", "ScanNet layout, synthetic scenes (3 views)")
    out = fresh_dir(cfg.out_dir / "scannet_synth")
    data = cfg.work / "scannet"
    scenes = [f"scene{i:04d}_00" for i in range(cfg.scannet_scenes)]
    for i, scene in enumerate(scenes):
        section.steps.append(run_cli(
            ["synth", "--scene", "indoor", "--format", "scannet", "--frames", str(cfg.scannet_frames),
             "--seed", str(SCANNET_SEED + i), "--motion-scale", str(cfg.scannet_motion_scale),
             "--out", str(data / scene)], out, f"synth_{scene}"))
    pairs = scannet_pairs(cfg.scannet_frames, cfg.scannet_pairs)
    pair_file = write_pair_list(cfg.work / "scannet_test_pairs.txt", scenes, pairs)
    section.setup = [
        f"Data: {len(scenes)} synthetic indoor scenes of {cfg.scannet_frames} frames (240x320, seeds "
        f"{SCANNET_SEED}..{SCANNET_SEED + len(scenes) - 1}), motion scale {cfg.scannet_motion_scale:g} so that "
        "consecutive frames are about as far apart as ScanNet's 30 Hz frames.",
        f"Pair list written by this script ({pair_file.name}, DeepV2D format): per scene "
        + ", ".join(f"({a}, {b})" for a, b in pairs) + " — keyframe, partner 7 frames ahead.",
    ]
    section.gt_kind = GT_KINDS["scannet"]
    if section.ok:
        args = eval_args("scannet", out, cfg.weights, cfg.colmap_threads, cfg.plots)
        args[2:2] = ["--data", str(data), "--pairs", str(pair_file), "--views", "3"]
        section.steps.append(run_cli(args, out, "eval"))
        section.results = out / "results.json"
    return section


def reconstruct_args(source: Path, run_dir: Path, cfg: Config, extra: Sequence[str] = ()) -> list[str]:
    """A depth-and-poses reconstruct run (no fusion: the evaluation does not read the cloud)."""
    return ["reconstruct", str(source), "--out", str(run_dir), "--weights", cfg.weights, "--fusion", "none",
            "--threads", str(cfg.threads), "--quiet", "--overwrite", *extra]


def run_summary(run_dir: Path) -> str:
    """What a reconstruct run did, from its run.json: frames, size, references, solver, pose graph."""
    try:
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"run.json of {run_dir} not readable ({err})"
    inputs, options = record.get("inputs", {}), record.get("options", {})
    h, w = inputs.get("processing_size", ["?", "?"])
    return (f"Reconstruct run: {inputs.get('keyframes')} keyframes of {inputs.get('input_frames')} input frames "
            f"(step {options.get('step')}, min motion {options.get('min_motion')} px), processing {h}x{w}, "
            f"{options.get('refs')} reference views per window, solver {options.get('solver')}, pose graph "
            f"{'on' if options.get('pose_graph') else 'off'}, intrinsics from {inputs.get('intrinsics_source')}.")


def sevenscenes_section(cfg: Config) -> Section:
    """`reconstruct` on the ../shared 7-Scenes snippet, then `eval 7scenes`."""
    root = SHARED / "data" / "7scenes"
    section = Section("7scenes", "7-Scenes snippet (real images, Kinect depth): whole run")
    if not shared_file_present(section, root / "camera-intrinsics.txt"):
        return section
    out = fresh_dir(cfg.out_dir / "sevenscenes")
    run_dir = cfg.work / "run_7scenes"
    section.setup = [f"Data: {root} (50 frames 640x480, frame-000150..199; see its SOURCE.md); reconstruct "
                     f"uses every {cfg.sevenscenes_step}th frame."]
    section.gt_kind = GT_KINDS["7scenes"]
    section.steps.append(run_cli(reconstruct_args(root, run_dir, cfg, ["--step", str(cfg.sevenscenes_step)]),
                                 out, "reconstruct"))
    if section.ok:
        section.setup.append(run_summary(run_dir))
        args = eval_args("7scenes", out, cfg.weights, cfg.colmap_threads, cfg.plots)
        args[2:2] = ["--run", str(run_dir), "--data", str(root)]
        section.steps.append(run_cli(args, out, "eval"))
        section.results = out / "results.json"
    return section


def tum_section(cfg: Config) -> Section:
    """`synth --format tum`, `reconstruct`, then `eval tum`."""
    section = Section("tum", "TUM RGB-D layout, synthetic sequence: whole run")
    out = fresh_dir(cfg.out_dir / "tum_synth")
    data = cfg.work / "rgbd_dataset_dro_synthetic"
    run_dir = cfg.work / "run_tum"
    section.setup = [f"Data: one synthetic indoor sequence of {cfg.tum_frames} frames (240x320, seed {TUM_SEED}, "
                     f"motion scale {cfg.tum_motion_scale:g}) in the TUM layout."]
    section.gt_kind = GT_KINDS["tum"]
    section.steps.append(run_cli(["synth", "--scene", "indoor", "--format", "tum", "--frames", str(cfg.tum_frames),
                                  "--seed", str(TUM_SEED), "--motion-scale", str(cfg.tum_motion_scale),
                                  "--out", str(data)], out, "synth"))
    if section.ok:
        section.steps.append(run_cli(reconstruct_args(data, run_dir, cfg), out, "reconstruct"))
    if section.ok:
        section.setup.append(run_summary(run_dir))
        args = eval_args("tum", out, cfg.weights, cfg.colmap_threads, cfg.plots)
        args[2:2] = ["--run", str(run_dir), "--data", str(data)]
        section.steps.append(run_cli(args, out, "eval"))
        section.results = out / "results.json"
    return section


SECTIONS: dict[str, Callable[[Config], Section]] = {
    "kitti": kitti_section, "scannet": scannet_section, "7scenes": sevenscenes_section, "tum": tum_section,
}


# ----------------------------------------------------------------------------------------------- legend
def _fmt(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _offsets(values: Sequence[int]) -> str:
    return ", ".join(f"{v:+d}" for v in values)


def references_text(doc: dict[str, Any], method: str) -> str:
    """Which frames served as references for one method's numbers, read from the results JSON."""
    if doc["benchmark"] == "kitti":
        official = " (official DRO test context: next frame)" if doc["ref_offsets"] == [1] else ""
        return f"frame offsets {_offsets(doc['ref_offsets'])}{official}; missing neighbour: {doc['missing_ref']}"
    if doc["benchmark"] == "scannet":
        extra = ", ".join(f"keyframe {o:+d}·s" for o in doc["extra_ref_offsets"])
        return f"{doc['views']} views: partner" + (f", {extra}" if extra else "")
    if method == "run":
        return "the reconstruct run's own windows (see the run line above)"
    offsets = sorted({r - s["run_index"] for s in doc["per_sample"] if not s["skipped"]
                      for r in s.get("ref_run_indices") or []})
    return f"neighbouring run frames, offsets {_offsets(offsets)} (the first/last frame has one)"


def gt_text(doc: dict[str, Any], section: Section) -> str:
    """The kind of ground-truth depth the numbers are measured against."""
    if doc["benchmark"] == "kitti":
        return f"`{doc['gt']}`: {doc['gt_description']}"
    return section.gt_kind


def processing_text(description: dict[str, Any]) -> str:
    """Input size and iteration count of a model method, or where a run's depth comes from."""
    if "image_shape" in description:
        h, w = description["image_shape"]
        return f"input {h}x{w}, {description['iterations']} iterations"
    return "run depth maps"


def legend_lines(doc: dict[str, Any], section: Section) -> list[str]:
    """Ground truth, references and processing per method, then one row per variant: caps, crop, scaling, pp."""
    lines = [f"- Ground truth: {gt_text(doc, section)}."]
    lines += [f"- References of `{name}`: {references_text(doc, name)}; processing: {processing_text(m)}."
              for name, m in doc["methods"].items()]
    lines += ["", "| variant | valid GT (m) | crop | `_gt` scaling | flip post-processing |", "|---|---|---|---|---|"]
    variants: dict[str, dict[str, Any]] = {}
    for m in doc["methods"].values():
        variants.update(m["depth"])
    for name, v in variants.items():
        p = v["protocol"]
        scaling = p["scaling"].replace("_", " ") if v["median_scaled"] else "none (raw metric depth)"
        lines.append(f"| `{name}` | {p['min_depth']:g} < gt < {p['max_depth']:g} | {p['crop'] or 'none'} | "
                     f"{scaling} | {'yes' if v['post_processed'] else 'no'} |")
    return lines


def same_pixels_note(doc: dict[str, Any]) -> str | None:
    """A note when the protocols score exactly the same GT pixels on every image (their caps never bite)."""
    protocols = doc.get("protocols") or []
    method = next(iter(doc["methods"].values()), None)
    if method is None or len(protocols) < 2 or not all(p in method["depth"] for p in protocols):
        return None
    counts = [[r["n_valid"] for r in method["depth"][p]["per_frame"]] for p in protocols]
    if any(c != counts[0] for c in counts[1:]):
        return None
    names = " and ".join(f"`{p}`" for p in protocols)
    return (f"On this sample {names} score the same ground-truth pixels in every image (no valid depth lies between "
            "their lower caps), so their numbers can differ only through the clamp of the prediction to the range "
            "and the `_gt` scaling rule.")


def headline_rows(doc: dict[str, Any]) -> list[str]:
    """Per method: abs_rel and a1 of the raw and median-scaled variants of each protocol, and pose errors."""
    rows = []
    for method, m in doc["methods"].items():
        cells = []
        for variant, v in m["depth"].items():
            if v["post_processed"] == doc["post_processing"]:  # the post-processed pair when pp ran
                cells.append(f"`{variant}` {_fmt(v['mean']['abs_rel'])} / {_fmt(v['mean']['a1'])}")
        pose = m.get("pose") or {}
        pm = pose.get("mean") or {}
        pose_cell = (f"{_fmt(pm.get('rot_deg'), 3)}° / {_fmt(pm.get('tdir_deg'), 2)}° / {_fmt(pm.get('t_cm'), 2)} cm "
                     f"({pose.get('n_pairs', 0)} pairs)") if pm else "-"
        rows.append(f"| {method} | " + "<br>".join(cells) + f" | {pose_cell} |")
    colmap = doc.get("colmap")
    if colmap:
        pose = colmap.get("pose") or {}
        pm = pose.get("mean") or {}
        pose_cell = (f"{_fmt(pm.get('rot_deg'), 3)}° / {_fmt(pm.get('tdir_deg'), 2)}° / {_fmt(pm.get('t_cm'), 2)} cm "
                     f"({pose.get('n_pairs', 0)} pairs)") if pm else "no pose"
        rows.append(f"| colmap (all views registered on {colmap['n_all_views_registered']}/{colmap['n_samples']}) | "
                    f"- | {pose_cell} |")
    return rows


def trajectory_rows(doc: dict[str, Any]) -> list[str]:
    """ATE (Sim(3), SE(3)) and RPE of the run and of COLMAP, from the evo statistics in the JSON."""
    rows = []
    for name, traj in (doc.get("trajectory") or {}).items():
        metrics = traj.get("metrics") or {}
        cells = [f"{k}: {_fmt(v['stats']['rmse'])} {v['unit']}" for k, v in metrics.items()]
        rows.append(f"| {name} | {traj.get('n_poses', '-')} | " + "<br>".join(cells or [traj.get("problem") or "-"])
                    + " |")
    colmap = doc.get("colmap_sequence")
    if colmap:
        rows.append(f"| colmap registration | {colmap['n_registered']}/{colmap['n_images']} frames | "
                    f"unregistered: {', '.join(colmap['unregistered']) or 'none'} |")
    return rows


def demote_headings(markdown: str, levels: int = 3) -> str:
    """The command's own report with its headings pushed down so it nests under this document's sections."""
    return "\n".join("#" * levels + line if line.startswith("#") else line for line in markdown.splitlines())


# ----------------------------------------------------------------------------------------------- document
def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it, else as is."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def section_markdown(section: Section) -> list[str]:
    """The benchmark's commands, legend, headline numbers and the command's full report."""
    lines = [f"## {section.title}", ""]
    lines += [f"- {s}" for s in section.setup]
    lines += ["", "Commands (in this order):", "", "```"]
    lines += [s.command for s in section.steps]
    lines += ["```", ""]
    lines += [f"- `{s.command.split(' --')[0]}`: exit {s.returncode}, {s.seconds:.0f} s" for s in section.steps]
    lines.append("")
    if section.error:
        return lines + [f"**Not run: {section.error}**", ""]
    failed = [s for s in section.steps if s.returncode != 0]
    if failed:
        lines += [f"**FAILED: `{failed[0].command}` exited with {failed[0].returncode}.** Last output "
                  f"(full log {failed[0].log}):", "", "```", failed[0].tail, "```", ""]
        return lines
    if section.results is None or not section.results.is_file():
        return lines + ["**The evaluation wrote no results file.**", ""]
    doc = json.loads(section.results.read_text(encoding="utf-8"))
    counts = doc["counts"]
    lines += [f"Samples: {counts['listed']} listed, {counts['evaluated']} evaluated, {counts['skipped']} skipped. "
              f"Results: `{shown(section.results)}` (+ `.md`, `_plots/`).", ""]
    lines += ["### What each number follows", ""] + legend_lines(doc, section) + [""]
    lines += ["Every depth metric is the mean over images of per-image values; prediction resized to the GT size "
              "(bilinear, align_corners), clamped to the valid range after scaling. Pose errors: BA-Net/DeepV2D "
              "(rotation angle, translation-direction angle, 100·‖t_gt − a·t‖ cm with least-squares scale a) of "
              "the first reference" + (" (whole runs: each frame to the next matched frame)."
                                       if doc["benchmark"] == "sequence" else "."), ""]
    note = same_pixels_note(doc)
    if note:
        lines += [note, ""]
    lines += ["### Headline", "", "| method | abs_rel / a1 per variant | pose: rot / t dir / t |", "|---|---|---|"]
    lines += headline_rows(doc) + [""]
    if doc.get("trajectory"):
        lines += ["| trajectory | poses | rmse (evo) |", "|---|---|---|"] + trajectory_rows(doc) + [""]
    lines += ["### Full report of the command", ""]
    lines += [demote_headings(section.results.with_suffix(".md").read_text(encoding="utf-8")), ""]
    return lines


def document(sections: Sequence[Section], weights_path: Path, weights_arg: str, started: datetime,
             seconds: float) -> str:
    """The whole eval_tables.md."""
    digest = sha256_of(weights_path)
    lines = [
        "# Evaluation tables (`dro-sfm eval`, default model and baselines)", "",
        f"- Generated by `python benchmarks/eval_tables.py --weights {weights_arg}` on "
        f"{started.strftime('%Y-%m-%d %H:%M UTC')}, {seconds / 60:.1f} min wall time on {os.cpu_count()} CPUs "
        f"(niceness {os.nice(0)}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}).",
        f"- Weights: `{shown(weights_path)}`, sha256 `{digest[:16]}` (the full hash is in "
        "`eval/summary.json`).",
        "- Methods: `dro` = the model with its own iteration count; `dro_0iter` = the same weights with 0 "
        "iterations (initial depth and pose heads); `colmap` = pycolmap SIFT + exhaustive matching + incremental "
        "mapping with fixed intrinsics on the same views; `run` = the `dro-sfm reconstruct` run's depth and poses.",
        "- Variant suffixes: `''` raw metric depth, `_pp` flip post-processing, `_gt` per-image median scaling, "
        "`_pp_gt` both. The legend under each benchmark spells out every variant's caps, crop, scaling rule, "
        "ground truth and reference frames.",
        "- These are small samples (a handful of images each): they show that the protocols run and what they "
        "report, not the model's accuracy on the full benchmarks.",
        "",
        "| benchmark | status | wall time |", "|---|---|---|",
    ]
    for s in sections:
        status = "ok" if s.ok else ("not run" if s.error else "FAILED")
        lines.append(f"| {s.title} | {status} | {sum(st.seconds for st in s.steps):.0f} s |")
    lines.append("")
    for s in sections:
        lines += section_markdown(s)
    return "\n".join(lines).rstrip() + "\n"


def summary_json(sections: Sequence[Section], weights_path: Path, started: datetime, seconds: float) -> dict:
    """Machine-readable record of the run: weights, date, commands, exit codes, result files."""
    return {
        "weights": str(weights_path), "weights_sha256": sha256_of(weights_path),
        "started": started.isoformat(timespec="seconds"), "seconds": seconds,
        "benchmarks": [{"key": s.key, "title": s.title, "ok": s.ok, "error": s.error,
                        "results": shown(s.results) if s.results and s.results.is_file() else None,
                        "steps": [{"command": st.command, "seconds": st.seconds, "returncode": st.returncode}
                                  for st in s.steps]} for s in sections],
    }


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="default", help="weights name or checkpoint file [default]")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    ap.add_argument("--out-md", type=Path, default=RESULTS / "eval_tables.md")
    ap.add_argument("--out-dir", type=Path, default=RESULTS / "eval", help="per-benchmark JSON/Markdown/plots")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for data and runs [a temp dir]")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    ap.add_argument("--colmap-threads", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of reconstruct")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--scannet-scenes", type=int, default=3)
    ap.add_argument("--scannet-frames", type=int, default=20)
    ap.add_argument("--scannet-pairs", type=int, default=2, help="test pairs per scene")
    ap.add_argument("--scannet-motion-scale", type=float, default=0.2)
    ap.add_argument("--tum-frames", type=int, default=12)
    ap.add_argument("--tum-motion-scale", type=float, default=0.5)
    ap.add_argument("--sevenscenes-step", type=int, default=4)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"--only: unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    weights_path = resolve_weights(args.weights).resolve()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="dro_eval_tables_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = Config(str(weights_path), args.out_dir, work, args.colmap_threads, args.threads, not args.no_plots,
                 args.scannet_scenes, args.scannet_frames, args.scannet_pairs, args.scannet_motion_scale,
                 args.tum_frames, args.tum_motion_scale, args.sevenscenes_step)
    sections = []
    try:
        for key in only:
            sections.append(SECTIONS[key](cfg))
    finally:
        if not args.keep_work and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    atomic_write_text(args.out_md, document(sections, weights_path, args.weights, started, seconds))
    atomic_write_text(args.out_dir / "summary.json",
                      json.dumps(summary_json(sections, weights_path, started, seconds), indent=2) + "\n")
    print(f"wrote {args.out_md} ({seconds / 60:.1f} min)")
    return 0 if all(s.ok for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
