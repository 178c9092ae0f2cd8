"""Procedural rooms: a closed box (floor, walls, ceiling) furnished with simple solids.

Layout rule that makes hand-held trajectories safe: away from the walls nothing is taller than
``SceneConfig.furniture_clearance_m``; tall pieces (shelves, wardrobes, floor lamps, doors) live in the
``wall_band_m`` strip along the walls, and pendant lamps hang no lower than 0.5 m below the ceiling.
The resulting camera-free box is reported in ``SceneLayout``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dro_sfm.data.synthetic.config import SceneConfig
from dro_sfm.data.synthetic.layout import Lighting, MaterialSet, SceneLayout, earthy_tint, random_tint
from dro_sfm.data.synthetic.meshes import IDENTITY, MeshBuilder, TriangleSoup, rot_x, rot_y, rot_z
from dro_sfm.data.synthetic.textures import MaterialBank, hsv_to_rgb, random_colour

UP = np.array([0.0, 0.0, 1.0])
FOOTPRINT_GAP_M = 0.08


@dataclass
class Wall:
    """A wall as a floor line ``origin + s * along`` (s in [0, length]); ``inward`` points into the room."""

    origin: np.ndarray
    along: np.ndarray
    inward: np.ndarray
    length: float
    used: list[tuple[float, float]] = field(default_factory=list)

    @property
    def R(self) -> np.ndarray:
        """Rotation [3,3] whose local x runs along the wall, y into the room, z up."""
        return np.stack([self.along, self.inward, UP], axis=1)

    def point(self, s: float, off: float, z: float) -> np.ndarray:
        return self.origin + s * self.along + off * self.inward + z * UP


@dataclass
class Footprint:
    """Axis-aligned floor rectangle [x0,x1] x [y0,y1] occupied by an object."""

    x0: float
    x1: float
    y0: float
    y1: float

    def overlaps(self, other: Footprint, gap: float) -> bool:
        return not (
            self.x1 + gap <= other.x0
            or other.x1 + gap <= self.x0
            or self.y1 + gap <= other.y0
            or other.y1 + gap <= self.y0
        )


def _footprint(cx: float, cy: float, w: float, d: float, yaw: float) -> Footprint:
    c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
    hx, hy = 0.5 * (w * c + d * s), 0.5 * (w * s + d * c)
    return Footprint(cx - hx, cx + hx, cy - hy, cy + hy)


class IndoorBuilder:
    """Lays out one room; ``build()`` returns geometry, materials, lighting and the camera-free box."""

    def __init__(self, rng: np.random.Generator, cfg: SceneConfig) -> None:
        self.rng = rng
        self.cfg = cfg
        self.mesh = MeshBuilder()
        self.mats = MaterialSet(rng, cfg.texture_size)
        self.size = np.array([rng.uniform(*r) for r in cfg.room_size_m])
        self.footprints: list[Footprint] = []
        self._make_materials()
        lx, ly = self.size[0], self.size[1]
        self.walls = [
            Wall(np.array([0.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), lx),
            Wall(np.array([lx, ly, 0.0]), np.array([-1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0]), lx),
            Wall(np.array([0.0, ly, 0.0]), np.array([0.0, -1.0, 0.0]), np.array([1.0, 0.0, 0.0]), ly),
            Wall(np.array([lx, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), np.array([-1.0, 0.0, 0.0]), ly),
        ]

    # ------------------------------------------------------------------------------------ materials
    def _make_materials(self) -> None:
        m, r = self.mats, self.rng
        self.m_floor = m.add_choice(
            ["wood", "tiles", "fabric", "marble", "wood"], (0.006, 0.012), saturation=0.7
        )
        self.m_walls = [
            m.add_choice(
                ["plaster", "plaster", "stucco", "stripes", "bricks", "tiles", "marble"],
                (0.005, 0.01),
                saturation=0.3,
            )
            for _ in range(2)
        ]
        self.m_ceiling = m.add_choice(["plaster", "stucco", "tiles"], (0.006, 0.012), saturation=0.3)
        self.m_wood = [m.add("wood", r.uniform(0.003, 0.006)) for _ in range(2)]
        self.m_fabric = [m.add("fabric", r.uniform(0.002, 0.005), saturation=0.7) for _ in range(2)]
        self.m_metal = m.add("metal", 0.004)
        self.m_poster = [m.add("poster", r.uniform(0.003, 0.005)) for _ in range(2)]
        self.m_photo = [m.add("photo", r.uniform(0.003, 0.007)) for _ in range(2)]
        self.m_glass = m.add("glass", 0.006)
        self.m_misc = m.fill_with_choices(
            self.cfg.n_materials,
            ["photo", "marble", "stripes", "tiles", "fabric", "metal", "poster", "wood"],
            (0.002, 0.006),
            saturation=0.8,
        )

    def pick(self, *groups: list[int] | int) -> int:
        """A material id drawn from the given roles, sometimes from the miscellaneous pool instead."""
        pool: list[int] = []
        for g in groups:
            pool.extend(g if isinstance(g, list) else [g])
        if self.m_misc and self.rng.uniform() < 0.3:
            pool = self.m_misc
        return pool[int(self.rng.integers(len(pool)))]

    def uvoff(self) -> tuple[float, float]:
        return tuple(self.rng.uniform(0.0, 10.0, 2))

    def tint(self, saturation: float = 0.3) -> np.ndarray:
        return random_tint(self.rng, saturation)

    # --------------------------------------------------------------------------------------- shell
    def add_shell(self) -> None:
        lx, ly, hz = self.size
        mb, r = self.mesh, self.rng
        mb.add_quad((0, 0, 0), (lx, 0, 0), (0, ly, 0), self.m_floor, self.tint(0.2), self.uvoff())
        mb.add_quad((0, 0, hz), (lx, 0, 0), (0, ly, 0), self.m_ceiling, self.tint(0.1), self.uvoff())
        accent = int(r.integers(4))
        wall_tint = earthy_tint(r, 0.25, (0.85, 1.2)) if r.uniform() < 0.7 else self.tint(0.25)
        for k, w in enumerate(self.walls):
            mat = self.m_walls[1] if k == accent else self.m_walls[0]
            tint = self.tint(0.35) if k == accent else wall_tint
            mb.add_quad(w.origin, w.along * w.length, UP * hz, mat, tint, self.uvoff())
        skirting_mat, skirting_tint = self.pick(self.m_wood, self.m_metal), self.tint(0.2)
        skirting_h = r.uniform(0.06, 0.12)
        for w in self.walls:
            mb.add_box(
                (w.length, 0.015, skirting_h),
                w.R,
                w.point(w.length / 2, 0.0075, skirting_h / 2),
                skirting_mat,
                skirting_tint,
                self.uvoff(),
            )

    # ---------------------------------------------------------------------------------- wall items
    def _claim_wall(self, wall: Wall, width: float, tries: int = 20) -> float | None:
        """A free centre position s along ``wall`` for an item of ``width``, or None."""
        if wall.length <= width + 0.3:
            return None
        for _ in range(tries):
            s = self.rng.uniform(0.15 + width / 2, wall.length - 0.15 - width / 2)
            if all(s + width / 2 + 0.1 < a or s - width / 2 - 0.1 > b for a, b in wall.used):
                wall.used.append((s - width / 2, s + width / 2))
                return s
        return None

    def _claim_floor_at_wall(self, wall: Wall, width: float, depth: float) -> float | None:
        """Like ``_claim_wall`` for floor-standing pieces: also reserves their floor footprint."""
        for _ in range(20):
            s = self._claim_wall(wall, width, tries=1)
            if s is None:
                continue
            c = wall.point(s, depth / 2 + 0.02, 0.0)
            fp = _footprint(c[0], c[1], width, depth, np.arctan2(wall.along[1], wall.along[0]))
            if not any(fp.overlaps(o, FOOTPRINT_GAP_M) for o in self.footprints):
                self.footprints.append(fp)
                return s
            wall.used.pop()
        return None

    def add_wall_items(self) -> None:
        kinds = [
            self._door,
            self._window,
            self._picture,
            self._picture,
            self._board,
            self._shelf,
            self._wardrobe,
            self._radiator,
            self._tv,
            self._clock,
            self._picture,
            self._shelf,
        ]
        n = int(self.rng.integers(self.cfg.n_wall_objects[0], self.cfg.n_wall_objects[1] + 1))
        self._door(self.walls[int(self.rng.integers(4))])  # every room has a door
        for _ in range(n):
            kind = kinds[int(self.rng.integers(len(kinds)))]
            kind(self.walls[int(self.rng.integers(4))])

    def _wall_box(
        self,
        wall: Wall,
        size: tuple[float, float, float],
        at: tuple[float, float, float],
        material: int,
        tint: np.ndarray,
        oid: int | None = None,
    ) -> None:
        """A box ``size`` (along the wall, into the room, up) centred at ``wall.point(*at)``."""
        self.mesh.add_box(size, wall.R, wall.point(*at), material, tint, self.uvoff(), oid)

    def _wall_quad(
        self,
        wall: Wall,
        corner: tuple[float, float, float],
        width: float,
        height: float,
        material: int,
        tint: np.ndarray,
        oid: int,
    ) -> None:
        """A flat ``width`` x ``height`` rectangle facing into the room, lower-left at ``wall.point(*corner)``."""
        self.mesh.add_quad(wall.point(*corner), wall.along * width, UP * height, material, tint, self.uvoff(), oid)

    def _door(self, wall: Wall) -> None:
        r, mb = self.rng, self.mesh
        w, h = r.uniform(0.8, 1.0), r.uniform(1.95, 2.15)
        s = self._claim_wall(wall, w + 0.12)
        if s is None:
            return
        oid = mb.new_object()
        frame_mat, frame_tint = self.pick(self.m_wood, self.m_metal), self.tint(0.15)
        for ds in (-(w + 0.06) / 2, (w + 0.06) / 2):
            self._wall_box(wall, (0.06, 0.05, h + 0.06), (s + ds, 0.025, (h + 0.06) / 2), frame_mat, frame_tint, oid)
        self._wall_box(wall, (w + 0.12, 0.05, 0.06), (s, 0.025, h + 0.03), frame_mat, frame_tint, oid)
        self._wall_box(wall, (w, 0.04, h), (s, 0.02, h / 2), self.pick(self.m_wood, self.m_photo), self.tint(0.4), oid)
        side = 1.0 if r.uniform() < 0.5 else -1.0
        handle = wall.point(s + side * (w / 2 - 0.08), 0.07, r.uniform(0.95, 1.1))
        mb.add_ellipsoid(
            (0.03, 0.03, 0.03), IDENTITY, handle, self.m_metal, self.tint(0.1), segments=12, object_id=oid
        )

    def _window(self, wall: Wall) -> None:
        r, mb = self.rng, self.mesh
        w, h = r.uniform(0.8, 1.8), r.uniform(0.9, 1.4)
        s = self._claim_wall(wall, w)
        if s is None:
            return
        z0 = r.uniform(0.8, 1.0)
        oid = mb.new_object()
        self._wall_box(wall, (w, 0.03, h), (s, 0.015, z0 + h / 2), self.m_glass, self.tint(0.1), oid)
        frame_mat, frame_tint = self.pick(self.m_wood, self.m_metal), self.tint(0.1)
        t = 0.06
        for dz in (0.0, h):
            self._wall_box(wall, (w + 2 * t, 0.08, t), (s, 0.04, z0 + dz), frame_mat, frame_tint, oid)
        for ds in (-w / 2, 0.0, w / 2):
            self._wall_box(wall, (t, 0.07, h), (s + ds, 0.035, z0 + h / 2), frame_mat, frame_tint, oid)
        self._wall_box(wall, (w + 0.2, 0.18, 0.03), (s, 0.09, z0 - 0.03), frame_mat, frame_tint, oid)

    def _picture(self, wall: Wall) -> None:
        r, mb = self.rng, self.mesh
        w, h = r.uniform(0.3, 1.2), r.uniform(0.3, 0.9)
        s = self._claim_wall(wall, w)
        if s is None:
            return
        zc = r.uniform(1.2, min(1.9, self.size[2] - 0.3 - h / 2))
        oid = mb.new_object()
        d = r.uniform(0.015, 0.04)
        self._wall_box(wall, (w, d, h), (s, d / 2, zc), self.pick(self.m_wood, self.m_metal), self.tint(0.3), oid)
        border = r.uniform(0.02, 0.06)
        self._wall_quad(
            wall,
            (s - w / 2 + border, d + 0.002, zc - h / 2 + border),
            w - 2 * border,
            h - 2 * border,
            self.pick(self.m_poster, self.m_photo),
            self.tint(0.1),
            oid,
        )

    def _board(self, wall: Wall) -> None:
        r, mb = self.rng, self.mesh
        w, h = r.uniform(1.0, 2.0), r.uniform(0.7, 1.1)
        s = self._claim_wall(wall, w)
        if s is None:
            return
        zc = r.uniform(1.3, 1.6)
        oid = mb.new_object()
        self._wall_box(wall, (w + 0.04, 0.02, h + 0.04), (s, 0.01, zc), self.m_metal, self.tint(0.1), oid)
        surface = self.pick(self.m_poster, self.m_misc or self.m_photo)
        self._wall_quad(wall, (s - w / 2, 0.0205, zc - h / 2), w, h, surface, self.tint(0.05), oid)
        self._wall_box(wall, (w * 0.8, 0.05, 0.02), (s, 0.045, zc - h / 2 - 0.01), self.m_metal, self.tint(0.1), oid)

    def _shelf(self, wall: Wall) -> None:
        r, mb = self.rng, self.mesh
        w, d = r.uniform(0.6, 1.4), r.uniform(0.28, min(0.45, self.cfg.wall_band_m - 0.1))
        h = r.uniform(1.4, min(2.2, self.size[2] - 0.2))
        s = self._claim_floor_at_wall(wall, w, d)
        if s is None:
            return
        oid = mb.new_object()
        mat, tint = self.pick(self.m_wood), self.tint(0.2)
        t = 0.02
        for ds in (-(w - t) / 2, (w - t) / 2):
            self._wall_box(wall, (t, d, h), (s + ds, d / 2, h / 2), mat, tint, oid)
        self._wall_box(wall, (w, 0.01, h), (s, 0.005, h / 2), mat, tint, oid)
        n_boards = int(r.integers(3, 6))
        levels = np.linspace(0.05, h - t / 2, n_boards + 1)
        for k, z in enumerate(levels):
            self._wall_box(wall, (w - 2 * t, d - 0.01, t), (s, d / 2 + 0.005, z), mat, tint, oid)
            if k < n_boards:
                self._books(wall, s, w - 2 * t, d - 0.04, z + t / 2, levels[k + 1] - z - t - 0.02)

    def _books(self, wall: Wall, s: float, width: float, depth: float, z0: float, max_h: float) -> None:
        r, mb = self.rng, self.mesh
        x = s - width / 2 + r.uniform(0.0, 0.1)
        while True:
            if r.uniform() < 0.15:  # a gap, or an ornament instead of books
                x += r.uniform(0.05, 0.2)
                if r.uniform() < 0.5 and x + 0.1 < s + width / 2 and max_h > 0.1:
                    rad = min(0.05, max_h / 2)
                    mb.add_ellipsoid(
                        (rad, rad, rad),
                        IDENTITY,
                        wall.point(x, depth / 2 + 0.02, z0 + rad),
                        self.pick(self.m_misc or self.m_photo),
                        self.tint(0.5),
                        segments=16,
                    )
                    x += 0.12
            bw = r.uniform(0.015, 0.06)
            if x + bw > s + width / 2:
                return
            bh = min(r.uniform(0.15, 0.32), max_h)
            bd = r.uniform(0.6, 1.0) * depth
            lean = 0.0 if r.uniform() < 0.9 else r.uniform(-0.15, 0.15)
            R = wall.R @ rot_y(lean)
            colour = hsv_to_rgb(np.array([r.uniform(), r.uniform(0.2, 0.8), r.uniform(0.3, 1.0)])) * 1.3
            mb.add_box(
                (bw, bd, bh),
                R,
                wall.point(x + bw / 2, bd / 2 + 0.02, z0 + bh / 2),
                self.pick(self.m_fabric, self.m_photo, self.m_poster),
                colour,
                self.uvoff(),
            )
            x += bw + r.uniform(0.0, 0.004)

    def _wardrobe(self, wall: Wall) -> None:
        r, mb = self.rng, self.mesh
        w, d = r.uniform(0.8, 1.6), r.uniform(0.4, min(0.6, self.cfg.wall_band_m - 0.1))
        h = r.uniform(1.7, min(2.2, self.size[2] - 0.2))
        s = self._claim_floor_at_wall(wall, w, d)
        if s is None:
            return
        oid = mb.new_object()
        mat, tint = self.pick(self.m_wood, self.m_misc or self.m_metal), self.tint(0.3)
        self._wall_box(wall, (w, d, h - 0.08), (s, d / 2, 0.08 + (h - 0.08) / 2), mat, tint, oid)
        self._wall_box(wall, (w - 0.04, d - 0.04, 0.08), (s, d / 2, 0.04), self.m_metal, self.tint(0.1), oid)
        n_doors = 2 if w > 1.0 else 1
        for k in range(n_doors):
            ds = (k - (n_doors - 1) / 2) * w / n_doors
            door_size = (w / n_doors - 0.01, 0.01, h - 0.14)
            self._wall_box(wall, door_size, (s + ds, d + 0.005, 0.08 + (h - 0.08) / 2), mat, tint * 0.9, oid)
            hx = ds + (0.5 - k) * 0.05 if n_doors == 2 else ds + w / 2 - 0.08
            self._wall_box(wall, (0.02, 0.03, 0.25), (s + hx, d + 0.025, 1.0), self.m_metal, self.tint(0.05), oid)

    def _radiator(self, wall: Wall) -> None:
        r, mb = self.rng, self.mesh
        w = r.uniform(0.6, 1.4)
        s = self._claim_wall(wall, w)
        if s is None:
            return
        oid = mb.new_object()
        fins = int(w / 0.06)
        tint = self.tint(0.05)
        for k in range(fins):
            ds = -w / 2 + (k + 0.5) * w / fins
            self._wall_box(wall, (0.035, 0.08, 0.55), (s + ds, 0.07, 0.42), self.m_metal, tint, oid)
        self._wall_box(wall, (w, 0.04, 0.05), (s, 0.07, 0.72), self.m_metal, tint, oid)

    def _tv(self, wall: Wall) -> None:
        r, mb = self.rng, self.mesh
        w = r.uniform(0.8, 1.5)
        h = w * 9 / 16
        s = self._claim_wall(wall, w)
        if s is None:
            return
        zc = r.uniform(1.2, 1.6)
        oid = mb.new_object()
        self._wall_box(wall, (w, 0.05, h), (s, 0.025, zc), self.m_metal, np.full(3, 0.25), oid)
        screen = self.pick(self.m_photo, self.m_poster)
        corner = (s - w / 2 + 0.02, 0.0505, zc - h / 2 + 0.02)
        self._wall_quad(wall, corner, w - 0.04, h - 0.04, screen, np.full(3, 0.8), oid)

    def _clock(self, wall: Wall) -> None:
        r, mb = self.rng, self.mesh
        rad = r.uniform(0.12, 0.25)
        s = self._claim_wall(wall, 2 * rad)
        if s is None:
            return
        centre = wall.point(s, 0.0, r.uniform(1.6, min(2.1, self.size[2] - 0.35)))
        R = np.stack([wall.along, -UP, wall.inward], axis=1)  # local z sticks out of the wall
        oid = mb.new_object()
        mb.add_frustum(
            rad,
            rad,
            0.03,
            R,
            centre,
            self.pick(self.m_poster),
            self.tint(0.1),
            self.uvoff(),
            32,
            object_id=oid,
        )
        mb.add_torus(rad, 0.015, R, centre + 0.03 * wall.inward, self.m_metal, self.tint(0.4), 24, oid)

    # ---------------------------------------------------------------------------------- floor items
    def _place(
        self, w: float, d: float, h: float, yaw_aligned: bool = True
    ) -> tuple[float, float, float] | None:
        """A free floor position and yaw for a w x d object of height h (tall ones against a wall)."""
        r = self.rng
        lx, ly = self.size[0], self.size[1]
        tall = h > self.cfg.furniture_clearance_m
        for _ in range(40):
            yaw = (
                (int(r.integers(4)) * np.pi / 2 + r.normal(0, 0.05))
                if yaw_aligned
                else r.uniform(0, 2 * np.pi)
            )
            if tall:
                wall = self.walls[int(r.integers(4))]
                band = self.cfg.wall_band_m
                if max(w, d) > band - 0.05:
                    return None
                p = wall.point(
                    r.uniform(0.3, wall.length - 0.3),
                    r.uniform(max(w, d) / 2 + 0.02, band - max(w, d) / 2),
                    0,
                )
                x, y = p[0], p[1]
            else:
                x, y = r.uniform(0.1, lx - 0.1), r.uniform(0.1, ly - 0.1)
            fp = _footprint(x, y, w, d, yaw)
            if fp.x0 < 0.05 or fp.y0 < 0.05 or fp.x1 > lx - 0.05 or fp.y1 > ly - 0.05:
                continue
            if tall and fp.overlaps(self._camera_zone(), 0.0):
                continue
            if any(fp.overlaps(o, FOOTPRINT_GAP_M) for o in self.footprints):
                continue
            self.footprints.append(fp)
            return x, y, yaw
        return None

    def _camera_zone(self) -> Footprint:
        """Floor area above which hand-held cameras move: only low furniture may stand here."""
        band = self.cfg.wall_band_m
        return Footprint(band, self.size[0] - band, band, self.size[1] - band)

    def add_floor_items(self) -> None:
        r = self.rng
        if r.uniform() < 0.7:
            self._rug()
        kinds = [
            self._table,
            self._table,
            self._chair,
            self._chair,
            self._sofa,
            self._cabinet,
            self._crates,
            self._ball,
            self._bin,
            self._plant,
            self._floor_lamp,
            self._pouf,
            self._coffee_table,
            self._bed,
            self._tall_plant,
        ]
        n = int(r.integers(self.cfg.n_floor_objects[0], self.cfg.n_floor_objects[1] + 1))
        for _ in range(n):
            kinds[int(r.integers(len(kinds)))]()

    def _rug(self) -> None:
        r = self.rng
        w, d = r.uniform(1.2, min(3.0, self.size[0] - 0.6)), r.uniform(0.8, min(2.2, self.size[1] - 0.6))
        x = r.uniform(0.3 + w / 2, self.size[0] - 0.3 - w / 2)
        y = r.uniform(0.3 + d / 2, self.size[1] - 0.3 - d / 2)
        self.mesh.add_box(
            (w, d, 0.01),
            rot_z(r.normal(0, 0.03)),
            (x, y, 0.005),
            self.pick(self.m_fabric, self.m_photo, self.m_poster),
            self.tint(0.4),
            self.uvoff(),
        )

    def _table_top_items(self, R: np.ndarray, centre: np.ndarray, w: float, d: float, max_h: float) -> None:
        r, mb = self.rng, self.mesh
        n = int(r.integers(self.cfg.n_table_objects[0], self.cfg.n_table_objects[1] + 1))
        taken: list[tuple[float, float, float]] = []
        for _ in range(n):
            rad = r.uniform(0.04, 0.14)
            for _ in range(10):
                lx, ly = r.uniform(-w / 2 + rad, w / 2 - rad), r.uniform(-d / 2 + rad, d / 2 - rad)
                if all(np.hypot(lx - a, ly - b) > rad + c + 0.01 for a, b, c in taken):
                    break
            else:
                continue
            taken.append((lx, ly, rad))
            base = centre + R @ np.array([lx, ly, 0.0])
            mat, tint = self.pick(self.m_misc or self.m_photo, self.m_photo, self.m_metal), self.tint(0.6)
            kind = int(r.integers(6))
            h = min(r.uniform(0.05, 0.3), max_h)
            if kind == 0:  # mug / vase / can
                mb.add_frustum(rad * r.uniform(0.7, 1.0), rad, h, R, base, mat, tint, self.uvoff(), 20)
            elif kind == 1:  # bowl
                mb.add_frustum(rad * 0.5, rad, min(h, rad), R, base, mat, tint, self.uvoff(), 20)
            elif kind == 2:  # ball / fruit
                rr = min(rad, max_h / 2)
                mb.add_ellipsoid((rr, rr, rr), R, base + np.array([0, 0, rr]), mat, tint, self.uvoff(), 18)
            elif kind == 3:  # stack of books / box
                z = 0.0
                for _ in range(int(r.integers(1, 4))):
                    bh = r.uniform(0.02, 0.06)
                    if z + bh > max_h:
                        break
                    yaw = r.normal(0, 0.2)
                    mb.add_box(
                        (2 * rad * 1.4, 2 * rad, bh),
                        R @ rot_z(yaw),
                        base + np.array([0, 0, z + bh / 2]),
                        self.pick(self.m_fabric, self.m_photo, self.m_poster),
                        self.tint(0.6),
                        self.uvoff(),
                    )
                    z += bh
            elif kind == 4:  # ring / donut
                minor = min(rad * 0.3, max_h / 2)
                mb.add_torus(rad * 0.7, minor, R, base + np.array([0, 0, minor]), mat, tint, 20)
            else:  # cone / bottle
                mb.add_frustum(rad * 0.6, rad * 0.6, h * 0.6, R, base, mat, tint, self.uvoff(), 16)
                mb.add_frustum(
                    rad * 0.6,
                    rad * 0.15,
                    h * 0.4,
                    R,
                    base + np.array([0, 0, h * 0.6]),
                    mat,
                    tint,
                    self.uvoff(),
                    16,
                )

    def _table(self, low: bool = False) -> None:
        r, mb = self.rng, self.mesh
        w, d = (
            (r.uniform(0.7, 1.3), r.uniform(0.45, 0.8)) if low else (r.uniform(0.8, 1.8), r.uniform(0.6, 1.0))
        )
        h = r.uniform(0.35, 0.5) if low else r.uniform(0.7, 0.78)
        spot = self._place(w, d, h)
        if spot is None:
            return
        x, y, yaw = spot
        R = rot_z(yaw)
        oid = mb.new_object()
        mat, tint = self.pick(self.m_wood, self.m_misc or self.m_wood), self.tint(0.3)
        top_t = r.uniform(0.025, 0.05)
        mb.add_box((w, d, top_t), R, (x, y, h - top_t / 2), mat, tint, self.uvoff(), oid)
        leg_mat = self.pick(self.m_wood, self.m_metal)
        round_legs = r.uniform() < 0.5
        for sx in (-1, 1):
            for sy in (-1, 1):
                p = np.array([x, y, 0.0]) + R @ np.array([sx * (w / 2 - 0.06), sy * (d / 2 - 0.06), 0.0])
                if round_legs:
                    mb.add_frustum(
                        0.025, 0.02, h - top_t, R, p, leg_mat, tint, self.uvoff(), 12, object_id=oid
                    )
                else:
                    mb.add_box(
                        (0.05, 0.05, h - top_t),
                        R,
                        p + np.array([0, 0, (h - top_t) / 2]),
                        leg_mat,
                        tint,
                        self.uvoff(),
                        oid,
                    )
        self._table_top_items(R, np.array([x, y, h]), w - 0.1, d - 0.1, self.cfg.furniture_clearance_m - h)

    def _coffee_table(self) -> None:
        self._table(low=True)

    def _chair(self) -> None:
        r, mb = self.rng, self.mesh
        w = r.uniform(0.4, 0.5)
        spot = self._place(w, w, 0.9, yaw_aligned=r.uniform() < 0.5)
        if spot is None:
            return
        x, y, yaw = spot
        R = rot_z(yaw)
        oid = mb.new_object()
        seat_h = r.uniform(0.42, 0.48)
        mat, tint = self.pick(self.m_wood, self.m_fabric), self.tint(0.4)
        mb.add_box((w, w, 0.04), R, (x, y, seat_h), mat, tint, self.uvoff(), oid)
        for sx in (-1, 1):
            for sy in (-1, 1):
                p = np.array([x, y, 0.0]) + R @ np.array([sx * (w / 2 - 0.03), sy * (w / 2 - 0.03), 0.0])
                mb.add_frustum(
                    0.018,
                    0.018,
                    seat_h - 0.02,
                    R,
                    p,
                    self.m_metal,
                    self.tint(0.1),
                    segments=10,
                    object_id=oid,
                )
        back = np.array([x, y, 0.0]) + R @ np.array([0.0, -w / 2 + 0.02, seat_h + 0.22])
        mb.add_box((w, 0.03, 0.4), R, back, mat, tint, self.uvoff(), oid)

    def _place_furniture(self, w: float, d: float, h: float) -> tuple[np.ndarray, np.ndarray, int] | None:
        """Yaw rotation [3,3], floor centre [3] and a new object id of a free w x d spot, or None if none is free."""
        spot = self._place(w, d, h)
        if spot is None:
            return None
        x, y, yaw = spot
        return rot_z(yaw), np.array([x, y, 0.0]), self.mesh.new_object()

    def _turned_box(
        self,
        R: np.ndarray,
        base: np.ndarray,
        size: tuple[float, float, float],
        at: tuple[float, float, float],
        material: int,
        tint: np.ndarray,
        oid: int,
    ) -> None:
        """A box ``size`` of a piece of furniture turned by ``R`` [3,3], centred at ``base + R @ at``."""
        self.mesh.add_box(size, R, base + R @ np.array(at), material, tint, self.uvoff(), oid)

    def _sofa(self) -> None:
        r, mb = self.rng, self.mesh
        w, d = r.uniform(1.4, 2.2), r.uniform(0.8, 0.95)
        placed = self._place_furniture(w, d, 0.85)
        if placed is None:
            return
        R, c, oid = placed
        mat, tint = self.pick(self.m_fabric), self.tint(0.5)
        self._turned_box(R, c, (w, d, 0.42), (0, 0, 0.21), mat, tint, oid)
        self._turned_box(R, c, (w, 0.2, 0.43), (0, -d / 2 + 0.1, 0.42 + 0.215), mat, tint, oid)
        for sx in (-1, 1):
            self._turned_box(R, c, (0.18, d, 0.2), (sx * (w / 2 - 0.09), 0, 0.52), mat, tint, oid)
        for _ in range(int(r.integers(0, 3))):
            cx = r.uniform(-w / 2 + 0.35, w / 2 - 0.35)
            mb.add_ellipsoid(
                (0.2, 0.07, 0.17),
                R @ rot_x(-0.3),
                c + R @ np.array([cx, -d / 2 + 0.3, 0.58]),
                self.pick(self.m_fabric, self.m_poster),
                self.tint(0.7),
                self.uvoff(),
                16,
            )

    def _bed(self) -> None:
        r, mb = self.rng, self.mesh
        w, d = r.uniform(1.0, 1.8), r.uniform(1.9, 2.1)
        placed = self._place_furniture(w, d, 0.95)
        if placed is None:
            return
        R, c, oid = placed
        wood, wt = self.pick(self.m_wood), self.tint(0.2)
        self._turned_box(R, c, (w, d, 0.3), (0, 0, 0.15), wood, wt, oid)
        self._turned_box(R, c, (w - 0.06, d - 0.06, 0.2), (0, 0.0, 0.4), self.pick(self.m_fabric), self.tint(0.4), oid)
        self._turned_box(R, c, (w, 0.06, 0.95), (0, -d / 2 + 0.03, 0.475), wood, wt, oid)
        for sx in (-0.25, 0.25) if w > 1.3 else (0.0,):
            mb.add_ellipsoid(
                (0.28, 0.18, 0.07),
                R,
                c + R @ np.array([sx * w, -d / 2 + 0.3, 0.55]),
                self.pick(self.m_fabric, self.m_poster),
                self.tint(0.5),
                self.uvoff(),
                16,
            )

    def _cabinet(self) -> None:
        r = self.rng
        w, d, h = r.uniform(0.5, 1.6), r.uniform(0.35, 0.55), r.uniform(0.45, 0.9)
        placed = self._place_furniture(w, d, h)
        if placed is None:
            return
        R, c, oid = placed
        mat, tint = self.pick(self.m_wood, self.m_misc or self.m_wood), self.tint(0.4)
        self._turned_box(R, c, (w, d, h), (0, 0, h / 2), mat, tint, oid)
        n_drawers = int(r.integers(1, 4))
        for k in range(n_drawers):
            z = h * (k + 0.5) / n_drawers
            self._turned_box(R, c, (w - 0.06, 0.01, h / n_drawers - 0.03), (0, d / 2 + 0.005, z), mat, tint * 0.85, oid)
            self._turned_box(R, c, (0.12, 0.025, 0.02), (0, d / 2 + 0.02, z), self.m_metal, self.tint(0.1), oid)
        self._table_top_items(
            R, c + np.array([0, 0, h]), w - 0.06, d - 0.06, self.cfg.furniture_clearance_m - h
        )

    def _crates(self) -> None:
        r, mb = self.rng, self.mesh
        w = r.uniform(0.3, 0.6)
        spot = self._place(w * 1.2, w * 1.2, 1.0, yaw_aligned=False)
        if spot is None:
            return
        x, y, yaw = spot
        z = 0.0
        for _ in range(int(r.integers(1, 4))):
            s = w * r.uniform(0.6, 1.0)
            h = r.uniform(0.15, 0.4)
            if z + h > self.cfg.furniture_clearance_m:
                break
            mb.add_box(
                (s, s * r.uniform(0.7, 1.0), h),
                rot_z(yaw + r.normal(0, 0.2)),
                (x, y, z + h / 2),
                self.pick(self.m_wood, self.m_photo, self.m_poster),
                self.tint(0.5),
                self.uvoff(),
            )
            z += h

    def _ball(self) -> None:
        r = self.rng
        rad = r.uniform(0.1, 0.3)
        spot = self._place(2 * rad, 2 * rad, 2 * rad, yaw_aligned=False)
        if spot is None:
            return
        x, y, yaw = spot
        self.mesh.add_ellipsoid(
            (rad, rad, rad),
            rot_z(yaw),
            (x, y, rad),
            self.pick(self.m_photo, self.m_poster),
            self.tint(0.6),
            self.uvoff(),
            24,
        )

    def _round_floor_item(
        self, rad: float, top_rad: float, h: float, footprint: float, materials: tuple, segments: int
    ) -> None:
        """A frustum (bottom ``rad``, top ``top_rad``) standing in a free ``footprint`` x ``footprint`` spot."""
        spot = self._place(footprint, footprint, h)
        if spot is None:
            return
        x, y, yaw = spot
        self.mesh.add_frustum(
            rad, top_rad, h, rot_z(yaw), (x, y, 0.0), self.pick(*materials), self.tint(0.6), self.uvoff(), segments
        )

    def _bin(self) -> None:
        r = self.rng
        rad, h = r.uniform(0.12, 0.2), r.uniform(0.3, 0.5)
        self._round_floor_item(rad, rad * 1.2, h, 2.4 * rad, (self.m_metal, self.m_misc or []), 20)

    def _pouf(self) -> None:
        r = self.rng
        rad, h = r.uniform(0.2, 0.35), r.uniform(0.3, 0.45)
        self._round_floor_item(rad, rad * 0.95, h, 2 * rad, (self.m_fabric,), 24)

    def _plant(self, tall: bool = False) -> None:
        r, mb = self.rng, self.mesh
        pot_r = r.uniform(0.12, 0.25)
        pot_h = r.uniform(0.2, 0.4)
        crown = r.uniform(0.25, 0.45) if tall else r.uniform(0.15, 0.3)
        h = pot_h + (r.uniform(0.8, 1.2) if tall else 2 * crown)
        if not tall:
            h = min(h, self.cfg.furniture_clearance_m)
        spot = self._place(2 * max(pot_r, crown), 2 * max(pot_r, crown), h)
        if spot is None:
            return
        x, y, yaw = spot
        oid = mb.new_object()
        mb.add_frustum(
            pot_r * 0.75,
            pot_r,
            pot_h,
            rot_z(yaw),
            (x, y, 0.0),
            self.pick(self.m_misc or self.m_photo),
            self.tint(0.5),
            self.uvoff(),
            20,
            object_id=oid,
        )
        stem_h = h - pot_h - crown
        if stem_h > 0.05:
            mb.add_frustum(
                0.02,
                0.015,
                stem_h + 0.05,
                IDENTITY,
                (x, y, pot_h - 0.05),
                self.m_wood[0],
                self.tint(0.1),
                segments=8,
                object_id=oid,
            )
        rz = (h - pot_h - max(stem_h, 0.0)) / 2
        foliage = self.pick(self.m_misc or self.m_fabric, self.m_fabric)
        green = hsv_to_rgb(np.array([r.uniform(0.22, 0.38), r.uniform(0.4, 0.8), r.uniform(0.6, 1.1)]))
        mb.add_ellipsoid(
            (crown, crown, rz),
            rot_z(yaw),
            (x, y, h - rz),
            foliage,
            green * 1.3,
            self.uvoff(),
            20,
            object_id=oid,
        )

    def _tall_plant(self) -> None:
        self._plant(tall=True)

    def _floor_lamp(self) -> None:
        r, mb = self.rng, self.mesh
        h = r.uniform(1.4, 1.8)
        shade_r = r.uniform(0.15, 0.25)
        spot = self._place(2 * shade_r, 2 * shade_r, h)
        if spot is None:
            return
        x, y, _ = spot
        oid = mb.new_object()
        mb.add_frustum(
            0.14, 0.12, 0.03, IDENTITY, (x, y, 0.0), self.m_metal, self.tint(0.1), segments=20, object_id=oid
        )
        mb.add_frustum(
            0.015,
            0.015,
            h - 0.25,
            IDENTITY,
            (x, y, 0.03),
            self.m_metal,
            self.tint(0.1),
            segments=10,
            object_id=oid,
        )
        mb.add_frustum(
            shade_r,
            shade_r * 0.6,
            0.25,
            IDENTITY,
            (x, y, h - 0.3),
            self.pick(self.m_fabric, self.m_poster),
            self.tint(0.4),
            self.uvoff(),
            24,
            caps=False,
            object_id=oid,
        )

    # ------------------------------------------------------------------------------------- ceiling
    def add_ceiling_items(self) -> np.ndarray:
        """Ceiling panels and pendant lamps; returns the main lamp position [3] (light source)."""
        r, mb = self.rng, self.mesh
        lx, ly, hz = self.size
        for _ in range(int(r.integers(0, 4))):
            pw = r.uniform(0.4, 1.2)
            mb.add_box(
                (pw, pw * r.uniform(0.5, 1.0), 0.03),
                rot_z(r.integers(2) * np.pi / 2),
                (r.uniform(0.6, lx - 0.6), r.uniform(0.6, ly - 0.6), hz - 0.015),
                self.m_ceiling,
                np.full(3, r.uniform(1.05, 1.25)),
                self.uvoff(),
            )
        lamp = np.array([r.uniform(0.3, 0.7) * lx, r.uniform(0.3, 0.7) * ly, hz - 0.5])
        for k in range(int(r.integers(1, 3))):
            p = lamp if k == 0 else np.array([r.uniform(0.2, 0.8) * lx, r.uniform(0.2, 0.8) * ly, hz - 0.5])
            drop = r.uniform(0.3, 0.5)
            shade_r = r.uniform(0.12, 0.3)
            oid = mb.new_object()
            mb.add_frustum(
                0.006,
                0.006,
                drop - 0.18,
                IDENTITY,
                (p[0], p[1], hz - drop + 0.18),
                self.m_metal,
                self.tint(0.05),
                segments=6,
                object_id=oid,
            )
            mb.add_frustum(
                shade_r,
                shade_r * r.uniform(0.1, 0.5),
                0.18,
                IDENTITY,
                (p[0], p[1], hz - drop),
                self.pick(self.m_metal, self.m_fabric, self.m_poster),
                self.tint(0.5),
                self.uvoff(),
                24,
                caps=False,
                object_id=oid,
            )
            mb.add_ellipsoid(
                (0.05, 0.05, 0.07),
                IDENTITY,
                (p[0], p[1], hz - drop + 0.06),
                self.m_ceiling,
                np.full(3, 1.4),
                segments=12,
                object_id=oid,
            )
        return lamp

    # ---------------------------------------------------------------------------------------- build
    def build(self) -> tuple[TriangleSoup, MaterialBank, Lighting, SceneLayout]:
        self.add_shell()
        self.add_wall_items()
        self.add_floor_items()
        lamp = self.add_ceiling_items()
        r = self.rng
        lx, ly, hz = self.size
        band = self.cfg.wall_band_m
        layout = SceneLayout(
            kind="indoor",
            room_size=self.size.copy(),
            free_min=np.array([band, band, self.cfg.furniture_clearance_m + 0.1]),
            free_max=np.array([lx - band, ly - band, hz - 0.6]),
        )
        az, el = r.uniform(0, 2 * np.pi), r.uniform(np.radians(25), np.radians(70))
        warm = random_colour(r, hue=r.uniform(0.05, 0.15), sat=(0.05, 0.35), val=(1.0, 1.0))
        lighting = Lighting(
            ambient=np.full(3, r.uniform(0.4, 0.55)) * random_colour(r, sat=(0.0, 0.15), val=(1.0, 1.0)),
            sun_direction=-np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]),
            sun_colour=np.full(3, r.uniform(0.3, 0.5)),
            shadows=False,
            lamp_position=lamp,
            lamp_colour=warm * r.uniform(0.5, 0.8),
            lamp_range_m=float(np.linalg.norm(self.size[:2])) / 2,
        )
        return self.mesh.build(), self.mats.bank(), lighting, layout


def build_indoor(
    rng: np.random.Generator, cfg: SceneConfig
) -> tuple[TriangleSoup, MaterialBank, Lighting, SceneLayout]:
    """Lay out one furnished room from ``rng``."""
    return IndoorBuilder(rng, cfg).build()
