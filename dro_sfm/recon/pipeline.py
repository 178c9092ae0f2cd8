"""The sequence pipeline behind ``dro-sfm reconstruct``: frames in, a run directory out.

Stages, each streamed (memory does not grow with the number of frames):

1. read: decode frames (image folder, video or dataset layout), check sizes and intrinsics, resize to the
   processing resolution, drop frames with too little motion (keyframe selection, ``windows.py``);
2. encode: each keyframe's feature maps are computed once (``DroNet.encode``) when it enters the sliding
   window and reused by every window it belongs to;
3. solve: one ``forward_full`` per target with its ``refs`` neighbours: depth, ``T_ref_from_tgt``, cost map;
4. confidence: feature-metric cost and depth consistency with the previous keyframe (``confidence.py``);
5. write: per-frame files through ``RunWriter`` plus a small record per frame in ``windows/`` (its
   relative poses, weight and costs: what ``--resume`` needs to continue without recomputing);
6. pose graph: consecutive estimates combined, chained, refined with Open3D (``trajectory.py``);
7. finalize: cameras.json with the refined poses, fusion (cloud, TSDF mesh), COLMAP, nerfstudio, summary.

The per-window model is replaceable: anything implementing ``WindowPredictor`` (a callable from a target
slot and its reference slots to a ``WindowPrediction``) can be passed to ``reconstruct``; the tests use
``GroundTruthPredictor`` to check the plumbing with exact depth and poses.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from dro_sfm.data.atomic import atomic_write_text
from dro_sfm.data.types import Frame
from dro_sfm.errors import ConfigError, DroSfmError, InputError, OutputError
from dro_sfm.recon.confidence import Neighbour, frame_confidence
from dro_sfm.recon.export import EXPORT_TARGETS, ExportReport, RunWriter
from dro_sfm.recon.fusion import FusionOptions
from dro_sfm.recon.intrinsics import (
    Intrinsics,
    frame_intrinsics_source,
    horizontal_fov_deg,
    parse_intrinsics_option,
    scale_intrinsics,
    validate_intrinsics,
)
from dro_sfm.recon.photometric import PhotometricRefiner
from dro_sfm.recon.run_dir import FRAME_DIRS, CameraRecord, RunLayout, RunRecord, frame_name, read_npy
from dro_sfm.recon.trajectory import TrajectoryBuilder
from dro_sfm.recon.windows import (
    FrameResult,
    FrameSlot,
    KeyframeSelector,
    SlidingWindow,
    window_indices,
)

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "assets" / "sample_indoor"
WINDOWS_DIR = "windows"
CONFIG_RECORD = "config.json"
FUSION_KINDS = ("tsdf", "points", "none")
POSE_REFINE_KINDS = ("photometric", "none")
SOLVERS = ("unrolled", "deq")

# Layout readers' keyword arguments (dro_sfm.data.formats): which of the pipeline's options they take.
_READER_STEP = ("folder", "video", "scannet", "tum", "7scenes")
_READER_INTRINSICS = ("folder", "video", "tum", "7scenes")


# --- options and results -------------------------------------------------------------------------------------


@dataclass
class ReconstructOptions:
    """Options of ``reconstruct`` (the CLI flags of ``dro-sfm reconstruct``)."""

    weights: str = "default"
    intrinsics: str | None = None  # "fx,fy,cx,cy" or a file; None: calibration / EXIF / default
    height: int | None = None  # processing resolution; None: the model's training shape
    width: int | None = None
    step: int = 1  # use every step-th input frame
    min_motion: float = 1.0  # keyframe selection: mean displacement (px at processing size); 0 keeps all
    refs: int = 2  # reference views around each target
    fusion: str = "tsdf"  # tsdf (cloud + mesh), points (cloud only), none
    conf_threshold: float = 0.5
    device: str = "cpu"
    resume: bool = False
    overwrite: bool = False
    skip_bad: bool = False
    max_frames: int | None = None  # at most this many keyframes
    layout: str | None = None  # force an input layout (default: detected)
    pose_graph: bool = True
    pose_refine: str = "photometric"  # photometric: fuse RGB-D odometry on the predicted depth (recon/photometric.py)
    stages: int | None = None  # optimiser iterations (default: the model's)
    steps_per_stage: int | None = None
    solver: str = "unrolled"  # unrolled: the model's fixed schedule; deq: fixed-point solve (docs/deq.md)
    deq_tol: float | None = None  # deq only: stopping tolerance (default: the model's deq.tol)
    deq_max_steps: int | None = None  # deq only: step budget per window (default: the model's deq.max_steps)
    warm_start: bool = True  # deq only: start each window from the previous window's solution
    warm_start_poses: bool = False  # deq only: hand on the composed poses and pose GRU states too (docs/deq.md §5)

    def validate(self) -> None:
        if self.step < 1:
            raise ConfigError(f"--step must be >= 1, got {self.step}")
        if self.refs < 2 or self.refs % 2:
            # Centred windows: an even count puts the previous keyframe in every target's window.
            raise ConfigError(f"--refs must be an even number >= 2 (2 or 4), got {self.refs}")
        if self.pose_refine not in POSE_REFINE_KINDS:
            raise ConfigError(f"pose_refine must be one of {', '.join(POSE_REFINE_KINDS)}, not {self.pose_refine!r}")
        if self.fusion not in FUSION_KINDS:
            raise ConfigError(f"--fusion must be one of {', '.join(FUSION_KINDS)}, got {self.fusion!r}")
        if (self.height is None) != (self.width is None):
            raise ConfigError("give both --height and --width, or neither (the model's shape is used)")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 16 or value % 16):
                raise ConfigError(f"--{name} must be a positive multiple of 16 (the network's stride), got {value}")
        if self.max_frames is not None and self.max_frames < 2:
            raise ConfigError(f"--max-frames must be at least 2, got {self.max_frames}")
        if not self.min_motion >= 0:
            raise ConfigError(f"--min-motion must be >= 0 pixels, got {self.min_motion}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it; give only one")
        self._validate_solver()
        FusionOptions(conf_threshold=self.conf_threshold).validate()

    def _validate_solver(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError(f"--solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        deq_only = [flag for flag, given in (("--deq-tol", self.deq_tol is not None),
                                             ("--deq-max-steps", self.deq_max_steps is not None),
                                             ("--no-warm-start", not self.warm_start),
                                             ("--warm-start-poses", self.warm_start_poses)) if given]
        if deq_only and self.solver != "deq":
            raise ConfigError(f"{', '.join(deq_only)} appl{'ies' if len(deq_only) == 1 else 'y'} to --solver deq "
                              "only; add --solver deq or drop them")
        if self.deq_max_steps is not None and (self.stages is not None or self.steps_per_stage is not None):
            raise ConfigError("give the DEQ step budget either as --deq-max-steps or as --stages x "
                              "--steps-per-stage, not both")
        if self.deq_tol is not None and not self.deq_tol >= 0:
            raise ConfigError(f"--deq-tol must be >= 0, got {self.deq_tol}")
        if self.deq_max_steps is not None and self.deq_max_steps < 1:
            raise ConfigError(f"--deq-max-steps must be >= 1, got {self.deq_max_steps}")
        if self.warm_start_poses and not self.warm_start:
            raise ConfigError("--warm-start-poses and --no-warm-start contradict each other; give one")


@dataclass
class ReconstructionResult:
    """What ``reconstruct`` did: where the outputs are, how many frames, accuracy when ground truth exists."""

    out_dir: Path
    n_input_frames: int
    n_keyframes: int
    n_resumed: int
    intrinsics: Intrinsics
    processing_hw: tuple[int, int]
    model_name: str
    trained: bool
    report: ExportReport
    timings: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)
    peak_window_frames: int = 0
    window_capacity: int = 0
    poses: np.ndarray | None = field(default=None, repr=False)  # [N,4,4] final camera-to-world
    solver: dict = field(default_factory=dict)  # iterations per frame (run.json results.solver); {} if unknown

    @property
    def frames_per_second(self) -> float:
        """Keyframes per second of wall time, end to end (reading to the last export)."""
        total = self.timings.get("total", 0.0)
        return self.n_keyframes / total if total > 0 else float("nan")


# --- predictors ----------------------------------------------------------------------------------------------


@dataclass
class WindowPrediction:
    """One window's output at the processing resolution: target depth [H,W] (metres, 0 = invalid),
    T_ref_from_tgt [N,4,4] in the order of the references, cost map [h,w] or None, per-step costs [S],
    and what the optimiser did (``solver``: mode, steps used, convergence; None when not an optimiser)."""

    depth: np.ndarray
    T_ref_from_tgt: np.ndarray
    cost_map: np.ndarray | None = None
    step_costs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    solver: dict | None = None


class WindowPredictor:
    """The per-window model: ``predictor(target, refs) -> WindowPrediction``.

    ``encode(slot)`` returns per-frame data computed once when a frame enters the window (stored in
    ``slot.features``); ``identity`` is recorded so that ``--resume`` refuses to mix two predictors.
    """

    name = "predictor"
    trained = True
    image_shape: tuple[int, int] | None = None

    def encode(self, slot: FrameSlot) -> Any:
        return None

    def begin_sequence(self) -> None:
        """A new sequence starts: forget anything carried over from the previous window (warm starts)."""

    def __call__(self, target: FrameSlot, refs: Sequence[FrameSlot]) -> WindowPrediction:
        raise NotImplementedError

    @property
    def identity(self) -> str:
        return self.name


class DroPredictor(WindowPredictor):
    """DRO on each window. With ``reuse_features`` each frame's fnet / depth-context maps are computed once
    (eval mode, so valid); without, every window recomputes them as the official ``infer_video.py`` does.

    ``solver="unrolled"`` runs the model's fixed schedule (``stages`` x ``steps_per_stage``); ``"deq"`` the
    fixed-point solve of ``dro_sfm.models.deq`` with the same weights, stopping at ``deq.tol`` within the
    budget (``deq.max_steps``, or stages x steps_per_stage when given), each window starting from the
    previous window's solution re-projected to its target when ``warm_start`` (docs/deq.md §5): its depth
    and depth GRU state, and with ``warm_poses`` also its composed poses and pose GRU states.
    """

    def __init__(self, model: Any, reuse_features: bool = True, stages: int | None = None,
                 steps_per_stage: int | None = None, solver: str = "unrolled", deq: Any = None,
                 warm_start: bool = True, warm_poses: bool = False):
        if solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        self.model = model
        self.net = model.net.eval()
        self.device = model.device
        self.reuse_features = reuse_features
        self.stages, self.steps_per_stage = stages, steps_per_stage
        self.solver = solver
        self.deq_config = deq if deq is not None else self.net.config.deq  # a DeqConfig
        self.warm_start = warm_start
        self.warm_poses = warm_poses
        self._warm: Any = None  # dro_sfm.models.deq.SequenceWarmStart, made on the first DEQ window
        self.name = model.info.name
        self.trained = bool(model.info.trained)
        self.image_shape = tuple(model.info.image_shape)

    @property
    def identity(self) -> str:
        base = f"{self.model.info.name}:{self.model.info.source or 'in-memory'}"
        # --resume must not continue a DEQ run with unrolled windows (or back); unrolled keeps its old identity.
        return base + ":deq" if self.solver == "deq" else base

    def encode(self, slot: FrameSlot) -> tuple[Any, Any]:
        """(image tensor [1,3,H,W] in [0,1] on the device, Features or None)."""
        import torch

        with torch.no_grad():
            image = torch.from_numpy(np.array(slot.image)).permute(2, 0, 1)[None].float().div(255.0)
            image = image.to(self.device)
            return image, self.net.encode(image) if self.reuse_features else None

    def begin_sequence(self) -> None:
        if self._warm is not None:
            self._warm.reset()

    def __call__(self, target: FrameSlot, refs: Sequence[FrameSlot]) -> WindowPrediction:
        import torch

        from dro_sfm.geometry.pose import euler_vec_to_matrix
        from dro_sfm.geometry.warp import inv2depth

        K = torch.from_numpy(target.K).float()[None].to(self.device)
        features = (target.features[1], [r.features[1] for r in refs]) if self.reuse_features else None
        with torch.no_grad():
            if self.solver == "deq":
                out, solver = self._solve_deq(target, refs, K, features)
            else:
                out = self._solve_unrolled(target, refs, K, features)
                solver = {"mode": "unrolled", "steps": int(out.step_costs.numel())}
            depth = inv2depth(out.inv_depths[-1])[0, 0].float().cpu().numpy()
            T = euler_vec_to_matrix(out.poses[-1][0].double()).cpu().numpy()
        cost = out.cost_map[0, 0].float().cpu().numpy() if out.cost_map is not None else None
        return WindowPrediction(depth, T, cost, out.step_costs.float().cpu().numpy(), solver)

    def _solve_unrolled(self, target: FrameSlot, refs: Sequence[FrameSlot], K: Any, features: Any) -> Any:
        """The model's unrolled schedule (a model configured for DEQ is switched for the call only)."""
        config = self.net.config
        if config.solver != "unrolled":
            self.net.config = config.with_(solver="unrolled")
        try:
            return self.net.forward_full(target.features[0], [r.features[0] for r in refs], K,
                                         stages=self.stages, steps_per_stage=self.steps_per_stage,
                                         features=features, return_cost_map=True)
        finally:
            self.net.config = config

    def _solve_deq(self, target: FrameSlot, refs: Sequence[FrameSlot], K: Any, features: Any) -> tuple[Any, dict]:
        """Fixed-point solve of the window, warm-started from the previous one; (DroOutput, solver record)."""
        from dro_sfm.models import deq as deq_module  # looked up per call so that tests can observe it

        if self._warm is None:
            self._warm = deq_module.SequenceWarmStart(self.net.config, warm_poses=self.warm_poses)
        ref_ids = [r.index for r in refs]
        init, start = (self._warm.initial_state(target.index, ref_ids, K) if self.warm_start
                       else (None, "cold: warm start disabled"))
        out = deq_module.deq_forward(self.net, target.features[0], [r.features[0] for r in refs], K,
                                     stages=self.stages, steps_per_stage=self.steps_per_stage, init=init,
                                     features=features, return_cost_map=True, deq_config=self.deq_config,
                                     warn=False)
        if self.warm_start:
            self._warm.remember(target.index, ref_ids, out)
        stats = out.extras.get("deq")
        if stats is None:  # a zero budget: the initial heads only
            return out, {"mode": "deq", "steps": 0, "budget": 0, "tol": self.deq_config.tol, "converged": False,
                         "residual": None, "start": start}
        logger.debug("frame %d: %s (%s start)", target.index, stats.summary(), start)
        return out, {"mode": "deq", "steps": int(stats.steps), "budget": int(stats.max_steps), "tol": stats.tol,
                     "converged": bool(stats.converged),
                     "residual": _finite_or_none(float(stats.judged_residual.max())),
                     "returned_state_checked": stats.returned_residual is not None, "solver": stats.solver,
                     "start": start}


