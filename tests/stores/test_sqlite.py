from pathlib import Path

import pytest

from actionstate.testing.contract import EncryptedStoreContract, StoreContract


class TestSqliteStore(StoreContract):
    deletes_records = True  # release: rows below the marker; discard: other namespaces

    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path}/state.db"


class TestSqliteEncryptedStore(EncryptedStoreContract, TestSqliteStore):
    """The contract with payloads sealed (AES-256-GCM), key rotation, missing/wrong keys."""
