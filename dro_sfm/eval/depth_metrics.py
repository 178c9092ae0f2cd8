"""Depth metrics exactly as the official DRO evaluation computes them (spec §16), with named protocols.

Pipeline per image: resize the prediction to the ground-truth size (bilinear, ``align_corners=True``),
clamp it at >= 1e-6, keep pixels with ``min_depth < gt < max_depth`` inside the crop, optionally scale
the prediction by a ground-truth median factor, clamp it to ``[min_depth, max_depth]`` and compute the
metrics; dataset numbers are the mean of the per-image numbers.

The official code reports four variants per run, named by a suffix: ``''`` (raw), ``'_pp'`` (flip
post-processing), ``'_gt'`` (median scaling) and ``'_pp_gt'`` (both). Every result here carries the
variant name ``<protocol name><suffix>`` so that a table can never mix up protocols.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from dro_sfm.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

CropName = Literal["garg", "eigen_nyu"]
ScalingMode = Literal["median_of_ratios", "ratio_of_medians"]

#: Metric names in the official column order; ``silog`` and ``l1_inv`` are DRO's two extra columns.
METRIC_NAMES: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3", "silog", "l1_inv")
#: The official variant suffixes, in the order the official code reports them.
VARIANT_SUFFIXES: tuple[str, ...] = ("", "_pp", "_gt", "_pp_gt")

PRED_MIN_DEPTH = 1e-6
# The crop fractions of Garg et al. as used by monodepth2/packnet-sfm/DRO (fractions of the GT size).
GARG_CROP_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
# eigen_nyu is defined in pixels of the 480x640 NYUv2 ground truth: rows [20, 459), columns [24, 615).
EIGEN_NYU_CROP = (20, 459, 24, 615)
EIGEN_NYU_SIZE = (480, 640)


@dataclass(frozen=True)
class DepthProtocol:
    """Evaluation protocol: valid GT depth range, crop, and the median-scaling rule of `_gt` variants."""

    name: str
    min_depth: float
    max_depth: float
    crop: CropName | None
    scaling: ScalingMode

    def __post_init__(self) -> None:
        if not self.name or any(ch.isspace() for ch in self.name):
            raise ConfigError(f"depth protocol name {self.name!r} must be a non-empty word without spaces")
        if not (0.0 <= self.min_depth < self.max_depth) or not math.isfinite(self.max_depth):
            raise ConfigError(
                f"depth protocol {self.name!r}: need 0 <= min_depth < max_depth < inf, "
                f"got min_depth={self.min_depth}, max_depth={self.max_depth}"
            )
        if self.crop is not None and self.crop not in get_args(CropName):
            raise ConfigError(
                f"depth protocol {self.name!r}: unknown crop {self.crop!r}; use one of "
                f"{', '.join(get_args(CropName))} or None"
            )
        if self.scaling not in get_args(ScalingMode):
            raise ConfigError(
                f"depth protocol {self.name!r}: unknown scaling {self.scaling!r}; use one of "
                f"{', '.join(get_args(ScalingMode))}"
            )


#: Named presets. DRO's own configs use the median of the ratios gt/pred; monodepth2 uses the ratio of
#: the medians. DeepV2D's ScanNet range is kept with DRO's scaling rule, which DRO applies to all its
#: comparisons.
PROTOCOLS: dict[str, DepthProtocol] = {
    p.name: p
    for p in (
        DepthProtocol("dro_kitti", 0.2, 80.0, "garg", "median_of_ratios"),
        DepthProtocol("monodepth2_kitti", 1e-3, 80.0, "garg", "ratio_of_medians"),
        DepthProtocol("dro_scannet", 0.2, 10.0, None, "median_of_ratios"),
        DepthProtocol("deepv2d_scannet", 0.1, 10.0, None, "median_of_ratios"),
    )
}


def get_protocol(name: str) -> DepthProtocol:
    """The preset protocol called ``name``."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(
            f"unknown depth evaluation protocol {name!r}; choose one of {', '.join(sorted(PROTOCOLS))}"
        ) from None


def variant_suffix(post_processed: bool, median_scaled: bool) -> str:
    """The official suffix: '' | '_pp' | '_gt' | '_pp_gt'."""
    return ("_pp" if post_processed else "") + ("_gt" if median_scaled else "")


def variant_name(protocol: DepthProtocol, post_processed: bool, median_scaled: bool) -> str:
    """Label of one evaluation variant, e.g. ``dro_kitti_pp_gt``."""
    return protocol.name + variant_suffix(post_processed, median_scaled)


