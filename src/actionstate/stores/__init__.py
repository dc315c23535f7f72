"""Action state stores, chosen by URL.

===============================================  ==========================================
URL                                              store
===============================================  ==========================================
``memory://`` or ``memory://name``               :class:`MemoryActionStateStore` (tests)
``sqlite:///abs/path.db``, ``sqlite://rel.db``   :class:`SqliteActionStateStore` (default)
``kafka://host:9092/topic``                      ``KafkaActionStateStore`` (extra ``kafka``)
``fluss://host:9123/db.table``                   ``FlussActionStateStore`` (extra ``fluss``)
===============================================  ==========================================

Backends are imported only when their scheme is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from actionstate.errors import ConfigError
from actionstate.stores.base import ActionStateStore, Durability, Marker
from actionstate.stores.options import redact_url

__all__ = ["ActionStateStore", "Durability", "Marker", "open_store", "url_from_options"]

_BACKENDS = {
    "memory": ("actionstate.stores.memory", "MemoryActionStateStore", None),
    "sqlite": ("actionstate.stores.sqlite", "SqliteActionStateStore", None),
    "kafka": ("actionstate.stores.kafka", "KafkaActionStateStore", "kafka"),
    "fluss": ("actionstate.stores.fluss", "FlussActionStateStore", "fluss"),
}


def open_store(url: str, durability: Durability = "sync", **options: Any) -> ActionStateStore:
    """Open the store that ``url`` names.

    Raises:
        ConfigError: the scheme is unknown, the URL is incomplete, or the
            backend's optional dependency is not installed.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _BACKENDS:
        raise ConfigError(
            f"unknown store URL {redact_url(url)!r}: use one of memory://, "
            "sqlite:///path/state.db, kafka://host:port/topic, fluss://host:port/database.table"
        )
    module_name, class_name, extra = _BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise ConfigError(
            f"store URL {redact_url(url)!r} needs the optional dependency {exc.name!r}: "
            f"pip install 'actionstate[{extra}]'"
        ) from None
    cls: type[ActionStateStore] = getattr(module, class_name)
    return cls.from_url(url, durability=durability, **options)


def url_from_options(options: dict[str, str]) -> str:
    """A store URL from Flink Agents' option names (``actionStateStoreBackend`` ...)."""
    backend = options.get("actionStateStoreBackend", "").lower()
    if backend == "kafka":
        servers = options.get("kafkaBootstrapServers", "localhost:9092").split(",")[0]
        topic = options.get("kafkaActionStateTopic", "flink-agents-action-state")
        return f"kafka://{servers}/{topic}"
    if backend == "fluss":
        servers = options.get("flussBootstrapServers", "localhost:9123").split(",")[0]
        database = options.get("flussActionStateDatabase", "flink_agents")
        table = options.get("flussActionStateTable", "action_states")
        return f"fluss://{servers}/{database}.{table}"
    raise ConfigError(
        f"actionStateStoreBackend={backend!r} is not supported: use 'kafka' or 'fluss', "
        "or give a store URL"
    )