class GroundTruthPredictor(WindowPredictor):
    """Exact depth and relative poses from the frames' ground truth (synthetic or RGB-D datasets): checks
    the pipeline's plumbing, fusion and exports independently of any model."""

    name = "ground-truth"

    def __call__(self, target: FrameSlot, refs: Sequence[FrameSlot]) -> WindowPrediction:
        for slot in (target, *refs):
            if slot.gt_pose is None or (slot is target and slot.gt_depth is None):
                raise InputError(f"frame {slot.name} has no ground-truth depth/pose; the ground-truth predictor "
                                 "needs an input that carries them (synthetic or RGB-D dataset)")
        T_world_from_tgt = target.gt_pose
        T = np.stack([np.linalg.inv(r.gt_pose) @ T_world_from_tgt for r in refs])  # type: ignore[arg-type]
        return WindowPrediction(target.gt_depth.astype(np.float32), T)  # type: ignore[union-attr]


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


def load_predictor(options: ReconstructOptions) -> DroPredictor:
    """The DRO predictor for ``options.weights`` on ``options.device`` (``default``: the shipped model, or an
    untrained small model with a warning when this installation has none)."""
    import torch

    from dro_sfm.models.predict import load_model

    try:
        device = torch.device(options.device)
    except RuntimeError as err:
        raise ConfigError(f"--device {options.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {options.device}: this torch build or machine has no CUDA; use --device cpu")
    model = load_model(options.weights, device)
    deq = None
    if options.solver == "deq" and (options.deq_tol is not None or options.deq_max_steps is not None):
        base = model.net.config.deq
        deq = replace(base, tol=base.tol if options.deq_tol is None else options.deq_tol,
                      max_steps=base.max_steps if options.deq_max_steps is None else options.deq_max_steps)
    return DroPredictor(model, stages=options.stages, steps_per_stage=options.steps_per_stage,
                        solver=options.solver, deq=deq, warm_start=options.warm_start,
                        warm_poses=options.warm_start_poses)


