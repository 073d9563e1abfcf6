"""msjax: MS-EmoBoost speech emotion recognition in JAX/Flax."""

from msjax.runtime import apply_xla_defaults

__version__ = "0.1.0"

# Before any JAX backend starts (see msjax/runtime.py): speed only, never results.
apply_xla_defaults()
