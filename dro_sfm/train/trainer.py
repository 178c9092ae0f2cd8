"""The training loop: deterministic per step (exact resume), checkpoints, TensorBoard, DDP via torchrun."""

from __future__ import annotations

import io
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dro_sfm.data.atomic import atomic_path
from dro_sfm.errors import CheckpointError, ConfigError
from dro_sfm.geometry.pose import euler_vec_to_matrix
from dro_sfm.losses.feature import feature_contrastive_loss
from dro_sfm.losses.photometric import photometric_loss
from dro_sfm.losses.supervised import pose_parameter_term, supervised_loss
from dro_sfm.models.dro import DroNet
from dro_sfm.models.predict import DroModel, ModelInfo
from dro_sfm.train.config import TrainConfig, config_to_dict
from dro_sfm.train.datasets import StepBatchSampler, build_dataset, collate

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
TRAIN_FORMAT = "dro-sfm/train-v1"


@dataclass
class StepResult:
    step: int
    loss: float
    terms: dict[str, float]


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def reinitialise(net: torch.nn.Module, names: list[str]) -> None:
    """Reset the parameters of the named submodules (fresh initialisation, drawn from the seeded RNG)."""
    for name in names:
        try:
            module = net.get_submodule(name)
        except AttributeError as err:
            raise ConfigError(f"model.reinit: the network has no module {name!r}") from err
        resettable = [m for m in module.modules() if hasattr(m, "reset_parameters")]
        if not resettable:
            raise ConfigError(f"model.reinit: module {name!r} has no parameters to re-initialise")
        for m in resettable:
            m.reset_parameters()


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a training checkpoint written by ``Trainer``; a missing, corrupt or foreign file is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist; start without --resume")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"cannot resume from {path}: the file is corrupt or truncated ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path} is not a dro-sfm training checkpoint")
    return payload


def compact_checkpoint(path: Path) -> int:
    """Rewrite a training checkpoint without the optimiser state (Adam's moments: two thirds of the file).

    Sessions on this project's machines do not survive, so a run's checkpoint is committed; the compact file
    is small enough for that. Returns the new size in bytes.
    """
    payload = read_checkpoint(path)
    payload.pop("optimizer", None)
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path.stat().st_size


