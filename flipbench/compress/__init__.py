"""In-process compression of Hugging Face causal LMs, one family of compressors behind one registry.

Entry points: validate(model, cfg) before any expensive work, then compress(model, cfg, calib, ...), which
compresses in place and returns a JSON-able report (see registry.py). Quantizers live in quant/; the
layer-by-layer runner (layerwise.py), calibration data (calibration.py) and model-family knowledge
(families.py) are shared by every compressor.
"""

from flipbench.compress.quant.config import METHOD_NAMES, QuantConfig, validate
from flipbench.compress.registry import METHODS, avg_bits, compress, model_bytes

__all__ = ["METHODS", "METHOD_NAMES", "QuantConfig", "avg_bits", "compress", "model_bytes", "validate"]
