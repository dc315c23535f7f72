from pathlib import Path

import pytest

from actionstate.testing.contract import StoreContract


class TestSqliteStore(StoreContract):
    deletes_records = True  # release: rows below the marker; discard: other namespaces

    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path}/state.db"
