"""The one option parser every store uses: the same rules for every backend."""

from __future__ import annotations

import pytest

from actionstate.errors import ConfigError
from actionstate.stores import open_store
from actionstate.stores.options import Option, parse_options

SPECS = (Option("fooTimeoutMs", "1000", integer=True), Option("fooTopic", aliases=("topic",)))


def test_defaults_query_and_keywords_merge() -> None:
    parsed = parse_options("foo", SPECS, "fooTimeoutMs=5", {"topic": "t"})
    assert parsed.values == {"fooTimeoutMs": "5", "fooTopic": "t"}
    assert parsed.integer("fooTimeoutMs") == 5
    assert parse_options("foo", SPECS, "", {}).values == {"fooTimeoutMs": "1000",
                                                           "fooTopic": None}


def test_a_setting_given_twice_must_agree() -> None:
    assert parse_options("foo", SPECS, "topic=t", {"fooTopic": "t"}).values["fooTopic"] == "t"
    with pytest.raises(ConfigError, match=r"topic='a' in the URL query and fooTopic='b' in "
                                          r"the options disagree: give the setting once"):
        parse_options("foo", SPECS, "topic=a", {"fooTopic": "b"})
    with pytest.raises(ConfigError, match="fooTopic='from-path' in the URL"):
        parse_options("foo", SPECS, "", {"fooTopic": "x"}, from_url={"fooTopic": "from-path"})


def test_unknown_names_are_refused_unless_passed_through() -> None:
    with pytest.raises(ConfigError, match=r"unknown foo store option 'fooTimeout': use one of "
                                          r"fooTimeoutMs, fooTopic, topic"):
        parse_options("foo", SPECS, "", {"fooTimeout": "1"})
    parsed = parse_options("foo", SPECS, "a.b=1", {}, passthrough=lambda n: "." in n)
    assert parsed.passthrough == {"a.b": "1"}
    with pytest.raises(ConfigError, match="fooTimeoutMs='soon' must be an integer"):
        parse_options("foo", SPECS, "fooTimeoutMs=soon", {})


def test_embedded_stores_take_no_options(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="the SQLite store takes no options"):
        open_store(f"sqlite://{tmp_path}/x.db", partitions="3")
    with pytest.raises(ConfigError, match="the memory store takes no options"):
        open_store("memory://?partitions=3")
    store = open_store("memory://x", actionStateStoreBackend="memory")
    assert store.url == "memory://x"


def test_a_query_parameter_repeated_with_another_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="disagree"):
        parse_options("foo", SPECS, "fooTimeoutMs=1&fooTimeoutMs=2", {})


def test_a_url_host_in_an_option_s_server_list_names_the_list() -> None:
    from actionstate.stores.options import url_servers

    assert url_servers("a:1", "", {"s": "a:1,b:2"}, "s") == "a:1,b:2"
    assert url_servers("a:1", "s=a:1,b:2", {}, "s") == "a:1,b:2"
    assert url_servers("c:3", "", {"s": "a:1,b:2"}, "s") == "c:3", "not in it: the URL's own"
