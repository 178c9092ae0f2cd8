"""Procedural driving scenes: a straight street along +x with facades, parked cars, trees and poles.

Cross-section (y, left of the driving direction is +y): two lanes of ``lane_w`` around y = 0, a parking
strip on each side, kerb and pavement, then building facades. The ego lane (right-hand traffic) is
centred at ``y = -lane_w / 2`` and is kept clear of every object.
"""

from __future__ import annotations

import numpy as np

from dro_sfm.data.synthetic.config import SceneConfig
from dro_sfm.data.synthetic.layout import Lighting, MaterialSet, SceneLayout, Sky, earthy_tint, random_tint
from dro_sfm.data.synthetic.meshes import IDENTITY, MeshBuilder, TriangleSoup, rot_x, rot_z
from dro_sfm.data.synthetic.textures import MaterialBank, hsv_to_rgb, periodic_noise, random_colour

LOOK_AHEAD_M = 150.0
"""Street built beyond the drivable length, so the view ahead is never empty."""
LOOK_BEHIND_M = 60.0

CAR_COLOURS = np.array(
    [
        [0.95, 0.95, 0.95],
        [0.08, 0.08, 0.09],
        [0.6, 0.62, 0.65],
        [0.35, 0.36, 0.38],
        [0.7, 0.08, 0.06],
        [0.08, 0.2, 0.55],
        [0.15, 0.35, 0.2],
        [0.85, 0.75, 0.55],
        [0.9, 0.55, 0.1],
        [0.45, 0.1, 0.3],
    ]
)


