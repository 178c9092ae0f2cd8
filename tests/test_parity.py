"""Numerical parity with the official DRO implementation on ../shared/fixtures/dro_parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import require_shared

from dro_sfm.geometry.pose import euler_vec_to_matrix
from dro_sfm.losses.photometric import photometric_loss
from dro_sfm.losses.supervised import supervised_loss
from dro_sfm.models.dro import FAST_PARTS
from dro_sfm.models.official import build_official_model

pytestmark = pytest.mark.shared

# The fixture was generated with 2 CPU threads (its README). The thread count changes oneDNN's summation order,
# and the recurrence amplifies that in a few small gradient entries to ~2e-3 relative (measured with 1 thread),
# beyond the stated 1e-3; every comparison therefore runs under the fixture's conditions.
FIXTURE_THREADS = 2


@pytest.fixture(autouse=True)
def _fixture_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(FIXTURE_THREADS)
    yield
    torch.set_num_threads(before)


def _assert_close_to_scale(got: np.ndarray, expected: np.ndarray, rtol: float, atol: float, what: str) -> None:
    """|got - expected| <= atol + rtol * max|expected| over the whole tensor (rtol relative to its scale)."""
    bound = atol + rtol * float(np.abs(expected).max())
    worst = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
    assert worst <= bound, f"{what}: max |got - expected| = {worst:.3g} > {bound:.3g}"


def _fixture():
    return require_shared("fixtures", "dro_parity")


def _tol() -> dict:
    return json.loads((_fixture() / "meta.json").read_text())["tolerances"]


def _state_dict() -> dict[str, torch.Tensor]:
    w = np.load(_fixture() / "weights_it12_h_out.npz")
    return {k: torch.from_numpy(w[k].astype(np.float32) if w[k].dtype == np.float16 else w[k]) for k in w.files}


def _inputs():
    z = np.load(_fixture() / "inputs.npz")
    refs = sorted(k for k in z.files if k.startswith("ref_"))
    return torch.from_numpy(z["target"]), [torch.from_numpy(z[k]) for k in refs], torch.from_numpy(z["intrinsics"])


def _model(version: str, min_depth: float, max_depth: float, fast: bool, mode: str, prefix: str = ""):
    m = build_official_model(version, min_depth, max_depth)
    m.load_official_state_dict({prefix + k: v for k, v in _state_dict().items()})
    m.set_fast(fast)
    if mode == "eval":
        m.eval()
    else:
        m.train()
        if mode == "train_bneval":
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.eval()
    return m


CASES = {
    "eval_it12_h_out": ("it12-h-out", 0.2, 10.0, "eval"),
    "eval_it12_h": ("it12-h", 0.2, 80.0, "eval"),
    "train_it12_h_out": ("it12-h-out", 0.2, 10.0, "train_bneval"),
    "train_it12_h": ("it12-h", 0.2, 80.0, "train_bneval"),
    "train_it12_h_inter_out": ("it12-h-inter-out", 0.2, 10.0, "train_bneval"),
    "train_bntrain_it12_h_out": ("it12-h-out", 0.2, 10.0, "train_bntrain"),
}


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "literal"])
@pytest.mark.parametrize("case", list(CASES))
def test_outputs_match_official(case: str, fast: bool) -> None:
    version, lo, hi, mode = CASES[case]
    expected = np.load(_fixture() / f"expected_{case}.npz")
    tol = _tol()
    # Official files prefix every key with model.depth_net.; both spellings must load.
    model = _model(version, lo, hi, fast, mode, prefix="model.depth_net." if fast else "")
    target, refs, K = _inputs()
    with torch.no_grad():
        inv, poses = model(target, refs, K)
    if mode == "eval":
        got_inv = inv.numpy()
        exp_inv = expected["inv_depth"]
    else:
        got_inv = torch.stack(inv).numpy()
        exp_inv = expected["inv_depths"]
    assert got_inv.shape == exp_inv.shape
    assert poses.shape == expected["poses"].shape
    np.testing.assert_allclose(got_inv, exp_inv, rtol=0, atol=tol["inv_depth_atol"])
    np.testing.assert_allclose(poses.numpy(), expected["poses"], rtol=0, atol=1e-5)
    if mode == "train_bntrain":
        state = model.state_dict()
        bn_keys = [k for k in expected.files if k.startswith("bn_after.")]
        assert len(bn_keys) > 100
        for key in bn_keys:
            got = state[key[len("bn_after."):]].numpy()
            if key.endswith("num_batches_tracked"):
                assert int(got) == int(expected[key])
            else:
                np.testing.assert_allclose(got, expected[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", ["eval_it12_h_out", "train_it12_h_out"])
def test_debug_intermediates(case: str) -> None:
    version, lo, hi, mode = CASES[case]
    expected = np.load(_fixture() / f"expected_{case}.npz")
    model = _model(version, lo, hi, fast=False, mode=mode)
    seen: dict[str, torch.Tensor] = {}
    model.trace = lambda name, value: seen.setdefault(name, value)
    target, refs, K = _inputs()
    with torch.no_grad():
        model(target, refs, K)
    dbg = [k for k in expected.files if k.startswith("dbg_")]
    assert len(dbg) == 14
    for key in dbg:
        got = seen[key[4:]].numpy()
        if key.endswith("_cost"):
            # A cost entry is a sum of squared feature differences, so it inherits the cancellation error of
            # the convolutions that made the features; that error scales with the tensor's magnitude, not the
            # entry's. Per entry, oneDNN's AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2) miss rtol 1e-5 by up to 9.7e-5
            # relative on small entries while the largest deviation is 7.4e-4 on values up to a few hundred.
            _assert_close_to_scale(got, expected[key], rtol=1e-5, atol=1e-4, what=key)
        else:
            np.testing.assert_allclose(got, expected[key], rtol=0.0, atol=1e-4, err_msg=key)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "literal"])
def test_losses_and_gradients(fast: bool) -> None:
    expected = np.load(_fixture() / "expected_train_it12_h_out.npz")
    tol = _tol()
    model = _model("it12-h-out", 0.2, 10.0, fast, "train_bneval")
    target, refs, K = _inputs()
    inv, poses = model(target, refs, K)
    mats = euler_vec_to_matrix(poses)  # [B,N,K,4,4]
    per_pred = [[mats[:, v, k] for v in range(mats.shape[1])] for k in range(mats.shape[2])]
    gt_depth = torch.from_numpy(expected["gt_depth"])
    gt_mats = list(torch.from_numpy(expected["gt_pose_mats"]).unbind(0))
    sup = supervised_loss(inv, per_pred, gt_depth, gt_mats, K, 0.2, 10.0)
    selfsup = photometric_loss(inv, per_pred, target, refs, K)
    for got, key in [
        (sup.total, "loss_supervised_total"), (sup.depth, "loss_supervised_depth"),
        (sup.pose, "loss_supervised_pose"), (selfsup.total, "loss_selfsup_total"),
        (selfsup.photometric, "loss_selfsup_photometric"), (selfsup.smoothness, "loss_selfsup_smoothness"),
    ]:
        np.testing.assert_allclose(got.item(), float(expected[key]), rtol=tol["loss_rtol"], err_msg=key)
    model.zero_grad()
    sup.total.backward()
    params = dict(model.named_parameters())
    grads = [k for k in expected.files if k.startswith("grad_supervised.")]
    assert len(grads) == 11
    for key in grads:
        grad = params[key[len("grad_supervised."):]].grad
        assert grad is not None, key
        # The fixture's rtol is applied to each tensor's scale: small bias-gradient entries are differences of
        # large terms accumulated over 12 recurrent steps, and their float32 noise follows the large terms.
        # Measured against the fixture: 2 threads on AVX-512 1.2e-7 absolute; 1 thread 1.0e-5 (4.4e-5 of the
        # tensor's max, 1.6x the per-entry bound); AVX2 kernels 1.2e-5 (4.5e-5 of the max, 2.7x the per-entry
        # bound); a CI machine 7.2e-6 on an entry of 3.7e-3. A real error (a wrong loss weight, a detached
        # term) moves these gradients by percent of their scale.
        _assert_close_to_scale(grad.numpy(), expected[key], tol["grad_rtol"], tol["grad_atol"], key)
    assert params["cnet.out_conv.bias"].grad is None, "the unused cnet must receive no gradient"


def test_eval_is_batch_independent() -> None:
    model = _model("it12-h-out", 0.2, 10.0, True, "eval")
    target, refs, K = _inputs()
    with torch.no_grad():
        inv_b, poses_b = model(target, refs, K)
        inv_1, poses_1 = model(target[1:], [r[1:] for r in refs], K[1:])
    np.testing.assert_allclose(inv_1.numpy(), inv_b[1:].numpy(), atol=2e-5)
    np.testing.assert_allclose(poses_1.numpy(), poses_b[1:].numpy(), atol=2e-6)


def test_geometry_expectations() -> None:
    from dro_sfm.geometry.camera import backproject, project_to_grid, scale_intrinsics_feature
    from dro_sfm.geometry.warp import disp_to_depth, inv2depth, sample_map
    from dro_sfm.models.upsample import convex_upsample

    g = {k: torch.from_numpy(v) for k, v in np.load(_fixture() / "expected_geometry.npz").items()}
    np.testing.assert_allclose(euler_vec_to_matrix(g["pose_vecs"]).numpy(), g["pose_mats"].numpy(), atol=1e-5)
    K8 = scale_intrinsics_feature(g["K_full"], 1 / 8)
    np.testing.assert_allclose(K8.numpy(), g["K_scaled_1_8"].numpy(), atol=1e-5)
    X = backproject(g["warp_depth"], K8)
    np.testing.assert_allclose(X.numpy(), g["warp_points_tgt_cam"].numpy(), atol=1e-5)
    grid = project_to_grid(X, K8, euler_vec_to_matrix(g["warp_pose_vec"]), g["warp_depth"].shape[-2:])
    np.testing.assert_allclose(grid.numpy(), g["warp_ref_coords"].numpy(), atol=1e-5)
    cost = (g["cost_fmap_tgt"] - sample_map(g["cost_fmap_ref"], grid)) ** 2
    np.testing.assert_allclose(cost.numpy(), g["cost_out"].numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(inv2depth(g["inv2depth_in"]).numpy(), g["inv2depth_out"].numpy(), rtol=1e-6)
    scaled, depth = disp_to_depth(g["disp_to_depth_in"], 0.2, 10.0)
    np.testing.assert_allclose(scaled.numpy(), g["disp_to_depth_scaled_0.2_10"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(depth.numpy(), g["disp_to_depth_depth_0.2_10"].numpy(), rtol=1e-5)
    up = convex_upsample(g["upsample_in"], g["upsample_mask"])
    np.testing.assert_allclose(up.numpy(), g["upsample_out"].numpy(), atol=1e-5)


@pytest.mark.parametrize("part", FAST_PARTS)
def test_each_optimisation_alone_keeps_parity(part: str) -> None:
    """The fast path minus one optimisation still matches (each switch is independent and exact)."""
    expected = np.load(_fixture() / "expected_eval_it12_h_out.npz")
    model = _model("it12-h-out", 0.2, 10.0, True, "eval")
    model.set_fast(True, disable=(part,))
    target, refs, K = _inputs()
    with torch.no_grad():
        inv, poses = model(target, refs, K)
    np.testing.assert_allclose(inv.numpy(), expected["inv_depth"], rtol=0, atol=_tol()["inv_depth_atol"])
    np.testing.assert_allclose(poses.numpy(), expected["poses"], rtol=0, atol=1e-5)
