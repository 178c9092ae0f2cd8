"""``DroModel``: a network plus what is needed to use it on real images (input size, units, provenance)."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dro_sfm.data.atomic import atomic_path
from dro_sfm.errors import CheckpointError, InputError
from dro_sfm.geometry.camera import scale_intrinsics_resize
from dro_sfm.geometry.pose import euler_vec_to_matrix
from dro_sfm.geometry.warp import inv2depth
from dro_sfm.models.config import DeqConfig, DroConfig, EncoderWidths
from dro_sfm.models.dro import DroNet, DroOutput, DroState, Features

OWN_FORMAT = "dro-sfm/model-v1"


@dataclass
class Prediction:
    """Output of ``DroModel.predict`` at the caller's input size.

    ``depth`` [B,1,H,W] in checkpoint units (metres for supervised models, 0 = invalid);
    ``T_ref_from_tgt`` [B,N,4,4]; ``pose_vecs`` [B,N,6]; ``inv_depth`` [B,1,h',w'] at the processing size;
    ``output`` the network's full output (state for warm starts, per-step costs, cost map).
    """

    depth: torch.Tensor
    T_ref_from_tgt: torch.Tensor
    pose_vecs: torch.Tensor
    inv_depth: torch.Tensor
    output: DroOutput


@dataclass
class ModelInfo:
    """Where a model came from and how it expects to be used."""

    name: str = "untrained"
    image_shape: tuple[int, int] = (240, 320)  # (H, W) default processing size (official: training size)
    depth_units: str = "metres"
    trained: bool = False
    source: str = ""
    notes: dict = field(default_factory=dict)


def _to_image_batch(images, name: str) -> torch.Tensor:
    """uint8/float arrays or tensors, [H,W,3] / [B,H,W,3] / [3,H,W] / [B,3,H,W] -> float [B,3,H,W] in [0,1]."""
    t = torch.from_numpy(np.array(images)) if not isinstance(images, torch.Tensor) else images
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise InputError(f"{name}: expected an image or a batch of images, got shape {tuple(t.shape)}")
    if t.shape[-1] == 3 and t.shape[1] != 3:
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] != 3:
        raise InputError(f"{name}: expected 3 colour channels, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if not t.is_floating_point():
        raise InputError(f"{name}: unsupported image dtype {t.dtype}; use uint8 or float in [0,1]")
    return t.float()


def resize_images(images: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resize [B,3,H,W] in [0,1] to ``shape`` with Lanczos (PIL), as the official inference does."""
    if tuple(images.shape[-2:]) == tuple(shape):
        return images
    out = []
    for img in images:
        arr = (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
        resized = Image.fromarray(arr).resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.array(resized)).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out).to(images.device)


