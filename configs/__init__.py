"""Experiment configs: one file per dataset, each a `get_config()` ConfigDict.

The files live in the repository's top-level configs/ and install as `msjax.configs`.
"""
