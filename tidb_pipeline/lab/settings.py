"""Where the lab lives and which ports it uses.

Everything the lab writes sits under one git-ignored folder (default `<repo>/.lab`, or
`$TIDB_PIPELINE_LAB_DIR`). Ports default to values unlikely to clash with a developer's own servers and
can be overridden per service with `TIDB_PIPELINE_LAB_<SERVICE>_PORT` (e.g. `TIDB_PIPELINE_LAB_KAFKA_PORT`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"

# The TiCDC stand-in keeps TiCDC's own default port so `cdc cli`-style URLs look familiar.
DEFAULT_PORTS: dict[str, int] = {
    "kafka": 19092,
    "kafka_controller": 19093,
    "mariadb": 13306,
    "registry": 18081,
    "snowflake": 18085,
    "connect": 18083,
    "ticdc": 8300,
    "postgres": 15432,
}

# MariaDB credentials of the lab only; production reads TiDB's from the environment.
LAB_DB_USER = "tidb_pipeline"
LAB_DB_PASSWORD = "lab-password"


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LabSettings:
    """Root folder and ports of one lab instance."""

    root: Path = field(default_factory=lambda: Path(os.environ.get("TIDB_PIPELINE_LAB_DIR", _repo_root() / ".lab")))
    ports: dict[str, int] = field(default_factory=dict)
    host: str = HOST

    def __post_init__(self) -> None:
        merged = dict(DEFAULT_PORTS)
        for name in DEFAULT_PORTS:
            env = os.environ.get(f"TIDB_PIPELINE_LAB_{name.upper()}_PORT")
            if env:
                try:
                    merged[name] = int(env)
                except ValueError as exc:
                    raise ValueError(
                        f"TIDB_PIPELINE_LAB_{name.upper()}_PORT={env!r} is not a port number; set it to an integer"
                    ) from exc
        merged.update(self.ports)
        object.__setattr__(self, "ports", merged)
        object.__setattr__(self, "root", Path(self.root).resolve())

    def port(self, name: str) -> int:
        return self.ports[name]

    def dir(self, name: str) -> Path:
        """The service's own data folder, created on first use."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # Addresses clients use; kept here so tests, the CLI and `.env` defaults agree.
    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.port('kafka')}"

    @property
    def registry_url(self) -> str:
        return f"http://{self.host}:{self.port('registry')}"

    @property
    def snowflake_url(self) -> str:
        return f"http://{self.host}:{self.port('snowflake')}"

    @property
    def ticdc_url(self) -> str:
        return f"http://{self.host}:{self.port('ticdc')}"

    @property
    def connect_url(self) -> str:
        return f"http://{self.host}:{self.port('connect')}"

    @property
    def jars_dir(self) -> Path:
        return self.dir("jars")
