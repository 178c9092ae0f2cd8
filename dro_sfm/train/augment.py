"""Training augmentations that keep images, depth, intrinsics and poses consistent."""

from __future__ import annotations

import numpy as np
import torch

# Mirroring the image mirrors the scene through the camera's x = 0 plane: S·T·S for every pose.
_MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64))


def hflip_sample(sample: dict) -> dict:
    """Flip a training sample horizontally: images/depth mirrored, cx -> W-1-cx, poses conjugated by S."""
    out = dict(sample)
    W = sample["target"].shape[-1]
    out["target"] = sample["target"].flip(-1)
    out["refs"] = sample["refs"].flip(-1)
    if "depth" in sample:
        out["depth"] = sample["depth"].flip(-1)
    K = sample["K"].clone()
    K[0, 2] = (W - 1) - K[0, 2]
    out["K"] = K
    if "T_ref_from_tgt" in sample:
        S = _MIRROR.to(sample["T_ref_from_tgt"].dtype)
        out["T_ref_from_tgt"] = S @ sample["T_ref_from_tgt"] @ S
    return out


def colour_jitter(sample: dict, rng: np.random.Generator, strength: float = 0.2) -> dict:
    """Same brightness/contrast/saturation/gamma change for every image of a sample (photometric only)."""
    b = 1.0 + rng.uniform(-strength, strength)
    c = 1.0 + rng.uniform(-strength, strength)
    s = 1.0 + rng.uniform(-strength, strength)
    gamma = float(np.exp(rng.uniform(-strength, strength) / 2))

    def apply(img: torch.Tensor) -> torch.Tensor:
        """[...,3,H,W] -> [...,3,H,W]."""
        mean = img.mean(dim=(-3, -2, -1), keepdim=True)
        img = (img - mean) * c + mean
        grey = img.mean(dim=-3, keepdim=True)
        img = (img - grey) * s + grey
        return (img * b).clamp(0, 1) ** gamma

    out = dict(sample)
    out["target"] = apply(sample["target"])
    out["refs"] = apply(sample["refs"])
    return out


def random_crop(sample: dict, rng: np.random.Generator, height: int, width: int) -> dict:
    """Crop every image/depth of a sample to ``height``×``width`` at one random offset; K shifted."""
    H, W = sample["target"].shape[-2:]
    if (H, W) == (height, width):
        return sample
    y0 = int(rng.integers(0, H - height + 1))
    x0 = int(rng.integers(0, W - width + 1))
    out = dict(sample)
    crop = lambda t: t[..., y0:y0 + height, x0:x0 + width]  # noqa: E731
    out["target"], out["refs"] = crop(sample["target"]), crop(sample["refs"])
    if "depth" in sample:
        out["depth"] = crop(sample["depth"])
    K = sample["K"].clone()
    K[0, 2] -= x0
    K[1, 2] -= y0
    out["K"] = K
    return out


def augment_sample(sample: dict, rng: np.random.Generator, flip_prob: float = 0.5) -> dict:
    """Colour jitter and a geometry-consistent horizontal flip."""
    sample = colour_jitter(sample, rng)
    if rng.random() < flip_prob:
        sample = hflip_sample(sample)
    return sample
