"""Shared pytest fixtures."""

import jax
import pytest


@pytest.fixture(scope="module")
def fast_compile():
    """Small models compile far longer than they run: skip most XLA optimisation passes
    for the module (use with `pytestmark = pytest.mark.usefixtures("fast_compile")`)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
