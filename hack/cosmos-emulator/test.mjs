// Tests for the patched Cosmos DB emulator: `node --test test.mjs`
// (runs ./install.sh first if the patched package is not installed).
// The server is started through start.sh, exactly as the Rust tests do.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import net from "node:net";

const here = dirname(fileURLToPath(import.meta.url));
const KEY =
  "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";
const DB = "emutest";

let proc;
let base; // http://127.0.0.1:PORT
let port;

before(async () => {
  execFileSync(join(here, "install.sh"), { stdio: ["ignore", "ignore", "inherit"] });
  proc = spawn(join(here, "start.sh"), [DB], { stdio: ["ignore", "pipe", "inherit"] });
  const lines = [];
  const rl = createInterface({ input: proc.stdout });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("start.sh did not print 2 lines")), 30000);
    proc.on("exit", (code) => reject(new Error(`start.sh exited early (${code})`)));
    rl.on("line", (line) => {
      lines.push(line);
      if (lines.length === 2) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  const m = /^cosmos:\/\/127\.0\.0\.1:(\d+)\/emutest$/.exec(lines[0]);
  assert.ok(m, `line 1 is the store URL: ${lines[0]}`);
  assert.equal(lines[1], KEY);
  port = Number(m[1]);
  base = `http://127.0.0.1:${port}`;
});

after(async () => {
  if (!proc || proc.exitCode !== null) return;
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
  proc.kill("SIGTERM");
  const { code } = await exited;
  assert.equal(code, 0, "SIGTERM ends the server cleanly");
});

// A bogus signature: the emulator accepts any Authorization header.
const AUTH = "type%3Dmaster%26ver%3D1.0%26sig%3Dbm90LWEtcmVhbC1zaWduYXR1cmU%3D";

async function call(method, path, { body, headers = {}, pk, signal } = {}) {
  const h = {
    authorization: AUTH,
    "x-ms-date": new Date().toUTCString(),
    "x-ms-version": "2020-07-15",
    ...headers,
  };
  if (pk !== undefined) h["x-ms-documentdb-partitionkey"] = JSON.stringify([pk]);
  if (body !== undefined) h["content-type"] ??= "application/json";
  const res = await fetch(base + path, {
    method,
    headers: h,
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    signal,
  });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = text;
  }
  return { status: res.status, headers: res.headers, body: json };
}

let collSeq = 0;
async function newCollection(props = {}) {
  collSeq += 1;
  const id = `c${collSeq}`;
  const r = await call("POST", `/dbs/${DB}/colls`, {
    body: { id, partitionKey: { paths: ["/pk"], kind: "Hash", version: 2 }, ...props },
  });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return { id, path: `/dbs/${DB}/colls/${id}`, rid: r.body._rid };
}

const create = (c, doc) => call("POST", `${c.path}/docs`, { body: doc, pk: doc.pk });
const upsert = (c, doc, headers = {}) =>
  call("POST", `${c.path}/docs`, {
    body: doc,
    pk: doc.pk,
    headers: { "x-ms-documentdb-is-upsert": "True", ...headers },
  });
const replace = (c, doc, headers = {}) =>
  call("PUT", `${c.path}/docs/${doc.id}`, { body: doc, pk: doc.pk, headers });
const read = (c, id, pk) => call("GET", `${c.path}/docs/${id}`, { pk });
const del = (c, id, pk, headers = {}) => call("DELETE", `${c.path}/docs/${id}`, { pk, headers });
const query = (c, q, parameters = []) =>
  call("POST", `${c.path}/docs`, {
    body: { query: q, parameters },
    headers: {
      "content-type": "application/query+json",
      "x-ms-documentdb-isquery": "True",
      "x-ms-documentdb-query-enablecrosspartition": "True",
    },
  });
// What azure_data_cosmos 1.0 sends for a LatestVersion change feed page.
const changes = (c, { etag, max, pk, headers = {}, signal } = {}) =>
  call("GET", `${c.path}/docs`, {
    pk,
    signal,
    headers: {
      "a-im": "Incremental Feed",
      "x-ms-cosmos-changefeed-wire-format-version": "2021-09-15",
      "x-ms-documentdb-partitionkeyrangeid": "0",
      ...(etag !== undefined ? { "if-none-match": etag } : {}),
      ...(max !== undefined ? { "x-ms-max-item-count": String(max) } : {}),
      ...headers,
    },
  });
