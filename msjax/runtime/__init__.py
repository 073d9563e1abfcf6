"""The process a run lives in: XLA and allocator settings, several processes, signals, logs.

    settings     XLA flags and the host allocator policy (`configure`, opt-in)
    distributed  one training over several processes (JAX's distributed runtime)
    interrupts   SIGINT/SIGTERM: finish what must not be cut, one line, exit 130/143
    progress     progress bars and log lines, by verbosity
    timing       where a run spends its time (off unless a caller records)

Nothing here runs on import: a command (msjax.cli.common.run), a bench script or a
library user calls `configure()` before JAX starts.
"""

from msjax.runtime.settings import (
    apply_xla_defaults,
    configure,
    configure_host_memory,
    release_free_memory,
)

__all__ = ["apply_xla_defaults", "configure", "configure_host_memory", "release_free_memory"]
