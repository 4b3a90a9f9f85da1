-- Runs once in the template database (psql -f, each statement in autocommit).
CREATE EXTENSION jobq;
-- The bench kind is worked by external workers (jobq.claim); jobq's in-server
-- workers never claim its jobs.  Default lease (5 minutes): no job of a run
-- outlives it.
SELECT jobq.register_external('bench');
-- In-server workers are not needed here: keep one per database (the minimum
-- the brief asks for; they only sleep) so the 2 cores go to the server
-- backends of the Node workers.  Cluster-wide, in postgresql.auto.conf.
ALTER SYSTEM SET jobq.workers = 1;
SELECT pg_reload_conf();
