from __future__ import annotations

import dagster as dg


def test_definitions_load() -> None:
    from tidb_pipeline.definitions import defs

    assert isinstance(defs, dg.Definitions)
    defs.get_repository_def()  # resolves every asset, check, job and resource
