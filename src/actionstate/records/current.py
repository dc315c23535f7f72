"""The durable call running in the current context, if any.

Set by the engine around the function a durable call runs (threads and tasks
started inside it inherit it), read for ``ctx.call_id`` and by agent memory,
which refuses to be touched inside a durable call.
"""

from __future__ import annotations

import contextvars
from typing import Any

__all__ = ["CURRENT_CALL"]

CURRENT_CALL: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "actionstate_current_call", default=None)
"""The running call's step (it has ``fid``, the function id), or None."""
