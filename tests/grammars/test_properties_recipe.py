"""Property-based tests of the recipe validator (DESIGN.md §9): whatever a recipe file or a
`--set` holds, the answer is a resolved config or a one-line `GfnemError`, never another
exception; a resolved config lies inside every declared range and passes the cross-key
checks; and a saved config reads back as the same config.

Inputs: random YAML text (well-formed trees dumped by PyYAML, line-by-line templates with
hand-picked spellings such as `1e-3`, `.inf`, anchors and flow collections, arbitrary text
and bytes), random Python trees (any key, values of every YAML type), and random `--set`
strings; keys are drawn from the valid ones, the sections, near misses and noise, values
both from each key's own range and from everywhere else.
"""
from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gfnem_cli.engine.config import (flatten, load_config, resolve_config, save_config,
                                     validate_config)
from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.recipe_schema import (Boolean, Integer, ListOf, Mapping, OneOf, Real,
                                            Text, ZeroOr)
from grammars.recipe import GRAMMAR, GRAMMAR_DEFAULTS, GRAMMAR_RANGES

VALID = sorted(GRAMMAR_RANGES)
SECTIONS = sorted({k.split(".")[0] for k in VALID if "." in k})
SPELLINGS = ["1e-3", "1E5", "-1", "0", "3", "0.5", ".inf", "-.inf", "inf", "nan", ".nan",
             "1e999", "true", "no", "~", "null", "''", "[]", "{}", "[0.9, 0.999]", "[1, 2, 3]",
             "{a: 1}", "abc", "gfnem", "tb", "ncfg", "2001-02-03", "2001-13-45", "0x1F", "0o17",
             "1_000", "&a 1", "*a", "!!binary aGk=", "!!python/object:os.system x", '"\\0"',
             "'quoted'", "&r [*r]", "&m {x: *m}", "- x", "[1,", "{a", ": :", "\t", "\\x00", "\udcff", "9" * 400]

MANY = settings(derandomize=True, deadline=None, max_examples=1000)
SOME = settings(derandomize=True, deadline=None, max_examples=400)


def in_range(check) -> st.SearchStrategy:
    """Values each check should accept (so that many draws resolve)."""
    if isinstance(check, Real):
        lo = check.gt if check.gt is not None else check.ge
        hi = check.lt if check.lt is not None else check.le
        return st.floats(min_value=lo, max_value=hi, allow_nan=False,
                         allow_infinity=not check.finite, exclude_min=check.gt is not None,
                         exclude_max=check.lt is not None).filter(
                             lambda x: x not in check.exclude)
    if isinstance(check, Integer):
        lo = check.lo if check.lo is not None else -1000
        return st.integers(lo, check.hi if check.hi is not None else lo + 64)
    if isinstance(check, ZeroOr):
        return st.one_of(st.just(0), in_range(check.check))
    if isinstance(check, Boolean):
        return st.booleans()
    if isinstance(check, Text):
        return st.text(min_size=1, max_size=8).filter(lambda s: s.strip() and "\0" not in s)
    if isinstance(check, OneOf):
        return st.sampled_from(check.choices)
    if isinstance(check, ListOf):
        return st.lists(in_range(check.item), min_size=check.length, max_size=check.length)
    if isinstance(check, Mapping):
        return st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)
    raise AssertionError(f"no strategy for {check!r}")


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-10**400, 10**400),
                    st.floats(), st.text(max_size=12), st.sampled_from(SPELLINGS))
anything = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(VALID + SECTIONS),
                              st.integers(), st.none(), st.booleans()), inner, max_size=3)),
    max_leaves=8)
keys = st.one_of(st.sampled_from(VALID), st.sampled_from(SECTIONS), st.text(max_size=10),
                 st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(VALID + SECTIONS),
                           st.text(max_size=5)))


@st.composite
def good_pairs(draw, size=6):
    """Random valid keys with values from their own ranges: most such recipes resolve."""
    chosen = draw(st.lists(st.sampled_from(VALID), max_size=size, unique=True))
    return {k: draw(in_range(GRAMMAR_RANGES[k])) for k in chosen}


pairs = st.one_of(good_pairs(), st.dictionaries(keys, anything, max_size=5),
                  st.builds(lambda a, b: {**a, **b}, good_pairs(),
                            st.dictionaries(st.sampled_from(VALID), anything, max_size=2)))


