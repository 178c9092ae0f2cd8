"""Interactive 3-D viewer of a run directory (Open3D ``VisualizerWithKeyCallback``) and headless screenshots.

Layers: the fused point cloud, the TSDF mesh, camera frustums and the trajectory; stepping through the
frames highlights each frame's own back-projected depth. The same key actions drive the interactive window
and scripted screenshots (``keys=["N", "N", "T"]``), so a screenshot shows what a user would see.

Headless rendering uses the same visualizer with a hidden window: Open3D 0.20 then renders through an EGL
offscreen context (Mesa llvmpipe on machines without a GPU), so no X server is needed; under a desktop it
uses the normal GLX context.
"""

from __future__ import annotations

import copy
import io
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dro_sfm.data.atomic import atomic_write_bytes
from dro_sfm.errors import InputError, OutputError
from dro_sfm.geometry.pose import invert_rigid
from dro_sfm.recon.fusion import backproject, valid_mask
from dro_sfm.recon.run_dir import RunCameras, RunLayout, load_cameras, read_frame

logger = logging.getLogger(__name__)

LAYERS = ("cloud", "mesh", "frustums", "trajectory")
KEY_HELP: tuple[tuple[str, str], ...] = (
    ("C", "toggle the point cloud"),
    ("M", "toggle the mesh"),
    ("F", "toggle the camera frustums"),
    ("T", "toggle the trajectory"),
    ("N", "next frame: highlight its back-projected depth (orange) and camera (red)"),
    ("P", "previous frame"),
    ("V", "look through the highlighted frame's camera"),
    ("A", "overview of the whole scene"),
    ("H", "print this help"),
    ("L", "lighting on/off (Open3D)   +/- point size (Open3D)   Q/Esc quit"),
)
KEYS = tuple(k for k, _ in KEY_HELP if len(k) == 1 and k != "L")
WINDOW_TITLE = "dro-sfm viewer | C cloud  M mesh  F frustums  T trajectory  N/P frame  V view  A all  H help"
HIGHLIGHT_RGB = (1.0, 0.45, 0.0)
CURRENT_FRUSTUM_RGB = (0.9, 0.0, 0.0)
TRAJECTORY_RGB = (0.1, 0.1, 0.1)


def help_text() -> str:
    """Key help, one key per line."""
    return "dro-sfm viewer keys:\n" + "\n".join(f"  {k:<3} {what}" for k, what in KEY_HELP)


def parse_keys(keys: str | Iterable[str]) -> list[str]:
    """Scripted key presses from ``"N,N,T"`` or a list; InputError for keys the viewer does not handle."""
    items = keys.split(",") if isinstance(keys, str) else list(keys)
    out = [k.strip().upper() for k in items if k.strip()]
    bad = [k for k in out if k not in KEYS]
    if bad:
        raise InputError(f"unknown viewer key(s) {bad}; scripted keys must be among {', '.join(KEYS)}")
    return out


@dataclass
class ViewerState:
    """What the viewer shows: visible layers, the highlighted frame and the requested viewpoint."""

    n_frames: int
    available: dict[str, bool]
    visible: dict[str, bool] = field(default_factory=dict)
    frame: int | None = None
    view: str | int = "overview"  # "overview", or the index (position) of the camera to look through

    def __post_init__(self) -> None:
        if not self.visible:
            self.visible = {"cloud": self.available["cloud"],
                            "mesh": self.available["mesh"] and not self.available["cloud"],
                            "frustums": True, "trajectory": True}

    def apply(self, key: str) -> str:
        """Apply one key action; returns a one-line description for the terminal."""
        layer = {"C": "cloud", "M": "mesh", "F": "frustums", "T": "trajectory"}.get(key)
        if layer is not None:
            if not self.available[layer]:
                return f"no {layer} in this run (create it with dro-sfm export DIR --to " \
                       f"{'ply' if layer == 'cloud' else 'mesh'})"
            self.visible[layer] = not self.visible[layer]
            return f"{layer} {'on' if self.visible[layer] else 'off'}"
        if key in ("N", "P"):
            step = 1 if key == "N" else -1
            if self.frame is None:
                self.frame = 0 if step > 0 else self.n_frames - 1
            else:
                self.frame = (self.frame + step) % self.n_frames
            return f"frame {self.frame} ({self.frame + 1} of {self.n_frames})"
        if key == "V":
            self.view = self.frame if self.frame is not None else 0
            return f"view through the camera of frame {self.view}"
        if key == "A":
            self.view = "overview"
            return "overview"
        if key == "H":
            return help_text()
        raise InputError(f"unknown viewer key {key!r}")


