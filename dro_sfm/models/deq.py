"""Deep-equilibrium (DEQ) solve of DRO's alternating depth/pose update, built on torchdeq (docs/deq.md).

The joint state z = (raw inverse depth d [B,1,h,w], pose vectors p [B,N,6], depth GRU state h_d [B,hd,h,w],
pose GRU states h_p [B,N,hd,h,w]) is driven to a fixed point z* = f(z*; x) of one update step f: one depth
GRU step and one pose GRU step per reference, with the input injection x = (feature maps, contexts, K).
With the default ``jacobi`` coupling both halves of f read the same state, so f is exactly one stage of the
unrolled optimiser with one step per stage, and the same weights serve both modes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torchdeq import get_deq
from torchdeq.loss import jac_reg

from dro_sfm.geometry.camera import camera_rays, project_to_grid, scale_intrinsics_feature, transform_points
from dro_sfm.geometry.pose import euler_vec_to_matrix, invert_rigid, matrix_to_euler_vec
from dro_sfm.geometry.warp import inv2depth
from dro_sfm.models.config import DeqConfig, DroConfig
from dro_sfm.models.cost import FeatureCost
from dro_sfm.models.dro import FEATURE_STRIDE, DroNet, DroOutput, DroState, Features
from dro_sfm.models.upsample import convex_upsample

logger = logging.getLogger(__name__)

BLOCKS = ("inv_depth", "poses", "h_depth", "h_pose")
TRAIN_WARNING_EVERY = 50  # in training a failing solve is reported on the first occurrence and then every 50th
HIDDEN_BOUND_SLACK = 1e-4  # rounding allowance on the |h| < 1 bound of every fixed point


# ------------------------------------------------------------------------------------------- statistics
@dataclass
class DeqStats:
    """What one fixed-point solve did; ``DroOutput.extras["deq"]``.

    Residuals are of the joint state with every block scaled to unit weight (docs/deq.md): ``rel_trace`` and
    ``abs_trace`` [S,B] for each of the S evaluations of f by the forward solver (``steps`` = S, plus the
    checks of ``deq.verify_returned``); ``residual`` [B] the lowest ``stop_mode`` residual the solver saw,
    that of its iterate x (torchdeq keeps it rather than the last one; Anderson and plain iteration return
    f(x), Broyden x itself) and ``best_step`` [B] the evaluation that produced it; ``returned_residual`` [B]
    the residual of the state actually returned, when ``deq.verify_returned`` measured it (the solve then
    continues from that state while it is above tol and budget is left, and convergence is judged on it alone);
    ``block_residuals`` name -> [B] relative residual of each block at the best evaluation;
    ``supervised_steps``: solver steps whose states were returned for the loss (training only);
    ``backward``: residual/steps of the implicit-gradient solve, filled in when backward runs (``ift``);
    ``hidden_excess``: max|h| − 1 of the returned GRU states (> 0 means the solver left the set that holds
    every fixed point, and the solve is reported as not converged).
    """

    solver: str
    stop_mode: str
    tol: float
    max_steps: int
    steps: int
    residual: torch.Tensor
    best_step: torch.Tensor
    rel_trace: torch.Tensor
    abs_trace: torch.Tensor
    block_residuals: dict[str, torch.Tensor]
    converged: bool
    supervised_steps: list[int] = field(default_factory=list)
    backward: dict[str, float] = field(default_factory=dict)
    hidden_excess: float = 0.0
    returned_residual: torch.Tensor | None = None

    @property
    def judged_residual(self) -> torch.Tensor:
        """The residual [B] convergence was judged on: the returned state's when it was checked, else the iterate's."""
        return self.residual if self.returned_residual is None else self.returned_residual

    def summary(self) -> str:
        """One line for logs."""
        state = "converged" if self.converged else "NOT converged"
        judged = self.judged_residual
        worst = float(judged.max()) if judged.numel() else float("nan")
        if self.returned_residual is None:
            text = f"DEQ {self.solver}: {state}, {self.stop_mode} residual {worst:.3g} (tol {self.tol:g})"
        else:
            text = (f"DEQ {self.solver}: {state}, returned state's {self.stop_mode} residual {worst:.3g} "
                    f"(tol {self.tol:g}; its solver iterate's {float(self.residual.max()):.3g})")
        text += f" after {self.steps}/{self.max_steps} steps"
        if self.hidden_excess > HIDDEN_BOUND_SLACK:
            # Within tol the state claims to be a fixed point, which |h| > 1 rules out; above tol it is just the
            # last iterate of a solve that ran out of steps, and Anderson's extrapolation can overshoot the box.
            kind = "spurious root" if worst <= self.tol else "an unconverged iterate"
            text += f", GRU state outside [-1, 1] by {self.hidden_excess:.3g} ({kind})"
        return text


class _Warnings:
    """Counts failing training solves so that a long run is told about them without flooding the log."""

    train_failures = 0


# ------------------------------------------------------------------------------------------- state codec
class _StateCodec:
    """Maps the four state blocks to the tensors the solver sees, each block divided by sqrt(its size).

    The scaling makes the solver's vector norm the sum of the blocks' mean squares, so the single depth
    channel and the six pose numbers weigh as much as the hundreds of hidden channels in the stopping test
    and in Anderson's least squares. It is a fixed linear change of variables: fixed points are unchanged.
    """

    def __init__(self, state: Sequence[torch.Tensor]) -> None:
        self.scales = [1.0 / math.sqrt(t[0].numel()) for t in state]

    def encode(self, state: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [t * s for t, s in zip(state, self.scales)]

    def decode(self, scaled: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [t / s for t, s in zip(scaled, self.scales)]


# ------------------------------------------------------------------------------------------- the map f
class UpdateMap:
    """f(z; x): one depth step and one pose step of the DRO update blocks on the (unscaled) joint state.

    ``jacobi`` coupling: the depth step uses the current poses and the pose step the current depth (both
    read z), exactly one unrolled stage with one step. ``gauss_seidel``: the pose step reads the updated
    depth. Both have the same fixed points (docs/deq.md).
    """

    def __init__(self, net: DroNet, cost: FeatureCost, context_depth: torch.Tensor, context_pose: torch.Tensor,
                 coupling: str = "jacobi", anchor_depth: torch.Tensor | None = None, anchor: float = 0.0) -> None:
        self.net, self.cost, self.c_d, self.c_p, self.coupling = net, cost, context_depth, context_pose, coupling
        # The anchor (the initial depth head's raw inverse depth [B,1,h,w]) is part of the input injection x:
        # it depends on the images only, never on where the solver starts.
        self.anchor_depth, self.anchor = anchor_depth, anchor
        if anchor > 0 and anchor_depth is None:
            raise ValueError("a depth anchor weight needs the anchor depth")

    def __call__(
        self, d: torch.Tensor, p: torch.Tensor, h_d: torch.Tensor, h_p: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(d [B,1,h,w], p [B,N,6], h_d [B,hd,h,w], h_p [B,N,hd,h,w]) -> (f(z) blocks..., depth cost [B,C,h,w])."""
        net, cost = self.net, self.cost
        B, N = p.shape[:2]
        mats = euler_vec_to_matrix(p)
        X = cost.points(inv2depth(net.normalize(d)))
        per_ref = [cost.single_T(i, mats[:, i], X) for i in range(N)]
        c_depth = torch.stack(per_ref, 1).mean(1)
        h_d_new, d_new = net.update_block_depth.step(h_d, self.c_d, d, c_depth)
        if self.anchor > 0:
            d_new = d_new - self.anchor * (d - self.anchor_depth)
        if self.coupling == "gauss_seidel":
            X = cost.points(inv2depth(net.normalize(d_new)))
            per_ref = [cost.single_T(i, mats[:, i], X) for i in range(N)]
        c_pose = torch.stack(per_ref, 1).flatten(0, 1)  # row b·N + i, as the contexts
        h_p_new, p_new = net.update_block_pose.step(h_p.flatten(0, 1), self.c_p, p.reshape(B * N, 6), c_pose)
        return d_new, p_new.view(B, N, 6), h_d_new, h_p_new.view(h_p.shape), c_depth


