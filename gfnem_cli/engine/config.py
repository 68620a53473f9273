"""Recipes: YAML files of nested keys, validated against a family's schema.

A family declares every valid key with its default and its range (`engine/recipe_schema.py`);
a recipe may only set those keys (an unknown key is an error that names the nearest valid
one), `--set a.b=value` overrides any key by dotted path, and every value must lie in its
key's range, then the family's cross-key checks run on the result. A refusal is one line
naming the key, the value, the range and where the value came from (`recipe.yaml:12`, or
`--set`). The resolved config is written into the run directory, so a run is always
reproducible from its folder alone; `validate_config` / `load_config` check such a saved
config again (it may have been edited by hand).
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml

from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.files import os_error, write_text_atomic
from gfnem_cli.engine.recipe_schema import (Mapping, OutOfRange, Schema, Text, quoted,
                                            schema_for, show)

MAX_KEYS = 10_000   # YAML aliases can nest a small file into billions of keys

Origin = tuple  # (source, line): where a key's value came from; (None, None) = the default


def flatten(tree: dict, prefix: str = "", *, source: object = None,
            _seen: tuple = ()) -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; a dict default with no keys stays one free-form leaf.
    An alias cycle or an alias bomb in YAML is a one-line error, not a hang."""
    if id(tree) in _seen:
        raise GfnemError("the recipe refers to itself (a YAML alias inside its own anchor)",
                         source)
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + ".", source=source, _seen=_seen + (id(tree),)))
        else:
            flat[path] = value
        if len(flat) > MAX_KEYS:
            raise GfnemError(f"the recipe holds more than {MAX_KEYS:,} keys", source)
    return flat


