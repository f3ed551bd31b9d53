"""In-process compression of Hugging Face causal LMs, one family of compressors behind one registry.

Entry points: validate(model, cfg) before any expensive work, then compress(model, cfg, calib, ...), which
compresses in place and returns a JSON-able report (see registry.py). cfg is a QuantConfig for the
quantizers in quant/ or a PruneConfig for the pruners in prune/ (settings_type(method) says which). The
layer-by-layer runner (layerwise.py), the Hessian collector (hessian.py), calibration data (calibration.py)
and model-family knowledge (families.py) are shared by every compressor.
"""

from flipbench.compress.prune.config import PRUNE_METHODS, PruneConfig
from flipbench.compress.quant.config import METHOD_NAMES, QuantConfig
from flipbench.compress.registry import METHODS, avg_bits, compress, model_bytes, needs_data, settings_type, validate

__all__ = ["METHODS", "METHOD_NAMES", "PRUNE_METHODS", "PruneConfig", "QuantConfig", "avg_bits", "compress",
           "model_bytes", "needs_data", "settings_type", "validate"]
