"""This repository's code location in `dg`'s layout: the defs folder (`[tool.dg.project] defs_module`).

`dg` and `definitions.py` load every `defs.yaml` below this folder. Its one instance,
`tidb_replication/defs.yaml`, is a `TiDBReplicationComponent` reading the checked-in `tidb_pipeline.yaml`
(or `$TIDB_PIPELINE_CONFIG`). The factories the component calls live in `tidb_pipeline.defs`.
"""
