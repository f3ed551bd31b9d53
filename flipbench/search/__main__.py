"""``python -m flipbench.search [overrides]`` (also ``flipbench search ...`` and ``make search``).

Exit codes: 0 a configuration passes every limit, 2 bad input (one line on stderr, nothing loaded), 3 none
passes (recommendation.json names the closest), 1 any other error.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from flipbench.cli import EXIT_BAD_INPUT, EXIT_GATE_FAILED, _one_line, user_error_types


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from flipbench.search import run

    logging.basicConfig(level=os.environ.get("FLIPBENCH_LOG", "INFO"), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        folder = run(sys.argv[1:] if argv is None else argv)
    except user_error_types() as err:
        print(f"flipbench search: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (HydraException, OmegaConfBaseException) as err:
        print(f"flipbench search: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    rec = json.loads((folder / "recommendation.json").read_text())
    print(f"flipbench search: {folder}  {rec['status']}: {rec.get('label')}  ({rec.get('command')})")
    return 0 if rec["passes"] else EXIT_GATE_FAILED


if __name__ == "__main__":
    sys.exit(main())
