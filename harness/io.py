"""Files the harness writes, written whole or not at all; where its caches live.

A leaf module (it imports nothing from the project), so every layer may use it: algorithms, benchmarks,
the trainer, reports. One rule each:

- :func:`atomic_write`: write through a temporary file in the target's folder, fsync, then ``os.replace``;
  a reader (or a crash) never sees half a file, and a failure leaves the old file as it was.
- :func:`cache_root`: ``$HARNESS_CACHE`` (default ``~/.cache/rl-harness``).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def cache_root() -> Path:
    """``$HARNESS_CACHE`` (default ``~/.cache/rl-harness``): built and prepared models live under ``models/``."""
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "rl-harness")


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block returns, the file is fsynced and renamed onto ``path``.

    If the block raises, the temporary file is removed and ``path`` is untouched."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (:func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented, key-sorted JSON (non-JSON values as ``str``), written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))
