"""Safe loading of official DRO checkpoints (``.ckpt``) and of bare state-dict files.

Every file is read with ``torch.load(..., weights_only=True)``: the unpickler then only rebuilds tensors
and plain containers, so a downloaded file cannot run code. An official file additionally pickles its run
configuration as a ``yacs.config.CfgNode``; that one name is mapped to ``_CfgNodeStandIn``, which turns each
node into a plain ``OrderedDict`` without importing (or needing) yacs.
"""

from __future__ import annotations

import ast
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dro_sfm.data.atomic import atomic_path
from dro_sfm.errors import CheckpointError, ConfigError, DroSfmError

logger = logging.getLogger(__name__)

OFFICIAL_PREFIX = "model.depth_net."
"""Prefix of every network tensor in an official checkpoint's ``state_dict``."""

_VERSION_KEY = ("model", "depth_net", "version")
_MIN_DEPTH_KEY = ("model", "params", "min_depth")
_MAX_DEPTH_KEY = ("model", "params", "max_depth")
_IMAGE_SHAPE_KEY = ("datasets", "augmentation", "image_shape")
# Official training wrappers (dro_sfm/models/*.py of the official code); semi-supervised also sees GT depth.
_DEPTH_SUPERVISED_MODELS = frozenset({"SupModelMF", "SemiSupModelMF"})
_SELF_SUPERVISED_MODELS = frozenset({"SelfSupModelMF"})

# torch's allow-list is process-wide state; the lock keeps concurrent loads from removing each other's entry.
_ALLOWLIST_LOCK = threading.Lock()


class _CfgNodeStandIn:
    """Allow-listed as ``yacs.config.CfgNode``: every unpickled config node becomes a plain OrderedDict."""

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict:  # type: ignore[misc]
        # A CfgNode pickles as NEWOBJ, SETITEMS (its entries), BUILD (yacs bookkeeping such as
        # `__immutable__`). The weights-only unpickler only applies SETITEMS to an object whose type is
        # exactly dict, OrderedDict or Counter, so no dict subclass can stand in; returning an OrderedDict
        # keeps the entries, and BUILD on an OrderedDict only fills its instance __dict__, which is dropped.
        return OrderedDict()


_SAFE_GLOBALS: list[tuple[Any, str]] = [(_CfgNodeStandIn, "yacs.config.CfgNode")]


@dataclass(frozen=True)
class OfficialCheckpointInfo:
    """What a checkpoint file says about the network it holds."""

    path: Path
    layout: str                          # "official" (config + state_dict) or "state_dict" (bare tensors)
    version: str                         # official version string, e.g. "it12-h-out"
    min_depth: float
    max_depth: float
    image_shape: tuple[int, int] | None  # (H, W) the model was trained at; None if the file does not say
    epoch: int | None
    num_tensors: int
    model_name: str | None = None        # official training model (config.model.name), e.g. "SupModelMF"
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the stored config as plain dicts

    @property
    def supervised(self) -> bool | None:
        """True when trained with ground-truth depth (metric scale), False if self-supervised, None if unknown."""
        if self.model_name in _DEPTH_SUPERVISED_MODELS:
            return True
        if self.model_name in _SELF_SUPERVISED_MODELS:
            return False
        return None


def _require_safe_globals_support() -> None:
    """Fail clearly on a torch too old to allow-list a class under another module's name."""
    if not hasattr(torch.serialization, "safe_globals") or torch.__version__ < "2.6":
        raise CheckpointError(
            f"loading official checkpoints safely needs torch >= 2.6 (installed: {torch.__version__}); "
            "upgrade torch with `pip install -U torch`"
        )


