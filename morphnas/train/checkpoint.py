"""Checkpoints: a directory holding ``arch.json``, ``weights.safetensors`` and ``metrics.json``.

Written atomically: the files are built and fsynced in a hidden temporary sibling directory that
is then renamed into place, so a process killed at any point never leaves a directory at the
target path that loads as a checkpoint it did not finish. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from morphnas.errors import CheckpointError, MorphnasError

ARCH_FILE = "arch.json"
WEIGHTS_FILE = "weights.safetensors"
METRICS_FILE = "metrics.json"
FILES: tuple[str, ...] = (ARCH_FILE, WEIGHTS_FILE, METRICS_FILE)


def save_checkpoint(
    directory: str | Path, *, arch: dict[str, Any], weights: dict[str, torch.Tensor], metrics: dict[str, Any]
) -> Path:
    """Write a checkpoint to ``directory`` atomically (:func:`write_atomically`) and return its path.

    ``arch`` and ``metrics`` must be JSON serialisable (no NaN). An existing checkpoint there (or
    an empty directory) is replaced; any other existing path raises :class:`CheckpointError`.
    """
    texts = {ARCH_FILE: _to_json(arch, ARCH_FILE), METRICS_FILE: _to_json(metrics, METRICS_FILE)}
    return write_atomically(directory, weights, texts, what="checkpoint", error=CheckpointError)


def write_atomically(
    directory: str | Path,
    weights: dict[str, torch.Tensor],
    texts: dict[str, str],
    *,
    what: str,
    error: type[MorphnasError],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``weights`` (as ``WEIGHTS_FILE``) and ``texts`` (file name -> contents) into ``directory``.

    The files are built and fsynced in a hidden temporary sibling directory that is then renamed
    into place; an existing directory holding nothing but checkpoint files (or nothing) is renamed
    away first and deleted last. Any other existing path raises ``error`` rather than be deleted,
    and so does a failed write (a full disk, a read-only file system), with one line naming the
    ``what`` and the path. Tensors are copied to contiguous CPU tensors first; ``metadata`` goes
    into the safetensors header. The checkpoint writer and the export bundle writer share this.
    """
    target = Path(directory).absolute()
    if target.exists() and not _replaceable(target):
        raise error(f"refusing to overwrite {target}: it exists and is not a {what} directory")
    tensors = {name: t.detach().to("cpu").clone(memory_format=torch.contiguous_format) for name, t in weights.items()}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as err:
        raise error(f"cannot write {what} {target}: {err.strerror or err}") from None
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=metadata)
        _fsync(tmp / WEIGHTS_FILE)
        for name, text in texts.items():
            (tmp / name).write_text(text)
            _fsync(tmp / name)
        _fsync(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old)
            os.replace(tmp, target)
            _fsync(target.parent)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
            _fsync(target.parent)
    except (OSError, SafetensorError) as err:  # a full disk, a read-only file system, a quota
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise error(f"cannot write {what} {target}: {reason}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_checkpoint(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """``(arch, weights, metrics)`` of the checkpoint at ``directory``; CheckpointError if absent or corrupt."""
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: not a directory")
    missing = [name for name in FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    arch = read_json_object(path / ARCH_FILE)
    metrics = read_json_object(path / METRICS_FILE)
    try:
        weights = read_weights(path / WEIGHTS_FILE)
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    return arch, weights, metrics


def read_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; CheckpointError (one line) if it is absent or corrupt."""
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{Path(file).name} is corrupt or unreadable ({err})") from None


def _replaceable(path: Path) -> bool:
    """True for a directory holding nothing but checkpoint (or bundle) files, or nothing."""
    return path.is_dir() and not path.is_symlink() and all(child.name in FILES for child in path.iterdir())


def _to_json(value: dict[str, Any], name: str) -> str:
    if not isinstance(value, dict):
        raise CheckpointError(f"{name} must hold a JSON object, got {type(value).__name__}")
    try:
        return json.dumps(value, indent=1, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{name} is not JSON serialisable: {err}") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; anything else (missing, malformed, not an object) is a CheckpointError."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} does not hold a JSON object")
    return value


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
