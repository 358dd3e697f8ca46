"""What the running server is made of, for the parts that show it (the web API's sessions,
traces and metrics): its listeners and its trace log.  The supervisor fills it in once the
listeners are built; before that, and in tools that run no server, it is empty."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from netpost.net.trace import TraceLog
    from netpost.registry import Registry


@dataclass
class Runtime:
    listeners: list[Any] = field(default_factory=list)  # server.Listener objects
    trace_log: TraceLog | None = None
    registry: Registry | None = None
    started: float = field(default_factory=time.time)