class DroModel:
    """The DRO network with its metadata; ``predict`` takes images of any size."""

    def __init__(self, net: DroNet, info: ModelInfo | None = None) -> None:
        self.net = net
        self.info = info or ModelInfo()

    @property
    def config(self) -> DroConfig:
        return self.net.config

    def to(self, device: str | torch.device) -> DroModel:
        self.net.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    # ---------------------------------------------------------------------------------- inference
    def prepare(self, target, refs, K, image_shape: tuple[int, int] | None = None):
        """Images -> float [B,3,h,w] at the processing size (multiples of 16) and K [B,3,3] scaled to it."""
        tgt = _to_image_batch(target, "target")
        ref_list = [_to_image_batch(r, f"reference {i}") for i, r in enumerate(refs)]
        for i, r in enumerate(ref_list):
            if r.shape != tgt.shape:
                raise InputError(f"reference {i} has shape {tuple(r.shape)}, target {tuple(tgt.shape)}")
        K = torch.as_tensor(np.asarray(K) if not isinstance(K, torch.Tensor) else K, dtype=torch.float64)
        if K.dim() == 2:
            K = K.unsqueeze(0).expand(tgt.shape[0], 3, 3)
        H, W = tgt.shape[-2:]
        h, w = image_shape or self.info.image_shape
        if h % 16 or w % 16:
            raise InputError(
                f"processing size {h}x{w} must be a multiple of 16; choose e.g. {h // 16 * 16}x{w // 16 * 16}"
            )
        K_proc = scale_intrinsics_resize(K, w / W, h / H).float()
        dev = self.device
        return (
            resize_images(tgt, (h, w)).to(dev),
            [resize_images(r, (h, w)).to(dev) for r in ref_list],
            K_proc.to(dev),
        )

    @torch.no_grad()
    def predict(
        self,
        target,
        refs,
        K,
        image_shape: tuple[int, int] | None = None,
        stages: int | None = None,
        steps_per_stage: int | None = None,
        init: DroState | None = None,
        features: tuple[Features, list[Features]] | None = None,
        return_cost_map: bool = False,
        deq_config: DeqConfig | None = None,
    ) -> Prediction:
        """Depth [B,1,H,W] at the input size and T_ref_from_tgt [B,N,4,4] for target, refs and K (input pixels).

        Images are resized to ``image_shape`` (default: the model's training shape) with K scaled
        accordingly; the depth is resized back with nearest-neighbour sampling as the official script does.
        ``deq_config`` solves for the fixed point with these solver settings whatever the model's own
        ``solver`` is (the same weights serve both modes; docs/deq.md); its statistics are in
        ``output.extras["deq"]``.
        """
        tgt, ref_list, K_proc = self.prepare(target, refs, K, image_shape)
        self.net.eval()
        if deq_config is not None:
            from dro_sfm.models.deq import deq_forward  # deq imports the network module

            out = deq_forward(self.net, tgt, ref_list, K_proc, stages=stages, steps_per_stage=steps_per_stage,
                              init=init, features=features, return_cost_map=return_cost_map,
                              deq_config=deq_config, warn=False)
        else:
            out = self.net.forward_full(
                tgt, ref_list, K_proc, stages=stages, steps_per_stage=steps_per_stage, init=init,
                features=features, return_cost_map=return_cost_map,
            )
        inv = out.inv_depths[-1]
        depth = inv2depth(inv)
        H, W = _to_image_batch(target, "target").shape[-2:]
        if depth.shape[-2:] != (H, W):
            depth = F.interpolate(depth, size=(H, W), mode="nearest")
        poses = out.poses[-1]
        return Prediction(depth, euler_vec_to_matrix(poses), poses, inv, out)

    # ---------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the model in dro-sfm's own format (config, metadata, float32 state dict), atomically."""
        cfg = dataclasses.asdict(self.net.config)
        payload = {
            "format": OWN_FORMAT,
            "config": cfg,
            "info": dataclasses.asdict(self.info),
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "extra": extra or {},
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> DroModel:
        """Load a model file: dro-sfm's own format or an official DRO ``.ckpt``."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"model file {path} does not exist; list known weights with `dro-sfm weights list`")
        from dro_sfm.models.checkpoint import load_official_checkpoint, read_checkpoint_file

        payload = read_checkpoint_file(path)
        if isinstance(payload, dict) and payload.get("format") == OWN_FORMAT:
            return cls.from_own_payload(payload, path)
        net, info = load_official_checkpoint(path)
        return cls(net, ModelInfo(
            name=path.stem, image_shape=tuple(info.image_shape), trained=True, source=str(path),
            depth_units="metres" if info.supervised else "up to scale",
        ))

    @classmethod
    def from_own_payload(cls, payload: dict, path: Path) -> DroModel:
        """A model from a dro-sfm model file already read by ``read_checkpoint_file`` (``path`` names it)."""
        try:
            cfg_dict = dict(payload["config"])
            cfg_dict["encoder"] = EncoderWidths(**cfg_dict["encoder"])
            config = DroConfig(**cfg_dict)
            info_dict = dict(payload.get("info", {}))
            info_dict["image_shape"] = tuple(info_dict.get("image_shape", (240, 320)))
            info = ModelInfo(**info_dict)
        except (KeyError, TypeError) as err:
            raise CheckpointError(
                f"{path}: model file has an invalid config ({err}); was it written by dro-sfm?"
            ) from err
        net = DroNet(config)
        try:
            net.load_state_dict(payload["state_dict"], strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights do not match the stored config: {str(err)[:300]}") from err
        info.source = str(path)
        return cls(net, info)


def load_model(weights: str | Path = "default", device: str | torch.device = "cpu") -> DroModel:
    """A ready ``DroModel`` from a weights name or file; ``default`` is the shipped model.

    When the shipped default file is absent (a development checkout before training finished), an
    untrained small model is returned and a warning says so: its outputs are not meaningful.
    """
    import logging

    from dro_sfm.models.config import small_config
    from dro_sfm.models.weights import DEFAULT_WEIGHTS, REGISTRY, is_available, resolve_weights

    if str(weights) == DEFAULT_WEIGHTS and not is_available(REGISTRY[DEFAULT_WEIGHTS]):
        logging.getLogger(__name__).warning(
            "the default model file is missing from this installation: using UNTRAINED weights; "
            "depth and poses will be meaningless (pass --weights NAME|PATH for a trained model)"
        )
        torch.manual_seed(0)
        model = DroModel(DroNet(small_config()), ModelInfo(name="untrained-small", image_shape=(128, 160)))
    else:
        model = DroModel.load(resolve_weights(weights))
    model.net.release_unused_encoder()
    model.net.eval()
    return model.to(device)
