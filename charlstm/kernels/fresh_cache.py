"""Numba's cache kept in step with the kernels' sources: a kernel is cached with every kernel it
calls compiled into it, but numba checks only the kernel's own file, so an edit elsewhere in the
package (a pulled change in lstm.py, say, under a sampler in sampling.py) would go unseen.

So the cache directory holds a digest of all the package's sources; where it differs, the cached
kernels there are dropped (they recompile once). It must run before any kernel is first called:
numba reads its cache then, not at import.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

STAMP = "charlstm-kernel-sources.sha256"  # in the cache directory, beside numba's files
_CACHED = ("*.nbi", "*.nbc")  # numba's index and compiled code


def sources_digest(package: Path) -> str:
    """sha256 of every .py file of `package`, names and contents, in name order."""
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_directory(dispatcher) -> Path | None:
    """Where numba caches `dispatcher` (a kernel of this package): beside the sources, or under
    NUMBA_CACHE_DIR or the user's cache when those are read-only; None if it cannot be told (a
    numba that lays its cache out otherwise: then nothing is dropped, as before)."""
    cache = getattr(dispatcher, "_cache", None)
    path = getattr(cache, "_cache_path", None)
    return Path(path) if isinstance(path, str) else None


def drop_if_sources_changed(directory: Path, digest: str) -> bool:
    """Remove the cached kernels in `directory` unless its stamp holds `digest`, then stamp it
    (a temporary file renamed over the old one). Returns whether anything was dropped. A
    directory that cannot be read or written is left alone (numba then compiles in memory)."""
    stamp = directory / STAMP
    try:
        if stamp.read_text(encoding="ascii").strip() == digest:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    try:
        directory.mkdir(parents=True, exist_ok=True)
        dropped = False
        for pattern in _CACHED:
            for path in directory.glob(pattern):
                path.unlink(missing_ok=True)
                dropped = True
        temporary = directory / f"{STAMP}.{os.getpid()}.tmp"
        temporary.write_text(digest + "\n", encoding="ascii")
        os.replace(temporary, stamp)
    except OSError:
        return False
    return dropped
