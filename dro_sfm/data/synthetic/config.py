"""Typed configuration of the synthetic engine: scene layout, camera motion and sensor nuisances.

Every knob has a default that gives a plausible scene; all randomness is drawn from a numpy Generator
seeded by the caller, so a (config, seed) pair always produces the same frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from dro_sfm.errors import ConfigError

SceneKind = Literal["indoor", "outdoor"]
SCENE_KINDS: tuple[str, ...] = ("indoor", "outdoor")

Range = tuple[float, float]


def check_range(name: str, value: Range, low: float = 0.0) -> None:
    """Raise ``ConfigError`` unless ``value`` is an ordered pair ``low <= lo <= hi``."""
    lo, hi = value
    if not (low <= lo <= hi):
        raise ConfigError(f"{name} must be an ordered range with {low} <= min <= max, got {value}")


def check_kind(kind: str) -> None:
    """Raise ``ConfigError`` for an unknown scene kind."""
    if kind not in SCENE_KINDS:
        raise ConfigError(f"unknown synthetic scene kind {kind!r}; use one of {', '.join(SCENE_KINDS)}")


@dataclass(frozen=True)
class SceneConfig:
    """Procedural layout of one scene (both kinds; each kind reads its own fields)."""

    texture_size: int = 256
    """Side of every square material texture in texels (power of two); 256 keeps a scene near 20 MB."""
    n_materials: int = 20
    """Distinct procedural textures per scene (at least 16); objects sharing one differ by tint and offset."""
    shadows: bool = True
    """Cast sun shadows (outdoor only: indoor light is a ceiling lamp plus a fill light, unshadowed)."""

    # Indoor room.
    room_size_m: tuple[Range, Range, Range] = ((4.0, 8.0), (3.5, 7.0), (2.5, 3.2))
    n_floor_objects: Range = (6, 12)
    n_wall_objects: Range = (6, 14)
    n_table_objects: Range = (3, 8)
    wall_band_m: float = 0.75
    """Tall furniture (shelves, wardrobes, floor lamps) stands within this distance of a wall."""
    furniture_clearance_m: float = 1.05
    """Nothing outside the wall band is taller than this, so a hand-held camera above it never collides."""

    # Outdoor street.
    street_length_m: float = 160.0
    """Drivable length; buildings continue ~120 m further so the view ahead is never empty."""
    lane_width_m: Range = (3.0, 3.75)
    parking_width_m: float = 2.2
    pavement_width_m: Range = (2.0, 4.5)
    building_height_m: Range = (5.0, 22.0)
    parked_car_probability: float = 0.55
    """Probability that a parking slot (~6 m of kerb) holds a car."""

    def __post_init__(self) -> None:
        if self.texture_size < 16 or self.texture_size & (self.texture_size - 1):
            raise ConfigError(f"texture_size must be a power of two >= 16, got {self.texture_size}")
        if self.n_materials < 16:
            raise ConfigError(f"n_materials must be at least 16, got {self.n_materials}")
        if self.street_length_m <= 0:
            raise ConfigError(f"street_length_m must be positive, got {self.street_length_m}")
        for axis, rng in zip("xyz", self.room_size_m):
            check_range(f"room_size_m[{axis}]", rng, low=2.0)
        if self.room_size_m[2][0] < 2.4:
            raise ConfigError("room height must be at least 2.4 m so a hand-held camera fits under the lamp")
        for axis in (0, 1):
            if self.room_size_m[axis][0] < 2 * self.wall_band_m + 1.0:
                raise ConfigError(
                    f"room_size_m[{axis}] min must leave >= 1 m between the wall bands "
                    f"(>= {2 * self.wall_band_m + 1.0:.2f} m), got {self.room_size_m[axis][0]}"
                )


@dataclass(frozen=True)
class TrajectoryConfig:
    """Camera motion. Ranges bound the motion between consecutive frames (for training curricula)."""

    # Hand-held indoor motion.
    translation_range_m: Range = (0.01, 0.10)
    rotation_range_deg: Range = (0.5, 5.0)
    height_range_m: Range = (1.2, 1.8)
    """Camera height above the floor (furniture in the middle of the room stays below ~1 m)."""
    wall_margin_m: float = 0.8
    """Minimum horizontal distance between the camera and any wall; tall furniture lives in this band."""
    pitch_range_deg: Range = (-40.0, 20.0)
    """Soft limits of the optical axis above the horizon (scans look down at furniture more than up);
    the camera turns back once past 60 % of a limit, so it may overshoot by up to one rotation step."""
    max_roll_deg: float = 10.0

    # Driving motion.
    forward_range_m: Range = (0.5, 1.5)
    max_yaw_step_deg: float = 1.0
    """Largest heading change between two frames."""
    camera_height_m: float = 1.65
    """Height of the driving camera above the road (KITTI: 1.65 m)."""

    smoothness_frames: float = 12.0
    """Correlation length of the random motion processes, in frames (larger = smoother)."""

    def __post_init__(self) -> None:
        check_range("translation_range_m", self.translation_range_m)
        check_range("rotation_range_deg", self.rotation_range_deg)
        check_range("height_range_m", self.height_range_m, low=0.1)
        check_range("forward_range_m", self.forward_range_m)
        lo, hi = self.pitch_range_deg
        if not -80.0 <= lo < 0.0 < hi <= 80.0:
            raise ConfigError(
                f"pitch_range_deg must satisfy -80 <= min < 0 < max <= 80, got {self.pitch_range_deg}"
            )
        if self.translation_range_m[1] > 0.5:
            raise ConfigError("translation_range_m max above 0.5 m is not hand-held motion; use outdoor")
        if self.rotation_range_deg[1] > 45.0:
            raise ConfigError(f"rotation_range_deg max must be <= 45 degrees, got {self.rotation_range_deg}")
        if self.wall_margin_m < 0.3:
            raise ConfigError(f"wall_margin_m must be >= 0.3 m, got {self.wall_margin_m}")
        if self.smoothness_frames < 1.0:
            raise ConfigError(f"smoothness_frames must be >= 1, got {self.smoothness_frames}")

    def scaled(self, motion_scale: float) -> TrajectoryConfig:
        """The same config with every inter-frame motion range multiplied by ``motion_scale``."""
        if motion_scale <= 0:
            raise ConfigError(f"motion_scale must be positive, got {motion_scale}")

        def mul(r: Range) -> Range:
            return (r[0] * motion_scale, r[1] * motion_scale)

        return dataclasses.replace(
            self,
            translation_range_m=mul(self.translation_range_m),
            rotation_range_deg=mul(self.rotation_range_deg),
            forward_range_m=mul(self.forward_range_m),
            max_yaw_step_deg=self.max_yaw_step_deg * motion_scale,
        )


@dataclass(frozen=True)
class NuisanceConfig:
    """Sensor imperfections applied after rendering. All off by default (exact, clean frames)."""

    exposure_range: Range | None = None
    """Per-frame multiplicative gain drawn from this range, e.g. (0.7, 1.3)."""
    gamma_range: Range | None = None
    """Per-frame tone-curve exponent drawn from this range, e.g. (0.85, 1.15)."""
    noise_sigma: float = 0.0
    """Standard deviation of additive Gaussian pixel noise on the [0,1] scale."""
    blur_sigma_px: float = 0.0
    """Largest Gaussian blur sigma in pixels; each frame draws its own sigma in [0, blur_sigma_px]."""
    vignetting: float = 0.0
    """Brightness loss at the image corners (0 = none, 0.4 = corners at 60 %)."""
    depth_hole_blobs: int = 0
    """Number of random elliptic holes (depth 0) per frame, like IR-absorbing or specular surfaces."""
    depth_hole_radius_px: Range = (3.0, 15.0)
    depth_edge_dropout: float = 0.0
    """Probability of invalidating a pixel next to a depth discontinuity (stereo/ToF edge dropout)."""
    depth_edge_threshold: float = 0.05
    """Relative depth jump between 4-neighbours that counts as a discontinuity."""

    def __post_init__(self) -> None:
        if self.exposure_range is not None:
            check_range("exposure_range", self.exposure_range)
        if self.gamma_range is not None:
            check_range("gamma_range", self.gamma_range, low=0.05)
        check_range("depth_hole_radius_px", self.depth_hole_radius_px)
        for name in ("noise_sigma", "blur_sigma_px", "vignetting", "depth_edge_threshold"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.depth_edge_dropout <= 1.0:
            raise ConfigError(f"depth_edge_dropout is a probability in [0,1], got {self.depth_edge_dropout}")
        if self.vignetting >= 1.0:
            raise ConfigError(f"vignetting must be < 1, got {self.vignetting}")
        if self.depth_hole_blobs < 0:
            raise ConfigError(f"depth_hole_blobs must be >= 0, got {self.depth_hole_blobs}")

    @property
    def enabled(self) -> bool:
        """True when any nuisance would change a frame."""
        return (
            self.exposure_range is not None
            or self.gamma_range is not None
            or self.noise_sigma > 0
            or self.blur_sigma_px > 0
            or self.vignetting > 0
            or self.depth_hole_blobs > 0
            or self.depth_edge_dropout > 0
        )

    @classmethod
    def realistic(cls) -> NuisanceConfig:
        """A moderate preset resembling a consumer RGB-D sensor."""
        return cls(
            exposure_range=(0.8, 1.2),
            gamma_range=(0.9, 1.1),
            noise_sigma=0.01,
            blur_sigma_px=0.8,
            vignetting=0.25,
            depth_hole_blobs=3,
            depth_edge_dropout=0.5,
        )
