// The official Flashphoner WebSDK through a server-to-server relay, as in WCS's test guide:
// a browser publishes to server A, A pushes the stream to server B (or B pulls it from A),
// another browser tab plays it on B. Statuses, getStats() on both ends, the codec forced
// either way, the publisher's stream events, the relay's end, a player that comes too early,
// a publisher that vanishes.
'use strict';

const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const { startServer } = require('./lib/server');
const { launchBrowser, startFixtureServer, openSdkPage, dumpPage } = require('./lib/browser');
const { relaysOf, streamsOf, eventually, relayEnded } = require('./lib/relay');

const STOP_WITHIN_MS = 5000;

let a;
let b;
let fixture;
let browser;
const firstFrames = [];

before(async () => {
    [a, b] = await Promise.all([startServer('relay-a'), startServer('relay-b')]);
    fixture = await startFixtureServer();
    browser = await launchBrowser();
});

after(async () => {
    if (browser) await browser.close();
    if (fixture) await fixture.close();
    await Promise.all([a && a.stop(), b && b.stop()]);
});

/**
 * Runs `body(pages)` with fresh official-SDK pages, `labels` mapping a page label to the
 * server it connects to (the session is ESTABLISHED before `body` runs); on failure dumps
 * the pages, both relay lists and the server logs' paths into the error.
 */
async function withPages(name, labels, body) {
    const pages = {};
    try {
        for (const [label, server] of Object.entries(labels)) {
            pages[label] = await openSdkPage(browser, fixture, label);
            const session = await pages[label].evaluate((url) => h.connect(url), `${server.wsUrl}/`);
            assert.equal(session, 'ESTABLISHED', `${label} session on ${server.name}`);
        }
        await body(pages);
    } catch (e) {
        for (const label of Object.keys(pages)) {
            const file = await dumpPage(pages[label], `relay-${name}-${label}`);
            e.message += `\n  ${label} page dump: ${file}`;
        }
        for (const server of [a, b]) {
            const relays = await server.rest('/pull/find_all').catch((err) => String(err));
            const streams = await server.rest('/stream/find_all').catch((err) => String(err));
            e.message += `\n  ${server.name}: relays ${JSON.stringify(relays)} streams ${JSON.stringify(streams)}` +
                `\n  ${server.name} log: ${server.logFile}`;
        }
        throw e;
    } finally {
        for (const page of Object.values(pages)) await page.context().close().catch(() => {});
    }
}

/** POST A /pull/push of `name` to B (same name there); resolves the REST answer. */
function push(name) {
    return a.rest('/pull/push', { uri: `${b.wsUrl}/`, localStreamName: name, remoteStreamName: name });
}

/** POST B /pull/pull of A's `name` (same name on B); resolves the REST answer. */
function pull(name) {
    return b.rest('/pull/pull', { uri: `${a.wsUrl}/`, remoteStreamName: name, localStreamName: name });
}

/**
 * Creates the relay of `name` from A to B by `mode` ('push' on A or 'pull' on B) and checks
 * its answer; resolves the relay object.
 */
async function createRelay(mode, name) {
    const r = mode === 'push' ? await push(name) : await pull(name);
    const expected = mode === 'push' ? 'PUBLISHING' : 'PLAYING';
    assert.equal(r.status, 200, `${mode}: ${JSON.stringify(r)}`);
    const relay = r.body;
    assert.equal(relay.status, expected, `${mode}: ${JSON.stringify(relay)}`);
    assert.equal(relay.localStreamName, name);
    assert.equal(relay.remoteStreamName, name);
    assert.equal(relay.uri, mode === 'push' ? `${b.wsUrl}/` : `${a.wsUrl}/`);
    assert.ok(relay.localMediaSessionId, `no localMediaSessionId: ${JSON.stringify(relay)}`);
    assert.ok(relay.remoteMediaSessionId, `no remoteMediaSessionId: ${JSON.stringify(relay)}`);
    const listed = (await relaysOf(mode === 'push' ? a : b)).find((x) => x.localMediaSessionId === relay.localMediaSessionId);
    assert.ok(listed, `${mode} relay not in find_all`);
    assert.equal(listed.status, expected);
    // B lists the relayed stream as a published stream, whichever side made the relay.
    const onB = (await streamsOf(b)).find((s) => s.name === name && s.published);
    assert.ok(onB, `B does not list ${name} as published`);
    return relay;
}

const VARIANTS = [
    { title: 'default codecs', stripCodecs: undefined, video: null },
    { title: 'H264 forced', stripCodecs: 'VP8,VP9,AV1', video: 'video/H264' },
    { title: 'VP8 forced', stripCodecs: 'H264,VP9,AV1', video: 'video/VP8' },
];