def metric_key(metric: str, post_processed: bool, median_scaled: bool) -> str:
    """The official metric key, e.g. ``abs_rel_pp_gt`` (the KITTI checkpoint monitor)."""
    if metric not in METRIC_NAMES:
        raise ConfigError(f"unknown depth metric {metric!r}; choose one of {', '.join(METRIC_NAMES)}")
    return metric + variant_suffix(post_processed, median_scaled)


def crop_bounds(height: int, width: int, crop: CropName) -> tuple[int, int, int, int]:
    """Half-open crop box (row0, row1, col0, col1) on a ground-truth image of size height x width."""
    if crop == "garg":
        fy0, fy1, fx0, fx1 = GARG_CROP_FRACTIONS
        # int() truncation as in the official code (all values are positive, so it is a floor).
        return int(fy0 * height), int(fy1 * height), int(fx0 * width), int(fx1 * width)
    if crop == "eigen_nyu":
        if (height, width) != EIGEN_NYU_SIZE:
            raise InputError(
                f"the eigen_nyu crop is defined on 480x640 ground truth, got {height}x{width}; "
                "evaluate at the original NYUv2 resolution or use another crop"
            )
        return EIGEN_NYU_CROP
    raise ConfigError(f"unknown crop {crop!r}; use one of {', '.join(get_args(CropName))} or None")


def crop_mask(height: int, width: int, crop: CropName | None) -> np.ndarray:
    """Boolean mask [H,W] of the pixels kept by ``crop`` (all True without a crop)."""
    mask = np.zeros((height, width), dtype=bool)
    if crop is None:
        mask[:] = True
        return mask
    r0, r1, c0, c1 = crop_bounds(height, width, crop)
    mask[r0:r1, c0:c1] = True
    return mask


def valid_mask(gt: np.ndarray, protocol: DepthProtocol) -> np.ndarray:
    """Pixels [H,W] that count for the metrics: min_depth < gt < max_depth, inside the crop."""
    gt = np.asarray(gt)
    # NaN ground truth compares False and is thereby invalid, like 0.
    with np.errstate(invalid="ignore"):
        in_range = (gt > protocol.min_depth) & (gt < protocol.max_depth)
    return in_range & crop_mask(gt.shape[-2], gt.shape[-1], protocol.crop)


