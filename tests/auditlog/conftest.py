import pytest

from tests.postgres import postgres_fixture


@pytest.fixture(scope="session")
def postgres():
    yield from postgres_fixture()
