"""Reading a run folder's optional JSON files (``metrics.json``, ``model.json``, ``audit.json``) for reports.

Reports and model cards show what a run folder holds and leave out what it lacks: a missing or damaged optional file
reads as empty instead of failing the whole page. Files a step cannot do without are read strictly elsewhere
(:func:`covidscreen.inference.checkpoint.read_json_record`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_optional_json(path: Path) -> Any:
    """The parsed JSON of ``path``, or ``{}`` when the file is absent or not valid JSON."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
