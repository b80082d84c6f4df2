"""Item-level rollback for moto's `TransactWriteItems`, installed by the serialised moto server.

moto backs a transaction up by deep-copying every table it touches, once per item of the transaction, so
that it can put the tables back if one item's condition fails. The budget ledger's keyed charge is a
two-item transaction on the budget table, which also holds every charge record of the day: each charge
copies the whole table twice, and costs more as records pile up (profiled in
`bench/results/demo/cloud_concurrency.md`: `copy.deepcopy` was over half of moto's time at a few hundred
records; `make demo` ends with ~1,000). DynamoDB's cost does not grow with the table.

`installed()` keeps moto's semantics (all or nothing) and changes only the backup: the items the
transaction names are copied before it runs and put back, or removed again if they did not exist, when
it fails. Safe because the server this is for handles one request at a time (`infra.moto_server`);
anything the wrapper cannot read the keys of runs moto's own code, table copies included.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from moto.dynamodb import models as _models
from moto.dynamodb.models.table import Table

_Snapshot = list[tuple[Table, Any, Any, Any]]  # (table, hash key, range key or None, item copy or None)


class _TablesAsThemselves:
    """Stands in for the `copy` module inside moto's DynamoDB backend while a transaction runs whose items
    were saved: a table "copy" is the table itself, so moto's rollback (putting the copy back) changes
    nothing, and the saved items are restored instead. Everything else is copied as `copy` would."""

    def __init__(self) -> None:
        self.active = False

    def deepcopy(self, value: Any, memo: dict[int, Any] | None = None) -> Any:
        if self.active and isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)


def _snapshot(backend: Any, transact_items: list[dict[str, Any]]) -> _Snapshot | None:
    """Copies of the items the transaction names; None when a key cannot be read (moto will refuse it)."""
    saved: _Snapshot = []
    try:
        for entry in transact_items:
            _, op = next(iter(entry.items()))
            table = backend.get_table(op["TableName"])
            if "Item" in op:
                attrs = op["Item"]
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]
            hash_key, range_key = backend.get_keys_value(table, key)
            current = table.get_item(hash_key, range_key)
            saved.append((table, hash_key, range_key, None if current is None else copy.deepcopy(current)))
    except Exception:  # noqa: BLE001 - anything malformed: let moto's own code answer it
        return None
    return saved


def _restore(saved: _Snapshot) -> None:
    for table, hash_key, range_key, item in reversed(saved):
        if item is None:
            if range_key is None:
                table.items.pop(hash_key, None)
            else:
                table.items.get(hash_key, {}).pop(range_key, None)
        elif range_key is None:
            table.items[hash_key] = item
        else:
            table.items[hash_key][range_key] = item


@contextmanager
def installed() -> Iterator[None]:
    """Item-level rollback for every `TransactWriteItems` of this process's moto, until the block exits."""
    backend_class = _models.DynamoDBBackend
    original = backend_class.transact_write_items
    original_copy = _models.copy
    shim = _TablesAsThemselves()

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        saved = _snapshot(self, transact_items)
        if saved is None:
            return original(self, transact_items)
        shim.active = True
        try:
            return original(self, transact_items)
        except Exception:
            _restore(saved)
            raise
        finally:
            shim.active = False

    _models.copy = shim  # type: ignore[assignment]
    backend_class.transact_write_items = transact_write_items  # type: ignore[method-assign]
    try:
        yield
    finally:
        backend_class.transact_write_items = original  # type: ignore[method-assign]
        _models.copy = original_copy
