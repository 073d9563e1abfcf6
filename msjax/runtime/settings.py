"""Process settings msjax runs fastest with: XLA flags and the C allocator's policy for
host buffers. `configure()` applies both; the bin/ commands and bench/ scripts call it
first thing, and importing msjax changes nothing, so a library user opts in the same way:

    from msjax import runtime
    runtime.configure()  # before the first JAX computation

XLA reads the XLA_FLAGS environment variable once, when JAX first starts a backend,
so the flags only take effect if set before the first JAX computation. They change
speed, never results.

On a CPU, JAX 0.10 hands convolutions to YNNPACK by default. For the convolutions of
this model, XLA's own (Eigen) kernels are faster, forward and backward (measured in
bench/RESULTS.md); matrix products stay with YNNPACK, which is faster for them. GPU
runs ignore the flag.

Opting out: set MSJAX_XLA_DEFAULTS=0, or set the flag yourself in XLA_FLAGS (a
flag already there is never overridden).

Host memory (`configure_host_memory`). On a CPU, XLA allocates each run's temporaries
(1.4 GB for a Base fine-tuning step at batch 4) with malloc from its worker threads.
glibc serves an allocation that large with a fresh mmap in a worker's arena and unmaps it
on free, so every step faults the whole buffer in again page by page (360,000 faults,
0.3-4 s of kernel time per step depending on the machine). With one arena, no mmap and
no automatic trimming, freed buffers stay mapped and the next step reuses them. Free
memory is handed back at chosen points instead (`release_free_memory`, once the first
compilation is done: it leaves about a gigabyte free, which the steps' own buffers only
partly reuse).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import MutableMapping

# (flag name, value): convolutions to XLA's own CPU kernels, the rest as JAX's default.
CPU_DEFAULTS = (("xla_cpu_experimental_ynn_fusion_type", "-individual_convolution"),)
# The JAX releases (version prefix) msjax's speed choices were measured on: the flags
# above exist there (XLA aborts on unknown flags, so they never reach another release),
# and msjax.models.vjp's hand-written gradients were timed against autodiff there
# (tests/test_vjp.py fails on another release).
TESTED_JAX = "0.10."
OPT_OUT = "MSJAX_XLA_DEFAULTS"
# Set to 0 to keep glibc's own allocation policy in the bin/ commands.
MEMORY_OPT_OUT = "MSJAX_HOST_MEMORY"
# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def configure(environ: MutableMapping[str, str] | None = None) -> dict[str, object]:
    """Applies msjax's XLA flags (`apply_xla_defaults`) and host memory policy
    (`configure_host_memory`) to this process; call it before JAX starts a backend.

    Returns:
        {"xla_flags": the flags added, "host_memory": whether the policy was applied}.
    """
    return {
        "xla_flags": apply_xla_defaults(environ),
        "host_memory": configure_host_memory(environ),
    }


def apply_xla_defaults(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Adds msjax's XLA flags to XLA_FLAGS, leaving any flag the user set alone.

    Args:
        environ: the environment to edit (os.environ by default).

    Returns:
        The flags added (empty when opted out, on an untested JAX, or all already set).
    """
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "1") == "0" or not is_tested_jax(_jax_version()):
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [f"--{name}={value}" for name, value in CPU_DEFAULTS if f"--{name}" not in current]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def is_tested_jax(version: str) -> bool:
    """Whether JAX `version` (e.g. "0.10.2") is one TESTED_JAX names."""
    return version.startswith(TESTED_JAX)


def _jax_version() -> str:
    try:  # jaxlib's own version module: cheap, and JAX imports jaxlib anyway
        from jaxlib.version import __version__
    except ImportError:
        return ""
    return __version__


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None (another C library, another OS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has it: AttributeError elsewhere
    except (OSError, AttributeError):
        return None
    return libc


def configure_host_memory(environ: MutableMapping[str, str] | None = None) -> bool:
    """Keeps freed host buffers mapped for reuse (glibc: one arena, no mmap, no trim).

    Call it before JAX starts its backend: threads that have allocated before keep
    their own arenas. Results never change; see the module docstring for why.

    Returns:
        Whether the policy was applied (False when opted out with MSJAX_HOST_MEMORY=0
        or where the C library is not glibc).
    """
    environ = os.environ if environ is None else environ
    libc = _glibc()
    if environ.get(MEMORY_OPT_OUT, "1") == "0" or libc is None:
        return False
    # Each call returns 1 on success; -1 as the trim threshold disables trimming.
    applied = [libc.mallopt(p, v) for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
                                               (_M_TRIM_THRESHOLD, -1))]
    return all(result == 1 for result in applied)


def release_free_memory() -> None:
    """Returns the C allocator's free memory to the OS (glibc malloc_trim; elsewhere
    nothing), e.g. once a compilation has finished."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
