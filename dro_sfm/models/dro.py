"""The DRO network: encoders, initial heads and the alternating depth/pose recurrent optimiser (spec §9)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.utils.checkpoint

from dro_sfm.errors import ConfigError, InputError
from dro_sfm.geometry.camera import scale_intrinsics_feature
from dro_sfm.geometry.pose import euler_vec_to_matrix
from dro_sfm.geometry.warp import disp_to_depth, inv2depth
from dro_sfm.models.config import DroConfig
from dro_sfm.models.cost import FeatureCost
from dro_sfm.models.heads import DepthHead, MaskHead, PoseHead
from dro_sfm.models.resnet import ResNetEncoder
from dro_sfm.models.update import DepthUpdateBlock, PoseUpdateBlock
from dro_sfm.models.upsample import convex_upsample

FEATURE_STRIDE = 8
# Eval-mode encoders run image by image when a batched stem activation would exceed this (at 320x960 with
# 3 images it is 59 MB and the largest tensor of a forward; at 240x320, 15 MB).
PER_IMAGE_ENCODING_ABOVE_BYTES = 32 * 2**20
# The optimisations of the fast path (none changes results beyond float rounding; see tests/test_parity.py).
FAST_PARTS = (
    "mask_last_only", "cached_geometry", "batched_pose_refs", "pose_conv_precompute", "fused_gru", "channels_last",
    "context_precompute", "per_image_encoding", "folded_batchnorm",
)


@dataclass
class DroState:
    """The optimiser's state at feature resolution: a warm start, or what a solve ended with.

    ``inv_depth`` [B,1,h,w] raw (un-normalised) inverse depth; ``poses`` [B,N,6] T_ref_from_tgt vectors;
    ``h_depth`` [B,hd,h,w] and ``h_pose`` [B,N,hd,h,w] GRU states (None: start from the context encoders).
    As a start, ``inv_depth`` or ``poses`` None means: from the initial heads, as without a start.
    """

    inv_depth: torch.Tensor | None
    poses: torch.Tensor | None
    h_depth: torch.Tensor | None = None
    h_pose: torch.Tensor | None = None

    def detach(self) -> DroState:
        d = lambda t: None if t is None else t.detach()  # noqa: E731
        return DroState(d(self.inv_depth), d(self.poses), d(self.h_depth), d(self.h_pose))


@dataclass
class Features:
    """Per-image features that can be computed once and reused across windows (eval mode only).

    ``fmap`` [B,C,h,w] from ``fnet``; ``context_depth`` [B,hd+cd,h,w] raw output of ``cnet_depth`` or None.
    """

    fmap: torch.Tensor
    context_depth: torch.Tensor | None = None


@dataclass
class DroOutput:
    """Everything one forward pass produced.

    ``inv_depths``: predictions [B,1,H,W] in output units (normalised with ``normalize_output``);
    ``poses``: matching [B,N,6] pose vectors; ``state``: final state (warm start for the next call);
    ``step_costs``: [S] mean feature-metric cost before each depth step (detached);
    ``cost_map``: [B,1,h,w] final per-pixel cost (only when requested).
    """

    inv_depths: list[torch.Tensor]
    poses: list[torch.Tensor]
    state: DroState
    step_costs: torch.Tensor
    cost_map: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


class DroNet(nn.Module):
    """DRO: feature-metric cost minimised by ConvGRUs that alternately update depth and pose.

    Parameter names match the official ``DepthPoseNet`` so official state dicts load unchanged.
    """

    def __init__(self, config: DroConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.fnet = ResNetEncoder(c.feature_dim, 1, c.encoder)
        self.depth_head = DepthHead(c.feature_dim, c.head_dim)
        self.pose_head = PoseHead(2 * c.feature_dim, c.head_dim, c.pose_rotation_scale)
        self.upmask_net = MaskHead(c.feature_dim, 2 * c.feature_dim)
        self.update_block_depth = DepthUpdateBlock(c.feature_dim, c.hidden_dim, c.context_dim, c.motion_dim)
        self.update_block_pose = PoseUpdateBlock(
            c.feature_dim, c.hidden_dim, c.context_dim, c.motion_dim, c.pose_rotation_scale
        )
        if c.with_unused_cnet:
            # Never run (spec §3); it exists so that official checkpoints load strictly.
            self.cnet = ResNetEncoder(c.feature_dim, 1, c.encoder)
        self.cnet_depth = ResNetEncoder(c.hidden_dim + c.context_dim, 1, c.encoder)
        self.cnet_pose = ResNetEncoder(c.hidden_dim + c.context_dim, 2, c.encoder)
        self.update_block_pose.encoder.fast = c.fast
        self.update_block_depth.depth_gru.fused = self.update_block_pose.pose_gru.fused = c.fast
        self.update_block_depth.depth_gru.channels_last = self.update_block_pose.pose_gru.channels_last = c.fast
        for encoder in self._encoders():
            encoder.set_fold_batchnorm(c.fast)
        # Individual optimisations of the fast path, switchable one by one to measure what each gives.
        self.fast_parts = dict.fromkeys(FAST_PARTS, True)
        self.trace: Callable[[str, torch.Tensor], None] | None = None

    # ----------------------------------------------------------------------------------------- helpers
    def _opt(self, part: str) -> bool:
        return self.config.fast and self.fast_parts[part]

    def set_fast(self, fast: bool, disable: tuple[str, ...] = ()) -> None:
        """Switch between the optimised path and the literal spec path (same weights, same outputs)."""
        self.config = self.config.with_(fast=fast)
        for part in disable:
            if part not in FAST_PARTS:
                raise ValueError(f"unknown optimisation {part!r}; known: {', '.join(FAST_PARTS)}")
        self.fast_parts = {p: p not in disable for p in FAST_PARTS}
        self.update_block_pose.encoder.fast = fast and "pose_conv_precompute" not in disable
        fused = fast and "fused_gru" not in disable
        self.update_block_depth.depth_gru.fused = self.update_block_pose.pose_gru.fused = fused
        nhwc = fast and "channels_last" not in disable
        self.update_block_depth.depth_gru.channels_last = self.update_block_pose.pose_gru.channels_last = nhwc
        for encoder in self._encoders():
            encoder.set_fold_batchnorm(fast and "folded_batchnorm" not in disable)

    def _encoders(self) -> list[ResNetEncoder]:
        return [m for m in self.children() if isinstance(m, ResNetEncoder)]

    def freeze_batchnorm(self) -> None:
        """Every BatchNorm uses (and keeps) its running statistics, also while the rest is in train mode."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()

    def release_unused_encoder(self) -> None:
        """Free the never-run ``cnet`` encoder (official checkpoints carry it; inference does not need it)."""
        if hasattr(self, "cnet"):
            del self.cnet
            self.config = self.config.with_(with_unused_cnet=False)

    def normalize(self, raw_inv_depth: torch.Tensor) -> torch.Tensor:
        """Raw inverse depth (any shape) -> output units: ``disp_to_depth`` with ``normalize_output``."""
        if not self.config.normalize_output:
            return raw_inv_depth
        return disp_to_depth(raw_inv_depth, self.config.min_depth, self.config.max_depth)[0]

    def start_state(self, fmap_tgt: torch.Tensor, fmaps_ref: list[torch.Tensor],
                    init: DroState | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw inverse depth [B,1,h,w] and pose vectors [B,N,6] to start from: ``init``'s, and the initial
        heads' for whatever ``init`` leaves out (all of it when None)."""
        p = init.poses if init is not None else None
        d = init.inv_depth if init is not None else None
        if p is None:
            p = torch.stack([self.pose_head(torch.cat([fmap_tgt, fr], dim=1)) for fr in fmaps_ref], dim=1)
            self._emit("pose_head_init", p.transpose(0, 1))
        if d is None:
            d = self.initial_inv_depth(fmap_tgt)
            self._emit("depth_head", d)
        return d, p

    def initial_inv_depth(self, fmap_tgt: torch.Tensor) -> torch.Tensor:
        """The initial depth head's raw inverse depth [B,1,h,w] from the target's features [B,C,h,w]."""
        return self.depth_head(fmap_tgt, act=torch.sigmoid)

    def _emit(self, name: str, value: torch.Tensor) -> None:
        if self.trace is not None:
            self.trace(name, value.detach())

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,C,H,W] in the memory layout the convolutions run fastest in.

        oneDNN's CPU convolutions work in channels-last (NHWC); given NCHW tensors they reorder input and
        output at every call, which costs up to half of a 1×5 or 7×7 convolution's time here. A channels-last
        input makes every later activation channels-last too. Eval mode without autograd only: train-mode
        BatchNorm's running statistics summed in the other order drift past the fixture's 1e-7 tolerance.
        """
        if self._opt("channels_last") and not self.training and not torch.is_grad_enabled():
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def _context_responses(self, gru, context: torch.Tensor) -> list[torch.Tensor] | None:
        """The GRU's response to the solve-constant context, when the fused no-grad path will use it."""
        if self._opt("context_precompute") and gru.fused and not torch.is_grad_enabled():
            return gru.context_responses(context)
        return None

    def _run_encoder(self, encoder: ResNetEncoder, inputs: list[torch.Tensor]) -> torch.Tensor:
        """``encoder`` over inputs N×[B,C,H,W] as one batch -> [N·B,c,H/8,W/8] (input i at rows i·B...).

        In eval mode without autograd, large inputs run one at a time: BatchNorm then uses its running
        statistics, so each output is the same, and the peak activation memory is one input's (the
        full-resolution stem activations of a whole batch are the largest tensors of a forward). Small
        batches stay batched, which is faster (at 240x320 per-image encoding cost ~2 % of a forward).
        """
        if (self._opt("per_image_encoding") and not self.training and not torch.is_grad_enabled()
                and self._stem_bytes(encoder, inputs) > PER_IMAGE_ENCODING_ABOVE_BYTES):
            return torch.cat([encoder(self._layout(x)) for x in inputs], dim=0)
        batch = self._layout(torch.cat(inputs, dim=0))
        if self.config.recompute_activations and torch.is_grad_enabled():
            return self._checkpointed(encoder, batch)
        return encoder(batch)

    @staticmethod
    def _stem_bytes(encoder: ResNetEncoder, inputs: list[torch.Tensor]) -> int:
        """Size of the encoder's stem activation [N·B,stem,H/2,W/2] (float32) if the inputs ran as one batch."""
        rows = sum(x.shape[0] for x in inputs)
        H, W = inputs[0].shape[-2:]
        return rows * encoder.conv1.out_channels * ((H + 1) // 2) * ((W + 1) // 2) * 4

    @staticmethod
    def _checkpointed(encoder: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """``encoder(batch)`` keeping only its input and output for backward; the rest is recomputed there.

        The encoders' full-resolution activations are the part of a training step's memory that does not
        depend on the iteration count (the floor under DEQ's flat memory). Recomputing a train-mode
        BatchNorm would update its running statistics twice, so this needs frozen BatchNorm.
        """
        if any(m.training for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)):
            raise ConfigError("recompute_activations needs frozen BatchNorm (optim.freeze_bn: true in the training "
                              "config): recomputing train-mode BatchNorm would update its statistics twice")
        return torch.utils.checkpoint.checkpoint(encoder, batch, use_reentrant=False)

    def encode(self, images: torch.Tensor) -> Features:
        """Per-image features of images [B,3,H,W]: fnet map and the depth context (eval-mode reuse)."""
        per_image = list(images.split(1, dim=0))
        return Features(self._run_encoder(self.fnet, per_image), self._run_encoder(self.cnet_depth, per_image))

    def _split_context(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hd = self.config.hidden_dim
        return torch.tanh(raw[:, :hd]), torch.relu(raw[:, hd:])

    @staticmethod
    def check_inputs(target: torch.Tensor, refs: list[torch.Tensor], K: torch.Tensor) -> None:
        """Shapes: target [B,3,H,W] with H, W multiples of 16; refs N× the same shape; K [B,3,3]."""
        if target.dim() != 4 or target.shape[1] != 3:
            raise InputError(f"target must be [B,3,H,W], got {tuple(target.shape)}")
        H, W = target.shape[-2:]
        if H % 16 or W % 16:
            raise InputError(f"image size {H}x{W} must be a multiple of 16 in both dimensions; resize first")
        if len(refs) == 0:
            raise InputError("at least one reference image is needed")
        for r in refs:
            if r.shape != target.shape:
                raise InputError(f"reference shape {tuple(r.shape)} differs from target {tuple(target.shape)}")
        if K.shape != (target.shape[0], 3, 3):
            raise InputError(f"intrinsics must be [B,3,3] = [{target.shape[0]},3,3], got {tuple(K.shape)}")

    # ----------------------------------------------------------------------------------------- forward
    def forward_full(
        self,
        target: torch.Tensor,
        refs: list[torch.Tensor],
        K: torch.Tensor,
        stages: int | None = None,
        steps_per_stage: int | None = None,
        init: DroState | None = None,
        features: tuple[Features, list[Features]] | None = None,
        return_cost_map: bool = False,
    ) -> DroOutput:
        """Run the optimiser on target [B,3,H,W] in [0,1], refs N×[B,3,H,W] and K [B,3,3] (input pixels).

        ``stages``/``steps_per_stage`` override the configured iteration counts; ``init`` warm-starts the
        state; ``features`` supplies precomputed per-image features (eval mode). With ``solver == "deq"``
        the fixed-point solve of ``dro_sfm.models.deq`` runs instead (budget: stages × steps_per_stage if
        given, else ``deq.max_steps``).
        """
        cfg = self.config
        if cfg.solver == "deq":
            from dro_sfm.models.deq import deq_forward  # deq imports this module

            return deq_forward(self, target, refs, K, stages, steps_per_stage, init, features, return_cost_map)
        self.check_inputs(target, refs, K)
        stages = cfg.stages if stages is None else stages
        n_steps = cfg.steps_per_stage if steps_per_stage is None else steps_per_stage
        fast = self._opt("mask_last_only")
        cached = self._opt("cached_geometry")
        B, N = target.shape[0], len(refs)
        record_every_step = self.training and cfg.all_steps_in_train
        return_all = self.training

        # Features: fnet over [target; refs] as one batch (train-mode BatchNorm sees them together).
        if features is None:
            fmap_all = self._run_encoder(self.fnet, [target, *refs])
            self._emit("fnet", fmap_all)
            fmap_tgt, *fmaps_ref = torch.split(fmap_all, B, dim=0)
            context_depth_raw = None
        else:
            fmap_tgt, fmaps_ref = features[0].fmap, [f.fmap for f in features[1]]
            context_depth_raw = features[0].context_depth
        K8 = scale_intrinsics_feature(K, 1.0 / FEATURE_STRIDE)
        cost = FeatureCost(fmap_tgt, list(fmaps_ref), K8, cache_rays=cached)

        inv_preds: list[torch.Tensor] = []
        pose_preds: list[torch.Tensor] = []
        d, p = self.start_state(fmap_tgt, fmaps_ref, init)
        if return_all or stages == 0 or not fast:
            mask0 = self.upmask_net(fmap_tgt)
            self._emit("upmask_net", mask0)
            inv_preds.append(self.normalize(convex_upsample(d, mask0)))
            pose_preds.append(p)

        step_costs: list[torch.Tensor] = []
        if stages > 0:
            if context_depth_raw is None:
                context_depth_raw = self._run_encoder(self.cnet_depth, [target])
            self._emit("cnet_depth", context_depth_raw)
            h_d, c_d = self._split_context(context_depth_raw)
            pairs = self._run_encoder(self.cnet_pose, [torch.cat([target, r], dim=1) for r in refs])
            pose_ctx_raw = torch.stack(pairs.split(B, dim=0), dim=1)
            self._emit("cnet_pose", pose_ctx_raw.transpose(0, 1))
            h_p, c_p = self._split_context(pose_ctx_raw.flatten(0, 1))  # [B·N,...], row b·N + i
            if init is not None and init.h_depth is not None:
                h_d = init.h_depth
            if init is not None and init.h_pose is not None:
                h_p = init.h_pose.flatten(0, 1)
            ctx_d = self._context_responses(self.update_block_depth.depth_gru, c_d)
            ctx_p = self._context_responses(self.update_block_pose.pose_gru, c_p)
            # Held through the whole solve otherwise: the raw contexts always, the contexts themselves once
            # their responses are precomputed (at 320x960 with 2 references together ~20 MB).
            del context_depth_raw, pose_ctx_raw, pairs
            if ctx_d is not None:
                c_d = None
            if ctx_p is not None and self._opt("batched_pose_refs"):
                c_p = None

        for stage in range(stages):
            d = d.detach()
            p = p.detach()
            depth_stage_start = inv2depth(self.normalize(d))
            pose_mats = euler_vec_to_matrix(p) if cached else None  # frozen during the depth update
            for k in range(n_steps):
                depth_now = inv2depth(self.normalize(d))
                if cached:
                    X = cost.points(depth_now)
                    c = torch.stack([cost.single_T(i, pose_mats[:, i], X) for i in range(N)], 1).mean(1)
                else:
                    c = cost.mean_over_refs(list(p.unbind(1)), depth_now)
                if stage * n_steps + k in (0, n_steps):
                    self._emit(f"depth_encoder_call{stage * n_steps + k}_state", d)
                    self._emit(f"depth_encoder_call{stage * n_steps + k}_cost", c)
                step_costs.append(c.detach().mean())
                h_d, d = self.update_block_depth.step(h_d, c_d, d, c, ctx_d)
                last = k == n_steps - 1
                returned = record_every_step or (last and (return_all or stage == stages - 1))
                if returned or not fast:
                    mask = self.update_block_depth.upsample_mask(h_d)
                    if record_every_step or last:
                        inv_preds.append(self.normalize(convex_upsample(d, mask)))
            p, h_p, pose_seq = self._pose_stage(cost, depth_stage_start, p, h_p, c_p, n_steps, stage, ctx_p)
            if record_every_step:
                pose_preds.extend(pose_seq)
            else:
                pose_preds.append(pose_seq[-1])

        if stages > 0:
            state = DroState(d, p, h_d, h_p.view(B, N, *h_p.shape[1:]))
        else:
            state = DroState(d, p)
        out = DroOutput(inv_preds, pose_preds, state, torch.stack(step_costs) if step_costs else torch.zeros(0))
        out.extras["fmap_tgt"], out.extras["fmaps_ref"] = fmap_tgt, list(fmaps_ref)
        if not return_all and fast:
            # Eval fast path upsampled only the final prediction.
            out.inv_depths = out.inv_depths[-1:]
            out.poses = out.poses[-1:]
        if return_cost_map:
            X = cost.points(inv2depth(self.normalize(d)))
            mats = euler_vec_to_matrix(p)
            per_ref = [cost.single_T(i, mats[:, i], X).mean(1, keepdim=True) for i in range(N)]
            out.cost_map = torch.stack(per_ref, 1).mean(1).detach()
        return out

    def _pose_stage(
        self,
        cost: FeatureCost,
        depth_stage_start: torch.Tensor,
        p: torch.Tensor,
        h_p: torch.Tensor,
        c_p: torch.Tensor,
        n_steps: int,
        stage: int,
        ctx_p: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One stage of pose updates for all references; returns (poses [B,N,6], states, per-step poses).

        ``ctx_p``: the pose GRU's precomputed context responses for the B·N batch (batched path only).
        """
        B, N = p.shape[:2]
        X0 = cost.points(depth_stage_start)
        seq: list[torch.Tensor] = []
        if self._opt("batched_pose_refs"):
            # All references at once: the GRU runs on a B·N batch (references are independent).
            pose_flat = p.reshape(B * N, 6)
            for _ in range(n_steps):
                costs = [cost.single(i, pose_flat.view(B, N, 6)[:, i], X0) for i in range(N)]
                c = torch.stack(costs, dim=1).flatten(0, 1)
                h_p, pose_flat = self.update_block_pose.step(h_p, c_p, pose_flat, c, ctx_p)
                seq.append(pose_flat.view(B, N, 6))
            return seq[-1], h_p, seq
        h_list = list(h_p.view(B, N, *h_p.shape[1:]).unbind(1))
        c_list = list(c_p.view(B, N, *c_p.shape[1:]).unbind(1))
        per_ref: list[list[torch.Tensor]] = []
        for i in range(N):
            pose_i, steps = p[:, i], []
            for k in range(n_steps):
                c = cost.single(i, pose_i, cost.points(depth_stage_start))
                if stage == 0 and k == 0 and i < 2:
                    self._emit(f"pose_encoder_call{4 * i}_state", pose_i)
                    self._emit(f"pose_encoder_call{4 * i}_cost", c)
                h_list[i], pose_i = self.update_block_pose.step(h_list[i], c_list[i], pose_i, c)
                steps.append(pose_i)
            per_ref.append(steps)
        seq = [torch.stack([per_ref[i][k] for i in range(N)], dim=1) for k in range(n_steps)]
        return seq[-1], torch.stack(h_list, 1).flatten(0, 1), seq

    def forward(self, target: torch.Tensor, refs: list[torch.Tensor], K: torch.Tensor, **kwargs):
        """Official interface: eval -> (inv_depth [B,1,H,W], poses [B,N,6]); train -> (list, [B,N,K,6])."""
        out = self.forward_full(target, refs, K, **kwargs)
        if self.training:
            return out.inv_depths, torch.stack(out.poses, dim=2)
        return out.inv_depths[-1], out.poses[-1]

    def load_official_state_dict(self, state_dict, strict: bool = True) -> None:
        """Load an official ``DepthPoseNet`` state dict (keys relative to ``depth_net.`` or prefixed)."""
        from dro_sfm.models.official import load_official_state_dict

        load_official_state_dict(self, state_dict, strict=strict)
