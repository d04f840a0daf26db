"""The `sqlserver` resource: an SQLAlchemy engine for the built-in SQL applier's target.

Production targets SQL Server through `mssql+pytds` (python-tds, a pure-Python TDS driver; the SQLAlchemy
dialect name comes from the `sqlalchemy-pytds` package). The lab points the same resource at PostgreSQL
(`postgresql+pg8000`, pure Python too). The URL is built from parts with `URL.create`, which
percent-encodes the password when the URL is rendered, so a secret containing `/ + @ : % ?` survives; the
password comes from `SQLSERVER_PASSWORD` as a `dg.EnvVar` and never appears in a rendered URL the
resource logs or returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import dagster as dg
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.engine import URL

# The SQL dialects the applier speaks (replication.sqlserver builds its SQL for one of them).
Dialect = Literal["mssql", "postgresql"]
_DIALECTS: dict[str, Dialect] = {"mssql": "mssql", "postgresql": "postgresql"}


class SqlServerResource(dg.ConfigurableResource):
    """Target database of the SQL applier (SQL Server in production, PostgreSQL in the lab)."""

    drivername: str = Field(default="mssql+pytds", description="SQLAlchemy driver: mssql+pytds or postgresql+pg8000")
    host: str = "127.0.0.1"
    port: int = 1433
    username: str = "sa"
    password: str | None = Field(default=None, description="from SQLSERVER_PASSWORD")
    database: str = "tidb_replica"
    db_schema: str | None = Field(default=None, description="target schema (default: the login's, dbo / public)")
    query: dict[str, str] = Field(default_factory=dict, description="driver options appended to the URL")
    connect_timeout_s: int = 30

    @property
    def dialect(self) -> Dialect:
        backend = self.drivername.split("+", 1)[0]
        if backend not in _DIALECTS:
            raise ValueError(f"sqlserver.drivername {self.drivername!r} is not supported; use mssql+pytds "
                             "(SQL Server) or postgresql+pg8000 (the lab's stand-in)")
        return _DIALECTS[backend]

    def url(self) -> URL:
        """The connection URL (its password is masked when printed; render with hide_password=False)."""
        return URL.create(self.drivername, username=self.username, password=self.password, host=self.host,
                          port=self.port, database=self.database, query=self.query)

    def _connect_args(self) -> dict[str, object]:
        if self.drivername == "postgresql+pg8000":
            return {"timeout": self.connect_timeout_s}
        if self.drivername == "mssql+pytds":
            return {"login_timeout": self.connect_timeout_s}
        return {}

    def get_engine(self, **kwargs: object) -> sa.Engine:
        """A new engine; dispose of it when done (the applier opens one per run)."""
        self.dialect  # noqa: B018 - fail early on an unsupported driver, naming it
        return sa.create_engine(self.url(), connect_args=self._connect_args(), pool_pre_ping=True, **kwargs)


def sqlserver_resource(env: Mapping[str, str] | None = None) -> SqlServerResource:
    from tidb_pipeline.resources.env import int_setting, secret, setting

    schema = setting("SQLSERVER_SCHEMA", "", env)
    return SqlServerResource(
        drivername=setting("SQLSERVER_DRIVER", "mssql+pytds", env),
        host=setting("SQLSERVER_HOST", "127.0.0.1", env),
        port=int_setting("SQLSERVER_PORT", 1433, env),
        username=setting("SQLSERVER_USER", "sa", env),
        password=secret("SQLSERVER_PASSWORD", env),
        database=setting("SQLSERVER_DATABASE", "tidb_replica", env),
        db_schema=schema or None,
    )
