"""Quantizers: the grid (grid.py), RTN (rtn.py), GPTQ (gptq.py) and TACQ (tacq.py), with their typed settings
(config.py). The registry and the one entry point live one level up, in flipbench.compress."""
