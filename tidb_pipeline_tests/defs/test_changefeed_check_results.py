"""The registry check's verdicts without a lab: what TiCDC's status adds, and a refusal no table explains."""

import dagster as dg

from tidb_pipeline.defs.changefeed_checks import registry_result
from tidb_pipeline.replication import schema_compat as sc
from tidb_pipeline.replication import ticdc_schema as ts
from tidb_pipeline.resources.ticdc import ChangefeedStatus, RunningError

CFG = ts.CodecConfig()
V1 = ts.value_schema(ts.TableInfo("s", "t", (ts.Column("id", "bigint", False),), ("id",)), CFG)
V2 = ts.value_schema(ts.TableInfo("s", "t", (ts.Column("id", "bigint", False), ts.Column("w", "int", False)),
                                  ("id",)), CFG)
MESSAGE = "[CDC:ErrAvroSchemaAPIError]schema manager API error, %s"


def _status(state: str, code: str | None) -> ChangefeedStatus:
    err = RunningError(code, MESSAGE) if code else None
    return ChangefeedStatus(state, 1, 1, err if state == "failed" else None, err if state == "warning" else None)


def _verdict() -> sc.SubjectVerdict:
    v = sc.verdict(db="s", table="t", subject="tidb_s_t-value", level="BACKWARD", versions=[(1, V1)], new=V2,
                   columns={"id": "id", "w": "w"}, registry_url="http://r:8081", with_auth=False)
    assert v is not None
    return v


def test_warn_ahead_error_when_ticdc_reports_it_also_once_failed() -> None:
    levels = {"(global)": "BACKWARD"}
    ahead = registry_result([_verdict()], levels, _status("normal", None), "cf")
    assert (ahead.passed, ahead.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert "ticdc_error" not in ahead.metadata
    for state, code in (("warning", "CDC:ErrAvroSchemaAPIError"), ("failed", "CDC:ErrChangefeedUnretryable")):
        stuck = registry_result([_verdict()], levels, _status(state, code), "cf")
        assert (stuck.passed, stuck.severity) == (False, dg.AssetCheckSeverity.ERROR)
        assert stuck.metadata["ticdc_error"].value == f"{code}: {MESSAGE}"
        assert stuck.description.startswith("TiCDC changefeed cf is stuck: the registry refuses s.t's new schema "
                                            "(column `w` added as INT NOT NULL without a default (Avro int))")
    ok = registry_result([], levels, _status("normal", None), "cf")
    assert ok.passed


def test_a_refusal_no_table_explains_points_at_ticdcs_log() -> None:
    r = registry_result([], {"(global)": "BACKWARD"}, _status("warning", "CDC:ErrAvroSchemaAPIError"), "cf")
    assert (r.passed, r.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert "Failed to register schema to the Registry" in (r.description or "")
