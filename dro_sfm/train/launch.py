"""Start or resume a training run from a YAML config: what ``dro-sfm train`` and ``python -m dro_sfm.train`` call.

Under ``torchrun`` every process runs the same call; the :class:`~dro_sfm.train.trainer.Trainer` reads
``WORLD_SIZE``/``RANK`` and joins the process group, and only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from dro_sfm.data.atomic import atomic_write_text
from dro_sfm.errors import ConfigError
from dro_sfm.train.config import TrainConfig, config_to_dict, from_dict, load_train_config

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
RESOLVED_CONFIG_FILE = "config.yaml"


@dataclass
class TrainingSummary:
    """What one invocation did (filled on every rank; only rank 0 wrote files)."""

    name: str
    first_step: int
    last_step: int
    total_steps: int
    final_loss: float | None
    checkpoint: Path
    model_file: Path | None
    is_main: bool
    world: int


def apply_overrides(cfg: TrainConfig, assignments: list[str] | tuple[str, ...]) -> TrainConfig:
    """``cfg`` with ``KEY=VALUE`` assignments applied (dotted keys, YAML values), validated like the file."""
    data = config_to_dict(cfg)
    for text in assignments:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-4")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {text!r}: the value is not valid YAML ({err})") from err
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if node is not data and part not in node:
                # a new nested mapping: from_dict rejects it unless the parent is free-form (model.overrides)
                node[part] = {}
            child = node.get(part)
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is not a section of the config")
            node = child
        node[parts[-1]] = value
    return from_dict(TrainConfig, data, where="config (after --set)")


def prepare_config(config_path: str | Path, out_dir: str | None = None, data_root: str | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load the YAML file and apply the command-line overrides (``--out``, ``--data-root``, ``--set``)."""
    cfg = load_train_config(config_path)
    cfg = apply_overrides(cfg, overrides)
    if out_dir is not None:
        cfg = dataclasses.replace(cfg, out_dir=str(out_dir))
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(data_root)))
    return cfg


def run_training(cfg: TrainConfig, resume: bool = False, max_steps: int | None = None, progress: bool = True,
                 source: str = "") -> TrainingSummary:
    """Train ``cfg`` (continuing its checkpoint with ``resume``) for at most ``max_steps`` more steps.

    Rank 0 writes the resolved config, the training checkpoint and, at the end, a standalone model file
    (``model.pt``, loadable with ``DroModel.load`` / ``--weights``).
    """
    from dro_sfm.models.predict import ModelInfo
    from dro_sfm.train.trainer import CHECKPOINT_NAME, Trainer

    trainer = Trainer(cfg, resume=resume)
    out_dir = Path(cfg.out_dir)
    first = trainer.step
    if trainer.dist.is_main:
        atomic_write_text(out_dir / RESOLVED_CONFIG_FILE, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    results = trainer.run(max_steps=max_steps, progress=progress)
    model_file = None
    if trainer.dist.is_main and results:
        d = cfg.data
        info = ModelInfo(
            name=cfg.name, image_shape=(d.height, d.width),
            depth_units="metres" if cfg.loss.kind == "supervised" else "up to scale", trained=True,
            source=source or "dro-sfm train",
            notes={"step": trainer.step, "data": d.kind, "loss": cfg.loss.kind, "final_loss": results[-1].loss},
        )
        model_file = out_dir / MODEL_FILE
        trainer.export_model(model_file, info)
    _finish_distributed(trainer)
    return TrainingSummary(
        name=cfg.name, first_step=first, last_step=trainer.step, total_steps=cfg.optim.steps,
        final_loss=results[-1].loss if results else None, checkpoint=out_dir / CHECKPOINT_NAME,
        model_file=model_file, is_main=trainer.dist.is_main, world=trainer.dist.world,
    )


def _finish_distributed(trainer) -> None:
    """Wait for every rank (rank 0 may still be writing) and leave the process group."""
    import torch.distributed as dist

    if trainer.dist.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