for (const mode of ['push', 'pull']) {
    for (const variant of VARIANTS) {
        // WCS's guide names the stream `test`; the other cases use their own names so a
        // leftover of one case can never satisfy another.
        const name = mode === 'push' && !variant.video
            ? 'test'
            : `${mode}-${variant.video ? variant.video.slice(6).toLowerCase() : 'default'}`;
        test(`official SDK through a ${mode} relay A -> B (${variant.title})`, { timeout: 60000 }, async (t) => {
            await withPages(`${mode}-${name}`, { pub: a, play: b }, async ({ pub, play }) => {
                const published = await pub.evaluate(([n, strip]) => h.publish('pub', n, strip ? { stripCodecs: strip } : {}),
                    [name, variant.stripCodecs]);
                assert.equal(published.status, 'PUBLISHING', `publish on A: ${JSON.stringify(published)}`);

                const relay = await createRelay(mode, name);
                t.diagnostic(`${mode} relay: ${JSON.stringify(relay)}`);
                // Join a running relayed stream, as viewers do: the first frame needs a
                // keyframe request that crosses the hop back to the publisher.
                await new Promise((r) => setTimeout(r, 1000));

                const played = await play.evaluate((n) => h.play('play', n), name);
                assert.equal(played.status, 'PLAYING', `play on B: ${JSON.stringify(played)}`);
                const firstFrameMs = await play.evaluate(() => h.firstFrame('play', 10000));
                assert.ok(firstFrameMs !== null, 'no video frame decoded on B within 10 s of play()');
                firstFrames.push({ what: `${mode} ${variant.title}`, playing: played.ms, frame: firstFrameMs });
                t.diagnostic(`through one ${mode} hop: play() -> PLAYING ${played.ms.toFixed(0)} ms, ` +
                    `-> first decoded frame ${firstFrameMs.toFixed(0)} ms`);

                const sent = await pub.evaluate(() => h.rtp('pub', 'outbound'));
                const first = await play.evaluate(() => h.rtp('play', 'inbound'));
                await new Promise((r) => setTimeout(r, 1500));
                const second = await play.evaluate(() => h.rtp('play', 'inbound'));
                t.diagnostic(`published on A ${JSON.stringify(sent)}`);
                t.diagnostic(`received on B ${JSON.stringify(second)}`);
                assert.ok(second.video, 'no inbound video report on B');
                assert.ok(second.video.framesDecoded > first.video.framesDecoded,
                    `framesDecoded did not grow: ${first.video.framesDecoded} -> ${second.video.framesDecoded}`);
                assert.ok(second.audio && second.audio.packets > 0, `no audio packets on B: ${JSON.stringify(second.audio)}`);
                assert.equal(second.audio.codec, 'audio/opus');
                if (variant.video) {
                    assert.equal(sent.video.codec, variant.video, 'publisher video codec (A)');
                    assert.equal(second.video.codec, variant.video, 'player video codec (B)');
                } else {
                    assert.equal(second.video.codec, sent.video.codec, 'player codec on B = publisher codec on A');
                }
                const video = await play.evaluate(() => h.video('play'));
                assert.ok(video && video.videoWidth > 0, `B's <video> has no picture: ${JSON.stringify(video)}`);
                assert.deepEqual(video.tracks, ['audio', 'video'], 'B\'s <video> plays audio and video');

                if (!variant.video) {
                    // The publisher's mute and sendData on A reach the player on B.
                    await pub.evaluate(() => h.streams.pub.stream.muteVideo());
                    assert.ok(await play.evaluate(() => h.waitStreamEvent('play', 'videoMuted')),
                        `B's player got no videoMuted through the ${mode} relay`);
                    await pub.evaluate(() => h.streams.pub.stream.sendData({ hop: 'A->B' }));
                    const data = await play.evaluate(() => h.waitStreamEvent('play', 'data'));
                    assert.deepEqual(data && data.payload, { hop: 'A->B' },
                        `B's player got no data event through the ${mode} relay`);
                }

                const stopped = await play.evaluate(() => h.stop('play'));
                assert.equal(stopped.status, 'STOPPED', `player stop on B: ${JSON.stringify(stopped)}`);
                const unpublished = await pub.evaluate(() => h.stop('pub'));
                assert.equal(unpublished.status, 'UNPUBLISHED', `unpublish on A: ${JSON.stringify(unpublished)}`);

                // The relay ends with its source: nothing live left on either side.
                const relaySide = mode === 'push' ? a : b;
                const ended = await relayEnded(relaySide, name);
                assert.ok(ended.ended, `${relaySide.name} still has the ${mode} relay: ${JSON.stringify(ended)}`);
                const other = mode === 'push' ? b : a;
                const gone = await eventually(async () =>
                    !(await streamsOf(other)).some((s) => s.name === name), 5000);
                assert.ok(gone, `${other.name} still lists ${name}: ${JSON.stringify(await streamsOf(other))}`);
                t.diagnostic(`after unpublish ${relaySide.name} lists relays ${JSON.stringify(ended.relays)}`);
            });
        });
    }
}

