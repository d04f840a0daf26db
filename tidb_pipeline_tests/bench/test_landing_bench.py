"""The landing benchmarks: the encoder alone, and the loader against its raw read limit on the lab."""

from typing import Any

import pytest

from tidb_pipeline.bench.landing import bench_encode, main


def test_bench_encode_reports_both_rates(capsys):
    rates = bench_encode(2000)
    assert set(rates) == {"encode", "decode_and_encode"} and all(r > 0 for r in rates.values())
    assert "records/s" in capsys.readouterr().out


def test_bench_command_loads_and_reports_both_rates(kafka: Any, registry: Any, snowflake: Any,
                                                    capsys: pytest.CaptureFixture[str]):
    main(["--bench", "3000"])
    out = capsys.readouterr().out
    assert "load_topic: 3,000 records in" in out
    assert "raw limit (consume + Avro decode, 1 reader(s))" in out
    assert "load / raw limit:" in out
