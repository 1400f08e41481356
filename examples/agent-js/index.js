#!/usr/bin/env node
// A Conclave agent in JavaScript, on Node.js's standard library only (no dependencies).
//
// It speaks the agent contract (docs/agent-contract.openapi.json): GET /health,
// /health/live, /health/ready and /info, POST /run with the data inline, used as of
// `asOf`; bad input is a 4xx JSON error naming the field; calls are verified when
// CONCLAVE_AGENTS__SECRET is set. `conclave agents check URL` checks all of it.
//
// What it measures: Wilder's RSI(14) on the closes of the run's timeframe, as a momentum
// score in [-1, 1] ((RSI - 50) / 50) with a confidence from how far RSI is from 50. It can
// stand in for the Python momentum agent (the default name), registered with
//   CONCLAVE_AGENTS__URLS='{"momentum": "http://127.0.0.1:5103"}' CONCLAVE_AGENTS__HTTP='{"momentum": true}'
//
// Run: node examples/agent-js [--port 5103] [--host 127.0.0.1] [--name momentum]
// (or PORT, HOST, AGENT_NAME). Beyond loopback it refuses to start without a secret.
"use strict";

const http = require("node:http");
const crypto = require("node:crypto");

const VERSION = "1.0.0";
const PERIOD = 14;
const MAX_BODY_BYTES = 1024 * 1024;
const SIGNATURE_MAX_AGE_MS = 5000;
const SYMBOL = /^[A-Z0-9]{2,20}$/;
const UNIT_MS = { m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 };
const INTERVALS = ["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h",
  "1d", "3d", "1w", "1M"];
const COLUMNS = ["openTime", "open", "high", "low", "close", "volume"];
const OPTIONAL = ["takerBuyVolume", "trades"];

function option(name, env, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i > 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  return process.env[env] || fallback;
}

const NAME = option("name", "AGENT_NAME", "momentum");
const HOST = option("host", "HOST", "127.0.0.1");
const PORT = Number(option("port", "PORT", "5103"));
const SECRET = process.env.CONCLAVE_AGENTS__SECRET || "";
const LOOPBACK = ["127.0.0.1", "::1", "localhost"].includes(HOST);
const stats = { served: 0, ok: 0, rejected: 0 };

class RequestError extends Error {
  constructor(status, code, message, field = null) {
    super(message);
    Object.assign(this, { status, code, field });
  }
}
const invalid = (field, message) => new RequestError(422, "invalid_request", message, field);

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json",
    "Content-Length": Buffer.byteLength(text), ...headers });
  res.end(text);
}

function sendError(res, err) {
  send(res, err.status, { error: { code: err.code, message: err.message, field: err.field } });
}

// -- time ----------------------------------------------------------------------------------
function closeOf(openMs, timeframe) {
  if (timeframe === "1M") { // calendar months: the first instant of the next month
    const d = new Date(openMs);
    return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
  }
  return openMs + Number(timeframe.slice(0, -1)) * UNIT_MS[timeframe.slice(-1)];
}

function instant(value) {
  if (typeof value === "number" && Number.isInteger(value)) return value;
  if (typeof value === "string" && !Number.isNaN(Date.parse(value))) return Date.parse(value);
  throw invalid("asOf", "expected epoch milliseconds or an ISO 8601 time");
}

// -- the context ---------------------------------------------------------------------------
function columns(candles, timeframe) {
  const field = `candles.${timeframe}`;
  const cols = candles[timeframe];
  if (cols === null || typeof cols !== "object" || Array.isArray(cols)) {
    throw invalid(field, `expected the ${timeframe} bars as an object of columns`);
  }
  for (const key of Object.keys(cols)) {
    if (!COLUMNS.includes(key) && !OPTIONAL.includes(key)) throw invalid(`${field}.${key}`, "unknown column");
  }
  const n = Array.isArray(cols.openTime) ? cols.openTime.length : -1;
  for (const key of COLUMNS) {
    const col = cols[key];
    if (!Array.isArray(col) || col.length !== n) throw invalid(`${field}.${key}`, `expected an array of ${n} numbers`);
    const bad = col.findIndex((v) => typeof v !== "number" || !Number.isFinite(v));
    if (bad >= 0) throw invalid(`${field}.${key}[${bad}]`, `expected a number, got ${JSON.stringify(col[bad])}`);
  }
  for (let i = 0; i < n; i++) {
    const [o, h, l, c] = [cols.open[i], cols.high[i], cols.low[i], cols.close[i]];
    if (h < l) throw invalid(`${field}.high[${i}]`, "high below low");
    if (h < Math.max(o, c)) throw invalid(`${field}.high[${i}]`, "high below open or close");
    if (l > Math.min(o, c)) throw invalid(`${field}.low[${i}]`, "low above open or close");
    if (cols.volume[i] < 0) throw invalid(`${field}.volume[${i}]`, "negative volume");
    if (i > 0 && cols.openTime[i] <= cols.openTime[i - 1]) throw invalid(`${field}.openTime[${i}]`, "not increasing");
  }
  return cols;
}

