"""Upstream TiCDC's test vectors (copied from the shared contract `ticdc_golden/`; see README.md there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def load(name: str) -> Any:
    """One vector file by name, e.g. `load("dispatch.json")`."""
    return json.loads((HERE / name).read_text())