# --- input ---------------------------------------------------------------------------------------------------

GroundTruthLookup = Callable[[Frame], tuple[np.ndarray | None, np.ndarray | None]]


@dataclass
class InputSource:
    """An opened input: its frames (streamed once), layout name, description, and frame count if known."""

    frames: Iterable[Frame]
    layout: str
    description: str
    count: int | None
    intrinsics: Intrinsics | None  # the user's --intrinsics (overrides every frame's K)


def open_input(source: str | os.PathLike | Iterable[Frame], options: ReconstructOptions) -> InputSource:
    """Open an image folder, video, dataset layout, or an iterable of ``Frame`` objects, and check what can be
    checked before any output is written: existence, layout, image sizes, readability, frame count."""
    from dro_sfm.data.formats import detect_layout, open_sequence

    override = parse_intrinsics_option(options.intrinsics) if options.intrinsics else None
    if not isinstance(source, (str, os.PathLike)):
        frames = source if options.step == 1 else itertools.islice(source, 0, None, options.step)
        count = _known_length(source)
        count = None if count is None else len(range(0, count, options.step))
        return InputSource(frames, "frames", type(source).__name__, count, override)
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or directory; give an image folder, a video file or a dataset folder")
    layout = options.layout or detect_layout(path)
    kwargs: dict[str, Any] = {}
    if layout in _READER_STEP:
        kwargs["step"] = options.step
    if override is not None and layout in _READER_INTRINSICS:
        kwargs["intrinsics"] = override.K
    if layout == "folder":
        kwargs["skip_bad"] = options.skip_bad
    elif options.skip_bad:
        logger.warning("--skip-bad applies to image folders only; %s is read as %s", path, layout)
    try:
        reader = open_sequence(path, layout, **kwargs)
        count = _preflight_folder(reader, path) if layout == "folder" else _known_length(reader)
    except InputError as err:
        if layout == "folder" and not options.skip_bad and "image" in str(err) and "read" in str(err):
            raise InputError(f"{err}; or pass --skip-bad to skip unreadable images with a warning") from err
        raise
    frames: Iterable[Frame] = reader
    if layout not in _READER_STEP and options.step > 1:
        frames = itertools.islice(reader, 0, None, options.step)
        count = None if count is None else len(range(0, count, options.step))
    if count is not None and count < 2:
        raise InputError(f"{path}: only {count} usable frame{'s' if count != 1 else ''} (after --step "
                         f"{options.step}); a reconstruction needs at least two images of the same scene")
    return InputSource(frames, layout, str(path), count, override)


def _known_length(obj: object) -> int | None:
    try:
        return len(obj)  # type: ignore[arg-type]
    except TypeError:
        return None