def nest(flat: dict) -> dict:
    """{'a.b': 1} -> {'a': {'b': 1}} where possible (a clash keeps the dotted key flat)."""
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = value
            continue
        tree[key] = value
    return tree


def template_line(key: str, spelling: str) -> str:
    *parents, leaf = key.split(".")
    return "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parents)) + \
        f"{'  ' * len(parents)}{leaf}: {spelling}\n"


yaml_texts = st.one_of(
    pairs.map(lambda flat: yaml.safe_dump(nest(flat), allow_unicode=True)),
    st.lists(st.tuples(st.sampled_from(VALID + SECTIONS), st.sampled_from(SPELLINGS)),
             max_size=6).map(lambda lines: "".join(template_line(k, s) for k, s in lines)),
    st.text(max_size=60),
    st.lists(st.sampled_from(["train:", "  lr: 1e-3", "- a", "  - b", "lr: &x 2", "a: *x",
                              "---", "...", "%YAML 1.1", "? [a, b]", ": c", "\t", "{", "#",
                              "train: {steps: 2, lr: .inf}", "em:", "  threshold_max: inf",
                              "a: &b [1, 2]", "c: &d [*b, *b, *b]", "e: [*d, *d, *d]",
                              "train: &t {steps: 3}", "<<: *t", "sampler: {<<: *t}"]),
             max_size=8).map("\n".join))

def flow(value) -> str:
    """A value as one would type it after `--set key=` (YAML flow style, one line)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).replace(
        "\n...\n", "").strip()


set_strings = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", keys, st.one_of(st.sampled_from(SPELLINGS),
                                                      st.text(max_size=12))),
    good_pairs(size=1).map(lambda p: "".join(f"{k}={flow(v)}" for k, v in p.items())
                           or "method=gfnem"),
    st.text(max_size=20))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("recipes")


def assert_inside_every_range(config: dict) -> None:
    flat = flatten(config)
    assert set(flat) == set(GRAMMAR_RANGES)
    for key, value in flat.items():
        again = GRAMMAR_RANGES[key].coerce(value)      # raises if outside the range
        assert again == value and type(again) is type(value), key
        if isinstance(value, float):
            assert not math.isnan(value), key
    assert list(GRAMMAR.conflicts(config)) == []


def resolve_or_error(recipe, overrides):
    try:
        config = resolve_config(GRAMMAR_DEFAULTS, recipe, overrides)
    except GfnemError as error:
        assert "\n" not in str(error)
        event("refused")
        return None
    event("resolved")
    assert_inside_every_range(config)
    return config


@MANY
@given(text=yaml_texts, overrides=st.lists(set_strings, max_size=3))
def test_any_yaml_text_and_set_strings_resolve_or_refuse(workdir, text, overrides):
    path = workdir / "recipe.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    resolve_or_error(path, overrides)


@SOME
@given(data=st.binary(max_size=80))
def test_any_bytes_resolve_or_refuse(workdir, data):
    path = workdir / "bytes.yaml"
    path.write_bytes(data)
    resolve_or_error(path, [])


@MANY
@given(flat=pairs, overrides=st.lists(set_strings, max_size=2))
def test_any_tree_validates_or_refuses(flat, overrides):
    for tree in (nest(flat), flat):
        try:
            config = validate_config(GRAMMAR_DEFAULTS, tree, "config.yaml")
        except GfnemError:
            event("refused")
            continue
        event("resolved")
        assert_inside_every_range(config)
    resolve_or_error(None, overrides)


good_sets = good_pairs(size=2).map(lambda p: [f"{k}={flow(v)}" for k, v in p.items()])


@SOME
@given(flat=good_pairs(size=10), overrides=good_sets)
def test_saved_config_reads_back_the_same(workdir, flat, overrides):
    path = workdir / "recipe.yaml"
    path.write_text(yaml.safe_dump(nest(flat)), encoding="utf-8")
    config = resolve_or_error(path, overrides)
    if config is None:
        return
    saved = workdir / "config.yaml"
    save_config(config, saved)
    assert load_config(GRAMMAR_DEFAULTS, saved) == config
    assert validate_config(GRAMMAR_DEFAULTS, yaml.safe_load(saved.read_text("utf-8"))) == config
    assert resolve_config(GRAMMAR_DEFAULTS, saved, []) == config
