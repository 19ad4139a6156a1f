"""The result store: one JSON file per cell, named by the cell's key, in DIR/cells/. Every
file is written under a temporary name and renamed, so that a process killed mid-write
leaves the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any, Optional


def write_atomic(path: pathlib.Path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same folder, fsync'd, then
    renamed over `path`."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_umask())  # mkstemp's 0600 -> what open() would give
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Store:
    """DIR/cells/KEY.json for each measured cell (ok or failed)."""

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)
        self.cells = self.root / "cells"
        self.cells.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> pathlib.Path:
        return self.cells / f"{key}.json"

    def get(self, key: str) -> Optional[dict[str, Any]]:
        """The stored record of `key`, or None. A file that does not parse (written by
        something else than this store) counts as absent and is measured again."""
        try:
            with open(self.path(key), encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("key") == key else None

    def put(self, record: dict[str, Any]) -> None:
        blob = json.dumps(record, separators=(",", ":"), allow_nan=False).encode()
        write_atomic(self.path(record["key"]), blob)