def _preflight_folder(reader: Iterable[Frame], path: Path) -> int:
    """Decode every image of a folder once before any output exists, so that a corrupt file stops the run
    with nothing written (with --skip-bad the reader skips it with a warning). Returns the usable count."""
    count = 0
    for _ in tqdm(reader, desc="checking images", unit="img", disable=None, leave=False):
        count += 1
    return count


# --- sample sequence -----------------------------------------------------------------------------------------


def sample_path() -> Path:
    """The sample sequence shipped in the package (an image folder with intrinsics.txt and ground truth)."""
    if not (SAMPLE_DIR / "intrinsics.txt").is_file():
        raise InputError(f"the sample sequence is missing from this installation ({SAMPLE_DIR}); "
                         "regenerate it with `python benchmarks/make_sample.py` or reinstall dro-sfm")
    return SAMPLE_DIR


class FolderGroundTruth:
    """Ground truth beside an image folder: ``groundtruth/poses.txt`` (KITTI format, camera-to-world, one
    line per image in name order) and ``groundtruth/depth/<image stem>.png`` (uint16 millimetres)."""

    def __init__(self, folder: str | os.PathLike):
        from dro_sfm.data.images import list_images

        self.folder = Path(folder)
        self.gt_dir = self.folder / "groundtruth"
        names = [p.stem for p in list_images(self.folder)]
        rows = np.loadtxt(self.gt_dir / "poses.txt", ndmin=2)
        if rows.shape != (len(names), 12):
            raise InputError(f"{self.gt_dir / 'poses.txt'}: expected {len(names)} lines of 12 numbers, "
                             f"got {rows.shape}")
        poses = np.tile(np.eye(4), (len(names), 1, 1))
        poses[:, :3, :4] = rows.reshape(-1, 3, 4)
        self.poses = dict(zip(names, poses))

    def __call__(self, frame: Frame) -> tuple[np.ndarray | None, np.ndarray | None]:
        from dro_sfm.data.images import depth_from_uint16, read_uint16_png

        depth_path = self.gt_dir / "depth" / f"{frame.name}.png"
        depth = depth_from_uint16(read_uint16_png(depth_path), 1000.0) if depth_path.is_file() else None
        return depth, self.poses.get(frame.name)


# --- output directory ----------------------------------------------------------------------------------------


class _OutputDir:
    """The run directory before the first frame is written: checked (and created) early, removed again if the
    run fails before writing anything, so a bad input leaves nothing behind."""

    def __init__(self, path: str | os.PathLike, resume: bool, overwrite: bool):
        self.root = Path(path).expanduser()
        self.created: list[Path] = []
        if self.root.exists() and not self.root.is_dir():
            raise OutputError(f"output directory {self.root} is a file; choose a directory path for the run")
        layout = RunLayout(self.root)
        has_run = self.root.is_dir() and (
            layout.cameras_json.exists() or any((self.root / d).is_dir() and any((self.root / d).iterdir())
                                                for d in (*FRAME_DIRS, WINDOWS_DIR)))
        if has_run and not (resume or overwrite):
            raise OutputError(f"output directory {self.root} already contains a dro-sfm run; pass --resume to "
                              "continue it, --overwrite to replace it, or choose an empty directory")
        missing = []
        p = self.root
        while not p.exists():
            missing.append(p)
            if p.parent == p:
                break
            p = p.parent
        if p.exists() and not p.is_dir():
            raise OutputError(f"cannot create output directory {self.root}: {p} is a file")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create output directory {self.root} ({err.strerror}); "
                              "choose a writable location") from err
        self.created = list(reversed(missing))
        probe = self.root / f".dro_sfm_write_test_{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            self.cleanup()
            raise OutputError(f"output directory {self.root} is not writable ({err.strerror}); "
                              "fix its permissions or choose another path") from err

    def cleanup(self) -> None:
        """Remove the directories this run created, if they are still empty."""
        for p in reversed(self.created):
            try:
                p.rmdir()
            except OSError:
                break
        self.created = []


class _PipelineWriter(RunWriter):
    """``RunWriter`` that can also continue an interrupted run: with ``resume`` an existing run directory is
    accepted and frames already on disk are registered with ``adopt_frame`` instead of being rewritten."""

    def __init__(self, out_dir: Path, options: FusionOptions, resume: bool, overwrite: bool):
        if not resume:
            super().__init__(out_dir, overwrite=overwrite, options=options)
            return
        # RunWriter's state without its refusal to open a directory that holds a run.
        self._init_state(Path(out_dir), options)

    def adopt_frame(self, index: int, hw: tuple[int, int], K: np.ndarray, T_world_from_cam: np.ndarray,
                    timestamp: float, source: str, depth: np.ndarray) -> None:
        """Register frame ``index`` whose files a previous run wrote (depth [H,W] read back from disk)."""
        if self._size is None:
            self._size = hw
        elif hw != self._size:
            raise InputError(f"{self.root}: resumed frame {index} is {hw[1]}x{hw[0]}, earlier ones "
                             f"{self._size[1]}x{self._size[0]}; restart with --overwrite")
        self._max_depth = max(self._max_depth, float(np.max(depth, initial=0.0)))
        name = frame_name(index)
        self._records[index] = CameraRecord(index=index, name=name, K=np.asarray(K, np.float64),
                                            T_world_from_cam=np.asarray(T_world_from_cam, np.float64),
                                            timestamp=float(timestamp), source=source)


def _record_path(root: Path, index: int) -> Path:
    return root / WINDOWS_DIR / f"{frame_name(index)}.json"


def _frame_done(root: Path, index: int) -> bool:
    layout = RunLayout(root)
    name = frame_name(index)
    files = [_record_path(root, index), layout.frame_file("depth", name, "npy"),
             layout.frame_file("confidence", name, "npy"), layout.frame_file("images", name, "png")]
    return all(p.is_file() for p in files)


def _clear_records(root: Path, keep_below: int = 0) -> None:
    """Remove per-frame records (and, for indices >= keep_below, per-frame files) of an earlier run."""
    folder = root / WINDOWS_DIR
    if folder.is_dir():
        for p in folder.glob("[0-9]" * 6 + ".json"):
            if int(p.stem) >= keep_below:
                p.unlink()
    if keep_below > 0:
        for kind in FRAME_DIRS:
            d = root / kind
            if d.is_dir():
                for p in d.iterdir():
                    if p.stem.isdigit() and len(p.stem) == 6 and int(p.stem) >= keep_below:
                        p.unlink()


# --- the streaming engine ------------------------------------------------------------------------------------


