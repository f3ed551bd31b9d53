"""The search's typed configuration: ``conf/search.yaml`` is its own config root, the run config plus a
``search`` node, composed by Hydra and checked here once, before any model weight is read.

Budget units. ``search.max_avg_bits`` is in bits per quantized weight: a number, or a number followed by
``bits``. ``search.max_model_gb`` must name its unit, because GB and GiB differ by 7%: ``3GB`` (10^9 bytes),
``2.5GiB`` (2^30), ``800MB``, ``500MiB``; a bare number such as ``3`` is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from flipbench.config import ConfigError, FlipbenchConfig, validate

SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
              "GIB": 2**30, "TIB": 2**40}
PRUNERS = ("successive_halving", "hyperband", "none")
SAMPLERS = ("brute_force", "tpe", "random")
COSTS = ("avg_bits", "model_gb")


@dataclass
class SearchConfig:
    id: Optional[str] = None  # folder under <output.root>/searches/; an existing id resumes that search
    max_avg_bits: Optional[str] = None  # bits per quantized weight, e.g. 3.5 or "3.5bits"
    max_model_gb: Optional[str] = None  # with a unit: "3GB", "2.5GiB", "800MB"
    cost: str = "avg_bits"  # what "cheapest" means: avg_bits | model_gb
    upper_bound: bool = False  # retired: gate.on=upper_ci is the one switch (runs, sweeps, searches)
    min_fraction: float = 0.25  # first rung: a seeded random share of the docs of every task
    reduction_factor: int = 4  # η: rungs at min_fraction·η^k; successive halving ranks out all but the best 1/η
    # successive_halving | hyperband: a trial stops only when its screening bounds violate a limit with confidence
    # and the pruner ranks it out; none: every trial reaches full fidelity
    pruner: str = "successive_halving"
    sampler: str = "brute_force"  # brute_force: every point once, in a seeded random order | tpe | random
    n_trials: Optional[int] = None  # default: as many as the grid holds
    skip_costlier: bool = True  # do not evaluate a point that costs at least a passing full-fidelity one
    seed: int = 0
    space: Dict[str, Dict[str, List[Any]]] = field(default_factory=dict)


@dataclass
class SearchRootConfig(FlipbenchConfig):
    search: SearchConfig = field(default_factory=SearchConfig)


def register() -> None:
    ConfigStore.instance().store(name="flipbench_search_schema", node=SearchRootConfig)


@dataclass(frozen=True)
class Budget:
    max_avg_bits: float | None
    max_model_bytes: int | None


def parse_bits(text: str | None) -> float | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(bits?)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ConfigError(f"search.max_avg_bits={text!r} is not a bit width; write e.g. 3.5 or 3.5bits")
    return float(match.group(1))


def parse_size(text: str | None) -> int | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not match:
        raise ConfigError(f"search.max_model_gb={text!r} is not a size; write e.g. 3GB or 2.5GiB")
    number, unit = match.groups()
    if not unit:
        raise ConfigError(f"search.max_model_gb={text!r} has no unit; write {number}GB (10^9 bytes) or "
                          f"{number}GiB (2^30 bytes)")
    if unit.upper() not in SIZE_UNITS:
        raise ConfigError(f"search.max_model_gb={text!r} has an unknown unit {unit!r}; use B, KB, MB, GB, "
                          "KiB, MiB or GiB")
    return int(round(float(number) * SIZE_UNITS[unit.upper()]))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def to_typed(cfg: DictConfig | SearchRootConfig) -> tuple[SearchRootConfig, Budget]:
    """The composed search config as dataclasses, checked; returns it with the parsed budget."""
    typed = cfg if isinstance(cfg, SearchRootConfig) else OmegaConf.to_object(cfg)
    typed.suite.data_files = {task: path for task, path in typed.suite.data_files.items() if path}
    # compression.replicas / replica_threads are the trials' (driver.noise_overrides checks them with each trial's
    # method); the root is composed without them
    validate(typed)
    s = typed.search
    _check(not s.upper_bound, "search.upper_bound is retired: gate.on=upper_ci is the one switch for runs, sweeps and "
           "searches (at full fidelity the search then judges bounds, Bonferroni-adjusted for the configurations compared)")
    _check(s.cost in COSTS, f"search.cost={s.cost!r} is unknown; use one of {', '.join(COSTS)}")
    _check(s.pruner in PRUNERS, f"search.pruner={s.pruner!r} is unknown; use one of {', '.join(PRUNERS)}")
    _check(s.sampler in SAMPLERS, f"search.sampler={s.sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
    _check(0 < s.min_fraction <= 1, f"search.min_fraction={s.min_fraction} must be in (0, 1], e.g. 0.25")
    _check(s.reduction_factor >= 2, f"search.reduction_factor={s.reduction_factor} must be >= 2, e.g. 4")
    _check(s.n_trials is None or s.n_trials > 0, f"search.n_trials={s.n_trials} must be positive")
    _check(s.id is None or re.fullmatch(r"[A-Za-z0-9._-]+", s.id) is not None,
           f"search.id={s.id!r} must be a plain folder name (letters, digits, . _ -)")
    budget = Budget(parse_bits(s.max_avg_bits), parse_size(s.max_model_gb))
    return typed, budget