const ids = (r) => r.body.Documents.map((d) => d.id);

async function pollUntil(what, fn, timeoutMs = 8000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > deadline) assert.fail(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("auth signature is ignored; every answer has charge and activity id", async () => {
  const r = await call("GET", "/", { headers: { authorization: "type=master&ver=1.0&sig=garbage" } });
  assert.equal(r.status, 200);
  assert.match(r.headers.get("x-ms-activity-id"), /^[0-9a-f-]{36}$/);
  assert.equal(r.headers.get("x-ms-request-charge"), "1");
});

test("1. pkranges: id is the string \"0\"; incremental re-read is 304", async () => {
  const c = await newCollection();
  for (const path of [c.path, `/dbs/${DB}/colls/${c.rid}`]) {
    const r = await call("GET", `${path}/pkranges`, { headers: { "a-im": "Incremental Feed" } });
    assert.equal(r.status, 200);
    assert.equal(r.body.PartitionKeyRanges.length, 1);
    const [range] = r.body.PartitionKeyRanges;
    assert.equal(range.id, "0");
    assert.equal(typeof range.id, "string");
    assert.equal(range.minInclusive, "");
    assert.equal(range.maxExclusive, "FF");
    const etag = r.headers.get("etag");
    assert.ok(etag);
    const again = await call("GET", `${path}/pkranges`, {
      headers: { "a-im": "Incremental Feed", "if-none-match": etag },
    });
    assert.equal(again.status, 304);
  }
});

test("2. account advertises plain http endpoints when served over http", async () => {
  const r = await call("GET", "/");
  assert.equal(r.status, 200);
  const want = `http://127.0.0.1:${port}/`;
  assert.deepEqual(
    r.body.writableLocations.map((l) => l.databaseAccountEndpoint),
    [want]
  );
  assert.deepEqual(
    r.body.readableLocations.map((l) => l.databaseAccountEndpoint),
    [want]
  );
  assert.ok(r.headers.get("content-location").startsWith("http://"));
});

test("3. incremental change feed: beginning, paging, 304, now, updates, no deletes", async () => {
  const c = await newCollection();
  const empty = await changes(c);
  assert.equal(empty.status, 304);
  assert.equal(empty.headers.get("etag"), '"0"');

  for (const id of ["a", "b", "c"]) assert.equal((await create(c, { id, pk: "p1", n: 1 })).status, 201);

  // from the beginning, 2 per page
  const p1 = await changes(c, { max: 2 });
  assert.equal(p1.status, 200);
  assert.deepEqual(ids(p1), ["a", "b"]);
  assert.equal(p1.headers.get("x-ms-item-count"), "2");
  assert.equal(p1.headers.get("x-ms-request-charge"), "2.2");
  const e1 = p1.headers.get("etag");
  assert.equal(e1, `"${p1.body.Documents[1]._lsn}"`);
  const p2 = await changes(c, { etag: e1, max: 2 });
  assert.equal(p2.status, 200);
  assert.deepEqual(ids(p2), ["c"]);
  const e2 = p2.headers.get("etag");
  const none = await changes(c, { etag: e2 });
  assert.equal(none.status, 304);
  assert.equal(none.headers.get("etag"), e2, "304 keeps the etag");
  assert.equal(none.headers.get("x-ms-request-charge"), "1");

  // "Now" sees only later writes
  const now = await changes(c, { etag: "*" });
  assert.equal(now.status, 304);
  assert.equal(now.headers.get("etag"), e2);

  // updates come back as latest version, in modification order; deletes are not reported
  const a = (await read(c, "a", "p1")).body;
  assert.equal((await replace(c, { ...a, n: 2 })).status, 200);
  assert.equal((await upsert(c, { id: "d", pk: "p2", n: 1 })).status, 201);
  assert.equal((await upsert(c, { id: "a", pk: "p1", n: 3 })).status, 200);
  assert.equal((await del(c, "b", "p1")).status, 204);
  const p3 = await changes(c, { etag: e2 });
  assert.equal(p3.status, 200);
  assert.deepEqual(ids(p3), ["d", "a"]);
  assert.equal(p3.body.Documents[1].n, 3);
  const lsns = p3.body.Documents.map((d) => d._lsn);
  assert.ok(lsns[0] < lsns[1]);
  const fromNow = await changes(c, { etag: now.headers.get("etag") });
  assert.deepEqual(ids(fromNow), ["d", "a"]);

  // the whole feed from the beginning: each live doc once, latest version
  const all = await changes(c);
  assert.deepEqual(ids(all), ["c", "d", "a"]);

  // continuation token (etag) round-trips unquoted too; garbage is a 400
  const unquoted = await changes(c, { etag: e2.replaceAll('"', "") });
  assert.deepEqual(ids(unquoted), ["d", "a"]);
  assert.equal((await changes(c, { etag: "not-an-lsn" })).status, 400);

  // partition-key scoped feed
  const scoped = await changes(c, { pk: "p2" });
  assert.deepEqual(ids(scoped), ["d"]);

  // POST with A-IM is a change feed read too
  const posted = await call("POST", `${c.path}/docs`, {
    headers: { "a-im": "Incremental Feed", "if-none-match": e2 },
  });
  assert.deepEqual(ids(posted), ["d", "a"]);
});

test("4. TTL: item ttl and container defaultTtl are enforced", async () => {
  const on = await newCollection({ defaultTtl: -1 });
  assert.equal((await create(on, { id: "short", pk: "p", ttl: 1 })).status, 201);
  assert.equal((await create(on, { id: "forever", pk: "p" })).status, 201);
  assert.equal((await create(on, { id: "never", pk: "p", ttl: -1 })).status, 201);
  assert.equal((await read(on, "short", "p")).status, 200);

  const def = await newCollection({ defaultTtl: 1 });
  assert.equal((await create(def, { id: "dflt", pk: "p" })).status, 201);
  assert.equal((await create(def, { id: "keep", pk: "p", ttl: -1 })).status, 201);

  const off = await newCollection();
  assert.equal((await create(off, { id: "ignored", pk: "p", ttl: 1 })).status, 201);

  await pollUntil("short-ttl doc expires", async () => (await read(on, "short", "p")).status === 404);
  await pollUntil("default-ttl doc expires", async () => (await read(def, "dflt", "p")).status === 404);

  assert.equal((await read(on, "forever", "p")).status, 200);
  assert.equal((await read(on, "never", "p")).status, 200);
  assert.equal((await read(def, "keep", "p")).status, 200);
  assert.equal((await read(off, "ignored", "p")).status, 200, "TTL is off without defaultTtl");

  const q = await query(on, "SELECT * FROM c");
  assert.deepEqual(q.body.Documents.map((d) => d.id).sort(), ["forever", "never"]);
  assert.deepEqual(ids(await changes(on)), ["forever", "never"]);
  assert.deepEqual(ids(await changes(def)), ["keep"]);
  // an expired id can be created again
  assert.equal((await create(on, { id: "short", pk: "p" })).status, 201);
});

test("5. missing things answer 404", async () => {
  const c = await newCollection();
  assert.equal((await read(c, "nope", "p")).status, 404);
  const rep = await replace(c, { id: "nope", pk: "p" });
  assert.equal(rep.status, 404);
  assert.equal(rep.body.code, "NotFound");
  assert.equal((await del(c, "nope", "p")).status, 404);
  const missingColl = { path: `/dbs/${DB}/colls/nocoll` };
  assert.equal((await read(missingColl, "x", "p")).status, 404);
  assert.equal((await create(missingColl, { id: "x", pk: "p" })).status, 404);
  assert.equal((await upsert(missingColl, { id: "x", pk: "p" })).status, 404);
  assert.equal((await call("GET", `/dbs/${DB}/colls/nocoll`)).status, 404);
  assert.equal((await call("GET", "/dbs/nodb")).status, 404);
  assert.equal((await read({ path: "/dbs/nodb/colls/nocoll" }, "x", "p")).status, 404);
  assert.equal((await changes(missingColl)).status, 404);
});

test("preconditions, conflicts and etags", async () => {
  const c = await newCollection();
  const created = await create(c, { id: "x", pk: "p", v: 1 });
  assert.equal(created.status, 201);
  const etag1 = created.body._etag;
  assert.equal(created.headers.get("etag"), etag1);
  assert.equal((await create(c, { id: "x", pk: "p" })).status, 409);

  const r1 = await replace(c, { id: "x", pk: "p", v: 2 }, { "if-match": etag1 });
  assert.equal(r1.status, 200);
  assert.notEqual(r1.body._etag, etag1, "replace changes _etag");
  const stale = await replace(c, { id: "x", pk: "p", v: 3 }, { "if-match": etag1 });
  assert.equal(stale.status, 412);
  assert.equal(stale.body.code, "PreconditionFailed");

  const u = await upsert(c, { id: "x", pk: "p", v: 4 }, { "if-match": r1.body._etag });
  assert.equal(u.status, 200);
  assert.notEqual(u.body._etag, r1.body._etag, "upsert changes _etag");
  assert.equal((await upsert(c, { id: "x", pk: "p", v: 5 }, { "if-match": etag1 })).status, 412);

  assert.equal((await del(c, "x", "p", { "if-match": etag1 })).status, 412);
  assert.equal((await read(c, "x", "p")).body.v, 4);
  assert.equal((await del(c, "x", "p", { "if-match": u.body._etag })).status, 204);
  assert.equal((await read(c, "x", "p")).status, 404);
});

test("binary-encoded bodies are refused with a 400 that says why", async () => {
  const c = await newCollection();
  const res = await fetch(`${base}${c.path}/docs`, {
    method: "POST",
    headers: { authorization: AUTH, "x-ms-documentdb-partitionkey": '["p"]' },
    body: Buffer.from([0x80, 0x01, 0x02]),
  });
  assert.equal(res.status, 400);
  assert.match((await res.json()).message, /binary encoding/);
});

// Tests 6 and 7 share global fault/stat state: keep them in one sequence.
test("6. fault injection", async (t) => {
  const c = await newCollection();
  await create(c, { id: "x", pk: "p" });
  t.after(() =>
    call("POST", "/_emulator/faults", { body: { throttle_share: 0, unavailable: false, stall: false, kinds: null } })
  );

  const set = await call("POST", "/_emulator/faults", {
    body: { throttle_share: 1, retry_after_ms: 50, unavailable: false },
  });
  assert.equal(set.status, 200);
  const got = await call("GET", "/_emulator/faults");
  assert.equal(got.status, 200, "control paths are never throttled");
  assert.equal(got.body.throttle_share, 1);
  assert.equal(got.body.retry_after_ms, 50);
  assert.equal(got.body.unavailable, false);

  const t1 = await read(c, "x", "p");
  assert.equal(t1.status, 429);
  assert.equal(t1.headers.get("x-ms-retry-after-ms"), "50");
  assert.equal(t1.headers.get("x-ms-substatus"), "3200");
  assert.ok(t1.headers.get("x-ms-activity-id"));
  assert.equal(t1.body.code, "TooManyRequests");
  assert.match(t1.body.message, /Request rate is large/);

  // a share of 0.3 throttles roughly 30 %
  await call("POST", "/_emulator/faults", { body: { throttle_share: 0.3 } });
  let throttled = 0;
  const N = 400;
  for (let i = 0; i < N; i += 1) if ((await read(c, "x", "p")).status === 429) throttled += 1;
  assert.ok(throttled > N * 0.18 && throttled < N * 0.42, `throttled ${throttled}/${N}`);

  // kinds limits faults to some operation kinds
  await call("POST", "/_emulator/faults", { body: { throttle_share: 1, kinds: ["create"] } });
  assert.equal((await read(c, "x", "p")).status, 200);
  assert.equal((await create(c, { id: "y", pk: "p" })).status, 429);
  await call("POST", "/_emulator/faults", { body: { throttle_share: 0, kinds: null } });

  await call("POST", "/_emulator/faults", { body: { unavailable: true } });
  for (const r of [await read(c, "x", "p"), await call("GET", "/"), await changes(c)]) {
    assert.equal(r.status, 503);
    assert.equal(r.body.code, "ServiceUnavailable");
  }
  assert.equal((await call("GET", "/_emulator/faults")).body.unavailable, true);
  await call("POST", "/_emulator/faults", { body: { unavailable: false } });
  assert.equal((await read(c, "x", "p")).status, 200);

  // stall: held, never answered (the client's bound ends the call), even
  // after the fault ends; other kinds answer
  await call("POST", "/_emulator/faults", { body: { stall: true, kinds: ["changefeed"] } });
  const before = (await call("GET", "/_emulator/stats")).body.stalled;
  const held = changes(c, { signal: AbortSignal.timeout(2000) });
  const until = Date.now() + 1500;
  while ((await call("GET", "/_emulator/stats")).body.stalled === before) {
    assert.ok(Date.now() < until, "the read reached the emulator");
    await new Promise((r) => setTimeout(r, 10));
  }
  await call("POST", "/_emulator/faults", { body: { stall: false, kinds: null } });
  await assert.rejects(held, { name: "TimeoutError" }, "a stalled read is never answered");
  assert.equal((await read(c, "x", "p")).status, 200);
  assert.equal((await changes(c)).status, 200, "a read after the stall answers");

  const bad = await call("POST", "/_emulator/faults", { body: { throttle_share: 2 } });
  assert.equal(bad.status, 400);
  assert.equal((await call("POST", "/_emulator/faults", { body: { stall: 1 } })).status, 400);
});

test("7. request charges and stats", async () => {
  const c = await newCollection();
  const reset = await call("POST", "/_emulator/stats/reset");
  assert.equal(reset.status, 200);
  assert.equal(reset.body.total.count, 0);

  const charge = (r) => Number(r.headers.get("x-ms-request-charge"));
  assert.equal(charge(await create(c, { id: "a", pk: "p" })), 5.71);
  assert.equal(charge(await create(c, { id: "b", pk: "p" })), 5.71);
  assert.equal(charge(await upsert(c, { id: "b", pk: "p", v: 1 })), 5.71);
  assert.equal(charge(await replace(c, { id: "a", pk: "p", v: 1 })), 5.71);
  assert.equal(charge(await read(c, "a", "p")), 1);
  const big = await create(c, { id: "big", pk: "p", blob: "x".repeat(5000) });
  assert.ok(charge(big) > 10, `big doc costs more: ${charge(big)}`);
  assert.equal(charge(await query(c, "SELECT * FROM c WHERE c.pk = 'p'")), 2.8);
  assert.equal(charge(await changes(c)), 2.3);
  const cf = await changes(c);
  assert.equal(charge(await changes(c, { etag: cf.headers.get("etag") })), 1);
  assert.equal(charge(await del(c, "big", "p")), 5.71);
  await call("GET", `${c.path}/pkranges`);
  await call("GET", "/");
  await call("GET", `/dbs/${DB}`);

  const s = (await call("GET", "/_emulator/stats")).body;
  const k = s.kinds;
  assert.deepEqual(k.create, { count: 3, charge: Math.round((11.42 + charge(big)) * 100) / 100 });
  assert.deepEqual(k.upsert, { count: 1, charge: 5.71 });
  assert.deepEqual(k.replace, { count: 1, charge: 5.71 });
  assert.deepEqual(k.read, { count: 1, charge: 1 });
  assert.deepEqual(k.delete, { count: 1, charge: 5.71 });
  assert.deepEqual(k.query, { count: 1, charge: 2.8 });
  assert.deepEqual(k.changefeed, { count: 3, charge: 5.6 });
  assert.deepEqual(k.pkranges, { count: 1, charge: 1 });
  assert.deepEqual(k.account, { count: 1, charge: 1 });
  assert.deepEqual(k.other, { count: 1, charge: 1 });
  assert.equal(s.total.count, 14);

  // throttled requests count with charge 0
  await call("POST", "/_emulator/faults", { body: { throttle_share: 1 } });
  await read(c, "a", "p");
  await call("POST", "/_emulator/faults", { body: { throttle_share: 0 } });
  const s2 = (await call("GET", "/_emulator/stats")).body;
  assert.equal(s2.throttled, 1);
  assert.deepEqual(s2.kinds.read, { count: 2, charge: 1 });

  const z = (await call("POST", "/_emulator/stats/reset")).body;
  assert.equal(z.kinds.create.count, 0);
  assert.equal(z.total.charge, 0);
});

test("an HTTP/2 prior-knowledge preface does not take the server down", async () => {
  const reply = await new Promise((resolve, reject) => {
    const sock = net.connect(port, "127.0.0.1", () => sock.write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    let data = "";
    sock.on("data", (d) => (data += d));
    sock.on("end", () => resolve(data));
    sock.on("close", () => resolve(data));
    sock.on("error", reject);
    sock.setTimeout(3000, () => {
      sock.destroy();
      resolve(data);
    });
  });
  assert.match(reply, /^HTTP\/1\.1 4\d\d/, "an HTTP/1.1 error, which the SDK treats as HTTP/2-incompatible");
  assert.equal((await call("GET", "/")).status, 200);
});
