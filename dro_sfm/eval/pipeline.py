"""The evaluation loop shared by the KITTI, ScanNet and sequence benchmarks.

A benchmark is an ordered list of sample descriptions plus a loader that turns one description into an
:class:`EvalSample` (target image, reference images, intrinsics, ground-truth depth and relative poses).
Methods are *predictors*: callables ``EvalSample -> PredictorOutput``. The DRO model is one
(:class:`ModelPredictor`), its 0-iteration initial prediction another; tests inject oracles that know the
ground truth. For each sample and method the loop

1. runs the predictor; with flip post-processing it runs it again on the mirrored sample
   (:func:`flip_sample`: images flipped, ``fx → −fx``, ``cx → W − cx`` as the official code does) and
   blends the two inverse depths (:func:`~dro_sfm.eval.depth_metrics.post_process_inv_depth`);
2. scores the depth under every protocol and variant (``''``, ``_pp``, ``_gt``, ``_pp_gt``);
3. scores the pose of the first reference with the BA-Net/DeepV2D errors;

and optionally reconstructs the sample's views with COLMAP (the classical baseline). Samples are sharded
across ``torchrun`` processes and gathered back in list order (:mod:`dro_sfm.eval.distributed`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from dro_sfm.errors import InputError
from dro_sfm.eval.colmap_baseline import ColmapOptions, run_colmap
from dro_sfm.eval.depth_metrics import (
    VARIANT_SUFFIXES,
    DepthImageResult,
    DepthProtocol,
    DepthVariantSummary,
    evaluate_depth_variants,
    get_protocol,
    post_process_inv_depth,
    resize_depth_to,
    summarize_variant,
    valid_mask,
)
from dro_sfm.eval.distributed import DistContext, gather_records
from dro_sfm.eval.pose_metrics import BANetPoseErrors, banet_pose_errors
from dro_sfm.eval.report import (
    depth_markdown_table,
    depth_summary_to_dict,
    plot_error_histogram,
    plot_errors_along_sequence,
    pose_errors_to_dict,
    pose_markdown_table,
    to_jsonable,
    write_json,
    write_markdown,
)
from dro_sfm.geometry.warp import depth2inv, inv2depth

logger = logging.getLogger(__name__)

S = TypeVar("S")


# ----------------------------------------------------------------------------------------------- samples
@dataclass
class EvalSample:
    """One test item: target [H,W,3] uint8, references N×[H,W,3], K [3,3] (input pixels) and ground truth.

    ``gt_depth`` [Hg,Wg] metres (0 = no measurement) may have another size than the images (it is compared
    after resizing the prediction, spec §16); ``T_ref_from_tgt_gt`` [N,4,4] target→reference transforms.
    """

    sample_id: str
    target: np.ndarray
    refs: list[np.ndarray]
    K: np.ndarray
    gt_depth: np.ndarray | None = None
    T_ref_from_tgt_gt: np.ndarray | None = None
    flipped: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


class SkipSample(Exception):
    """Raised by a loader when a listed sample cannot be evaluated; the message is the reported reason."""


@dataclass
class PredictorOutput:
    """Depth [h,w] (any size; metres or the model's units) and optionally T_ref_from_tgt [N,4,4].

    ``inv_depth`` [h,w], when given, is used for flip post-processing instead of ``1/depth`` (the official
    code blends the network's inverse depths).
    """

    depth: np.ndarray | torch.Tensor
    T_ref_from_tgt: np.ndarray | None = None
    inv_depth: np.ndarray | torch.Tensor | None = None


Predictor = Callable[[EvalSample], PredictorOutput]


def flip_intrinsics_np(K: np.ndarray, width: int) -> np.ndarray:
    """K [3,3] of a horizontally mirrored image: fx → −fx, cx → W − cx (the official flip, spec §16)."""
    K = np.array(K, dtype=np.float64, copy=True)
    K[0, 0] = -K[0, 0]
    K[0, 2] = width - K[0, 2]
    return K


def flip_sample(sample: EvalSample) -> EvalSample:
    """The sample with every image and the GT depth mirrored left-right and K flipped accordingly.

    With ``fx → −fx`` the mirrored images are exact projections of the *same* 3-D scene, so the relative
    poses are unchanged; only the depth maps are mirrored.
    """
    width = sample.target.shape[1]
    return replace(
        sample,
        target=np.ascontiguousarray(sample.target[:, ::-1]),
        refs=[np.ascontiguousarray(r[:, ::-1]) for r in sample.refs],
        K=flip_intrinsics_np(sample.K, width),
        gt_depth=None if sample.gt_depth is None else np.ascontiguousarray(sample.gt_depth[:, ::-1]),
        flipped=not sample.flipped,
    )


def _as_map(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A [h,w] / [1,h,w] / [1,1,h,w] map as a float64 CPU tensor [1,1,h,w]."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(x))
    t = t.to("cpu", torch.float64)
    while t.ndim < 4:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[:2] != (1, 1):
        raise InputError(f"a predictor must return one depth map [h,w]; got shape {tuple(t.shape)}")
    return t


def _inverse_depth(out: PredictorOutput) -> torch.Tensor:
    """Inverse depth [1,1,h,w] of a prediction."""
    return _as_map(out.inv_depth) if out.inv_depth is not None else depth2inv(_as_map(out.depth))


def post_processed_depth(out: PredictorOutput, out_of_flipped: PredictorOutput) -> torch.Tensor:
    """Flip-post-processed depth [1,1,h,w] from the prediction and the prediction on the flipped sample."""
    inv, inv_flipped = _inverse_depth(out), _inverse_depth(out_of_flipped)
    return inv2depth(post_process_inv_depth(inv, inv_flipped))


class ModelPredictor:
    """A :class:`~dro_sfm.models.predict.DroModel` as a predictor (``stages=0``: its initial prediction).

    Depth is returned at the processing size, as the network made it; the metrics resize it to the
    ground truth bilinearly (align_corners), which is what the official evaluation does.
    """

    def __init__(self, model, image_shape: tuple[int, int] | None = None, stages: int | None = None,
                 steps_per_stage: int | None = None, device: str = "cpu") -> None:
        self.model = model.to(device)
        self.image_shape = tuple(image_shape) if image_shape is not None else tuple(model.info.image_shape)
        self.stages = stages
        self.steps_per_stage = steps_per_stage
        self.device = device

    def __call__(self, sample: EvalSample) -> PredictorOutput:
        pred = self.model.predict(sample.target, sample.refs, sample.K, image_shape=self.image_shape,
                                  stages=self.stages, steps_per_stage=self.steps_per_stage)
        inv = pred.inv_depth[0, 0].detach().to("cpu", torch.float64)
        T = pred.T_ref_from_tgt[0].detach().to("cpu", torch.float64).numpy()
        return PredictorOutput(depth=inv2depth(inv).numpy(), T_ref_from_tgt=T, inv_depth=inv.numpy())

    def describe(self) -> dict[str, Any]:
        """JSON-ready description: model name/source, processing size and iteration counts."""
        cfg = self.model.config
        stages = cfg.stages if self.stages is None else self.stages
        steps = cfg.steps_per_stage if self.steps_per_stage is None else self.steps_per_stage
        info = self.model.info
        return {
            "model": info.name, "source": info.source, "trained": info.trained, "depth_units": info.depth_units,
            "image_shape": list(self.image_shape), "stages": stages,
            "steps_per_stage": steps if stages > 0 else 0, "iterations": stages * steps,
        }


# ----------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class EvalSettings:
    """Depth protocols, whether to flip-post-process, and COLMAP options (None = no COLMAP baseline)."""

    protocols: tuple[DepthProtocol, ...]
    post_process: bool = True
    colmap: ColmapOptions | None = None

    @classmethod
    def from_protocol_names(
        cls, names: Sequence[str], post_process: bool = True, colmap: ColmapOptions | None = None
    ) -> EvalSettings:
        """Settings for the named depth protocols (see :func:`~dro_sfm.eval.depth_metrics.get_protocol`)."""
        return cls(tuple(get_protocol(name) for name in names), post_process, colmap)

    @property
    def headline_suffix(self) -> str:
        """Variant used for plots: post-processed and median-scaled, the official checkpoint monitor."""
        return ("_pp" if self.post_process else "") + "_gt"


@dataclass
class SampleRecord:
    """Everything measured on one listed sample (picklable, gathered across processes)."""

    index: int
    sample_id: str
    skipped: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    depth: dict[str, dict[str, DepthImageResult]] = field(default_factory=dict)
    pose: dict[str, tuple[float, float, float] | None] = field(default_factory=dict)
    colmap: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    rank: int = 0  # the process that evaluated the sample


def _pose_errors(T_gt: np.ndarray | None, T_pred: np.ndarray | None) -> tuple[float, float, float] | None:
    """BA-Net errors (rot deg, t-dir deg, t cm) of the first reference, or None without GT or prediction."""
    if T_gt is None or T_pred is None or not np.all(np.isfinite(T_gt[0])):
        return None
    if not np.all(np.isfinite(T_pred[0])):
        raise InputError("a predictor returned a non-finite pose")
    e = banet_pose_errors(T_gt[0], T_pred[0])
    return float(e.rot_deg[0]), float(e.tdir_deg[0]), float(e.t_cm[0])


def evaluate_sample(sample: EvalSample, index: int, methods: Mapping[str, Predictor],
                    settings: EvalSettings) -> SampleRecord:
    """Run every method on one sample and score it; see the module docstring for the steps."""
    record = SampleRecord(index, sample.sample_id, meta=dict(sample.meta))
    flipped = flip_sample(sample) if settings.post_process else None
    for name, predictor in methods.items():
        t0 = time.perf_counter()
        out = predictor(sample)
        depth_pp = post_processed_depth(out, predictor(flipped)) if flipped is not None else None
        record.seconds[name] = time.perf_counter() - t0
        if sample.gt_depth is not None:
            variants: dict[str, DepthImageResult] = {}
            for protocol in settings.protocols:
                results = evaluate_depth_variants(sample.gt_depth, _as_map(out.depth), protocol, depth_pp,
                                                  frame_ids=[sample.sample_id])
                variants.update({variant: rows[0] for variant, rows in results.items()})
            record.depth[name] = variants
        record.pose[name] = _pose_errors(sample.T_ref_from_tgt_gt, out.T_ref_from_tgt)
    if settings.colmap is not None:
        record.colmap = _colmap_sample(sample, settings.colmap)
    return record


def _colmap_sample(sample: EvalSample, options: ColmapOptions) -> dict[str, Any]:
    """COLMAP on the sample's views: registration and the BA-Net errors of target→first reference."""
    names = ["target"] + [f"ref{i}" for i in range(len(sample.refs))]
    t0 = time.perf_counter()
    result = run_colmap([sample.target, *sample.refs], sample.K, names=names, options=options)
    T_pred = result.relative_pose("ref0", "target")
    errors = _pose_errors(sample.T_ref_from_tgt_gt, None if T_pred is None else T_pred[None])
    return {"registered": result.n_registered, "n_views": len(names), "unregistered": result.unregistered,
            "message": result.message, "errors": errors, "seconds": time.perf_counter() - t0}


def evaluate_samples(
    specs: Sequence[S],
    load: Callable[[S], EvalSample],
    methods: Mapping[str, Predictor],
    settings: EvalSettings,
    ctx: DistContext | None = None,
    sample_id: Callable[[S], str] = str,
) -> list[SampleRecord]:
    """Records [len(specs)] in list order: this process's shard evaluated, then all shards gathered."""
    ctx = ctx or DistContext()
    indices = ctx.shard(len(specs))
    records = []
    for index in tqdm(indices, desc="evaluating", unit="sample", disable=not ctx.is_main):
        spec = specs[index]
        try:
            sample = load(spec)
        except SkipSample as skip:
            logger.info("skipping %s: %s", sample_id(spec), skip)
            records.append(SampleRecord(index, sample_id(spec), skipped=str(skip), rank=ctx.rank))
            continue
        record = evaluate_sample(sample, index, methods, settings)
        record.rank = ctx.rank
        records.append(record)
    return gather_records(ctx, len(specs), indices, records)


# ----------------------------------------------------------------------------------------------- summary
@dataclass
class MethodSummary:
    """Per-method results: depth variants (protocol-major, official variant order) and pose errors."""

    name: str
    description: dict[str, Any]
    depth: list[DepthVariantSummary]
    pose: BANetPoseErrors | None
    pose_ids: list[str]
    n_pose_missing: int
    seconds_per_sample: float


@dataclass
class ColmapSummary:
    """COLMAP baseline over the samples: pose errors where target and first reference registered."""

    n_samples: int
    n_all_registered: int
    failures: list[dict[str, Any]]
    pose: BANetPoseErrors | None
    pose_ids: list[str]


@dataclass
class BenchmarkResult:
    """Gathered records with their summaries and the description of the run."""

    benchmark: str
    title: str
    settings: EvalSettings
    header: dict[str, Any]
    notes: list[str]
    records: list[SampleRecord]
    methods: list[MethodSummary]
    colmap: ColmapSummary | None
    world_size: int = 1

    @property
    def skipped(self) -> list[SampleRecord]:
        return [r for r in self.records if r.skipped is not None]

    @property
    def evaluated(self) -> list[SampleRecord]:
        return [r for r in self.records if r.skipped is None]

    def method(self, name: str) -> MethodSummary:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)

    def variant(self, method: str, variant: str) -> DepthVariantSummary:
        """The summary of one method and variant, e.g. ``("dro", "dro_kitti_pp_gt")``."""
        for s in self.method(method).depth:
            if s.variant == variant:
                return s
        raise KeyError(f"{method}/{variant}")

    def to_dict(self, per_frame: bool = True) -> dict[str, Any]:
        """JSON-ready results: settings, counts, skipped samples, per-method depth/pose, COLMAP."""
        out: dict[str, Any] = {
            "benchmark": self.benchmark,
            "title": self.title,
            **self.header,
            "notes": self.notes,
            "post_processing": self.settings.post_process,
            "processes": self.world_size,
            "counts": {"listed": len(self.records), "evaluated": len(self.evaluated),
                       "skipped": len(self.skipped)},
            "skipped": [{"sample_id": r.sample_id, "reason": r.skipped} for r in self.skipped],
            "methods": {},
        }
        for m in self.methods:
            out["methods"][m.name] = {
                **m.description,
                "seconds_per_sample": m.seconds_per_sample,
                "depth": {s.variant: depth_summary_to_dict(s, per_frame) for s in m.depth},
                "pose": None if m.pose is None else pose_errors_to_dict(m.pose, m.pose_ids, per_frame),
                "n_pose_missing": m.n_pose_missing,
            }
        if self.colmap is not None:
            c = self.colmap
            out["colmap"] = {
                "description": "pycolmap SIFT + exhaustive matching + incremental mapping on each sample's views, "
                               "intrinsics fixed; poses up to scale (the BA-Net t_cm error fits the scale)",
                "n_samples": c.n_samples, "n_all_views_registered": c.n_all_registered,
                "n_pose_failures": c.n_samples - (0 if c.pose is None else c.pose.rot_deg.shape[0]),
                "failures": c.failures,
                "pose": None if c.pose is None else pose_errors_to_dict(c.pose, c.pose_ids, per_frame),
            }
        out["per_sample"] = [
            {"index": r.index, "sample_id": r.sample_id, "skipped": r.skipped, "process": r.rank, **r.meta}
            for r in self.records
        ] if per_frame else []
        return to_jsonable(out)  # type: ignore[return-value]


def _errors_from(rows: list[tuple[float, float, float]]) -> BANetPoseErrors | None:
    if not rows:
        return None
    arr = np.asarray(rows, dtype=np.float64)
    return BANetPoseErrors(rot_deg=arr[:, 0], tdir_deg=arr[:, 1], t_cm=arr[:, 2])


def summarize(
    benchmark: str,
    title: str,
    records: list[SampleRecord],
    method_descriptions: Mapping[str, dict[str, Any]],
    settings: EvalSettings,
    header: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    world_size: int = 1,
) -> BenchmarkResult:
    """Means per method and variant over the evaluated samples, pose errors, COLMAP registration counts."""
    evaluated = [r for r in records if r.skipped is None]
    methods = []
    for name, description in method_descriptions.items():
        summaries = []
        for protocol in settings.protocols:
            for suffix in VARIANT_SUFFIXES:
                pp, scaled = suffix.startswith("_pp"), suffix.endswith("_gt")
                if pp and not settings.post_process:
                    continue
                variant = protocol.name + suffix
                rows = [r.depth[name][variant] for r in evaluated if name in r.depth]
                if rows:
                    summaries.append(summarize_variant(rows, protocol, pp, scaled))
        with_pose = [(r.sample_id, r.pose[name]) for r in evaluated if r.pose.get(name) is not None]
        seconds = [r.seconds[name] for r in evaluated if name in r.seconds]
        methods.append(MethodSummary(
            name=name, description=dict(description), depth=summaries,
            pose=_errors_from([e for _, e in with_pose]), pose_ids=[i for i, _ in with_pose],
            n_pose_missing=len(evaluated) - len(with_pose),
            seconds_per_sample=float(np.mean(seconds)) if seconds else math.nan,
        ))
    colmap = None
    if settings.colmap is not None:
        runs = [r for r in evaluated if r.colmap is not None]
        ok = [(r.sample_id, r.colmap["errors"]) for r in runs if r.colmap["errors"] is not None]
        failures = [{"sample_id": r.sample_id, "registered": r.colmap["registered"],
                     "n_views": r.colmap["n_views"], "unregistered": r.colmap["unregistered"],
                     "message": r.colmap["message"]}
                    for r in runs if r.colmap["registered"] < r.colmap["n_views"]]
        colmap = ColmapSummary(len(runs), len(runs) - len(failures), failures,
                               _errors_from([e for _, e in ok]), [i for i, _ in ok])
    return BenchmarkResult(benchmark, title, settings, dict(header or {}), list(notes), records, methods, colmap,
                           world_size)


# ----------------------------------------------------------------------------------------------- outputs
def benchmark_markdown(result: BenchmarkResult) -> str:
    """The Markdown report: notes, one depth table per method (official column order), pose table, skips."""
    lines = [f"# {result.title}", ""]
    lines += [f"- {note}" for note in result.notes]
    counts = f"{len(result.records)} listed, {len(result.evaluated)} evaluated, {len(result.skipped)} skipped"
    lines += [f"- Samples: {counts}" + (" (listed at the end)." if result.skipped else "."), ""]
    for m in result.methods:
        desc = m.description.get("label", "")
        lines += [f"## {m.name}" + (f" — {desc}" if desc else ""), ""]
        d = m.description
        if "image_shape" in d:
            lines += [f"Model `{d.get('model')}` ({d.get('weights') or d.get('source')}), input "
                      f"{d['image_shape'][0]}x{d['image_shape'][1]}, {d.get('iterations')} iterations "
                      f"({d.get('stages')} stages × {d.get('steps_per_stage')} steps), "
                      f"depth in {d.get('depth_units')}.", ""]
        if m.depth:
            lines.append(depth_markdown_table(m.depth, extra_columns=True))
        else:
            lines += ["No sample had ground-truth depth.", ""]
    pose_rows = {m.name: m.pose for m in result.methods if m.pose is not None}
    colmap = result.colmap
    if colmap is not None and colmap.pose is not None:
        pose_rows[f"colmap ({colmap.pose.rot_deg.shape[0]}/{colmap.n_samples} registered)"] = colmap.pose
    if pose_rows:
        lines += ["## Poses (BA-Net/DeepV2D errors of the first reference)", "",
                  "rot = rotation error, t dir = angle between translations, t = 100·‖t_gt − a·t_pred‖ cm "
                  "with the least-squares scale a.", "", pose_markdown_table(pose_rows)]
        missing = {m.name: m.n_pose_missing for m in result.methods if m.n_pose_missing}
        if missing:
            lines += [f"Samples without a pose error (no ground-truth or predicted pose): {missing}.", ""]
    if colmap is not None:
        n_ok = 0 if colmap.pose is None else colmap.pose.rot_deg.shape[0]
        lines += [f"COLMAP baseline: all views registered on {colmap.n_all_registered} of {colmap.n_samples} "
                  f"samples; target and first reference registered on {n_ok}.", ""]
        for f in colmap.failures[:20]:
            lines.append(f"- {f['sample_id']}: registered {f['registered']}/{f['n_views']} "
                         f"(missing {', '.join(f['unregistered']) or '-'}) {f['message']}".rstrip())
        if len(colmap.failures) > 20:
            lines.append(f"- ... {len(colmap.failures) - 20} more in the JSON results")
        lines.append("")
    if result.skipped:
        lines += ["## Skipped samples", "", "| sample | reason |", "|---|---|"]
        lines += [f"| {r.sample_id} | {r.skipped} |" for r in result.skipped]
        lines.append("")
    return "\n".join(lines)


def output_paths(out_json: str | Path) -> tuple[Path, Path, Path]:
    """(results.json, results.md, results_plots/) for ``--out results.json``."""
    out_json = Path(out_json)
    if out_json.suffix.lower() != ".json":
        raise InputError(f"--out {out_json}: the results file must end in .json")
    return out_json, out_json.with_suffix(".md"), out_json.with_name(out_json.stem + "_plots")


def write_benchmark(result: BenchmarkResult, out_json: str | Path,
                    worst_frames: Callable[[str, str, int], list[WorstFrame]] | None = None,
                    plots: bool = True, n_worst: int = 4) -> dict[str, Path]:
    """Write results JSON, the Markdown report and (``plots``) the plots; returns the written paths."""
    json_path, md_path, plot_dir = output_paths(out_json)
    write_json(json_path, result.to_dict())
    write_markdown(md_path, benchmark_markdown(result))
    paths = {"json": json_path, "markdown": md_path}
    if plots and result.evaluated:
        paths.update(write_plots(result, plot_dir, worst_frames, n_worst))
    return paths


def write_plots(result: BenchmarkResult, plot_dir: Path,
                worst_frames: Callable[[str, str, int], list[WorstFrame]] | None, n_worst: int) -> dict[str, Path]:
    """Per method: abs_rel histogram and per-sample curve of the headline variant, worst frames, pose errors."""
    paths: dict[str, Path] = {}
    suffix = result.settings.headline_suffix
    for m in result.methods:
        if m.depth:
            variant = result.settings.protocols[0].name + suffix
            summary = next(s for s in m.depth if s.variant == variant)
            values = np.array([r.metrics["abs_rel"] for r in summary.per_image], dtype=np.float64)
            title = f"{m.name} {variant}: mean abs_rel {summary.mean['abs_rel']:.4g}"
            paths[f"{m.name}_hist"] = plot_dir / f"{m.name}_{variant}_abs_rel_hist.png"
            paths[f"{m.name}_seq"] = plot_dir / f"{m.name}_{variant}_abs_rel_seq.png"
            plot_error_histogram(values, paths[f"{m.name}_hist"], title, "abs_rel")
            plot_errors_along_sequence(values, paths[f"{m.name}_seq"], title, "abs_rel", xlabel="sample")
            if worst_frames is not None and n_worst > 0:
                frames = worst_frames(m.name, variant, n_worst)
                if frames:
                    paths[f"{m.name}_worst"] = plot_dir / f"{m.name}_{variant}_worst.png"
                    plot_worst_frames(frames, paths[f"{m.name}_worst"], f"{m.name}: worst frames by abs_rel "
                                      f"({variant})")
        if m.pose is not None:
            paths[f"{m.name}_rot"] = plot_dir / f"{m.name}_pose_rot_hist.png"
            plot_error_histogram(m.pose.rot_deg, paths[f"{m.name}_rot"],
                                 f"{m.name}: rotation error (mean {m.pose.mean()['rot_deg']:.3g} deg)", "deg")
    return paths


# ----------------------------------------------------------------------------------------------- worst frames
@dataclass
class WorstFrame:
    """One frame for the worst-frames figure: image [H,W,3], GT [Hg,Wg], prediction as scored [Hg,Wg]."""

    sample_id: str
    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray
    valid: np.ndarray
    value: float


class WorstFrameRenderer(Generic[S]):
    """Re-runs a method on the worst samples of a variant (rank 0 only) to draw their depth and error maps."""

    def __init__(self, result: BenchmarkResult, specs: Sequence[S], load: Callable[[S], EvalSample],
                 methods: Mapping[str, Predictor]) -> None:
        self.result, self.specs, self.load, self.methods = result, specs, load, methods

    def __call__(self, method: str, variant: str, n: int) -> list[WorstFrame]:
        if method not in self.methods:
            return []
        summary = self.result.variant(method, variant)
        by_id = {r.sample_id: r for r in self.result.records}
        rows = sorted((r for r in summary.per_image if r.n_valid > 0), key=lambda r: -r.metrics["abs_rel"])[:n]
        frames = []
        for row in rows:
            record = by_id[row.frame_id]
            sample = self.load(self.specs[record.index])
            out = self.methods[method](sample)
            pp = summary.post_processed
            depth = post_processed_depth(out, self.methods[method](flip_sample(sample))) if pp else _as_map(out.depth)
            gt = np.asarray(sample.gt_depth, dtype=np.float64)
            pred = resize_depth_to(depth, gt.shape)[0, 0].numpy() * (row.scale if summary.median_scaled else 1.0)
            pred = np.clip(pred, summary.protocol.min_depth, summary.protocol.max_depth)
            frames.append(WorstFrame(row.frame_id or "", sample.target, gt, pred,
                                     valid_mask(gt, summary.protocol), row.metrics["abs_rel"]))
        return frames


def plot_worst_frames(frames: Sequence[WorstFrame], path: str | Path, title: str) -> None:
    """Rows of image | ground truth | prediction | abs-rel error map, one row per frame."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from dro_sfm.data.atomic import atomic_path

    n = len(frames)
    fig = Figure(figsize=(16.0, 2.6 * n + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 4, squeeze=False)
    for row, f in zip(axes, frames, strict=True):
        vmax = float(np.percentile(f.gt[f.valid], 98)) if f.valid.any() else float(np.max(f.pred))
        err = np.full(f.gt.shape, np.nan)
        err[f.valid] = np.abs(f.gt[f.valid] - f.pred[f.valid]) / f.gt[f.valid]
        gt_show = np.where(f.valid, f.gt, np.nan)
        row[0].imshow(f.image)
        row[0].set_title(f"{f.sample_id}\nabs_rel {f.value:.4g}", fontsize=8)
        # Sparse LiDAR ground truth is drawn as dots so that it stays visible at figure scale.
        ys, xs = np.nonzero(f.valid)
        if f.valid.mean() < 0.3:
            row[1].imshow(np.full(f.gt.shape, 0.85), cmap="gray", vmin=0, vmax=1)
            row[1].scatter(xs, ys, c=f.gt[ys, xs], s=0.3, cmap="magma_r", vmin=0, vmax=vmax)
        else:
            row[1].imshow(gt_show, cmap="magma_r", vmin=0, vmax=vmax)
        row[1].set_title("ground truth (m)", fontsize=8)
        im = row[2].imshow(f.pred, cmap="magma_r", vmin=0, vmax=vmax)
        row[2].set_title("prediction as scored (m)", fontsize=8)
        fig.colorbar(im, ax=row[2], fraction=0.03)
        if f.valid.mean() < 0.3:
            row[3].imshow(np.full(f.gt.shape, 0.85), cmap="gray", vmin=0, vmax=1)
            sc = row[3].scatter(xs, ys, c=err[ys, xs], s=0.3, cmap="inferno", vmin=0, vmax=0.5)
        else:
            sc = row[3].imshow(err, cmap="inferno", vmin=0, vmax=0.5)
        fig.colorbar(sc, ax=row[3], fraction=0.03)
        row[3].set_title("|gt - pred| / gt", fontsize=8)
        for ax in row:
            ax.set_axis_off()
    fig.suptitle(title)
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


# ----------------------------------------------------------------------------------------------- benchmark
def run_benchmark(
    benchmark: str,
    title: str,
    specs: Sequence[S],
    load: Callable[[S], EvalSample],
    methods: Mapping[str, Predictor],
    descriptions: Mapping[str, dict[str, Any]],
    settings: EvalSettings,
    header: dict[str, Any],
    notes: Sequence[str],
    ctx: DistContext,
    out: str | Path | None = None,
    plots: bool = True,
    sample_id: Callable[[S], str] = str,
) -> BenchmarkResult:
    """Evaluate ``specs`` across ``ctx``'s processes and summarize; rank 0 writes the results when ``out`` is given."""
    records = evaluate_samples(specs, load, methods, settings, ctx, sample_id=sample_id)
    result = summarize(benchmark, title, records, descriptions, settings, header, notes, ctx.world_size)
    if out is not None and ctx.is_main:
        write_benchmark(result, out, WorstFrameRenderer(result, specs, load, methods), plots=plots)
    return result


# ----------------------------------------------------------------------------------------------- models
def model_methods(weights: str, device: str = "cpu", image_shape: tuple[int, int] | None = None,
                  stages: int | None = None, steps_per_stage: int | None = None,
                  baseline: bool = False) -> tuple[dict[str, Predictor], dict[str, dict[str, Any]]]:
    """Predictors and descriptions: ``dro`` (the model as configured) and, with ``baseline``, ``dro_0iter``."""
    from dro_sfm.models.predict import DroModel
    from dro_sfm.models.weights import resolve_weights

    path = resolve_weights(weights)
    model = DroModel.load(path, map_location="cpu")
    main = ModelPredictor(model, image_shape, stages, steps_per_stage, device)
    methods: dict[str, Predictor] = {"dro": main}
    descriptions = {"dro": {"label": "DRO, full iterations", "weights": str(path), **main.describe()}}
    if baseline:
        initial = ModelPredictor(model, image_shape, 0, None, device)
        methods["dro_0iter"] = initial
        descriptions["dro_0iter"] = {"label": "same model, 0 iterations (initial depth and pose heads)",
                                     "weights": str(path), **initial.describe()}
    return methods, descriptions
