"""Sharded evaluation: shard arithmetic, the disjointness check, gathering in list order, and a real
``torchrun --nproc_per_node 2`` KITTI evaluation (gloo, CPU) that must give the single-process numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_eval_kitti import synthetic_street, tiny_model_file, write_kitti_layout, write_split

from dro_sfm.errors import ConfigError
from dro_sfm.eval.distributed import (
    DistContext,
    check_disjoint_shards,
    device_for_process,
    gather_records,
    init_distributed,
    shard_indices,
)

REPO = Path(__file__).resolve().parents[1]


@given(n=st.integers(0, 200), world=st.integers(1, 9))
@settings(max_examples=60, deadline=None)
def test_shards_are_disjoint_and_cover_the_list(n: int, world: int) -> None:
    shards = [shard_indices(n, rank, world) for rank in range(world)]
    check_disjoint_shards(shards, n)
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_overlapping_or_incomplete_shards_are_refused() -> None:
    with pytest.raises(ConfigError, match="assigned to processes 0 and 1"):
        check_disjoint_shards([[0, 1], [1, 2]], 3)
    with pytest.raises(ConfigError, match="missing \\[2\\]"):
        check_disjoint_shards([[0], [1]], 3)
    with pytest.raises(ConfigError, match="out of range \\[5\\]"):
        check_disjoint_shards([[0, 1, 2], [5]], 3)
    with pytest.raises(ConfigError):
        shard_indices(4, 2, 2)


@dataclass(frozen=True)
class FakeWorld(DistContext):
    """Rank 0 of a two-process world whose other rank returns ``other`` from all_gather."""

    other: tuple = ()

    def all_gather(self, obj):
        return [obj, self.other]


def test_gather_restores_list_order_and_checks_the_shards() -> None:
    ctx = FakeWorld(rank=0, world_size=2, other=([1, 3], ["b", "d"]))
    assert gather_records(ctx, 5, [0, 2, 4], ["a", "c", "e"]) == ["a", "b", "c", "d", "e"]
    overlapping = FakeWorld(rank=0, world_size=2, other=([2, 3], ["x", "d"]))
    with pytest.raises(ConfigError):
        gather_records(overlapping, 4, [0, 2], ["a", "c"])


def test_single_process_context(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistContext() and ctx.is_main and ctx.shard(3) == [0, 1, 2]
    assert device_for_process("cuda", DistContext(1, 2, 1)) == "cuda:1"
    assert device_for_process("cuda", ctx) == "cuda"


def _run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _metrics(doc: dict) -> dict:
    """Everything numeric that must not depend on the number of processes."""
    out = {}
    for name, method in doc["methods"].items():
        for variant, summary in method["depth"].items():
            out[f"{name}/{variant}/mean"] = summary["mean"]
            out[f"{name}/{variant}/frames"] = [
                {k: v for k, v in row.items()} for row in summary["per_frame"]]
        out[f"{name}/pose"] = method["pose"]
    out["colmap"] = {k: v for k, v in doc["colmap"].items() if k != "description"}
    out["skipped"] = doc["skipped"]
    out["samples"] = [{k: v for k, v in s.items() if k != "process"} for s in doc["per_sample"]]
    return out


def test_torchrun_two_processes_give_the_single_process_numbers(tmp_path) -> None:
    root = tmp_path / "kitti"
    write_kitti_layout(synthetic_street(n_frames=5), root)
    split = write_split(tmp_path / "split.txt", range(5))
    weights = tiny_model_file(tmp_path / "tiny.pt")
    args = ["--data", str(root), "--split", str(split), "--weights", str(weights), "--baselines", "--no-plots",
            "--colmap-threads", "1"]
    app = str(REPO / "apps" / "eval_kitti.py")
    _run([sys.executable, app, *args, "--out", str(tmp_path / "one.json")], tmp_path)
    torchrun = Path(sys.executable).with_name("torchrun")
    _run([str(torchrun), "--standalone", "--nproc_per_node", "2", app, *args, "--out", str(tmp_path / "two.json")],
         tmp_path)

    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["processes"] == 1 and two["processes"] == 2
    assert [s["process"] for s in one["per_sample"]] == [0, 0, 0, 0, 0]
    assert [s["process"] for s in two["per_sample"]] == [0, 1, 0, 1, 0]  # round-robin, disjoint shards
    assert two["counts"] == {"listed": 5, "evaluated": 4, "skipped": 1}
    assert _metrics(one) == _metrics(two)
