"""Evaluation reports: JSON-ready dictionaries, Markdown tables in the official column order, and plots.

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch), so they work headless
and do not disturb other users of matplotlib in the same process. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from dro_sfm.data.atomic import atomic_path, atomic_write_text
from dro_sfm.errors import InputError
from dro_sfm.eval.depth_metrics import METRIC_NAMES, DepthProtocol, DepthVariantSummary
from dro_sfm.eval.pose_metrics import BANetPoseErrors
from dro_sfm.eval.trajectory import STAT_NAMES, TrajectoryErrors

#: Official column order of the depth table; the last two are optional extras.
DEPTH_TABLE_COLUMNS: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
DEPTH_EXTRA_COLUMNS: tuple[str, ...] = ("silog", "l1_inv")
Plane = Literal["auto", "xy", "xz", "yz"]


def to_jsonable(obj: object) -> object:
    """Convert numpy values, dataclasses and paths to JSON types; NaN and ±inf become None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    return obj


def write_json(path: str | os.PathLike, data: object) -> None:
    """Write ``data`` as indented, strictly valid JSON (NaN written as null), atomically."""
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False)
    atomic_write_text(path, text + "\n")


def write_markdown(path: str | os.PathLike, text: str) -> None:
    """Write a Markdown document atomically."""
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")


# --------------------------------------------------------------------------- depth


def protocol_to_dict(protocol: DepthProtocol) -> dict[str, object]:
    """JSON-ready description of a protocol."""
    return dataclasses.asdict(protocol)


def depth_summary_to_dict(summary: DepthVariantSummary, per_frame: bool = True) -> dict[str, object]:
    """JSON-ready record of one variant: protocol, flags, image count, mean and optional per-frame rows."""
    out: dict[str, object] = {
        "variant": summary.variant,
        "protocol": protocol_to_dict(summary.protocol),
        "post_processed": summary.post_processed,
        "median_scaled": summary.median_scaled,
        "n_images": summary.n_images,
        "n_images_without_gt": len(summary.per_image) - summary.n_images,
        "mean": to_jsonable(summary.mean),
    }
    if per_frame:
        out["per_frame"] = [r.to_dict() for r in summary.per_image]
    return out


def depth_report_dict(summaries: Sequence[DepthVariantSummary], per_frame: bool = True) -> dict[str, object]:
    """JSON-ready report of several variants, keyed by variant name in the given order."""
    return {"depth": {s.variant: depth_summary_to_dict(s, per_frame) for s in summaries}}


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def _protocol_caption(protocol: DepthProtocol) -> str:
    crop = protocol.crop if protocol.crop is not None else "none"
    return (
        f"`{protocol.name}`: valid GT in ({protocol.min_depth:g}, {protocol.max_depth:g}) m, crop {crop}, "
        f"`_gt` variants scaled by {protocol.scaling.replace('_', ' ')}"
    )


