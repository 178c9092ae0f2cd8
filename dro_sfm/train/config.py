"""Typed training configuration, loaded from one YAML file per experiment (see ``configs/``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dro_sfm.errors import ConfigError
from dro_sfm.models.config import DroConfig, small_config
from dro_sfm.models.dro import DroNet


@dataclass
class ModelSection:
    """Which network to train: a preset with overrides, or an official architecture by version string."""

    preset: Literal["small", "official"] = "small"
    official_version: str | None = None   # e.g. "it12-h-out"; only for mirroring the official experiments
    overrides: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None       # warm start from a model file (ours or official)
    # Modules re-initialised after the warm start, e.g. heads whose ReLUs all died (see `activity/*` in the logs)
    reinit: list[str] = field(default_factory=list)

    def build_config(self, min_depth: float, max_depth: float, deq_train_residual: bool = False,
                     deq_train_jacobian: bool = False) -> DroConfig:
        """The network's config; ``deq_train_residual`` / ``deq_train_jacobian`` make a DEQ model return its
        fixed-point residual / Jacobian estimate in training (for ``loss.deq_residual_weight`` /
        ``loss.deq_jacobian_weight``)."""
        if self.official_version is not None:
            from dro_sfm.models.official import parse_official_version

            cfg = parse_official_version(self.official_version, min_depth, max_depth)
        elif self.preset == "small":
            cfg = small_config(min_depth=min_depth, max_depth=max_depth)
        else:
            cfg = DroConfig(min_depth=min_depth, max_depth=max_depth)
        overrides = dict(self.overrides)
        try:
            if isinstance(overrides.get("encoder"), dict):  # YAML gives a mapping for the nested dataclass
                overrides["encoder"] = dataclasses.replace(cfg.encoder, **overrides["encoder"])
            cfg = cfg.with_(**overrides)
        except TypeError as err:
            raise ConfigError(f"model.overrides: {err}") from err
        for wanted, term in ((deq_train_residual, "residual"), (deq_train_jacobian, "jacobian")):
            if wanted and cfg.solver != "deq":
                raise ConfigError(f"loss.deq_{term}_weight > 0 needs a DEQ model: set model.overrides.solver: deq")
        if deq_train_residual or deq_train_jacobian:
            cfg = cfg.with_(deq=dataclasses.replace(cfg.deq, train_residual=deq_train_residual,
                                                    train_jacobian=deq_train_jacobian))
        return cfg

    def build(self, min_depth: float, max_depth: float, deq_train_residual: bool = False,
              deq_train_jacobian: bool = False) -> DroNet:
        return DroNet(self.build_config(min_depth, max_depth, deq_train_residual, deq_train_jacobian))


@dataclass
class DataSection:
    """Training data: the synthetic engine on the fly, or a real dataset layout."""

    kind: Literal["synthetic", "kitti", "scannet", "tum", "7scenes", "folder"] = "synthetic"
    root: str | None = None
    split: str | None = None                # split file (KITTI Eigen-Zhou train list, ...)
    scenes: Literal["indoor", "outdoor", "mixed"] = "mixed"
    height: int = 128
    width: int = 160
    refs_back: int = 1
    refs_forward: int = 1
    frame_stride: int = 1
    motion_scale: float = 1.0               # synthetic: multiplies the inter-frame motion range
    motion_curriculum_steps: int = 0        # synthetic: ramp motion from 0.3× to 1× over this many steps
    samples_per_scene: int = 16             # synthetic: triplets drawn from one generated scene
    workers: int = 0
    augment: bool = True
    min_depth: float = 0.2
    max_depth: float = 80.0

    @property
    def n_refs(self) -> int:
        return self.refs_back + self.refs_forward


@dataclass
class LossSection:
    kind: Literal["supervised", "selfsup"] = "supervised"
    feature_weight: float = 0.0             # direct supervision of the feature-metric cost (0 = spec loss only)
    pose_param_weight: float = 0.0          # direct supervision of rotation + translation (0 = spec loss only)
    # How the direct term measures translation: metres, or relative to the true step length
    pose_param_translation: Literal["absolute", "relative"] = "absolute"
    pose_param_translation_weight: float = 1.0
    # DEQ models: weight of the fixed-point residual ||f(z) - z|| at the last supervised state (0 = off)
    deq_residual_weight: float = 0.0
    # DEQ models: weight of the Jacobian regulariser ||df/dz||_F^2 per element at that state (0 = off)
    deq_jacobian_weight: float = 0.0
    flip_lr_prob: float = 0.5


@dataclass
class OptimSection:
    lr: float = 2e-4
    batch_size: int = 2
    steps: int = 1000
    lr_step: int = 100000                   # StepLR period in steps (official: 30 epochs)
    lr_gamma: float = 0.5
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    amp: bool = False                       # mixed precision, CUDA only
    freeze_bn: bool = False
    # Every N steps re-draw the heads' dormant ReLU units (dro_sfm/train/dormant.py); 0 = off, as officially
    recycle_dormant_every: int = 0
    # > 0: keep an exponential moving average of the weights (this decay per step); validation, the exported
    # model and model cards use the average. Off officially.
    ema_decay: float = 0.0


@dataclass
class TrainConfig:
    """One experiment: model, data, loss, optimiser and bookkeeping."""

    name: str = "experiment"
    seed: int = 0
    out_dir: str = "runs/experiment"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint_every: int = 200
    log_every: int = 20
    image_log_every: int = 200
    # Eval-mode scores on reserved synthetic samples (synthetic data only). Train-mode curves can mislead:
    # BatchNorm's batch statistics and the loss (L1 on inverse depth) hide what inference will do.
    val_every: int = 0
    val_samples: int = 8
    device: str = "cpu"


def _coerce(tp, value, where: str):
    """Convert YAML data to the annotated type ``tp`` (dataclasses, tuples, literals, optionals)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # PyYAML reads exponents without a dot (2e-4) as strings (YAML 1.1)
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool) is False and isinstance(value, int):
        return value
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys with the path of the offending key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a training YAML file into a ``TrainConfig``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} does not exist") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    return from_dict(TrainConfig, data, where=path.name)


def config_to_dict(cfg) -> dict:
    """Plain-data form of a config dataclass (for checkpoints and logs)."""
    return dataclasses.asdict(cfg)
