"""Model weights by name: the released DRO checkpoints, weights shipped in the package, and a download cache.

Downloads go through urllib into ``<cache>/weights/<file>.part`` and are renamed to the final name only
when complete (and, when known, of the right size and sha256), so a reader never sees a partial file. An
interrupted download resumes from where it stopped with an HTTP Range request.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from tqdm import tqdm

from dro_sfm.errors import CheckpointError, DownloadError, OutputError

try:  # advisory locks keep two processes from appending to the same .part file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

OFFICIAL_BASE_URL = "https://virutalbuy-public.oss-cn-hangzhou.aliyuncs.com/share/dro-sfm/models"
BASE_URL_ENV = "DRO_SFM_WEIGHTS_BASE_URL"
CACHE_ENV = "DRO_SFM_CACHE"
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class WeightsEntry:
    """One named set of weights: where the file comes from and what network it holds."""

    name: str
    source: Literal["url", "package"]  # "url": downloaded into the cache; "package": in dro_sfm/weights/
    filename: str
    version: str                       # official version string the file is built for
    min_depth: float
    max_depth: float
    image_shape: tuple[int, int]       # (H, W) default processing size (official models: their training size)
    ref_offsets: tuple[int, ...]       # frame offsets of the reference views used in training
    description: str
    url: str | None = None             # official address; DRO_SFM_WEIGHTS_BASE_URL replaces its folder
    sha256: str | None = None          # checked after download when known
    size: int | None = None            # bytes, checked after download when known


def _official(name: str, version: str, depth: tuple[float, float], shape: tuple[int, int],
              refs: tuple[int, ...], description: str) -> WeightsEntry:
    filename = f"{name}.ckpt"
    return WeightsEntry(
        name=name, source="url", filename=filename, version=version, min_depth=depth[0],
        max_depth=depth[1], image_shape=shape, ref_offsets=refs, description=description,
        url=f"{OFFICIAL_BASE_URL}/{filename}",
    )


# The released checkpoints (spec §12). Their sha256 and sizes are not published, so none is checked.
REGISTRY: dict[str, WeightsEntry] = {
    entry.name: entry
    for entry in (
        _official("outdoor_kitti", "it12-h", (0.2, 80.0), (320, 960), (-1, 1),
                  "KITTI, supervised with ground-truth depth (train_kitti_mf_gt)"),
        _official("outdoor_kitti_selfsup", "it8-seq4-inter-out", (0.5, 80.0), (320, 960), (-1, 1),
                  "KITTI, self-supervised, hidden size 64 (train_kitti_mf_selfsup)"),
        _official("indoor_scannet", "it12-h-out", (0.2, 10.0), (240, 320), (-1, 1),
                  "ScanNet, supervised, 3 views (train_scannet_mf_gt_view3)"),
        _official("indoor_scannet_view5", "it12-h-out", (0.2, 10.0), (384, 512), (-2, -1, 1, 2),
                  "ScanNet, supervised, 5 views in training (train_scannet_mf_gt_view5)"),
        _official("indoor_scannet_selfsup", "it12-h-out", (0.2, 10.0), (320, 512), (-1, 1),
                  "ScanNet, self-supervised, 3 views (train_scannet_mf_selfsup_view3)"),
    )
}


# Our own default model, trained on synthetic data only and shipped inside the package (model card:
# dro_sfm/weights/README.md).
DEFAULT_WEIGHTS = "default"
REGISTRY[DEFAULT_WEIGHTS] = WeightsEntry(
    name=DEFAULT_WEIGHTS, source="package", filename="default_small.pt", version="dro-sfm small preset",
    min_depth=0.2, max_depth=80.0, image_shape=(240, 320), ref_offsets=(-1, 1),  # trained at 128x160
    description="dro-sfm default: small preset trained on synthetic indoor + outdoor scenes (CPU)",
)
# Its DEQ variant: the default model fine-tuned in the deep-equilibrium mode (rounds 5, 6, 9 and 11 of the DEQ
# configs, configs/synthetic_small_deq_v11.yaml last), for `reconstruct --solver deq` (docs/deq.md section 7).
DEFAULT_DEQ_WEIGHTS = "default-deq"
REGISTRY[DEFAULT_DEQ_WEIGHTS] = WeightsEntry(
    name=DEFAULT_DEQ_WEIGHTS, source="package", filename="default_small_deq.pt", version="dro-sfm small preset, DEQ",
    min_depth=0.2, max_depth=80.0, image_shape=(240, 320), ref_offsets=(-1, 1),  # trained at 128x160
    description="DEQ variant of the default model: fine-tuned in DEQ mode on the same synthetic data (CPU)",
)


def register_weights(entry: WeightsEntry) -> None:
    """Add (or replace) a registry entry, e.g. a model shipped in dro_sfm/weights/ (``source='package'``)."""
    if entry.source == "url" and not entry.url:
        raise ValueError(f"weights entry {entry.name!r} has source='url' but no url")
    REGISTRY[entry.name] = entry


def cache_dir() -> Path:
    """``$DRO_SFM_CACHE``, else ``$XDG_CACHE_HOME/dro-sfm``, else ``~/.cache/dro-sfm``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "dro-sfm"


