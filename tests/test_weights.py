"""Named weights and the download cache, against a loopback HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_checkpoint import fixture_state_dict, write_official_checkpoint

from dro_sfm.cli import main
from dro_sfm.errors import CheckpointError, DownloadError
from dro_sfm.models.weights import (
    REGISTRY,
    cache_dir,
    download_file,
    download_weights,
    is_available,
    resolve_weights,
    weights_path,
    weights_url,
)

pytestmark = pytest.mark.timeout(120)


@dataclass
class ServerState:
    """What the loopback server serves and how it misbehaves; ``requests`` records (path, Range header)."""

    files: dict[str, bytes]
    honour_range: bool = True
    drop_first_after: int | None = None  # first response: send this many body bytes, then close
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        state.requests.append((self.path, self.headers.get("Range")))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if requested and state.honour_range:
            start = int(requested.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        data = body[start:]
        if state.drop_first_after is not None and len(state.requests) == 1:
            self.wfile.write(data[: state.drop_first_after])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the transfer dies mid-body
            return
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - keep test output quiet
        pass


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> bytes:
    """An official-layout checkpoint (zip format) of the parity fixture weights."""
    path = tmp_path_factory.mktemp("served") / "indoor_scannet.ckpt"
    return write_official_checkpoint(path, fixture_state_dict()).read_bytes()


@pytest.fixture
def server(payload):
    state = ServerState(files={"/models/indoor_scannet.ckpt": payload})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/models"  # type: ignore[attr-defined]
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path, monkeypatch, server) -> Path:
    monkeypatch.setenv("DRO_SFM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DRO_SFM_WEIGHTS_BASE_URL", server.base_url)
    return tmp_path / "cache"


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_full_download_into_cache(cache, server, payload):
    path = download_weights("indoor_scannet", progress=False)
    assert path == cache / "weights" / "indoor_scannet.ckpt"
    assert path.read_bytes() == payload
    assert server.requests == [("/models/indoor_scannet.ckpt", None)]
    assert sorted(p.name for p in path.parent.iterdir()) == ["indoor_scannet.ckpt"]  # no .part/.lock left
    # Cached now: resolving the name makes no further request.
    assert resolve_weights("indoor_scannet") == path
    assert is_available(REGISTRY["indoor_scannet"])
    assert len(server.requests) == 1


def test_interrupted_download_resumes_with_range(tmp_path, server, payload):
    cut = len(payload) // 3
    server.drop_first_after = cut
    dest = tmp_path / "dl" / "model.ckpt"
    url = f"{server.base_url}/indoor_scannet.ckpt"
    with pytest.raises(DownloadError, match="interrupted.*run the command again to resume"):
        download_file(url, dest, retries=0, progress=False, timeout=10)
    part = dest.with_name("model.ckpt.part")
    assert not dest.exists()
    assert part.stat().st_size == cut
    download_file(url, dest, retries=0, progress=False, timeout=10)
    assert server.requests[1] == ("/models/indoor_scannet.ckpt", f"bytes={cut}-")
    assert dest.read_bytes() == payload
    assert not part.exists()


def test_interruption_is_resumed_within_one_call(tmp_path, server, payload):
    server.drop_first_after = 12345
    dest = download_file(f"{server.base_url}/indoor_scannet.ckpt", tmp_path / "m.ckpt", progress=False)
    assert [r[1] for r in server.requests] == [None, "bytes=12345-"]
    assert dest.read_bytes() == payload


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, payload):
    server.honour_range = False
    server.drop_first_after = len(payload) // 2
    dest = download_file(f"{server.base_url}/indoor_scannet.ckpt", tmp_path / "m.ckpt", progress=False)
    assert server.requests[1][1] == f"bytes={len(payload) // 2}-"  # asked to resume, got the whole file
    assert dest.read_bytes() == payload


def test_complete_part_file_is_finished_without_body(tmp_path, server, payload):
    dest = tmp_path / "m.ckpt"
    dest.with_name("m.ckpt.part").write_bytes(payload)  # an earlier run stopped just before the rename
    download_file(f"{server.base_url}/indoor_scannet.ckpt", dest, progress=False,
                  sha256=hashlib.sha256(payload).hexdigest())
    assert server.requests == [("/models/indoor_scannet.ckpt", f"bytes={len(payload)}-")]
    assert dest.read_bytes() == payload


def test_checksum_mismatch_leaves_no_file(tmp_path, server, payload):
    corrupt = bytearray(payload)
    corrupt[len(corrupt) // 2] ^= 0xFF
    server.files["/models/corrupt.ckpt"] = bytes(corrupt)
    dest = tmp_path / "m.ckpt"
    with pytest.raises(DownloadError, match="corrupt: sha256 .* does not match"):
        download_file(f"{server.base_url}/corrupt.ckpt", dest, progress=False,
                      sha256=hashlib.sha256(payload).hexdigest())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match=f"has {len(payload)} bytes, expected {len(payload) + 1}"):
        download_file(f"{server.base_url}/corrupt.ckpt", dest, progress=False, size=len(payload) + 1)
    assert list(tmp_path.iterdir()) == []


def test_offline_gives_manual_instructions(tmp_path, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("DRO_SFM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DRO_SFM_WEIGHTS_BASE_URL", f"http://127.0.0.1:{port}/models")
    with pytest.raises(DownloadError) as err:
        download_weights("indoor_scannet", progress=False)
    message = str(err.value)
    assert f"could not reach 127.0.0.1:{port}" in message
    assert str(tmp_path / "cache" / "weights" / "indoor_scannet.ckpt") in message
    assert "DRO_SFM_CACHE" in message
    assert not (tmp_path / "cache" / "weights" / "indoor_scannet.ckpt").exists()


def test_http_error_is_reported(tmp_path, server):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server.base_url}/absent.ckpt", tmp_path / "m.ckpt", progress=False)
    assert not (tmp_path / "m.ckpt").exists()


def test_cli_download_list_and_info(cache, server):
    runner = CliRunner()
    result = runner.invoke(main, ["weights", "download", "indoor_scannet"])
    assert result.exit_code == 0, result.output
    path = cache / "weights" / "indoor_scannet.ckpt"
    assert str(path) in result.output
    listing = runner.invoke(main, ["weights", "list"])
    assert listing.exit_code == 0
    row = next(line for line in listing.output.splitlines() if line.startswith("indoor_scannet "))
    assert row.split() == ["indoor_scannet", "it12-h-out", "0.2-10", "240x320", "-1,+1", "yes"]
    assert next(line for line in listing.output.splitlines() if line.startswith("outdoor_kitti ")).endswith("no")

    for target in (str(path), "indoor_scannet"):
        info = runner.invoke(main, ["weights", "info", target])
        assert info.exit_code == 0, info.output
        fields = dict(re.findall(r"^([a-z ]+):\s+(.+)$", info.output, flags=re.M))
        assert fields["version"] == "it12-h-out"
        assert fields["depth range"] == "0.2 - 10 m"
        assert fields["image shape"] == "240 x 320 (H x W)"
        assert (fields["epoch"], fields["tensors"]) == ("37", "452")
        assert fields["training"] == "supervised, metric depth (SupModelMF)"
        assert re.search(r"^\s+fnet\s+3,520,448$", info.output, flags=re.M)
        assert re.search(r"^\s+total\s+18,969,159$", info.output, flags=re.M)

    assert len(server.requests) == 1
    again = runner.invoke(main, ["weights", "download", "indoor_scannet", "--force"])
    assert again.exit_code == 0 and len(server.requests) == 2


def test_cli_info_describes_dro_sfm_model_files(tmp_path):
    """`weights info` reads dro-sfm's own model files (the shipped ones, exported training runs), not only
    official checkpoints: it used to demand an official `model.depth_net.version` and fail on both."""
    from dro_sfm.models.config import small_config
    from dro_sfm.models.dro import DroNet
    from dro_sfm.models.predict import DroModel, ModelInfo

    cfg = dataclasses.replace(small_config(), solver="deq")
    path = tmp_path / "mine.pt"
    DroModel(DroNet(cfg), ModelInfo(name="mine", image_shape=(96, 128), notes={"training_step": 7})).save(path)
    info = CliRunner().invoke(main, ["weights", "info", str(path)])
    assert info.exit_code == 0, info.output
    fields = dict(re.findall(r"^([a-z ]+):\s+(.+)$", info.output, flags=re.M))
    assert fields["layout"] == "dro-sfm model file" and fields["name"] == "mine"
    assert fields["solver"] == f"deq (anderson, tol {cfg.deq.tol:g}, budget {cfg.deq.max_steps})"
    assert fields["image shape"] == "96 x 128 (H x W)"
    assert (fields["trained"], fields["training step"]) == ("no (random weights)", "7")
    total = sum(p.numel() for p in DroNet(cfg).parameters())
    assert re.search(rf"^\s+total\s+{total:,}$", info.output, flags=re.M)
    shipped = CliRunner().invoke(main, ["weights", "info", "default"])
    assert shipped.exit_code == 0, shipped.output
    assert "3 x 4 unrolled steps" in shipped.output


def test_cli_reports_errors_without_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("DRO_SFM_CACHE", str(tmp_path))
    result = CliRunner().invoke(main, ["weights", "info", "indoor_scannet"])
    assert result.exit_code == 1
    assert "not in the cache" in result.output and "Traceback" not in result.output
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    result = CliRunner().invoke(main, ["weights", "info", str(junk)])
    assert result.exit_code == 1 and "truncated or not a torch checkpoint" in result.output


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("DRO_SFM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "dro-sfm"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "dro-sfm"
    monkeypatch.setenv("DRO_SFM_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    assert weights_path(REGISTRY["outdoor_kitti"]) == tmp_path / "mine" / "weights" / "outdoor_kitti.ckpt"


def test_registry_and_url_override(monkeypatch):
    assert set(REGISTRY) >= {"outdoor_kitti", "outdoor_kitti_selfsup", "indoor_scannet",
                             "indoor_scannet_view5", "indoor_scannet_selfsup"}
    monkeypatch.delenv("DRO_SFM_WEIGHTS_BASE_URL", raising=False)
    assert weights_url(REGISTRY["indoor_scannet_view5"]) == (
        "https://virutalbuy-public.oss-cn-hangzhou.aliyuncs.com/share/dro-sfm/models/indoor_scannet_view5.ckpt"
    )
    monkeypatch.setenv("DRO_SFM_WEIGHTS_BASE_URL", "http://mirror.example/dro/")
    assert weights_url(REGISTRY["outdoor_kitti"]) == "http://mirror.example/dro/outdoor_kitti.ckpt"


def test_resolve_weights_paths_and_names(tmp_path, monkeypatch):
    monkeypatch.setenv("DRO_SFM_CACHE", str(tmp_path / "cache"))
    existing = tmp_path / "mine.pt"
    existing.write_bytes(b"x")
    assert resolve_weights(existing) == existing
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        resolve_weights(tmp_path / "absent.ckpt")
    with pytest.raises(CheckpointError, match="unknown weights 'nope'.*indoor_scannet"):
        resolve_weights("nope")
    with pytest.raises(CheckpointError, match="run `dro-sfm weights download outdoor_kitti`"):
        resolve_weights("outdoor_kitti", download=False)


def test_concurrent_download_of_the_same_file_is_refused(tmp_path, server):
    fcntl = pytest.importorskip("fcntl")
    dest = tmp_path / "m.ckpt"
    with open(tmp_path / "m.ckpt.part.lock", "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match="another dro-sfm process is downloading"):
            download_file(f"{server.base_url}/indoor_scannet.ckpt", dest, progress=False)
    assert server.requests == [] and not dest.exists()
