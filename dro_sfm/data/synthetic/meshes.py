"""Triangle soup with per-corner surface coordinates, shading normals, material and tint.

Shapes are emitted in a local frame and placed by a rotation ``R`` [3,3] and translation ``t`` [3].
Every corner carries metric surface coordinates ``uv`` (metres along the surface), so textures stay fixed
to the surface: the renderer interpolates them with the ray-hit barycentrics. World axes: z up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IDENTITY = np.eye(3)

# Box faces: corner sign pattern (times half size), then the two local axes spanning the face, ordered
# so that cross(eu, ev) points out of the box.
_BOX_FACES: dict[str, tuple[tuple[int, int, int], int, int]] = {
    "x": ((-1, -1, -1), 2, 1),
    "X": ((1, -1, -1), 1, 2),
    "y": ((-1, -1, -1), 0, 2),
    "Y": ((-1, 1, -1), 2, 0),
    "z": ((-1, -1, -1), 1, 0),
    "Z": ((-1, -1, 1), 0, 1),
}


def rot_z(angle: float) -> np.ndarray:
    """Rotation [3,3] about the world z (up) axis by ``angle`` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_x(angle: float) -> np.ndarray:
    """Rotation [3,3] about the x axis by ``angle`` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle: float) -> np.ndarray:
    """Rotation [3,3] about the y axis by ``angle`` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass
class TriangleSoup:
    """Finished geometry: T triangles, each with its own three corners (no shared vertices)."""

    corners: np.ndarray  # [T,3,3] float32 world positions
    uv: np.ndarray  # [T,3,2] float32 metric surface coordinates
    normals: np.ndarray  # [T,3,3] float32 shading normals (unit, outward for solids)
    material: np.ndarray  # [T] int32 material id
    tint: np.ndarray  # [T,3] float32 per-object colour multiplier
    object_id: np.ndarray  # [T] int32

    def __len__(self) -> int:
        return len(self.material)


