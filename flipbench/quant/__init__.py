"""In-process fake quantization of Hugging Face causal LMs: RTN, GPTQ, TACQ.

Entry points: validate(model, cfg) before any expensive work, then compress(model, cfg, calib, ...), which
quantizes in place and returns a JSON-able report (see registry.py).
"""

from flipbench.quant.config import METHOD_NAMES, QuantConfig, validate
from flipbench.quant.registry import METHODS, avg_bits, compress, model_bytes

__all__ = ["METHODS", "METHOD_NAMES", "QuantConfig", "avg_bits", "compress", "model_bytes", "validate"]
