// A publisher that disappears without unpublishing (tab closed, browser killed): its
// players must see STOPPED within a few seconds and the stream must leave the registry.
'use strict';

const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const { startServer } = require('./lib/server');
const {
    launchBrowser, launchKillableBrowser, startFixtureServer, openSdkPage, dumpPage,
} = require('./lib/browser');

const STOP_WITHIN_MS = 5000;

let server;
let fixture;
let browser;

before(async () => {
    server = await startServer('publisher-gone');
    fixture = await startFixtureServer();
    browser = await launchBrowser();
});

after(async () => {
    if (browser) await browser.close();
    if (fixture) await fixture.close();
    if (server) await server.stop();
});

/** Stream names listed by REST /stream/find_all (404 means none). */
async function listedStreams() {
    const r = await server.rest('/stream/find_all');
    if (r.status === 404) return [];
    assert.equal(r.status, 200, `find_all: ${JSON.stringify(r)}`);
    return r.body.map((s) => s.name);
}

/**
 * Publishes `name` from `pubBrowser`, plays it from the shared browser, calls `vanish` to
 * make the publisher disappear, then checks the player and the registry.
 */
async function publisherVanishes(t, name, pubBrowser, vanish) {
    const pub = await openSdkPage(pubBrowser, fixture, 'pub');
    const play = await openSdkPage(browser, fixture, 'play');
    try {
        await pub.evaluate((url) => h.connect(url), server.wsUrl);
        await play.evaluate((url) => h.connect(url), server.wsUrl);
        const published = await pub.evaluate((n) => h.publish('pub', n), name);
        assert.equal(published.status, 'PUBLISHING', JSON.stringify(published));
        const played = await play.evaluate((n) => h.play('play', n), name);
        assert.equal(played.status, 'PLAYING', JSON.stringify(played));
        assert.ok(await play.evaluate(() => h.firstFrame('play', 10000)) !== null, 'no frame before the close');
        assert.ok((await listedStreams()).includes(name), 'the stream is listed while published');

        const gone = await play.evaluate(() => performance.now());
        await vanish(pub);
        const ended = await play.evaluate((ms) => h.waitStatus('play', ['STOPPED', 'FAILED', 'UNPUBLISHED'], ms),
            STOP_WITHIN_MS + 5000);
        const afterMs = ended.at - gone;
        t.diagnostic(`player saw ${ended.status} (${ended.info}) ${afterMs.toFixed(0)} ms after the publisher vanished`);
        assert.equal(ended.status, 'STOPPED', JSON.stringify(ended));
        assert.ok(afterMs < STOP_WITHIN_MS, `STOPPED came after ${afterMs.toFixed(0)} ms`);
        assert.ok(!(await listedStreams()).includes(name), 'the stream is still listed by /stream/find_all');
    } catch (e) {
        e.message += `\n  player dump: ${await dumpPage(play, `${name}-play`)}\n  server log: ${server.logFile}`;
        throw e;
    } finally {
        await play.context().close();
        await pub.context().close().catch(() => {});
    }
}

test('publisher tab closed: player STOPPED, stream unlisted', { timeout: 60000 }, async (t) => {
    await publisherVanishes(t, 'gone-tab', browser, (pub) => pub.close({ runBeforeUnload: false }));
});

test('publisher browser killed: player STOPPED, stream unlisted', { timeout: 60000 }, async (t) => {
    const doomed = await launchKillableBrowser();
    try {
        // No WebSocket close frame, no DTLS close alert: the kernel just closes the sockets.
        await publisherVanishes(t, 'gone-browser', doomed.browser, async () => doomed.kill());
    } finally {
        await doomed.close();
    }
});