def _describe_load_failure(path: Path, err: BaseException) -> str:
    """One line saying why ``torch.load`` rejected ``path`` and what the user can do."""
    text = str(err)
    refused = re.search(r"GLOBAL (\S+) was not an allowed global", text)
    reduce_call = re.search(r"Trying to call reduce for unrecognized function (.+)", text)
    blocked = re.search(r"GLOBAL (\S+) whose module \S+ is blocked", text)
    name = next((m.group(1).strip() for m in (refused, blocked, reduce_call) if m), None)
    if name is not None:
        return (
            f"{path}: refused to load: the file's pickle asks for {name}, which is not a tensor or plain "
            "container; loading it could run code from the file. Official DRO checkpoints only need "
            "tensors, plain containers and a yacs config; if this file is a genuine checkpoint, convert it "
            "on a trusted machine to a bare state dict (torch.save(ckpt['state_dict'], 'model.pt'))"
        )
    detail = text.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
    detail = " ".join(detail.split())
    if "Weights only load failed" in text and re.search(r"\bCan only\b", detail):
        # The pickle is well-formed but builds something other than tensors and plain containers.
        return f"{path}: refused to load: not a plain weights file ({detail})"
    # Keep torch's first sentence: the rest is advice about weights_only=False that must not be followed.
    detail = detail.split(". ")[0].rstrip(".") or "unexpected end of file"
    return (
        f"{path}: cannot read checkpoint: truncated or not a torch checkpoint "
        f"({type(err).__name__}: {detail}); download it again or check the path"
    )