for (const mode of ['push', 'pull']) {
    test(`a player on B before the ${mode} relay exists gets "Stream not found", then plays on retry`,
        { timeout: 60000 }, async (t) => {
            const name = `early-${mode}`;
            await withPages(`early-${mode}`, { pub: a, play: b }, async ({ pub, play }) => {
                const published = await pub.evaluate((n) => h.publish('pub', n), name);
                assert.equal(published.status, 'PUBLISHING', JSON.stringify(published));

                const early = await play.evaluate((n) => h.play('early', n), name);
                assert.equal(early.status, 'FAILED', `play before the relay: ${JSON.stringify(early)}`);
                assert.equal(early.info, 'Stream not found');

                await createRelay(mode, name);
                const retried = await play.evaluate((n) => h.play('retry', n), name);
                assert.equal(retried.status, 'PLAYING', `play after the relay: ${JSON.stringify(retried)}`);
                const frameMs = await play.evaluate(() => h.firstFrame('retry', 10000));
                assert.ok(frameMs !== null, 'the retried player decoded no frame');
                const rtp = await play.evaluate(() => h.rtp('retry', 'inbound'));
                assert.ok(rtp.audio && rtp.audio.packets > 0, `no audio on the retried player: ${JSON.stringify(rtp)}`);
                t.diagnostic(`retry: play() -> first decoded frame ${frameMs.toFixed(0)} ms`);

                assert.equal((await pub.evaluate(() => h.stop('pub'))).status, 'UNPUBLISHED');
                // The relay's end reaches the player on B.
                const ended = await play.evaluate(() => h.waitStatus('retry', ['STOPPED', 'FAILED'], 5000));
                assert.equal(ended.status, 'STOPPED', `player on B after unpublish on A: ${JSON.stringify(ended)}`);
                const side = mode === 'push' ? a : b;
                const gone = await relayEnded(side, name);
                assert.ok(gone.ended, `${side.name} still has the relay: ${JSON.stringify(gone)}`);
            });
        });
}

test('publisher tab on A closed during a push relay: player on B STOPPED, A unlists the stream',
    { timeout: 60000 }, async (t) => {
        const name = 'gone-relay';
        await withPages('gone', { pub: a, play: b }, async ({ pub, play }) => {
            const published = await pub.evaluate((n) => h.publish('pub', n), name);
            assert.equal(published.status, 'PUBLISHING', JSON.stringify(published));
            await createRelay('push', name);
            const played = await play.evaluate((n) => h.play('play', n), name);
            assert.equal(played.status, 'PLAYING', JSON.stringify(played));
            assert.ok(await play.evaluate(() => h.firstFrame('play', 10000)) !== null, 'no frame before the close');
            assert.ok((await streamsOf(a)).some((s) => s.name === name), 'A lists the stream while published');

            const gone = await play.evaluate(() => performance.now());
            // No unpublish, no WebSocket close handshake from the page: the tab just goes.
            await pub.close({ runBeforeUnload: false });
            const ended = await play.evaluate((ms) => h.waitStatus('play', ['STOPPED', 'FAILED', 'UNPUBLISHED'], ms),
                STOP_WITHIN_MS + 5000);
            const afterMs = ended.at - gone;
            t.diagnostic(`player on B saw ${ended.status} (${ended.info}) ${afterMs.toFixed(0)} ms after the tab on A closed`);
            assert.equal(ended.status, 'STOPPED', JSON.stringify(ended));
            assert.ok(afterMs < STOP_WITHIN_MS, `STOPPED came after ${afterMs.toFixed(0)} ms`);

            const unlisted = await eventually(async () => !(await streamsOf(a)).some((s) => s.name === name), 3000);
            assert.ok(unlisted, `A's /stream/find_all still lists ${name}: ${JSON.stringify(await streamsOf(a))}`);
            const relay = await relayEnded(a, name);
            assert.ok(relay.ended, `A still has the push relay: ${JSON.stringify(relay)}`);
            assert.ok(!(await streamsOf(b)).some((s) => s.name === name), 'B still lists the stream');
        });
    });

test('first-frame times through one relay hop (summary)', (t) => {
    for (const f of firstFrames) {
        t.diagnostic(`${f.what}: play() -> PLAYING ${f.playing.toFixed(0)} ms, ` +
            `-> first decoded frame ${f.frame.toFixed(0)} ms`);
    }
});