class RunScene:
    """The Open3D geometries of a run directory (legacy geometry types, built once; highlights on demand)."""

    def __init__(self, root: str | os.PathLike, conf_threshold: float = 0.5):
        import open3d as o3d

        self._o3d = o3d
        self.root = Path(root)
        self.layout = RunLayout(root)
        self.cameras: RunCameras = load_cameras(root)
        self.conf_threshold = conf_threshold
        self.cloud = self._read_cloud()
        self.mesh = self._read_mesh()
        poses = self.cameras.poses()
        self.centres = poses[:, :3, 3]
        self.centre, self.extent = self._bounds()
        self.frustum_depth = 0.05 * self.extent
        self.frustums = self._frustum_lines(range(len(self.cameras.frames)), None)
        self.trajectory = self._trajectory_lines()
        self._highlight_cache: tuple[int, object, object] | None = None

    def _read_cloud(self):
        path = self.layout.pointcloud
        if not path.exists():
            return None
        pcd = self._o3d.io.read_point_cloud(str(path))
        if pcd.is_empty():
            logger.warning("%s is empty", path)
            return None
        return pcd

    def _read_mesh(self):
        path = self.layout.mesh
        if not path.exists():
            return None
        mesh = self._o3d.io.read_triangle_mesh(str(path))
        if len(mesh.triangles) == 0:
            logger.warning("%s has no triangles", path)
            return None
        if not mesh.has_vertex_normals():
            mesh.compute_vertex_normals()
        return mesh

    def _bounds(self) -> tuple[np.ndarray, float]:
        """Centre [3] and diagonal length of the box around cameras, cloud and mesh."""
        pts = [self.centres]
        for geom in (self.cloud, self.mesh):
            if geom is not None:
                box = geom.get_axis_aligned_bounding_box()
                pts.append(np.stack([box.min_bound, box.max_bound]))
        allp = np.concatenate(pts)
        lo, hi = allp.min(0), allp.max(0)
        return (lo + hi) / 2, float(max(np.linalg.norm(hi - lo), 1e-3))

    def _frustum_lines(self, positions: Iterable[int], color: Sequence[float] | None):
        """LineSet of the frustums of the cameras at ``positions`` (viridis by index unless ``color``)."""
        from matplotlib import colormaps

        o3d, cams = self._o3d, self.cameras
        W, H, s = cams.width, cams.height, self.frustum_depth
        n = len(cams.frames)
        pts, lines, cols = [], [], []
        pix = np.array([[0, 0], [W - 1, 0], [W - 1, H - 1], [0, H - 1], [(W - 1) / 2, -0.25 * H]], dtype=np.float64)
        edges = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1), (1, 5), (5, 2)]
        for pos in positions:
            rec = cams.frames[pos]
            rays = np.linalg.solve(rec.K, np.concatenate([pix, np.ones((5, 1))], axis=1).T).T * s
            local = np.concatenate([np.zeros((1, 3)), rays])
            world = local @ rec.T_world_from_cam[:3, :3].T + rec.T_world_from_cam[:3, 3]
            base = len(pts) * 6
            pts.append(world)
            lines += [(base + a, base + b) for a, b in edges]
            c = color if color is not None else colormaps["viridis"](pos / max(n - 1, 1))[:3]
            cols += [c] * len(edges)
        ls = o3d.geometry.LineSet()
        if pts:
            ls.points = o3d.utility.Vector3dVector(np.concatenate(pts))
            ls.lines = o3d.utility.Vector2iVector(np.asarray(lines, dtype=np.int32))
            ls.colors = o3d.utility.Vector3dVector(np.asarray(cols, dtype=np.float64))
        return ls

    def _trajectory_lines(self):
        o3d = self._o3d
        ls = o3d.geometry.LineSet()
        ls.points = o3d.utility.Vector3dVector(self.centres)
        if len(self.centres) > 1:
            idx = np.arange(len(self.centres) - 1)
            ls.lines = o3d.utility.Vector2iVector(np.stack([idx, idx + 1], axis=1).astype(np.int32))
            ls.colors = o3d.utility.Vector3dVector(np.tile(TRAJECTORY_RGB, (len(idx), 1)))
        return ls

    def highlight(self, pos: int) -> tuple[object, object]:
        """(point cloud of frame ``pos``'s own confident depth in orange, its frustum in red)."""
        if self._highlight_cache is not None and self._highlight_cache[0] == pos:
            return self._highlight_cache[1], self._highlight_cache[2]
        o3d, rec = self._o3d, self.cameras.frames[pos]
        frame = read_frame(self.root, self.cameras, rec, with_image=False)
        mask = valid_mask(frame.depth, frame.confidence, self.conf_threshold)
        pts = backproject(frame.depth, rec.K, rec.T_world_from_cam, mask)
        # The frame's points lie on the fused surface and would z-fight with the cloud; moving them 2% towards
        # their camera along the viewing rays keeps their image in that camera and puts them in front.
        centre = rec.T_world_from_cam[:3, 3]
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(centre + 0.98 * (pts - centre)))
        pcd.paint_uniform_color(HIGHLIGHT_RGB)
        frustum = self._frustum_lines([pos], CURRENT_FRUSTUM_RGB)
        self._highlight_cache = (pos, pcd, frustum)
        return pcd, frustum

    def point_spacing(self) -> float:
        """Median nearest-neighbour distance of the cloud (from a sample), metres; 0 without a cloud."""
        if self.cloud is None or len(self.cloud.points) < 2:
            return 0.0
        tree = self._o3d.geometry.KDTreeFlann(self.cloud)
        pts = np.asarray(self.cloud.points)
        sample = np.random.default_rng(0).choice(len(pts), min(500, len(pts)), replace=False)
        d = [np.sqrt(tree.search_knn_vector_3d(pts[i], 2)[2][1]) for i in sample]
        return float(np.median(d))


