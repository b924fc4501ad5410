"""`serving/server.py` `serve_job`: `covidscreen serve --require-commissioning NAME` refuses before the server starts
(the real server: tests/cli/test_serve.py)."""

from __future__ import annotations

import pytest

from covidscreen.errors import ConfigError
from covidscreen.serving import server
from covidscreen.serving.config import ServeConfig
from covidscreen.workflows import commission


def test_serve_job_checks_commissioning_before_serving(tiny_run, monkeypatch):
    served, said = [], []
    monkeypatch.setattr(server, "run_server", served.append)
    cfg = ServeConfig(run_dir=tiny_run)
    with pytest.raises(ConfigError, match="no 'go' commissioning record named 'ward8'.*covidscreen commission"):
        server.serve_job(cfg, "ward8", say=said.append)
    assert served == [] and said == []
    monkeypatch.setattr(commission, "require_commissioning", lambda run_dir, name: f"commissioning '{name}': go")
    server.serve_job(cfg, "ward8", say=said.append)
    assert said == ["commissioning 'ward8': go"] and served == [cfg]
    server.serve_job(cfg, say=said.append)  # no record asked for: none checked
    assert said == ["commissioning 'ward8': go"] and served == [cfg, cfg]
