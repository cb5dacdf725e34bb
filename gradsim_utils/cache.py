"""Content-addressed on-disk cache with atomic writes (DESIGN.md section 2).

An entry lives at ``<cache_dir>/<namespace>/<key>.<suffix>`` where ``key`` is the SHA-256 of
everything that determines the entry (parameters, seed, code version of the step). Writes go to
a temporary file in the same folder and are renamed into place, so an interrupted run never
leaves a half-written entry. :func:`content_digest` is the one hash of content (tensors, arrays,
bytes, text) for keys that must follow data rather than parameters.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import platformdirs
import torch

__all__ = ["cache_dir", "cache_key", "content_digest", "atomic_write", "torch_entry", "cached_torch"]


def cache_dir() -> Path:
    """The cache root: ``$GRADSIM_CACHE`` if set, else the user's cache dir (``~/.cache/gradsim``)."""
    root = os.environ.get("GRADSIM_CACHE") or platformdirs.user_cache_dir("gradsim")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(**parts: Any) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of ``parts`` (keys sorted)."""
    return content_digest(json.dumps(parts, sort_keys=True, default=str))[:16]


def content_digest(*parts: bytes | str | torch.Tensor | np.ndarray) -> str:
    """SHA-256 hex digest of ``parts`` in order: bytes as they are, text as UTF-8, a tensor or array
    as its values in C order (layout and device do not matter; shape and dtype are not hashed)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().contiguous().numpy()
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part).tobytes()
        elif isinstance(part, str):
            part = part.encode()
        elif not isinstance(part, bytes):
            raise TypeError(f"content_digest hashes bytes, str, tensors and arrays, got {type(part).__name__}")
        digest.update(part)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it onto ``path``, with the
    permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes the file owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def torch_entry(namespace: str, key: str) -> Path:
    """The file of the ``cached_torch`` entry ``namespace/key`` (present or not)."""
    return cache_dir() / namespace / f"{key}.pt"


def cached_torch(namespace: str, key: str, compute: Callable[[], Any]) -> Any:
    """Load ``<namespace>/<key>.pt`` if present, else ``compute()`` it and save it atomically.

    The value must be loadable with ``torch.load(weights_only=True)``: tensors, numbers, strings
    and (nested) lists, tuples and dicts of them.
    """
    path = torch_entry(namespace, key)
    if path.exists():
        return torch.load(path, weights_only=True, map_location="cpu")
    value = compute()
    atomic_write(path, lambda tmp: torch.save(value, tmp))
    return value
