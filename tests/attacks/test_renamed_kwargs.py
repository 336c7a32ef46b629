"""The query budget is spelled ``queries`` by every attack (one name per concept, no synonym table);
the old ``n_queries`` keeps working for one release with a DeprecationWarning, through the class,
the registry and the presets' 1:1 mapping alike."""
from __future__ import annotations

import inspect

import pytest

from fortify.attacks import ATTACKS
from fortify.errors import ConfigError
from fortify.evaluate.presets import resolve_kwargs
from fortify.registry import renamed_of

QUERY_ATTACKS = [n for n in ATTACKS.names() if "queries" in inspect.signature(ATTACKS.get(n)).parameters]
SEMANTIC = ("steps", "restarts", "queries", "n_target_classes", "loss", "samples")
#: spellings the old synonym table bridged; no attack may use them any more
OLD_SPELLINGS = ("n_iter", "iterations", "max_iter", "num_steps", "n_steps", "n_restarts", "num_restarts",
                 "n_queries", "max_queries", "query_budget", "max_num_queries", "n_targets", "num_targets",
                 "target_classes", "n_samples", "population")


def test_query_attacks_found() -> None:
    assert {"square", "nes", "hopskipjump", "signopt"} <= set(QUERY_ATTACKS)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_no_attack_uses_an_old_spelling(name: str) -> None:
    params = set(inspect.signature(ATTACKS.get(name)).parameters)
    assert not params & set(OLD_SPELLINGS), params


@pytest.mark.parametrize("name", QUERY_ATTACKS)
def test_n_queries_is_a_deprecated_alias(name: str) -> None:
    cls = ATTACKS.get(name)
    assert renamed_of(cls) == {"n_queries": "queries"}
    with pytest.warns(DeprecationWarning, match="'n_queries' is deprecated.*use 'queries'"):
        old = cls(n_queries=700)
    assert old.queries == 700 == cls(queries=700).queries
    with pytest.warns(DeprecationWarning):
        assert ATTACKS.create(name, n_queries=700).queries == 700
    with pytest.raises(ConfigError, match="pass only 'queries'"):
        cls(n_queries=700, queries=700)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_resolve_kwargs_is_one_to_one(name: str) -> None:
    params = inspect.signature(ATTACKS.get(name)).parameters
    kwargs = {k: 3 for k in SEMANTIC}
    out, notes = resolve_kwargs(name, kwargs, budget=2.0)
    assert set(out) == {k for k in SEMANTIC if k in params}
    assert all(out[k] == (6 if k in ("steps", "queries") else 3) for k in out)
    assert len(notes) == len(SEMANTIC) - len(out) and all("ignored" in n for n in notes)