@dataclass
class MeshBuilder:
    """Accumulates shapes; ``build()`` concatenates them into a ``TriangleSoup``."""

    _corners: list[np.ndarray] = field(default_factory=list)
    _uv: list[np.ndarray] = field(default_factory=list)
    _normals: list[np.ndarray] = field(default_factory=list)
    _material: list[np.ndarray] = field(default_factory=list)
    _tint: list[np.ndarray] = field(default_factory=list)
    _object: list[np.ndarray] = field(default_factory=list)
    n_objects: int = 0

    def new_object(self) -> int:
        """A fresh object id (one piece of furniture, one car ...)."""
        self.n_objects += 1
        return self.n_objects - 1

    def _emit(self, corners, uv, normals, material: int, tint, object_id: int | None) -> None:
        n = len(corners)
        oid = self.new_object() if object_id is None else object_id
        self._corners.append(np.asarray(corners, np.float32))
        self._uv.append(np.asarray(uv, np.float32))
        self._normals.append(np.asarray(normals, np.float32))
        self._material.append(np.full(n, material, np.int32))
        self._tint.append(np.asarray(np.broadcast_to(np.asarray(tint, np.float32), (n, 3))))
        self._object.append(np.full(n, oid, np.int32))

    def add_grid(
        self,
        pos: np.ndarray,
        nrm: np.ndarray,
        uv: np.ndarray,
        R: np.ndarray,
        t: np.ndarray,
        material: int,
        tint=(1.0, 1.0, 1.0),
        object_id: int | None = None,
    ) -> None:
        """Add a parametric surface sampled on a grid: positions/normals [a,b,3], uv [a,b,2] (local frame)."""

        def quads(x: np.ndarray) -> np.ndarray:
            p00, p10, p01, p11 = x[:-1, :-1], x[1:, :-1], x[:-1, 1:], x[1:, 1:]
            tri_a = np.stack([p00, p10, p11], axis=2)
            tri_b = np.stack([p00, p11, p01], axis=2)
            return np.concatenate([tri_a.reshape(-1, 3, x.shape[-1]), tri_b.reshape(-1, 3, x.shape[-1])])

        world = pos @ R.T + t
        normals = nrm @ R.T
        normals = normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
        corners = quads(world)
        keep = (
            np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
            > 1e-12
        )
        self._emit(corners[keep], quads(uv)[keep], quads(normals)[keep], material, tint, object_id)

    def add_quad(
        self,
        origin,
        edge_u,
        edge_v,
        material: int,
        tint=(1.0, 1.0, 1.0),
        uv_offset=(0.0, 0.0),
        object_id: int | None = None,
    ) -> None:
        """Planar rectangle origin + s*edge_u + t*edge_v (world), uv in metres along the edges."""
        origin, eu, ev = (np.asarray(a, np.float64) for a in (origin, edge_u, edge_v))
        lu, lv = np.linalg.norm(eu), np.linalg.norm(ev)
        s = np.array([0.0, 1.0])[:, None, None]
        r = np.array([0.0, 1.0])[None, :, None]
        pos = origin + s * eu + r * ev
        n = np.cross(eu, ev)
        n = np.broadcast_to(n / np.linalg.norm(n), pos.shape)
        uv = np.concatenate(
            [np.broadcast_to(s * lu, pos.shape[:2] + (1,)), np.broadcast_to(r * lv, pos.shape[:2] + (1,))], -1
        )
        self.add_grid(pos, n, uv + np.asarray(uv_offset), IDENTITY, np.zeros(3), material, tint, object_id)

    def add_box(
        self,
        size,
        R: np.ndarray,
        t,
        material: int,
        tint=(1.0, 1.0, 1.0),
        uv_offset=(0.0, 0.0),
        object_id: int | None = None,
        faces: str = "xXyYzZ",
    ) -> int:
        """Box of ``size`` (sx,sy,sz) centred at ``t``; ``faces`` picks which of -x,+x,-y,+y,-z,+z to emit."""
        oid = self.new_object() if object_id is None else object_id
        self.add_boxes(
            np.asarray(size, np.float64)[None],
            R,
            np.asarray(t, np.float64)[None],
            material,
            np.asarray(tint, np.float64)[None],
            np.asarray(uv_offset, np.float64)[None],
            oid,
            faces,
        )
        return oid

    def add_boxes(
        self,
        sizes: np.ndarray,
        R: np.ndarray,
        centres: np.ndarray,
        material: int,
        tints: np.ndarray,
        uv_offsets: np.ndarray,
        object_id: int | None = None,
        faces: str = "xXyYzZ",
    ) -> None:
        """N boxes sharing one orientation: sizes [N,3], centres [N,3], tints [N,3], uv offsets [N,2]."""
        oid = self.new_object() if object_id is None else object_id
        R = np.asarray(R, np.float64)
        half = np.asarray(sizes, np.float64)[:, None, None, :] / 2  # [N,1,1,3]
        s = np.array([0.0, 1.0])[None, :, None, None]
        r = np.array([0.0, 1.0])[None, None, :, None]
        eye = np.eye(3)
        for k, face in enumerate(faces):
            sign, eu_axis, ev_axis = _BOX_FACES[face]
            origin = np.asarray(sign, np.float64) * half
            eu = 2 * half[..., eu_axis : eu_axis + 1] * eye[eu_axis]
            ev = 2 * half[..., ev_axis : ev_axis + 1] * eye[ev_axis]
            local = origin + s * eu + r * ev  # [N,2,2,3]
            world = local @ R.T + np.asarray(centres, np.float64)[:, None, None, :]
            uv = (
                np.concatenate(
                    [
                        np.broadcast_to(s * 2 * half[..., eu_axis : eu_axis + 1], local.shape[:-1] + (1,)),
                        np.broadcast_to(r * 2 * half[..., ev_axis : ev_axis + 1], local.shape[:-1] + (1,)),
                    ],
                    -1,
                )
                + (np.asarray(uv_offsets, np.float64) + [0.37 * k, 0.61 * k])[:, None, None, :]
            )
            normal = R @ np.cross(eye[eu_axis], eye[ev_axis])
            tri_idx = ((0, 0), (1, 0), (1, 1)), ((0, 0), (1, 1), (0, 1))
            corners = np.concatenate([np.stack([world[:, a, b] for a, b in tri], 1) for tri in tri_idx])
            uvs = np.concatenate([np.stack([uv[:, a, b] for a, b in tri], 1) for tri in tri_idx])
            n = len(corners)
            normals = np.broadcast_to(normal, (n, 3, 3))
            tint = np.broadcast_to(np.asarray(tints, np.float32), (len(world), 3))
            self._emit(corners, uvs, normals, material, np.concatenate([tint, tint]), oid)

    def add_frustum(
        self,
        r_bottom: float,
        r_top: float,
        height: float,
        R: np.ndarray,
        t,
        material: int,
        tint=(1.0, 1.0, 1.0),
        uv_offset=(0.0, 0.0),
        segments: int = 24,
        caps: bool = True,
        object_id: int | None = None,
    ) -> int:
        """Cylinder/cone/frustum along local +z from the base centre ``t``; smooth side normals."""
        oid = self.new_object() if object_id is None else object_id
        R = np.asarray(R, np.float64)
        t = np.asarray(t, np.float64)
        phi = np.linspace(0.0, 2 * np.pi, segments + 1)[:, None]
        s = np.array([0.0, 1.0])[None, :]
        r = r_bottom + (r_top - r_bottom) * s
        pos = np.stack([r * np.cos(phi), r * np.sin(phi), height * s * np.ones_like(phi)], -1)
        slope = (r_bottom - r_top) / max(height, 1e-9)
        nrm = np.stack(
            [np.cos(phi) * np.ones_like(s), np.sin(phi) * np.ones_like(s), slope * np.ones_like(pos[..., 0])],
            -1,
        )
        r_mean = 0.5 * (r_bottom + r_top)
        slant = np.hypot(height, r_bottom - r_top)
        uv = np.stack([phi * r_mean * np.ones_like(s), slant * s * np.ones_like(phi)], -1) + np.asarray(
            uv_offset
        )
        self.add_grid(pos, nrm, uv, R, t, material, tint, oid)
        if caps:
            for z, radius, up in ((0.0, r_bottom, -1.0), (height, r_top, 1.0)):
                if radius > 1e-6:
                    self._add_disk(radius, z, up, R, t, material, tint, uv_offset, segments, oid)
        return oid

    def _add_disk(self, radius, z, up, R, t, material, tint, uv_offset, segments, oid) -> None:
        phi = np.linspace(0.0, 2 * np.pi, segments + 1)[:, None]
        rr = np.array([0.0, radius])[None, :] if up > 0 else np.array([radius, 0.0])[None, :]
        pos = np.stack([rr * np.cos(phi), rr * np.sin(phi), np.full((segments + 1, 2), z)], -1)
        nrm = np.broadcast_to(np.array([0.0, 0.0, up]), pos.shape)
        uv = pos[..., :2] + np.asarray(uv_offset) + 0.5
        self.add_grid(pos, nrm, uv, R, t, material, tint, oid)

    def add_ellipsoid(
        self,
        radii,
        R: np.ndarray,
        t,
        material: int,
        tint=(1.0, 1.0, 1.0),
        uv_offset=(0.0, 0.0),
        segments: int = 24,
        object_id: int | None = None,
    ) -> int:
        """Ellipsoid (sphere when radii are equal) centred at ``t``; uv is latitude/longitude arc length."""
        oid = self.new_object() if object_id is None else object_id
        radii = np.asarray(radii, np.float64)
        theta = np.linspace(0.0, np.pi, segments // 2 + 1)[None, :]
        phi = np.linspace(0.0, 2 * np.pi, segments + 1)[:, None]
        unit = np.stack(
            [np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta) * np.ones_like(phi)], -1
        )
        pos = unit * radii
        nrm = unit / radii
        r_mean = float(radii.mean())
        uv = np.stack([phi * r_mean * np.ones_like(theta), theta * r_mean * np.ones_like(phi)], -1)
        self.add_grid(
            pos,
            nrm,
            uv + np.asarray(uv_offset),
            np.asarray(R, np.float64),
            np.asarray(t, np.float64),
            material,
            tint,
            oid,
        )
        return oid

    def add_torus(
        self,
        r_major: float,
        r_minor: float,
        R: np.ndarray,
        t,
        material: int,
        tint=(1.0, 1.0, 1.0),
        segments: int = 24,
        object_id: int | None = None,
    ) -> int:
        """Torus in the local xy plane centred at ``t``."""
        oid = self.new_object() if object_id is None else object_id
        a = np.linspace(0.0, 2 * np.pi, segments + 1)[:, None]
        b = np.linspace(0.0, 2 * np.pi, segments // 2 + 1)[None, :]
        nrm = np.stack([np.cos(b) * np.cos(a), np.cos(b) * np.sin(a), np.sin(b) * np.ones_like(a)], -1)
        centre = np.stack([r_major * np.cos(a), r_major * np.sin(a), np.zeros_like(a)], -1)
        pos = centre + r_minor * nrm
        uv = np.stack([a * r_major * np.ones_like(b), b * r_minor * np.ones_like(a)], -1)
        self.add_grid(pos, nrm, uv, np.asarray(R, np.float64), np.asarray(t, np.float64), material, tint, oid)
        return oid

    def build(self) -> TriangleSoup:
        """Concatenate everything added so far."""
        return TriangleSoup(
            corners=np.concatenate(self._corners),
            uv=np.concatenate(self._uv),
            normals=np.concatenate(self._normals),
            material=np.concatenate(self._material),
            tint=np.concatenate(self._tint).astype(np.float32),
            object_id=np.concatenate(self._object),
        )