class OutdoorBuilder:
    """Lays out one street; ``build()`` returns geometry, materials, lighting and the ego lane."""

    def __init__(self, rng: np.random.Generator, cfg: SceneConfig) -> None:
        self.rng = rng
        self.cfg = cfg
        self.mesh = MeshBuilder()
        self.mats = MaterialSet(rng, cfg.texture_size)
        self.lane_w = rng.uniform(*cfg.lane_width_m)
        self.park_w = cfg.parking_width_m
        self.kerb_y = self.lane_w + self.park_w
        self.pave_w = rng.uniform(*cfg.pavement_width_m)
        self.x0 = -LOOK_BEHIND_M
        self.x1 = cfg.street_length_m + LOOK_AHEAD_M
        self._make_materials()

    def _make_materials(self) -> None:
        m, r = self.mats, self.rng
        self.m_asphalt = [m.add("asphalt", r.uniform(0.012, 0.02)) for _ in range(2)]
        self.m_paint = m.add("road_paint", 0.01)
        self.m_paving = m.add_choice(["tiles", "bricks", "tiles"], (0.006, 0.012), saturation=0.25)
        self.m_kerb = m.add_choice(["stucco", "marble", "tiles"], (0.004, 0.008), saturation=0.2)
        self.m_grass = m.add("grass", r.uniform(0.01, 0.02))
        self.m_facades = [
            m.add_choice(
                ["bricks", "stucco", "plaster", "tiles", "stucco", "bricks", "marble"],
                (0.008, 0.018),
                saturation=0.35,
            )
            for _ in range(5)
        ]
        self.m_glass = [m.add("glass", r.uniform(0.004, 0.007)) for _ in range(2)]
        self.m_car = m.add("car_paint", 0.01)
        self.m_car_glass = m.add("tinted_glass", 0.008)
        self.m_metal = m.add("metal", 0.006)
        self.m_foliage = [m.add("foliage", r.uniform(0.006, 0.012)) for _ in range(2)]
        self.m_bark = m.add("bark", 0.004)
        self.m_poster = m.add("poster", 0.005)
        self.m_misc = m.fill_with_choices(
            self.cfg.n_materials, ["photo", "poster", "stucco", "wood", "fabric"], (0.004, 0.01)
        )

    def uvoff(self) -> tuple[float, float]:
        return tuple(self.rng.uniform(0.0, 50.0, 2))

    # --------------------------------------------------------------------------------------- ground
    def add_ground(self) -> None:
        mb, r = self.mesh, self.rng
        x0, x1, ky = self.x0, self.x1, self.kerb_y
        far = 400.0
        mb.add_quad(
            (x0 - far, -far, -0.03),
            (x1 - x0 + 2 * far, 0, 0),
            (0, 2 * far, 0),
            self.m_grass,
            random_tint(r, 0.1),
            self.uvoff(),
        )
        mb.add_quad(
            (x0, -ky, 0.0),
            (x1 - x0, 0, 0),
            (0, 2 * ky, 0),
            self.m_asphalt[0],
            random_tint(r, 0.05, (0.9, 1.1)),
            self.uvoff(),
        )
        self._markings()
        self._patches()
        pave_tint, kerb_tint = earthy_tint(r, 0.3), random_tint(r, 0.05)
        for side in (-1.0, 1.0):
            mb.add_box(
                (x1 - x0, 0.15, 0.15),
                IDENTITY,
                ((x0 + x1) / 2, side * (ky + 0.075), 0.075),
                self.m_kerb,
                kerb_tint,
                self.uvoff(),
            )
            w = self.pave_w - 0.15
            mb.add_box(
                (x1 - x0, w, 0.14),
                IDENTITY,
                ((x0 + x1) / 2, side * (ky + 0.15 + w / 2), 0.07),
                self.m_paving,
                pave_tint,
                self.uvoff(),
                faces="xXyYZ",
            )

    def _markings(self) -> None:
        r, mb = self.rng, self.mesh
        dash, gap = (3.0, 6.0) if r.uniform() < 0.5 else (4.5, 7.5)
        xs = np.arange(self.x0 + r.uniform(0, gap), self.x1 - dash, dash + gap)
        n = len(xs)
        tints = np.ones((n, 3)) * r.uniform(0.85, 1.05, (n, 1))
        mb.add_boxes(
            np.tile([dash, 0.12, 0.004], (n, 1)),
            IDENTITY,
            np.stack([xs + dash / 2, np.zeros(n), np.full(n, 0.002)], 1),
            self.m_paint,
            tints,
            r.uniform(0, 9, (n, 2)),
            faces="Z",
        )
        for side in (-1.0, 1.0):
            mb.add_box(
                (self.x1 - self.x0, 0.1, 0.004),
                IDENTITY,
                ((self.x0 + self.x1) / 2, side * self.lane_w, 0.002),
                self.m_paint,
                np.full(3, 0.95),
                self.uvoff(),
                faces="Z",
            )
        for x in r.uniform(self.x0 + 20, self.x1 - 20, int(r.poisson((self.x1 - self.x0) / 120.0))):
            k = int(2 * self.kerb_y / 1.0)
            ys = -self.kerb_y + (np.arange(k) + 0.5) * 2 * self.kerb_y / k
            stripes = ys[::2]
            mb.add_boxes(
                np.tile([3.0, 0.5, 0.005], (len(stripes), 1)),
                IDENTITY,
                np.stack([np.full(len(stripes), x), stripes, np.full(len(stripes), 0.0025)], 1),
                self.m_paint,
                np.ones((len(stripes), 3)),
                r.uniform(0, 9, (len(stripes), 2)),
                faces="Z",
            )

    def _patches(self) -> None:
        """Repairs and manholes: break the periodicity of the asphalt texture."""
        r, mb = self.rng, self.mesh
        n = int(r.poisson((self.x1 - self.x0) / 6.0))
        sizes = np.stack([r.uniform(0.8, 6.0, n), r.uniform(0.5, 3.0, n), np.full(n, 0.002)], 1)
        centres = np.stack(
            [
                r.uniform(self.x0, self.x1, n),
                r.uniform(-self.kerb_y + 0.5, self.kerb_y - 0.5, n),
                np.full(n, 0.001),
            ],
            1,
        )
        sizes[:, 1] = np.minimum(sizes[:, 1], 2 * (self.kerb_y - np.abs(centres[:, 1])))
        tints = np.ones((n, 3)) * r.uniform(0.55, 1.3, (n, 1))
        mb.add_boxes(sizes, IDENTITY, centres, self.m_asphalt[1], tints, r.uniform(0, 50, (n, 2)), faces="Z")
        for x in r.uniform(self.x0, self.x1, int(r.poisson((self.x1 - self.x0) / 25.0))):
            y = r.uniform(-self.kerb_y + 0.6, self.kerb_y - 0.6)
            mb.add_frustum(
                0.32, 0.32, 0.006, IDENTITY, (x, y, 0.0), self.m_metal, np.full(3, 0.5), self.uvoff(), 20
            )

    # ------------------------------------------------------------------------------------ buildings
    def add_buildings(self) -> None:
        for side in (-1.0, 1.0):
            x = self.x0 - 20.0
            while x < self.x1 + 20.0:
                r = self.rng
                if r.uniform() < 0.18:
                    x += r.uniform(2.0, 8.0)  # alley: look through to the ground and sky
                    continue
                width = r.uniform(6.0, 20.0)
                self._building(side, x + width / 2, width)
                x += width + (r.uniform(0.0, 0.3) if r.uniform() < 0.8 else 0.0)

    def _building(self, side: float, xc: float, width: float) -> None:
        r, mb = self.rng, self.mesh
        setback = 0.0 if r.uniform() < 0.6 else r.uniform(0.5, 3.0)
        y_face = self.kerb_y + self.pave_w + setback
        depth = r.uniform(8.0, 15.0)
        height = r.uniform(*self.cfg.building_height_m)
        oid = mb.new_object()
        facade = self.m_facades[int(r.integers(len(self.m_facades)))]
        tint = earthy_tint(r, 0.45, (0.8, 1.25))
        centre = np.array([xc, side * (y_face + depth / 2), height / 2])
        mb.add_box((width, depth, height), IDENTITY, centre, facade, tint, self.uvoff(), oid, faces="xXyYZ")
        face_point = np.array([xc, side * y_face, 0.0])
        # local frame of the facade: x along the street, y towards the street, z up
        Rf = np.stack([np.array([1.0, 0, 0]) * (-side), np.array([0, -side, 0.0]), np.array([0, 0, 1.0])], 1)
        cornice_mat = self.m_facades[int(r.integers(len(self.m_facades)))]
        mb.add_box(
            (width + 0.3, 0.35, 0.3),
            Rf,
            face_point + np.array([0, -side * 0.175, height - 0.15]),
            cornice_mat,
            random_tint(r, 0.1),
            self.uvoff(),
            oid,
        )
        if setback > 0.4:
            self._front_yard(side, xc, width, setback)
        self._windows(Rf, face_point, width, height, oid)

    def _front_yard(self, side: float, xc: float, width: float, setback: float) -> None:
        r, mb = self.rng, self.mesh
        y0 = self.kerb_y + self.pave_w
        mb.add_quad(
            (xc - width / 2, side * y0, 0.01),
            (width, 0, 0),
            (0, side * setback, 0),
            self.m_grass,
            random_tint(r, 0.1),
            self.uvoff(),
        )
        if r.uniform() < 0.6:  # hedge or garden wall at the pavement edge
            h = r.uniform(0.5, 1.3)
            mat = (
                self.m_foliage[int(r.integers(2))]
                if r.uniform() < 0.5
                else self.m_facades[int(r.integers(5))]
            )
            mb.add_box(
                (width - 0.2, 0.4, h),
                IDENTITY,
                (xc, side * (y0 + 0.25), h / 2),
                mat,
                random_tint(r, 0.2),
                self.uvoff(),
            )

    def _windows(self, Rf: np.ndarray, face_point: np.ndarray, width: float, height: float, oid: int) -> None:
        r, mb = self.rng, self.mesh
        floor_h = r.uniform(2.8, 3.6)
        n_floors = int((height - 0.5) // floor_h)
        spacing = r.uniform(2.0, 3.6)
        cols = max(1, int((width - 1.0) // spacing))
        win_w = r.uniform(0.8, min(1.8, spacing - 0.5))
        win_h = r.uniform(1.2, min(2.0, floor_h - 0.9))
        glass = self.m_glass[int(r.integers(2))]
        frame_tint = random_tint(r, 0.2, (0.9, 1.2))
        xs = (np.arange(cols) - (cols - 1) / 2) * (width - 1.0) / max(cols, 1) * (1.0 if cols > 1 else 0.0)
        rows = []
        for k in range(1, n_floors):
            rows.append(k * floor_h + r.uniform(0.8, 1.0))
        if not rows and not n_floors:
            return
        lx, lz = np.meshgrid(xs, np.asarray(rows)) if rows else (np.zeros((0,)), np.zeros((0,)))
        lx, lz = lx.ravel(), lz.ravel()
        if len(lx):
            n = len(lx)
            centres = face_point + (np.stack([lx, np.full(n, 0.04), lz + win_h / 2], 1) @ Rf.T)
            tints = np.ones((n, 3)) * r.uniform(0.8, 1.2, (n, 1))
            mb.add_boxes(
                np.tile([win_w, 0.08, win_h], (n, 1)),
                Rf,
                centres,
                glass,
                tints,
                r.uniform(0, 9, (n, 2)),
                oid,
                faces="xXYzZ",
            )
            sills = face_point + (np.stack([lx, np.full(n, 0.1), lz - 0.04], 1) @ Rf.T)
            mb.add_boxes(
                np.tile([win_w + 0.2, 0.2, 0.08], (n, 1)),
                Rf,
                sills,
                self.m_facades[0],
                np.broadcast_to(frame_tint, (n, 3)),
                r.uniform(0, 9, (n, 2)),
                oid,
                faces="xXYzZ",
            )
        self._ground_floor(Rf, face_point, width, floor_h, glass, oid)

    def _ground_floor(
        self, Rf: np.ndarray, face_point: np.ndarray, width: float, floor_h: float, glass: int, oid: int
    ) -> None:
        r, mb = self.rng, self.mesh
        if r.uniform() < 0.5:  # shop front with a sign board
            w = width * r.uniform(0.5, 0.8)
            h = min(2.4, floor_h - 0.5)
            mb.add_box(
                (w, 0.1, h),
                Rf,
                face_point + Rf @ np.array([0, 0.05, 0.2 + h / 2]),
                glass,
                np.ones(3),
                self.uvoff(),
                oid,
                faces="xXYzZ",
            )
            mb.add_box(
                (w, 0.15, 0.6),
                Rf,
                face_point + Rf @ np.array([0, 0.075, h + 0.55]),
                self.m_poster,
                random_tint(r, 0.3),
                self.uvoff(),
                oid,
                faces="xXYzZ",
            )
        door_x = r.uniform(-width / 2 + 1.0, width / 2 - 1.0) if width > 3 else 0.0
        door_mat = self.m_misc[int(r.integers(len(self.m_misc)))] if self.m_misc else self.m_metal
        mb.add_box(
            (1.1, 0.12, 2.2),
            Rf,
            face_point + Rf @ np.array([door_x, 0.06, 1.1]),
            door_mat,
            random_tint(r, 0.5),
            self.uvoff(),
            oid,
            faces="xXYzZ",
        )

    # -------------------------------------------------------------------------------- street items
    def add_street_items(self) -> None:
        for side in (-1.0, 1.0):
            self._trees(side)
            self._lamps(side)
            self._small_items(side)
            self._parked_cars(side)
        self._oncoming_cars()

    def _trees(self, side: float) -> None:
        r = self.rng
        x = self.x0 + r.uniform(0, 10)
        spacing = r.uniform(7.0, 16.0)
        while x < self.x1:
            if r.uniform() < 0.75:
                self._tree(x, side * (self.kerb_y + r.uniform(0.6, min(1.2, self.pave_w - 0.4))))
            x += spacing * r.uniform(0.7, 1.3)

    def _tree(self, x: float, y: float) -> None:
        r, mb = self.rng, self.mesh
        oid = mb.new_object()
        trunk_h = r.uniform(2.2, 3.5)
        trunk_r = r.uniform(0.1, 0.2)
        mb.add_frustum(
            trunk_r * 1.2,
            trunk_r * 0.7,
            trunk_h + 0.5,
            IDENTITY,
            (x, y, 0.1),
            self.m_bark,
            random_tint(r, 0.1),
            self.uvoff(),
            12,
            caps=False,
            object_id=oid,
        )
        leaves = self.m_foliage[int(r.integers(2))]
        green = hsv_to_rgb(np.array([r.uniform(0.18, 0.36), r.uniform(0.0, 0.4), 1.0])) * r.uniform(0.8, 1.3)
        if r.uniform() < 0.25:  # conifer
            rad = r.uniform(1.0, 1.8)
            mb.add_frustum(
                rad,
                0.0,
                r.uniform(3.0, 6.0),
                IDENTITY,
                (x, y, trunk_h * 0.6),
                leaves,
                green,
                self.uvoff(),
                16,
                object_id=oid,
            )
            return
        rad, rz = r.uniform(1.2, 2.2), r.uniform(1.4, 2.6)
        for _ in range(int(r.integers(1, 4))):
            off = r.normal(0, 0.35 * rad, 3) * np.array([1, 1, 0.5])
            mb.add_ellipsoid(
                (rad, rad * r.uniform(0.8, 1.1), rz),
                rot_z(r.uniform(0, 6.3)),
                (x + off[0], y + off[1], trunk_h + rz * 0.75 + off[2]),
                leaves,
                green,
                self.uvoff(),
                18,
                object_id=oid,
            )

    def _lamps(self, side: float) -> None:
        r, mb = self.rng, self.mesh
        spacing = r.uniform(18.0, 35.0)
        h = r.uniform(5.5, 8.0)
        y = side * (self.kerb_y + 0.45)
        tint = random_tint(r, 0.2, (0.5, 1.0))
        for x in np.arange(self.x0 + r.uniform(0, spacing), self.x1, spacing):
            oid = mb.new_object()
            mb.add_frustum(
                0.1, 0.06, h, IDENTITY, (x, y, 0.0), self.m_metal, tint, self.uvoff(), 12, object_id=oid
            )
            arm = r.uniform(1.0, 1.8)
            mb.add_box(
                (0.08, arm, 0.08), IDENTITY, (x, y - side * arm / 2, h), self.m_metal, tint, self.uvoff(), oid
            )
            mb.add_box(
                (0.5, 0.25, 0.12),
                IDENTITY,
                (x, y - side * arm, h - 0.04),
                self.m_metal,
                tint * 0.8,
                self.uvoff(),
                oid,
            )

    def _small_items(self, side: float) -> None:
        r, mb = self.rng, self.mesh
        n = int(r.poisson((self.x1 - self.x0) / 12.0))
        for x in r.uniform(self.x0, self.x1, n):
            y = side * (self.kerb_y + r.uniform(0.35, 0.8))
            kind = int(r.integers(4))
            if kind == 0:  # traffic sign
                oid = mb.new_object()
                mb.add_frustum(
                    0.035,
                    0.035,
                    2.6,
                    IDENTITY,
                    (x, y, 0.0),
                    self.m_metal,
                    np.full(3, 0.8),
                    segments=8,
                    object_id=oid,
                )
                # disk axis (local z) along -x: the sign faces the traffic driving along +x
                facing = np.stack(
                    [np.array([0, 1.0, 0.0]), np.array([0, 0, -1.0]), np.array([-1.0, 0, 0])], 1
                )
                sign_r = r.uniform(0.3, 0.45)
                mb.add_frustum(
                    sign_r,
                    sign_r,
                    0.03,
                    facing,
                    (x - 0.05, y, 2.6 - sign_r),
                    self.m_poster,
                    random_colour(r, sat=(0.6, 1.0), val=(0.7, 1.0)) * 1.3,
                    self.uvoff(),
                    24,
                    object_id=oid,
                )
            elif kind == 1:  # bollards
                for k in range(int(r.integers(2, 6))):
                    mb.add_frustum(
                        0.08,
                        0.08,
                        0.9,
                        IDENTITY,
                        (x + 1.2 * k, y, 0.0),
                        self.m_metal,
                        random_tint(r, 0.5, (0.4, 1.0)),
                        self.uvoff(),
                        10,
                    )
            elif kind == 2:  # bin / box
                s = r.uniform(0.4, 0.8)
                mb.add_box(
                    (s, s, r.uniform(0.8, 1.3)),
                    rot_z(r.normal(0, 0.1)),
                    (x, y, 0.5),
                    self.m_misc[0] if self.m_misc else self.m_metal,
                    random_tint(r, 0.6),
                    self.uvoff(),
                )
            else:  # bench
                oid = mb.new_object()
                mb.add_box(
                    (1.8, 0.45, 0.06),
                    IDENTITY,
                    (x, y + side * 0.2, 0.45),
                    self.m_misc[-1] if self.m_misc else self.m_metal,
                    random_tint(r, 0.3),
                    self.uvoff(),
                    oid,
                )
                for dx in (-0.75, 0.75):
                    mb.add_box(
                        (0.06, 0.4, 0.42),
                        IDENTITY,
                        (x + dx, y + side * 0.2, 0.21),
                        self.m_metal,
                        np.full(3, 0.4),
                        self.uvoff(),
                        oid,
                    )

    def _car(self, x: float, y: float, yaw: float) -> None:
        r, mb = self.rng, self.mesh
        length, width = r.uniform(3.8, 4.9), r.uniform(1.65, 1.9)
        R = rot_z(yaw)
        c = np.array([x, y, 0.0])
        oid = mb.new_object()
        colour = CAR_COLOURS[int(r.integers(len(CAR_COLOURS)))] * r.uniform(0.9, 1.1)
        body_h = r.uniform(0.55, 0.75)
        mb.add_box(
            (length, width, body_h),
            R,
            c + R @ np.array([0, 0, 0.3 + body_h / 2]),
            self.m_car,
            colour,
            self.uvoff(),
            oid,
        )
        cabin_l = length * r.uniform(0.45, 0.6)
        cabin_h = r.uniform(0.45, 0.6)
        glass = self.m_car_glass
        mb.add_box(
            (cabin_l, width * 0.86, cabin_h),
            R,
            c + R @ np.array([-0.1 * length, 0, 0.3 + body_h + cabin_h / 2]),
            glass,
            np.full(3, 0.7),
            self.uvoff(),
            oid,
        )
        mb.add_box(
            (cabin_l * 0.9, width * 0.8, 0.04),
            R,
            c + R @ np.array([-0.1 * length, 0, 0.3 + body_h + cabin_h + 0.02]),
            self.m_car,
            colour,
            self.uvoff(),
            oid,
        )
        for sx in (-1, 1):
            for sy in (-1, 1):
                base = c + R @ np.array([sx * (length / 2 - 0.75), sy * (width / 2 - 0.12), 0.32])
                wheel_R = R @ rot_x(-sy * np.pi / 2)
                mb.add_frustum(
                    0.32,
                    0.32,
                    0.24,
                    wheel_R,
                    base - R @ np.array([0, sy * 0.1, 0]),
                    self.m_metal,
                    np.full(3, 0.15),
                    self.uvoff(),
                    16,
                    object_id=oid,
                )
            lamp_col = np.array([1.2, 1.15, 1.0]) if sx > 0 else np.array([0.9, 0.1, 0.08])
            for sy in (-1, 1):
                p = c + R @ np.array([sx * length / 2, sy * (width / 2 - 0.25), 0.3 + body_h * 0.7])
                mb.add_box((0.04, 0.3, 0.12), R, p, self.m_metal, lamp_col, self.uvoff(), oid)
            mb.add_box(
                (0.12, width + 0.04, 0.18),
                R,
                c + R @ np.array([sx * length / 2, 0, 0.38]),
                self.m_metal,
                np.full(3, 0.25),
                self.uvoff(),
                oid,
            )

    def _parked_cars(self, side: float) -> None:
        r = self.rng
        y = side * (self.lane_w + self.park_w / 2)
        for x in np.arange(self.x0, self.x1, 6.0):
            if r.uniform() < self.cfg.parked_car_probability:
                yaw = (0.0 if r.uniform() < 0.7 else np.pi) + r.normal(0, 0.03)
                self._car(x + r.uniform(-0.6, 0.6), y + r.normal(0, 0.1), yaw)

    def _oncoming_cars(self) -> None:
        r = self.rng
        for x in r.uniform(self.x0, self.x1, int(r.poisson((self.x1 - self.x0) / 60.0))):
            self._car(x, self.lane_w / 2 + r.normal(0, 0.15), np.pi + r.normal(0, 0.02))

    # --------------------------------------------------------------------------------------- build
    def _sky(self) -> Sky:
        r = self.rng
        kind = r.choice(["clear", "hazy", "overcast", "dusk"], p=[0.45, 0.25, 0.2, 0.1])
        if kind == "clear":
            zenith, horizon = (
                hsv_to_rgb(np.array([r.uniform(0.55, 0.62), r.uniform(0.5, 0.75), r.uniform(0.7, 0.95)])),
                hsv_to_rgb(np.array([r.uniform(0.55, 0.6), r.uniform(0.1, 0.3), r.uniform(0.9, 1.0)])),
            )
        elif kind == "hazy":
            zenith, horizon = np.array([0.6, 0.7, 0.85]), np.array([0.88, 0.88, 0.86])
        elif kind == "overcast":
            g = r.uniform(0.6, 0.85)
            zenith, horizon = np.full(3, g * 0.9), np.full(3, g)
        else:
            zenith, horizon = np.array([0.3, 0.35, 0.6]), np.array([1.0, 0.65, 0.4])
        n = 256
        cover = r.uniform(0.2, 1.2) if kind != "overcast" else 2.0
        clouds = np.clip((periodic_noise(r, n, beta=2.5, min_period=2) + 1.0 - cover) * 0.8, 0.0, 1.0)
        return Sky(
            zenith=zenith,
            horizon=horizon,
            ground=horizon * 0.5,
            clouds=clouds.astype(np.float32),
            cloud_colour=np.clip(horizon * 1.1, 0, 1),
            cloud_scale=r.uniform(0.05, 0.15),
        )

    def build(self) -> tuple[TriangleSoup, MaterialBank, Lighting, SceneLayout]:
        self.add_ground()
        self.add_buildings()
        self.add_street_items()
        r = self.rng
        az, el = r.uniform(0, 2 * np.pi), np.radians(r.uniform(15.0, 65.0))
        sky = self._sky()
        lighting = Lighting(
            ambient=np.clip(0.3 * sky.zenith + 0.7 * sky.horizon, 0, 1) * r.uniform(0.5, 0.65),
            sun_direction=-np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]),
            sun_colour=random_colour(r, hue=r.uniform(0.08, 0.14), sat=(0.0, 0.25), val=(1.0, 1.0))
            * r.uniform(0.6, 0.85),
            shadows=self.cfg.shadows,
            sky=sky,
        )
        layout = SceneLayout(
            kind="outdoor",
            lane_center_y=-self.lane_w / 2,
            lane_half_width_m=max(0.1, self.lane_w / 2 - 1.1),
            x_start=0.0,
            x_end=self.cfg.street_length_m,
        )
        return self.mesh.build(), self.mats.bank(), lighting, layout


def build_outdoor(
    rng: np.random.Generator, cfg: SceneConfig
) -> tuple[TriangleSoup, MaterialBank, Lighting, SceneLayout]:
    """Lay out one street from ``rng``."""
    return OutdoorBuilder(rng, cfg).build()