function decode(body) {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new RequestError(422, "invalid_request", "expected a JSON object", "body");
  }
  if (typeof body.symbol !== "string" || !SYMBOL.test(body.symbol)) {
    throw invalid("symbol", `expected upper-case letters and digits (BTCUSDT), got ${JSON.stringify(body.symbol)}`);
  }
  if (!INTERVALS.includes(body.timeframe)) {
    throw invalid("timeframe", `expected one of ${INTERVALS.join(", ")}, got ${JSON.stringify(body.timeframe)}`);
  }
  const asOf = body.asOf === undefined || body.asOf === null ? Date.now() : instant(body.asOf);
  if (body.candles === undefined || body.candles === null) {
    throw invalid("candles", "this agent has no data layer of its own: send the bars inline");
  }
  if (typeof body.candles !== "object" || Array.isArray(body.candles)) throw invalid("candles", "expected an object");
  for (const tf of Object.keys(body.candles)) {
    if (!INTERVALS.includes(tf)) throw invalid(`candles.${tf}`, "unknown timeframe");
    columns(body.candles, tf);
  }
  if (!(body.timeframe in body.candles)) throw invalid(`candles.${body.timeframe}`, "the run's timeframe is missing");
  return { symbol: body.symbol, timeframe: body.timeframe, asOf, cols: body.candles[body.timeframe] };
}

// -- the agent: pure, deterministic, as of asOf --------------------------------------------
function rsi(closes) {
  let gain = 0;
  let loss = 0;
  for (let i = 1; i <= PERIOD; i++) {
    const d = closes[i] - closes[i - 1];
    gain += Math.max(d, 0);
    loss += Math.max(-d, 0);
  }
  gain /= PERIOD;
  loss /= PERIOD;
  for (let i = PERIOD + 1; i < closes.length; i++) { // Wilder's smoothing
    const d = closes[i] - closes[i - 1];
    gain = (gain * (PERIOD - 1) + Math.max(d, 0)) / PERIOD;
    loss = (loss * (PERIOD - 1) + Math.max(-d, 0)) / PERIOD;
  }
  if (loss === 0) return gain === 0 ? 50 : 100;
  return 100 - 100 / (1 + gain / loss);
}

function compute(ctx, started) {
  const { cols, timeframe, asOf } = ctx;
  let kept = 0; // bars closed by asOf: never a bar that was still open then
  while (kept < cols.openTime.length && closeOf(cols.openTime[kept], timeframe) <= asOf) kept++;
  const meta = (status, reason, asOfIso) => ({ agent: NAME, version: VERSION,
    duration_ms: Number(process.hrtime.bigint() - started) / 1e6, timestamp: new Date().toISOString(),
    as_of: asOfIso, status, reason });
  const lastClose = kept ? new Date(closeOf(cols.openTime[kept - 1], timeframe)).toISOString() : null;
  if (kept < PERIOD + 1) {
    const reason = `needs ${PERIOD + 1} closed bars of ${timeframe}, got ${kept}`;
    return { score: null, confidence: null, payload: {}, meta: meta("insufficient_data", reason, lastClose) };
  }
  const value = rsi(cols.close.slice(0, kept));
  const score = Math.max(-1, Math.min(1, (value - 50) / 50));
  const confidence = Math.min(100, Math.abs(value - 50) * 2);
  const zone = value >= 70 ? "overbought" : value <= 30 ? "oversold" : "neutral";
  const payload = { rsi: value, period: PERIOD, zone, bars: kept, implementation: "javascript" };
  return { score, confidence, payload, meta: meta("ok", "", lastClose) };
}

// -- signed calls (the same scheme as conclave.security.signing) ---------------------------
const seen = new Map();

