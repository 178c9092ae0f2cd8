"""Scoring a model on reserved synthetic samples, with the trivial baselines beside it (model cards).

Samples come from scene seeds at or above ``RESERVED_SEED_START``, which training never draws. Each sample
is a three-view window (previous, target, next). Reported per scene kind: depth AbsRel (metric and
median-scaled), rotation error, translation-direction error of both references, for several iteration
counts, and for the baselines: constant depth (the training median) and zero / constant motion. One more depth
baseline marks the floor of metric AbsRel without an absolute-scale cue: the true depth map rescaled so that its
median is the training median (perfect shape, one fixed scale; median-scaled AbsRel 0). Two scale
ratios say where metric errors come from: the depth scale (median of predicted / true depth, averaged over
samples; 1 = no bias) and the translation-length ratio (|t_pred| / |t_true|, averaged over references).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from dro_sfm.eval.pose_metrics import rotation_error_deg, translation_direction_error_deg
from dro_sfm.models.predict import DroModel
from dro_sfm.train.config import DataSection, TrainConfig
from dro_sfm.train.datasets import SyntheticDataset

VALIDATION_FIRST_SAMPLE = 100_000
"""Training validation and checkpoint selection score reserved samples from here on (cards use 0 …)."""


@dataclass
class ScoreRow:
    """Mean errors of one predictor on one scene kind."""

    predictor: str
    kind: str
    abs_rel: float
    abs_rel_median_scaled: float
    rot_deg: float
    tdir_deg: float
    n: int
    depth_scale: float = float("nan")
    translation_scale: float = float("nan")


def _abs_rel(pred: np.ndarray, gt: np.ndarray, median_scale: bool) -> float:
    ok = (gt > 0) & (pred > 0) & np.isfinite(pred)
    if ok.sum() < 10:
        return float("nan")
    p, g = pred[ok], gt[ok]
    if median_scale:
        p = p * np.median(g / p)
    return float(np.mean(np.abs(p - g) / g))


def _depth_scale(pred: np.ndarray, gt: np.ndarray) -> float:
    """Median of predicted / true depth over valid pixels (1 = unbiased metric scale)."""
    ok = (gt > 0) & (pred > 0) & np.isfinite(pred)
    return float(np.median(pred[ok] / gt[ok])) if ok.sum() >= 10 else float("nan")


def _translation_scale(T_pred: np.ndarray, T_gt: np.ndarray) -> float:
    """Mean over references of |t_pred| / |t_true|; T [N,4,4]."""
    true_len = np.linalg.norm(T_gt[:, :3, 3], axis=1)
    ok = true_len > 1e-9
    return float(np.mean(np.linalg.norm(T_pred[ok, :3, 3], axis=1) / true_len[ok])) if ok.any() else float("nan")


def _pose_errors(T_pred: np.ndarray, T_gt: np.ndarray) -> tuple[float, float]:
    """Mean rotation and translation-direction errors (deg) over references; T [N,4,4]."""
    rot = rotation_error_deg(T_gt[:, :3, :3], T_pred[:, :3, :3])
    tdir = translation_direction_error_deg(T_gt[:, :3, 3], T_pred[:, :3, 3])
    # a direction is undefined for a zero translation (NaN); a sample where every one is undefined gets NaN
    # without numpy's "Mean of empty slice" warning
    return _finite_mean(rot), _finite_mean(tdir)


def _finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries, NaN when there are none."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else float("nan")


def prediction_errors(depth: np.ndarray, gt: np.ndarray, T_pred: np.ndarray, T_gt: np.ndarray) -> dict[str, float]:
    """AbsRel, median-scaled AbsRel, rotation and translation-direction errors (deg) of one sample's
    prediction: depth and gt [H,W], T_pred and T_gt [N,4,4] (``T_ref_from_tgt``)."""
    rot, tdir = _pose_errors(T_pred, T_gt)
    return {"abs_rel": _abs_rel(depth, gt, False), "abs_rel_median_scaled": _abs_rel(depth, gt, True),
            "rot_deg": rot, "tdir_deg": tdir}


def reserved_dataset(kind: str, height: int, width: int, samples_per_scene: int = 4) -> SyntheticDataset:
    """Reserved (evaluation-only) three-view samples of one scene kind."""
    cfg = TrainConfig(data=DataSection(scenes=kind, height=height, width=width, augment=False,
                                       samples_per_scene=samples_per_scene))
    return SyntheticDataset(cfg, reserved=True)


def training_statistics(kind: str, n: int = 64, height: int = 120, width: int = 160) -> dict:
    """Median training depth and mean relative motion per reference (the constant baselines' values)."""
    cfg = TrainConfig(data=DataSection(scenes=kind, height=height, width=width, augment=False, samples_per_scene=8))
    ds = SyntheticDataset(cfg)
    depths, motions = [], []
    for i in range(n):
        s = ds[i]
        d = s["depth"].numpy()
        depths.append(np.median(d[d > 0]))
        motions.append(s["T_ref_from_tgt"].numpy())
    mean_T = np.mean(np.stack(motions), axis=0)  # [N,4,4]: project rotations back onto SO(3)
    for T in mean_T:
        U, _, Vt = np.linalg.svd(T[:3, :3])
        T[:3, :3] = U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt
    return {"median_depth": float(np.median(depths)), "mean_motion": mean_T}


def image_motion_px(depth: np.ndarray, K: np.ndarray, T_ref_from_tgt: np.ndarray) -> tuple[float, float]:
    """Median image motion (px) of depth [H,W]'s valid pixels in a reference: (from translation, from rotation).

    The translation part is the parallax that carries depth and translation direction: the displacement
    between projecting with (R, t) and with R alone. The rotation part is the displacement R alone causes.
    """
    v, u = np.nonzero(depth > 0)
    pix = np.stack([u, v, np.ones_like(u)]).astype(np.float64)  # [3,M]
    points = np.linalg.inv(K) @ pix * depth[v, u]
    R, t = T_ref_from_tgt[:3, :3], T_ref_from_tgt[:3, 3:4]

    def project(X: np.ndarray) -> np.ndarray:
        q = K @ X
        return q[:2] / q[2]

    rotated = R @ points
    parallax = np.linalg.norm(project(rotated + t) - project(rotated), axis=0)
    rotation_flow = np.linalg.norm(project(rotated) - pix[:2], axis=0)
    return float(np.median(parallax)), float(np.median(rotation_flow))


def motion_statistics(kind: str, n_samples: int, height: int, width: int) -> dict[str, float]:
    """Over reserved samples at height×width: median and 10th/90th percentiles of the per-reference median
    translation parallax, and the median rotation-induced motion (px)."""
    ds = reserved_dataset(kind, height, width)
    par, rot = [], []
    for i in range(n_samples):
        s = ds[i]
        for T in s["T_ref_from_tgt"].double().numpy():
            p, r = image_motion_px(s["depth"][0].double().numpy(), s["K"].double().numpy(), T)
            par.append(p)
            rot.append(r)
    return {"parallax_median": float(np.median(par)), "parallax_p10": float(np.percentile(par, 10)),
            "parallax_p90": float(np.percentile(par, 90)), "rotation_flow_median": float(np.median(rot))}


@torch.no_grad()
def score(
    model: DroModel,
    kinds: tuple[str, ...] = ("indoor", "outdoor"),
    n_samples: int = 200,
    height: int = 240,
    width: int = 320,
    iterations: tuple[int, ...] = (0, 4, 12),
    progress: bool = True,
    baselines: bool = True,
    process_shape: tuple[int, int] | None = None,
    first_sample: int = 0,
) -> list[ScoreRow]:
    """Mean errors of ``model`` (at each total iteration count) and the trivial baselines.

    Samples are rendered at ``height``×``width``; the network runs at ``process_shape`` (default: the model's
    own processing shape, as ``predict`` and ``reconstruct`` do) and its depth is compared at the sample size.
    Samples ``first_sample`` … ``first_sample + n_samples - 1`` of each kind's reserved stream are used: model
    cards start at 0, training validation at ``VALIDATION_FIRST_SAMPLE``, so checkpoints are never chosen on
    the samples a card reports.
    """
    rows: list[ScoreRow] = []
    steps = model.config.steps_per_stage
    for kind in kinds:
        stats = training_statistics(kind) if baselines else None
        ds = reserved_dataset(kind, height, width)
        acc: dict[str, list[tuple[float, ...]]] = {}
        for i in tqdm(range(n_samples), desc=f"score {kind}", disable=not progress):
            s = ds[first_sample + i]
            gt = s["depth"][0].numpy()
            T_gt = s["T_ref_from_tgt"].numpy()
            target, refs, K = s["target"], list(s["refs"]), s["K"]
            for it in iterations:
                pred = model.predict(target, refs, K, image_shape=process_shape, stages=it // steps,
                                     steps_per_stage=steps)
                depth = pred.depth[0, 0].cpu().numpy()
                T_pred = pred.T_ref_from_tgt[0].double().cpu().numpy()
                acc.setdefault(f"dro-{it}", []).append(
                    (*prediction_errors(depth, gt, T_pred, T_gt).values(), _depth_scale(depth, gt),
                     _translation_scale(T_pred, T_gt)))
            if stats is None:
                continue
            const = np.full_like(gt, stats["median_depth"])
            zero = np.stack([np.eye(4)] * len(T_gt))
            acc.setdefault("constant depth + zero motion", []).append(
                (_abs_rel(const, gt, False), _abs_rel(const, gt, True), *_pose_errors(zero, T_gt),
                 _depth_scale(const, gt), 0.0))
            true_shape = gt * (stats["median_depth"] / np.median(gt[gt > 0]))
            acc.setdefault("true shape at the training median", []).append(
                (_abs_rel(true_shape, gt, False), _abs_rel(true_shape, gt, True), float("nan"), float("nan"),
                 _depth_scale(true_shape, gt), float("nan")))
            acc.setdefault("constant motion (training mean)", []).append(
                (float("nan"), float("nan"), *_pose_errors(stats["mean_motion"], T_gt),
                 float("nan"), _translation_scale(stats["mean_motion"], T_gt)))
        for name, vals in acc.items():
            v = np.array(vals, dtype=np.float64)
            means = [float(np.nanmean(v[:, j])) if np.isfinite(v[:, j]).any() else float("nan")
                     for j in range(v.shape[1])]
            rows.append(ScoreRow(name, kind, *means[:4], n=len(vals), depth_scale=means[4],
                                 translation_scale=means[5]))
    return rows


def rows_to_markdown(rows: list[ScoreRow]) -> str:
    """A Markdown table of score rows."""
    lines = ["| kind | predictor | AbsRel | AbsRel (median-scaled) | rot. err. ° | transl. dir. err. ° | "
             "depth scale | transl. length ratio | n |",
             "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda x: "–" if not np.isfinite(x) else f"{x:.3f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r.kind} | {r.predictor} | {fmt(r.abs_rel)} | {fmt(r.abs_rel_median_scaled)} | "
                     f"{fmt(r.rot_deg)} | {fmt(r.tdir_deg)} | {fmt(r.depth_scale)} | {fmt(r.translation_scale)} | "
                     f"{r.n} |")
    return "\n".join(lines)


def rows_to_dicts(rows: list[ScoreRow]) -> list[dict]:
    return [dataclasses.asdict(r) for r in rows]
