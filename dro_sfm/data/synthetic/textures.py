"""Procedural, seamlessly tiling surface textures and their mip-mapped lookup.

Every generator returns an albedo image ``[n,n,3]`` float32 in [0,1] that is periodic with period ``n``
in both axes (noise is synthesised in the Fourier domain, patterns use periods dividing ``n``), so a
texture can be repeated over a surface of any size without seams. A texture is tied to a surface through
metric surface coordinates ``(u, v)`` (metres) and a texel size, which keeps it fixed to the surface and
identical in every view. ``MaterialBank.sample`` filters with a trilinear mip-map chosen from the pixel
footprint, so distant surfaces do not alias (aliasing would break photometric consistency between views).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Generator = np.random.Generator
TextureFn = Callable[[Generator, int], np.ndarray]


# ----------------------------------------------------------------------------------------------- colour
def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """HSV [...,3] in [0,1] to RGB [...,3] in [0,1]."""
    h, s, v = hsv[..., 0] % 1.0, hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack(
        [
            np.stack([v, t, p], -1),
            np.stack([q, v, p], -1),
            np.stack([p, v, t], -1),
            np.stack([p, q, v], -1),
            np.stack([t, p, v], -1),
            np.stack([v, p, q], -1),
        ],
        0,
    )
    return np.take_along_axis(table, i[None, ..., None].repeat(3, -1), 0)[0]


def random_colour(
    rng: Generator,
    hue: float | None = None,
    sat: tuple[float, float] = (0.2, 0.8),
    val: tuple[float, float] = (0.3, 0.95),
    hue_jitter: float = 0.06,
) -> np.ndarray:
    """One RGB colour [3]; around ``hue`` when given (a palette of related colours)."""
    h = rng.uniform() if hue is None else hue + rng.uniform(-hue_jitter, hue_jitter)
    return hsv_to_rgb(np.array([h, rng.uniform(*sat), rng.uniform(*val)]))


def random_palette(rng: Generator, k: int, **kwargs) -> np.ndarray:
    """``k`` related colours [k,3], sorted dark to bright so that noise maps to a smooth gradient."""
    hue = kwargs.pop("hue", None)
    hue = rng.uniform() if hue is None else hue
    cols = np.stack([random_colour(rng, hue=hue, **kwargs) for _ in range(k)])
    return cols[np.argsort(cols.sum(1))]


def palette_map(t: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Scalar field [n,n] in [0,1] to colours [n,n,3], interpolating the palette [k,3] piecewise-linearly."""
    stops = np.linspace(0.0, 1.0, len(palette))
    return np.stack([np.interp(t, stops, palette[:, c]) for c in range(3)], -1)