def _block_squared_norm(z: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample squared norm of each scaled state block, [B,4]."""
    return torch.stack([a.flatten(1).pow(2).sum(1) for a in z], 1)


def _abs_and_rel(diff_sq: torch.Tensor, out_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``abs`` and ``rel`` residuals [B] from the per-block squared change and squared norm of f(z), [B,4]."""
    abs_res = diff_sq.sum(1).sqrt()
    return abs_res, abs_res / (out_sq.sum(1).sqrt() + 1e-9)


def _block_squared_change(fz: Sequence[torch.Tensor], z: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample squared change of each scaled state block, [B,4] (its row sum is the squared abs residual)."""
    return torch.stack([(a - b).flatten(1).pow(2).sum(1) for a, b in zip(fz, z)], 1)


class _SolverFunction:
    """The function handed to torchdeq: scaled state -> scaled f(state); records the solver's evaluations."""

    def __init__(self, update: UpdateMap, codec: _StateCodec, recompute: bool = False,
                 project_hidden: bool = False) -> None:
        self.update, self.codec, self.recompute = update, codec, recompute
        self.project_hidden = project_hidden
        self.recording = False
        self.rel: list[torch.Tensor] = []
        self.abs: list[torch.Tensor] = []
        self.block_rel: list[torch.Tensor] = []
        self.costs: list[torch.Tensor] = []

    def __call__(self, *scaled: torch.Tensor) -> list[torch.Tensor]:
        if self.recompute and torch.is_grad_enabled():
            # A gradient step (phantom or IFT) keeps only its inputs and outputs; its internals are recomputed
            # in backward, so the n_states supervised steps never hold their activations at the same time.
            *out, c_depth = torch.utils.checkpoint.checkpoint(self._apply, *scaled, use_reentrant=False)
        else:
            *out, c_depth = self._apply(*scaled)
        if self.recording:
            self._record(scaled, out, c_depth)
        return out

    def _apply(self, *scaled: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Scaled state blocks -> (scaled f(state) blocks..., depth cost [B,C,h,w])."""
        d, p, h_d, h_p = self.codec.decode(scaled)
        if self.project_hidden:
            # f(Π(z)) with Π the projection onto |h| ≤ 1: every fixed point of f lies in that box, so the fixed
            # points are the same, and the GRU's convex mix of Π(h) and tanh keeps f's output inside it even
            # when Anderson extrapolates an iterate out of it (docs/deq.md §3).
            h_d, h_p = h_d.clamp(-1.0, 1.0), h_p.clamp(-1.0, 1.0)
        *new, c_depth = self.update(d, p, h_d, h_p)
        return (*self.codec.encode(new), c_depth)

    @torch.no_grad()
    def _record(self, z: Sequence[torch.Tensor], fz: Sequence[torch.Tensor], c_depth: torch.Tensor) -> None:
        diff_sq, out_sq = _block_squared_change(fz, z), _block_squared_norm(fz)
        abs_res, rel_res = _abs_and_rel(diff_sq, out_sq)
        self.abs.append(abs_res)
        self.rel.append(rel_res)
        self.block_rel.append(diff_sq.sqrt() / (out_sq.sqrt() + 1e-9))
        self.costs.append(c_depth.mean())

    def wrap_solver(self, solver: Callable) -> Callable:
        """The forward solver with recording switched on for its duration (phantom/IFT steps are not counted)."""

        def recording_solver(*args, **kwargs):
            self.recording = True
            try:
                return solver(*args, **kwargs)
            finally:
                self.recording = False

        return recording_solver


# ------------------------------------------------------------------------------------------- solve
def make_deq(d: DeqConfig, training: bool, forward_solver: str | None = None):
    """A torchdeq ``DEQIndexing`` core for these settings (training runs the whole budget, see docs/deq.md)."""
    deq = get_deq(
        core="indexing",
        f_solver=forward_solver or d.forward_solver,
        b_solver=d.backward_solver,
        f_max_iter=d.max_steps,
        b_max_iter=d.backward_max_steps,
        # In training the budget is always used up so that the n_states supervised states exist at fixed
        # steps; convergence is still judged against d.tol afterwards.
        f_tol=0.0 if training else d.tol,
        b_tol=d.backward_tol,
        f_stop_mode=d.stop_mode,
        b_stop_mode=d.stop_mode,
        n_states=d.n_states,
        ift=d.grad == "ift",
        grad=d.phantom_steps,
        tau=d.phantom_tau,
    )
    return deq.train(training)


def solve_budget(config: DroConfig, stages: int | None, steps_per_stage: int | None,
                 deq: DeqConfig | None = None) -> int:
    """Forward-solver evaluations of f allowed: ``max_steps`` of ``deq`` (default ``config.deq``), or
    stages × steps_per_stage when either is given."""
    if stages is None and steps_per_stage is None:
        return (deq or config.deq).max_steps
    s = config.stages if stages is None else stages
    n = config.steps_per_stage if steps_per_stage is None else steps_per_stage
    return s * n


def deq_forward(
    net: DroNet,
    target: torch.Tensor,
    refs: list[torch.Tensor],
    K: torch.Tensor,
    stages: int | None = None,
    steps_per_stage: int | None = None,
    init: DroState | None = None,
    features: tuple[Features, list[Features]] | None = None,
    return_cost_map: bool = False,
    deq_config: DeqConfig | None = None,
    warn: bool = True,
) -> DroOutput:
    """``DroNet.forward_full`` with ``solver == "deq"``: target [B,3,H,W], refs N×[B,3,H,W], K [B,3,3].

    Eval returns the fixed point only; train returns the initial prediction followed by the ``n_states``
    supervised solver states (with gradients), in the list form the losses expect. ``deq_config`` replaces
    ``net.config.deq`` for this call (the network is not changed); ``warn=False`` logs a failed solve at
    debug level only, for callers that count failures themselves (``reconstruct``).
    """
    cfg = net.config
    dcfg = deq_config or cfg.deq
    net.check_inputs(target, refs, K)
    budget = solve_budget(cfg, stages, steps_per_stage, dcfg)
    B, N = target.shape[0], len(refs)

    if features is None:
        fmap_all = net._run_encoder(net.fnet, [target, *refs])
        fmap_tgt, *fmaps_ref = torch.split(fmap_all, B, dim=0)
        context_depth_raw = None
    else:
        fmap_tgt, fmaps_ref = features[0].fmap, [f.fmap for f in features[1]]
        context_depth_raw = features[0].context_depth
    K8 = scale_intrinsics_feature(K, 1.0 / FEATURE_STRIDE).to(fmap_tgt.dtype)
    cost = FeatureCost(fmap_tgt, list(fmaps_ref), K8, cache_rays=True)

    d0, p0 = net.start_state(fmap_tgt, list(fmaps_ref), init)
    inv_preds: list[torch.Tensor] = []
    pose_preds: list[torch.Tensor] = []
    if net.training or budget == 0:
        # The initial heads learn only from this prediction, as in the unrolled mode.
        inv_preds.append(net.normalize(convex_upsample(d0, net.upmask_net(fmap_tgt))))
        pose_preds.append(p0)
    extras: dict = {"fmap_tgt": fmap_tgt, "fmaps_ref": list(fmaps_ref)}
    if budget == 0:
        extras["deq"] = None
        return DroOutput(inv_preds, pose_preds, DroState(d0, p0), torch.zeros(0), extras=extras)

    if context_depth_raw is None:
        context_depth_raw = net._run_encoder(net.cnet_depth, [target])
    h_d0, c_d = net._split_context(context_depth_raw)
    pairs = net._run_encoder(net.cnet_pose, [torch.cat([target, r], dim=1) for r in refs])
    pose_ctx_raw = torch.stack(pairs.split(B, dim=0), dim=1)
    h_p0, c_p = net._split_context(pose_ctx_raw.flatten(0, 1))
    h_p0 = h_p0.view(B, N, *h_p0.shape[1:])
    if init is not None and init.h_depth is not None:
        h_d0 = init.h_depth
    if init is not None and init.h_pose is not None:
        h_p0 = init.h_pose
    # The fixed point does not depend on where the solver starts, so no gradient flows into z0.
    z0 = [t.detach() for t in (d0, p0, h_d0, h_p0)]

    anchor_depth = None
    if dcfg.depth_anchor > 0:
        anchor_depth = d0 if init is None or init.inv_depth is None else net.initial_inv_depth(fmap_tgt)
    codec = _StateCodec(z0)
    update = UpdateMap(net, cost, c_d, c_p, dcfg.coupling, anchor_depth, dcfg.depth_anchor)
    func = _SolverFunction(update, codec, cfg.recompute_activations,
                           project_hidden=dcfg.project_hidden and not net.training)
    # The check of the returned state is one evaluation of the budget (none is left for it with a budget of 1).
    verify = dcfg.verify_returned and not net.training and budget >= 2
    first_budget = budget - 1 if verify else budget
    solver, solver_steps = _solver_within(dcfg.forward_solver, first_budget)
    if solver != dcfg.forward_solver:
        logger.info("DEQ budget %d too small for %s: plain fixed-point iteration instead", first_budget,
                    dcfg.forward_solver)
    deq = make_deq(dcfg, net.training, solver)
    deq.f_solver = func.wrap_solver(deq.f_solver)
    stats_box: dict = {}
    z_out, info = deq(
        func, codec.encode(z0), solver_kwargs={"f_max_iter": solver_steps},
        backward_writer=lambda binfo: _record_backward(stats_box, binfo),
    )
    states = [codec.decode(z) for z in z_out]
    for d, p, h_d, _ in states:
        inv_preds.append(net.normalize(convex_upsample(d, net.update_block_depth.upsample_mask(h_d))))
        pose_preds.append(p)
    d, p, h_d, h_p = states[-1]

    if net.training and (dcfg.train_residual or dcfg.train_jacobian):
        extras.update(fixed_point_terms(func, z_out[-1], jacobian=dcfg.train_jacobian))

    if verify:
        (d, p, h_d, h_p), stats = _solve_until_returned_state_holds(func, codec, [d, p, h_d, h_p], info, dcfg,
                                                                    budget, solver)
    else:
        stats = _solver_stats(func, info, dcfg, budget, solver)
    stats.hidden_excess = hidden_state_excess(h_d, h_p)
    if stats.hidden_excess > HIDDEN_BOUND_SLACK:
        # Every fixed point of f has |h| < 1 (the GRU output is a convex mix of tanh values): a small
        # residual outside that box is a spurious root of the solver (Broyden can find them), not a solution.
        stats.converged = False
    if net.training:
        stats.supervised_steps = list(deq._compute_f_iter(solver_steps))[: len(states)]
    stats_box["stats"] = stats
    _report(stats, net.training, warn)
    extras["deq"] = stats
    extras["deq_map"] = func  # f at this input, for diagnostics (dominant_eigenvalue)
    out = DroOutput(inv_preds, pose_preds, DroState(d, p, h_d, h_p), torch.stack(func.costs), extras=extras)
    if return_cost_map:
        X = cost.points(inv2depth(net.normalize(d)))
        mats = euler_vec_to_matrix(p)
        per_ref = [cost.single_T(i, mats[:, i], X).mean(1, keepdim=True) for i in range(N)]
        out.cost_map = torch.stack(per_ref, 1).mean(1).detach()
    return out


def _flat_leaf(z: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Detached state blocks -> (one leaf [B,D] that requires grad, the blocks as views of it).

    torchdeq's Jacobian tools differentiate one tensor by one tensor; running f on views of a single leaf
    makes them see the whole joint state, cross-block terms included.
    """
    B = z[0].shape[0]
    z_flat = torch.cat([t.detach().reshape(B, -1) for t in z], 1).requires_grad_(True)
    blocks = [part.view_as(t) for part, t in zip(z_flat.split([t[0].numel() for t in z], 1), z)]
    return z_flat, blocks


def _flat(blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    """State blocks -> [B,D] in ``_flat_leaf``'s order."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in blocks], 1)


def fixed_point_terms(func: _SolverFunction, z_scaled: Sequence[torch.Tensor],
                      jacobian: bool = False) -> dict[str, torch.Tensor]:
    """Training terms at the last supervised state z (detached), from one more evaluation of f; scalars.

    ``deq_residual``: mean over the batch of ||f(z) - z|| in the solver's block-normalised units (its ``abs``
    residual). z is detached, so the gradient acts on f only and pulls f(z) towards z. Without such a term a
    DEQ-trained update keeps moving the state by a roughly constant amount per step and the solver never
    meets its tolerance (benchmarks/results/deq_video.md).
    ``deq_jacobian`` (with ``jacobian``): torchdeq's Hutchinson estimate of ||∂f/∂z||_F² per state element at
    z (Bai et al., "Stabilizing equilibrium models by Jacobian regularization"). The residual term only moves
    f(z) onto z; this one bounds how strongly f amplifies a perturbation of z, which is what makes a fixed
    point attract instead of being circled (docs/deq.md §4).
    """
    if jacobian:
        z_flat, blocks = _flat_leaf(z_scaled)
    else:
        blocks = [t.detach() for t in z_scaled]
    fz = func(*blocks)
    # z (or its flat leaf) carries no weights: the gradient of both terms is f's only
    terms = {"deq_residual": (_block_squared_change(fz, blocks).sum(1) + 1e-12).sqrt().mean()}
    if jacobian:
        terms["deq_jacobian"] = jac_reg(_flat(fz), z_flat, vecs=1, create_graph=True)
    return terms


def dominant_eigenvalue(func: _SolverFunction, state: DroState,
                        iters: int = 40) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Power-method estimate of the largest |eigenvalue| of ∂f/∂z at ``state`` [B], and the share of its
    (left) eigenvector's squared norm in each block, name -> [B]; block-normalised units.

    ``func`` is ``out.extras["deq_map"]`` of the solve that produced ``state``. Near 1 means a direction in
    which f neither pulls the state back nor pushes it away, so the solver cannot make up any residual there
    (docs/deq.md §4). Costs ``iters`` backward passes through f.
    """
    z = func.codec.encode([state.inv_depth, state.poses, state.h_depth, state.h_pose])
    gen = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        z_flat, blocks = _flat_leaf(z)
        f_flat = _flat(func(*blocks))
        v = torch.randn(z_flat.shape, generator=gen, dtype=z_flat.dtype).to(z_flat.device)
        v = v / v.norm(dim=1, keepdim=True)
        log_growth = []
        for _ in range(iters):
            vJ = torch.autograd.grad(f_flat, z_flat, v, retain_graph=True)[0]
            norm = vJ.norm(dim=1, keepdim=True)
            log_growth.append(norm.log()[:, 0])
            v = vJ / norm
    # The per-step growth |vᵀJ|, not torchdeq's Rayleigh quotient (power_method): when the dominant
    # eigenvalues are a complex pair, as they are for the GRU dynamics, the quotient oscillates well below
    # |λ| while the growth's geometric mean over the settled second half converges to it.
    value = torch.stack(log_growth[iters // 2:]).mean(0).exp()
    parts = v.detach().split([t[0].numel() for t in z], 1)
    return value.detach(), {name: part.pow(2).sum(1) for name, part in zip(BLOCKS, parts)}


@torch.no_grad()
def returned_state_residual(func: _SolverFunction, state: Sequence[torch.Tensor], stop_mode: str) -> torch.Tensor:
    """The ``stop_mode`` residual [B] of ``state`` (d, p, h_d, h_p), from one more evaluation of f (whose mean
    depth cost joins ``func.costs``, one entry per evaluation)."""
    z = func.codec.encode(state)
    *fz, c_depth = func._apply(*z)
    func.costs.append(c_depth.mean())
    abs_res, rel_res = _abs_and_rel(_block_squared_change(fz, z), _block_squared_norm(fz))
    return abs_res if stop_mode == "abs" else rel_res


def _solver_within(solver: str, evaluations: int) -> tuple[str, int]:
    """(solver, torchdeq iteration count) that evaluates f at most ``evaluations`` times."""
    if solver == "anderson" and evaluations < 3:
        # Anderson evaluates f twice before it can mix and would return its start unchanged with fewer.
        return "fixed_point_iter", evaluations
    if solver == "broyden":
        # Broyden evaluates f once before its first iteration.
        return ("broyden", evaluations - 1) if evaluations >= 2 else ("fixed_point_iter", evaluations)
    return solver, evaluations


def _solve_until_returned_state_holds(
    func: _SolverFunction, codec: _StateCodec, state: list[torch.Tensor], info: dict, d: DeqConfig,
    budget: int, solver: str,
) -> tuple[list[torch.Tensor], DeqStats]:
    """``deq.verify_returned``: measure the returned state's own residual and, while it is above tol, solve again
    from that state with what is left of the budget; returns the lowest-residual returned state (d, p, h_d, h_p)
    and its statistics, convergence judged on that state alone.

    Every check costs one evaluation of f and is part of ``budget``: the first solve had ``budget`` − 1 and a
    continuation gets what is left minus one.
    """
    residual = returned_state_residual(func, state, d.stop_mode).float().cpu()
    checks, offset = 1, 0
    best = (state, residual, info, offset)
    while float(best[1].max()) > d.tol:
        steps = budget - len(func.rel) - checks - 1
        if steps < 1:
            break
        name, iterations = _solver_within(solver, steps)
        core = make_deq(d, False, name)
        core.f_solver = func.wrap_solver(core.f_solver)
        offset = len(func.rel)
        z_out, info = core(func, codec.encode(best[0]), solver_kwargs={"f_max_iter": iterations})
        state = codec.decode(z_out[-1])
        residual = returned_state_residual(func, state, d.stop_mode).float().cpu()
        checks += 1
        if float(residual.max()) < float(best[1].max()):
            best = (state, residual, info, offset)
    state, residual, info, offset = best
    stats = _solver_stats(func, info, d, budget, solver)
    stats.best_step = stats.best_step + offset
    stats.steps += checks
    stats.returned_residual = residual
    stats.converged = _within_tol(residual, d.tol)
    return state, stats


def _within_tol(residual: torch.Tensor, tol: float) -> bool:
    """Every batch element's residual [B] finite and ≤ tol (torchdeq starts its "lowest" at 1e8, and a solve
    that never improved on it is not converged either)."""
    return bool(torch.isfinite(residual).all() and (residual <= tol).all())


def _solver_stats(func: _SolverFunction, info: dict, d: DeqConfig, budget: int, solver: str) -> DeqStats:
    residual = info[f"{d.stop_mode}_lowest"].detach().float().cpu()
    rel = torch.stack(func.rel).float().cpu()  # [S,B]
    best = rel.argmin(0)  # per batch element
    block = torch.stack(func.block_rel).float().cpu()  # [S,B,4]
    per_block = block[best, torch.arange(block.shape[1])]  # [B,4]
    return DeqStats(
        solver=solver,
        stop_mode=d.stop_mode,
        tol=d.tol,
        max_steps=budget,
        steps=len(func.rel),
        residual=residual,
        # torchdeq counts Broyden iterations after its initial evaluation; evaluations are one more
        best_step=info["nstep"].detach().long().cpu() + (1 if solver == "broyden" else 0),
        rel_trace=rel,
        abs_trace=torch.stack(func.abs).float().cpu(),
        block_residuals={name: per_block[:, k] for k, name in enumerate(BLOCKS)},
        converged=_within_tol(residual, d.tol),
    )


def hidden_state_excess(h_depth: torch.Tensor, h_pose: torch.Tensor) -> float:
    """max(|h|) − 1 over both GRU states (≤ 0 for every true fixed point, see docs/deq.md)."""
    return float(torch.maximum(h_depth.detach().abs().max(), h_pose.detach().abs().max())) - 1.0


def _record_backward(box: dict, info: dict) -> None:
    stats: DeqStats | None = box.get("stats")
    if stats is None:
        return
    stats.backward = {
        "abs_residual": float(info["abs_lowest"].max()),
        "rel_residual": float(info["rel_lowest"].max()),
        "steps": float(info["nstep"].max()),
    }
    logger.debug("DEQ implicit backward: %s", stats.backward)


def _report(stats: DeqStats, training: bool, warn: bool = True) -> None:
    if stats.converged or not warn:
        logger.debug(stats.summary())
        return
    if training:
        _Warnings.train_failures += 1
        if (_Warnings.train_failures - 1) % TRAIN_WARNING_EVERY:
            return
        logger.warning("%s; returning the lowest-residual state (training solve failure #%d)",
                       stats.summary(), _Warnings.train_failures)
        return
    logger.warning("%s; returning the lowest-residual state. Raise deq.max_steps, loosen deq.tol, or try "
                   "another deq.forward_solver", stats.summary())


# ------------------------------------------------------------------------------------------- warm starts
def reproject_state(
    prev_state: DroState,
    T_new_from_prev: torch.Tensor,
    K: torch.Tensor,
    config: DroConfig,
    T_refs_from_prev: torch.Tensor | None = None,
    iterations: int = 3,
) -> DroState:
    """Map a solved state of the previous target to a warm start for a new target (docs/deq.md).

    ``T_new_from_prev`` [B,4,4] maps previous-target camera points to the new target camera; ``K`` [B,3,3]
    is in input pixels (as for ``forward_full``). Depth is re-projected by an iterated backward warp (no
    holes, no z-buffer); the depth GRU state is resampled with the same warp; pose GRU states are reused.
    Poses: with ``T_refs_from_prev`` [B,N,4,4] (new references' cameras from the previous target) they are
    composed exactly; without it the previous pose vectors are reused (same temporal offsets, constant
    velocity).
    """
    d_prev = prev_state.inv_depth
    B, _, h, w = d_prev.shape
    dtype = d_prev.dtype
    K8 = scale_intrinsics_feature(K, 1.0 / FEATURE_STRIDE).to(dtype=dtype, device=d_prev.device)
    T_new_from_prev = T_new_from_prev.to(dtype=dtype, device=d_prev.device)
    T_prev_from_new = invert_rigid(T_new_from_prev)
    # Non-positive inverse depths (the raw state may leave its nominal range) become far but finite.
    inv_floor = 0.5 / config.max_depth
    depth_floor = 0.5 * config.min_depth
    depth_prev = 1.0 / _normalized(d_prev, config).clamp(min=inv_floor)
    rays = camera_rays(K8, h, w)
    points_prev = rays * depth_prev  # [B,3,h,w] in the previous camera

    # Backward warp: a new pixel's depth z solves z = depth_new(X_prev(grid(z))); start from the previous
    # depth at the same pixel and iterate (exact for a fronto-parallel plane in one step, a few for slopes).
    depth_new = depth_prev
    grid = None
    for _ in range(max(1, iterations)):
        grid = project_to_grid(rays * depth_new, K8, T_prev_from_new, (h, w))
        sampled = _sample_border(points_prev, grid)
        depth_new = transform_points(T_new_from_prev, sampled)[:, 2:3].clamp(min=depth_floor)
    inv_new = 1.0 / depth_new
    raw_new = _unnormalized(inv_new, config)
    h_depth = None if prev_state.h_depth is None else _sample_border(prev_state.h_depth, grid)
    if T_refs_from_prev is None:
        poses = prev_state.poses.clone()
    else:
        T = T_refs_from_prev.to(dtype=dtype, device=d_prev.device) @ T_prev_from_new.unsqueeze(1)
        poses = matrix_to_euler_vec(T)
    h_pose = None if prev_state.h_pose is None else prev_state.h_pose.clone()
    return DroState(raw_new, poses, h_depth, h_pose)


def _normalized(raw: torch.Tensor, config: DroConfig) -> torch.Tensor:
    if not config.normalize_output:
        return raw
    lo, hi = 1.0 / config.max_depth, 1.0 / config.min_depth
    return lo + (hi - lo) * raw


def _unnormalized(inv_depth: torch.Tensor, config: DroConfig) -> torch.Tensor:
    if not config.normalize_output:
        return inv_depth
    lo, hi = 1.0 / config.max_depth, 1.0 / config.min_depth
    return (inv_depth - lo) / (hi - lo)


def _sample_border(src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling of src [B,C,h,w] at grid [B,h,w,2], border-clamped (out-of-view pixels take edges)."""
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)


def window_warm_start(
    prev_state: DroState,
    prev_target: int,
    prev_refs: Sequence[int],
    prev_T_ref_from_tgt: torch.Tensor,
    new_target: int,
    new_refs: Sequence[int],
    K: torch.Tensor,
    config: DroConfig,
) -> DroState | None:
    """Warm start for a sliding window from the previous window's solution, by frame indices (docs/deq.md).

    ``prev_T_ref_from_tgt`` [1,N,4,4] or [N,4,4]: the previous solve's poses of ``prev_refs``; ``K`` [1,3,3] in
    input pixels. Returns None (start cold) when the new target was not a reference of the previous target
    (its motion is unknown) or the number of references changed. References seen by the previous window
    get exactly composed poses; others keep the previous vector in the same slot (constant velocity).
    """
    if new_target not in prev_refs or len(new_refs) != len(prev_refs):
        return None
    T_prev = prev_T_ref_from_tgt.reshape(-1, len(prev_refs), 4, 4).to(prev_state.inv_depth)
    T_new_from_prev = T_prev[:, list(prev_refs).index(new_target)]
    state = reproject_state(prev_state, T_new_from_prev, K, config)
    T_prev_from_new = invert_rigid(T_new_from_prev)
    poses = state.poses.clone()
    for slot, ref in enumerate(new_refs):
        if ref == prev_target:
            T_ref_from_prev = torch.eye(4, dtype=T_prev.dtype, device=T_prev.device).expand_as(T_new_from_prev)
        elif ref in prev_refs:
            T_ref_from_prev = T_prev[:, list(prev_refs).index(ref)]
        else:
            continue
        poses[:, slot] = matrix_to_euler_vec(T_ref_from_prev @ T_prev_from_new)
    return DroState(state.inv_depth, poses, state.h_depth, state.h_pose)


# ------------------------------------------------------------------------------------------- sequences
@dataclass
class SolvedWindow:
    """A solved window kept for the next one: frame indices, final state and T_ref_from_tgt [1,N,4,4]."""

    target: int
    refs: list[int]
    state: DroState
    T_ref_from_tgt: torch.Tensor


class SequenceWarmStart:
    """Warm starts along a sequence: each window starts from the previous window's solution mapped to its
    target by ``window_warm_start`` (docs/deq.md §5); ``reset()`` at the start of every sequence.

    With ``require_converged`` (default) only a converged solve is handed on: a state that is not a fixed
    point carries the solver's leftover error into the next window, and along a video those errors add up
    (measured: benchmarks/results/deq_video.md), whereas a cold start forgets them.

    ``warm_poses`` hands on the composed poses and the pose GRU states too. Off by default: with the trained
    models the pose update barely moves a pose it starts near, so composed poses keep the previous windows'
    motion (constant velocity) instead of this window's; measured on the benchmark video, the per-window
    rotation error went from 2.8° (cold poses) to 7.5° (docs/deq.md §5). The depth and its GRU state are
    always handed on.
    """

    def __init__(self, config: DroConfig, require_converged: bool = True, warm_poses: bool = False) -> None:
        self.config = config
        self.require_converged = require_converged
        self.warm_poses = warm_poses
        self.previous: SolvedWindow | None = None
        self._cold_reason = "cold: first window"

    def reset(self) -> None:
        self.previous = None
        self._cold_reason = "cold: first window"

    def initial_state(self, target: int, refs: Sequence[int], K: torch.Tensor) -> tuple[DroState | None, str]:
        """(warm start or None, why): ``"warm"``, or ``"cold: <reason>"``; K [1,3,3] in input pixels."""
        prev = self.previous
        if prev is None:
            return None, self._cold_reason
        init = window_warm_start(prev.state, prev.target, prev.refs, prev.T_ref_from_tgt, target, list(refs), K,
                                 self.config)
        if init is None:
            return None, "cold: no motion estimate from the previous window"
        if not self.warm_poses:
            init = DroState(init.inv_depth, None, init.h_depth, None)  # poses from the initial pose head
        return init, "warm"

    def remember(self, target: int, refs: Sequence[int], out: DroOutput) -> None:
        """Keep ``out`` (an eval solve of this window) for the next window, unless it is unusable as a start."""
        stats: DeqStats | None = out.extras.get("deq")
        if self.require_converged and (stats is None or not stats.converged):
            self.previous = None
            self._cold_reason = "cold: previous window did not converge"
            return
        state = out.state.detach()
        tensors = [t for t in (state.inv_depth, state.poses, state.h_depth, state.h_pose) if t is not None]
        in_box = state.h_depth is None or state.h_pose is None or (
            hidden_state_excess(state.h_depth, state.h_pose) <= HIDDEN_BOUND_SLACK)
        if not all(bool(torch.isfinite(t).all()) for t in tensors) or not in_box:
            # A non-finite state or a spurious root outside |h| < 1 would only mislead the next solve.
            self.previous = None
            self._cold_reason = "cold: previous solution unusable (non-finite or |h| > 1)"
            return
        self.previous = SolvedWindow(target, list(refs), state, euler_vec_to_matrix(out.poses[-1].detach()))
