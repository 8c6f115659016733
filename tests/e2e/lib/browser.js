// Headless Debian chromium driven by playwright-core, and a tiny fixture web server that
// serves the official Flashphoner WebSDK bundle (from node_modules) with a test page.
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { ARTIFACTS, E2E_DIR } = require('./server');

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SDK_BUNDLE = require.resolve('@flashphoner/websdk/flashphoner.js');
const FIXTURES = path.join(E2E_DIR, 'fixtures');
/** The web apps' own Flashphoner-compatible client, served in place of the official SDK. */
const BUNDLED_CLIENT = path.join(E2E_DIR, '../../web/relaycast.js');

// Fake camera (a moving test pattern) and microphone (a beep), no permission prompts,
// loopback peer connections, autoplay without a click, and the network-quiet flags.
const CHROMIUM_ARGS = [
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection',
    '--autoplay-policy=no-user-gesture-required',
    '--no-sandbox',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-quic',
];

/** Launches a headless chromium. */
function launchBrowser() {
    return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/**
 * Launches a headless chromium in its own process group and connects to it, so a test can
 * kill the whole browser abruptly: resolves `{browser, kill()}`.
 */
async function launchKillableBrowser() {
    const server = await chromium.launchServer({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
    const browser = await chromium.connect(server.wsEndpoint());
    const pid = server.process().pid;
    return {
        browser,
        /** SIGKILL to every chromium process of this browser (its process group). */
        kill() {
            try { process.kill(-pid, 'SIGKILL'); } catch (_) { server.process().kill('SIGKILL'); }
        },
        close: () => server.close().catch(() => {}),
    };
}

/**
 * A new page in its own context that records every RTCPeerConnection (window.__pcs) with
 * the SDP it was given, and copies the browser console into `consoleLines`.
 */
async function newPage(browser, label) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await context.addInitScript({ path: path.join(FIXTURES, 'record-pcs.js') });
    const page = await context.newPage();
    page.consoleLines = [];
    page.on('console', (msg) => page.consoleLines.push(`[${label}] ${msg.type()}: ${msg.text()}`));
    page.on('pageerror', (err) => page.consoleLines.push(`[${label}] pageerror: ${err.message}`));
    return page;
}

/** Serves the official WebSDK bundle to a page at `**\/flashphoner.js` of any origin. */
async function routeOfficialSdk(page) {
    const bundle = fs.readFileSync(SDK_BUNDLE);
    await page.route('**/flashphoner.js', (route) =>
        route.fulfill({ status: 200, contentType: 'text/javascript; charset=utf-8', body: bundle }));
}

/**
 * Starts the fixture server on 127.0.0.1:0: `/` is fixtures/sdk.html (loads the official
 * SDK and fixtures/harness.js, which defines `window.h`). Resolves `{url, close()}`.
 */
async function startFixtureServer(bundle = SDK_BUNDLE) {
    const files = {
        '/': ['text/html; charset=utf-8', path.join(FIXTURES, 'sdk.html')],
        '/harness.js': ['text/javascript; charset=utf-8', path.join(FIXTURES, 'harness.js')],
        '/flashphoner.js': ['text/javascript; charset=utf-8', bundle],
    };
    const server = http.createServer((req, res) => {
        const file = files[new URL(req.url, 'http://x').pathname];
        if (!file) {
            res.writeHead(404).end();
            return;
        }
        res.writeHead(200, { 'Content-Type': file[0], 'Cache-Control': 'no-store' });
        fs.createReadStream(file[1]).pipe(res);
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address();
    return {
        url: `http://127.0.0.1:${port}/`,
        close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
    };
}

/** Opens the fixture page and initializes the SDK; resolves the page. */
async function openSdkPage(browser, fixture, label) {
    const page = await newPage(browser, label);
    await page.goto(fixture.url);
    await page.evaluate(() => window.h.init());
    return page;
}

/** Writes a page's peer connections (SDP, states, stats) and console to artifacts/. */
async function dumpPage(page, name) {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    let pcs = null;
    try {
        pcs = await page.evaluate(() => window.__dumpPcs());
    } catch (e) {
        pcs = { error: String(e) };
    }
    const file = path.join(ARTIFACTS, `${name}.json`);
    fs.writeFileSync(file, JSON.stringify({ pcs, console: page.consoleLines }, null, 2));
    return file;
}

/** Saves a full-page screenshot to artifacts/<name>.png; resolves the path. */
async function screenshot(page, name) {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const file = path.join(ARTIFACTS, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    return file;
}

module.exports = {
    BUNDLED_CLIENT, CHROMIUM_ARGS, launchBrowser, launchKillableBrowser, newPage, routeOfficialSdk, startFixtureServer, openSdkPage,
    dumpPage, screenshot,
};