# ------------------------------------------------------------------------------------------------ noise
def periodic_noise(
    rng: Generator,
    n: int,
    beta: float = 2.0,
    min_period: float = 2.0,
    max_period: float | None = None,
    stretch: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Tileable fractal noise [n,n] with power spectrum 1/f^beta, zero mean, unit std.

    ``min_period``/``max_period`` (texels) band-limit the noise; ``stretch`` elongates features along
    x/y (wood grain, brushed metal).
    """
    fy = np.fft.fftfreq(n)[:, None] / stretch[1]
    fx = np.fft.rfftfreq(n)[None, :] / stretch[0]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = np.inf
    amp = f ** (-beta / 2.0)
    amp[f > 1.0 / min_period] = 0.0
    if max_period is not None:
        amp[f < 1.0 / max_period] = 0.0
    spec = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
    field = np.fft.irfft2(spec, s=(n, n))
    field -= field.mean()
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


def to_unit(field: np.ndarray, contrast: float = 1.0) -> np.ndarray:
    """Unit-std noise [n,n] squashed to [0,1] with a logistic curve (``contrast`` sharpens it)."""
    return 1.0 / (1.0 + np.exp(-1.6 * contrast * field))


def warp(rng: Generator, image: np.ndarray, amount: float, period: float) -> np.ndarray:
    """Periodic domain warp of an image [n,n,C] by ``amount`` texels with features of ``period`` texels."""
    n = image.shape[0]
    dx = periodic_noise(rng, n, beta=3.0, min_period=period / 4, max_period=period * 4) * amount
    dy = periodic_noise(rng, n, beta=3.0, min_period=period / 4, max_period=period * 4) * amount
    yy, xx = np.mgrid[0:n, 0:n]
    x = np.rint(xx + dx).astype(np.int64) % n
    y = np.rint(yy + dy).astype(np.int64) % n
    return image[y, x]


def _grain(rng: Generator, n: int, strength: float) -> np.ndarray:
    """Fine multiplicative grain [n,n,1] around 1, for surfaces that would otherwise be flat."""
    return (1.0 + strength * periodic_noise(rng, n, beta=1.0, min_period=2.0))[..., None]


def _grid_cells(n: int, cells_x: int, cells_y: int, row_shift: float = 0.0):
    """Cell index and in-cell position for a grid of cells over an n x n tile (rows shifted for bricks)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    cw, ch = n / cells_x, n / cells_y
    row = np.floor(yy / ch).astype(np.int64)
    xs = (xx + row_shift * cw * (row % 2)) % n
    col = np.floor(xs / cw).astype(np.int64)
    fx, fy = xs / cw - col, yy / ch - row
    return row, col % cells_x, fx, fy


# ------------------------------------------------------------------------------------------- generators
def photo(rng: Generator, n: int) -> np.ndarray:
    """Photo-like clutter: multi-octave colour noise, domain warped, with soft blobs in related colours."""
    pal = random_palette(rng, 4, sat=(0.15, 0.7), val=(0.15, 0.95), hue_jitter=0.12)
    base = palette_map(to_unit(periodic_noise(rng, n, beta=2.2, min_period=2), 1.5), pal)
    for _ in range(2):
        chan = to_unit(periodic_noise(rng, n, beta=1.8, min_period=2, max_period=n / 2))
        base = base * (0.8 + 0.4 * chan[..., None] * random_colour(rng, sat=(0.1, 0.5), val=(0.7, 1.0)))
    base = _blobs(rng, base, int(rng.integers(4, 12)), radius=(n / 32, n / 8), palette=pal)
    return np.clip(warp(rng, base, amount=rng.uniform(3, 10), period=n / 8), 0, 1)


def _blobs(
    rng: Generator,
    image: np.ndarray,
    count: int,
    radius: tuple[float, float],
    palette: np.ndarray | None = None,
) -> np.ndarray:
    """Paint ``count`` random periodic ellipses/rectangles onto image [n,n,3] (colours near ``palette``)."""
    n = image.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    out = image.copy()
    for _ in range(count):
        cx, cy = rng.uniform(0, n, 2)
        rx, ry = rng.uniform(*radius, 2)
        dx = (xx - cx + n / 2) % n - n / 2
        dy = (yy - cy + n / 2) % n - n / 2
        if rng.uniform() < 0.5:
            mask = (dx / rx) ** 2 + (dy / ry) ** 2 < 1.0
        else:
            mask = (np.abs(dx) < rx) & (np.abs(dy) < ry)
        if palette is None:
            colour = random_colour(rng, sat=(0.2, 1.0), val=(0.1, 1.0))
        else:
            colour = palette[rng.integers(len(palette))] * rng.uniform(0.6, 1.4, 3)
        shade = 0.85 + 0.3 * to_unit(periodic_noise(rng, n, beta=2.0, min_period=3, max_period=n / 4))
        out[mask] = colour * shade[mask, None]
    return out


def poster(rng: Generator, n: int) -> np.ndarray:
    """A picture or poster: coloured shapes over a painted background with lines of 'text'."""
    bg = palette_map(to_unit(periodic_noise(rng, n, beta=3.0, min_period=4)), random_palette(rng, 3))
    img = _blobs(rng, bg, int(rng.integers(10, 30)), radius=(n / 40, n / 6))
    rows = int(rng.integers(3, 9))
    for r in range(rows):
        y0 = int(n * (0.1 + 0.8 * r / rows))
        h = max(2, int(rng.integers(2, 5)))
        words = np.cumsum(rng.integers(4, 20, size=40))
        ink = random_colour(rng, val=(0.0, 0.3))
        for a, b in zip(words[:-1:2], words[1::2]):
            if b < n * 0.9:
                img[y0 : y0 + h, int(n * 0.05) + a : int(n * 0.05) + b] = ink
    return np.clip(img, 0, 1)


def plaster(rng: Generator, n: int) -> np.ndarray:
    """Painted plaster: a light colour with soft low-contrast blotches and fine grain (weak texture)."""
    col = random_colour(rng, sat=(0.0, 0.35), val=(0.65, 0.95))
    low = periodic_noise(rng, n, beta=2.5, min_period=3)
    img = col * (1.0 + 0.12 * low[..., None]) * _grain(rng, n, 0.06)
    return np.clip(img, 0, 1)


def stucco(rng: Generator, n: int) -> np.ndarray:
    """Rough render/stucco: stronger multi-scale noise with stains, for facades and walls."""
    pal = random_palette(rng, 3, sat=(0.05, 0.5), val=(0.35, 0.9), hue_jitter=0.04)
    t = to_unit(periodic_noise(rng, n, beta=1.8, min_period=2), 1.2)
    stains = to_unit(periodic_noise(rng, n, beta=3.0, min_period=8), 2.0)[..., None]
    return np.clip(palette_map(t, pal) * (0.7 + 0.4 * stains), 0, 1)


def wood(rng: Generator, n: int) -> np.ndarray:
    """Wood planks: warped growth rings, fibre streaks, plank seams with per-plank tone."""
    planks = int(rng.choice([2, 4, 8]))
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    plank = np.floor(yy / (n / planks)).astype(np.int64)
    tone = rng.uniform(0.75, 1.2, size=planks)[plank]
    ring_freq = int(rng.integers(3, 9))
    w = periodic_noise(rng, n, beta=3.0, min_period=8, stretch=(6.0, 1.0))
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (ring_freq * yy / n * planks + 0.6 * w + plank * 0.37))
    fibres = periodic_noise(rng, n, beta=1.2, min_period=2, stretch=(12.0, 1.0))
    pal = random_palette(rng, 3, hue=rng.uniform(0.03, 0.12), sat=(0.35, 0.75), val=(0.2, 0.8))
    img = palette_map(np.clip(0.65 * rings + 0.12 * fibres + 0.2, 0, 1), pal) * tone[..., None]
    seam = ((yy % (n / planks)) < 1.0)[..., None]
    return np.clip(np.where(seam, img * 0.45, img), 0, 1)


