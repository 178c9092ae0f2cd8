"""Pieces shared by the indoor and outdoor scene builders: materials, lights, sky and camera-free space."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dro_sfm.data.synthetic.textures import GENERATORS, MaterialBank, hsv_to_rgb


@dataclass
class MaterialSet:
    """Collects procedural textures while a scene is laid out; ``bank()`` freezes them."""

    rng: np.random.Generator
    size: int
    textures: list[np.ndarray] = field(default_factory=list)
    texel_size_m: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, generator: str, texel_size_m: float, saturation: float = 1.0) -> int:
        """Generate one texture with the named generator; returns its material id.

        ``saturation`` < 1 pulls colours towards grey, for surfaces whose colour comes from the object tint.
        """
        texture = GENERATORS[generator](self.rng, self.size).astype(np.float32)
        if saturation != 1.0:
            grey = texture.mean(axis=-1, keepdims=True)
            texture = np.clip(grey + saturation * (texture - grey), 0.0, 1.0)
        self.textures.append(texture)
        self.texel_size_m.append(float(texel_size_m))
        self.names.append(generator)
        return len(self.textures) - 1

    def add_choice(
        self, generators: list[str], texel_range_m: tuple[float, float], saturation: float = 1.0
    ) -> int:
        """Generate a texture with a generator drawn from ``generators`` and a texel size from the range."""
        name = generators[int(self.rng.integers(len(generators)))]
        return self.add(name, self.rng.uniform(*texel_range_m), saturation)

    def fill_with_choices(
        self, total: int, generators: list[str], texel_range_m: tuple[float, float], saturation: float = 1.0
    ) -> list[int]:
        """Material ids of :meth:`add_choice` textures added until the set holds ``total`` (none if it does)."""
        return [
            self.add_choice(generators, texel_range_m, saturation) for _ in range(max(0, total - len(self.textures)))
        ]

    def bank(self) -> MaterialBank:
        return MaterialBank.from_textures(self.textures, self.texel_size_m, self.names)


def random_tint(
    rng: np.random.Generator,
    saturation: float = 0.25,
    value: tuple[float, float] = (0.8, 1.15),
    hue: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """A per-object colour multiplier [3] near white, so objects sharing a texture still differ in colour."""
    return hsv_to_rgb(np.array([rng.uniform(*hue), rng.uniform(0.0, saturation), 1.0])) * rng.uniform(*value)


def earthy_tint(
    rng: np.random.Generator, saturation: float = 0.4, value: tuple[float, float] = (0.8, 1.2)
) -> np.ndarray:
    """Tint [3] in the warm reds/ochres/beiges of render, brick and stone, or a neutral grey."""
    if rng.uniform() < 0.25:
        return np.full(3, rng.uniform(*value))
    return random_tint(rng, saturation, value, hue=(0.0, 0.15))


@dataclass
class Sky:
    """Colour of rays that leave the scene: a vertical gradient with clouds on a plane at infinity."""

    zenith: np.ndarray  # [3]
    horizon: np.ndarray  # [3]
    ground: np.ndarray  # [3] below the horizon
    clouds: np.ndarray  # [n,n] float32 in [0,1], periodic
    cloud_colour: np.ndarray  # [3]
    cloud_scale: float  # cloud texture periods per unit of tan(zenith angle)

    def colour(self, directions: np.ndarray) -> np.ndarray:
        """World ray directions [P,3] (any length, z up) to sky colours [P,3] in [0,1]."""
        d = directions / np.linalg.norm(directions, axis=1, keepdims=True)
        up = d[:, 2]
        t = np.sqrt(np.clip(up, 0.0, 1.0))[:, None]
        col = self.horizon * (1 - t) + self.zenith * t
        n = self.clouds.shape[0]
        safe = np.maximum(up, 0.05)
        x = d[:, 0] / safe * self.cloud_scale * n
        y = d[:, 1] / safe * self.cloud_scale * n
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = x - x0, y - y0
        xi, yi = x0.astype(np.int64) % n, y0.astype(np.int64) % n
        xj, yj = (xi + 1) % n, (yi + 1) % n
        c = self.clouds
        clouds = (c[yi, xi] * (1 - fx) + c[yi, xj] * fx) * (1 - fy) + (
            c[yj, xi] * (1 - fx) + c[yj, xj] * fx
        ) * fy
        fade = np.clip((up - 0.03) / 0.25, 0.0, 1.0)
        cover = (clouds * fade)[:, None]
        col = col * (1 - cover) + self.cloud_colour * cover
        return np.where((up < 0.0)[:, None], self.ground, col)


@dataclass
class Lighting:
    """Lambertian lighting: ambient + one directional light (+ an optional unshadowed point lamp)."""

    ambient: np.ndarray  # [3]
    sun_direction: np.ndarray  # [3] unit vector the light travels along (from the sun into the scene)
    sun_colour: np.ndarray  # [3]
    shadows: bool
    lamp_position: np.ndarray | None = None  # [3]
    lamp_colour: np.ndarray | None = None  # [3]
    lamp_range_m: float = 3.0
    sky: Sky | None = None


@dataclass
class SceneLayout:
    """Where a camera may be, as chosen by the builder.

    Indoor: the axis-aligned box ``free_min``..``free_max`` (world, metres) is clear of every object.
    Outdoor: the ego lane is the line ``y = lane_center_y`` from ``x_start`` to ``x_end`` at road height 0;
    the camera may deviate laterally by ``lane_half_width_m`` without touching anything.
    """

    kind: str
    room_size: np.ndarray | None = None  # [3] indoor room extent (x, y, z)
    free_min: np.ndarray | None = None  # [3]
    free_max: np.ndarray | None = None  # [3]
    lane_center_y: float = 0.0
    lane_half_width_m: float = 0.0
    x_start: float = 0.0
    x_end: float = 0.0
