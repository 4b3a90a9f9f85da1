# Sourced by demo.sh and bench.sh: build and install jobq (as root), then
# start and stop a throwaway cluster with jobq preloaded, run as an
# unprivileged user on a unix socket in a temporary directory.
#
#   cluster_start "extra postgresql.conf lines"   sets CLUSTER_DIR
#   cluster_psql [psql args]                       as the superuser "postgres"
#   cluster_stop                                   (also run at exit)

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG_BIN=/usr/lib/postgresql/15/bin
CLUSTER_USER=${JOBQ_CLUSTER_USER:-postgres}

if [ "$(id -u)" = 0 ]; then
	bash test/install_deps.sh
	make -s PG_CONFIG="$PG_CONFIG"
	make -s PG_CONFIG="$PG_CONFIG" install
	as_cluster_user() { runuser -u "$CLUSTER_USER" -- "$@"; }
else
	as_cluster_user() { "$@"; }
fi

cluster_start() {
	CLUSTER_DIR=$(mktemp -d /tmp/jobq-cluster.XXXXXX)
	chown "$CLUSTER_USER" "$CLUSTER_DIR" 2>/dev/null || true
	trap cluster_stop EXIT
	as_cluster_user "$PG_BIN/initdb" -D "$CLUSTER_DIR/data" -A trust -U postgres >/dev/null
	cat >> "$CLUSTER_DIR/data/postgresql.conf" <<CONF
shared_preload_libraries = 'jobq'
listen_addresses = ''
unix_socket_directories = '$CLUSTER_DIR'
port = 5432
$1
CONF
	as_cluster_user "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w start >/dev/null
}

cluster_psql() {
	as_cluster_user "$PG_BIN/psql" -X -q -h "$CLUSTER_DIR" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"
}

cluster_pgbench() {
	as_cluster_user "$PG_BIN/pgbench" -h "$CLUSTER_DIR" -U postgres "$@" postgres
}

cluster_stop() {
	[ -n "${CLUSTER_DIR:-}" ] || return 0
	as_cluster_user "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m fast stop >/dev/null 2>&1 || true
	rm -rf "$CLUSTER_DIR"
	CLUSTER_DIR=
}
