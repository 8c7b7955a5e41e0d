"""acl.init / acl.finalize."""
from __future__ import annotations

import json
import os

from opencann.acl import prof
from opencann.acl.state import STATE
from opencann.errors import AclError, ErrorCode


def init(config_path: str | None = None) -> None:
    """Initialise acl once per process; ``config_path`` may name a JSON config file (or be empty)."""
    with STATE.lock:
        if STATE.initialized:
            raise AclError(ErrorCode.REPEAT_INITIALIZE, "acl.init() was already called")
        if config_path:
            try:
                with open(os.fspath(config_path), encoding="utf-8") as f:
                    json.load(f)
            except (OSError, ValueError) as exc:
                raise AclError(ErrorCode.INVALID_FILE, f"acl config '{config_path}': {exc}") from None
        STATE.initialized = True


def finalize() -> None:
    """Release every loaded model, context and allocator; acl may be initialised again afterwards."""
    with STATE.lock:
        if not STATE.initialized:
            raise AclError(ErrorCode.REPEAT_FINALIZE, "acl.finalize() without acl.init()")
        prof.release()
        for model_id in STATE.models.loaded():
            STATE.models.unload(model_id)
        for ctx in list(STATE.contexts):  # default contexts and those from acl.create_context()
            ctx.destroy()
        STATE.default_contexts.clear()
        for alloc in [*STATE.allocators.values(), *([STATE.host_allocator] if STATE.host_allocator else [])]:
            alloc.empty_cache()
        STATE.allocators.clear()
        STATE.host_allocator = None
        STATE.local.__dict__.clear()
        STATE.initialized = False


def is_initialized() -> bool:
    return STATE.initialized
