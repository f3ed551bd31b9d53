"""Where two greedy generations part: per-doc trajectory columns and per-task survival, from the paired table.

Per generative doc (b = baseline, c = compressed; tokens are each response's answer tokens as token KL encodes
them, :func:`flipbench.tokenkl._encode`: prompt + response encoded, the tokens past the prompt's own encoding,
so ``first_div_token`` indexes the same positions as the per-token lists ``tok_*``):

- ``gen_identical``: 1.0 when the two raw responses are the same string, else 0.0.
- ``first_div_token``: index in b's answer tokens of the first token where the two differ (the length of their
  common token prefix; equal to b's length when b's answer is a prefix of c's); NaN when identical.
- ``prefix_share``: common-prefix tokens / the longer answer's tokens (1.0 when identical or both empty).
- ``gen_len_base`` / ``gen_len_comp``: answer tokens; ``len_ratio`` = comp / base (1.0 when both are empty,
  NaN when only the baseline's is).
- ``max_gen_toks``: the task's generation budget; ``trunc_base`` / ``trunc_comp``: 1.0 when that side's answer
  has at least ``max_gen_toks`` tokens (it ran out of budget instead of reaching a stop sequence or the end of
  text: "stop reached" is 1 - trunc), NaN when the budget is unknown. Counted by re-encoding the text, which
  can give a token fewer than the generation took where the model produced a non-canonical tokenization.

Per task (:func:`summary_record`): the share of identical answers, the median first divergent token over the
docs that diverge, the median length ratio, truncation shares, and the divergence-at-N rate
``div_at_<N>`` = share of docs whose generations differ within their first N tokens (``first_div_token`` < N)
for N in :data:`DIVERGENCE_AT`. The survival curve S(t) = share of docs whose generations still agree on their
first t tokens (identical answers agree for every t) = 1 - divergence-at-t; S(0) = 1 and S never increases.
Everything but :func:`annotate` is a pure function of the paired samples table.

The reasoning span (``suite.think_end``; lm-eval keeps what follows the last marker as the answer), per doc and
side, from the raw generation captured before lm-eval strips it (:func:`flipbench.side.think_markers`):
``think_closed`` 1.0 when the raw generation holds the marker, 0.0 when not; ``think_len`` the tokens before the
last marker (the span lm-eval strips; NaN when it is absent); ``think_cut`` 1.0 when the marker is absent and the
generation ran to max_gen_toks (the model was still reasoning when the budget ended; counted, as ``trunc_*``, by
re-encoding the text up to the first stop sequence the engine stops on), else 0.0. All NaN without a marker set.
Per task (:func:`think_record`): the median span per side over the docs whose span closed, the median comp/base
ratio over the docs whose span closed on both sides, and per side the shares of docs whose span did not close
(``think_unclosed_*``) and of those cut at the budget (``think_cut_*``, a part of them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

GENERATIVE = "generate_until"
DIVERGENCE_AT = (1, 8, 32, 128)
DOC_COLUMNS = ("gen_identical", "first_div_token", "prefix_share", "gen_len_base", "gen_len_comp", "len_ratio",
               "max_gen_toks", "trunc_base", "trunc_comp")
SUMMARY = ("gen_identical", "first_div_median", "prefix_share_mean", "len_ratio_median", "trunc_base", "trunc_comp",
           *(f"div_at_{n}" for n in DIVERGENCE_AT))
THINK_DOC = ("think_len", "think_closed", "think_cut")  # per side frame; _base / _comp once paired
THINK_SUMMARY = ("think_len_median_base", "think_len_median_comp", "think_len_ratio_median", "think_unclosed_base",
                 "think_unclosed_comp", "think_cut_base", "think_cut_comp")
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval HFLM's budget for a generative task whose generation_kwargs set none


def budgets(task_objs: dict, plan=None) -> dict[str, int]:
    """Reported task -> its generation budget (``generation_kwargs.max_gen_toks``, as set on the lm-eval Task
    objects, suite.max_gen_toks included) for the generative tasks of ``task_objs`` (leaf -> Task)."""
    out = {}
    for leaf, task in task_objs.items():
        if task.get_config("output_type") != GENERATIVE:
            continue
        name = plan.reported.get(leaf, leaf) if plan is not None else leaf
        kwargs = task.get_config("generation_kwargs") or {}
        out[name] = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
    return out


def answer_tokens(tokenizer, prompt: str, answer: str) -> list[int]:
    """The answer's tokens as token KL scores them (prompt + answer encoded, the tokens past the prompt)."""
    from flipbench.tokenkl import _encode

    ids, start = _encode(tokenizer, str(prompt), str(answer), False)
    return ids[start:]


