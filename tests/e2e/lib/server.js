// Starts a real relaycast server on loopback with ephemeral ports and stops it.
//
// The binary is $RELAYCAST_BIN, or ../../target/debug/relaycast relative to tests/e2e.
// Its stderr (the log, at $RELAYCAST_LOG_LEVEL, default debug) goes to
// artifacts/<name>.log so a failing test leaves the server's side of the story behind.
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');

const E2E_DIR = path.resolve(__dirname, '..');
const ARTIFACTS = path.join(E2E_DIR, 'artifacts');
const DEFAULT_BIN = path.resolve(E2E_DIR, '../../target/debug/relaycast');
const READY = /^relaycast ready ws=(\S+) rest=(\S+) media=(\S+)/;

// Servers still running when the test process exits (a crash, a cancelled run) die with it.
const running = new Set();
process.on('exit', () => {
    for (const child of running) child.kill('SIGKILL');
});

/**
 * Spawns relaycast and resolves once it printed its ready line: `{wsAddr, restAddr,
 * mediaAddrs, wsUrl, restUrl, logFile, process, rest(method, body), stop()}` (addresses as
 * "IP:PORT" strings, the URLs without a trailing slash).
 */
async function startServer(name, { cores = 2, extraArgs = [], readyTimeoutMs = 30000 } = {}) {
    const bin = process.env.RELAYCAST_BIN || DEFAULT_BIN;
    if (!fs.existsSync(bin)) {
        throw new Error(`relaycast binary not found at ${bin} (build it, or set RELAYCAST_BIN)`);
    }
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const logFile = path.join(ARTIFACTS, `${name}.log`);
    const log = fs.createWriteStream(logFile);
    const args = [
        '--ws-port', '0', '--rest-port', '0', '--media-port-base', '0',
        '--bind', '127.0.0.1', '--cores', String(cores),
        '--log-level', process.env.RELAYCAST_LOG_LEVEL || 'debug',
        ...extraArgs,
    ];
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    child.once('exit', () => running.delete(child));
    // The server colours its log only on a terminal: on this pipe it is plain text.
    readline.createInterface({ input: child.stderr })
        .on('line', (line) => log.write(`${line}\n`));
    // 'close' comes after the exit and after stdout and stderr are drained.
    const exited = new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));

    const ready = await new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
            reject(new Error(`relaycast printed no ready line within ${readyTimeoutMs} ms; see ${logFile}`));
        }, readyTimeoutMs);
        const lines = readline.createInterface({ input: child.stdout });
        lines.on('line', (line) => {
            log.write(`[stdout] ${line}\n`);
            const m = READY.exec(line);
            if (m) {
                clearTimeout(timer);
                resolve({ wsAddr: m[1], restAddr: m[2], mediaAddrs: m[3].split(',') });
            }
        });
        child.once('error', (e) => { clearTimeout(timer); reject(e); });
        exited.then(({ code, signal }) => {
            clearTimeout(timer);
            reject(new Error(`relaycast exited (code ${code}, signal ${signal}) before it was ready; see ${logFile}`));
        });
    });

    let stopped = null;
    const server = {
        ...ready,
        name,
        logFile,
        process: child,
        wsUrl: `ws://${ready.wsAddr}`,
        restUrl: `http://${ready.restAddr}`,
        /** POSTs a REST method; resolves `{status, body}` (body parsed when JSON). */
        async rest(method, body) {
            const response = await fetch(`http://${ready.restAddr}/rest-api${method}`, {
                method: 'POST',
                headers: { 'Content-Type': 'application/json' },
                body: JSON.stringify(body || {}),
            });
            const text = await response.text();
            let parsed = text;
            try { parsed = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
            return { status: response.status, body: parsed };
        },
        /** SIGTERM, then SIGKILL if it has not exited after `graceMs`; resolves the exit. */
        stop(graceMs = 5000) {
            if (stopped) return stopped;
            stopped = (async () => {
                if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
                const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
                const result = await exited;
                clearTimeout(timer);
                await new Promise((resolve) => log.end(resolve));
                return result;
            })();
            return stopped;
        },
    };
    return server;
}

module.exports = { startServer, ARTIFACTS, E2E_DIR };
