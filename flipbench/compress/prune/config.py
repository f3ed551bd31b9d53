"""The pruning settings, and the cheap checks that run before any expensive work."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from flipbench.compress.families import decoder_layers, family_of, in_features, quantizable_linears
from flipbench.compress.prune.masks import Pattern, parse_pattern
from flipbench.compress.prune.sparsegpt import SparseGPTSettings
from flipbench.compress.quant.grid import GridSpec

PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt", "layerdrop")


@dataclass
class PruneConfig:
    method: str = "wanda"  # one of PRUNE_METHODS
    sparsity: float = 0.5  # share of each linear's weights set to 0, in [0, 1); N:M fixes it at 1 − n/m
    pattern: str = "unstructured"  # unstructured | N:M (n kept in every m consecutive input columns)
    scope: str = "row"  # magnitude: row (compare within each output row) | global (over all pruned linears)
    block_size: int = 128  # sparsegpt: columns per adaptive-mask block
    damp: float = 0.01  # sparsegpt: fraction of mean(diag H) added to H's diagonal
    bits: int | None = None  # sparsegpt: also quantize the surviving weights to this many bits (2..8)
    sym: bool = False  # sparsegpt with bits: symmetric grid
    true_sequential: bool = True  # wanda, sparsegpt: later linears of a layer see the pruned earlier ones
    n_layers: int = 1  # layerdrop: decoder blocks removed
    select: str = "last"  # layerdrop: last | angular

    @property
    def nm(self) -> Pattern:
        return parse_pattern(self.pattern)

    @property
    def sparsegpt(self) -> SparseGPTSettings:
        grid = None if self.bits is None else GridSpec(bits=self.bits, sym=self.sym)
        return SparseGPTSettings(self.sparsity, self.nm, self.block_size, self.damp, grid)


def settings_problem(cfg: PruneConfig) -> str | None:
    """The first problem with cfg that needs no model, as one line naming the fix; None when fine."""
    if cfg.method not in PRUNE_METHODS:
        return f"pruning method {cfg.method!r} is unknown; use one of {', '.join(PRUNE_METHODS)}"
    if not 0 <= cfg.sparsity < 1:
        return f"sparsity={cfg.sparsity!r} is outside [0, 1); give the share of weights to remove, e.g. 0.5"
    try:
        pattern = cfg.nm
    except ValueError as err:
        return str(err)
    if cfg.scope not in ("row", "global"):
        return f"scope={cfg.scope!r} is unknown; use row or global"
    if cfg.scope == "global" and (cfg.method != "magnitude" or pattern.structured):
        return "scope=global applies to unstructured magnitude pruning only; use scope=row"
    if cfg.bits is not None and (cfg.method != "sparsegpt" or isinstance(cfg.bits, bool) or not 2 <= cfg.bits <= 8):
        return (f"bits={cfg.bits!r} is invalid for {cfg.method}; joint quantization is a SparseGPT option "
                "with 2-8 bits (bits=null prunes only)")
    if not cfg.damp > 0:
        return f"damp={cfg.damp!r} must be positive; the usual value is 0.01 (a fraction of mean(diag H))"
    m = pattern.m if cfg.method == "sparsegpt" and pattern.structured else 1
    if cfg.block_size < 1 or cfg.block_size % m:
        return f"block_size={cfg.block_size!r} must be a positive multiple of the pattern's m, e.g. {m * (128 // m)}"
    if cfg.select not in ("last", "angular"):
        return f"select={cfg.select!r} is unknown; use last or angular"
    if cfg.method == "layerdrop" and cfg.n_layers < 1:
        return f"n_layers={cfg.n_layers!r} must be at least 1"
    return None


def validate(model: nn.Module, cfg: PruneConfig) -> None:
    """Cheap checks before any expensive work; raises ValueError with one line naming the problem and the fix."""
    problem = settings_problem(cfg)
    if problem:
        raise ValueError(problem)
    family = family_of(model)
    if cfg.method == "layerdrop":
        depth = len(decoder_layers(model, family))
        if cfg.n_layers >= depth:
            raise ValueError(f"n_layers={cfg.n_layers} leaves no decoder layer of the model's {depth}; "
                             f"drop at most {depth - 1}")
        return
    pattern = cfg.nm
    if not pattern.structured:
        return
    for name, module in quantizable_linears(model).items():
        width = in_features(module, family)
        if width % pattern.m:
            raise ValueError(f"pattern={pattern} needs an input width divisible by {pattern.m}, but {name} has "
                             f"{width}; use a pattern whose m divides it, or pattern=unstructured")
