#!/usr/bin/env node
// Launcher used by start.sh: serves the patched @vercel/cosmosdb-server over
// plain HTTP on 127.0.0.1, on a port chosen by the OS unless
// COSMOS_EMULATOR_PORT is set. stdout gets exactly two lines (store URL,
// account key); everything else goes to stderr.
"use strict";

const http = require("http");
const { createHttpServer } = require("@vercel/cosmosdb-server");

const KEY =
  "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";
const HOST = "127.0.0.1";
const database =
  process.argv[2] || process.env.COSMOS_EMULATOR_DATABASE || "clustermon";
const port = parseInt(process.env.COSMOS_EMULATOR_PORT || "0", 10);
const createDatabase = process.env.COSMOS_EMULATOR_CREATE_DATABASE !== "0";

// console.log is reserved for the two result lines
const log = (...args) => console.error("cosmos-emulator:", ...args);

const server = createHttpServer({ keepAlive: true });
server.keepAliveTimeout = 30000;

function precreate(actualPort) {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ id: database });
    const req = http.request(
      {
        host: HOST,
        port: actualPort,
        method: "POST",
        path: "/dbs",
        headers: {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
          authorization: "type%3Dmaster%26ver%3D1.0%26sig%3Dignored",
        },
      },
      (res) => {
        res.resume();
        res.on("end", () =>
          res.statusCode === 201 || res.statusCode === 409
            ? resolve()
            : reject(new Error(`creating database: HTTP ${res.statusCode}`))
        );
      }
    );
    req.on("error", reject);
    req.end(body);
  });
}

server.on("error", (err) => {
  log(err.message);
  process.exit(1);
});

server.listen(port, HOST, async () => {
  const actualPort = server.address().port;
  try {
    if (createDatabase) await precreate(actualPort);
  } catch (err) {
    log(err.message);
    process.exit(1);
  }
  process.stdout.write(`cosmos://${HOST}:${actualPort}/${database}\n${KEY}\n`);
  log(`listening on http://${HOST}:${actualPort}/ (database ${database})`);
});

function shutdown(signal) {
  log(`${signal}: shutting down`);
  server.close(() => process.exit(0));
  if (server.closeAllConnections) server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
