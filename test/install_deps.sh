#!/usr/bin/env bash
# Installs, on Debian 12 as root, the packages jobq builds and tests with,
# when they are missing.  The Debian server package would create and start
# a default cluster; jobq's scripts start their own, so none is created.
set -euo pipefail

packages=(postgresql-15 postgresql-server-dev-15 libipc-run-perl make gcc prometheus-postgres-exporter
	python3-psycopg python3-psycopg2 pgbouncer)
# the HTTP call of examples/psql/worker.sh (test/t/111_examples.pl)
packages+=(curl)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js from Debian, unless the machine has its own
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)

# the node-postgres driver of README's client snippet (test/t/105_clients.pl)
# and of the example worker examples/node/worker.js (test/t/111_examples.pl)
install_node_modules() {
	local dir
	for dir in "$(dirname "$0")/clients" "$(dirname "$0")/../examples/node"; do
		[ -d "$dir/node_modules/pg" ] || npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
	done
}

if [ ${#missing[@]} -eq 0 ]; then
	install_node_modules
	exit 0
fi

echo "installing: ${missing[*]}"
mkdir -p /etc/postgresql-common
if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
	echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
	"${missing[@]}" >/dev/null
install_node_modules