def depth_markdown_table(
    summaries: Sequence[DepthVariantSummary], extra_columns: bool = False, digits: int = 4
) -> str:
    """Markdown table, one row per variant, in the official column order.

    Columns: variant | images | abs_rel | sq_rel | rmse | rmse_log | a1 | a2 | a3 (| silog | l1_inv); one
    line per protocol above the table says what its name means.
    """
    if not summaries:
        raise InputError("no depth results to tabulate")
    columns = DEPTH_TABLE_COLUMNS + (DEPTH_EXTRA_COLUMNS if extra_columns else ())
    protocols = list(dict.fromkeys(s.protocol for s in summaries))
    lines = [f"Protocol {_protocol_caption(p)}." for p in protocols]
    lines.append("")
    lines.append("| variant | images | " + " | ".join(columns) + " |")
    lines.append("|---|---:|" + "---:|" * len(columns))
    for s in summaries:
        cells = [_fmt(s.mean[c], digits) for c in columns]
        lines.append(f"| {s.variant} | {s.n_images} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- poses


def pose_errors_to_dict(
    errors: BANetPoseErrors, pair_ids: Sequence[str] | None = None, per_pair: bool = True
) -> dict[str, object]:
    """JSON-ready BA-Net pose errors: mean, count of pairs with undefined direction, per-pair rows."""
    n = errors.rot_deg.shape[0]
    if pair_ids is not None and len(pair_ids) != n:
        raise InputError(f"{len(pair_ids)} pair ids for {n} pose errors")
    out: dict[str, object] = {
        "protocol": "banet",
        "n_pairs": n,
        "n_undefined_direction": int(np.sum(~np.isfinite(errors.tdir_deg))),
        "mean": to_jsonable(errors.mean()),
    }
    if per_pair:
        ids = list(pair_ids) if pair_ids is not None else [str(i) for i in range(n)]
        out["per_pair"] = [
            {
                "pair_id": ids[i],
                "rot_deg": to_jsonable(float(errors.rot_deg[i])),
                "tdir_deg": to_jsonable(float(errors.tdir_deg[i])),
                "t_cm": to_jsonable(float(errors.t_cm[i])),
            }
            for i in range(n)
        ]
    return out


def pose_markdown_table(rows: Mapping[str, BANetPoseErrors], digits: int = 3) -> str:
    """Markdown table of mean BA-Net pose errors, one row per named run: rot (deg) | tdir (deg) | tcm."""
    lines = ["| run | pairs | rot (deg) | t dir (deg) | t (cm) |", "|---|---:|---:|---:|---:|"]
    for name, e in rows.items():
        m = e.mean()
        lines.append(
            f"| {name} | {e.rot_deg.shape[0]} | {_fmt(m['rot_deg'], digits)} | "
            f"{_fmt(m['tdir_deg'], digits)} | {_fmt(m['t_cm'], digits)} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- trajectories


def trajectory_errors_to_dict(result: TrajectoryErrors, per_frame: bool = True) -> dict[str, object]:
    """JSON-ready APE/RPE record: metric, relation, unit, alignment, evo statistics, per-frame errors."""
    out: dict[str, object] = {
        "name": result.name,
        "metric": result.metric,
        "pose_relation": result.pose_relation,
        "unit": result.unit,
        "delta_frames": result.delta,
        "alignment": result.alignment.to_dict(),
        "n": int(result.errors.shape[0]),
        "stats": to_jsonable(result.stats),
    }
    if per_frame:
        rows = []
        for i, e in zip(result.index.tolist(), result.errors.tolist(), strict=True):
            row: dict[str, object] = {"index": i, "error": to_jsonable(e)}
            if result.timestamps is not None:
                row["timestamp"] = float(result.timestamps[i])
            rows.append(row)
        out["per_frame"] = rows
    return out


def trajectory_markdown_table(results: Sequence[TrajectoryErrors], digits: int = 4) -> str:
    """Markdown table of evo statistics, one row per APE/RPE result."""
    lines = [
        "| metric | unit | align | n | " + " | ".join(STAT_NAMES[:-1]) + " |",
        "|---|---|---|---:|" + "---:|" * (len(STAT_NAMES) - 1),
    ]
    for r in results:
        cells = [_fmt(r.stats[s], digits) for s in STAT_NAMES[:-1]]
        lines.append(
            f"| {r.name} | {r.unit or '-'} | {r.alignment.mode} | {r.errors.shape[0]} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _save_figure(fig: Figure, path: str | os.PathLike) -> None:
    target = Path(path)
    fmt = target.suffix.lstrip(".").lower() or "png"
    FigureCanvasAgg(fig)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight")


def _finite_errors(errors: np.ndarray | Sequence[float], what: str) -> np.ndarray:
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if e.size == 0:
        raise InputError(f"no {what} to plot")
    return e


def plot_error_histogram(
    errors: np.ndarray | Sequence[float], path: str | os.PathLike, title: str, xlabel: str, bins: int = 50
) -> None:
    """Histogram of errors [N] (NaN left out) with mean and median marked, saved to ``path``."""
    e = _finite_errors(errors, "errors")
    e = e[np.isfinite(e)]
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    if e.size:
        ax.hist(e, bins=bins, color="tab:blue", alpha=0.8)
        ax.axvline(float(np.mean(e)), color="tab:red", linestyle="--", label=f"mean {np.mean(e):.4g}")
        ax.axvline(float(np.median(e)), color="tab:green", linestyle=":", label=f"median {np.median(e):.4g}")
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    _save_figure(fig, path)


def plot_errors_along_sequence(
    errors: np.ndarray | Sequence[float],
    path: str | os.PathLike,
    title: str,
    ylabel: str,
    x: np.ndarray | Sequence[float] | None = None,
    xlabel: str = "frame",
) -> None:
    """Per-frame errors [N] against frame index (or ``x`` [N], e.g. timestamps) with the mean as a line."""
    e = _finite_errors(errors, "errors")
    xs = np.arange(e.size) if x is None else np.asarray(x, dtype=np.float64).reshape(-1)
    if xs.shape != e.shape:
        raise InputError(f"{xs.size} x values for {e.size} errors")
    fig = Figure(figsize=(8.0, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(xs, e, color="tab:blue", linewidth=1.0)
    finite = np.isfinite(e)
    if finite.any():
        ax.axhline(
            float(np.mean(e[finite])), color="tab:red", linestyle="--", label=f"mean {np.mean(e[finite]):.4g}"
        )
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _save_figure(fig, path)


_AXES = {"x": 0, "y": 1, "z": 2}


def top_view_axes(positions: np.ndarray, plane: Plane = "auto") -> tuple[int, int]:
    """Axis indices of the plotting plane; "auto" picks the two axes of largest extent of positions [N,3]."""
    if plane == "auto":
        extent = np.ptp(positions, axis=0)
        a, b = sorted(np.argsort(extent)[-2:].tolist())
        return int(a), int(b)
    if plane not in ("xy", "xz", "yz"):
        raise InputError(f"unknown plot plane {plane!r}; use auto, xy, xz or yz")
    return _AXES[plane[0]], _AXES[plane[1]]


def plot_trajectory_top_view(
    T_ref: np.ndarray,
    T_est_aligned: np.ndarray,
    path: str | os.PathLike,
    title: str,
    plane: Plane = "auto",
    errors: np.ndarray | None = None,
    error_label: str = "error",
) -> None:
    """Top view of reference [N,4,4] vs aligned estimate [M,4,4]; estimate coloured by errors [M] if given."""
    p_ref = np.asarray(T_ref, dtype=np.float64)[:, :3, 3]
    p_est = np.asarray(T_est_aligned, dtype=np.float64)[:, :3, 3]
    if p_ref.shape[0] == 0 or p_est.shape[0] == 0:
        raise InputError("cannot plot an empty trajectory")
    a, b = top_view_axes(p_ref, plane)
    names = "xyz"
    fig = Figure(figsize=(6.5, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(p_ref[:, a], p_ref[:, b], color="black", linestyle="--", linewidth=1.0, label="ground truth")
    if errors is not None and np.asarray(errors).shape[0] == p_est.shape[0] and p_est.shape[0] > 1:
        err = np.asarray(errors, dtype=np.float64)
        segments = np.stack([p_est[:-1][:, [a, b]], p_est[1:][:, [a, b]]], axis=1)
        lc = LineCollection(segments, cmap="jet", linewidths=1.5, label="estimate (aligned)")
        lc.set_array(0.5 * (err[:-1] + err[1:]))
        ax.add_collection(lc)
        fig.colorbar(lc, ax=ax, label=error_label)
    else:
        ax.plot(p_est[:, a], p_est[:, b], color="tab:blue", linewidth=1.2, label="estimate (aligned)")
    ax.plot(p_ref[0, a], p_ref[0, b], "ko", markersize=5, label="start")
    ax.set_xlabel(f"{names[a]} (m)")
    ax.set_ylabel(f"{names[b]} (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    ax.set_title(title)
    ax.legend(loc="best")
    ax.grid(True, alpha=0.3)
    _save_figure(fig, path)


def save_trajectory_report(
    result: TrajectoryErrors, out_dir: str | os.PathLike, stem: str | None = None, plane: Plane = "auto"
) -> dict[str, Path]:
    """Write <stem>.json, <stem>_hist.png, <stem>_seq.png and (APE only) <stem>_traj.png into out_dir."""
    out = Path(out_dir)
    stem = stem or result.name
    label = f"{result.metric.upper()} {result.pose_relation}" + (f" ({result.unit})" if result.unit else "")
    title = f"{result.name}: rmse {result.stats['rmse']:.4g} {result.unit}".rstrip()
    paths = {"json": out / f"{stem}.json", "hist": out / f"{stem}_hist.png", "seq": out / f"{stem}_seq.png"}
    write_json(paths["json"], trajectory_errors_to_dict(result))
    plot_error_histogram(result.errors, paths["hist"], title, label)
    plot_errors_along_sequence(result.errors, paths["seq"], title, label, x=result.index)
    if result.metric == "ape":
        paths["traj"] = out / f"{stem}_traj.png"
        plot_trajectory_top_view(
            result.T_ref,
            result.T_est_aligned,
            paths["traj"],
            title,
            plane,
            errors=result.errors,
            error_label=label,
        )
    return paths


def save_depth_report(
    summaries: Sequence[DepthVariantSummary],
    out_dir: str | os.PathLike,
    stem: str = "depth",
    metric: str = "abs_rel",
) -> dict[str, Path]:
    """Write <stem>.json, <stem>.md and per-variant <stem>_<variant>_<metric>_{hist,seq}.png into out_dir."""
    if metric not in METRIC_NAMES:
        raise InputError(f"unknown depth metric {metric!r}; choose one of {', '.join(METRIC_NAMES)}")
    out = Path(out_dir)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    write_json(paths["json"], depth_report_dict(summaries))
    write_markdown(paths["md"], depth_markdown_table(summaries, extra_columns=True))
    for s in summaries:
        values = np.array([r.metrics[metric] for r in s.per_image], dtype=np.float64)
        title = f"{s.variant}: mean {metric} {s.mean[metric]:.4g}"
        paths[f"{s.variant}_hist"] = out / f"{stem}_{s.variant}_{metric}_hist.png"
        paths[f"{s.variant}_seq"] = out / f"{stem}_{s.variant}_{metric}_seq.png"
        plot_error_histogram(values, paths[f"{s.variant}_hist"], title, metric)
        plot_errors_along_sequence(values, paths[f"{s.variant}_seq"], title, metric)
    return paths
