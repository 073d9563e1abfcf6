"""Experiment configs: one file per dataset, each a `get_config()` ConfigDict."""
