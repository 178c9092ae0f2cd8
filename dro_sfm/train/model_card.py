"""Turning a training run into a shipped model: the model file, its scores, plots and the model card."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dro_sfm.data.atomic import atomic_path, atomic_write_text
from dro_sfm.errors import CheckpointError
from dro_sfm.models.config import DroConfig, EncoderWidths
from dro_sfm.models.dro import DroNet
from dro_sfm.models.predict import DroModel, ModelInfo
from dro_sfm.train.scorecard import rows_to_dicts, rows_to_markdown, score

log = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """What a training checkpoint says about its run."""

    step: int
    config: dict
    model_config: DroConfig
    state_dict: dict                     # the weight average when the run kept one (optim.ema_decay), else the weights
    wall_time_s: float | None
    averaged: bool = False


def read_training_run(run_dir: Path) -> TrainingRun:
    """Load ``run_dir/checkpoint.pt`` written by the trainer (weights-only)."""
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: train first with `dro-sfm train CONFIG`")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    mc = dict(payload["model_config"])
    mc["encoder"] = EncoderWidths(**mc["encoder"])
    averaged = "ema" in payload
    return TrainingRun(int(payload["step"]), payload["config"], DroConfig(**mc),
                       payload["ema"] if averaged else payload["model"], training_wall_time(run_dir / "tb"), averaged)


def training_wall_time(tb_dir: Path) -> float | None:
    """Seconds of training in ``tb_dir``: every process's (event file's) run, summed in the order logged.

    Event files are read one by one: a run resumed from an earlier checkpoint logs some steps twice, and
    merging by step would interleave the two runs' elapsed times into spurious segments.
    """
    total, found = 0.0, False
    for events in sorted(Path(tb_dir).glob("events.*")):
        series = _scalar_series(events, "time/elapsed_s")
        if series is not None and len(series):
            total += float(np.sum(_segment_durations(series)))
            found = True
    return total if found else None


def _scalar_series(events: Path, tag: str) -> np.ndarray | None:
    """[n,2] (step, value) of one tag in one event file, in logging order; None when absent."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return None
    return np.array([(e.step, e.value) for e in acc.Scalars(tag)])


def _segment_durations(series: np.ndarray) -> list[float]:
    """Total time of a run resumed several times: elapsed-time resets mark the segments."""
    values = series[:, 1]
    total, last = [], 0.0
    for v in values:
        if v < last:
            total.append(last)
        last = v
    total.append(last)
    return total


def training_curves(tb_dir: Path) -> dict[str, np.ndarray]:
    """Every scalar logged to TensorBoard: name -> [n,2] array of (step, value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not tb_dir.exists():
        return {}
    curves: dict[str, list] = {}
    for events in sorted(tb_dir.glob("events.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            curves.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: np.array(sorted(v)) for k, v in curves.items()}


def export_model(run: TrainingRun, out_path: Path, image_shape: tuple[int, int]) -> DroModel:
    """Write the run's network as a standalone model file (float32, no optimiser state)."""
    net = DroNet(run.model_config)
    net.load_state_dict(run.state_dict)
    net.eval()
    info = ModelInfo(name=out_path.stem, image_shape=image_shape, depth_units="metres", trained=True,
                     notes={"training_step": run.step, "trained_on": "synthetic indoor + outdoor (dro-sfm engine)"})
    model = DroModel(net, info)
    model.save(out_path, extra={"training_config": run.config})
    return DroModel.load(out_path)


def plot_curves(curves: dict[str, np.ndarray], out_png: Path) -> None:
    """Loss and per-iteration error curves over training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in ("loss/total", "loss/depth", "loss/pose", "loss/feature"):
        if name in curves:
            c = curves[name]
            axes[0].plot(c[:, 0], _smooth(c[:, 1]), label=name.split("/")[1])
    axes[0].set_yscale("log")
    axes[0].set_title("training loss (smoothed)")
    for metric, ax in (("abs_rel", axes[1]), ("rot_deg", axes[2])):
        for name in sorted(k for k in curves if k.startswith(f"per_iteration/{metric}_")):
            c = curves[name]
            ax.plot(c[:, 0], _smooth(c[:, 1]), label=f"prediction {name.rsplit('_', 1)[1]}")
        ax.set_title(f"training batch {metric} per prediction (smoothed)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _smooth(y: np.ndarray, k: int = 9) -> np.ndarray:
    if len(y) < k:
        return y
    return np.convolve(np.pad(y, (k // 2, k // 2), mode="edge"), np.ones(k) / k, mode="valid")


def error_vs_iterations(model: DroModel, n_samples: int, iterations: tuple[int, ...]) -> list[dict]:
    """Scorecard rows at each total iteration count (0…24)."""
    rows = score(model, n_samples=n_samples, iterations=iterations, progress=False)
    return [r for r in rows_to_dicts(rows) if r["predictor"].startswith("dro-")]


def plot_error_vs_iterations(rows: list[dict], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind in sorted({r["kind"] for r in rows}):
        sel = sorted((int(r["predictor"].split("-")[1]), r) for r in rows if r["kind"] == kind)
        its = [i for i, _ in sel]
        axes[0].plot(its, [r["abs_rel"] for _, r in sel], "o-", label=f"{kind}")
        axes[1].plot(its, [r["rot_deg"] for _, r in sel], "o-", label=f"{kind}")
    axes[0].set_title("depth AbsRel vs iterations")
    axes[1].set_title("rotation error (deg) vs iterations")
    for ax in axes:
        ax.set_xlabel("total update steps")
        ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def write_regression_scores(model: DroModel, path: Path, n_samples: int = 6,
                            sample_shape: tuple[int, int] = (240, 320)) -> dict:
    """Scores on a small reserved set, stored beside the model so a test can re-score and compare."""
    rows = score(model, n_samples=n_samples, height=sample_shape[0], width=sample_shape[1],
                 iterations=(model.config.total_steps,), progress=False, baselines=False)
    data = {"n_samples": n_samples, "image_shape": list(sample_shape), "process_shape": list(model.info.image_shape),
            "rows": rows_to_dicts(rows)}
    atomic_write_text(path, json.dumps(data, indent=1))
    return data


def scores_markdown(model: DroModel, n_samples: int) -> tuple[str, list[dict]]:
    rows = score(model, n_samples=n_samples, iterations=(0, 4, 12), progress=True)
    return rows_to_markdown(rows), rows_to_dicts(rows)
