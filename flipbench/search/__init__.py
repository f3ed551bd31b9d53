"""Budget search: the cheapest compression that still answers like the baseline, found by a multi-fidelity
Optuna study whose trials are ordinary flipbench runs.

``run(overrides)`` (driver.py) is the importable entry; ``python -m flipbench.search`` and ``flipbench search``
call it. space.py: what a search may vary and what each point costs; settings.py: the typed config;
study.py: the Optuna study, its rungs and resume; screening.py: the screening rungs' confidence bounds;
noise.py: ranking with compression replicas; outputs.py and report.py: what the search folder holds.
"""

from flipbench.search.driver import run

__all__ = ["run"]
