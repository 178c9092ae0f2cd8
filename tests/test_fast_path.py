"""The fast path's optimisations are actually taken when enabled, and not when switched off."""

from __future__ import annotations

import pytest
import torch

from dro_sfm.models.config import small_config
from dro_sfm.models.dro import DroNet
from dro_sfm.models.update import SepConvGRU

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(B: int = 1, H: int = 32, W: int = 48):
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[[0.9 * W, 0, W / 2], [0, 0.9 * W, H / 2], [0, 0, 1]]]).expand(B, 3, 3)
    return torch.rand(B, 3, H, W, generator=g), [torch.rand(B, 3, H, W, generator=g) for _ in range(2)], K


def _spy_gru(monkeypatch) -> dict[str, list]:
    """Record which GRU entry point ran and the memory layout of the state it received."""
    calls: dict[str, list] = {"with_context": [], "plain": []}
    with_context, plain = SepConvGRU.forward_with_context, SepConvGRU._forward_fused

    def spy_with_context(self, h, feat, responses):
        out = with_context(self, h, feat, responses)
        calls["with_context"].append(out.is_contiguous(memory_format=torch.channels_last))
        return out

    def spy_plain(self, h, x):
        out = plain(self, h, x)
        calls["plain"].append(out.is_contiguous(memory_format=torch.channels_last))
        return out

    monkeypatch.setattr(SepConvGRU, "forward_with_context", spy_with_context)
    monkeypatch.setattr(SepConvGRU, "_forward_fused", spy_plain)
    return calls


@pytest.mark.parametrize("disable", [(), ("context_precompute",), ("channels_last",)])
def test_context_precompute_and_channels_last_are_used_as_switched(monkeypatch, disable) -> None:
    torch.manual_seed(0)
    net = DroNet(small_config().with_(fast=True)).eval()
    net.set_fast(True, disable=disable)
    calls = _spy_gru(monkeypatch)
    with torch.no_grad():
        net.forward_full(*_inputs(), stages=1, steps_per_stage=2)
    steps = 2 + 2  # two depth steps, two (batched) pose steps
    if "context_precompute" in disable:
        assert not calls["with_context"] and len(calls["plain"]) == steps
    else:
        assert len(calls["with_context"]) == steps and not calls["plain"]
    states = calls["with_context"] + calls["plain"]
    assert all(states) if "channels_last" not in disable else not any(states)


def test_training_forward_takes_the_literal_gru(monkeypatch) -> None:
    torch.manual_seed(0)
    net = DroNet(small_config().with_(fast=True)).train()
    calls = _spy_gru(monkeypatch)
    net.forward_full(*_inputs(B=2), stages=1, steps_per_stage=1)
    assert not calls["with_context"] and not calls["plain"]


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (6, 7), (7, 7), (8, 9), (30, 40)])
def test_pose_conv_precompute_equals_the_literal_conv_at_every_size(hw) -> None:
    """Border classes: sizes below, at and above the 7-tap kernel, rows and columns differing."""
    from dro_sfm.models.update import ProjectionInputPose

    torch.manual_seed(0)
    enc = ProjectionInputPose(cost_dim=4, hidden=16, motion_dim=8)
    pose = torch.randn(3, 6)
    with torch.no_grad():
        literal = enc.pose_conv1(pose, hw)
        enc.fast = True
        fast = enc.pose_conv1(pose, hw)
        again = enc.pose_conv1(pose * 2, hw)  # the cached coefficients serve a new pose
        enc.fast = False
        literal_again = enc.pose_conv1(pose * 2, hw)
    assert fast.shape == literal.shape == (3, 16, *hw)
    torch.testing.assert_close(fast, literal, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, literal_again, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("disable", "above_bytes", "per_image"), [
    ((), 0, True),                            # large inputs: one image at a time
    ((), 32 * 2**20, False),                  # the default threshold: these 32x48 images stay batched
    (("per_image_encoding",), 0, False),      # switched off
])
def test_per_image_encoding_runs_large_inputs_one_image_at_a_time(monkeypatch, disable, above_bytes,
                                                                   per_image) -> None:
    import dro_sfm.models.dro as dro

    monkeypatch.setattr(dro, "PER_IMAGE_ENCODING_ABOVE_BYTES", above_bytes)
    torch.manual_seed(0)
    net = DroNet(small_config().with_(fast=True)).eval()
    net.set_fast(True, disable=disable)
    batch_sizes: list[int] = []
    for enc in (net.fnet, net.cnet_depth, net.cnet_pose):
        enc.register_forward_pre_hook(lambda _m, args: batch_sizes.append(args[0].shape[0]))
    with torch.no_grad():
        net.forward_full(*_inputs(B=1), stages=1, steps_per_stage=1)
    if per_image:
        assert batch_sizes == [1] * 6
    else:
        assert sorted(batch_sizes) == [1, 2, 3]  # cnet_depth on the target, cnet_pose on 2 pairs, fnet on 3


def _batchnorm_calls(net: DroNet, grad: bool) -> int:
    calls: list[int] = []
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(lambda *_: calls.append(1))
    with torch.set_grad_enabled(grad):
        net.forward_full(*_inputs(B=1), stages=1, steps_per_stage=1)
    return len(calls)


@pytest.mark.parametrize("disable", [(), ("folded_batchnorm",)])
def test_folded_batchnorm_replaces_the_batchnorm_modules_in_eval(disable) -> None:
    torch.manual_seed(0)
    net = DroNet(small_config().with_(fast=True)).eval()
    net.set_fast(True, disable=disable)
    assert (_batchnorm_calls(net, grad=False) == 0) == (not disable)


def test_folded_batchnorm_is_not_used_with_autograd_or_train_mode_batchnorm() -> None:
    """Folding needs fixed statistics and no gradient: otherwise the BatchNorm modules run."""
    torch.manual_seed(0)
    net = DroNet(small_config().with_(fast=True)).eval()
    assert _batchnorm_calls(net, grad=True) > 0
    net.train()
    assert _batchnorm_calls(net, grad=False) > 0


def test_folded_batchnorm_matches_the_modules_with_trained_statistics() -> None:
    """Non-trivial running statistics and affine parameters: folded and unfolded encoders agree."""
    from dro_sfm.models.resnet import ResNetEncoder

    torch.manual_seed(0)
    enc = ResNetEncoder(16, 1, small_config().encoder)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                t.data.normal_()
            m.running_var.data.uniform_(0.2, 3.0)
    enc.eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        enc.set_fold_batchnorm(False)
        literal = enc(x)
        enc.set_fold_batchnorm(True)
        folded = enc(x)
    torch.testing.assert_close(folded, literal, atol=1e-4, rtol=1e-4)