def bricks(rng: Generator, n: int) -> np.ndarray:
    """Running-bond brickwork: per-brick colour jitter, mortar joints, surface noise."""
    cells_x = int(rng.choice([4, 8]))
    cells_y = cells_x * int(rng.choice([2, 3, 4]))
    row, col, fx, fy = _grid_cells(n, cells_x, cells_y, row_shift=0.5)
    base = random_colour(rng, hue=rng.uniform(-0.02, 0.1), sat=(0.3, 0.75), val=(0.35, 0.75))
    jitter = rng.uniform(0.7, 1.25, size=(cells_y, cells_x, 1)) * rng.uniform(
        0.92, 1.08, (cells_y, cells_x, 3)
    )
    img = base * jitter[row, col]
    img = img * (1.0 + 0.15 * periodic_noise(rng, n, beta=1.5, min_period=2)[..., None])
    mortar_w = rng.uniform(0.04, 0.1)
    mortar = (fx < mortar_w * cells_y / cells_x * 0.5) | (fy < mortar_w * 2)
    mortar_col = random_colour(rng, sat=(0.0, 0.15), val=(0.5, 0.85))
    return np.clip(np.where(mortar[..., None], mortar_col * _grain(rng, n, 0.1), img), 0, 1)


def tiles(rng: Generator, n: int) -> np.ndarray:
    """Square tiles or a checkerboard with grout lines and per-tile variation (floors, paving)."""
    cells = int(rng.choice([2, 4, 8]))
    row, col, fx, fy = _grid_cells(n, cells, cells)
    checker = rng.uniform() < 0.5
    c1 = random_colour(rng, sat=(0.0, 0.6), val=(0.3, 0.95))
    c2 = random_colour(rng, sat=(0.0, 0.6), val=(0.1, 0.9)) if checker else c1
    img = np.where(((row + col) % 2 == 0)[..., None], c1, c2)
    img = img * rng.uniform(0.85, 1.15, size=(cells, cells, 1))[row, col]
    marble = to_unit(periodic_noise(rng, n, beta=2.3, min_period=2), 1.3)[..., None]
    img = img * (0.75 + 0.45 * marble)
    grout = (fx < 0.03) | (fy < 0.03)
    return np.clip(np.where(grout[..., None], random_colour(rng, sat=(0, 0.2), val=(0.2, 0.6)), img), 0, 1)