def _plain(obj: Any) -> Any:
    """Copy a loaded config tree into plain dicts, lists and tuples (drops any leftover yacs state)."""
    if isinstance(obj, Mapping):
        return {str(key): _plain(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_plain(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(item) for item in obj)
    return obj


def read_checkpoint_file(path: str | Path) -> Any:
    """``torch.load`` a file weights-only onto the CPU, with yacs config nodes read as plain OrderedDicts."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such checkpoint file; check the path or run `dro-sfm weights list`"
        )
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: cannot read checkpoint: the file is empty (truncated download?)")
    _require_safe_globals_support()
    try:
        with _ALLOWLIST_LOCK, torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint: permission denied") from err
    except MemoryError:
        raise
    except Exception as err:  # torch surfaces a corrupt file as many different exception types
        raise CheckpointError(_describe_load_failure(path, err)) from err


def _config_value(config: Mapping[str, Any], keys: tuple[str, ...], path: Path) -> Any:
    """``config[k0][k1]...``; CheckpointError naming the dotted key when any level is missing."""
    node: Any = config
    for depth, key in enumerate(keys):
        if not isinstance(node, Mapping) or key not in node:
            dotted = ".".join(keys[: depth + 1])
            raise CheckpointError(
                f"{path}: the checkpoint's config has no `{dotted}` (needed: {'.'.join(keys)}); "
                "pass the value explicitly (e.g. version=..., min_depth=..., max_depth=...)"
            )
        node = node[key]
    return node


def _as_image_shape(value: Any, path: Path) -> tuple[int, int]:
    """(H, W) from a tuple/list, or from a string such as "(384, 512)" as yacs may keep it."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    raise CheckpointError(f"{path}: config datasets.augmentation.image_shape is {value!r}, not (H, W)")


def _as_depth(value: Any, name: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckpointError(f"{path}: config value {name} is {value!r}, not a number")
    return float(value)


def _split_checkpoint(obj: Any, path: Path) -> tuple[str, Mapping[str, Any], dict[str, Any], int | None]:
    """(layout, state_dict, plain config, epoch) of a loaded file."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dictionary")
    if "state_dict" in obj:
        state_dict = obj["state_dict"]
        config = obj.get("config")
        config = _plain(config) if isinstance(config, Mapping) else {}
        epoch = obj.get("epoch")
        epoch = int(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) else None
        layout = "official"
    elif obj and all(isinstance(value, Tensor) for value in obj.values()):
        state_dict, config, epoch, layout = obj, {}, None, "state_dict"
    else:
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise CheckpointError(
            f"{path}: not a DRO checkpoint: no `state_dict` entry and not a dictionary of tensors "
            f"(keys: {keys})"
        )
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError(f"{path}: the checkpoint's state_dict is empty or not a dictionary")
    bad = [str(k) for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {', '.join(bad[:5])}")
    return layout, state_dict, config, epoch


def load_official_checkpoint(
    path: str | Path,
    *,
    version: str | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
    image_shape: tuple[int, int] | None = None,
) -> tuple[nn.Module, OfficialCheckpointInfo]:
    """Build the DRO network a checkpoint describes and load its weights (strict), in eval mode on the CPU.

    The network hyper-parameters come from the stored config; keyword arguments override them and are
    required for a bare state-dict file, which has no config.
    """
    return official_model_from_payload(read_checkpoint_file(path), path, version=version, min_depth=min_depth,
                                       max_depth=max_depth, image_shape=image_shape)


def official_model_from_payload(
    payload: Any,
    path: str | Path,
    *,
    version: str | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
    image_shape: tuple[int, int] | None = None,
) -> tuple[nn.Module, OfficialCheckpointInfo]:
    """``load_official_checkpoint`` for a file already read by ``read_checkpoint_file`` (``path`` names it)."""
    from dro_sfm.models.official import build_official_model

    path = Path(path)
    layout, state_dict, config, epoch = _split_checkpoint(payload, path)

    def pick(given: Any, keys: tuple[str, ...]) -> Any:
        if given is not None:
            return given
        if layout == "state_dict":
            raise CheckpointError(
                f"{path}: a bare state dict has no config; pass {keys[-1]}=... "
                "(for an official model see `dro-sfm weights list`)"
            )
        return _config_value(config, keys, path)

    version_value = pick(version, _VERSION_KEY)
    if not isinstance(version_value, str) or not version_value:
        raise CheckpointError(
            f"{path}: config model.depth_net.version is {version_value!r}, not a version string"
        )
    min_value = _as_depth(pick(min_depth, _MIN_DEPTH_KEY), "model.params.min_depth", path)
    max_value = _as_depth(pick(max_depth, _MAX_DEPTH_KEY), "model.params.max_depth", path)
    if not 0.0 < min_value < max_value:
        raise CheckpointError(
            f"{path}: depth range {min_value}..{max_value} is not 0 < min_depth < max_depth"
        )
    if image_shape is not None:
        shape: tuple[int, int] | None = _as_image_shape(tuple(image_shape), path)
    elif layout == "official":
        shape = _as_image_shape(_config_value(config, _IMAGE_SHAPE_KEY, path), path)
    else:
        shape = None
    model_node = config.get("model")
    model_name = model_node.get("name") if isinstance(model_node, Mapping) else None

    try:
        model = build_official_model(version_value, min_value, max_value)
    except (ValueError, ConfigError) as err:
        raise CheckpointError(f"{path}: unsupported network version {version_value!r}: {err}") from err
    try:
        model.load_official_state_dict(state_dict)
    except DroSfmError as err:
        raise CheckpointError(f"{path}: {err}") from err
    except RuntimeError as err:  # a shape/key problem torch reports before our own checks see it
        raise CheckpointError(f"{path}: weights do not fit version {version_value}: {err}") from err
    model.eval()
    info = OfficialCheckpointInfo(
        path=path,
        layout=layout,
        version=version_value,
        min_depth=min_value,
        max_depth=max_value,
        image_shape=shape,
        epoch=epoch,
        num_tensors=len(state_dict),
        model_name=model_name if isinstance(model_name, str) and model_name else None,
        config=config,
    )
    logger.info("loaded %s (%s, version %s, %d tensors)", path, layout, version_value, len(state_dict))
    return model, info


def save_official_checkpoint(
    path: str | Path,
    state_dict: Mapping[str, Tensor],
    *,
    version: str,
    min_depth: float,
    max_depth: float,
    image_shape: tuple[int, int],
    epoch: int | None = None,
    model_name: str = "SupModelMF",
) -> None:
    """Write ``state_dict`` in the official checkpoint layout with a plain-dict config, atomically.

    Keys are stored as ``model.depth_net.<name>``; the file loads with ``load_official_checkpoint`` and
    with ``torch.load(weights_only=True)`` alone, since it holds only tensors and plain containers.
    ``model_name`` records how it was trained ("SupModelMF": GT depth, "SelfSupModelMF": photometric).
    """
    prefixed = OrderedDict(
        (key if key.startswith(OFFICIAL_PREFIX) else OFFICIAL_PREFIX + key, tensor.detach().cpu())
        for key, tensor in state_dict.items()
    )
    config = {
        "model": {
            "name": model_name,
            "depth_net": {"version": version},
            "params": {"min_depth": float(min_depth), "max_depth": float(max_depth)},
        },
        "datasets": {"augmentation": {"image_shape": (int(image_shape[0]), int(image_shape[1]))}},
    }
    with atomic_path(path) as tmp:
        torch.save({"config": config, "epoch": epoch, "state_dict": prefixed}, tmp)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Number of parameters (no buffers) per top-level submodule, in registration order."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        top = name.split(".", 1)[0]
        counts[top] = counts.get(top, 0) + param.numel()
    return counts
