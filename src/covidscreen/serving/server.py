"""Running the service under uvicorn, and the library side of the ``serve`` and ``audit-log`` commands."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

from ..errors import ConfigError
from .config import ServeConfig


def configure_logging(stream=None) -> None:
    """One JSON object per line on stderr for the request log; plain lines for the rest."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("covidscreen.serving")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def run_server(config: ServeConfig) -> None:
    """Load the run, then serve until interrupted (blocks)."""
    import uvicorn  # optional dependency (covidscreen[serve]); `covidscreen audit-log` uses this module without it

    from .app import create_app  # FastAPI (covidscreen[serve]) loads only to serve

    app = create_app(config)
    configure_logging()
    where = f"http://{config.host}:{config.port}/"
    logging.getLogger("covidscreen.serving").info(
        f"serving {app.state.screening.model_id} ({app.state.screening.backend}) on {where}; audit log "
        f"{app.state.screening.audit.display_url}; API key {'required' if config.api_key_file else 'not required'}")
    uvicorn.run(app, host=config.host, port=config.port, access_log=False, log_level="warning",
                timeout_graceful_shutdown=10)


def serve_job(config: ServeConfig, require_commissioning: str | None = None, say: Callable[[str], None] = print
              ) -> None:
    """``covidscreen serve``: with ``require_commissioning`` NAME, refuse to start unless the run holds a ``go``
    site commissioning record of that name (``say`` is told its one-line summary); then serve until interrupted.

    Raises:
        ConfigError: no such ``go`` record (the message names the command that makes one).
    """
    if require_commissioning is not None:
        # imported per command (start-up): the check's module loads PyTorch, scikit-learn and matplotlib, which
        # `covidscreen audit-log` (also run from this module) never needs
        from ..workflows.commission import require_commissioning as check

        say(check(config.run_dir, require_commissioning))
    run_server(config)


def parse_day(text: str | None, option: str) -> date | datetime | None:
    """``YYYY-MM-DD`` or an ISO date-time, for ``--since`` / ``--until``."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text) if "T" in text or " " in text.strip() else date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not a date; use YYYY-MM-DD (or YYYY-MM-DDTHH:MM)") from None


def audit_log_report(run_or_db: str | Path, since: str | None = None, until: str | None = None,
                     csv: str | Path | None = None, limit: int = 20) -> list[str]:
    """Lines for ``covidscreen audit-log``: per-day summary, drift warnings, the latest records; a CSV on request."""
    from ..auditlog import AuditLog, AuditLogError  # SQLAlchemy (covidscreen[auditlog]) loads only for the audit log
    from ..auditlog.summary import describe

    start, end = parse_day(since, "--since"), parse_day(until, "--until")
    target = Path(run_or_db)
    if "://" not in str(run_or_db) and not target.exists():
        raise AuditLogError(f"{run_or_db} does not exist; give a run folder, a SQLite file or a database URL")
    with AuditLog(run_or_db) as log:
        lines = [f"audit log {log.display_url}"]
        summary = log.summary(start, end)
        lines += describe(summary)
        if csv is not None:
            n = log.export_csv(csv, start, end)
            lines.append(f"wrote {n} record(s) to {csv}")
        elif summary.total:
            recent = log.query(start, end)[-limit:]
            lines.append(f"latest {len(recent)} record(s):")
            lines += [f"  {r.time.isoformat(timespec='seconds')} {r.source:5} {r.input_sha256[:12]} {r.decision:10} "
                      f"{r.operating_point:16} {', '.join(r.warnings) or '-'}" for r in recent]
    return lines