def weights_path(entry: WeightsEntry) -> Path:
    """Where an entry's file lives: the package folder or ``<cache>/weights/``."""
    if entry.source == "package":
        return PACKAGE_WEIGHTS_DIR / entry.filename
    return cache_dir() / "weights" / entry.filename


def weights_url(entry: WeightsEntry) -> str:
    """Download address; ``$DRO_SFM_WEIGHTS_BASE_URL`` replaces its folder when set (mirrors, tests)."""
    base = os.environ.get(BASE_URL_ENV)
    if base:
        return f"{base.rstrip('/')}/{urllib.parse.quote(entry.filename)}"
    if not entry.url:
        raise DownloadError(
            f"weights {entry.name!r} are shipped with the package and have no download address"
        )
    return entry.url


def is_available(entry: WeightsEntry) -> bool:
    """True when the entry's file is present locally (cached or shipped)."""
    return weights_path(entry).is_file()


def get_entry(name: str) -> WeightsEntry:
    """Registry entry by name; CheckpointError listing the known names otherwise."""
    if name not in REGISTRY:
        raise _unknown_name(name)
    return REGISTRY[name]


def _unknown_name(name: str) -> CheckpointError:
    known = ", ".join(sorted(REGISTRY))
    return CheckpointError(
        f"unknown weights {name!r}: neither an existing file nor a registered name (known: {known}); "
        "see `dro-sfm weights list`"
    )


def download_weights(name: str, *, force: bool = False, progress: bool = True, retries: int = 3) -> Path:
    """Download a registered checkpoint into the cache (no-op when present unless ``force``); its path."""
    entry = get_entry(name)
    target = weights_path(entry)
    if entry.source == "package":
        if not target.is_file():
            raise CheckpointError(
                f"{target}: weights {name!r} should ship with dro-sfm but the file is missing; "
                "reinstall dro-sfm"
            )
        return target
    if target.is_file() and not force:
        return target
    hint = f"set {CACHE_ENV} to a directory whose weights/ folder holds {entry.filename}"
    return download_file(
        weights_url(entry), target, sha256=entry.sha256, size=entry.size, progress=progress,
        retries=retries, restart=force, manual_hint=hint,
    )


def resolve_weights(name_or_path: str | os.PathLike, *, download: bool = True, progress: bool = True) -> Path:
    """A checkpoint path from an existing file, a registered name (cached, shipped, or downloaded now)."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text in REGISTRY:
        entry = REGISTRY[text]
        if is_available(entry):
            return weights_path(entry)
        if not download:
            raise CheckpointError(
                f"weights {text!r} are not in the cache ({weights_path(entry)}); "
                f"run `dro-sfm weights download {text}`"
            )
        return download_weights(text, progress=progress)
    if path.exists():
        raise CheckpointError(f"{path}: is not a file; give a checkpoint file or a registered weights name")
    if os.sep in text or path.suffix in {".ckpt", ".pt", ".pth", ".tar"}:
        raise CheckpointError(f"{path}: no such checkpoint file; check the path")
    raise _unknown_name(text)


# --- download ---------------------------------------------------------------------------------------


class _Interrupted(Exception):
    """The connection ended before the whole body arrived; the .part file keeps what did."""


@contextlib.contextmanager
def _locked(part: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<part>.lock`` for the duration of a download."""
    if fcntl is None:
        yield
        return
    lock_path = part.with_name(part.name + ".lock")
    with open(lock_path, "w") as lock_file:
        busy = DownloadError(f"{part}: another dro-sfm process is downloading this file; wait for it to finish")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        # The holder unlinks the lock file when done; a lock on an already unlinked file protects nothing.
        try:
            same_file = os.stat(lock_path).st_ino == os.fstat(lock_file.fileno()).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:
            raise busy
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from ``Content-Range: bytes a-b/total`` (either may be None)."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _copy_body(response: http.client.HTTPResponse, out: BinaryIO, expected: int | None, bar: tqdm) -> None:
    """Stream the response body into ``out``; ``_Interrupted`` when it ends short of ``expected`` bytes."""
    received = 0
    while True:
        try:
            chunk = response.read(_CHUNK_BYTES)
        except (http.client.HTTPException, OSError) as err:  # reset, timeout, truncated chunked body
            out.flush()
            raise _Interrupted(f"{type(err).__name__}: {err}") from err
        if not chunk:
            break
        out.write(chunk)
        received += len(chunk)
        bar.update(len(chunk))
    out.flush()
    if expected is not None and received < expected:
        raise _Interrupted(f"connection closed after {received} of {expected} bytes")


