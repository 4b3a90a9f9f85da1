// An external jobq worker in Node.js with node-postgres: it claims the jobs
// of the external kind "send_email" (examples/setup.sql), "sends" each by a
// POST to an HTTP service (examples/stub_server.py), and completes the job
// in the same transaction as its record of the sending (table example_sent).
//
//   npm ci --prefix examples/node
//   JOBQ_EXAMPLE_STUB_URL=http://127.0.0.1:8025/send node examples/node/worker.js
//
// Connection: DATABASE_URL, or the PG* variables (PGHOST, PGPORT,
// PGDATABASE, PGUSER, PGPASSWORD, PGAPPNAME) as for psql.
// Settings (environment):
//   JOBQ_EXAMPLE_STUB_URL  where to POST (default http://127.0.0.1:8025/send)
//   JOBQ_EXAMPLE_QUEUE     queue to claim from (default "default")
//   JOBQ_EXAMPLE_MAX_JOBS  jobs per claim (default 10)
//   JOBQ_EXAMPLE_WAIT      how long a claim waits for a job (default "10 s")
//   JOBQ_EXAMPLE_RETRY_IN  delay before retrying a transient failure (default "5 s")
//   JOBQ_EXAMPLE_WORKER    name shown in jobq.leases (default node-<pid>)
//
// SIGTERM or SIGINT: stops claiming, finishes the jobs in hand, exits 0.
'use strict';

const http = require('node:http');
const https = require('node:https');
const { Client } = require('pg');

const env = process.env;
const config = {
  stubUrl: env.JOBQ_EXAMPLE_STUB_URL || 'http://127.0.0.1:8025/send',
  queue: env.JOBQ_EXAMPLE_QUEUE || 'default',
  maxJobs: parseInt(env.JOBQ_EXAMPLE_MAX_JOBS || '10', 10),
  wait: env.JOBQ_EXAMPLE_WAIT || '10 s',
  retryIn: env.JOBQ_EXAMPLE_RETRY_IN || '5 s',
  worker: env.JOBQ_EXAMPLE_WORKER || `node-${process.pid}`,
};

const HTTP_TIMEOUT_MS = 10000; // well under the kind's lease (30 s in setup.sql)

function log(msg) {
  console.error(`[${config.worker}] ${msg}`);
}

// Two connections: "claimer" only ever runs jobq.claim (so that cancelling
// a waiting claim at shutdown can hit nothing else), "db" runs each job's
// statements.  node-postgres reads the PG* variables when given no settings.
function connect() {
  const client = new Client(env.DATABASE_URL ? { connectionString: env.DATABASE_URL } : {});
  client.on('error', (err) => {
    // the server went away between queries: let a supervisor restart us;
    // the jobs in hand go back to the queue when their lease ends
    log(`connection lost: ${err.message}`);
    process.exit(1);
  });
  return client;
}
const claimer = connect();
const db = connect();
let claimerPid = null;

// Graceful shutdown.  A claim may be waiting (up to JOBQ_EXAMPLE_WAIT) for
// a job: cancel it.  A cancelled claim takes nothing (it is one statement
// in its own transaction: either it returned jobs, or it took none).  A
// cancel that reaches the server before the claim's statement starts is
// ignored: so it is sent again every second until the claim returns.
let stopping = false;
let claiming = false;
let cancelling = Promise.resolve();
function cancelClaim() {
  if (!claiming) return;
  cancelling = db.query('SELECT pg_cancel_backend($1)', [claimerPid]).catch((err) =>
    log(`could not cancel the claim: ${err.message}`));
  setTimeout(cancelClaim, 1000).unref();
}
function onSignal(signal) {
  if (stopping) {
    // a second signal: exit now; the jobs in hand go back to the queue
    // when their lease ends (at-least-once: they will be sent again)
    log(`${signal} again: exiting at once`);
    process.exit(1);
  }
  log(`${signal}: stopping (finishing the jobs in hand)`);
  stopping = true;
  cancelClaim();
}
process.on('SIGTERM', onSignal);
process.on('SIGINT', onSignal);

// POST json to url with an Idempotency-Key header.  Resolves to
// {status, body} for any HTTP answer, rejects when there is none
// (connection refused or reset, timeout).
function post(url, json, key) {
  const data = Buffer.from(JSON.stringify(json));
  const lib = url.startsWith('https:') ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(url, {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json',
        'Content-Length': data.length,
        'Idempotency-Key': key,
      },
      timeout: HTTP_TIMEOUT_MS,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${HTTP_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end(data);
  });
}

// SQLSTATE 55000: the lease token no longer holds the job (the lease
// ended and jobq gave the job back, or it was cancelled).  Nothing was
// changed; another attempt (maybe another worker's) owns the job now.
const LEASE_LOST = '55000';