class Viewer:
    """Binds a ``RunScene`` and a ``ViewerState`` to an Open3D ``VisualizerWithKeyCallback`` window."""

    def __init__(self, scene: RunScene, state: ViewerState, width: int, height: int, visible: bool,
                 echo: Callable[[str], None], look_focal: float | None = None):
        import open3d as o3d

        self._o3d = o3d
        self.scene, self.state, self.echo = scene, state, echo
        # Focal length (window pixels) used when looking through a camera; None fits the image in the window.
        self.look_focal = look_focal
        self.vis = o3d.visualization.VisualizerWithKeyCallback()
        # Headless, GLFW warns that it found no display before Open3D falls back to EGL: not news to the user.
        level = o3d.utility.VerbosityLevel.Warning if visible else o3d.utility.VerbosityLevel.Error
        with o3d.utility.VerbosityContextManager(level):
            created = self.vis.create_window(window_name=WINDOW_TITLE, width=width, height=height, visible=visible)
        if not created:
            where = "a window" if visible else "an offscreen OpenGL context"
            raise OutputError(f"Open3D could not create {where}. "
                              + ("Run on a desktop, with ssh -X, or under xvfb-run; or use --screenshot. "
                                 if visible else "Install EGL and Mesa (libegl1, libgl1, mesa drivers) "
                                 "or run under xvfb-run. "))
        self.width, self.height = width, height
        opt = self.vis.get_render_option()
        opt.background_color = np.array([1.0, 1.0, 1.0])
        opt.point_size = 2.0
        self._shown: dict[str, object] = {}
        self._init_geometries()
        for key in KEYS:
            self.vis.register_key_callback(ord(key), self._callback(key))

    def _callback(self, key: str) -> Callable[[object], bool]:
        def on_key(_vis: object) -> bool:
            self.press(key)
            return True
        return on_key

    def _layer_geometries(self) -> dict[str, object]:
        s = self.scene
        return {"cloud": s.cloud, "mesh": s.mesh, "frustums": s.frustums, "trajectory": s.trajectory}

    def _init_geometries(self) -> None:
        # Add everything once so the bounding box (which sets Open3D's near/far planes) covers the whole
        # scene, then hide what should start hidden.
        for name, geom in self._layer_geometries().items():
            if geom is not None:
                self.vis.add_geometry(geom, reset_bounding_box=True)
                self._shown[name] = geom
        self.sync()
        self.apply_view()

    def sync(self) -> None:
        """Add/remove geometries so the window matches ``state``."""
        wanted = {name: geom for name, geom in self._layer_geometries().items()
                  if geom is not None and self.state.visible.get(name, False)}
        if self.state.frame is not None:
            pcd, frustum = self.scene.highlight(self.state.frame)
            wanted["highlight_points"], wanted["highlight_frustum"] = pcd, frustum
        for name in list(self._shown):
            if name not in wanted or wanted[name] is not self._shown[name]:
                self.vis.remove_geometry(self._shown.pop(name), reset_bounding_box=False)
        for name, geom in wanted.items():
            if name not in self._shown:
                self.vis.add_geometry(geom, reset_bounding_box=False)
                self._shown[name] = geom

    def press(self, key: str) -> None:
        """One key action: update the state, the geometries and (for V/A) the viewpoint."""
        self.echo(self.state.apply(key))
        self.sync()
        if key in ("V", "A"):
            self.apply_view()

    def apply_view(self) -> None:
        if self.state.view == "overview":
            self._overview()
        else:
            self._look_through(int(self.state.view))

    def _overview(self) -> None:
        """Behind and above the trajectory, looking at the scene along the mean viewing direction."""
        from dro_sfm.viz.summary import estimate_up

        poses = self.scene.cameras.poses()
        up = estimate_up(poses)
        fwd = poses[:, :3, 2].mean(axis=0)
        fwd = fwd / max(np.linalg.norm(fwd), 1e-9)
        front = -fwd + 0.8 * up  # Open3D's "front" points from the look-at point towards the eye
        vc = self.vis.get_view_control()
        vc.unset_constant_z_near()
        vc.set_lookat(self.scene.centre)
        vc.set_front(front / np.linalg.norm(front))
        vc.set_up(up)
        vc.set_zoom(0.5)
        self.vis.get_render_option().point_size = 3.0

    def _look_through(self, pos: int) -> None:
        """Set the viewpoint to camera ``pos``. Open3D's legacy view puts the principal point at the window
        centre and uses one focal length (fy); ``view_run`` compensates for both when taking screenshots."""
        o3d, cams = self._o3d, self.scene.cameras
        rec = cams.frames[pos]
        focal = self.look_focal or rec.K[1, 1] * min(self.width / cams.width, self.height / cams.height)
        params = o3d.camera.PinholeCameraParameters()
        params.intrinsic = o3d.camera.PinholeCameraIntrinsic(self.width, self.height, focal, focal,
                                                             (self.width - 1) / 2, (self.height - 1) / 2)
        params.extrinsic = invert_rigid(rec.T_world_from_cam)
        vc = self.vis.get_view_control()
        # The default near plane follows the scene's bounding box and would clip nearby surfaces.
        vc.set_constant_z_near(max(1e-3, 1e-3 * self.scene.extent))
        if not vc.convert_from_pinhole_camera_parameters(params, allow_arbitrary=True):
            logger.warning("Open3D refused the camera of frame %s", rec.name)
        spacing = self.scene.point_spacing()
        if spacing > 0:
            # Splat points about as large as the gaps between them as seen from this camera (sized for the
            # nearer points, so that near surfaces have no holes; far ones overlap a little).
            cam = (np.asarray(self.scene.cloud.points) - rec.T_world_from_cam[:3, 3]) @ rec.T_world_from_cam[:3, :3]
            z = cam[:, 2][cam[:, 2] > 0]
            near = float(np.percentile(z, 5)) if z.size else self.scene.extent
            px = spacing * focal / max(near, 1e-6)
            self.vis.get_render_option().point_size = float(np.clip(1.5 * px, 2.0, 20.0))

    def capture(self) -> np.ndarray:
        """Render and return the window as RGB [H,W,3] uint8."""
        self.vis.poll_events()
        self.vis.update_renderer()
        buf = np.asarray(self.vis.capture_screen_float_buffer(do_render=True))
        return np.round(np.clip(buf, 0.0, 1.0) * 255.0).astype(np.uint8)

    def run(self) -> None:
        self.vis.run()

    def close(self) -> None:
        self.vis.destroy_window()


def view_run(root: str | os.PathLike, *, screenshot: str | os.PathLike | None = None, frame: int | None = None,
             from_camera: int | None = None, keys: str | Iterable[str] = (), width: int | None = None,
             height: int | None = None, conf_threshold: float = 0.5,
             echo: Callable[[str], None] = logger.info) -> np.ndarray | None:
    """Open the viewer on run directory ``root``, or with ``screenshot`` render headless to that PNG.

    ``frame`` highlights that frame (0-based position in cameras.json); ``from_camera`` looks through that
    camera; ``keys`` are applied in order before the window opens or the screenshot is taken. A screenshot
    through a camera has that camera's image geometry (principal point, fx and fy) at ``width`` pixels
    (default: >= 640); otherwise the window is ``width`` x ``height`` (default 1024x768). Returns the
    screenshot [H,W,3] uint8 (None when interactive).
    """
    key_list = parse_keys(keys)
    scene = RunScene(root, conf_threshold=conf_threshold)
    n = len(scene.cameras.frames)
    for name, value in (("--frame", frame), ("--from-camera", from_camera)):
        if value is not None and not 0 <= value < n:
            raise InputError(f"{name} {value} is out of range: the run in {root} has frames 0..{n - 1}")
    if scene.cloud is None and scene.mesh is None:
        echo(f"{root} has neither pointcloud.ply nor mesh.ply; showing cameras only "
             "(create them with dro-sfm export DIR --to ply,mesh)")
    available = {"cloud": scene.cloud is not None, "mesh": scene.mesh is not None, "frustums": True,
                 "trajectory": n > 1}
    state = ViewerState(n_frames=n, available=available, frame=frame,
                        view=from_camera if from_camera is not None else "overview")
    if screenshot is None:
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise OutputError("no display for an interactive window (DISPLAY is not set); use --screenshot "
                              "PNG to render offscreen, or run on a desktop / with ssh -X / under xvfb-run")
        echo(help_text())
        viewer = Viewer(scene, state, width or 1024, height or 768, visible=True, echo=echo)
        try:
            for key in key_list:
                viewer.press(key)
            viewer.run()
        finally:
            viewer.close()
        return None

    # Dry-run the keys on a copy of the state to learn the final viewpoint, which sizes the window.
    final = copy.deepcopy(state)
    for key in key_list:
        final.apply(key)
    crop = None
    if final.view == "overview":
        win_w, win_h, focal = width or 1024, height or 768, None
    else:
        crop = CameraCrop.for_camera(scene.cameras, int(final.view), width)
        win_w, win_h, focal = crop.window_width, crop.window_height, crop.focal
    viewer = Viewer(scene, state, win_w, win_h, visible=False, echo=echo, look_focal=focal)
    try:
        for key in key_list:
            viewer.press(key)
        rgb = viewer.capture()
    finally:
        viewer.close()
    if crop is not None:
        rgb = crop.apply(rgb)
    _write_png(screenshot, rgb)
    return rgb


