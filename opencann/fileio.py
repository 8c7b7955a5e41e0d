"""Writing files so that nothing is left half-written: a temporary file in the target's folder, renamed."""
from __future__ import annotations

import os
import tempfile


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8), creating its folder; readers see the old file or the whole new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
