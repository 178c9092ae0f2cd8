"""benchmarks/bench_deq.py's pooling of video runs (``--pool``): pairs stay within their run, seeds may not repeat."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "bench_deq.py"
UNROLLED, DEQ = "unrolled 3x4", "DEQ warm, tol 0.01, budget 12 [default-deq]"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_deq", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(bench, seed: int, setting: str, rng: np.random.Generator) -> dict:
    row = {key: float(rng.uniform(0.1, 5.0)) for key in bench.MEAN_KEYS}
    deq = setting != UNROLLED
    row.update(seed=seed, setting=setting, frames=100, steps_max=12, budget=12 if deq else None,
               non_converged=int(rng.integers(0, 3)) if deq else None, warm_started=99 if deq else None)
    return row


def _run(bench, seeds: list[int], threads: int, rng: np.random.Generator) -> dict:
    rows = [_row(bench, s, label, rng) for s in seeds for label in (UNROLLED, DEQ)]
    return {"setup": {"seeds": seeds, "threads": threads, "deq_weights": "default-deq"}, "rows": rows}


def test_pooled_pairs_are_the_pairs_of_every_run_together(tmp_path: Path) -> None:
    bench = _bench()
    rng = np.random.default_rng(0)
    runs = [_run(bench, [0, 1, 2], 2, rng), _run(bench, [3, 4, 5, 6], 1, rng)]
    rows = bench.pooled_rows(runs)
    paired = bench.paired_rows(rows)[0]
    for key, _ in bench.PAIRED_KEYS:
        diffs = [d[key] - u[key] for run in runs for u, d in zip(run["rows"][::2], run["rows"][1::2])]
        assert paired[key]["n"] == 7
        assert paired[key]["mean"] == pytest.approx(np.mean(diffs))
        assert paired[key]["sem"] == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(7))
    assert bench.mean_rows(rows)[1]["non_converged"] == sum(r["non_converged"] or 0 for r in rows)

    # end to end: the files of two runs in, one report and one JSON out
    paths = []
    for i, run in enumerate(runs):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(run))
    out, out_json, out_png = tmp_path / "pooled.md", tmp_path / "pooled.json", tmp_path / "pooled.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--pool", *map(str, paths), "--out", str(out),
                           "--json", str(out_json), "--plot", str(out_png)], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    report = out.read_text()
    assert "7 sequences from 2 runs" in report and "seeds 3–6 (4 sequences), 1 thread(s)" in report
    assert "`pooled.png`" in report and out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(out_json.read_text())["paired"][0]["depth_abs_rel"]["n"] == 7


def test_pooling_refuses_repeated_seeds_and_different_settings() -> None:
    bench = _bench()
    rng = np.random.default_rng(1)
    with pytest.raises(SystemExit, match="more than one run"):
        bench.pooled_rows([_run(bench, [0, 1], 1, rng), _run(bench, [1, 2], 1, rng)])
    other = _run(bench, [5, 6], 1, rng)
    for row in other["rows"]:
        if row["setting"] == DEQ:
            row["setting"] = "DEQ warm, tol 0.005, budget 12 [default-deq]"
    with pytest.raises(SystemExit, match="different settings"):
        bench.pooled_rows([_run(bench, [0, 1], 1, rng), other])