def _unreachable(url: str, dest: Path, reason: object, hint: str | None) -> DownloadError:
    host = urllib.parse.urlsplit(url).netloc or url
    extra = f" or {hint}" if hint else ""
    return DownloadError(f"could not reach {host}: {reason}; download {url} by hand to {dest}{extra}")


def _fetch_once(url: str, part: Path, timeout: float, progress: bool, dest: Path, hint: str | None) -> None:
    """One HTTP request: append to ``part`` from its current size (Range), or rewrite it when refused."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "dro-sfm", "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # Nothing left to send: the .part is complete if its size is the server's total.
            _, total = _content_range(err.headers.get("Content-Range"))
            err.close()
            if total == offset:
                return
            part.unlink()
            raise _Interrupted("the server refused to resume; restarting from the beginning") from err
        raise DownloadError(
            f"download of {url} failed: HTTP {err.code} {err.reason}; check the address "
            f"(or {BASE_URL_ENV}) or download the file by hand to {dest}"
        ) from err
    except urllib.error.URLError as err:
        raise _unreachable(url, dest, err.reason, hint) from err
    except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as err:
        raise _unreachable(url, dest, err, hint) from err

    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if response.status == 206:
            start, _ = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Interrupted(f"the server resumed at byte {start} instead of {offset}; restarting")
            mode, initial = "ab", offset
        else:
            if offset:
                logger.info("%s ignored the Range request; downloading %s from the start", url, dest.name)
            mode, initial = "wb", 0
        total = initial + length if length is not None else None
        try:
            with (
                open(part, mode) as out,
                tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=dest.name, disable=not progress, leave=False) as bar,
            ):
                _copy_body(response, out, length, bar)
        except OSError as err:  # reading errors became _Interrupted; this is the local disk
            raise OutputError(
                f"cannot write {part}: {err.strerror or err}; free some space or set {CACHE_ENV}"
            ) from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _verify(part: Path, url: str, sha256: str | None, size: int | None) -> None:
    """Check a finished .part against the expected size and checksum; delete it when wrong."""
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink()
        raise DownloadError(
            f"download of {url} has {actual_size} bytes, expected {size}; the partial file was removed, "
            "run the command again"
        )
    if sha256 is not None:
        actual = _sha256(part)
        if actual.lower() != sha256.lower():
            part.unlink()
            raise DownloadError(
                f"download of {url} is corrupt: sha256 {actual} does not match the expected {sha256}; "
                "the file was removed, run the command again (or try another mirror)"
            )


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 30.0,
    restart: bool = False,
    manual_hint: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming an earlier partial download.

    A dropped connection is resumed up to ``retries`` times within this call; after that the .part file
    stays so that the next call continues from it. ``restart`` discards an existing .part first.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the download folder {dest.parent}: {err.strerror or err}") from err
    with _locked(part):
        if restart:
            part.unlink(missing_ok=True)
        attempt = 0
        while True:
            try:
                _fetch_once(url, part, timeout, progress, dest, manual_hint)
                break
            except _Interrupted as err:
                have = part.stat().st_size if part.exists() else 0
                if attempt >= retries:
                    raise DownloadError(
                        f"download of {url} was interrupted ({err}); {have} bytes are kept in {part}, "
                        "run the command again to resume"
                    ) from err
                attempt += 1
                logger.warning("download of %s interrupted (%s); resuming at byte %d", url, err, have)
        _verify(part, url, sha256, size)
        os.replace(part, dest)
    logger.info("downloaded %s to %s", url, dest)
    return dest
