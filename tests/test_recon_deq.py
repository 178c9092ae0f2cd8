"""`reconstruct --solver deq`: each window warm-started from the previous window's re-projected solution,
convergence-based stopping, iterations per frame in the window records and run.json, non-convergence
reported, the unrolled path untouched, and the same weights serving both modes."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_deq import contractive_net, tiny_config

from dro_sfm.cli import main
from dro_sfm.data.formats import write_frames
from dro_sfm.data.synthetic import render_sequence
from dro_sfm.errors import ConfigError
from dro_sfm.models import deq as deq_module
from dro_sfm.models.config import DeqConfig
from dro_sfm.models.dro import DroNet
from dro_sfm.models.predict import DroModel, ModelInfo
from dro_sfm.recon.pipeline import DroPredictor, ReconstructOptions, reconstruct

H, W, N_FRAMES = 48, 64, 6
CONTRACTIVE_DEQ = DeqConfig(forward_solver="anderson", max_steps=40, tol=1e-4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frames():
    return list(render_sequence("indoor", N_FRAMES, H, W, seed=3))


@pytest.fixture(scope="module")
def static_frames(frames):
    """A camera that does not move: the same view N_FRAMES times (the easiest case for a warm start)."""
    return [dataclasses.replace(frames[0], name=f"still{i}", timestamp=float(i)) for i in range(N_FRAMES)]


def _model(net: DroNet, name: str) -> DroModel:
    return DroModel(net.eval(), ModelInfo(name=name, image_shape=(H, W)))


@pytest.fixture(scope="module")
def contractive_model() -> DroModel:
    """Tiny network whose update map is a contraction (a unique fixed point that DEQ solves reach)."""
    return _model(contractive_net(torch.float32), "tiny-contractive")


def _options(**kw) -> ReconstructOptions:
    base = dict(height=H, width=W, min_motion=0.0, overwrite=True, fusion="none")
    base.update(kw)
    return ReconstructOptions(**base)


def _windows(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "windows").glob("0*.json"))]


# --- end to end from the command line ------------------------------------------------------------------------


@pytest.mark.parametrize("warm_poses", [False, True])
def test_cli_reconstruct_with_deq_records_iterations(frames, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     warm_poses: bool) -> None:
    made: list[bool] = []

    class Recording(deq_module.SequenceWarmStart):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self.warm_poses)

    monkeypatch.setattr(deq_module, "SequenceWarmStart", Recording)
    folder = write_frames("folder", frames, tmp_path / "input")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["reconstruct", str(folder), "--out", str(out), "--solver", "deq",
                                       "--deq-max-steps", "6", "--height", str(H), "--width", str(W),
                                       "--threads", "1", "--min-motion", "0", "--fusion", "none", "--quiet"]
                                + (["--warm-start-poses"] if warm_poses else []))
    assert result.exit_code == 0, result.output
    assert "DEQ solver:" in result.output and f"of {N_FRAMES} frames warm-started" in result.output
    assert len(list((out / "depth").glob("*.npy"))) == N_FRAMES

    run = json.loads((out / "run.json").read_text())
    solver = run["results"]["solver"]
    assert solver["mode"] == "deq" and solver["frames"] == N_FRAMES and solver["budget"] == 6
    per_frame = solver["per_frame"]
    assert per_frame["index"] == list(range(N_FRAMES))
    assert all(1 <= s <= 6 for s in per_frame["steps"])
    assert solver["steps_mean"] == pytest.approx(np.mean(per_frame["steps"]))
    assert solver["steps_max"] == max(per_frame["steps"]) and solver["steps_min"] == min(per_frame["steps"])
    assert solver["non_converged"] == per_frame["converged"].count(False)
    assert solver["non_converged_frames"] == [i for i, c in zip(per_frame["index"], per_frame["converged"]) if not c]
    assert solver["warm_started"] == sum(per_frame["warm"]) and not per_frame["warm"][0]
    assert run["options"]["solver"] == "deq" and run["inputs"]["predictor"].endswith(":deq")
    assert run["options"]["warm_start_poses"] is warm_poses and made == [warm_poses]  # the flag reaches the solver

    records = _windows(out)
    assert [r["solver"]["steps"] for r in records] == per_frame["steps"]
    assert records[0]["solver"]["start"] == "cold: first window"
    for rec in records:
        assert rec["solver"]["mode"] == "deq" and rec["solver"]["budget"] == 6
        # the shipped defaults judge the state handed back; its residual is the one recorded
        assert rec["solver"]["returned_state_checked"] is True
        assert rec["solver"]["converged"] == (rec["solver"]["residual"] <= rec["solver"]["tol"])
        assert len(rec["step_costs"]) == rec["solver"]["steps"]  # one mean cost per evaluation of f


def test_deq_options_need_solver_deq(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--deq-tol.*--solver deq"):
        _options(deq_tol=1e-3).validate()
    with pytest.raises(ConfigError, match="--no-warm-start"):
        _options(warm_start=False).validate()
    with pytest.raises(ConfigError, match="--warm-start-poses"):
        _options(warm_start_poses=True).validate()
    with pytest.raises(ConfigError, match="contradict"):
        _options(solver="deq", warm_start=False, warm_start_poses=True).validate()
    with pytest.raises(ConfigError, match="not both"):
        _options(solver="deq", deq_max_steps=8, stages=2).validate()
    with pytest.raises(ConfigError, match="--solver"):
        _options(solver="newton").validate()
    _options(solver="deq", deq_tol=1e-2, deq_max_steps=8, warm_start=False).validate()
    result = CliRunner().invoke(main, ["reconstruct", "sample", "--out", str(tmp_path / "x"), "--deq-tol", "0.01"])
    assert result.exit_code != 0 and "--solver deq" in result.output
    assert not (tmp_path / "x").exists()


# --- warm starts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("warm_poses", [False, True])
def test_every_later_window_starts_from_the_reprojected_previous_solution(
        contractive_model, frames, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warm_poses: bool) -> None:
    calls: list[tuple] = []
    solve = deq_module.deq_forward

    def spy(net, target, refs, K, *args, init=None, **kwargs):
        out = solve(net, target, refs, K, *args, init=init, **kwargs)
        calls.append((init, out, K))
        return out

    monkeypatch.setattr(deq_module, "deq_forward", spy)
    predictor = DroPredictor(contractive_model, solver="deq", deq=CONTRACTIVE_DEQ, warm_poses=warm_poses)
    result = reconstruct(frames, tmp_path / "run", _options(), predictor=predictor, progress=False)
    records = _windows(tmp_path / "run")
    assert len(calls) == N_FRAMES and calls[0][0] is None
    assert [r["solver"]["start"] for r in records] == ["cold: first window"] + ["warm"] * (N_FRAMES - 1)
    assert result.solver["warm_started"] == N_FRAMES - 1
    cfg = contractive_model.net.config
    for k in range(1, N_FRAMES):
        init, _, K = calls[k]
        _, prev_out, _ = calls[k - 1]
        prev_T = deq_module.euler_vec_to_matrix(prev_out.poses[-1])
        # The previous target's solution, depth re-projected through its estimated motion to this target.
        expected = deq_module.window_warm_start(prev_out.state, k - 1, records[k - 1]["refs"], prev_T, k,
                                                records[k]["refs"], K, cfg)
        assert expected is not None
        torch.testing.assert_close(init.inv_depth, expected.inv_depth)
        torch.testing.assert_close(init.h_depth, expected.h_depth)
        if warm_poses:
            torch.testing.assert_close(init.poses, expected.poses)
            torch.testing.assert_close(init.h_pose, prev_out.state.h_pose)  # pose GRU states reused
        else:  # poses from the pose head and pose GRU states from the context encoder, as in a cold start
            assert init.poses is None and init.h_pose is None


def test_warm_start_needs_no_more_steps_than_a_cold_start(contractive_model, static_frames, tmp_path: Path) -> None:
    runs = {}
    for warm in (True, False):
        predictor = DroPredictor(contractive_model, solver="deq", deq=CONTRACTIVE_DEQ, warm_start=warm,
                                 warm_poses=True)
        runs[warm] = reconstruct(static_frames, tmp_path / f"warm{warm}", _options(), predictor=predictor,
                                 progress=False).solver
    warm, cold = runs[True], runs[False]
    assert warm["non_converged"] == cold["non_converged"] == 0
    assert cold["warm_started"] == 0 and warm["warm_started"] == N_FRAMES - 1
    w, c = warm["per_frame"]["steps"], cold["per_frame"]["steps"]
    assert w[0] == c[0]  # the first window has nothing to start from
    assert all(a <= b for a, b in zip(w[1:], c[1:])), (w, c)
    assert sum(w[1:]) < sum(c[1:]), (w, c)
    assert all(r <= CONTRACTIVE_DEQ.tol for r in warm["per_frame"]["residual"])


def test_predictor_forgets_the_previous_sequence(contractive_model, frames, tmp_path: Path) -> None:
    predictor = DroPredictor(contractive_model, solver="deq", deq=CONTRACTIVE_DEQ)
    reconstruct(frames, tmp_path / "a", _options(), predictor=predictor, progress=False)
    # The next run's frame 1 is a reference of the last run's last target: without a reset it would warm-start.
    reconstruct(frames[:3], tmp_path / "b", _options(), predictor=predictor, progress=False)
    assert _windows(tmp_path / "b")[0]["solver"]["start"] == "cold: first window"


# --- failures ------------------------------------------------------------------------------------------------


def test_non_converging_solves_are_reported(frames, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = _model(DroNet(tiny_config()), "tiny-random")  # random weights: no fixed point to converge to
    predictor = DroPredictor(model, solver="deq", deq=DeqConfig(max_steps=4, tol=1e-9))
    with caplog.at_level(logging.WARNING):
        result = reconstruct(frames, tmp_path / "run", _options(), predictor=predictor, progress=False)
    solver = result.solver
    assert solver["non_converged"] == N_FRAMES and solver["non_converged_frames"] == list(range(N_FRAMES))
    assert solver["per_frame"]["steps"] == [4] * N_FRAMES and solver["per_frame"]["converged"] == [False] * N_FRAMES
    # A state that is not a fixed point is not carried into the next window.
    assert solver["warm_started"] == 0
    starts = [r["solver"]["start"] for r in _windows(tmp_path / "run")]
    assert starts == ["cold: first window"] + ["cold: previous window did not converge"] * (N_FRAMES - 1)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["results"]["solver"]["non_converged"] == N_FRAMES
    assert all(r["solver"]["converged"] is False for r in _windows(tmp_path / "run"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("did not converge" in m for m in warnings) == 2, warnings  # the first frame, then the count
    assert any(f"{N_FRAMES} of {N_FRAMES} frames did not converge" in m and f"frames 0-{N_FRAMES - 1}" in m
               for m in warnings), warnings


# --- both modes, one model ------------------------------------------------------------------------------------


def test_unrolled_path_is_unchanged_by_deq_runs(contractive_model, frames, tmp_path: Path) -> None:
    net = contractive_model.net
    config = net.config

    def unrolled(name: str):
        res = reconstruct(frames, tmp_path / name, _options(), predictor=DroPredictor(contractive_model),
                          progress=False)
        return res, [np.load(tmp_path / name / "depth" / f"{i:06d}.npy") for i in range(N_FRAMES)]

    before, depth_before = unrolled("before")
    deq = reconstruct(frames, tmp_path / "deq", _options(),
                      predictor=DroPredictor(contractive_model, solver="deq", deq=CONTRACTIVE_DEQ), progress=False)
    after, depth_after = unrolled("after")
    assert net.config is config and config.solver == "unrolled"  # DEQ never touched the model's settings
    np.testing.assert_array_equal(before.poses, after.poses)
    for a, b in zip(depth_before, depth_after):
        np.testing.assert_array_equal(a, b)
    assert before.solver["mode"] == "unrolled"
    assert before.solver["per_frame"]["steps"] == [config.total_steps] * N_FRAMES
    assert _windows(tmp_path / "before")[0]["solver"] == {"mode": "unrolled", "steps": config.total_steps}
    # Same weights, both modes: the contraction's fixed point is where a long unrolled run also ends.
    long = reconstruct(frames, tmp_path / "long", _options(),
                       predictor=DroPredictor(contractive_model, stages=10, steps_per_stage=4), progress=False)
    assert deq.solver["non_converged"] == 0
    for i in range(N_FRAMES):
        a = np.load(tmp_path / "deq" / "depth" / f"{i:06d}.npy")
        b = np.load(tmp_path / "long" / "depth" / f"{i:06d}.npy")
        # Both stop short of the exact point (tol 1e-4 on the state; 40 unrolled steps), and depth is the
        # reciprocal of a small raw inverse depth here, which magnifies the state's residual.
        np.testing.assert_allclose(a, b, rtol=5e-3)
    np.testing.assert_allclose(deq.poses, long.poses, atol=1e-3)


def test_resume_keeps_solver_records_and_refuses_a_solver_change(contractive_model, frames, tmp_path: Path) -> None:
    out = tmp_path / "run"

    class Interrupted(DroPredictor):
        def __call__(self, target, refs):
            if target.index == 3:
                raise KeyboardInterrupt
            return super().__call__(target, refs)

    with pytest.raises(KeyboardInterrupt):
        reconstruct(frames, out, _options(), progress=False,
                    predictor=Interrupted(contractive_model, solver="deq", deq=CONTRACTIVE_DEQ))
    with pytest.raises(ConfigError, match="predictor"):
        reconstruct(frames, out, _options(overwrite=False, resume=True), predictor=DroPredictor(contractive_model),
                    progress=False)
    resumed = reconstruct(frames, out, _options(overwrite=False, resume=True), progress=False,
                          predictor=DroPredictor(contractive_model, solver="deq", deq=CONTRACTIVE_DEQ))
    assert resumed.n_resumed == 3 and resumed.solver["frames"] == N_FRAMES
    starts = [r["solver"]["start"] for r in _windows(out)]
    # Frames 0-2 come from the first run; frame 3 is the first solve of this process: nothing to start from.
    assert starts == ["cold: first window", "warm", "warm", "cold: first window", "warm", "warm"]
