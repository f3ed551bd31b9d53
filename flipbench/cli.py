"""Command line: a thin Hydra entry around :func:`flipbench.pipeline.run`.

Exit codes: 0 done (and the gate passed or is not set), 2 bad input (one line on stderr, nothing loaded),
3 the release gate failed, 1 any other error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from flipbench.config import ConfigError, register

EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register()
if not OmegaConf.has_resolver("basename"):
    OmegaConf.register_new_resolver("basename", lambda p: Path(str(p).rstrip("/")).name or str(p))


def user_error_types() -> tuple[type[BaseException], ...]:
    from flipbench.pairing import PairingError

    return ConfigError, PairingError


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from flipbench import pipeline

    sweeping = HydraConfig.get().mode.name == "MULTIRUN"
    if sweeping:
        cfg.output.run_dir = HydraConfig.get().runtime.output_dir
    try:
        run_dir = pipeline.run(cfg)
    except user_error_types() as err:
        # SystemExit passes through Hydra's error handler, so the exit code reaches the shell.
        print(f"flipbench: error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    gate = json.loads((run_dir / "manifest.json").read_text()).get("gate") or {}
    print(f"flipbench: run complete: {run_dir}  gate: {gate.get('verdict', 'not set')}")
    if gate.get("verdict") == "FAIL" and not sweeping:
        sys.exit(EXIT_GATE_FAILED)


def main() -> None:
    """Console entry: logging set-up, then Hydra composes (and type-checks) the config and runs."""
    logging.basicConfig(level=os.environ.get("FLIPBENCH_LOG", "INFO"), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    _app()


if __name__ == "__main__":
    main()
