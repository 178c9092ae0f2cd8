"""Ray-cast rendering of a synthetic scene into an exact posed RGB-D ``Frame``.

One Embree ray per pixel, through the pixel centre ``(u, v)`` (integer coordinates, the convention of
the back-projection in spec §7). Ray directions are ``R_world_from_cam @ K^-1 [u, v, 1]``, so the hit
parameter ``t`` returned by Open3D (in units of the direction length) *is* the z-depth along the optical
axis. Colour is Lambertian: mip-mapped texture albedo x (ambient + directional sun, optionally shadowed,
+ an unshadowed point lamp). Shading does not depend on the viewing direction, so a surface point has
the same colour in every view (photometric consistency holds exactly up to texture filtering).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dro_sfm.data.synthetic.config import NuisanceConfig
from dro_sfm.data.synthetic.layout import Lighting, SceneLayout
from dro_sfm.data.synthetic.meshes import TriangleSoup
from dro_sfm.data.synthetic.nuisances import apply_nuisances
from dro_sfm.data.synthetic.textures import MaterialBank
from dro_sfm.data.types import Frame
from dro_sfm.errors import InputError

SHADOW_BIAS_M = 2e-3


@dataclass
class Hits:
    """First hits of P rays: ``depth`` [P] (0 = miss), ``triangle`` [P] (-1 = miss), barycentrics [P,2]."""

    depth: np.ndarray
    triangle: np.ndarray
    bary: np.ndarray
    geometric_normal: np.ndarray


def pixel_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """Camera-frame ray directions [3,H*W] float32 through pixel centres, with z = 1 (so t = z-depth)."""
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"intrinsics must be a 3x3 matrix with positive focal lengths, got {K!r}")
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    pix = np.stack([u.ravel(), v.ravel(), np.ones(height * width)], axis=0)
    return (np.linalg.inv(K) @ pix).astype(np.float32)


def check_pose(T_world_from_cam: np.ndarray) -> np.ndarray:
    """Validate and return a rigid camera-to-world pose [4,4] as float64."""
    T = np.asarray(T_world_from_cam, np.float64)
    if T.shape != (4, 4):
        raise InputError(f"camera pose must be a 4x4 matrix, got shape {T.shape}")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
        raise InputError("camera pose rotation is not a proper rotation matrix (orthonormal, det +1)")
    return T


@dataclass
class SyntheticScene:
    """A procedurally built scene that renders exact posed RGB-D frames from any camera.

    The Embree scene is created lazily and dropped on pickling, so scenes can be sent to data-loader
    worker processes.
    """

    kind: str
    seed: int
    soup: TriangleSoup
    materials: MaterialBank
    lighting: Lighting
    layout: SceneLayout
    _raycaster: object | None = field(default=None, repr=False)
    _ray_cache: dict = field(default_factory=dict, repr=False)
    _table: np.ndarray | None = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_raycaster=None, _ray_cache={}, _table=None)
        return state

    @property
    def n_triangles(self) -> int:
        return len(self.soup)

    @property
    def raycaster(self):
        """The Open3D ``RaycastingScene`` holding every triangle (built on first use)."""
        if self._raycaster is None:
            import open3d as o3d

            scene = o3d.t.geometry.RaycastingScene()
            vertices = np.ascontiguousarray(self.soup.corners.reshape(-1, 3), dtype=np.float32)
            triangles = np.arange(len(vertices), dtype=np.uint32).reshape(-1, 3)
            scene.add_triangles(o3d.core.Tensor(vertices), o3d.core.Tensor(triangles))
            self._raycaster = scene
        return self._raycaster

    # ------------------------------------------------------------------------------------- queries
    def cast(self, origins: np.ndarray, directions: np.ndarray) -> Hits:
        """First hits of rays origins [P,3], directions [P,3]; depth is in units of the direction length."""
        import open3d as o3d

        rays = np.concatenate([origins, directions], axis=1).astype(np.float32)
        out = self.raycaster.cast_rays(o3d.core.Tensor(rays))
        t = out["t_hit"].numpy()
        hit = np.isfinite(t)
        tri = out["primitive_ids"].numpy().astype(np.int64)
        return Hits(
            depth=np.where(hit, t, 0.0).astype(np.float32),
            triangle=np.where(hit, tri, -1),
            bary=out["primitive_uvs"].numpy(),
            geometric_normal=out["primitive_normals"].numpy(),
        )

    def distance_to_surface(self, points: np.ndarray) -> np.ndarray:
        """Unsigned distance [P] from world points [P,3] to the nearest scene surface, in metres."""
        import open3d as o3d

        pts = o3d.core.Tensor(np.ascontiguousarray(points, dtype=np.float32))
        return self.raycaster.compute_distance(pts).numpy()

    # -------------------------------------------------------------------------------------- render
    @property
    def triangle_table(self) -> np.ndarray:
        """Per-triangle attributes [19,T] float32: uv0, uv1-uv0, uv2-uv0, n0, n1-n0, n2-n0, tint, material.

        Stored as rows so one gather per frame yields contiguous per-pixel attribute rows.
        """
        if self._table is None:
            soup = self.soup
            uv, n = soup.uv, soup.normals
            cols = [
                uv[:, 0],
                uv[:, 1] - uv[:, 0],
                uv[:, 2] - uv[:, 0],
                n[:, 0],
                n[:, 1] - n[:, 0],
                n[:, 2] - n[:, 0],
                soup.tint,
                soup.material[:, None].astype(np.float32),
            ]
            self._table = np.ascontiguousarray(np.concatenate(cols, axis=1).T, dtype=np.float32)
        return self._table

    def render(
        self,
        K: np.ndarray,
        T_world_from_cam: np.ndarray,
        height: int,
        width: int,
        nuisance: NuisanceConfig | None = None,
        rng: np.random.Generator | None = None,
        name: str = "",
        timestamp: float | None = None,
    ) -> Frame:
        """Render one frame: image [H,W,3] uint8, z-depth [H,W] float32 (0 = sky), K [3,3], pose [4,4]."""
        import open3d as o3d

        T = check_pose(T_world_from_cam)
        K = np.asarray(K, np.float64)
        key = (height, width, K.tobytes())
        if key not in self._ray_cache:
            self._ray_cache.clear()  # one camera model at a time is the common case; keep memory bounded
            dirs_cam = pixel_rays(K, height, width)
            self._ray_cache[key] = (dirs_cam, np.sqrt((dirs_cam**2).sum(0)))
        dirs_cam, dir_len = self._ray_cache[key]
        dirs = T[:3, :3].astype(np.float32) @ dirs_cam  # [3,P]
        origin = T[:3, 3].astype(np.float32)
        rays = np.empty((height * width, 6), np.float32)
        rays[:, :3] = origin
        rays[:, 3:] = dirs.T
        out = self.raycaster.cast_rays(o3d.core.Tensor(rays))
        t = out["t_hit"].numpy()
        hit = np.isfinite(t)
        all_hit = bool(hit.all())
        depth = t if all_hit else np.where(hit, t, np.float32(0.0))
        triangle = out["primitive_ids"].numpy()
        if not all_hit:
            # Misses are shaded like triangle 0 at depth 0 and overwritten with sky below: cheaper than
            # gathering the hit subset of every per-pixel array.
            triangle = np.where(hit, triangle, np.uint32(0))
        focal = np.float32(np.sqrt(K[0, 0] * K[1, 1]))
        colour = self._shade(
            depth,
            triangle,
            out["primitive_uvs"].numpy(),
            out["primitive_normals"].numpy(),
            origin,
            dirs,
            dir_len,
            focal,
            hit if not all_hit else None,
        )
        if not all_hit:
            miss = np.flatnonzero(~hit)
            sky = self.lighting.sky
            colour[:, miss] = sky.colour(dirs[:, miss].T).T if sky is not None else 0.0
        depth = depth.reshape(height, width)
        if nuisance is not None and nuisance.enabled:
            if rng is None:
                raise InputError("render() needs an rng when nuisances are enabled (for reproducibility)")
            image, depth = apply_nuisances(colour.T.reshape(height, width, 3), depth, nuisance, rng)
            image8 = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        else:
            np.clip(colour, 0.0, 1.0, out=colour)
            colour *= 255.0
            colour += 0.5
            image8 = np.ascontiguousarray(colour.astype(np.uint8).T).reshape(height, width, 3)
        return Frame(
            image=image8,
            K=K.copy(),
            depth=depth.astype(np.float32, copy=True),
            T_world_from_cam=T.copy(),
            timestamp=timestamp,
            name=name,
            extras={"scene_kind": self.kind, "scene_seed": self.seed},
        )

    def _shade(
        self,
        t: np.ndarray,
        triangle: np.ndarray,
        bary: np.ndarray,
        geo_normal: np.ndarray,
        origin: np.ndarray,
        d: np.ndarray,
        d_len: np.ndarray,
        focal: np.float32,
        hit: np.ndarray | None,
    ) -> np.ndarray:
        """Lit colour [3,P]: depth t [P], triangle ids [P], barycentrics [P,2], normals [P,3], rays [3,P].

        ``hit`` [P] bool marks real hits when some rays missed (misses only need to not fail).
        """
        light = self.lighting
        A = np.take(self.triangle_table, triangle, axis=1, mode="clip")  # [19,P]
        u, v = bary[:, 0], bary[:, 1]  # Embree: p = (1-u-v) p0 + u p1 + v p2
        uv = A[0:2] + u * A[2:4] + v * A[4:6]
        n = A[6:9] + u * A[9:12] + v * A[12:15]
        # Surfaces are two-sided: orient normals towards the viewer using the geometric normal.
        geo_dot = geo_normal[:, 0] * d[0] + geo_normal[:, 1] * d[1] + geo_normal[:, 2] * d[2]
        n *= np.where(geo_dot > 0, np.float32(-1.0), np.float32(1.0)) / np.sqrt(
            n[0] * n[0] + n[1] * n[1] + n[2] * n[2]
        )
        cos_view = np.abs(n[0] * d[0] + n[1] * d[1] + n[2] * d[2]) / d_len
        # Pixel footprint on the surface: range / (f |d|) across the ray, stretched by the incidence angle;
        # the square root is a compromise between blur (major axis) and aliasing (minor axis).
        footprint = t / (focal * d_len) / np.sqrt(np.maximum(cos_view, np.float32(0.05)))
        albedo = self.materials.sample(A[18], uv, footprint).T * A[15:18]
        to_sun = (-light.sun_direction).astype(np.float32)
        lambert = np.maximum(n[0] * to_sun[0] + n[1] * to_sun[1] + n[2] * to_sun[2], np.float32(0.0))
        if light.shadows:
            lit = np.flatnonzero((lambert > 0) if hit is None else (lambert > 0) & hit)
            if len(lit):
                offset = SHADOW_BIAS_M * (1.0 + 0.01 * t[lit])
                points = origin[:, None] + t[lit] * d[:, lit] + offset * n[:, lit]
                lambert[lit[self._occluded(points.T, to_sun)]] = 0.0
        irradiance = (
            light.ambient.astype(np.float32)[:, None] + lambert * light.sun_colour.astype(np.float32)[:, None]
        )
        if light.lamp_position is not None:
            to_lamp = light.lamp_position.astype(np.float32)[:, None] - (origin[:, None] + t * d)
            dist2 = (to_lamp * to_lamp).sum(0)
            cos_lamp = np.maximum((n * to_lamp).sum(0), 0.0) / np.sqrt(dist2)
            falloff = 1.0 / (1.0 + dist2 / np.float32(light.lamp_range_m**2))
            irradiance += (cos_lamp * falloff) * light.lamp_colour.astype(np.float32)[:, None]
        return albedo * irradiance

    def _occluded(self, points: np.ndarray, to_light: np.ndarray) -> np.ndarray:
        """Whether rays from points [P,3] towards the directional light hit anything, [P] bool."""
        import open3d as o3d

        rays = np.concatenate([points, np.broadcast_to(to_light, points.shape)], axis=1).astype(np.float32)
        return self.raycaster.test_occlusions(o3d.core.Tensor(rays)).numpy().astype(bool)
