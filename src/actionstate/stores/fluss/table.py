"""The action state table: created when missing, checked when found, opened for writing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import fluss

from actionstate.errors import ConfigError, StoreError
from actionstate.stores.fluss.client import FlussClient
from actionstate.stores.fluss.rows import AGENT_KEY, SCHEMA, STATE_KEY, STATE_PAYLOAD

__all__ = ["FlussTable", "open_table"]

_NEW_TABLE_S = 15.0  # a table this store created has bucket leaders within this

log = logging.getLogger("actionstate.stores.fluss")


class FlussTable:
    """An open action state table: its bucket count, its writer, its offsets."""

    def __init__(self, client: FlussClient, path: Any, name: str) -> None:
        self.client = client
        self.path = path
        self.name = name
        handle = client.call(lambda: client.connection.get_table(path), f"open table {name}")
        info = handle.get_table_info()
        _check_schema(info, name)
        self.handle = handle
        self.num_buckets: int = info.num_buckets
        self.writer = handle.new_append().create_writer()

    def list_offsets(self, spec: Any, what: str, timeout: float | None = None, *,
                     buckets: list[int] | None = None) -> dict[int, int]:
        """Per bucket (every bucket, unless given), the offset ``spec`` names."""
        return self.start_list_offsets(spec, what, timeout, buckets=buckets)()

    def start_list_offsets(self, spec: Any, what: str, timeout: float | None = None, *,
                           buckets: list[int] | None = None) -> Callable[[], dict[int, int]]:
        """:meth:`list_offsets` begun on the client's loop; the function returned waits
        for its answer."""
        wanted = list(range(self.num_buckets)) if buckets is None else buckets
        admin = self.client.admin
        return self.client.start(lambda: admin.list_offsets(self.path, wanted, spec), what,
                                 timeout=timeout)

    def end_offsets(self, timeout: float | None = None) -> dict[int, int]:
        """Per bucket, the offset the next record will get."""
        return self.list_offsets(fluss.OffsetSpec.latest(), "read the end offsets", timeout)

    async def probe(self) -> object:
        """Ask for every bucket's end offset (refreshes the client's metadata)."""
        return await self.client.admin.list_offsets(
            self.path, list(range(self.num_buckets)), fluss.OffsetSpec.latest())

    async def scanner(self, starts: dict[int, int]) -> Any:
        """A record batch scanner of the buckets in ``starts``, each from its offset."""
        scanner = await self.handle.new_scan().create_record_batch_log_scanner()
        scanner.subscribe_buckets(starts)
        return scanner


def open_table(client: FlussClient, database: str, table: str, buckets: int) -> FlussTable:
    """Open ``database.table``, creating it (with ``buckets``) if it does not exist, once
    its buckets have leaders.

    Raises:
        ConfigError: the table exists but is not an action state table.
        StoreError: the cluster cannot be reached, or the buckets get no leader.
    """
    admin = client.admin
    path = fluss.TablePath(database, table)
    name = f"{database}.{table}"
    client.call(lambda: admin.create_database(database, ignore_if_exists=True),
                f"create database {database}")
    exists = client.call(lambda: admin.table_exists(path), f"look table {name} up")
    if not exists:
        _create(client, path, name, buckets)
    opened = FlussTable(client, path, name)
    try:  # also connects to the tablet servers
        opened.end_offsets(_NEW_TABLE_S if not exists else client.timeout)
    except StoreError as exc:
        if exists or "no leader" not in str(exc):
            raise
        # Fluss 0.9's coordinator can miss a table's creation (apache/fluss#1018):
        # its buckets never get a leader. It is new and empty: create it again.
        log.warning("Fluss table %s got no bucket leaders in %.0f s; creating it again",
                    name, _NEW_TABLE_S)
        client.call(lambda: admin.drop_table(path, ignore_if_not_exists=True),
                    f"drop table {name}")
        _create(client, path, name, buckets)
        opened = FlussTable(client, path, name)
        opened.end_offsets()
    return opened


def _create(client: FlussClient, path: Any, name: str, buckets: int) -> None:
    descriptor = fluss.TableDescriptor(fluss.Schema(SCHEMA), bucket_count=buckets,
                                       bucket_keys=[AGENT_KEY])
    client.call(lambda: client.admin.create_table(path, descriptor, ignore_if_exists=True),
                f"create table {name}")


def _check_schema(info: Any, name: str) -> None:
    """ConfigError unless ``info`` is an action state table's."""
    columns = [(column, kind.lower()) for column, kind in info.get_schema().get_columns()]
    lake = info.get_properties().get("table.datalake.format", "")
    if (columns != [(STATE_KEY, "string"), (STATE_PAYLOAD, "bytes"), (AGENT_KEY, "string")]
            or info.get_primary_keys() or info.get_bucket_keys() != [AGENT_KEY]
            or info.is_partitioned() or lake.lower() not in ("", "lance")):
        raise ConfigError(
            f"Fluss table {name} exists but is not an action state table "
            f"(columns {columns}, primary keys {info.get_primary_keys()}, bucket keys "
            f"{info.get_bucket_keys()}, datalake format {lake or 'none'}): expected a log "
            f"table ({STATE_KEY} STRING, {STATE_PAYLOAD} BYTES, {AGENT_KEY} STRING) "
            f"bucketed by {AGENT_KEY}, not partitioned, without a datalake format; "
            "use another table name")
