"""``flipbench --help``: every config key with its type, default and meaning, read from the typed schema.

The meaning is the comment on the field's line in flipbench/config.py (or the comment lines right above it; for a key
a method's config inherits, the class that declares it), so the help and the schema cannot drift apart. Compression
keys are listed per method: each method's config holds only its own.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
import typing

from flipbench import config

USAGE = """usage: flipbench [KEY=VALUE ...] [-m sweep] [-v]     one comparison (make eval)
       flipbench collect side=baseline|compressed [shard=I/N] output.artifact=DIR [KEY=VALUE ...]
       flipbench compare BASE_ARTIFACT COMP_ARTIFACT [gate.*=... output.*=...]
       flipbench search [KEY=VALUE ...]                   budget search (flipbench search --help)

Config groups (select with GROUP=OPTION): model=tiny|hf|gguf, compression=none|rtn|gptq|tacq|magnitude|wanda|
sparsegpt|layerdrop|checkpoint, calibration=task|text, suite=tiny|standard, engine=hf|vllm|server.
A key that holds a mapping (suite.num_fewshot, suite.task_limits, gate.per_task, model.max_memory, ...) takes new
entries and whole mappings without '+' (suite.num_fewshot.mmlu=5, 'suite.task_limits={mmlu: 100}'): flipbench
passes them to Hydra as '++' (set, whether or not the entry exists); '+' is accepted too. Exit codes: 0 done, 2 bad input,
3 gate failed, 130 interrupted, 1 other error.
"""


def field_comments(module=config) -> dict[str, str]:
    """'Class.field' -> the comment on the field's line, or the comment block right above it."""
    source = inspect.getsource(module)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    out: dict[str, str] = {}
    current = None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if line.startswith("class "):
            current = stripped[len("class "):].split("(")[0].split(":")[0]
            continue
        if current and line.startswith("    ") and not line.startswith("     ") and ":" in stripped \
                and not stripped.startswith(("#", '"', "def ", "@")):
            name = stripped.split(":")[0].strip()
            if not name.isidentifier():
                continue
            text = comments.get(number)
            if text is None:  # the comment lines right above
                above, k = [], number - 1
                while k in comments and lines[k - 1].strip().startswith("#"):
                    above.insert(0, comments[k])
                    k -= 1
                text = " ".join(above)
            out[f"{current}.{name}"] = text
    return out


def _type_name(hint) -> str:
    text = str(hint).replace("typing.", "")
    return getattr(hint, "__name__", text) if not getattr(hint, "__args__", None) else text


def _meaning(schema: type, name: str, comments: dict) -> str:
    """The comment of the nearest class in ``schema``'s MRO that comments the field."""
    return next((comments[f"{k.__name__}.{name}"] for k in schema.__mro__ if comments.get(f"{k.__name__}.{name}")), "")


def rows(schema=config.FlipbenchConfig, prefix: str = "", comments: dict | None = None) -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every key of the schema but compression's (:func:`method_rows`)."""
    comments = field_comments() if comments is None else comments
    out = []
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        hint = hints[field.name]
        if hint is config.CompressionConfig:
            continue
        if dataclasses.is_dataclass(hint):
            out += rows(hint, f"{prefix}{field.name}.", comments)
            continue
        if field.default is not dataclasses.MISSING:
            default = repr(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = repr(field.default_factory())
        else:
            default = "(required)"
        default = "(required)" if default == "'???'" else default
        out.append((f"{prefix}{field.name}", _type_name(hint), default, _meaning(schema, field.name, comments)))
    return out


def method_rows(comments: dict | None = None) -> dict[str, list[tuple[str, str, str, str]]]:
    """compression=<method> -> (key, type, default, meaning) of each key of its config but ``method``."""
    comments = field_comments() if comments is None else comments
    return {method: [row for row in rows(schema, "compression.", comments) if row[0] != "compression.method"]
            for method, schema in config.METHOD_CONFIGS.items()}


def text() -> str:
    table, per_method = rows(), method_rows()
    width = max(len(k) for k, *_ in table)

    def lines(entries) -> str:
        return "\n".join(f"  {key:<{width}}  {kind} = {default}" + (f"\n  {'':<{width}}    {meaning}" if meaning else "")
                         for key, kind, default, meaning in entries)
    methods = "\n".join(f"compression={method}: {inspect.getdoc(config.METHOD_CONFIGS[method]).splitlines()[0]}"
                        + (f"\n{lines(entries)}" if entries else " (no keys)") for method, entries in per_method.items())
    return (f"{USAGE}\nKeys (type = default, then what it means):\n{lines(table)}\n\n"
            "Compression keys, per method (compression=<method>; another method's key is refused):\n"
            f"{methods}\n")
