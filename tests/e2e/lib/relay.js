// REST helpers for the relay tests: what a server lists (relays, streams) and polling.
'use strict';

const assert = require('node:assert/strict');

/** The array a find_all answers, [] on 404 (WCS's "none"); fails on anything else. */
async function listOf(server, method) {
    const r = await server.rest(method);
    if (r.status === 404) return [];
    assert.equal(r.status, 200, `${server.name} ${method}: ${JSON.stringify(r)}`);
    assert.ok(Array.isArray(r.body), `${server.name} ${method} answered ${JSON.stringify(r.body)}`);
    return r.body;
}

/** `/rest-api/pull/find_all` of a server. */
const relaysOf = (server) => listOf(server, '/pull/find_all');

/** `/rest-api/stream/find_all` of a server. */
const streamsOf = (server) => listOf(server, '/stream/find_all');

/**
 * Polls `probe()` every 100 ms until it returns a truthy value (resolved) or `timeoutMs`
 * passes (resolves null).
 */
async function eventually(probe, timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const value = await probe();
        if (value) return value;
        if (Date.now() > deadline) return null;
        await new Promise((r) => setTimeout(r, 100));
    }
}

/**
 * Waits until `server` has no live relay of `localStreamName` (none listed, or none in
 * PUBLISHING/PLAYING/PENDING/NEW) and no stream of that name; resolves what it last saw
 * as `{ended, relays, streams}`.
 */
async function relayEnded(server, localStreamName, timeoutMs = 5000) {
    let last = null;
    const ended = await eventually(async () => {
        const relays = (await relaysOf(server)).filter((r) => r.localStreamName === localStreamName);
        const streams = (await streamsOf(server)).filter((s) => s.name === localStreamName);
        last = { relays, streams };
        const live = relays.filter((r) => ['NEW', 'PENDING', 'PUBLISHING', 'PLAYING'].includes(r.status));
        return live.length === 0 && streams.length === 0;
    }, timeoutMs);
    return { ended: Boolean(ended), ...last };
}

module.exports = { listOf, relaysOf, streamsOf, eventually, relayEnded };
