import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(autouse=True, scope="session")
def prefect_server():
    """One temporary Prefect server for all flow tests of this session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield
