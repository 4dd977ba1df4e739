"""Mutated configs: the loader accepts them or raises ConfigError, never any other exception.

A deterministic mutation loop (fixed seed, a few seconds) over the example
configs and the edge cases of `envoy_cases.py`: one node of a valid config is
replaced by a hostile value (huge, negative or zero durations, wrong types,
out-of-range numbers, unknown enum names, nulls, NULs, deep nesting) or its key is
deleted, and the result goes through the same path as `pylon proxy -c`. A
traceback is the bug this test is for: the fuzzer of issue 10 found one in
durations (a 400-digit value raised OverflowError) and others in file names with a
NUL and in deeply nested JSON.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylon.config.errors import ConfigError
from pylon.config.loader import load_bootstrap, parse_bootstrap, parse_document
from tests.config.envoy_cases import CASES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED = 20261204
BUDGET_SECONDS = 3.0

HOSTILE_VALUES: tuple[Any, ...] = (
    None, 0, -1, 1, 2**32, 2**64, 10**400, -(10**400), 1.5, float("nan"), float("inf"), True, "", "x",
    "BOGUS_ENUM", "0s", "-1s", "1e20s", "1" * 400 + "s", "9223372036s", "315576000001s",
    {"seconds": 10**30}, {"seconds": 1, "nanos": -1}, {"seconds": "x"}, 65536, -65536, "\x00", "a\r\nb",
    [], {}, [None], {"@type": "type.googleapis.com/nope"}, {"filename": "a\x00b"}, "\udcff",
    {"a": {"a": {"a": {}}}},
)  # fmt: skip


def seed_configs() -> list[tuple[str, dict[str, Any]]]:
    """Configs to mutate: every plain example (templated bench configs aside) and every accepted edge case."""
    seeds = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "static_resources" in data:
            seeds.append((str(path), data))
    seeds.extend((f"<{case.id}>", case.data) for case in CASES if case.error is None)
    return seeds


def nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every node below the root, as keys and indexes."""
    found = []
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return found
    for key, item in items:
        found.append((*path, key))
        found.extend(nodes(item, (*path, key)))
    return found


def mutate(data: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A copy of `data` with one node replaced, deleted, or its list item duplicated."""
    mutated = copy.deepcopy(data)
    path = rng.choice(nodes(mutated))
    parent: Any = mutated
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    roll = rng.random()
    if roll < 0.15 and isinstance(parent, dict):
        del parent[key]
    elif roll < 0.25 and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    else:
        parent[key] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
    return mutated


def test_seed_configs_exist() -> None:
    """The loop below must have configs to mutate (a moved examples/ directory would make it vacuous)."""
    assert len([source for source, _ in seed_configs() if source.endswith(".yaml")]) >= 3


def test_mutated_configs_give_config_errors_only() -> None:
    rng = random.Random(SEED)
    seeds = seed_configs()
    deadline = time.monotonic() + BUDGET_SECONDS
    runs = 0
    while time.monotonic() < deadline:
        source, data = rng.choice(seeds)
        mutated = mutate(data, rng)
        try:
            parse_bootstrap(mutated, source)
        except ConfigError:
            pass
        except Exception as exc:  # noqa: BLE001 - any other exception is the failure this test looks for
            pytest.fail(f"{type(exc).__name__} from a mutation of {source}: {exc!r}\nconfig: {mutated!r}"[:2000])
        runs += 1
    assert runs > 100


def test_mutated_texts_give_config_errors_only(tmp_path: Path) -> None:
    """Truncated, deeply nested and re-encoded documents, through the file loader."""
    rng = random.Random(SEED)
    texts = [json.dumps(data) for _, data in seed_configs()[:4]] + [yaml.safe_dump(seed_configs()[0][1])]
    texts += ['{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "a: " + "[" * 999 + "]" * 999, "a: &x [*x]"]
    path = tmp_path / "envoy.yaml"
    for text in texts:
        for cut in [len(text), *sorted(rng.sample(range(len(text)), min(20, len(text))))]:
            path.write_text(text[:cut])
            try:
                load_bootstrap(str(path))
            except ConfigError:
                pass
            except Exception as exc:  # noqa: BLE001
                pytest.fail(f"{type(exc).__name__} loading {text[:cut][:200]!r}...: {exc!r}")


def test_parse_document_names_deep_json() -> None:
    with pytest.raises(ConfigError, match="nested more than 100 levels deep"):
        parse_document('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "deep.json")
