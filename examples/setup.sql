-- What the example workers need, once per database (psql -f examples/setup.sql).
-- The workers themselves run no DDL: several of them may start at once.

-- An external job kind: jobq's own workers never run its jobs; processes
-- outside the server claim them with jobq.claim().  A claim holds a job for
-- the lease (here 30 seconds, extended by jobq.heartbeat()); when a worker
-- dies holding jobs, jobq gives them back once their lease is over.
SELECT jobq.register_external('send_email',
	queue => 'default',
	max_attempts => 5,
	lease => '30 seconds');

-- The workers' same-database effect: one row per e-mail sent, inserted in
-- the transaction that completes the job.  jobq.complete() only succeeds
-- for the worker holding the job's lease, so even when a job is worked
-- twice (its first worker was too slow and lost the lease) only one row
-- commits.  No unique constraint on purpose: test/t/111_examples.pl counts
-- the rows to check exactly that; an application would add one anyway.
CREATE TABLE IF NOT EXISTS example_sent (
	job_id bigint NOT NULL,
	recipient text NOT NULL,
	attempt integer NOT NULL,
	worker text NOT NULL,          -- which example sent it: node, python, psql
	response jsonb,                -- what the HTTP service answered
	sent_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS example_sent_job_id ON example_sent (job_id);
