"""MariaDB from Debian's packages, standing in for TiDB (same MySQL protocol).

Own datadir under the lab folder; row-based binlog with full images and full row metadata (without
`binlog_row_metadata=FULL` the binlog carries no column names and the change feed could not name
fields); utf8mb4; UTC session time zone so TIMESTAMP values are deterministic; a lab user with
REPLICATION SLAVE/CLIENT so the change feed can read the binlog.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from tidb_pipeline.lab.service import LabError, Service, marker
from tidb_pipeline.lab.settings import LAB_DB_PASSWORD, LAB_DB_USER
from tidb_pipeline.lab.ticdc import ddl_history


def _which(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise LabError(f"{name} not found; install MariaDB with `apt-get install mariadb-server`")


class MariaDBService(Service):
    """A private mariadbd on 127.0.0.1 with ROW binlog and FULL row metadata."""

    name = "mariadb"
    port_names = ("mariadb",)

    @property
    def datadir(self):
        return self.data_dir / "data"

    @property
    def socket(self):
        return self.data_dir / "mysqld.sock"

    def connect_kwargs(self) -> dict[str, object]:
        """PyMySQL keyword arguments for the lab user."""
        return {
            "host": self.settings.host,
            "port": self.settings.port("mariadb"),
            "user": LAB_DB_USER,
            "password": LAB_DB_PASSWORD,
            "charset": "utf8mb4",
        }

    def prepare(self) -> None:
        init = self.data_dir / "init.sql"
        # Runs at every start; idempotent, so a wiped grant table heals itself.
        init.write_text(
            f"CREATE USER IF NOT EXISTS '{LAB_DB_USER}'@'%' IDENTIFIED BY '{LAB_DB_PASSWORD}';\n"
            f"CREATE USER IF NOT EXISTS '{LAB_DB_USER}'@'localhost' IDENTIFIED BY '{LAB_DB_PASSWORD}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{LAB_DB_USER}'@'%' WITH GRANT OPTION;\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{LAB_DB_USER}'@'localhost' WITH GRANT OPTION;\n"
            # TiDB's DDL job history stand-in (lab/ticdc/ddl_history.py): there before any capture writes it.
            + "".join(f"{sql};\n" for sql in ddl_history.create_sql())
        )
        if (self.datadir / "mysql").is_dir():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        args = [_which("mariadb-install-db"), "--no-defaults", f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal", "--skip-test-db"]
        if os.geteuid() == 0:
            args.append("--user=root")
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            shutil.rmtree(self.datadir, ignore_errors=True)
            raise LabError(f"mariadb-install-db failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")

    def command(self) -> list[str]:
        args = [
            _which("mariadbd"), "--no-defaults",
            f"--datadir={self.datadir}", f"--socket={self.socket}", f"--pid-file={self.data_dir / 'mariadbd.pid'}",
            f"--bind-address={self.settings.host}", f"--port={self.settings.port('mariadb')}",
            f"--init-file={self.data_dir / 'init.sql'}",
            # Its own temporary folder: in a shared /tmp another process's clean-up can delete a temporary table's
            # file mid-statement (seen as "Error on delete of '/tmp/#sql-temptable-...'" on a busy machine).
            f"--tmpdir={self.data_dir / 'tmp'}",
            "--server-id=1", f"--log-bin={self.data_dir / 'binlog' / 'mariadb-bin'}",
            "--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL",
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin",
            "--default-time-zone=+00:00", "--skip-name-resolve",
            "--innodb-buffer-pool-size=512M", "--innodb-log-file-size=256M",
            # The lab trades durability of the last second for speed; crash tests kill the pipeline, not MariaDB.
            "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0",
            "--max-connections=500", "--max-allowed-packet=64M",
            f"--loose-{marker(self.name)}",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        return args

    def spawn(self) -> int:
        (self.data_dir / "binlog").mkdir(exist_ok=True)
        (self.data_dir / "tmp").mkdir(exist_ok=True)
        return super().spawn()

    def is_ready(self) -> bool:
        import pymysql

        conn = pymysql.connect(connect_timeout=2, **self.connect_kwargs())  # type: ignore[arg-type]
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@binlog_row_metadata")
                return cur.fetchone()[0] == "FULL"
        finally:
            conn.close()

    def address(self) -> str:
        return f"mysql://{LAB_DB_USER}@{self.settings.host}:{self.settings.port('mariadb')}"
