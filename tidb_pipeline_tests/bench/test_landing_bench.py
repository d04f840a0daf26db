"""The landing benchmarks' pure part: the encoder benchmark reports both rates."""

from tidb_pipeline.bench.landing import bench_encode


def test_bench_encode_reports_both_rates(capsys):
    rates = bench_encode(2000)
    assert set(rates) == {"encode", "decode_and_encode"} and all(r > 0 for r in rates.values())
    assert "records/s" in capsys.readouterr().out
