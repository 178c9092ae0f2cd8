"""``summary.png`` of a run: trajectory seen from above, sample frames with depth, optimizer cost curve."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dro_sfm.data.atomic import atomic_write_bytes


@dataclass
class SampleFrame:
    """One column of the summary: a title, the RGB image [H,W,3] uint8 and the colourised depth [H,W,3]."""

    title: str
    image: np.ndarray
    depth_vis: np.ndarray


def estimate_up(poses: np.ndarray) -> np.ndarray:
    """World 'up' [3] from camera-to-world poses [N,4,4]: cameras are held upright, image y points down."""
    up = -poses[:, :3, 1].mean(axis=0)
    n = np.linalg.norm(up)
    return up / n if n > 1e-6 else np.array([0.0, -1.0, 0.0])


def top_view_basis(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormal (right [3], forward [3], up [3]) for a top view; forward = mean viewing direction."""
    up = estimate_up(poses)
    fwd = poses[:, :3, 2].mean(axis=0)
    fwd = fwd - fwd.dot(up) * up
    if np.linalg.norm(fwd) < 1e-6:  # looking straight down: any horizontal direction will do
        fwd = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.cross(up, [0.0, 1.0, 0.0])
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    return right, fwd, up


def _cost_series(cost_curve: object) -> dict[str, np.ndarray]:
    """Normalise a cost curve argument to {label: array [iters] or [frames, iters]}."""
    if isinstance(cost_curve, Mapping):
        return {str(k): np.asarray(v, dtype=np.float64) for k, v in cost_curve.items()}
    return {"cost": np.asarray(cost_curve, dtype=np.float64)}


def _plot_cost(ax, cost_curve: object) -> None:
    positive = True
    for label, arr in _cost_series(cost_curve).items():
        if arr.ndim == 1:
            it = np.arange(arr.size)
            ax.plot(it, arr, marker="o", ms=3, label=label)
            positive &= bool(np.all(arr[np.isfinite(arr)] > 0))
        elif arr.ndim == 2 and arr.size:
            it = np.arange(arr.shape[1])
            med = np.nanmedian(arr, axis=0)
            lo, hi = np.nanpercentile(arr, [25, 75], axis=0)
            line = ax.plot(it, med, marker="o", ms=3, label=f"{label} (median of {arr.shape[0]})")[0]
            ax.fill_between(it, lo, hi, color=line.get_color(), alpha=0.25, lw=0)
            positive &= bool(np.all(arr[np.isfinite(arr)] > 0))
    if positive:
        from matplotlib.ticker import FormatStrFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("iteration")
    ax.set_ylabel("cost")
    ax.set_title("optimizer cost per iteration")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _plot_trajectory(ax, poses: np.ndarray) -> None:
    from matplotlib import colormaps

    right, fwd, _ = top_view_basis(poses)
    centres = poses[:, :3, 3]
    x, y = centres @ right, centres @ fwd
    ax.plot(x, y, "-", color="0.6", lw=1, zorder=1)
    ax.scatter(x, y, c=np.arange(len(x)), cmap="viridis", s=12, zorder=2)
    # Heading arrows for ~12 cameras: where each one looks, projected on the ground plane.
    step = max(1, len(x) // 12)
    span = max(np.ptp(x), np.ptp(y), 1e-3)
    d = poses[::step, :3, 2]
    ax.quiver(x[::step], y[::step], d @ right, d @ fwd, color=colormaps["viridis"](np.linspace(0, 1, d.shape[0])),
              angles="xy", scale_units="xy", scale=1.0 / (0.08 * span), width=0.006, zorder=3)
    ax.plot(x[0], y[0], "o", color="tab:green", ms=8, label="first frame", zorder=4)
    ax.plot(x[-1], y[-1], "s", color="tab:red", ms=7, label="last frame", zorder=4)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("right (m)")
    ax.set_ylabel("forward (m)")
    length = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum()) if len(x) > 1 else 0.0
    ax.set_title(f"trajectory, top view ({len(x)} frames, {length:.2f} m)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def render_summary(poses: np.ndarray, samples: Sequence[SampleFrame], cost_curve: object | None = None,
                   title: str = "") -> bytes:
    """PNG bytes of the summary figure for camera-to-world poses [N,4,4] and a few sample frames."""
    from matplotlib.figure import Figure

    n_cols = 1 + max(1, len(samples))
    fig = Figure(figsize=(3.2 * n_cols + 1.5, 7.0), dpi=100, layout="constrained")
    grid = fig.add_gridspec(2, n_cols, width_ratios=[1.6] + [1.0] * (n_cols - 1))
    if cost_curve is not None:
        _plot_trajectory(fig.add_subplot(grid[0, 0]), poses)
        _plot_cost(fig.add_subplot(grid[1, 0]), cost_curve)
    else:
        _plot_trajectory(fig.add_subplot(grid[:, 0]), poses)
    for col, sample in enumerate(samples, start=1):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(sample.image)
        ax.set_title(sample.title, fontsize=9)
        ax.axis("off")
        ax = fig.add_subplot(grid[1, col])
        ax.imshow(sample.depth_vis)
        ax.set_title("depth (inverse, bright = near)", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_summary(path: str | os.PathLike, poses: np.ndarray, samples: Sequence[SampleFrame],
                  cost_curve: object | None = None, title: str = "") -> None:
    """Write the summary figure (see ``render_summary``) to ``path`` atomically."""
    atomic_write_bytes(path, render_summary(poses, samples, cost_curve, title))


def sample_indices(n: int, k: int = 4) -> list[int]:
    """Up to ``k`` evenly spaced indices in ``range(n)``, including the first and last."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})