@dataclass
class _FrameMetrics:
    """Depth errors of one frame against ground truth (valid pixels only)."""

    abs_rel: float
    abs_rel_median_scaled: float


def depth_errors_vs_gt(pred: np.ndarray, gt: np.ndarray) -> _FrameMetrics | None:
    """AbsRel of pred [H,W] against gt [H,W], raw and after median scaling (median of gt/pred)."""
    valid = (gt > 0) & np.isfinite(gt) & (pred > 0) & np.isfinite(pred)
    if not valid.any():
        return None
    g, p = gt[valid].astype(np.float64), pred[valid].astype(np.float64)
    scale = float(np.median(g / p))
    return _FrameMetrics(float(np.mean(np.abs(p - g) / g)), float(np.mean(np.abs(scale * p - g) / g)))


class SequenceEngine:
    """Runs the predictor over sliding windows of a keyframe stream and writes each frame once it is final.

    Frames enter with ``push`` (in keyframe order) and leave the bounded window as soon as no later window
    needs them. A frame is written when it has been a target and a neighbour has too (its consistency check
    needs the neighbour's depth): frame 0 after target 1, every later frame right after its own window.
    """

    def __init__(self, predictor: WindowPredictor, n_refs: int, writer_factory: Callable[[], _PipelineWriter],
                 record: RunRecord, done: Callable[[int], dict | None] | None = None,
                 refiner: PhotometricRefiner | None = None):
        self.predictor = predictor
        self.refiner = refiner
        self.n_refs = n_refs
        self.window = SlidingWindow(n_refs + 1)
        self.trajectory = TrajectoryBuilder()
        self.record = record
        self._writer_factory = writer_factory
        self.writer: _PipelineWriter | None = None
        self._done = done or (lambda index: None)
        self.next_target = 0
        self.step_costs: list[np.ndarray] = []
        self.gt_poses: list[np.ndarray | None] = []
        self.depth_metrics: list[_FrameMetrics] = []
        self.solver_records: list[tuple[int, dict]] = []  # (keyframe index, WindowPrediction.solver)
        self.n_not_converged = 0
        self.n_resumed = 0
        predictor.begin_sequence()

    def push(self, slot: FrameSlot) -> None:
        """Add the next keyframe; runs every window that became complete."""
        previous = self._done(slot.index)
        if previous is not None:
            self._adopt(slot, previous)
        evicted = self.window.push(slot)
        if evicted is not None and not evicted.written:
            raise RuntimeError(f"keyframe {evicted.index} left the window before it was written")
        del evicted, slot  # hold nothing outside the window while the windows run
        self._run_ready(final=False)

    def finish(self) -> None:
        """No more frames: run the remaining windows (shifted to end at the last frame) and write them."""
        if self.window.newest < 1:
            raise InputError("only one frame to reconstruct; a reconstruction needs at least two images of the "
                             "same scene with some camera motion (lower --min-motion or --step?)")
        self._run_ready(final=True)
        unwritten = [s.index for s in self.window if not s.written]
        if unwritten:
            raise RuntimeError(f"keyframes {unwritten} were never written")

    # -- internals
    def _run_ready(self, final: bool) -> None:
        while True:
            ids = window_indices(self.next_target, self.n_refs, self.window.newest, final)
            if ids is None:
                break
            target = self.window.get(self.next_target)
            if target.result is None:
                self._solve(target, [self.window.get(i) for i in ids if i != target.index])
            self.next_target += 1
            self._write_ready(final)

    def _features(self, slot: FrameSlot) -> None:
        if not slot.encoded:
            with self.record.stage("encode"):
                slot.features = self.predictor.encode(slot)
            slot.encoded = True

    def _solve(self, target: FrameSlot, refs: list[FrameSlot]) -> None:
        for s in (target, *refs):
            self._features(s)
        with self.record.stage("solve"):
            pred = self.predictor(target, refs)
        T = np.asarray(pred.T_ref_from_tgt, dtype=np.float64)
        if T.shape != (len(refs), 4, 4):
            raise RuntimeError(f"predictor returned poses {T.shape} for {len(refs)} references")
        depth = np.asarray(pred.depth, dtype=np.float32)
        if depth.shape != target.hw:
            raise RuntimeError(f"predictor returned depth {depth.shape} for a {target.hw} frame")
        target.result = FrameResult(depth=depth, ref_indices=[r.index for r in refs], T_ref_from_tgt=T,
                                    cost_map=None if pred.cost_map is None else np.asarray(pred.cost_map),
                                    step_costs=np.asarray(pred.step_costs, dtype=np.float64))
        if pred.solver is not None:
            target.extras["solver"] = dict(pred.solver)
            self._check_converged(target.index, pred.solver)

    def _check_converged(self, index: int, solver: dict) -> None:
        """Warn on the first window whose fixed-point solve stopped short of its tolerance; count the rest."""
        if solver.get("converged", True):
            return
        self.n_not_converged += 1
        if self.n_not_converged == 1:
            residual = solver.get("residual")
            logger.warning("frame %d: the DEQ solve did not converge (residual %s > tol %g after %d/%d steps); the "
                           "lowest-residual state is used. Later failures are only counted (run.json results.solver)"
                           "; raise --deq-max-steps or loosen --deq-tol", index,
                           "n/a" if residual is None else f"{residual:.3g}", solver.get("tol", float("nan")),
                           solver.get("steps", 0), solver.get("budget", 0))

    def _write_ready(self, final: bool) -> None:
        for slot in self.window:
            if slot.written:
                continue
            if slot.result is None:
                break
            neighbours = [s for s in self.window if abs(s.index - slot.index) == 1 and s.result is not None]
            if not neighbours and not final:
                break
            self._write(slot, neighbours)

    def _write(self, slot: FrameSlot, neighbours: list[FrameSlot]) -> None:
        res = slot.result
        assert res is not None
        with self.record.stage("confidence"):
            nbs = [Neighbour(n.result.depth, res.T_from(n.index)) for n in neighbours  # type: ignore[union-attr]
                   if n.index in res.ref_indices]
            conf = frame_confidence(res.depth, slot.K, res.cost_map, nbs)
            valid = res.depth > 0
            weight = float(conf[valid].mean()) if valid.any() else 0.0
        self.trajectory.add_window(slot.index, res.ref_indices, res.T_ref_from_tgt, weight)
        pose = self.trajectory.chained_pose(slot.index)
        self._refine(slot, res.depth, pose)
        if self.writer is None:
            self.writer = self._writer_factory()
        with self.record.stage("write_frames"):
            self.writer.add_frame(slot.index, slot.image, res.depth, conf, slot.K, pose, timestamp=slot.timestamp,
                                  source=slot.source)
            metrics = depth_errors_vs_gt(res.depth, slot.gt_depth) if slot.gt_depth is not None else None
            doc = {
                "index": slot.index, "name": slot.name, "timestamp": slot.timestamp, "source": slot.source,
                "K": slot.K.tolist(), "refs": res.ref_indices, "T_ref_from_tgt": res.T_ref_from_tgt.tolist(),
                "weight": weight, "step_costs": res.step_costs.tolist(), "T_world_from_cam_chained": pose.tolist(),
                "gt_pose": None if slot.gt_pose is None else np.asarray(slot.gt_pose).tolist(),
                "depth_metrics": None if metrics is None else asdict(metrics),
            }
            if "solver" in slot.extras:
                doc["solver"] = slot.extras["solver"]
            atomic_write_text(_record_path(self.writer.root, slot.index), json.dumps(doc) + "\n")
        self._account(slot, res.step_costs, metrics, slot.extras.get("solver"))
        slot.written = True

    def _refine(self, slot: FrameSlot, depth: np.ndarray, pose: np.ndarray) -> None:
        if self.refiner is not None:
            with self.record.stage("pose_refine"):
                self.refiner.add_frame(slot.index, slot.image, depth, slot.K, pose)

    def _account(self, slot: FrameSlot, step_costs: np.ndarray, metrics: _FrameMetrics | None,
                 solver: dict | None = None) -> None:
        self.step_costs.append(np.asarray(step_costs, dtype=np.float64))
        if solver is not None:
            self.solver_records.append((slot.index, solver))
        self.gt_poses.append(None if slot.gt_pose is None else np.asarray(slot.gt_pose, dtype=np.float64))
        if metrics is not None:
            self.depth_metrics.append(metrics)

    def _adopt(self, slot: FrameSlot, doc: dict) -> None:
        """Take frame ``slot`` from a previous run's files instead of recomputing it (--resume)."""
        if self.writer is None:
            self.writer = self._writer_factory()
        layout = RunLayout(self.writer.root)
        depth = read_npy(layout.frame_file("depth", frame_name(slot.index), "npy"), slot.hw)
        T = np.asarray(doc["T_ref_from_tgt"], dtype=np.float64)
        slot.result = FrameResult(depth=depth, ref_indices=[int(i) for i in doc["refs"]], T_ref_from_tgt=T,
                                  cost_map=None, step_costs=np.asarray(doc["step_costs"], dtype=np.float64))
        self.trajectory.add_window(slot.index, slot.result.ref_indices, T, float(doc["weight"]))
        pose = np.asarray(doc["T_world_from_cam_chained"], dtype=np.float64)
        self._refine(slot, depth, pose)
        self.writer.adopt_frame(slot.index, slot.hw, np.asarray(doc["K"]), pose, float(doc["timestamp"]),
                                str(doc["source"]), depth)
        metrics = _FrameMetrics(**doc["depth_metrics"]) if doc.get("depth_metrics") else None
        if slot.gt_pose is None and doc.get("gt_pose") is not None:
            slot.gt_pose = np.asarray(doc["gt_pose"], dtype=np.float64)
        self._account(slot, slot.result.step_costs, metrics, doc.get("solver"))
        slot.written = True
        self.n_resumed += 1


