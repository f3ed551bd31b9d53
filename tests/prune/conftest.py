"""Fixtures for the pruning tests: the quantization tests' offline hub and one torch thread."""

from tests.quant.conftest import one_torch_thread  # noqa: F401  (autouse: applies here too)
