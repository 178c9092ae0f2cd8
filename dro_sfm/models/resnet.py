"""The ResNet-18 trunk to stride 8 used by every DRO encoder (state-dict keys as torchvision's)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dro_sfm.models.config import EncoderWidths


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor, fold: bool) -> torch.Tensor:
    """``bn(conv(x))``; with ``fold`` (eval-mode BatchNorm only) one convolution with the affine folded in.

    Eval-mode BatchNorm is a per-channel affine map, so it can be merged into the preceding bias-free
    convolution's weights (w·γ/σ) and a bias (β − μ·γ/σ): the activation is then written once instead of
    twice. The folded weights are rebuilt at every call (a few ms) rather than cached, because a cached
    copy of three encoders' weights would cost more memory than the pass saves.
    """
    if not fold or bn.training:
        return bn(conv(x))
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3×3 convs with BatchNorm and a residual shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.fold_bn = False  # eval without autograd: see conv_bn
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,Cin,H,W] -> [B,Cout,H/s,W/s]."""
        fold = self.fold_bn and not torch.is_grad_enabled()
        y = self.relu(conv_bn(self.conv1, self.bn1, x, fold))
        y = conv_bn(self.conv2, self.bn2, y, fold)
        shortcut = x if self.downsample is None else conv_bn(self.downsample[0], self.downsample[1], x, fold)
        return self.relu(y.add_(shortcut) if fold else y + shortcut)


class ResNetEncoder(nn.Module):
    """ResNet-18 layers 1–3, upsampled stride-16 features fused with stride 8, projected to ``out_ch``.

    ``num_images`` images are stacked on the channel axis (the pose context encoder takes pairs).
    A list input is run as one batch and split back, so train-mode BatchNorm sees all items together.
    """

    def __init__(self, out_ch: int, num_images: int = 1, widths: EncoderWidths | None = None) -> None:
        super().__init__()
        w = widths or EncoderWidths()
        self.conv1 = nn.Conv2d(3 * num_images, w.stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w.stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(w.stem, w.stem), BasicBlock(w.stem, w.stem))
        self.layer2 = nn.Sequential(BasicBlock(w.stem, w.layer2, 2), BasicBlock(w.layer2, w.layer2))
        self.layer3 = nn.Sequential(BasicBlock(w.layer2, w.layer3, 2), BasicBlock(w.layer3, w.layer3))
        self.upconv1 = nn.Sequential(nn.Conv2d(w.layer3, w.fusion, 3, padding=1), nn.ReLU(inplace=True))
        self.upconv1_fusion = nn.Sequential(
            nn.Conv2d(w.fusion + w.layer2, w.fusion, 3, padding=1), nn.ReLU(inplace=True)
        )
        self.out_conv = nn.Conv2d(w.fusion, out_ch, 3, padding=1)
        self.fold_bn = False
        self._init_weights()

    def set_fold_batchnorm(self, fold: bool) -> None:
        """Fold eval-mode BatchNorm into the convolutions when running without autograd (see ``conv_bn``)."""
        for m in self.modules():
            if isinstance(m, (ResNetEncoder, BasicBlock)):
                m.fold_bn = fold

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3n,H,W] -> [B,out_ch,H/8,W/8]."""
        fold = self.fold_bn and not torch.is_grad_enabled()
        x = self.maxpool(self.relu(conv_bn(self.conv1, self.bn1, x, fold)))
        s8 = self.layer2(self.layer1(x))
        s16 = self.layer3(s8)
        up = F.interpolate(s16, scale_factor=2, mode="bilinear", align_corners=False)
        fused = self.upconv1_fusion(torch.cat([self.upconv1(up), s8], dim=1))
        return self.out_conv(fused)

    def forward(self, x: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]):
        """[B,3n,H,W] -> [B,C,H/8,W/8]; a list of such tensors -> a tuple of outputs."""
        if isinstance(x, (list, tuple)):
            sizes = [t.shape[0] for t in x]
            return torch.split(self._forward_batch(torch.cat(list(x), dim=0)), sizes, dim=0)
        return self._forward_batch(x)
