"""The lab change feed's throughput: row changes/s from MariaDB's binlog to acknowledged Kafka records.

    python -m tidb_pipeline.bench.capture --rows 50000
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from tidb_pipeline.lab import stack
from tidb_pipeline.lab.service import up
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.ticdc import capture
from tidb_pipeline.lab.ticdc.store import Changefeed, ChangefeedStore


def bench(rows: int = 50_000, batch: int = 1_000) -> dict[str, float]:
    """Row changes/s from binlog to acknowledged Kafka records on the running lab (mariadb, kafka, registry)."""
    settings = LabSettings()
    services = stack.services(settings, ["mariadb", "kafka", "registry"])
    up(services, log=lambda _m: None)
    mysql = next(s for s in services if s.name == "mariadb").connect_kwargs()  # type: ignore[attr-defined]
    conn = capture._connect(mysql)
    run = uuid.uuid4().hex[:8]
    db = f"bench_{run}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db}`")
        cur.execute(
            f"CREATE TABLE `{db}`.order_line (ol_o_id INT NOT NULL, ol_d_id TINYINT NOT NULL, ol_w_id INT NOT NULL, "
            "ol_number TINYINT NOT NULL, ol_i_id INT NOT NULL, ol_supply_w_id INT NOT NULL, ol_delivery_d DATETIME NULL, "
            "ol_quantity TINYINT NOT NULL, ol_amount DECIMAL(6,2) NOT NULL, ol_dist_info CHAR(24) NOT NULL, "
            "PRIMARY KEY (ol_w_id, ol_d_id, ol_o_id, ol_number))"
        )
    file, pos = capture.master_position(conn)
    with conn.cursor() as cur:
        for start in range(0, rows, batch):
            values = [
                (i, i % 10 + 1, 1, 1, i % 100000, 1, None, 5, f"{(i % 9999) / 100:.2f}", "x" * 24)
                for i in range(start, min(rows, start + batch))
            ]
            cur.executemany(f"INSERT INTO `{db}`.order_line VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", values)
    end_file, end_pos = capture.master_position(conn)
    conn.close()
    with tempfile.TemporaryDirectory() as tmp:
        store = ChangefeedStore(Path(tmp) / "cf.db")
        cf = Changefeed(
            id=f"bench-{run}",
            sink_uri=f"kafka://{settings.kafka_bootstrap}/unused?protocol=avro&partition-num=3&enable-tidb-extension=true",
            replica_config={"filter": {"rules": [f"{db}.*"]}, "sink": {"schema_registry": settings.registry_url,
                            "dispatchers": [{"matcher": [f"{db}.*"], "topic": "tidb_{schema}_{table}", "partition": "index-value"}]}},
            start_ts=0, state="normal", checkpoint_ts=capture._now_tso(), binlog_file=file, binlog_pos=pos, error=None,
            created_at=time.time(),
        )
        store.put(cf)
        cap = capture.Capture(cf, store, mysql)
        thread = threading.Thread(target=cap.run, daemon=True)
        t0 = time.perf_counter()
        thread.start()
        while True:
            got = store.get(cf.id)
            if got and got.binlog_file and (got.binlog_file, got.binlog_pos) >= (end_file, end_pos):
                break
            if not thread.is_alive():
                raise RuntimeError(f"capture stopped early: {cap.error}")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        cap.stop()
        thread.join(30)
        store.close()
    return {"rows": rows, "seconds": round(elapsed, 2), "rows_per_second": round(rows / elapsed)}


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args(list(argv) if argv is not None else None)
    print(bench(args.rows))


if __name__ == "__main__":
    main()