def init_distributed(device: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def _rng_state() -> dict:
    """RNG states as tensors and plain numbers, so checkpoints load with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])


def _seed_step(seed: int, step: int, rank: int) -> None:
    """Every step's randomness derives from (seed, step, rank), so a resumed run repeats it exactly."""
    s = (seed * 1_000_003 + step * 7919 + rank) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def initial_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights to warm-start from: a model file (ours or official) or another run's training checkpoint."""
    from dro_sfm.models.checkpoint import read_checkpoint_file

    if Path(path).is_file():
        payload = read_checkpoint_file(Path(path))
        if isinstance(payload, dict) and payload.get("format") == TRAIN_FORMAT:
            return payload["model"]
    return DroModel.load(path).net.state_dict()


class Trainer:
    """Trains a ``DroNet`` from a ``TrainConfig``; ``run()`` continues from the checkpoint with ``resume``."""

    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.dist = init_distributed(cfg.device)
        self.device = torch.device(cfg.device)
        self.out_dir = Path(cfg.out_dir)
        d = cfg.data
        torch.manual_seed(cfg.seed)  # the initial weights, like every step, follow from the seed
        self.net = cfg.model.build(d.min_depth, d.max_depth, cfg.loss.deq_residual_weight > 0,
                                   cfg.loss.deq_jacobian_weight > 0).to(self.device)
        if cfg.model.init_weights:
            self.net.load_state_dict(initial_state_dict(cfg.model.init_weights), strict=True)
        reinitialise(self.net, cfg.model.reinit)
        self.model: torch.nn.Module = self.net
        if self.dist.world > 1:
            self.model = DistributedDataParallel(_FullForward(self.net), find_unused_parameters=True)
        params = [p for n, p in self.net.named_parameters() if not n.startswith("cnet.")]
        o = cfg.optim
        self.optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=o.lr_step, gamma=o.lr_gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=o.amp and self.device.type == "cuda")
        self.ema: AveragedModel | None = None
        if o.ema_decay > 0:
            # The first update copies the weights; later ones blend in (1 - decay) of each step's weights.
            self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(o.ema_decay), use_buffers=True)
        self.step = 0
        self.dataset = build_dataset(cfg)
        self.writer = None
        if resume:
            self.load_checkpoint(self.out_dir / CHECKPOINT_NAME)

    # ------------------------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self) -> dict:
        return {
            "format": TRAIN_FORMAT,
            "config": config_to_dict(self.cfg),
            "model_config": config_to_dict(self.net.config),
            "step": self.step,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            **({"ema": self.ema.module.state_dict(), "ema_updates": int(self.ema.n_averaged)} if self.ema else {}),
        }

    def save_checkpoint(self) -> Path:
        """Write the training state atomically (only the main process writes)."""
        path = self.out_dir / CHECKPOINT_NAME
        if self.dist.is_main:
            buf = io.BytesIO()
            torch.save(self.checkpoint_payload(), buf)
            with atomic_path(path) as tmp:
                tmp.write_bytes(buf.getvalue())
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Restore model, optimiser, scheduler, RNG state and step; a missing or foreign file is an error."""
        payload = read_checkpoint(path, self.device)
        try:
            self.net.load_state_dict(payload["model"])
        except RuntimeError as err:
            raise CheckpointError(
                f"{path} was written for a different model configuration; use the config it was trained with "
                f"({str(err)[:200]})"
            ) from err
        if "optimizer" in payload:
            self.optimizer.load_state_dict(payload["optimizer"])
        else:
            log.warning("%s is a compact checkpoint without optimiser state: Adam restarts its moment "
                           "estimates at step %d (everything else continues exactly)", path, payload["step"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.ema is not None and "ema" in payload:
            self.ema.module.load_state_dict(payload["ema"])
            self.ema.n_averaged.fill_(int(payload["ema_updates"]))
        elif self.ema is not None:
            log.warning("%s has no weight average: it starts from the weights of step %d", path, payload["step"])
        _set_rng_state(payload["rng"])
        self.step = int(payload["step"])

    @property
    def shipped_net(self) -> DroNet:
        """The network validation scores and exports: the weight average when ``optim.ema_decay`` > 0."""
        return self.ema.module if self.ema is not None else self.net

    def export_model(self, path: Path, info: ModelInfo) -> None:
        """Write the trained network as a standalone model file (what ``reconstruct`` loads)."""
        DroModel(self.shipped_net, info).save(path)

    # ------------------------------------------------------------------------------------ one step
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float], dict]:
        """Forward + loss on a collated batch; returns (loss, scalar terms, outputs for logging)."""
        cfg = self.cfg
        target, refs, K = batch["target"], list(batch["refs"].unbind(1)), batch["K"].float()
        net = self.net
        out = net.forward_full(target, refs, K) if self.model is net else self._ddp_forward(target, refs, K)
        inv_preds, poses = out.inv_depths, torch.stack(out.poses, dim=2)  # [B,N,K,6]
        mats = euler_vec_to_matrix(poses)
        per_pred = [[mats[:, v, k] for v in range(mats.shape[1])] for k in range(mats.shape[2])]
        terms: dict[str, float] = {}
        gt_mats = list(batch["T_ref_from_tgt"].float().unbind(1)) if "T_ref_from_tgt" in batch else None
        if cfg.loss.kind == "supervised":
            d = cfg.data
            sup = supervised_loss(inv_preds, per_pred, batch["depth"], gt_mats, K, d.min_depth, d.max_depth)
            loss = sup.total
            terms.update(depth=sup.depth.item(), pose=sup.pose.item())
        else:
            ph = photometric_loss(inv_preds, per_pred, target, refs, K)
            loss = ph.total
            terms.update(photometric=ph.photometric.item(), smoothness=ph.smoothness.item())
        if cfg.loss.feature_weight > 0 and "depth" in batch:
            feat = sum(
                feature_contrastive_loss(out.extras["fmap_tgt"], fr, batch["depth"], K, batch["T_ref_from_tgt"][:, i])
                for i, fr in enumerate(out.extras["fmaps_ref"])
            ) / len(refs)
            loss = loss + cfg.loss.feature_weight * feat
            terms["feature"] = float(feat.detach())
        if cfg.loss.pose_param_weight > 0 and gt_mats is not None:
            lc = cfg.loss
            pose_param = pose_parameter_term(
                per_pred, gt_mats, lc.pose_param_translation, lc.pose_param_translation_weight
            )
            loss = loss + cfg.loss.pose_param_weight * pose_param
            terms["pose_param"] = float(pose_param.detach())
        for name, weight in (("deq_residual", cfg.loss.deq_residual_weight),
                             ("deq_jacobian", cfg.loss.deq_jacobian_weight)):
            term = out.extras.get(name)
            if term is None:
                continue
            terms[name] = float(term.detach())  # logged even when unweighted: the solver's health
            if weight > 0:
                loss = loss + weight * term
        return loss, terms, {"out": out, "poses": poses}

    def _ddp_forward(self, target, refs, K):
        # DDP synchronises gradients through its __call__, so forward_full is reached via _FullForward.
        return self.model(target, refs, K)

    def train_step(self, batch: dict) -> StepResult:
        """One optimisation step on ``batch``."""
        self.net.train()
        if self.cfg.optim.freeze_bn:
            self.net.freeze_batchnorm()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", enabled=self.scaler.is_enabled()):
            loss, terms, extra = self.compute_loss(batch)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        self.step += 1
        self._last = (batch, extra)
        return StepResult(self.step, float(loss.item()), terms)

    # ------------------------------------------------------------------------------------ loop
    def batches(self, start_step: int, end_step: int):
        """Batches for steps [start, end) of this rank: disjoint across ranks, fixed by the step index."""
        sampler = StepBatchSampler(
            start_step, end_step, self.cfg.optim.batch_size, self.dist.rank, self.dist.world
        )
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.cfg.data.workers,
            persistent_workers=False,
        )
        return loader

    def run(self, max_steps: int | None = None, progress: bool = True) -> list[StepResult]:
        """Train until ``optim.steps`` (or ``max_steps`` more steps); returns the per-step results."""
        cfg = self.cfg
        end = cfg.optim.steps if max_steps is None else min(cfg.optim.steps, self.step + max_steps)
        results: list[StepResult] = []
        if self.dist.is_main and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.step)
        bar = tqdm(total=end - self.step, desc="train", disable=not (progress and self.dist.is_main))
        t0 = time.perf_counter()
        for batch in self.batches(self.step, end):
            _seed_step(cfg.seed, self.step, self.dist.rank)
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            res = self.train_step(batch)
            results.append(res)
            bar.update(1)
            bar.set_postfix(loss=f"{res.loss:.4f}")
            if self.writer is not None and (res.step % cfg.log_every == 0 or res.step == end):
                self._log_scalars(res, time.perf_counter() - t0)
            if self.writer is not None and cfg.image_log_every and res.step % cfg.image_log_every == 0:
                self._log_images(res.step)
            if self.writer is not None and cfg.val_every and res.step % cfg.val_every == 0:
                self._validate(res.step)
            if cfg.optim.recycle_dormant_every and res.step % cfg.optim.recycle_dormant_every == 0:
                self.recycle_dormant(res.step)
            if cfg.checkpoint_every and res.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        if results and (not cfg.checkpoint_every or results[-1].step % cfg.checkpoint_every):
            self.save_checkpoint()
        if self.writer is not None:
            self.writer.flush()
        return results

    def _log_scalars(self, res: StepResult, elapsed: float) -> None:
        from dro_sfm.train.monitor import per_prediction_errors

        w = self.writer
        terms = " ".join(f"{k}={v:.4f}" for k, v in res.terms.items())
        log.info("step %d loss=%.4f %s lr=%.2e elapsed=%.0fs", res.step, res.loss, terms,
                 self.scheduler.get_last_lr()[0], elapsed)
        w.add_scalar("loss/total", res.loss, res.step)
        for k, v in res.terms.items():
            w.add_scalar(f"loss/{k}", v, res.step)
        w.add_scalar("lr", self.scheduler.get_last_lr()[0], res.step)
        w.add_scalar("time/elapsed_s", elapsed, res.step)
        batch, extra = self._last
        if "depth" in batch:
            errs = per_prediction_errors(self.net, extra["out"], extra["poses"], batch)
            for i, (absrel, rot) in enumerate(zip(errs["abs_rel"], errs["rot_deg"])):
                w.add_scalar(f"per_iteration/abs_rel_{i}", absrel, res.step)
                w.add_scalar(f"per_iteration/rot_deg_{i}", rot, res.step)

    def validation_scores(self) -> list:
        """Eval-mode scorecard rows (0 and all iterations) on ``val_samples`` reserved samples per scene kind."""
        from dro_sfm.train.scorecard import VALIDATION_FIRST_SAMPLE, score

        d = self.cfg.data
        if d.kind != "synthetic":
            return []
        kinds = ("indoor", "outdoor") if d.scenes == "mixed" else (d.scenes,)
        net = self.shipped_net
        total = net.config.stages * net.config.steps_per_stage
        model = DroModel(net, ModelInfo(name="validation", image_shape=(d.height, d.width), trained=True))
        try:
            return score(model, kinds=kinds, n_samples=self.cfg.val_samples, height=d.height, width=d.width,
                         iterations=(0, total), progress=False, baselines=False,
                         first_sample=VALIDATION_FIRST_SAMPLE)
        finally:
            self.net.train()

    def _validate(self, step: int) -> None:
        for row in self.validation_scores():
            it = row.predictor.split("-")[1]
            for name in ("abs_rel", "abs_rel_median_scaled", "rot_deg", "tdir_deg", "depth_scale",
                         "translation_scale"):
                self.writer.add_scalar(f"val_{row.kind}/{name}_it{it}", getattr(row, name), step)
            log.info("step %d val %s %s: abs_rel=%.3f (median-scaled %.3f) rot=%.2f deg tdir=%.1f deg "
                     "depth scale %.2f translation length ratio %.2f", step, row.kind, row.predictor, row.abs_rel,
                     row.abs_rel_median_scaled, row.rot_deg, row.tdir_deg, row.depth_scale, row.translation_scale)

    def _log_images(self, step: int) -> None:
        """Pictures of the last batch, and how alive each head's hidden layer is on it."""
        from dro_sfm.train.dormant import head_activity
        from dro_sfm.train.monitor import image_panels

        batch, extra = self._last
        for name, img in image_panels(extra["out"], extra["poses"], batch).items():
            self.writer.add_image(name, img, step, dataformats="HWC")
        activity = head_activity(self.net, batch["target"], list(batch["refs"].unbind(1)), batch["K"].float())
        for name, frac in activity.items():
            self.writer.add_scalar(f"activity/{name}", frac, step)
        dead = [name for name, frac in activity.items() if frac == 0.0]
        if dead:
            log.warning("step %d: no active unit in %s (dead ReLUs: the head outputs a constant and learns no "
                        "more); set optim.recycle_dormant_every, or re-initialise it with model.reinit",
                        step, ", ".join(dead))

    def recycle_dormant(self, step: int):
        """Re-draw the heads' dormant units, judged on the last batch (of every process, in DDP)."""
        from dro_sfm.train.dormant import recycle_dormant_units, unit_activity

        batch, _ = self._last
        activity = unit_activity(self.net, batch["target"], list(batch["refs"].unbind(1)), batch["K"].float())
        if self.dist.world > 1:
            for frac in activity.values():  # dormant only where dormant on every rank's batch
                dist.all_reduce(frac, op=dist.ReduceOp.SUM)
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)  # the same on every rank
        report = recycle_dormant_units(self.net, activity, generator, self.optimizer)
        if report.summary():
            log.info("step %d: recycled dormant units: %s", step, report.summary())
        if self.writer is not None:
            for name, n in report.dormant.items():
                self.writer.add_scalar(f"dormant/{name}", n / report.width[name], step)
        return report


class _FullForward(torch.nn.Module):
    """Adapter so that DDP's __call__ reaches ``DroNet.forward_full``."""

    def __init__(self, net: DroNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, target, refs, K):
        return self.net.forward_full(target, refs, K)
