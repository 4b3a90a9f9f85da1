#!/usr/bin/env bash
# jobq-external: jobq's queue worked by external Node workers (jobq.claim /
# jobq.complete over ordinary connections), not by jobq's in-server workers.
# Contract: see the harness README.md "Adding a system".  Lives in the jobq
# repository (test/bench/jobq-external); copy it into the harness:
#   cp -r test/bench/jobq-external /tmp/bench/systems/
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
source "$HERE/../../lib/common.sh"
node_() { "$BENCH_NODE" "$HERE/jx.mjs" "$@"; }
sqlq() { "$BENCH_NODE" "$BENCH_ROOT/lib/sqlqueue.mjs" "$@" --sql-dir "$HERE/sql"; }

INSERVER='in-server jobq.workers=1 (they never claim external jobs; kept low to leave the cores to Node)'

case ${1:-} in
  conf)
    echo "shared_preload_libraries = 'jobq'"
    # as systems/jobq: (jobq.workers + 2) per database with the extension + launcher
    echo "max_worker_processes = 64" ;;
  check)
    [[ -f $("$PGBIN/pg_config" --sharedir)/extension/jobq.control ]] || die "jobq extension not installed (make install in the project)"
    grep -qs 'FUNCTION jobq.claim' "$("$PGBIN/pg_config" --sharedir)"/extension/jobq--*.sql \
      || die "installed jobq has no jobq.claim() (external workers): make install a newer jobq"
    [[ -d $BENCH_ROOT/peers/node_modules/pg ]] || die "run: (cd peers && npm ci)" ;;
  versions)
    echo "jobq $(psqlq "$PGDATABASE" -c "SELECT extversion FROM pg_extension WHERE extname = 'jobq'") (external kind 'bench', jobq.workers=$(psqlq "$PGDATABASE" -c "SHOW jobq.workers")), $(node_ version)" ;;
  setup) psqlq "$PGDATABASE" -f "$HERE/sql/setup.sql" ;;
  cases)
    for c in 4 16; do
      printf 'W1\tc%s-each\t%s Node worker loops in 1 process (1 connection each), jobq.claim(max_jobs 100, wait 1 s), jobq.complete() per job (1 tx/job); %s\n' "$c" "$c" "$INSERVER"
      printf 'W1\tc%s-batch\t%s Node worker loops in 1 process, jobq.claim(max_jobs 100, wait 1 s), the batch completed in 1 call (jobq.complete_many); %s\n' "$c" "$c" "$INSERVER"
    done
    printf 'W2\tsingle-x4\tjobq.enqueue() of an external kind (1 job/tx), 4 concurrent clients (as systems/jobq)\n'
    printf 'W2\tbatch\tjobq.enqueue_many() of an external kind, all N jobs in one call (as systems/jobq)\n'
    printf 'W3\tc4-max1\tworker process with 4 loops, each jobq.claim(max_jobs 1, wait 10 s) woken at the enqueue commit, complete per job; producer in a 2nd process; %s\n' "$INSERVER"
    printf 'W3\tc4-max100\tworker process with 4 loops, each jobq.claim(max_jobs 100, wait 10 s), batch completion; producer in a 2nd process; %s\n' "$INSERVER"
    ;;
  run)
    w=$2 c=$3
    case $w/$c in
      W1/c4-each)   node_ drain --concurrency 4  --max-jobs 100 --complete each ;;
      W1/c4-batch)  node_ drain --concurrency 4  --max-jobs 100 --complete batch ;;
      W1/c16-each)  node_ drain --concurrency 16 --max-jobs 100 --complete each ;;
      W1/c16-batch) node_ drain --concurrency 16 --max-jobs 100 --complete batch ;;
      W2/single-x4) sqlq enqueue --mode single --clients 4 ;;
      W2/batch)     sqlq enqueue --mode batch ;;
      W3/c4-max1)   node_ latency --concurrency 4 --max-jobs 1   --complete each  --wait-s 10 ;;
      W3/c4-max100) node_ latency --concurrency 4 --max-jobs 100 --complete batch --wait-s 10 ;;
      *) die "unknown case $w/$c" ;;
    esac ;;
  *) echo "usage: $0 conf|check|versions|setup|cases|run WORKLOAD CASE" >&2; exit 2 ;;
esac
