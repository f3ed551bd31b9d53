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


def precheck(argv: list[str]) -> str | None:
    """Compose the config once before Hydra runs, so a bad key or value is one line, not Hydra's report.

    Returns the error line, or None. Sweeps (-m) and Hydra's own options are left to Hydra.
    """
    if any(a in ("-m", "--multirun") or a.startswith("-") for a in argv):
        return None
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from flipbench.config import to_typed

    overrides = [a for a in argv if not a.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            to_typed(compose(config_name="config", overrides=overrides))
    except ConfigError as err:
        return str(err)
    except (HydraException, OmegaConfBaseException) as err:
        return _one_line(err)
    return None


def _one_line(err: BaseException) -> str:
    """Hydra's multi-line composition errors, reduced to what is wrong and where to look."""
    cause = str(err.__cause__ or "").splitlines()
    text = str(err).splitlines()
    if cause and "not in" in cause[0]:
        key = text[0].split("'")[1] if "'" in text[0] else cause[0]
        return f"unknown config key '{key}'; run `flipbench --help` for the valid keys"
    if cause:
        return f"{text[0]}: {cause[0]}"
    options = [line.strip() for line in text if line.startswith("\t") and "provider=" not in line]
    hint = f" (choices: {', '.join(options)})" if options else ""
    return f"{text[0]}{hint}; run `flipbench --help` for the config groups"


def main() -> None:
    """Console entry: logging set-up, a cheap config check, then Hydra composes and runs."""
    if sys.argv[1:2] == ["search"]:  # `flipbench search ...`: the budget search, its own config root
        from flipbench.search.__main__ import main as search_main

        sys.exit(search_main(sys.argv[2:]))
    logging.basicConfig(level=os.environ.get("FLIPBENCH_LOG", "INFO"), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    error = precheck(sys.argv[1:])
    if error:
        print(f"flipbench: error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    _app()


if __name__ == "__main__":
    main()
