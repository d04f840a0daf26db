"""`tidb-pipeline bench`: the pipeline's speed, measured on the lab, each figure beside its baseline.

Speed is measured here and never in timed tests. `tidb_pipeline.bench.cli` runs the figures, prints one
table and writes BENCHMARKS.md plus PNG charts under benchmarks/.
"""