def _as_depth_batch(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """Depth [H,W], [B,H,W] or [B,1,H,W] (numpy or torch) to a float64 CPU tensor [B,1,H,W]."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach())
    t = t.to(device="cpu", dtype=torch.float64)
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1 or t.shape[-1] == 0 or t.shape[-2] == 0:
        raise InputError(
            f"{what} must be a depth map [H,W], [B,H,W] or [B,1,H,W]; got shape {tuple(t.shape)}"
        )
    return t


def resize_depth_to(pred_depth: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Prediction [B,1,h,w] resized to size (H, W) bilinearly with align_corners=True, clamped >= 1e-6."""
    pred = _as_depth_batch(pred_depth, "predicted depth")
    if tuple(pred.shape[-2:]) != tuple(size):
        pred = F.interpolate(pred, size=tuple(size), mode="bilinear", align_corners=True)
    return pred.clamp(min=PRED_MIN_DEPTH)


def lower_median(x: np.ndarray) -> float:
    """Median [N] that picks the lower middle element for even N, as ``torch.median`` does."""
    k = (x.size - 1) // 2
    return float(np.partition(x, k)[k])


def median_scale_factor(gt: np.ndarray, pred: np.ndarray, mode: ScalingMode) -> float:
    """Scale for pred [N] over valid pixels: median(gt/pred) (DRO) or median(gt)/median(pred) (monodepth2).

    Each rule uses its reference implementation's median: DRO's torch.median takes the lower middle
    element, monodepth2's np.median the mean of the two middle elements (differs only for tiny N).
    """
    if gt.size == 0:
        raise InputError("median scaling needs at least one valid ground-truth pixel")
    if mode == "median_of_ratios":
        return lower_median(gt / pred)
    if mode == "ratio_of_medians":
        return float(np.median(gt) / np.median(pred))
    raise ConfigError(f"unknown scaling mode {mode!r}; use one of {', '.join(get_args(ScalingMode))}")


def depth_errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The spec §16 metrics for valid, positive gt [N] and pred [N]; keys ``METRIC_NAMES``."""
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    thresh = np.maximum(gt / pred, pred / gt)
    diff = gt - pred
    log_diff = np.log(gt) - np.log(pred)
    # Rounding can make the variance a tiny negative number; the official code would return NaN there.
    silog_sq = max(float(np.mean(log_diff**2) - np.mean(log_diff) ** 2), 0.0)
    return {
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff**2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean(log_diff**2))),
        "a1": float(np.mean(thresh < 1.25)),
        "a2": float(np.mean(thresh < 1.25**2)),
        "a3": float(np.mean(thresh < 1.25**3)),
        "silog": math.sqrt(silog_sq),
        "l1_inv": float(np.mean(np.abs(1.0 / pred - 1.0 / gt))),
    }


@dataclass(frozen=True)
class DepthImageResult:
    """Metrics of one image under one variant; metrics are NaN when the image has no valid pixel."""

    variant: str
    metrics: dict[str, float]
    n_valid: int
    scale: float
    frame_id: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record (NaN becomes None)."""
        out: dict[str, object] = {"frame_id": self.frame_id, "variant": self.variant, "n_valid": self.n_valid}
        out["scale"] = self.scale if math.isfinite(self.scale) else None
        out.update({k: (v if math.isfinite(v) else None) for k, v in self.metrics.items()})
        return out


def evaluate_depth_image(
    gt: np.ndarray | torch.Tensor,
    pred_depth: np.ndarray | torch.Tensor,
    protocol: DepthProtocol,
    median_scaled: bool,
    post_processed: bool = False,
    frame_id: str | None = None,
) -> DepthImageResult:
    """Metrics of one prediction [h,w] against ground truth [H,W] (0 or NaN = no GT).

    ``post_processed`` only labels the result: pass the flip-post-processed depth for '_pp' variants.
    """
    gt_b = _as_depth_batch(gt, "ground-truth depth")
    if gt_b.shape[0] != 1:
        raise InputError(
            f"evaluate_depth_image takes one image; got a batch of {gt_b.shape[0]} ground truths"
        )
    return evaluate_depth_batch(gt_b, pred_depth, protocol, median_scaled, post_processed, [frame_id])[0]


def evaluate_depth_batch(
    gt: np.ndarray | torch.Tensor,
    pred_depth: np.ndarray | torch.Tensor,
    protocol: DepthProtocol,
    median_scaled: bool,
    post_processed: bool = False,
    frame_ids: Sequence[str | None] | None = None,
) -> list[DepthImageResult]:
    """Per-image metrics of predictions [B,1,h,w] against ground truth [B,1,H,W]."""
    gt_b = _as_depth_batch(gt, "ground-truth depth")
    pred_b = _as_depth_batch(pred_depth, "predicted depth")
    if gt_b.shape[0] != pred_b.shape[0]:
        raise InputError(f"{pred_b.shape[0]} predicted depth maps for {gt_b.shape[0]} ground-truth maps")
    if not torch.isfinite(pred_b).all():
        raise InputError("predicted depth contains NaN or infinite values; check the model output")
    if frame_ids is None:
        frame_ids = [None] * gt_b.shape[0]
    if len(frame_ids) != gt_b.shape[0]:
        raise InputError(f"{len(frame_ids)} frame ids for {gt_b.shape[0]} images")
    height, width = gt_b.shape[-2:]
    pred_b = resize_depth_to(pred_b, (height, width))
    name = variant_name(protocol, post_processed, median_scaled)
    results = []
    for gt_i, pred_i, frame_id in zip(gt_b[:, 0].numpy(), pred_b[:, 0].numpy(), frame_ids, strict=True):
        valid = valid_mask(gt_i, protocol)
        n_valid = int(valid.sum())
        if n_valid == 0:
            # The official code adds zeros for such an image but still divides by the batch size; we
            # keep it out of the mean instead (see mean_depth_metrics) and say so.
            logger.warning(
                "frame %s has no valid ground-truth pixel under protocol %s", frame_id, protocol.name
            )
            nan_metrics = dict.fromkeys(METRIC_NAMES, math.nan)
            results.append(DepthImageResult(name, nan_metrics, 0, math.nan, frame_id))
            continue
        gt_v, pred_v = gt_i[valid], pred_i[valid]
        scale = median_scale_factor(gt_v, pred_v, protocol.scaling) if median_scaled else 1.0
        pred_v = np.clip(pred_v * scale, protocol.min_depth, protocol.max_depth)
        results.append(DepthImageResult(name, depth_errors(gt_v, pred_v), n_valid, scale, frame_id))
    return results


def mean_depth_metrics(results: Iterable[DepthImageResult]) -> dict[str, float]:
    """Mean over images of each metric, skipping images without valid pixels (NaN if none is left)."""
    rows = [r for r in results]
    used = [r for r in rows if r.n_valid > 0]
    if len(used) < len(rows):
        logger.warning(
            "%d of %d images have no valid ground truth and are left out of the mean",
            len(rows) - len(used),
            len(rows),
        )
    if not used:
        return dict.fromkeys(METRIC_NAMES, math.nan)
    return {k: float(np.mean([r.metrics[k] for r in used])) for k in METRIC_NAMES}


@dataclass(frozen=True)
class DepthVariantSummary:
    """Mean metrics of one variant over a set of images, with the per-image results."""

    variant: str
    protocol: DepthProtocol
    post_processed: bool
    median_scaled: bool
    mean: dict[str, float]
    per_image: list[DepthImageResult] = field(repr=False)

    @property
    def n_images(self) -> int:
        """Images that entered the mean."""
        return sum(1 for r in self.per_image if r.n_valid > 0)


def summarize_variant(
    results: Sequence[DepthImageResult], protocol: DepthProtocol, post_processed: bool, median_scaled: bool
) -> DepthVariantSummary:
    """Wrap per-image results [N] of one variant with their mean."""
    name = variant_name(protocol, post_processed, median_scaled)
    wrong = {r.variant for r in results} - {name}
    if wrong:
        raise InputError(f"results of variant(s) {sorted(wrong)} cannot be summarized as {name}")
    return DepthVariantSummary(
        name, protocol, post_processed, median_scaled, mean_depth_metrics(results), list(results)
    )


def evaluate_depth_variants(
    gt: np.ndarray | torch.Tensor,
    pred_depth: np.ndarray | torch.Tensor,
    protocol: DepthProtocol,
    pred_depth_pp: np.ndarray | torch.Tensor | None = None,
    frame_ids: Sequence[str | None] | None = None,
) -> dict[str, list[DepthImageResult]]:
    """Per-image results for '' and '_gt' (and '_pp', '_pp_gt' when given the post-processed depth).

    Keys are variant names in the official order, e.g. ``dro_kitti``, ``dro_kitti_pp``, ``dro_kitti_gt``,
    ``dro_kitti_pp_gt``.
    """
    out: dict[str, list[DepthImageResult]] = {}
    for suffix in VARIANT_SUFFIXES:
        pp, scaled = suffix.startswith("_pp"), suffix.endswith("_gt")
        if pp and pred_depth_pp is None:
            continue
        pred = pred_depth_pp if pp else pred_depth
        out[protocol.name + suffix] = evaluate_depth_batch(gt, pred, protocol, scaled, pp, frame_ids)
    return out


def pp_blend_mask(
    width: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Left-border weight m [W] of flip post-processing: m = 1 - clamp(20(x - 0.05), 0, 1), x in [0,1]."""
    xs = torch.linspace(0.0, 1.0, width, dtype=dtype, device=device)
    return 1.0 - torch.clamp(20.0 * (xs - 0.05), 0.0, 1.0)


def post_process_inv_depth(inv_depth: torch.Tensor, inv_depth_of_flipped: torch.Tensor) -> torch.Tensor:
    """Flip post-processing of inverse depth [B,1,H,W] given the prediction on the flipped input [B,1,H,W].

    ``inv_depth_of_flipped`` is the raw network output for the horizontally flipped images (still in
    flipped coordinates); it is flipped back here. Within 5% of the left border the result uses the
    flipped-back prediction only, at the right border only the original one (each view's border lacks
    context there), and in between it ramps to the mean of both:
    ``m̂·inv + m·inv_back + (1 − m − m̂)·(inv + inv_back)/2`` with ``m̂`` the mirrored ``m``.
    """
    if inv_depth.shape != inv_depth_of_flipped.shape or inv_depth.ndim != 4:
        raise InputError(
            "post-processing needs two inverse depths of the same shape [B,1,H,W]; got "
            f"{tuple(inv_depth.shape)} and {tuple(inv_depth_of_flipped.shape)}"
        )
    inv_back = torch.flip(inv_depth_of_flipped, dims=[-1])
    mask = pp_blend_mask(inv_depth.shape[-1], inv_depth.dtype, inv_depth.device)
    mask_hat = torch.flip(mask, dims=[-1])
    fused = 0.5 * (inv_depth + inv_back)
    return mask_hat * inv_depth + mask * inv_back + (1.0 - mask - mask_hat) * fused


def flip_intrinsics(K: torch.Tensor, width: int) -> torch.Tensor:
    """Intrinsics [...,3,3] for horizontally flipped images of the given width: fx -> -fx, cx -> W - cx.

    This is how the official post-processing re-runs the network on flipped views (spec §16).
    """
    K_flipped = K.clone()
    K_flipped[..., 0, 0] = -K[..., 0, 0]
    K_flipped[..., 0, 2] = width - K[..., 0, 2]
    return K_flipped
