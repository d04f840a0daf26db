#!/usr/bin/env bash
# Installs what the project needs from Debian's packages when it is missing (as root), and checks the rest.
# Prerequisites: Python 3.11+, Java 17, Maven, MariaDB and PostgreSQL server binaries, Chromium.
set -euo pipefail

need=()
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || { echo "Python 3.11+ is required" >&2; exit 1; }
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
{ command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; } || need+=(mariadb-server)
command -v mariadb-install-db >/dev/null || [ -x /usr/bin/mariadb-install-db ] || need+=(mariadb-server)
# PostgreSQL stands in for SQL Server (the built-in SQL applier); the lab runs a private cluster.
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
# go-tpc (the workload) is built from source by `make install`.
command -v go >/dev/null || need+=(golang-go)
# The UI test drives Debian's Chromium through Playwright; browsers are never downloaded.
command -v chromium >/dev/null || need+=(chromium)

if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing: ${need[*]} — install them with your package manager (Debian/Ubuntu: apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "installing Debian packages: ${need[*]}"
  apt-get update -q >/dev/null
  # The package's own service is not used: the lab runs a private mariadbd with its own datadir.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])' || { echo "Java 17+ is required (found: $(java -version 2>&1 | head -1))" >&2; exit 1; }