def _set_path(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _unknown_key(path: str, valid: Iterable[str], source, line=None) -> GfnemError:
    valid = list(valid)
    near = difflib.get_close_matches(path, valid, n=1, cutoff=0.5)
    if not near:  # a typo in the last part alone: compare leaf names
        leaf = path.rsplit(".", 1)[-1]
        leaves = {v.rsplit(".", 1)[-1]: v for v in valid}
        hit = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
        near = [leaves[hit[0]]] if hit else []
    hint = f"did you mean '{near[0]}'?" if near else "see the recipes/ folder for valid keys"
    return GfnemError(f"unknown key {quoted(path)}", source, line, hint=hint)


def _schema(defaults: dict | Schema) -> Schema:
    return defaults if isinstance(defaults, Schema) else schema_for(defaults)


def check_value(schema: Schema, path: str, value: Any, source=None, line=None) -> Any:
    """`value` for key `path` as its range accepts it (coerced), or a one-line GfnemError."""
    check = schema.ranges[path]
    try:
        return check.coerce(value)
    except OutOfRange as bad:
        raise GfnemError(check.message(path, value), source, line, hint=bad.hint) from None
    except RecursionError:      # a self-referencing YAML list
        raise GfnemError(check.message(path, "<a self-referencing value>"), source,
                         line) from None


def _merge(schema: Schema, config: dict, updates: dict[str, Any], source,
           lines: dict[str, int] | None = None, origins: dict | None = None) -> dict:
    valid = schema.ranges
    merged = copy.deepcopy(config)
    for path, value in updates.items():
        line = (lines or {}).get(path)
        path = str(path)
        if path in valid:
            _set_path(merged, path, check_value(schema, path, value, source, line))
            if origins is not None:
                origins[path] = (source, line)
            continue
        parts = path.split(".")
        above = next((".".join(parts[:i]) for i in range(1, len(parts))
                      if ".".join(parts[:i]) in valid), None)
        if above is not None and isinstance(valid[above], Mapping):
            _set_path(merged, path, value)      # a free-form mapping takes any sub-key
        elif above is not None:
            raise GfnemError(f"key '{above}' takes a single value ({valid[above].describe}), "
                             f"not a mapping (got sub-key {quoted(path[len(above) + 1:])})",
                             source, line)
        elif any(k.startswith(path + ".") for k in valid):
            if value is None or value == {}:
                continue                          # `train:` with every key commented out
            inside = list(dict.fromkeys(k[len(path) + 1:].split(".")[0] for k in valid
                                        if k.startswith(path + ".")))
            raise GfnemError(f"{quoted(path)} is a section of keys ({', '.join(inside[:4])}"
                             f"{', ...' if len(inside) > 4 else ''}): give it a mapping, "
                             f"got {show(value)}", source, line)
        else:
            raise _unknown_key(path, valid, source, line)
    return merged


def _cross_check(schema: Schema, config: dict, origins: dict) -> None:
    for problem in (schema.conflicts(config) if schema.conflicts else ()):
        given = [origins[k] for k in problem.keys if k in origins]
        source, line = given[0] if given else (None, None)
        raise GfnemError(problem.message, source, line, hint=problem.hint)


def validate_config(defaults: dict | Schema, tree: Any, source: object = None,
                    lines: dict[str, int] | None = None) -> dict:
    """A full config from a nested tree (a saved `config.yaml`, say): keys the tree lacks take
    their defaults, every value is range-checked, then the cross-key checks run. Returns the
    checked config, the shape `resolve_config` returns; any problem is one GfnemError."""
    schema = _schema(defaults)
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise GfnemError(f"a config must be a mapping of keys to values, got {show(tree)}",
                         source)
    origins: dict = {}
    source = None if source is None else str(source)
    config = _merge(schema, schema.defaults, flatten(tree, source=source), source, lines,
                    origins)
    _cross_check(schema, config, origins)
    return config


def _parse_override(text: str) -> tuple[str, Any, str]:
    if "=" not in text:
        raise GfnemError(f"--set expects key=value, got {show(text)}",
                         hint="e.g. --set train.steps=100")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError):
        value = raw      # not YAML (e.g. `[1,`): the text itself, which the range then judges
    return key.strip(), value, raw


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` with the value read as YAML (so 3, 1e-3, true, [1, 2] keep their types)."""
    key, value, _ = _parse_override(text)
    return key, value


def _read_text(path: Path) -> str:
    path = Path(path)
    if path.is_dir():
        raise GfnemError("is a directory, not a recipe file", path, hint="give a .yaml file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GfnemError("recipe not found", path) from None
    except OSError as exc:
        raise os_error(exc, path, doing="cannot read the recipe") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise GfnemError(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", path, line,
                         hint="save the recipe as UTF-8") from None


def _yaml_error(exc: Exception, path, text: str) -> GfnemError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return GfnemError(f"character #x{char:04x} is not allowed in YAML", path, line)
    problem = getattr(exc, "problem", None)
    if not isinstance(exc, yaml.YAMLError):
        problem = f"a value YAML cannot read ({exc})"
    return GfnemError(problem or "invalid YAML", path, line)


def _key_lines(node, prefix: str, lines: dict[str, int], path, depth: int = 0) -> None:
    """Where each dotted key's value starts (1-based line); a key given twice is an error.
    Best effort past MAX_KEYS entries (aliases may reach one node by many paths)."""
    if not isinstance(node, yaml.MappingNode) or depth > 4 or len(lines) > MAX_KEYS:
        return
    here: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        dotted = prefix + key_node.value
        line = key_node.start_mark.line + 1
        if dotted in here and key_node.value != "<<":
            raise GfnemError(f"key {quoted(dotted)} is given twice (lines {here[dotted]} and "
                             f"{line}); YAML would silently keep the last", path, line)
        here[dotted] = line
        lines[dotted] = value_node.start_mark.line + 1
        _key_lines(value_node, dotted + ".", lines, path, depth + 1)


def _load_tree(path: Path) -> tuple[Any, dict[str, int]]:
    text = _read_text(path)
    lines: dict[str, int] = {}
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return {}, lines
        _key_lines(node, "", lines, path)
        tree = loader.construct_document(node)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        raise _yaml_error(exc, path, text) from None
    except RecursionError:
        raise GfnemError("the YAML nests too deeply", path) from None
    finally:
        if loader is not None:
            loader.dispose()
    return tree, lines


def _read_recipe(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    tree, lines = _load_tree(path)
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        kind = "a list" if isinstance(tree, list) else f"the value {show(tree)}"
        raise GfnemError(f"a recipe must be a mapping of keys to values, not {kind}", path, 1,
                         hint="write one `key: value` per line, sections indented")
    return flatten(tree, source=path), lines


def load_recipe(path: Path) -> dict[str, Any]:
    """The flat `{dotted key: value}` a recipe file sets (unchecked); unreadable, non-UTF-8 or
    malformed files are one-line errors."""
    return _read_recipe(path)[0]


def load_config(defaults: dict | Schema, path: Path) -> dict:
    """A saved run config (`RUN/config.yaml`) read and checked like a recipe, with lines."""
    tree, lines = _load_tree(path)
    return validate_config(defaults, tree, path, lines)


def resolve_config(defaults: dict | Schema, recipe: Path | None, overrides: list[str]) -> dict:
    """Defaults ← recipe ← `--set` overrides, each value range-checked; then cross-key checks."""
    schema = _schema(defaults)
    config = schema.defaults if isinstance(defaults, Schema) else defaults
    origins: dict = {}
    if recipe is not None:
        flat, lines = _read_recipe(recipe)
        config = _merge(schema, config, flat, str(recipe), lines, origins)
    for text in overrides or []:
        key, value, raw = _parse_override(text)
        if isinstance(schema.ranges.get(key), Text) and not isinstance(value, str):
            value = raw         # --set data.path=2020: a text key keeps the text as typed
        updates = flatten({key: value}) if isinstance(value, dict) and value else {key: value}
        config = _merge(schema, config, updates, "--set", None, origins)
    _cross_check(schema, config, origins)
    return config


def save_config(config: dict, path: Path) -> None:
    """Write the resolved config atomically (a crash leaves the old file or the new one)."""
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))
