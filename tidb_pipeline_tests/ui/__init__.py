"""The Dagster UI, verified in a headless browser against a running `dagster dev`."""