function verify(req, body) {
  const ts = req.headers["x-conclave-timestamp"];
  const nonce = req.headers["x-conclave-nonce"];
  const signature = req.headers["x-conclave-signature"];
  if (!ts || !nonce || !signature) return "unsigned";
  if (!/^\d{1,16}$/.test(ts) || nonce.length > 64 || !signature.startsWith("v1=")) return "malformed";
  const age = Date.now() - Number(ts);
  if (age > SIGNATURE_MAX_AGE_MS) return "expired";
  if (age < -SIGNATURE_MAX_AGE_MS) return "future";
  const digest = crypto.createHash("sha256").update(body).digest("hex");
  const path = req.url.split("?")[0];
  const expected = "v1=" + crypto.createHmac("sha256", SECRET)
    .update(`${req.method}\n${path}\n${ts}\n${nonce}\n${digest}`).digest("hex");
  const a = Buffer.from(expected);
  const b = Buffer.from(signature);
  if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) return "bad_signature";
  for (const [key, until] of seen) if (until < Date.now()) seen.delete(key);
  if (seen.has(signature)) return "replayed";
  seen.set(signature, Date.now() + 2 * SIGNATURE_MAX_AGE_MS);
  return "";
}

// -- HTTP ------------------------------------------------------------------------------------
function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new RequestError(413, "payload_too_large", `body over ${MAX_BODY_BYTES} bytes`));
        req.destroy();
      } else chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

async function run(req, res) {
  const started = process.hrtime.bigint();
  const type = (req.headers["content-type"] || "").split(";")[0].trim().toLowerCase();
  const body = await readBody(req);
  if (SECRET) {
    const refused = verify(req, body);
    if (refused) throw new RequestError(401, "unauthorized", `call not accepted: ${refused}`);
  }
  if (type !== "application/json") {
    throw new RequestError(415, "unsupported_media_type", "expected Content-Type: application/json", "Content-Type");
  }
  let parsed;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch (err) {
    throw new RequestError(400, "invalid_json", `malformed JSON: ${err.message}`, "body");
  }
  const answer = compute(decode(parsed), started);
  stats.served++;
  if (answer.meta.status === "ok") stats.ok++;
  send(res, 200, answer);
}

const ROUTES = {
  "GET /health": (req, res) => send(res, 200, { status: "ok", agent: NAME, version: VERSION,
    timestamp: new Date().toISOString(), runs: stats }),
  "GET /health/live": (req, res) => send(res, 200, { status: "ok", agent: NAME }),
  "GET /health/ready": (req, res) => send(res, 200, { status: "ready", agent: NAME, reasons: [] }),
  "GET /info": (req, res) => send(res, 200, { name: NAME, version: VERSION,
    description: "RSI momentum in JavaScript (Node.js standard library only)",
    endpoints: { health: "GET /health", info: "GET /info", run: "POST /run" },
    timeframes: INTERVALS, lookback: PERIOD + 1, dataLayer: false,
    parameters: { period: PERIOD },
    parametersSchema: { type: "object", properties: { period: { type: "integer", minimum: 2 } } } }),
  "POST /run": run,
};

const server = http.createServer(async (req, res) => {
  const path = req.url.split("?")[0];
  const route = ROUTES[`${req.method} ${path}`];
  try {
    if (route) return await route(req, res);
    const known = Object.keys(ROUTES).some((k) => k.endsWith(` ${path}`));
    if (known) throw new RequestError(405, "method_not_allowed", `${req.method} is not allowed on ${path}`);
    throw new RequestError(404, "not_found", `no route ${path}`);
  } catch (err) {
    if (err instanceof RequestError) {
      if (err.status < 500 && path === "/run") stats.rejected++;
      return sendError(res, err);
    }
    console.error(err);
    return sendError(res, new RequestError(500, "internal", "internal error"));
  }
});

if (!LOOPBACK && !SECRET) {
  console.error(`refusing to start: bound to ${HOST} (beyond loopback) and CONCLAVE_AGENTS__SECRET is not set`);
  process.exit(2);
}
if (SECRET && SECRET.length < 32) {
  console.error("refusing to start: CONCLAVE_AGENTS__SECRET is too short (at least 32 characters)");
  process.exit(2);
}
server.listen(PORT, HOST, () => {
  console.log(JSON.stringify({ event: "agent_listening", agent: NAME, url: `http://${HOST}:${server.address().port}`,
    signed: Boolean(SECRET), implementation: "javascript" }));
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => { // drain in-flight calls, drop idle keep-alive connections
    server.close(() => process.exit(0));
    server.closeIdleConnections();
  });
}
