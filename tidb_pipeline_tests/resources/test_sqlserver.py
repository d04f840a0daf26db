"""The `sqlserver` resource: URL from parts with the password percent-encoded, secrets from the environment."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tidb_pipeline.lab.postgres import LAB_DATABASE
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LAB_DB_PASSWORD, LAB_DB_USER
from tidb_pipeline.resources.sqlserver import SqlServerResource, sqlserver_resource

NASTY = "p/a+s@s:w%o?r#d 'x"


def test_url_encodes_the_password_and_masks_it() -> None:
    res = SqlServerResource(host="sql.example.com", port=1433, username="app@corp", password=NASTY,
                            database="replica", query={"tds_version": "7.4"})
    url = res.url()
    rendered = url.render_as_string(hide_password=False)
    # Every URL delimiter is escaped; SQLAlchemy leaves a space as is, and parses it back the same.
    assert rendered == ("mssql+pytds://app%40corp:p%2Fa+s%40s%3Aw%25o%3Fr%23d %27x@sql.example.com:1433/replica"
                        "?tds_version=7.4")
    parsed = make_url(rendered)
    assert (parsed.username, parsed.password, parsed.host, parsed.database) == (
        "app@corp", NASTY, "sql.example.com", "replica")
    assert NASTY not in str(url) and "***" in str(url)
    assert res.dialect == "mssql"


def test_unsupported_driver_is_named() -> None:
    res = SqlServerResource(drivername="oracle+oracledb")
    with pytest.raises(ValueError, match=r"'oracle\+oracledb' is not supported"):
        res.get_engine()


def test_env_settings_and_secret() -> None:
    env = {"SQLSERVER_HOST": "db.internal", "SQLSERVER_PORT": "1444", "SQLSERVER_USER": "loader",
           "SQLSERVER_PASSWORD": "s3cret", "SQLSERVER_DATABASE": "dw", "SQLSERVER_SCHEMA": "cdc"}
    res = sqlserver_resource(env)
    assert (res.drivername, res.host, res.port, res.username, res.database, res.db_schema) == (
        "mssql+pytds", "db.internal", 1444, "loader", "dw", "cdc")
    assert res.password == dg.EnvVar("SQLSERVER_PASSWORD")
    unset = sqlserver_resource({})
    assert unset.password is None and unset.db_schema is None and unset.port == 1433
    with pytest.raises(ValueError, match="SQLSERVER_PORT"):
        sqlserver_resource({"SQLSERVER_PORT": "x"})


def test_logs_in_with_a_password_full_of_url_delimiters(postgres: Service) -> None:
    role = f"r_{uuid.uuid4().hex[:8]}"
    admin = SqlServerResource(drivername="postgresql+pg8000", host=postgres.settings.host,
                              port=postgres.settings.port("postgres"), username=LAB_DB_USER,
                              password=LAB_DB_PASSWORD, database=LAB_DATABASE).get_engine()
    try:
        with admin.begin() as conn:
            # DDL cannot bind the password; it is a test constant, quoted with '' doubling.
            conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{NASTY.replace(chr(39), chr(39) * 2)}'"))
        user = SqlServerResource(drivername="postgresql+pg8000", host=postgres.settings.host,
                                 port=postgres.settings.port("postgres"), username=role, password=NASTY,
                                 database=LAB_DATABASE)
        engine = user.get_engine()
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT current_user")).scalar_one() == role
        finally:
            engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()
