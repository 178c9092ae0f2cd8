"""The shipped default model: it loads, and re-scoring its reserved regression set matches its model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dro_sfm.models.predict import load_model
from dro_sfm.models.weights import PACKAGE_WEIGHTS_DIR
from dro_sfm.train.scorecard import score

# Rendering and inference are deterministic on one machine; across CPUs/BLAS builds float rounding in
# 12 recurrent steps moves the means slightly, so the card is checked to 2% relative (plus a small floor).
RTOL, ATOL_DEG, ATOL_REL = 0.02, 0.02, 0.002

pytestmark = pytest.mark.skipif(not (PACKAGE_WEIGHTS_DIR / "default_small.pt").exists(),
                                reason="the default model file is not shipped in this checkout")


def test_default_model_loads_as_trained() -> None:
    model = load_model("default")
    assert model.info.trained
    assert model.info.depth_units == "metres"
    assert (PACKAGE_WEIGHTS_DIR / "default_small.pt").stat().st_size < 40 * 2**20


def test_regression_scores_match_model_card() -> None:
    card = json.loads((Path(PACKAGE_WEIGHTS_DIR) / "regression_scores.json").read_text())
    model = load_model("default")
    H, W = card["image_shape"]
    rows = score(model, n_samples=card["n_samples"], height=H, width=W,
                 iterations=(model.config.total_steps,), progress=False, baselines=False)
    got = {(r.kind, r.predictor): r for r in rows}
    assert len(card["rows"]) == len(rows) == 2
    for expected in card["rows"]:
        r = got[(expected["kind"], expected["predictor"])]
        assert r.abs_rel == pytest.approx(expected["abs_rel"], rel=RTOL, abs=ATOL_REL)
        assert r.abs_rel_median_scaled == pytest.approx(expected["abs_rel_median_scaled"], rel=RTOL, abs=ATOL_REL)
        assert r.rot_deg == pytest.approx(expected["rot_deg"], rel=RTOL, abs=ATOL_DEG)
        assert np.isfinite(r.tdir_deg)


def test_reconstruct_meets_the_indoor_sequence_target(tmp_path: Path) -> None:
    """Issue #4's bar for the default model: the benchmark's held-out 24-frame indoor sequence at 240×320
    (benchmarks/bench_reconstruct.py, seed 1007) within 5 % ATE of the path and median-scaled AbsRel 0.15.
    Measured 2.9 % and 0.148 on the machine that trained it; the depth margin is small, so a different BLAS
    build could move it across the bar."""
    from dro_sfm.data.synthetic import render_sequence
    from dro_sfm.recon.pipeline import ReconstructOptions, reconstruct

    frames = list(render_sequence("indoor", 24, 240, 320, seed=1007))
    run = reconstruct(frames, tmp_path / "run", ReconstructOptions(min_motion=0.0, fusion="none"), progress=False)
    assert run.metrics["ate_percent_of_path"] <= 5.0
    assert run.metrics["depth_abs_rel_median_scaled"] <= 0.15