# --- the frame stream ----------------------------------------------------------------------------------------


def _resize_rgb(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [H,W,3] resized to hw with Lanczos (as DroModel.prepare does)."""
    if image.shape[:2] == tuple(hw):
        return np.array(image, dtype=np.uint8)
    return np.array(Image.fromarray(image).resize((hw[1], hw[0]), Image.Resampling.LANCZOS))


def _resize_depth(depth: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Depth [H,W] resized to hw by nearest neighbour (no blending across depth edges)."""
    if depth.shape == tuple(hw):
        return depth.astype(np.float32)
    H, W = depth.shape
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * H / hw[0]).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * W / hw[1]).astype(np.int64), W - 1)
    return depth[rows[:, None], cols[None, :]].astype(np.float32)


@dataclass
class _StreamState:
    intrinsics: Intrinsics | None = None
    input_hw: tuple[int, int] | None = None
    n_input: int = 0
    motion: list[float] = field(default_factory=list)


def keyframe_slots(source: InputSource, proc_hw: tuple[int, int], options: ReconstructOptions,
                   state: _StreamState, record: RunRecord, ground_truth: GroundTruthLookup | None = None,
                   progress: bool = True) -> Iterator[FrameSlot]:
    """Stream the input as keyframe slots at the processing resolution (checks sizes and intrinsics)."""
    selector = KeyframeSelector(options.min_motion)
    bar = tqdm(total=source.count, desc="reconstructing", unit="frame", disable=None if progress else True)
    index = 0
    frames = iter(source.frames)
    try:
        while True:
            with record.stage("read"):
                try:
                    frame = next(frames)
                except StopIteration:
                    return
                state.n_input += 1
                bar.update(1)
                image = np.asarray(frame.image)
                hw = (int(image.shape[0]), int(image.shape[1]))
                if state.input_hw is None:
                    state.input_hw = hw
                    state.intrinsics = _frame_intrinsics(frame, source, hw)
                elif hw != state.input_hw:
                    raise InputError(f"{frame.extras.get('path', frame.name)}: image is {hw[1]}x{hw[0]} but the "
                                     f"first frame is {state.input_hw[1]}x{state.input_hw[0]}; all frames of a "
                                     "sequence must have the same size")
                elif source.intrinsics is None and not np.allclose(frame.K, state.intrinsics.K):  # type: ignore
                    raise InputError(f"{frame.extras.get('path', frame.name)}: intrinsics differ from the first "
                                     "frame's; a run uses one camera")
                small = _resize_rgb(image, proc_hw)
            with record.stage("keyframes"):
                keep, motion = selector.accept(small)
            if not keep:
                continue
            state.motion.append(motion)
            gt_depth, gt_pose = frame.depth, frame.T_world_from_cam
            if ground_truth is not None and (gt_depth is None or gt_pose is None):
                extra_depth, extra_pose = ground_truth(frame)
                gt_depth = gt_depth if gt_depth is not None else extra_depth
                gt_pose = gt_pose if gt_pose is not None else extra_pose
            yield FrameSlot(
                index=index, name=frame.name or frame_name(index),
                timestamp=float(frame.timestamp) if frame.timestamp is not None else float(state.n_input - 1),
                source=str(frame.extras.get("path", frame.name)), image=small,
                K=scale_intrinsics(state.intrinsics.K, hw, proc_hw),  # type: ignore[union-attr]
                gt_depth=None if gt_depth is None else _resize_depth(np.asarray(gt_depth), proc_hw),
                gt_pose=None if gt_pose is None else np.asarray(gt_pose, dtype=np.float64),
            )
            index += 1
            bar.set_postfix(keyframes=index, skipped=selector.skipped)
            if options.max_frames is not None and index >= options.max_frames:
                return
    finally:
        bar.close()


