#!/usr/bin/env bash
# Runs jobq for real: builds and installs it, starts a throwaway cluster with
# jobq preloaded (as the unprivileged user "postgres", on a unix socket in a
# temporary directory), creates the extension, registers example handlers,
# enqueues jobs (one from a trigger, one that fails once and is retried),
# waits for them and shows them through SQL.  Stops and removes the cluster
# at the end.  Run it as root on Debian 12: bash test/demo.sh
set -euo pipefail

cd "$(dirname "$0")/.."
. test/cluster.sh

cluster_start "jobq.workers = 2"
echo "== cluster started in $CLUSTER_DIR/data with shared_preload_libraries = 'jobq'"

cluster_psql <<'SQL'
\pset footer off
CREATE EXTENSION jobq;

-- an application: orders get a receipt, and a flaky partner API is called
CREATE TABLE orders (id int PRIMARY KEY, customer text, total numeric);
CREATE TABLE receipts (order_id int, body text, sent_at timestamptz DEFAULT now());

CREATE FUNCTION send_receipt(args jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO receipts (order_id, body)
	VALUES ((args->'new'->>'id')::int,
			format('Dear %s, you paid %s.', args->'new'->>'customer', args->'new'->>'total'));
	RETURN jsonb_build_object('receipt_for', args->'new'->'id');
END $$;

CREATE FUNCTION call_partner(args jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	-- the partner is down on the first attempt
	IF (jobq.current_job()).attempt = 1 THEN
		RAISE EXCEPTION 'partner API timed out' USING HINT = 'it will be retried';
	END IF;
	RETURN 'partner says ok to ' || (args->>'order');
END $$;

SELECT jobq.register('send_receipt', 'send_receipt(jsonb)');
SELECT jobq.register('call_partner', 'call_partner(jsonb)', max_attempts => 5,
					 backoff_max => '2 seconds');

-- enqueue from a trigger: every new order gets a receipt job, in the same
-- transaction as the order
CREATE TRIGGER orders_receipt AFTER INSERT ON orders
	FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger('send_receipt');
SELECT jobq.wait_ready('30 s') AS jobq_ready \gset
\echo == jobq ready: :jobq_ready

INSERT INTO orders VALUES (1, 'Ada', 42.00), (2, 'Grace', 7.50);
SELECT jobq.enqueue('call_partner', '{"order": 1}') AS partner_job \gset
SELECT unnest(jobq.enqueue_many('call_partner', ARRAY['{"order": 2}', '{"order": 3}']::jsonb[])) AS batch_job;

\echo == waiting for every job to finish
SELECT id, kind, jobq.wait(id, '60 s') AS final_state FROM jobq.jobs ORDER BY id;

\echo == the jobs
SELECT id, kind, state, attempt, result,
	   jsonb_array_length(errors) AS failed_attempts,
	   errors->0->>'message' AS first_error
  FROM jobq.jobs ORDER BY id;

\echo == the receipts written by the trigger jobs
SELECT order_id, body FROM receipts ORDER BY order_id;

\echo == queue statistics and the processes behind them
SELECT queue, available, running, completed, discarded FROM jobq.queue_stats;
SELECT component, state, jobs_done, restarts FROM jobq.components ORDER BY component;
SQL
echo "== done; the cluster is stopped and removed"
