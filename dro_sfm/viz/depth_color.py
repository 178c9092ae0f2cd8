"""Colourising depth and confidence maps for people to look at (never for computation)."""

from __future__ import annotations

import numpy as np


def colorize_depth(depth: np.ndarray, valid: np.ndarray | None = None, cmap: str = "magma",
                   percentiles: tuple[float, float] = (2.0, 98.0),
                   inv_range: tuple[float, float] | None = None) -> np.ndarray:
    """Depth [H,W] metres to RGB [H,W,3] uint8: a perceptual colormap on inverse depth, near = bright.

    Inverse depth spreads the colour range over near structure, where depth networks are accurate, instead
    of over the far background. The range is the ``percentiles`` of the valid inverse depths (robust to a
    few outliers) unless ``inv_range`` (1/m) fixes it, e.g. to make a sequence comparable. Invalid pixels
    (depth <= 0, non-finite, or ``valid`` False) are black.
    """
    from matplotlib import colormaps

    depth = np.asarray(depth, dtype=np.float32)
    ok = np.isfinite(depth) & (depth > 0)
    if valid is not None:
        ok &= valid
    out = np.zeros(depth.shape + (3,), np.uint8)
    if not ok.any():
        return out
    inv = np.zeros_like(depth)
    inv[ok] = 1.0 / depth[ok]
    lo, hi = inv_range if inv_range is not None else np.percentile(inv[ok], percentiles)
    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-3, 1e-6)
    t = np.clip((inv - lo) / (hi - lo), 0.0, 1.0)
    rgb = colormaps[cmap](t)[..., :3]
    out[ok] = np.round(rgb[ok] * 255.0).astype(np.uint8)
    return out


def confidence_to_gray(confidence: np.ndarray) -> np.ndarray:
    """Confidence [H,W] in [0,1] to a grey image [H,W] uint8 (0 -> black, 1 -> white)."""
    return np.round(np.clip(np.nan_to_num(confidence, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