@dataclass
class CameraCrop:
    """How to render a camera's exact view with Open3D's centred, single-focal camera: render a larger
    window with focal ``focal`` and resample the sub-window ``box`` (left, top, right, bottom in pixel-edge
    coordinates) to ``out_size``, so the principal point and fx/fy of K are honoured."""

    window_width: int
    window_height: int
    focal: float
    box: tuple[float, float, float, float]
    out_size: tuple[int, int]

    @staticmethod
    def for_camera(cameras: RunCameras, pos: int, out_width: int | None = None) -> CameraCrop:
        K, W, H = cameras.frames[pos].K, cameras.width, cameras.height
        s = (out_width / W) if out_width else float(max(1, int(np.ceil(640 / W))))
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        focal = fy * s
        # Image edge coordinate e (0..W) is pixel centre e - 0.5, i.e. the ray (e - 0.5 - cx) / fx; the window
        # maps a ray r to edge coordinate Ww / 2 + focal * r.
        half_w = focal * max(cx + 0.5, W - 0.5 - cx) / fx
        half_h = focal * max(cy + 0.5, H - 0.5 - cy) / fy
        ww, wh = int(np.ceil(2 * half_w)) + 2, int(np.ceil(2 * half_h)) + 2
        box = (ww / 2 + focal * (-0.5 - cx) / fx, wh / 2 + focal * (-0.5 - cy) / fy,
               ww / 2 + focal * (W - 0.5 - cx) / fx, wh / 2 + focal * (H - 0.5 - cy) / fy)
        return CameraCrop(ww, wh, focal, box, (int(round(W * s)), int(round(H * s))))

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Resample the window capture [Hw,Ww,3] to the camera's image [H*s,W*s,3]."""
        from PIL import Image

        return np.asarray(Image.fromarray(rgb).resize(self.out_size, Image.BILINEAR, box=self.box))


def _write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
