"""Recurrent update blocks: cost/state encoders, the separable ConvGRU, depth and pose updaters."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from dro_sfm.models.heads import DepthHead, PoseHead


class _FusedPass(NamedTuple):
    """One pass of the fused GRU, each weight contiguous and stored once (together one copy of the pass).

    x = cat([context, step features]); the context part of x's weights is used once per solve (see
    ``SepConvGRU.context_responses``), the features part at every step.
    """

    W_h: torch.Tensor           # [2hd,hd,k] z and r on the state
    b_h: torch.Tensor           # [2hd]
    W_x_context: torch.Tensor   # [3hd,cd,k] z, r, q on the context channels of x
    W_x_features: torch.Tensor  # [3hd,cin-cd,k] z, r, q on the step-feature channels of x
    b_x: torch.Tensor           # [3hd] (only q's bias; z/r's sit in b_h)
    W_qh: torch.Tensor          # [hd,hd,k] q on r*h
    padding: tuple[int, int]


class SepConvGRU(nn.Module):
    """ConvGRU with a horizontal (1×5) then a vertical (5×1) pass."""

    def __init__(self, hidden: int, input_dim: int) -> None:
        super().__init__()
        c = hidden + input_dim
        self.convz1 = nn.Conv2d(c, hidden, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(c, hidden, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(c, hidden, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(c, hidden, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(c, hidden, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(c, hidden, (5, 1), padding=(2, 0))

        self.fused = False
        self.channels_last = False  # fused path only: run the convolutions on NHWC tensors (see DroNet._layout)
        self._fused_cache: tuple | None = None

    def _fused_weights(self) -> list[_FusedPass]:
        """The two passes' fused weights (see ``_FusedPass``), cached per parameter version."""
        convs = (self.convz1, self.convr1, self.convq1, self.convz2, self.convr2, self.convq2)
        key = tuple((c.weight._version, c.weight.data_ptr(), c.bias._version) for c in convs)
        if self._fused_cache is not None and self._fused_cache[0] == key:
            return self._fused_cache[1]
        hd = self.convz1.out_channels
        cd = self.convz1.in_channels - 2 * hd  # x = cat([context, step features]); the features are hd wide
        passes = []
        for cz, cr, cq in ((self.convz1, self.convr1, self.convq1), (self.convz2, self.convr2, self.convq2)):
            W_x = torch.cat([cz.weight[:, hd:], cr.weight[:, hd:], cq.weight[:, hd:]]).detach()
            passes.append(_FusedPass(
                W_h=torch.cat([cz.weight[:, :hd], cr.weight[:, :hd]]).detach(),
                b_h=torch.cat([cz.bias, cr.bias]).detach(),
                W_x_context=W_x[:, :cd].contiguous(),
                W_x_features=W_x[:, cd:].contiguous(),
                b_x=torch.cat([torch.zeros_like(cz.bias), torch.zeros_like(cr.bias), cq.bias]).detach(),
                W_qh=cq.weight[:, :hd].detach().contiguous(),
                padding=cz.padding,
            ))
            del W_x
        self._fused_cache = (key, passes)
        return passes

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """State h [B,hd,h,w], input x [B,cin,h,w] -> new state [B,hd,h,w]."""
        if self.fused and not torch.is_grad_enabled():
            return self._forward_fused(h, x)
        for cz, cr, cq in ((self.convz1, self.convr1, self.convq1), (self.convz2, self.convr2, self.convq2)):
            hx = torch.cat([h, x], dim=1)
            z = torch.sigmoid(cz(hx))
            r = torch.sigmoid(cr(hx))
            q = torch.tanh(cq(torch.cat([r * h, x], dim=1)))
            h = (1 - z) * h + z * q
        return h

    def _forward_fused(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Same map without concatenations: convolution is linear, so each gate's conv over cat([h, x]) is the
        sum of a conv over h and one over x; z and r (and the x part of q) share one call each."""
        if self.channels_last:
            # The inputs arrive from concatenations with 1- or 6-channel maps, which fall back to NCHW.
            x = x.contiguous(memory_format=torch.channels_last)
        # Only the ablation without context precompute comes here. x's weight is stored in its two parts,
        # so each part convolves its own channels (as the precomputing path does, over two calls).
        cd = self._fused_weights()[0].W_x_context.shape[1]
        context, feat = x[:, :cd], x[:, cd:]
        return self._fused_passes(h, lambda w, _: F.conv2d(context, w.W_x_context, w.b_x, padding=w.padding)
                                  .add_(F.conv2d(feat, w.W_x_features, None, padding=w.padding)))

    def context_responses(self, context: torch.Tensor) -> list[torch.Tensor]:
        """Per pass, the gates' response [B,3hd,h,w] to the context channels (first in x), biases included.

        The context is fixed for a whole solve, so this part of every step's input convolution is computed
        once; ``forward_with_context`` then convolves only the step's own features.
        """
        if self.channels_last:
            context = context.contiguous(memory_format=torch.channels_last)
        return [F.conv2d(context, w.W_x_context, w.b_x, padding=w.padding) for w in self._fused_weights()]

    def forward_with_context(self, h: torch.Tensor, feat: torch.Tensor, responses: list[torch.Tensor]) -> torch.Tensor:
        """Fused step with x = cat([context, feat]) given the context's ``context_responses``: -> [B,hd,h,w]."""
        if self.channels_last:
            feat = feat.contiguous(memory_format=torch.channels_last)
        return self._fused_passes(h, lambda w, i: F.conv2d(feat, w.W_x_features, None, padding=w.padding)
                                  .add_(responses[i]))

    def _fused_passes(self, h: torch.Tensor,
                      x_part: Callable[[_FusedPass, int], torch.Tensor]) -> torch.Tensor:
        """The two gated passes; ``x_part(weights, i)`` gives pass i's response [B,3hd,h,w] to the input x.

        Each pass works in two fresh buffers (the h-convolutions' outputs) updated in place, so its working
        memory is 3hd channels plus the input response, not the dozen temporaries of the literal formulas.
        The operations and their order are those of the literal GRU, so the results are the same bits.
        """
        hd = h.shape[1]
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for i, w in enumerate(self._fused_weights()):
            xs = x_part(w, i)
            zr = F.conv2d(h, w.W_h, w.b_h, padding=w.padding).add_(xs[:, :2 * hd]).sigmoid_()
            z, r = zr[:, :hd], zr[:, hd:]
            q = F.conv2d(r.mul_(h), w.W_qh, None, padding=w.padding).add_(xs[:, 2 * hd:]).tanh_()
            del xs, r
            h = q.mul_(z).add_(z.neg_().add_(1).mul_(h))  # z*q + (1-z)*h
        return h


class CostEncoder(nn.Module):
    """The shared cost branch of both update encoders: 1×1 then 3×3 conv with ReLUs."""

    def __init__(self, cost_dim: int, hidden: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(cost_dim, hidden, 1)
        self.convc2 = nn.Conv2d(hidden, hidden, 3, padding=1)

    def encode_cost(self, cost: torch.Tensor) -> torch.Tensor:
        """[B,cost,h,w] -> [B,hd,h,w]."""
        return F.relu(self.convc2(F.relu(self.convc1(cost))))


class ProjectionInputDepth(CostEncoder):
    """Encodes (raw inverse depth, cost) into the GRU input; the state is appended last: -> [B,hd,h,w]."""

    def __init__(self, cost_dim: int, hidden: int, motion_dim: int = 64) -> None:
        super().__init__(cost_dim, hidden)
        self.convd1 = nn.Conv2d(1, hidden, 7, padding=3)
        self.convd2 = nn.Conv2d(hidden, motion_dim, 3, padding=1)
        self.convd = nn.Conv2d(hidden + motion_dim, hidden - 1, 3, padding=1)

    def forward(self, inv_depth: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
        """inv_depth [B,1,h,w] (raw), cost [B,C,h,w] -> [B,hd,h,w]."""
        cor = self.encode_cost(cost)
        dfm = F.relu(self.convd2(F.relu(self.convd1(inv_depth))))
        out = F.relu(self.convd(torch.cat([cor, dfm], dim=1)))
        return torch.cat([out, inv_depth], dim=1)


class ProjectionInputPose(CostEncoder):
    """Encodes (pose vector, cost) into the GRU input; the pose map is appended last: -> [B,hd,h,w]."""

    def __init__(self, cost_dim: int, hidden: int, motion_dim: int = 64) -> None:
        super().__init__(cost_dim, hidden)
        self.convp1 = nn.Conv2d(6, hidden, 7, padding=3)
        self.convp2 = nn.Conv2d(hidden, motion_dim, 3, padding=1)
        self.convp = nn.Conv2d(hidden + motion_dim, hidden - 6, 3, padding=1)
        self.fast = False
        self._unit_responses: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def pose_conv1(self, pose: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """convp1 applied to the pose broadcast to a constant map: pose [B,6] -> [B,hd,h,w].

        A 7×7 zero-padded conv of a constant map is, at every pixel, a linear function of the 6 pose values
        whose coefficients depend only on which taps fall inside the image: all of them more than 3 pixels
        from every border, so there are at most 7 distinct rows × 7 distinct columns. The fast path
        precomputes those 7×7 coefficient sets once per resolution and expands them, which is exact up to
        float rounding (borders included). It is used only without autograd: in training the recurrence
        amplifies the different summation order to ~1e-5 in some gradients, and the literal conv costs no
        more there.
        """
        B = pose.shape[0]
        if not self.fast or torch.is_grad_enabled():
            return self.convp1(pose.view(B, 6, 1, 1).expand(B, 6, *hw).contiguous())
        resp, rows, cols = self._unit_response(hw, pose)
        small = torch.einsum("bc,ochw->bohw", pose, resp) + self.convp1.bias.view(1, -1, 1, 1)
        return small.index_select(2, rows).index_select(3, cols)

    @staticmethod
    def _border_classes(n: int, pad: int = 3) -> torch.Tensor:
        """Index [n] of each row (or column) into the distinct tap sets of a (2·pad+1)-tap zero-padded conv."""
        if n <= 2 * pad + 1:
            return torch.arange(n)
        return torch.cat([torch.arange(pad), torch.full((n - 2 * pad,), pad), torch.arange(pad + 1, 2 * pad + 1)])

    def _unit_response(self, hw: tuple[int, int], like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """convp1's response (no bias) to a unit constant map in each input channel, per border class:
        [hd,6,hc,wc] with hc, wc <= 7, and the row [h] and column [w] indices that expand it to h×w."""
        w = self.convp1.weight
        key = (hw, like.device, like.dtype, w._version, w.data_ptr())
        cached = self._unit_responses.get(key)
        if cached is not None:
            return cached
        rows, cols = self._border_classes(hw[0]).to(w.device), self._border_classes(hw[1]).to(w.device)
        # The classes are the tap sets of a min(n,7)-long canvas: row i of it stands for rows[j] == i.
        ones = torch.ones(1, 1, min(hw[0], 7), min(hw[1], 7), dtype=w.dtype, device=w.device)
        # One grouped conv computes all 6 single-channel responses: out[o, c] = conv(ones, w[o, c]).
        per_channel = F.conv2d(ones.expand(1, 6, *ones.shape[2:]),
                               w.transpose(0, 1).reshape(6 * w.shape[0], 1, 7, 7), padding=3, groups=6)
        resp = per_channel.view(6, w.shape[0], *ones.shape[2:]).transpose(0, 1)
        self._unit_responses = {key: (resp, rows, cols)}
        return resp, rows, cols

    def forward(self, pose: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
        """pose [B,6], cost [B,C,h,w] -> [B,hd,h,w]."""
        B, _, h, w = cost.shape
        cor = self.encode_cost(cost)
        pfm = F.relu(self.convp2(F.relu(self.pose_conv1(pose, (h, w)))))
        out = F.relu(self.convp(torch.cat([cor, pfm], dim=1)))
        return torch.cat([out, pose.view(B, 6, 1, 1).expand(B, 6, h, w)], dim=1)


class DepthUpdateBlock(nn.Module):
    """One depth GRU step: encoder -> GRU (context first) -> tanh increment; mask head for upsampling."""

    def __init__(self, cost_dim: int, hidden: int, context: int, motion_dim: int = 64, ratio: int = 8) -> None:
        super().__init__()
        self.encoder = ProjectionInputDepth(cost_dim, hidden, motion_dim)
        self.depth_gru = SepConvGRU(hidden, context + hidden)
        self.depth_head = DepthHead(hidden, hidden)
        self.mask = nn.Sequential(
            nn.Conv2d(hidden, 2 * hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * hidden, 9 * ratio * ratio, 1),
        )

    def step(
        self, h: torch.Tensor, context: torch.Tensor, inv_depth: torch.Tensor, cost: torch.Tensor,
        context_responses: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(state [B,hd,h,w], context, raw inv depth [B,1,h,w], cost) -> (new state, new raw inv depth).

        ``context_responses``: the GRU's precomputed ``context_responses(context)`` (fast path, no autograd).
        """
        feat = self.encoder(inv_depth, cost)
        if context_responses is not None:
            h = self.depth_gru.forward_with_context(h, feat, context_responses)
        else:
            h = self.depth_gru(h, torch.cat([context, feat], dim=1))
        return h, inv_depth + self.depth_head(h)

    def upsample_mask(self, h: torch.Tensor) -> torch.Tensor:
        """[B,hd,h,w] -> [B,576,h,w]."""
        return 0.25 * self.mask(h)


class PoseUpdateBlock(nn.Module):
    """One pose GRU step (weights shared by all references; each has its own state)."""

    def __init__(
        self, cost_dim: int, hidden: int, context: int, motion_dim: int = 64,
        rotation_scale: float = PoseHead.OFFICIAL_ROTATION_SCALE,
    ) -> None:
        super().__init__()
        self.encoder = ProjectionInputPose(cost_dim, hidden, motion_dim)
        self.pose_gru = SepConvGRU(hidden, context + hidden)
        self.pose_head = PoseHead(hidden, hidden, rotation_scale)

    def step(
        self, h: torch.Tensor, context: torch.Tensor, pose: torch.Tensor, cost: torch.Tensor,
        context_responses: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(state [B,hd,h,w], context, pose [B,6], cost) -> (new state, new pose [B,6]); see DepthUpdateBlock."""
        feat = self.encoder(pose, cost)
        if context_responses is not None:
            h = self.pose_gru.forward_with_context(h, feat, context_responses)
        else:
            h = self.pose_gru(h, torch.cat([context, feat], dim=1))
        return h, pose + self.pose_head(h)
