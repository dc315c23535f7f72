from pathlib import Path

import pytest

from actionstate.testing.contract import StoreContract


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path}/state.db"
