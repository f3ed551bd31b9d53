"""The search space: which compression settings each method lets a search vary, the grid they span, and the
cost of every point of it, computed from the model's shapes alone (no weights are read).

A method registers its searchable parameters once (``register``): each is a ``compression.<name>`` key with
a type. Pruning methods add theirs the same way (e.g. ``register("wanda", sparsity=float, pattern=str)``),
and the search, its checks and its outputs pick them up without change.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from flipbench.config import ConfigError

# method -> {compression key -> type of its values}
SEARCHABLE: dict[str, dict[str, type]] = {}


def register(method: str, **params: type) -> None:
    """Declare the compression keys a search may vary for ``method`` (the method's config group name)."""
    SEARCHABLE[method] = dict(params)


register("rtn", bits=int, group_size=int, sym=bool, mse=bool)
register("gptq", bits=int, group_size=int, act_order=bool, sym=bool, mse=bool, static_groups=bool)
register("tacq", bits=int, group_size=int, keep_fraction=float, act_order=bool, sym=bool, mse=bool)


@dataclass(frozen=True)
class Point:
    """One configuration of the space: a method and values for some of its searchable keys."""

    method: str
    params: tuple[tuple[str, object], ...]  # (key, value) in the space's order

    @property
    def label(self) -> str:
        short = {"bits": "w", "group_size": "g", "keep_fraction": "k", "act_order": "ao"}
        parts = [self.method]
        for key, value in self.params:
            text = str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)
            parts.append(f"{short.get(key, key)}{text}")
        return "-".join(parts)

    @property
    def overrides(self) -> list[str]:
        """Hydra overrides that select this configuration, as `make eval ARGS="..."` takes them."""
        values = [f"compression.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.params]
        return [f"compression={self.method}", *values]

    def get(self, key: str, default=None):
        return dict(self.params).get(key, default)


def _typed(method: str, key: str, value, kind: type):
    ok = isinstance(value, bool) if kind is bool else (
        isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
        isinstance(value, kind) and not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"search.space.{method}.{key} has value {value!r}; it takes {kind.__name__} values")
    return float(value) if kind is float else value


def check_space(space: dict[str, dict[str, list]]) -> None:
    """Unknown methods or keys, empty or mistyped value lists: one line naming the problem and the fix."""
    if not space:
        raise ConfigError("search.space is empty; give at least one method, e.g. search.space.rtn.bits=[3,4]")
    for method, params in space.items():
        if method not in SEARCHABLE:
            raise ConfigError(f"search.space.{method}: unknown method; searchable methods are {', '.join(SEARCHABLE)}")
        for key, values in (params or {}).items():
            if key not in SEARCHABLE[method]:
                raise ConfigError(f"search.space.{method}.{key} is not searchable for {method}; "
                                  f"use {', '.join(SEARCHABLE[method])}")
            if not values:
                raise ConfigError(f"search.space.{method}.{key} is empty; list at least one value")
            for value in values:
                _typed(method, key, value, SEARCHABLE[method][key])


def grid(space: dict[str, dict[str, list]]) -> list[Point]:
    """Every configuration the space holds, methods in the space's order, values in their listed order."""
    points = []
    for method, params in space.items():
        params = params or {}
        keys = list(params)
        for values in itertools.product(*(params[k] for k in keys)):
            typed = [_typed(method, k, v, SEARCHABLE[method][k]) for k, v in zip(keys, values)]
            points.append(Point(method, tuple(zip(keys, typed))))
    return points


@dataclass(frozen=True)
class Shapes:
    """What the costs need from the model: the quantized linears' (out, in) shapes and the other parameters."""

    linears: tuple[tuple[int, int], ...]
    other_bytes: int  # every parameter outside the quantized linears, at the dtype the run loads


def model_shapes(model_cfg) -> Shapes:
    """The model built on the meta device from its config: shapes and byte counts, no weight read."""
    import torch
    from transformers import AutoConfig

    from flipbench import models
    from flipbench.compress.families import quantizable_linears, weight_matrix, weight_param

    path = models.resolve_path(model_cfg.path)
    config = AutoConfig.from_pretrained(path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
    model = models.meta_model(config, trust_remote_code=model_cfg.trust_remote_code)
    dtype = models.load_dtype(model_cfg.dtype, models.pick_device(model_cfg.device), config)
    linears = quantizable_linears(model)
    quantized = {id(weight_param(m)) for m in linears.values()}
    size = torch.empty((), dtype=dtype).element_size()
    other = sum(p.numel() * size for p in model.parameters() if id(p) not in quantized)
    return Shapes(tuple(tuple(weight_matrix(m).shape) for m in linears.values()), other)


def avg_bits(point: Point, shapes: Shapes, defaults: dict) -> float:
    """The registry's avg_bits for this point (TACQ's kept weights counted as the quantizer counts them)."""
    from flipbench.compress import avg_bits as registry_avg_bits
    from flipbench.compress.quant.tacq import n_to_keep

    settings = {**defaults.get(point.method, {}), **dict(point.params)}
    n_params = sum(rows * cols for rows, cols in shapes.linears)
    kept = n_to_keep(settings["keep_fraction"], n_params) if point.method == "tacq" else 0
    return registry_avg_bits(shapes.linears, settings["bits"], settings["group_size"], kept, settings.get("sym", False))


def model_bytes(bits: float, shapes: Shapes) -> int:
    n_params = sum(rows * cols for rows, cols in shapes.linears)
    return int(round(shapes.other_bytes + n_params * bits / 8))


def fidelities(full_docs: int, min_fraction: float, eta: int) -> list[float]:
    """Share of every task's docs at each rung: min_fraction·η^k while it gives the largest task (``full_docs``)
    fewer docs than all and more than the rung before, then 1 (every doc)."""
    from flipbench.subsample import sample_size

    shares, seen, fraction = [], set(), min_fraction
    while fraction < 1:
        docs = sample_size(fraction, full_docs)
        if docs < full_docs and docs not in seen:
            shares.append(round(fraction, 12))
            seen.add(docs)
        fraction *= eta
    return shares + [1.0]
