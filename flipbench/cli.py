"""Command line: a thin Hydra entry around :func:`flipbench.pipeline.run`.

``-v`` shows lm-eval's and datasets' own progress and logs on the console (they always go to run.log).
Exit codes: 0 done (and the gate passed or is not set), 2 bad input (one line on stderr, nothing loaded),
3 the release gate failed, 130 interrupted (Ctrl-C; the run folder is marked failed), 1 any other error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from flipbench.config import ConfigError, method_key_error, register, unknown_key_error
from flipbench.rundir import member_tag

EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3
EXIT_INTERRUPTED = 130
# Config fields that are mappings from a task name: a new entry needs Hydra's '+'.
MAPPING_KEYS = ("suite.num_fewshot", "suite.metrics", "suite.data_files", "suite.max_gen_toks", "suite.correct_if",
                "gate.per_task")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register()
if not OmegaConf.has_resolver("basename"):
    OmegaConf.register_new_resolver("basename", lambda p: Path(str(p).rstrip("/")).name or str(p))
if not OmegaConf.has_resolver("member_tag"):
    OmegaConf.register_new_resolver("member_tag", member_tag)


def user_error_types() -> tuple[type[BaseException], ...]:
    from flipbench.pairing import PairingError

    return ConfigError, PairingError


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from flipbench import console, pipeline

    if not logging.getLogger().handlers:  # a sweep member in a worker process: the same quiet console
        console.setup(os.environ.get("FLIPBENCH_LOG", "INFO"))
    sweeping = HydraConfig.get().mode.name == "MULTIRUN"
    if os.environ.get(COLLECT_ENV):
        return _collect(cfg)
    if sweeping:
        cfg.output.run_dir = HydraConfig.get().runtime.output_dir
    try:
        run_dir = pipeline.run(cfg)
    except user_error_types() as err:
        # SystemExit passes through Hydra's error handler, so the exit code reaches the shell.
        print(f"flipbench: error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt as err:
        interrupted(getattr(err, "stage", "start-up"), getattr(err, "run_dir", None))
    except Exception as err:  # noqa: BLE001  a sweep goes on: the member's folder is marked failed, the report lists it
        if not sweeping:
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        logging.getLogger("flipbench").error("sweep member %s failed: %s: %s", cfg.output.run_dir, type(err).__name__, first)
        return
    gate = json.loads((run_dir / "manifest.json").read_text()).get("gate") or {}
    print(f"flipbench: run complete: {run_dir}  gate: {gate.get('verdict', 'not set')}")
    if gate.get("verdict") == "FAIL" and not sweeping:
        sys.exit(EXIT_GATE_FAILED)


COLLECT_ENV = "FLIPBENCH_COLLECT"  # set by `flipbench collect`: each (multirun) job collects one side or shard


def _collect(cfg: DictConfig) -> None:
    from flipbench.collect import collect

    try:
        folder = collect(cfg)
    except user_error_types() as err:
        print(f"flipbench: error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        interrupted("collect", None)
    print(f"flipbench: collect complete: {folder}")


def compare_main(argv: list[str]) -> int:
    """`flipbench compare BASE COMP [gate...]`: no Hydra, no model; exit 0 / 2 bad input / 3 gate failed."""
    from flipbench import console
    from flipbench.compare import compare

    console.setup(os.environ.get("FLIPBENCH_LOG", "INFO"))
    if any(a in ("-h", "--help") for a in argv):
        print(compare.__doc__ or "")
        return 0
    try:
        sides = [a for a in argv if "=" not in a]
        if len(sides) > 2:  # one baseline, several compressed sides: a run each and the sweep's tables
            from flipbench.compare_many import compare_many, verdicts

            sweep_dir, runs = compare_many(sides[0], sides[1:], [a for a in argv if "=" in a])
            failed = [name for name, verdict in verdicts(runs).items() if verdict == "FAIL"]
            print(f"flipbench: compare complete: {sweep_dir}  members: {len(runs)}  gate failed: {', '.join(failed) or 'none'}")
            return EXIT_GATE_FAILED if failed else 0
        run_dir = compare(argv)
    except user_error_types() as err:
        print(f"flipbench: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    gate = json.loads((run_dir / "manifest.json").read_text()).get("gate") or {}
    print(f"flipbench: compare complete: {run_dir}  gate: {gate.get('verdict', 'not set')}")
    return EXIT_GATE_FAILED if gate.get("verdict") == "FAIL" else 0


def interrupted(stage: str, run_dir) -> None:
    """Ctrl-C: one line naming the stage and what became of the run folder, exit 130 (128 + SIGINT)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while shutting down changes nothing
    where = f"run {run_dir} marked failed" if run_dir else "no run folder was written"
    print(f"flipbench: interrupted during {stage}; {where}", file=sys.stderr)
    # The stack has unwound (the manifest is written, files closed); exit now rather than through interpreter
    # finalization, which restores the default SIGINT action and could turn a late signal into "killed by SIGINT".
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def sweep_members(overrides: list[str]) -> list[list[str]]:
    """The override list of every member of a multirun, as Hydra's basic sweeper will expand them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [member for batch in BasicSweeper.split_arguments(parsed, None) for member in batch]


def precheck(argv: list[str]) -> str | None:
    """Compose the config before Hydra runs, so a bad key or value is one line, not Hydra's report.

    A sweep (-m) is expanded into its members and each one's preflight runs (the datasets and tokenizer checks
    once per distinct model and suite), so a bad member is refused before the first member starts.
    Returns the error line, or None. Hydra's own options (``--cfg``, ``hydra.*``) are left to Hydra.
    """
    sweeping = any(a in ("-m", "--multirun") for a in argv)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return None
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from flipbench.config import to_typed

    overrides = [a for a in argv if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    member = overrides
    try:
        members = sweep_members(overrides) if sweeping else [overrides]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            configs = []
            for member in members:
                configs.append(to_typed(compose(config_name="config", overrides=member)))
        if sweeping:
            _preflight_members(configs)
    except (ConfigError, HydraException, OmegaConfBaseException) as err:
        line = str(err) if isinstance(err, ConfigError) else _one_line(err, member)
        return f"sweep member {' '.join(member)}: {line}" if sweeping and len(members) > 1 else line
    return None


def _preflight_members(configs: list) -> None:
    from dataclasses import asdict

    from flipbench import pipeline
    from flipbench.config import setting

    prepared = set()
    for cfg in configs:
        plan = pipeline.preflight(cfg)
        calibrated = pipeline._needs_calibration(cfg)  # pruners that draw calibration data too
        key = json.dumps([asdict(cfg.model), asdict(cfg.suite), asdict(cfg.calibration) if calibrated else None,
                          setting(cfg.compression, "path"), cfg.eval.seed], sort_keys=True, default=str)
        if key not in prepared:
            pipeline.prepare(cfg, plan)
            prepared.add(key)


def _one_line(err: BaseException, overrides: list[str] = ()) -> str:
    """Hydra's multi-line composition errors, reduced to what is wrong and where to look. A compression key the
    selected method (the last ``compression=`` of ``overrides``, else conf/config.yaml's rtn) does not have is named
    with the methods that have it."""
    cause = str(err.__cause__ or "").splitlines()
    text = str(err).splitlines()
    if cause and "not in" in cause[0]:
        key = text[0].split("'")[1] if "'" in text[0] else cause[0]
        mapping = next((m for m in MAPPING_KEYS if key.startswith(m + ".")), None)
        if mapping:
            entry = key[len(mapping) + 1:].split(".")[0]
            return f"{mapping} has no entry '{entry}' yet; add one with a leading '+': +{key}=..."
        if key.startswith("compression."):
            method = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("compression=")), "rtn")
            return str(method_key_error(method, key.removeprefix("compression.")) or unknown_key_error(key, method))
        return str(unknown_key_error(key))
    if cause:
        return f"{text[0]}: {cause[0]}"
    options = [line.strip() for line in text if line.startswith("\t") and "provider=" not in line]
    hint = f" (choices: {', '.join(options)})" if options else ""
    return f"{text[0]}{hint}; run `flipbench --help` for the config groups"


def default_suite(argv: list[str]) -> list[str]:
    """A model of the user's own (``model=hf``/``gguf`` or a ``model.path``) runs the standard suite unless a suite is
    named: the synthetic tasks are the bundled model's, as ``make eval MODEL=...`` has it."""
    words = [a.lstrip("+") for a in argv]
    own = any(w in ("model=hf", "model=gguf") or (w.startswith("model.path=") and w != "model.path=bundled:tiny")
              for w in words)
    if own and not any(w.startswith("suite=") for w in words):
        return [*argv, "suite=standard"]
    return argv


def mapping_keys() -> list[str]:
    """Schema keys that hold a mapping (task -> value, device -> size, ...): every entry under them is new."""
    import dataclasses
    import typing

    from flipbench.config import FlipbenchConfig

    out = []

    def walk(schema, prefix):
        for name, hint in typing.get_type_hints(schema).items():
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{name}.")
            elif typing.get_origin(hint) in (dict, typing.Dict):
                out.append(f"{prefix}{name}")
    walk(FlipbenchConfig, "")
    return out


def force_mapping_overrides(argv: list[str]) -> list[str]:
    """``suite.task_limits={a: 4}`` and ``suite.num_fewshot.mmlu=5`` set a mapping or one of its entries: Hydra wants
    '+' for a new entry and '++' to replace a mapping, which depends on what the selected config already holds. Such
    overrides become '++' (set, whether or not the entry exists), so '+' is needed for nothing."""
    keys = mapping_keys()
    out = []
    for arg in argv:
        key = arg.lstrip("+").split("=", 1)[0]
        if "=" in arg and not arg.startswith("~") and any(key == k or key.startswith(k + ".") for k in keys):
            arg = "++" + arg.lstrip("+")
        out.append(arg)
    return out


def calm_threads() -> None:
    """OpenMP threads that spin while they wait turn a CPU shared with one other busy process into a queue: each
    small torch op waits for a scheduler slice (a 576-wide matmul at batch 8 took 16 ms instead of 0.1 ms on two
    cores; docs/benchmarks.md). Sleeping waiters do not. Only before torch loads, never over the user's own setting."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    """Console entry: logging set-up, a cheap config check, then Hydra composes and runs."""
    calm_threads()
    if sys.argv[1:2] == ["search"]:  # `flipbench search ...`: the budget search, its own config root
        from flipbench.search.__main__ import main as search_main

        sys.exit(search_main(sys.argv[2:]))
    if sys.argv[1:2] == ["compare"]:  # `flipbench compare BASE COMP ...`: two artifacts, no model
        sys.exit(compare_main(sys.argv[2:]))
    if sys.argv[1:2] == ["collect"]:  # `flipbench collect side=... [shard=I/N]`: one side into an artifact
        del sys.argv[1]
        os.environ[COLLECT_ENV] = "1"
        if any(a in ("-m", "--multirun") for a in sys.argv[1:]):  # shards as jobs: no sweep summary to write
            sys.argv.append("~hydra.callbacks.sweep_summary")
    from flipbench import console

    for flag in ("-v", "--verbose"):  # ours, not Hydra's: lm-eval's and datasets' own output on the console too
        if flag in sys.argv[1:]:
            sys.argv.remove(flag)
            os.environ[console.VERBOSE_ENV] = "1"
    console.setup(os.environ.get("FLIPBENCH_LOG", "INFO"))
    if sys.argv[1:] in (["--help"], ["-h"]):  # every key from the typed schema; Hydra's own: --hydra-help
        from flipbench.help import text

        print(text())
        sys.exit(0)
    sys.argv[1:] = force_mapping_overrides(default_suite(sys.argv[1:]))
    try:
        error = precheck(sys.argv[1:])
        if error:
            print(f"flipbench: error: {error}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        _app()
    except KeyboardInterrupt as err:  # before Hydra runs, or between sweep members
        interrupted(getattr(err, "stage", "start-up"), getattr(err, "run_dir", None))


if __name__ == "__main__":
    main()
