"""Sensor imperfections: photometric changes of the image and invalid-depth holes.

Photometric nuisances never touch depth or pose; depth nuisances only set pixels to 0 (invalid) and
never change a valid value. Order follows a camera pipeline: lens blur, vignetting, exposure, sensor
noise, then the tone curve.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dro_sfm.data.synthetic.config import NuisanceConfig


def apply_nuisances(
    image: np.ndarray, depth: np.ndarray, cfg: NuisanceConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Image [H,W,3] float in [0,1] and depth [H,W] -> perturbed copies (image still float, unclipped)."""
    return photometric(image, cfg, rng), depth_holes(depth, cfg, rng)


def photometric(image: np.ndarray, cfg: NuisanceConfig, rng: np.random.Generator) -> np.ndarray:
    """Blur, vignetting, exposure, noise and tone curve on an image [H,W,3] in [0,1]."""
    out = image.astype(np.float32, copy=True)
    if cfg.blur_sigma_px > 0:
        sigma = rng.uniform(0.0, cfg.blur_sigma_px)
        if sigma > 0.05:
            out = ndimage.gaussian_filter(out, sigma=(sigma, sigma, 0), mode="nearest")
    if cfg.vignetting > 0:
        h, w = out.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (((w - 1) / 2) ** 2 + ((h - 1) / 2) ** 2)
        out *= (1.0 - cfg.vignetting * r2**2)[..., None]  # cos^4-like fall-off, exactly 1 - v at the corners
    if cfg.exposure_range is not None:
        out *= rng.uniform(*cfg.exposure_range)
    if cfg.noise_sigma > 0:
        out += rng.normal(0.0, cfg.noise_sigma, size=out.shape).astype(np.float32)
    if cfg.gamma_range is not None:
        out = np.clip(out, 0.0, 1.0) ** rng.uniform(*cfg.gamma_range)
    return out


def depth_holes(depth: np.ndarray, cfg: NuisanceConfig, rng: np.random.Generator) -> np.ndarray:
    """Depth [H,W] with random elliptic holes and drop-outs next to depth discontinuities set to 0."""
    out = depth.copy()
    h, w = out.shape
    if cfg.depth_hole_blobs > 0:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        for _ in range(cfg.depth_hole_blobs):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(*cfg.depth_hole_radius_px, size=2)
            angle = rng.uniform(0, np.pi)
            c, s = np.cos(angle), np.sin(angle)
            du, dv = xx - cx, yy - cy
            a, b = c * du + s * dv, -s * du + c * dv
            out[(a / rx) ** 2 + (b / ry) ** 2 <= 1.0] = 0.0
    if cfg.depth_edge_dropout > 0:
        edges = depth_edges(depth, cfg.depth_edge_threshold)
        edges = ndimage.binary_dilation(edges, iterations=1)
        out[edges & (rng.uniform(size=edges.shape) < cfg.depth_edge_dropout)] = 0.0
    return out


def depth_edges(depth: np.ndarray, rel_threshold: float) -> np.ndarray:
    """Pixels [H,W] bool whose depth differs from a 4-neighbour by more than ``rel_threshold`` (relative)."""
    edges = np.zeros(depth.shape, bool)
    for axis in (0, 1):
        a = np.take(depth, np.arange(depth.shape[axis] - 1), axis=axis)
        b = np.take(depth, np.arange(1, depth.shape[axis]), axis=axis)
        jump = np.abs(a - b) > rel_threshold * np.maximum(np.minimum(a, b), 1e-6)
        jump |= (a > 0) != (b > 0)
        sl_a = [slice(None)] * 2
        sl_b = [slice(None)] * 2
        sl_a[axis] = slice(0, -1)
        sl_b[axis] = slice(1, None)
        edges[tuple(sl_a)] |= jump
        edges[tuple(sl_b)] |= jump
    return edges
