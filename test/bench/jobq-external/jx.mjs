// jobq-external adapter (Node side): jobq's queue worked by external Node
// workers through jobq.claim() / jobq.complete().  Called by adapter.sh:
//   jx.mjs drain   --concurrency C --max-jobs M --complete each|batch
//   jx.mjs latency --concurrency C --max-jobs M --complete each|batch [--wait-s 10]
//   jx.mjs version
// (W2 enqueue is jobq's own: adapter.sh runs lib/sqlqueue.mjs on sql/.)
//
// One Node process, C worker loops, each on its own connection (as
// graphile-worker's concurrency in one process).  A loop:
//   claim:    SELECT ... FROM jobq.claim('default', M, wait) (autocommit: the claim commits)
//   handle:   the handler of every claimed job, in order (W1: count it; W3: record its start)
//   complete: each  = SELECT jobq.complete(id, token) per job, autocommit (1 transaction per job)
//             batch = one call for the whole claim: SELECT jobq.complete_many(ids, tokens)
// All statements are prepared (named) once per connection.
import {
  DB_URL, N, pg, parseArgs, settle, info, peerVersion,
  runDrain, runLatencyForked, latencyChild,
} from '../../lib/benchlib.mjs';
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import path from 'node:path';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const sqlFile = (name) => fs.readFileSync(path.join(HERE, 'sql', name), 'utf8');

const CLAIM = {
  name: 'jx_claim',
  text: "SELECT id, args, lease_token FROM jobq.claim('default', $1::int, $2::interval)",
};
const COMPLETE_ONE = { name: 'jx_complete', text: 'SELECT jobq.complete($1::bigint, $2::bigint)' };
const COMPLETE_BATCH = {
  name: 'jx_complete_batch',
  text: 'SELECT jobq.complete_many($1::bigint[], $2::bigint[]) AS n',
};

const REMAINING_SQL = sqlFile('remaining.sql');
const remaining = async (c) => Number((await c.query(REMAINING_SQL)).rows[0].n);

/**
 * Starts `concurrency` worker loops; onJob(row) is the handler (sync).
 * Returns stop(): lets the loops finish their current claim (a waiting claim
 * ends after at most `waitS`); claims still waiting after graceMs are
 * cancelled (pg_cancel_backend on the loops' own backends, by PID).
 */
async function startWorkers({ concurrency, maxJobs, complete, waitS, onJob }) {
  if (complete !== 'each' && complete !== 'batch') throw new Error(`unknown --complete ${complete}`);
  const clients = await Promise.all(Array.from({ length: concurrency }, async (_, k) => {
    const c = new pg.Client({ connectionString: DB_URL, application_name: `jobq-external-${k}` });
    await c.connect();
    return c;
  }));
  let stopping = false;
  const claimValues = [maxJobs, `${waitS} s`];
  const loop = async (c) => {
    while (!stopping) {
      let rows;
      try {
        rows = (await c.query({ ...CLAIM, values: claimValues })).rows;
      } catch (e) {
        if (stopping && e.code === '57014') return; // our cancel at stop
        throw e;
      }
      if (rows.length === 0) continue;
      if (complete === 'each') {
        for (const r of rows) {
          onJob(r);
          await c.query({ ...COMPLETE_ONE, values: [r.id, r.lease_token] });
        }
      } else {
        for (const r of rows) onJob(r);
        const n = Number((await c.query({
          ...COMPLETE_BATCH, values: [rows.map((r) => r.id), rows.map((r) => r.lease_token)],
        })).rows[0].n);
        if (n !== rows.length) throw new Error(`batch complete: ${n} of ${rows.length}`);
      }
    }
  };
  const loops = clients.map((c, k) => loop(c).catch((e) => {
    if (stopping && e.code === '57014') return;
    info(`worker ${k}: ${e.code || ''} ${e.message}`);
    process.exit(1); // a dead loop would only show up as a stalled drain
  }));
  return async (graceMs = Math.min(1500, waitS * 1000 + 500)) => {
    stopping = true;
    let timer;
    const settled = Promise.all(loops);
    const timedOut = await Promise.race([
      settled.then(() => false),
      new Promise((r) => { timer = setTimeout(() => r(true), graceMs); }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      const ctl = new pg.Client({ connectionString: DB_URL });
      await ctl.connect();
      await ctl.query('SELECT pg_cancel_backend(pid) FROM unnest($1::int[]) AS pid',
        [clients.map((c) => c.processID)]);
      await ctl.end();
      await settled;
    }
    await Promise.all(clients.map((c) => c.end()));
  };
}

const args = parseArgs();
const cmd = args._[0];
const concurrency = Number(args.concurrency || 4);
const maxJobs = Number(args['max-jobs'] || 100);
const complete = args.complete || 'batch';
const label = ` jobq-external c=${concurrency} max_jobs=${maxJobs} complete=${complete}`;

if (cmd === 'version') {
  console.log(`node ${process.version}, pg ${peerVersion('pg')}`);
} else if (cmd === 'drain') {
  // bulk load (not timed), as systems/jobq: one enqueue_many call
  const c = new pg.Client({ connectionString: DB_URL });
  await c.connect();
  await c.query(sqlFile('enqueue_batch.sql'), [Array.from({ length: N }, (_, i) => ({ i }))]);
  await c.end();
  await settle();
  const waitS = Number(args['wait-s'] || 1);
  await runDrain({
    label,
    remaining,
    start: (ctx) => startWorkers({ concurrency, maxJobs, complete, waitS, onJob: () => ctx.done() }),
  });
} else if (cmd === 'latency') {
  const waitS = Number(args['wait-s'] || 10);
  const c = new pg.Client({ connectionString: DB_URL });
  await c.connect();
  const enqueue = sqlFile('enqueue.sql');
  try {
    await runLatencyForked({
      label,
      script: fileURLToPath(import.meta.url),
      childArgs: ['latency-worker', '--concurrency', String(concurrency), '--max-jobs', String(maxJobs),
        '--complete', complete, '--wait-s', String(waitS)],
      enqueueOne: (seq) => c.query(enqueue, [{ seq }]),
    });
  } finally { await c.end(); }
} else if (cmd === 'latency-worker') {
  const waitS = Number(args['wait-s'] || 10);
  await latencyChild((record) => startWorkers({
    concurrency, maxJobs, complete, waitS, onJob: (r) => record(r.args.seq),
  }));
} else {
  console.error('usage: jx.mjs drain|latency|version --concurrency C --max-jobs M --complete each|batch');
  process.exit(2);
}
