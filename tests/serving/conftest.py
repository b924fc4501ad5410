from __future__ import annotations

import pytest

from tests.postgres import postgres_fixture
from tests.serving.runs import make_run, xray_png


@pytest.fixture(scope="session")
def postgres():
    yield from postgres_fixture()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run") / "run", onnx=True)


@pytest.fixture(scope="session")
def png_file(tmp_path_factory):
    return xray_png(tmp_path_factory.mktemp("img") / "chest.png")
