import uuid

import pytest

from actionstate.testing.contract import StoreContract


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://{uuid.uuid4().hex}"