def _frame_intrinsics(frame: Frame, source: InputSource, hw: tuple[int, int]) -> Intrinsics:
    if source.intrinsics is not None:
        chosen = source.intrinsics
    else:
        chosen = Intrinsics(np.asarray(frame.K, dtype=np.float64), frame_intrinsics_source(frame.extras, source.layout))
    K = validate_intrinsics(chosen.K, hw[1], hw[0], chosen.source)
    if chosen.guessed:
        logger.warning("no intrinsics for %s: assuming a %.0f degree horizontal field of view (fx = fy = %.1f px); "
                       "pass --intrinsics fx,fy,cx,cy for correct geometry", source.description,
                       horizontal_fov_deg(K, hw[1]), K[0, 0])
    return Intrinsics(K, chosen.source)


# --- the entry point -----------------------------------------------------------------------------------------


def fusion_targets(kind: str) -> list[str]:
    """Export targets for a fusion kind: tsdf = everything, points = no mesh, none = no cloud/mesh/COLMAP."""
    if kind == "tsdf":
        return list(EXPORT_TARGETS)
    if kind == "points":
        return [t for t in EXPORT_TARGETS if t != "mesh"]
    return [t for t in EXPORT_TARGETS if t not in ("ply", "mesh", "colmap")]


def reconstruct(source: str | os.PathLike | Iterable[Frame], out_dir: str | os.PathLike,
                options: ReconstructOptions | None = None, *, predictor: WindowPredictor | None = None,
                ground_truth: GroundTruthLookup | None = None, progress: bool = True) -> ReconstructionResult:
    """Reconstruct ``source`` (image folder, video, dataset folder, or iterable of ``Frame``) into ``out_dir``.

    ``predictor`` replaces the DRO model (default: ``options.weights``); ``ground_truth`` supplies depth and
    poses for frames that lack them, so that run.json reports accuracy (the sample sequence uses it).
    """
    options = options or ReconstructOptions()
    options.validate()
    t_start = time.perf_counter()
    record = RunRecord(inputs={"source": str(source) if isinstance(source, (str, os.PathLike)) else
                               type(source).__name__},
                       options=asdict(options))
    with record.stage("open_input"):
        src = open_input(source, options)
    out = _OutputDir(out_dir, options.resume, options.overwrite)
    try:
        if predictor is None:
            with record.stage("load_model"):
                predictor = load_predictor(options)
        shape = (options.height, options.width) if options.height is not None else predictor.image_shape
        if shape is None:
            raise ConfigError("the predictor has no native image shape; give --height and --width")
        proc_hw = (int(shape[0]), int(shape[1]))
        if proc_hw[0] % 16 or proc_hw[1] % 16:
            raise ConfigError(f"processing size {proc_hw[0]}x{proc_hw[1]} must be a multiple of 16")
        return _run(src, out, options, predictor, proc_hw, record, ground_truth, progress, t_start)
    except BaseException:
        out.cleanup()
        raise