def common_prefix(a, b) -> int:
    """Length of the common prefix of two sequences."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n])) if n else np.empty(0)
    return int(diff[0]) if diff.size else n


def doc_values(tokens_b, tokens_c, identical: bool, budget: float = np.nan) -> dict[str, float]:
    """The per-doc columns (module doc) of one pair of answers given as token lists."""
    n_b, n_c = len(tokens_b), len(tokens_c)
    common = common_prefix(tokens_b, tokens_c)
    longest = max(n_b, n_c)
    return {
        "gen_identical": float(identical),
        "first_div_token": np.nan if identical else float(common),
        "prefix_share": 1.0 if identical or longest == 0 else common / longest,
        "gen_len_base": float(n_b), "gen_len_comp": float(n_c),
        "len_ratio": n_c / n_b if n_b else (1.0 if n_c == 0 else np.nan),
        "max_gen_toks": float(budget),
        "trunc_base": float(n_b >= budget) if np.isfinite(budget) else np.nan,
        "trunc_comp": float(n_c >= budget) if np.isfinite(budget) else np.nan,
    }


def annotate(paired: pd.DataFrame, tokenizer, max_gen_toks: dict[str, int] | None = None) -> None:
    """Fill the per-doc columns (:data:`DOC_COLUMNS`) into the generative rows of ``paired`` in place (every filter
    row of a doc gets its doc's values; MC rows NaN). ``max_gen_toks``: task -> budget (:func:`budgets`).
    Without a tokenizer (``None``: e.g. sides imported from lm-eval logs) only ``gen_identical`` is filled."""
    for column in DOC_COLUMNS:
        paired[column] = np.nan
    gen = paired["output_type"] == GENERATIVE
    if not gen.any():
        return
    max_gen_toks = max_gen_toks or {}
    values: dict[tuple, dict] = {}
    for task, group, doc, prompt, r_b, r_c in paired.loc[gen, ["task", "group", "doc_id", "prompt", "response_base",
                                                               "response_comp"]].itertuples(index=False):
        key = (task, group, doc)
        if key in values:
            continue
        r_b, r_c = "" if r_b is None else str(r_b), "" if r_c is None else str(r_c)
        if tokenizer is None:
            values[key] = {**dict.fromkeys(DOC_COLUMNS, np.nan), "gen_identical": float(r_b == r_c)}
            continue
        tokens_b = answer_tokens(tokenizer, prompt, r_b)
        tokens_c = tokens_b if r_c == r_b else answer_tokens(tokenizer, prompt, r_c)
        values[key] = doc_values(tokens_b, tokens_c, r_b == r_c, max_gen_toks.get(task, np.nan))
    keys = list(zip(paired.loc[gen, "task"], paired.loc[gen, "group"], paired.loc[gen, "doc_id"]))
    for column in DOC_COLUMNS:
        paired.loc[gen, column] = [values[k][column] for k in keys]


def _column(rows: pd.DataFrame, name: str) -> np.ndarray:
    if name not in rows:
        return np.full(len(rows), np.nan)
    return np.array(pd.to_numeric(rows[name], errors="coerce"), dtype=float)


def _scored(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with token-level trajectory columns (generative rows :func:`annotate` tokenized)."""
    return rows[np.isfinite(_column(rows, "gen_identical")) & np.isfinite(_column(rows, "gen_len_base"))]


def survival(rows: pd.DataFrame, t) -> np.ndarray:
    """S(t) for each t of ``t`` (tokens): the share of ``rows`` (one per doc) whose generations agree on their first
    t tokens. NaN when no row has trajectory columns."""
    rows = _scored(rows)
    t = np.asarray(t, dtype=float)
    if not len(rows):
        return np.full(t.shape, np.nan)
    first = _column(rows, "first_div_token")
    first = np.where(_column(rows, "gen_identical") == 1, np.inf, first)  # identical: agree for every t
    return (first[None, :] >= t.reshape(-1, 1)).mean(axis=1).reshape(t.shape)


def summary_record(rows: pd.DataFrame) -> dict[str, float]:
    """The per-task trajectory columns (:data:`SUMMARY`) over ``rows`` (one filter's rows: one per doc)."""
    identical = _column(rows, "gen_identical")
    identical = float(identical[np.isfinite(identical)].mean()) if np.isfinite(identical).any() else np.nan
    rows = _scored(rows)
    if not len(rows):
        return {**dict.fromkeys(SUMMARY, np.nan), "gen_identical": identical}
    first = _column(rows, "first_div_token")
    diverged = first[np.isfinite(first)]
    ratio = _column(rows, "len_ratio")
    ratio = ratio[np.isfinite(ratio)]
    out = {"gen_identical": identical,
           "first_div_median": float(np.median(diverged)) if diverged.size else np.nan,
           "prefix_share_mean": float(np.nanmean(_column(rows, "prefix_share"))),
           "len_ratio_median": float(np.median(ratio)) if ratio.size else np.nan}
    for side in ("base", "comp"):
        trunc = _column(rows, f"trunc_{side}")
        out[f"trunc_{side}"] = float(trunc[np.isfinite(trunc)].mean()) if np.isfinite(trunc).any() else np.nan
    for n, alive in zip(DIVERGENCE_AT, survival(rows, DIVERGENCE_AT)):
        out[f"div_at_{n}"] = 1.0 - float(alive)
    return out


def earliest_divergences(samples: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """The ``n`` generative flips (correctness changed) whose generations part earliest, one row per doc: first
    divergent token ascending, then task and doc."""
    gen = samples[(samples["output_type"] == GENERATIVE) & (samples["correct_base"] != samples["correct_comp"])]
    gen = gen[np.isfinite(_column(gen, "first_div_token"))] if len(gen) else gen
    gen = gen.drop_duplicates(["task", "group", "doc_id"])
    return gen.sort_values(["first_div_token", "task", "doc_id"], kind="stable").head(n)


def split_at_divergence(row) -> tuple[str, str, str]:
    """(shared prefix, baseline's continuation, compressed side's continuation) of one row's raw responses, split at
    their first differing character (no tokenizer needed: the first divergent token starts at or before it)."""
    import os

    b = "" if row["response_base"] is None else str(row["response_base"])
    c = "" if row["response_comp"] is None else str(row["response_comp"])
    k = len(os.path.commonprefix([b, c]))
    return b[:k], b[k:], c[k:]


def think_values(raw: str, marker: str, tokenizer, budget: float = np.nan, stops=()) -> dict[str, float]:
    """One raw generation's reasoning-span columns (:data:`THINK_DOC`; module doc). ``stops``: the stop sequences
    the engine stopped generating on (the text past the first is not the model's: a batch-mate kept the batch going)."""
    at = str(raw).rfind(marker)
    if at >= 0:
        return {"think_len": float(len(tokenizer(raw[:at], add_special_tokens=False)["input_ids"])),
                "think_closed": 1.0, "think_cut": 0.0}
    generated = str(raw)
    for stop in [stops] if isinstance(stops, str) else stops or ():
        if stop:
            generated = generated.split(stop)[0]
    tokens = len(tokenizer(generated, add_special_tokens=False)["input_ids"])
    return {"think_len": np.nan, "think_closed": 0.0,
            "think_cut": float(tokens >= budget) if np.isfinite(budget) else np.nan}


def annotate_think(frame: pd.DataFrame, generations: dict, marker: str, tokenizer, budgets: dict[str, int],
                   reported: dict[str, str], cut_at_stops: bool = True) -> None:
    """Fill :data:`THINK_DOC` into one side's frame in place (every filter row of a doc gets its doc's values; MC
    rows and docs without a captured generation NaN). ``generations``: (leaf task, doc_id) -> (raw generation, its
    request's stop sequences); ``budgets``: reported task -> max_gen_toks (:func:`budgets`); ``reported``: leaf ->
    reported task."""
    for column in THINK_DOC:
        frame[column] = np.nan
    values = {}
    for (leaf, doc), (raw, stops) in generations.items():
        task = reported.get(leaf, leaf)
        group = leaf.removeprefix(f"{task}_") if task != leaf else None  # a leaf of a group is reported as its group
        values[(task, group, int(doc))] = think_values(raw, marker, tokenizer, budgets.get(task, np.nan),
                                                       stops if cut_at_stops else ())
    if not values or frame.empty:
        return
    gen = frame.index[frame["output_type"] == GENERATIVE]
    empty = dict.fromkeys(THINK_DOC, np.nan)
    found = [values.get((t, g, int(d))) or values.get((t, None, int(d))) or empty
             for t, g, d in zip(frame.loc[gen, "task"], frame.loc[gen, "group"], frame.loc[gen, "doc_id"])]
    for column in THINK_DOC:
        frame.loc[gen, column] = [v[column] for v in found]


def _share(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else np.nan


def think_record(rows: pd.DataFrame) -> dict[str, float]:
    """The per-task reasoning-span columns (:data:`THINK_SUMMARY`) over ``rows`` (one filter's rows: one per doc)."""
    out = {}
    lengths = {side: _column(rows, f"think_len_{side}") for side in ("base", "comp")}
    for side, length in lengths.items():
        closed = length[np.isfinite(length)]
        out[f"think_len_median_{side}"] = float(np.median(closed)) if closed.size else np.nan
    b, c = lengths["base"], lengths["comp"]
    both = np.isfinite(b) & np.isfinite(c)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(b[both] > 0, c[both] / np.where(b[both] > 0, b[both], 1), np.where(c[both] == 0, 1.0, np.nan))
    ratio = ratio[np.isfinite(ratio)]
    out["think_len_ratio_median"] = float(np.median(ratio)) if ratio.size else np.nan
    for side in ("base", "comp"):
        out[f"think_unclosed_{side}"] = 1.0 - _share(_column(rows, f"think_closed_{side}"))
        out[f"think_cut_{side}"] = _share(_column(rows, f"think_cut_{side}"))
    return {name: out[name] for name in THINK_SUMMARY}
