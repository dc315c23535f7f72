import uuid

import pytest

from actionstate.testing.contract import EncryptedStoreContract, StoreContract


class TestMemoryStore(StoreContract):
    keeps_records = False

    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://{uuid.uuid4().hex}"


class TestMemoryEncryptedStore(EncryptedStoreContract, TestMemoryStore):
    """The contract with payloads sealed (AES-256-GCM), key rotation, missing/wrong keys."""
