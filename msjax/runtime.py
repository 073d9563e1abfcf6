"""XLA settings msjax runs fastest with, applied when msjax is imported.

XLA reads the XLA_FLAGS environment variable once, when JAX first starts a backend,
so these only take effect if msjax is imported before the first JAX computation (as
every bin/ command and bench/ script does). They change speed, never results.

On a CPU, JAX 0.10 hands convolutions to YNNPACK by default. For the convolutions of
this model, XLA's own (Eigen) kernels are faster, forward and backward (measured in
bench/RESULTS.md); matrix products stay with YNNPACK, which is faster for them. GPU
runs ignore the flag.

Opting out: set MSJAX_XLA_DEFAULTS=0, or set the flag yourself in XLA_FLAGS (a
flag already there is never overridden).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# (flag name, value): convolutions to XLA's own CPU kernels, the rest as JAX's default.
CPU_DEFAULTS = (("xla_cpu_experimental_ynn_fusion_type", "-individual_convolution"),)
# The flags above exist in these JAX releases; XLA aborts on unknown flags, so never
# pass them to another release.
TESTED_JAX = "0.10."
OPT_OUT = "MSJAX_XLA_DEFAULTS"


def apply_xla_defaults(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Adds msjax's XLA flags to XLA_FLAGS, leaving any flag the user set alone.

    Args:
        environ: the environment to edit (os.environ by default).

    Returns:
        The flags added (empty when opted out, on an untested JAX, or all already set).
    """
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "1") == "0" or not _jax_version().startswith(TESTED_JAX):
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [f"--{name}={value}" for name, value in CPU_DEFAULTS if f"--{name}" not in current]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def _jax_version() -> str:
    try:  # jaxlib's own version module: cheap, and JAX imports jaxlib anyway
        from jaxlib.version import __version__
    except ImportError:
        return ""
    return __version__
