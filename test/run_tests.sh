#!/usr/bin/env bash
# Runs the jobq test suite: pg_regress, isolation and TAP tests, each on a
# throwaway cluster with jobq preloaded.
#
#   test/run_tests.sh                  everything (what CI runs)
#   test/run_tests.sh regress|isolation|tap [test/t/NNN_x.pl ...]
#
# As root on Debian 12 it first installs what it needs (PostgreSQL 15, its
# server headers, IPC::Run), builds with -Werror and installs jobq; the
# clusters then run as the unprivileged user "postgres" (initdb refuses
# root), from a copy of the tree that user can write to.  As another user it
# expects all that done and runs the tests in place.
set -euo pipefail

cd "$(dirname "$0")/.."
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
TEST_USER=${JOBQ_TEST_USER:-postgres}

suite=${1:-all}
[ $# -gt 0 ] && shift
case "$suite" in
	all) vars=() ;;
	regress) vars=(ISOLATION= TAP_TESTS=) ;;
	isolation) vars=(REGRESS= TAP_TESTS=) ;;
	tap) vars=(REGRESS= ISOLATION=); [ $# -gt 0 ] && vars+=("PROVE_TESTS=$*") ;;
	*) echo "usage: $0 [all|regress|isolation|tap [files...]]" >&2; exit 2 ;;
esac
# JOBQ_PROVE_FLAGS=-v: verbose TAP output (shows the figures tests note())
[ -n "${JOBQ_PROVE_FLAGS:-}" ] && vars+=("PROVE_FLAGS=-I test $JOBQ_PROVE_FLAGS")

if [ "$(id -u)" = 0 ]; then
	# JOBQ_SKIP_BUILD=1: test what is installed (for parallel test runs)
	if [ -z "${JOBQ_SKIP_BUILD:-}" ]; then
		bash test/install_deps.sh
		make -s PG_CONFIG="$PG_CONFIG" PG_CFLAGS=-Werror
		make -s PG_CONFIG="$PG_CONFIG" install
	fi
	work=$(mktemp -d /tmp/jobq-tests.XXXXXX)
	tar --exclude=.git --exclude='tmp_*' --exclude=results --exclude=output_iso -cf - . | tar -C "$work" -xf -
	chown -R "$TEST_USER" "$work"
	status=0
	runuser -u "$TEST_USER" -- make -C "$work" -s PG_CONFIG="$PG_CONFIG" installcheck "${vars[@]}" || status=$?
	if [ $status -ne 0 ]; then
		for f in "$work"/regression.diffs "$work"/output_iso/regression.diffs; do
			[ -f "$f" ] && { echo "=== $f"; cat "$f"; }
		done
		# only the TAP files that failed or died (no plan at their end)
		for f in "$work"/tmp_check/log/regress_log_*; do
			[ -f "$f" ] || continue
			if grep -q 'not ok' "$f" || ! tail -n 1 "$f" | grep -q '1\.\.[0-9]'; then
				echo "=== failures in $f"
				grep -A 8 'not ok' "$f" | head -n 60 || true
				echo "=== tail of $f"
				tail -n 15 "$f"
			fi
		done
		echo "jobq tests FAILED; everything is kept in $work" >&2
	else
		rm -rf "$work"
	fi
	exit $status
fi

make -s PG_CONFIG="$PG_CONFIG" installcheck "${vars[@]}"