// One claimed job.  job.id and job.lease_token are bigints: node-postgres
// gives them as strings, kept so (a lease token does not fit a JS number).
async function work(job) {
  const what = `job ${job.id} (attempt ${job.attempt}/${job.max_attempts})`;

  // Args no attempt can do anything with: give up at once (throwing here
  // instead would crash the worker on this job again at every attempt).
  if (typeof job.args?.to !== 'string') return giveUp(job, what, 'args.to must be a string');

  // Before the side effect: make sure the lease is still ours and long
  // enough for the call (the jobs of a claim are worked one after the
  // other; a long job would call jobq.heartbeat() every so often).
  try {
    await db.query('SELECT jobq.heartbeat($1, $2)', [job.id, job.lease_token]);
  } catch (err) {
    if (err.code === LEASE_LOST) return log(`${what}: lease lost before sending, skipped`);
    throw err;
  }

  // The outside effect.  It may happen more than once for a job (at-least-
  // once: the worker may die after it and before the commit below), so
  // the job id goes along as an idempotency key: the service can tell a
  // retry from a new request.
  let res;
  try {
    res = await post(config.stubUrl, job.args, String(job.id));
  } catch (err) {
    return fail(job, what, `POST failed: ${err.code || err.message}`);
  }

  if (res.status >= 200 && res.status < 300) return complete(job, what, res);
  if (res.status >= 500 || res.status === 408 || res.status === 429)
    return fail(job, what, `HTTP ${res.status}: ${res.body}`);
  // any other 4xx: retrying would not help
  return giveUp(job, what, `HTTP ${res.status}: ${res.body}`);
}

// Success: the database effect and the completion commit together or not
// at all -- exactly once, even if the job was worked twice.
async function complete(job, what, res) {
  await db.query('BEGIN');
  try {
    await db.query(
      `INSERT INTO example_sent (job_id, recipient, attempt, worker, response)
       VALUES ($1, $2, $3, 'node', $4)`,
      [job.id, job.args.to, job.attempt, res.body]);
    await db.query('SELECT jobq.complete($1, $2, $3::jsonb)',
      [job.id, job.lease_token, JSON.stringify({ http_status: res.status, response: res.body })]);
    await db.query('COMMIT');
    log(`${what}: sent, completed`);
  } catch (err) {
    await db.query('ROLLBACK');
    if (err.code === LEASE_LOST) return log(`${what}: sent, but the lease was lost: rolled back`);
    throw err;
  }
}

// A transient failure: retried after retry_in (or discarded when it was
// the last attempt; jobq.fail returns the new state).
async function fail(job, what, error) {
  try {
    const { rows } = await db.query('SELECT jobq.fail($1, $2, $3::text, $4::interval) AS state',
      [job.id, job.lease_token, error, config.retryIn]);
    log(`${what}: ${error} -> ${rows[0].state}`);
  } catch (err) {
    if (err.code === LEASE_LOST) return log(`${what}: ${error}; the lease was lost meanwhile`);
    throw err;
  }
}

// A permanent failure: discarded now, with the reason in the job's errors.
async function giveUp(job, what, reason) {
  try {
    await db.query('SELECT jobq.give_up($1, $2, $3)', [job.id, job.lease_token, reason]);
    log(`${what}: ${reason} -> given up`);
  } catch (err) {
    if (err.code === LEASE_LOST) return log(`${what}: ${reason}; the lease was lost meanwhile`);
    throw err;
  }
}

async function main() {
  await claimer.connect();
  await db.connect();
  claimerPid = (await claimer.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
  log(`claiming from queue ${config.queue}, posting to ${config.stubUrl}`);

  while (!stopping) {
    // Autocommit: the claim commits as it returns.  It waits up to
    // config.wait for a job, woken as soon as one is enqueued.
    let jobs;
    claiming = true;
    try {
      ({ rows: jobs } = await claimer.query(
        `SELECT id, kind, args, attempt, max_attempts, lease_token, lease_until
           FROM jobq.claim(queue => $1, max_jobs => $2, wait => $3::interval, worker => $4)`,
        [config.queue, config.maxJobs, config.wait, config.worker]));
    } catch (err) {
      if (stopping && err.code === '57014') break; // our cancel: nothing claimed
      throw err;
    } finally {
      claiming = false;
    }
    // the jobs in hand are finished even when a signal came meanwhile
    for (const job of jobs) await work(job);
  }

  await cancelling;
  await claimer.end();
  await db.end();
  log('stopped');
}

main().catch((err) => {
  log(`fatal: ${err.stack || err}`);
  process.exit(1);
});
