"""A child process's work for the cache-concurrency test, in a module of its own: a spawned child imports only this
(and flipbench.cache), not the test module with the whole pipeline behind it."""

from pathlib import Path

import pandas as pd

from flipbench.cache import BaselineCache


def frame(n=5) -> pd.DataFrame:
    return pd.DataFrame({"doc_id": range(n), "ll": [[-1.0, -2.5]] * n, "pred": ["0"] * n})


def write_repeatedly(root: str, rows: int) -> None:
    cache = BaselineCache(Path(root))
    for _ in range(10):
        with cache.lock("k"):
            cache.store("k", frame(rows), {})