def _run(src: InputSource, out: _OutputDir, options: ReconstructOptions, predictor: WindowPredictor,
         proc_hw: tuple[int, int], record: RunRecord, ground_truth: GroundTruthLookup | None, progress: bool,
         t_start: float) -> ReconstructionResult:
    root = out.root
    identity = src.description if src.layout == "frames" else str(Path(src.description).resolve())
    config = {"input": identity, "layout": src.layout, "predictor": predictor.identity,
              "processing_hw": list(proc_hw), "step": options.step, "min_motion": options.min_motion,
              "refs": options.refs, "intrinsics": options.intrinsics, "skip_bad": options.skip_bad}
    previous = _previous_config(root) if options.resume else None
    if previous is not None:
        diff = sorted(k for k in config if previous.get(k) != config[k])
        if diff:
            raise ConfigError(f"--resume: {root} was made with different {', '.join(diff)} "
                              f"({', '.join(f'{k}={previous.get(k)!r}' for k in diff)}); rerun with the same "
                              "options or pass --overwrite")
    elif not options.resume:
        _clear_records(root)  # --overwrite: a new run must not pick up an old run's records
    fusion_options = FusionOptions(conf_threshold=options.conf_threshold)

    def make_writer() -> _PipelineWriter:
        writer = _PipelineWriter(root, fusion_options, resume=options.resume, overwrite=options.overwrite)
        out.created = []  # from here on the directory holds this run's files
        atomic_write_text(root / WINDOWS_DIR / CONFIG_RECORD, json.dumps(config, indent=1) + "\n")
        return writer

    def done(index: int) -> dict | None:
        if not options.resume or not _frame_done(root, index):
            return None
        try:
            return json.loads(_record_path(root, index).read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a damaged record: recompute the frame

    refiner = PhotometricRefiner() if options.pose_graph and options.pose_refine == "photometric" else None
    engine = SequenceEngine(predictor, options.refs, make_writer, record, done=done, refiner=refiner)
    state = _StreamState()
    try:
        for slot in keyframe_slots(src, proc_hw, options, state, record, ground_truth, progress):
            engine.push(slot)
        engine.finish()
    except DroSfmError as err:
        written = len(engine.writer) if engine.writer is not None else 0
        if written:
            raise type(err)(f"{err} ({written} frames were written to {root}; fix the input and rerun with "
                            "--resume to continue)") from err
        raise
    writer = engine.writer
    assert writer is not None and state.intrinsics is not None
    n_frames = len(writer)
    if options.resume:
        _clear_records(root, keep_below=n_frames)  # frames beyond this run's end are stale
    with record.stage("pose_graph"):
        if options.pose_graph:
            poses = engine.trajectory.optimize(n_frames)
        else:
            poses = engine.trajectory.chained_poses(n_frames)
    refinement: dict | None = None
    graph_poses = poses  # the network's pose graph, kept for its own ATE when the refinement changes the poses
    if refiner is not None:
        with record.stage("pose_refine"):
            poses, noise = refiner.fuse(poses, [e for e in engine.trajectory.edges() if e.b < n_frames])
        refinement = {"pairs_attempted": refiner.attempted, "pairs_kept": len(refiner.edges),
                      "pairs_rejected": refiner.rejected, "applied": noise is not None,
                      **(noise.to_dict() if noise is not None else {})}
    costs = _cost_array(engine.step_costs)
    report = writer.finalize(poses=poses, cost_curve=costs if costs is not None else None,
                             targets=fusion_targets(options.fusion))
    record.add_timings({f"export_{k}": v for k, v in report.timings.items() if k != "write_frames"})
    metrics = _ground_truth_metrics(engine, poses)
    if refinement is not None and refinement["applied"]:
        # The network's own trajectory too: the refinement's accept/reject decisions can move the final ATE by
        # more than the network's pose estimates differ between two models (docs/deq.md section 6).
        unrefined = _trajectory_error(engine, graph_poses)
        metrics.update({f"{k}_before_refine": v for k, v in unrefined.items() if k.startswith("ate_")})
    solver = solver_summary(engine.solver_records)
    if solver.get("non_converged"):
        logger.warning("DEQ: %d of %d frames did not converge to tol %g within %d steps (frames %s)",
                       solver["non_converged"], solver["frames"], solver["tol"], solver["budget"],
                       _index_ranges(solver["non_converged_frames"]))
    record.timings["total"] = time.perf_counter() - t_start
    record.inputs.update(layout=src.layout, input_frames=state.n_input, keyframes=n_frames,
                         resumed_frames=engine.n_resumed, input_size=list(state.input_hw or ()),
                         processing_size=list(proc_hw), intrinsics_source=state.intrinsics.source,
                         intrinsics_input=state.intrinsics.K.tolist(),
                         horizontal_fov_deg=horizontal_fov_deg(state.intrinsics.K, state.input_hw[1]),  # type: ignore
                         predictor=predictor.identity, trained_weights=predictor.trained)
    record.results.update(export=report.to_dict(), ground_truth=metrics,
                          window={"capacity": engine.window.capacity, "peak_frames": engine.window.peak},
                          trajectory={"pairs": len(engine.trajectory.edges()),
                                      "rejected_estimates": engine.trajectory.rejected,
                                      "pose_refine": options.pose_refine if options.pose_graph else "none",
                                      "photometric": refinement},
                          frames_per_second=n_frames / record.timings["total"])
    if solver:
        record.results["solver"] = solver
    record.write(root)
    return ReconstructionResult(
        out_dir=root, n_input_frames=state.n_input, n_keyframes=n_frames, n_resumed=engine.n_resumed,
        intrinsics=state.intrinsics, processing_hw=proc_hw, model_name=predictor.name, trained=predictor.trained,
        report=report, timings=dict(record.timings), metrics=metrics, peak_window_frames=engine.window.peak,
        window_capacity=engine.window.capacity, poses=poses, solver=solver,
    )


def solver_summary(records: Sequence[tuple[int, dict]]) -> dict:
    """run.json ``results.solver``: optimiser steps per frame (mean/max/min), convergence and warm starts,
    plus compact per-frame arrays in keyframe order; {} when the predictor reports nothing."""
    if not records:
        return {}
    records = sorted(records, key=lambda r: r[0])
    steps = np.array([int(r.get("steps", 0)) for _, r in records])
    modes = sorted({str(r.get("mode")) for _, r in records})
    out: dict[str, Any] = {"mode": modes[0] if len(modes) == 1 else modes, "frames": len(records),
                           "steps_mean": float(steps.mean()), "steps_max": int(steps.max()),
                           "steps_min": int(steps.min()),
                           "per_frame": {"index": [i for i, _ in records], "steps": steps.tolist()}}
    deq = [(i, r) for i, r in records if r.get("mode") == "deq"]
    if deq:
        failed = [i for i, r in deq if not r.get("converged", False)]
        warm = [str(r.get("start", "")) == "warm" for _, r in deq]
        out.update(tol=deq[0][1].get("tol"), budget=max(int(r.get("budget", 0)) for _, r in deq),
                   non_converged=len(failed), non_converged_frames=failed, warm_started=int(sum(warm)))
        out["per_frame"].update(converged=[bool(r.get("converged", False)) for _, r in deq],
                                residual=[r.get("residual") for _, r in deq], warm=warm)
    return out


def _index_ranges(indices: Sequence[int]) -> str:
    """[0,1,2,5,7,8] -> "0-2, 5, 7-8" (short log lines for long runs)."""
    parts: list[str] = []
    for _, group in itertools.groupby(enumerate(indices), key=lambda p: p[1] - p[0]):
        run = [v for _, v in group]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(parts)


def _previous_config(root: Path) -> dict | None:
    path = root / WINDOWS_DIR / CONFIG_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is damaged ({err}); rerun with --overwrite") from err


def _cost_array(step_costs: list[np.ndarray]) -> np.ndarray | None:
    """Per-frame cost curves stacked [frames, iterations], or None when the predictor reports none."""
    lengths = {len(c) for c in step_costs}
    if not step_costs or lengths == {0} or len(lengths) != 1:
        return None
    return np.stack(step_costs)


def _ground_truth_metrics(engine: SequenceEngine, poses: np.ndarray) -> dict[str, float]:
    """ATE (Sim(3)-aligned, evo) and depth AbsRel when the frames carry ground truth; {} otherwise."""
    out: dict[str, float] = {}
    if engine.depth_metrics:
        out["depth_abs_rel"] = float(np.mean([m.abs_rel for m in engine.depth_metrics]))
        out["depth_abs_rel_median_scaled"] = float(np.mean([m.abs_rel_median_scaled for m in engine.depth_metrics]))
        out["depth_frames"] = len(engine.depth_metrics)
    out.update(_trajectory_error(engine, poses))
    return out


def _trajectory_error(engine: SequenceEngine, poses: np.ndarray) -> dict[str, float]:
    """ATE of camera-to-world ``poses`` [N,4,4] against the frames' ground truth (Sim(3)-aligned, evo); {} without."""
    from dro_sfm.eval.trajectory import absolute_trajectory_error, path_length

    out: dict[str, float] = {}
    gt = engine.gt_poses
    if len(gt) == len(poses) and len(gt) >= 3 and all(g is not None for g in gt):
        T_gt = np.stack(gt)  # type: ignore[arg-type]
        length = path_length(T_gt)
        if length > 0:
            try:
                ate = absolute_trajectory_error(T_gt, poses, align="sim3")
            except InputError as err:
                logger.warning("no ATE: %s", err)
            else:
                out["ate_rmse_m"] = ate.stats["rmse"]
                out["ate_sim3_scale"] = ate.alignment.scale
                out["path_length_m"] = length
                out["ate_percent_of_path"] = 100.0 * ate.stats["rmse"] / length
    return out
