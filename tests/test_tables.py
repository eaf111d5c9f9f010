"""TableFilter: the spec.source.config.tables pattern grammar."""

from __future__ import annotations

import pytest

from deltaforge.errors import ConfigError
from deltaforge.source.tables import TableFilter, TablePattern


def test_exact_patterns_match_only_their_table() -> None:
    f = TableFilter(["app.users", "app.products"])
    assert f.matches("app", "users")
    assert f.matches("app", "products")
    assert not f.matches("app", "orders")
    assert not f.matches("other", "users")
    assert not f.matches("app", "users2")


def test_star_matches_every_table_of_the_database() -> None:
    f = TableFilter(["shop.*"])
    assert f.matches("shop", "anything")
    assert f.matches("shop", "a.b")
    assert not f.matches("shopx", "anything")
    assert not f.matches("app", "anything")


def test_percent_is_any_run_and_underscore_is_literal() -> None:
    f = TableFilter(["app.order%", "app.%_archive"])
    assert f.matches("app", "orders")
    assert f.matches("app", "order")
    assert f.matches("app", "order_items")
    assert f.matches("app", "users_archive")
    # "_" is not SQL's single-character wildcard
    assert not f.matches("app", "usersXarchive")
    assert not f.matches("app", "user_orders")
    assert not f.matches("app", "Orders")  # case-sensitive


def test_regex_metacharacters_in_names_are_literal() -> None:
    f = TableFilter(["app.a+b%", "app.(x)"])
    assert f.matches("app", "a+b1")
    assert not f.matches("app", "aab1")
    assert f.matches("app", "(x)") and not f.matches("app", "x")


def test_backticks_are_stripped() -> None:
    f = TableFilter(["`app`.`users`"])
    assert f.matches("app", "users")
    assert f.schemas() == {"app"}


def test_schemas_names_every_database_once() -> None:
    f = TableFilter(["app.users", "app.orders", "shop.*", "logs.evt%"])
    assert f.schemas() == {"app", "shop", "logs"}
    f.schemas().add("mutated")
    assert "mutated" not in f.schemas()


def test_results_are_cached_and_stable() -> None:
    f = TableFilter(["app.u%"])
    for _ in range(3):
        assert f.matches("app", "users")
        assert not f.matches("app", "orders")
    assert f._cache == {("app", "users"): True, ("app", "orders"): False}


def test_str_lists_the_patterns() -> None:
    f = TableFilter(["app.users", "shop.*"])
    assert str(f) == "app.users, shop.*"
    assert "shop.*" in repr(f)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("users", "has no database"),
        ("app.", "empty table name"),
        (".users", "empty database name"),
        ("app.x.y", "more than one '.'"),
        ("app.x*", "'*' only stands for a whole table name"),
        ("a%.users", "wildcard in the database"),
        ("*.users", "wildcard in the database"),
    ],
)
def test_bad_patterns_name_the_yaml_path(pattern: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        TableFilter(["app.ok", pattern])
    assert "spec.source.config.tables[1]" in str(e.value)
    assert message in str(e.value)
    assert "fix:" in str(e.value)


def test_empty_list_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"spec\.source\.config\.tables"):
        TableFilter([])


def test_pattern_properties() -> None:
    p = TablePattern("app.order%", 3)
    assert (p.db, p.table, p.index, p.is_exact) == ("app", "order%", 3, False)
    assert TablePattern("app.users").is_exact
    assert p.matches("app", "orders") and not p.matches("shop", "orders")
