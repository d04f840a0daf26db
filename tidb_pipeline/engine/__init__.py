"""The I/O that runs the pipeline: landing loader, replica merge, reconcilers, SQL Server applier, backfill loader.

Called by `defs/` (which builds the Dagster objects); imports `replication/` (pure) and `resources/`, never `defs/`.
"""