def stripes(rng: Generator, n: int) -> np.ndarray:
    """Wallpaper/fabric stripes of varying width and colour, slightly warped, with a fine pattern."""
    k = int(rng.choice([4, 8, 16]))
    widths = rng.uniform(0.3, 1.0, size=k)
    edges = np.concatenate([[0.0], np.cumsum(widths) / widths.sum()]) * n
    xx = np.arange(n, dtype=np.float64)
    band = np.searchsorted(edges, xx, side="right") - 1
    pal = random_palette(rng, 4, sat=(0.1, 0.8), val=(0.3, 0.95), hue_jitter=0.15)
    colours = pal[rng.integers(0, len(pal), size=k)]
    img = np.broadcast_to(colours[band][None], (n, n, 3)).copy()
    dots = 0.5 + 0.5 * np.sin(2 * np.pi * np.arange(n) * int(rng.choice([16, 32])) / n)
    img *= (0.85 + 0.15 * dots[:, None] * dots[None, :])[..., None]
    img *= _grain(rng, n, 0.08)
    return np.clip(warp(rng, img, amount=1.5, period=n / 4), 0, 1)


def fabric(rng: Generator, n: int) -> np.ndarray:
    """Woven fabric/carpet: fine weave, colour mottling, optional large motif."""
    period = int(rng.choice([2, 4]))
    yy, xx = np.mgrid[0:n, 0:n]
    weave = ((xx // period + yy // period) % 2).astype(np.float64)
    pal = random_palette(rng, 3, sat=(0.2, 0.8), val=(0.2, 0.85))
    mott = to_unit(periodic_noise(rng, n, beta=2.0, min_period=3), 1.5)
    img = palette_map(mott, pal) * (0.85 + 0.2 * weave)[..., None]
    if rng.uniform() < 0.5:
        motif = 0.5 + 0.5 * np.sin(2 * np.pi * xx * 4 / n) * np.sin(2 * np.pi * yy * 4 / n)
        img = img * (0.8 + 0.35 * (motif > 0.75))[..., None]
    return np.clip(img, 0, 1)


def marble(rng: Generator, n: int) -> np.ndarray:
    """Veined stone: a sine of a turbulent field mapped to a light palette."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    turb = periodic_noise(rng, n, beta=2.2, min_period=2)
    k = int(rng.integers(1, 4))
    t = 0.5 + 0.5 * np.sin(2 * np.pi * k * (xx + yy) / n + 2.5 * turb)
    pal = random_palette(rng, 3, sat=(0.0, 0.4), val=(0.25, 0.95))
    return np.clip(palette_map(t**3, pal), 0, 1)


def metal(rng: Generator, n: int) -> np.ndarray:
    """Brushed metal / painted metal with streaks and scratches."""
    col = random_colour(rng, sat=(0.0, 0.5), val=(0.4, 0.9))
    streak = periodic_noise(rng, n, beta=1.0, min_period=2, stretch=(20.0, 1.0))
    blot = periodic_noise(rng, n, beta=3.0, min_period=8)
    return np.clip(col * (1.0 + 0.1 * streak + 0.1 * blot)[..., None], 0, 1)


def asphalt(rng: Generator, n: int) -> np.ndarray:
    """Road surface: dark aggregate grain, repair patches and light speckles."""
    grey = rng.uniform(0.18, 0.35)
    grain = periodic_noise(rng, n, beta=0.8, min_period=2)
    patches = to_unit(periodic_noise(rng, n, beta=3.5, min_period=16), 2.5)
    speck = periodic_noise(rng, n, beta=0.0, min_period=2) > 2.2
    v = grey * (1.0 + 0.22 * grain) * (0.75 + 0.45 * patches) + 0.25 * speck
    tint = np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.05, 0.05, 3)
    return np.clip(v[..., None] * tint, 0, 1)


def foliage(rng: Generator, n: int) -> np.ndarray:
    """Tree crowns/hedges: clumps of leaves in several greens with dark gaps."""
    leaves = to_unit(periodic_noise(rng, n, beta=1.6, min_period=2), 2.5)
    clumps = to_unit(periodic_noise(rng, n, beta=3.0, min_period=8), 2.0)
    pal = random_palette(rng, 4, hue=rng.uniform(0.2, 0.36), sat=(0.4, 0.9), val=(0.08, 0.7))
    return np.clip(palette_map(np.clip(0.6 * leaves + 0.4 * clumps, 0, 1), pal), 0, 1)


def grass(rng: Generator, n: int) -> np.ndarray:
    """Lawn/verge: fine vertical-ish blades, dry patches."""
    blades = to_unit(periodic_noise(rng, n, beta=0.8, min_period=2, stretch=(1.0, 3.0)), 1.5)
    dry = to_unit(periodic_noise(rng, n, beta=3.0, min_period=10), 2.0)
    green = palette_map(
        blades, random_palette(rng, 3, hue=rng.uniform(0.2, 0.3), sat=(0.4, 0.8), val=(0.15, 0.6))
    )
    brown = palette_map(blades, random_palette(rng, 2, hue=0.09, sat=(0.3, 0.6), val=(0.3, 0.6)))
    return np.clip(green * (1 - 0.6 * dry[..., None]) + brown * 0.6 * dry[..., None], 0, 1)


def glass(rng: Generator, n: int) -> np.ndarray:
    """Window glass: dark blue-grey with blurred reflections of clouds and buildings, and mullions."""
    refl = to_unit(periodic_noise(rng, n, beta=2.8, min_period=4, stretch=(1.0, 2.0)), 1.5)
    pal = random_palette(rng, 3, hue=rng.uniform(0.5, 0.65), sat=(0.1, 0.5), val=(0.08, 0.55))
    img = palette_map(refl, pal)
    panes = int(rng.choice([1, 2, 4]))
    yy, xx = np.mgrid[0:n, 0:n]
    mullion = ((xx % (n // panes)) < 3) | ((yy % (n // panes)) < 3)
    frame_col = random_colour(rng, sat=(0.0, 0.3), val=(0.3, 0.95))
    return np.clip(np.where(mullion[..., None], frame_col, img), 0, 1)


def tinted_glass(rng: Generator, n: int) -> np.ndarray:
    """Dark vehicle glass: smooth reflections of sky and streets, no frames."""
    refl = to_unit(periodic_noise(rng, n, beta=3.2, min_period=6, stretch=(2.0, 1.0)), 1.2)
    pal = random_palette(rng, 3, hue=rng.uniform(0.5, 0.65), sat=(0.05, 0.3), val=(0.05, 0.45))
    return np.clip(palette_map(refl, pal), 0, 1)


def bark(rng: Generator, n: int) -> np.ndarray:
    """Tree bark: vertical furrows."""
    furrows = periodic_noise(rng, n, beta=1.5, min_period=2, stretch=(1.0, 8.0))
    pal = random_palette(rng, 3, hue=rng.uniform(0.05, 0.1), sat=(0.2, 0.5), val=(0.1, 0.5))
    return np.clip(palette_map(to_unit(furrows, 1.8), pal), 0, 1)


def car_paint(rng: Generator, n: int) -> np.ndarray:
    """Light, nearly uniform paint with dirt and panel seams; the per-car tint gives its colour."""
    dirt = to_unit(periodic_noise(rng, n, beta=2.5, min_period=4), 1.5)
    yy, xx = np.mgrid[0:n, 0:n]
    seam = (xx % (n // 2) < 1) | (yy % (n // 2) < 1)
    v = 0.9 * (1.0 - 0.25 * dirt) * np.where(seam, 0.5, 1.0)
    return np.clip(np.repeat(v[..., None], 3, -1) * _grain(rng, n, 0.04), 0, 1)


def road_paint(rng: Generator, n: int) -> np.ndarray:
    """Worn white/yellow road marking paint."""
    col = np.array([0.92, 0.92, 0.88]) if rng.uniform() < 0.7 else np.array([0.95, 0.8, 0.25])
    wear = to_unit(periodic_noise(rng, n, beta=1.5, min_period=2), 2.0)
    return np.clip(col * (0.55 + 0.45 * wear)[..., None], 0, 1)


GENERATORS: dict[str, TextureFn] = {
    fn.__name__: fn
    for fn in (
        photo,
        poster,
        plaster,
        stucco,
        wood,
        bricks,
        tiles,
        stripes,
        fabric,
        marble,
        metal,
        asphalt,
        foliage,
        grass,
        glass,
        tinted_glass,
        bark,
        car_paint,
        road_paint,
    )
}


# ------------------------------------------------------------------------------------------- mip lookup
def mip_pyramid(texture: np.ndarray, min_size: int = 4) -> list[np.ndarray]:
    """Box-filtered mip levels of a periodic texture [n,n,3], from n x n down to ``min_size``."""
    levels = [texture.astype(np.float32)]
    while levels[-1].shape[0] > min_size:
        t = levels[-1]
        levels.append(0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]))
    return levels


@dataclass
class MaterialBank:
    """All textures of a scene as one flat mip-map store, sampled by material id and metric (u, v)."""

    texels: np.ndarray
    """[total,4] float32 (RGB + padding): every level of every texture, flattened level by level."""
    level_offsets: np.ndarray
    """[L] int64 row offset of each level block (a block holds all materials at that level)."""
    size: int
    texel_size_m: np.ndarray
    """[M] float32 edge length of one level-0 texel on the surface, in metres."""
    names: list[str]

    @classmethod
    def from_textures(
        cls, textures: list[np.ndarray], texel_size_m: list[float], names: list[str]
    ) -> MaterialBank:
        """Build from M textures [n,n,3] that share one power-of-two size."""
        pyramids = [mip_pyramid(t) for t in textures]
        n_levels = len(pyramids[0])
        blocks = [np.stack([p[level] for p in pyramids]).reshape(-1, 3) for level in range(n_levels)]
        offsets = np.cumsum([0] + [len(b) for b in blocks[:-1]]).astype(np.int64)
        texels = np.concatenate(blocks)
        # Rows padded to 4 floats: 16-byte rows gather markedly faster than 12-byte ones.
        texels = np.concatenate([texels, np.zeros((len(texels), 1), texels.dtype)], axis=1)
        return cls(
            texels=np.ascontiguousarray(texels, dtype=np.float32),
            level_offsets=offsets,
            size=int(textures[0].shape[0]),
            texel_size_m=np.asarray(texel_size_m, dtype=np.float32),
            names=list(names),
        )

    @property
    def n_levels(self) -> int:
        return len(self.level_offsets)

    def sample(self, material: np.ndarray, uv: np.ndarray, footprint_m: np.ndarray) -> np.ndarray:
        """Trilinear lookup: material ids [P], surface coords [2,P] (m), footprints [P] (m) -> RGB [P,3]."""
        material = material.astype(np.int32)
        inv_texel = np.take(1.0 / self.texel_size_m, material)
        lam = np.log2(np.maximum(footprint_m * inv_texel, 1e-6, dtype=np.float32))
        np.clip(lam, 0.0, self.n_levels - 1.0, out=lam)
        l0 = lam.astype(np.int32)  # floor, lam >= 0
        w_upper = lam - l0
        l1 = np.minimum(l0 + 1, self.n_levels - 1)
        idx0, w0 = self._bilinear(material, uv, inv_texel, l0)
        idx1, w1 = self._bilinear(material, uv, inv_texel, l1)
        w0 *= 1.0 - w_upper
        w1 *= w_upper
        values = np.take(self.texels, np.concatenate([idx0, idx1]).ravel(), axis=0, mode="clip")
        values = values.reshape(8, -1, 4)
        weights = np.concatenate([w0, w1])
        out = values[0] * weights[0][:, None]
        for k in range(1, 8):
            out += values[k] * weights[k][:, None]
        return out[:, :3]

    def _bilinear(self, material: np.ndarray, uv: np.ndarray, inv_texel: np.ndarray, level: np.ndarray):
        """Row indices [4,P] and weights [4,P] of the four texels around each sample at ``level`` [P]."""
        size = np.right_shift(np.int32(self.size), level)
        scale = inv_texel / np.left_shift(np.int32(1), level).astype(np.float32)
        x = uv[0] * scale - 0.5
        y = uv[1] * scale - 0.5
        x0f, y0f = np.floor(x), np.floor(y)
        fx, fy = x - x0f, y - y0f
        mask = size - 1
        # Wrap with a bit mask: sizes are powers of two, and & works on negative ints (two's complement).
        x0 = x0f.astype(np.int32) & mask
        y0 = y0f.astype(np.int32) & mask
        x1 = (x0 + 1) & mask
        y1 = (y0 + 1) & mask
        base = np.take(self.level_offsets.astype(np.int32), level) + material * size * size
        row0 = base + y0 * size
        row1 = base + y1 * size
        idx = np.stack([row0 + x0, row0 + x1, row1 + x0, row1 + x1])
        gx, gy = 1.0 - fx, 1.0 - fy
        weights = np.stack([gx * gy, fx * gy, gx * fy, fx * fy])
        return idx, weights
