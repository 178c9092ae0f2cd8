"""Distributed data-parallel training: two CPU processes (torchrun, gloo on the loopback) see disjoint batches and
end with the parameters of one process trained on the union of their batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import TINY_MODEL, write_box_dataset

from dro_sfm.train.launch import prepare_config
from dro_sfm.train.trainer import CHECKPOINT_NAME, Trainer

BATCH = 2
STEPS = 3

# Runs under torchrun: the real launch path (prepare_config + run_training, the Trainer joining the process
# group from torchrun's environment), with train_step wrapped to record which samples each rank trains on.
WORKER = '''
import json, os, sys
from dro_sfm.train.launch import prepare_config, run_training
from dro_sfm.train.trainer import Trainer

seen = []
train_step = Trainer.train_step


def recording(self, batch):
    seen.append(batch["index"].tolist())
    return train_step(self, batch)


Trainer.train_step = recording
cfg = prepare_config(sys.argv[1], overrides=sys.argv[2:])
summary = run_training(cfg, progress=False)
with open(os.path.join(cfg.out_dir, f"indices_rank{os.environ['RANK']}.json"), "w") as fh:
    json.dump({"indices": seen, "world": summary.world, "last_step": summary.last_step}, fh)
'''


def _config(path: Path, root: Path) -> Path:
    # Train-mode BatchNorm normalises with per-process batch statistics, so two processes with B samples each
    # compute a different function than one process with 2B samples; frozen BatchNorm (running statistics)
    # makes both the same computation, and then DDP's gradient averaging must reproduce the single run exactly.
    path.write_text(
        "name: ddp\nseed: 3\n"
        f"data: {{kind: 7scenes, root: {root}, height: 64, width: 96, max_depth: 20.0, augment: true}}\n"
        f"optim: {{batch_size: {BATCH}, steps: {STEPS}, lr: 1.0e-3, freeze_bn: true}}\n"
        "checkpoint_every: 0\nlog_every: 1\nimage_log_every: 0\n"
    )
    return path


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_union_of_their_batches(tmp_path: Path) -> None:
    root, _ = write_box_dataset("7scenes", tmp_path / "data", n=2 * BATCH * STEPS + 2)
    config = _config(tmp_path / "ddp.yaml", root)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "ddp_run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(worker), str(config),
           f"out_dir={out}", TINY_MODEL]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [json.loads((out / f"indices_rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["last_step"] == STEPS for r in ranks)
    per_rank = [[i for batch in r["indices"] for i in batch] for r in ranks]
    assert all(len(batches) == STEPS and all(len(b) == BATCH for b in batches)
               for batches in (r["indices"] for r in ranks))
    assert not set(per_rank[0]) & set(per_rank[1]), per_rank  # disjoint batches
    union = sorted(per_rank[0] + per_rank[1])
    assert union == list(range(2 * BATCH * STEPS))

    # one process, batch 2B: step s trains on rank 0's batch followed by rank 1's batch of step s
    torch.set_num_threads(1)
    single_cfg = prepare_config(config, out_dir=str(tmp_path / "single"),
                                overrides=[TINY_MODEL, f"optim.batch_size={2 * BATCH}"])
    single = Trainer(single_cfg)
    seen = []
    for batch in single.batches(0, STEPS):
        seen.append(batch["index"].tolist())
        single.train_step(batch)
    assert seen == [a + b for a, b in zip(ranks[0]["indices"], ranks[1]["indices"])]

    ddp_state = torch.load(out / CHECKPOINT_NAME, weights_only=True)["model"]
    worst = max(float((ddp_state[k] - v).abs().max()) for k, v in single.net.state_dict().items()
                if v.is_floating_point())
    # Adam moves a weight by up to lr = 1e-3 per step; the two runs differ only by float summation order
    assert worst < 1e-5, worst


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_module_entry_point_runs_the_train_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "dro_sfm.train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--resume" in proc.stdout and "CONFIG" in proc.stdout
