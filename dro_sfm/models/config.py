"""Typed configuration of the DRO network, with the official and the small CPU presets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from dro_sfm.errors import ConfigError


@dataclass(frozen=True)
class EncoderWidths:
    """Channel widths of the ResNet-18 trunk (stem/layer1, layer2, layer3) and the fusion convolutions."""

    stem: int = 64
    layer2: int = 128
    layer3: int = 256
    fusion: int = 128


@dataclass(frozen=True)
class DeqConfig:
    """Settings of the deep-equilibrium solve (``solver: deq``); see docs/deq.md.

    ``max_steps`` is the number of evaluations of the update map f (one depth step + one pose step each)
    one solve may spend (the forward solver's and the ``verify_returned`` checks'); ``tol`` the stopping
    tolerance on the ``stop_mode`` residual of the joint state (``abs``: root of the summed per-block mean
    squared change; ``rel``: that over the same of f(z)).
    ``grad`` chooses implicit differentiation (``ift``) or phantom gradients (``phantom_steps`` unrolled
    steps of f from the detached fixed point; 1 = the one-step / Jacobian-free gradient).
    ``n_states`` solver states spread over the budget are returned in training so that the loss applies
    to each (sparse fixed-point correction); with ``ift`` the last one gets the implicit gradient.
    """

    forward_solver: Literal["anderson", "broyden", "fixed_point_iter"] = "anderson"
    max_steps: int = 24
    tol: float = 1e-3
    stop_mode: Literal["rel", "abs"] = "abs"  # abs: RMS change of the block-normalised state (docs/deq.md)
    grad: Literal["ift", "phantom"] = "phantom"
    phantom_steps: int = 1
    phantom_tau: float = 1.0
    n_states: int = 2
    backward_solver: Literal["anderson", "broyden", "fixed_point_iter"] = "fixed_point_iter"
    backward_max_steps: int = 24
    backward_tol: float = 1e-6
    coupling: Literal["jacobi", "gauss_seidel"] = "jacobi"
    # Per evaluation of f, pull the inverse depth towards the initial depth head's prediction by this fraction:
    # f_d(z) = d + head(h) - depth_anchor * (d - d_head). 0 = the plain update. Where the cost gives the GRU
    # no feedback, the plain update passes a change of d through unchanged (an eigenvalue 1 of df/dz); the
    # anchor makes it 1 - depth_anchor there (docs/deq.md, section 4).
    depth_anchor: float = 0.0
    # Inference: evaluate f once more at the returned state and judge convergence on that state's own
    # residual; while it is above tol and budget is left, solve again from that state. Anderson and plain
    # iteration return f(x) of their lowest-residual iterate x and report ||f(x) - x||, which describes x,
    # not the state returned (docs/deq.md, section 3). Each check is one evaluation of the max_steps budget
    # (with max_steps 1 there is no room for one, and the solver's iterate decides).
    verify_returned: bool = True
    # Inference: f reads the GRU states clipped to [-1, 1], the box that holds every fixed point (same fixed
    # points; Anderson's extrapolated iterates can leave the box and f would pass part of that on to the state
    # it returns, which the spurious-root check then rejects). Training solves use f as it is.
    project_hidden: bool = True
    # Training only: evaluate f once more at the last supervised state and return the fixed-point residual
    # ||f(z) - z|| (extras["deq_residual"]) for a loss; set by the trainer when loss.deq_residual_weight > 0.
    train_residual: bool = False
    # Training only: also return torchdeq's Hutchinson estimate of ||df/dz||_F^2 at that state
    # (extras["deq_jacobian"]); set by the trainer when loss.deq_jacobian_weight > 0.
    train_jacobian: bool = False

    def __post_init__(self) -> None:
        choices = {
            "forward_solver": ("anderson", "broyden", "fixed_point_iter"),
            "backward_solver": ("anderson", "broyden", "fixed_point_iter"),
            "stop_mode": ("rel", "abs"),
            "grad": ("ift", "phantom"),
            "coupling": ("jacobi", "gauss_seidel"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"deq.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        # Anderson evaluates f twice before its first mixing step and cannot return anything better than
        # the initial state with fewer than 3 evaluations.
        min_steps = 3 if self.forward_solver == "anderson" else 1
        if self.max_steps < min_steps:
            raise ConfigError(f"deq.max_steps must be >= {min_steps} for {self.forward_solver}, got {self.max_steps}")
        if not 1 <= self.n_states <= self.max_steps:
            raise ConfigError(f"deq.n_states must be in 1..max_steps ({self.max_steps}), got {self.n_states}")
        if self.phantom_steps < 1 or self.backward_max_steps < 1:
            raise ConfigError("deq.phantom_steps and deq.backward_max_steps must be >= 1")
        if not 0 <= self.depth_anchor < 1:
            raise ConfigError(f"deq.depth_anchor must be in [0, 1), got {self.depth_anchor}")
        if self.tol < 0 or self.backward_tol < 0 or not 0 < self.phantom_tau <= 1:
            raise ConfigError("deq.tol and deq.backward_tol must be >= 0 and deq.phantom_tau in (0, 1]")


@dataclass(frozen=True)
class DroConfig:
    """Hyper-parameters of the DRO network (spec §2–§5); ``official()`` gives the released architecture."""

    hidden_dim: int = 128            # ConvGRU hidden size `hd`
    context_dim: int = 32            # context features `cd`
    feature_dim: int = 128           # fnet output channels (= cost channels)
    head_dim: int = 128              # hidden width of the initial depth/pose heads
    motion_dim: int = 64             # width of the depth/pose feature branch in the update encoders
    encoder: EncoderWidths = field(default_factory=EncoderWidths)
    stages: int = 3                  # m: alternating depth/pose stages
    steps_per_stage: int = 4         # n: GRU steps per stage
    min_depth: float = 0.2
    max_depth: float = 10.0
    normalize_output: bool = True    # official `out`: map raw inverse depth through disp_to_depth
    all_steps_in_train: bool = False # official `inter`: train mode returns every step
    with_unused_cnet: bool = True    # official checkpoints carry a never-used `cnet` encoder
    solver: Literal["unrolled", "deq"] = "unrolled"
    fast: bool = True                # optimised path; False runs the literal spec path
    # Factor on the pose heads' rotation outputs (official 0.01). Under Adam it sets how fast rotation can move
    # relative to translation; our CPU configs raise it (see configs/default_small_v3.yaml).
    pose_rotation_scale: float = 0.01
    recompute_activations: bool = False  # training memory: recompute encoders (and DEQ f steps) in backward
    deq: DeqConfig = field(default_factory=DeqConfig)  # used only with solver == "deq"

    def __post_init__(self) -> None:
        # Saved configs (dataclasses.asdict) and YAML overrides give the nested settings as a mapping.
        if isinstance(self.deq, dict):
            try:
                object.__setattr__(self, "deq", DeqConfig(**self.deq))
            except TypeError as err:
                raise ConfigError(f"deq settings: {err}") from err
        if self.solver not in ("unrolled", "deq"):
            raise ConfigError(f"solver must be 'unrolled' or 'deq', got {self.solver!r}")

    @property
    def total_steps(self) -> int:
        return self.stages * self.steps_per_stage

    def with_(self, **changes) -> DroConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


def small_config(**overrides) -> DroConfig:
    """The `small` preset: narrower encoders and GRUs, same code, for CPU training."""
    base = DroConfig(
        hidden_dim=64,
        context_dim=32,
        feature_dim=64,
        head_dim=64,
        motion_dim=32,
        encoder=EncoderWidths(stem=32, layer2=64, layer3=128, fusion=64),
        with_unused_cnet=False,
    )
    return replace(base, **overrides)


PRESETS = {"official": DroConfig, "small": small_config}
