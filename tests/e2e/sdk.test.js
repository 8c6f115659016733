// The official Flashphoner WebSDK against one relaycast server: publish the fake camera
// and microphone, play it in another tab, check media really flows (getStats), stop.
'use strict';

const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const fs = require('node:fs');
const path = require('node:path');
const { startServer, ARTIFACTS } = require('./lib/server');
const {
    BUNDLED_CLIENT, launchBrowser, startFixtureServer, openSdkPage, dumpPage,
} = require('./lib/browser');

let server;
let fixture;
let bundled;
let browser;

before(async () => {
    server = await startServer('sdk');
    fixture = await startFixtureServer();
    bundled = await startFixtureServer(BUNDLED_CLIENT);
    browser = await launchBrowser();
});

after(async () => {
    if (browser) await browser.close();
    if (fixture) await fixture.close();
    if (bundled) await bundled.close();
    if (server) await server.stop();
});

/** Runs `body(pages)` with fresh SDK pages; on failure dumps them to artifacts/. */
async function withPages(name, labels, body, site = fixture) {
    const pages = {};
    for (const label of labels) pages[label] = await openSdkPage(browser, site, label);
    try {
        await body(pages);
    } catch (e) {
        for (const label of labels) {
            const file = await dumpPage(pages[label], `${name}-${label}`);
            e.message += `\n  ${label} page dump: ${file}`;
        }
        e.message += `\n  server log: ${server.logFile}`;
        throw e;
    } finally {
        for (const label of labels) await pages[label].context().close();
    }
}

const VARIANTS = [
    { title: 'default codecs', stream: 'test', stripCodecs: undefined, video: null },
    { title: 'H264 forced', stream: 'test-h264', stripCodecs: 'VP8,VP9,AV1', video: 'video/H264' },
    { title: 'VP8 forced', stream: 'test-vp8', stripCodecs: 'H264,VP9,AV1', video: 'video/VP8' },
];

for (const variant of VARIANTS) {
    test(`official SDK publishes and plays (${variant.title})`, { timeout: 90000 }, async (t) => {
        const name = variant.stream;
        await withPages(name, ['pub', 'play'], async ({ pub, play }) => {
            await pub.evaluate((url) => h.connect(url), server.wsUrl);
            await play.evaluate((url) => h.connect(url), server.wsUrl);

            const published = await pub.evaluate(
                ([n, strip]) => h.publish('pub', n, strip ? { stripCodecs: strip } : {}),
                [name, variant.stripCodecs]);
            assert.equal(published.status, 'PUBLISHING', `publish: ${JSON.stringify(published)}`);
            // Join a running stream, as viewers do: the first frame then needs a keyframe
            // request through the server rather than the publisher's opening keyframe.
            await new Promise((r) => setTimeout(r, 2000));

            const played = await play.evaluate((n) => h.play('play', n), name);
            assert.equal(played.status, 'PLAYING', `play: ${JSON.stringify(played)}`);
            const firstFrameMs = await play.evaluate(() => h.firstFrame('play', 10000));
            assert.ok(firstFrameMs !== null, 'no video frame decoded within 10 s of play()');
            t.diagnostic(`play() -> PLAYING ${played.ms.toFixed(0)} ms, -> first decoded frame ` +
                `${firstFrameMs.toFixed(0)} ms`);

            const sent = await pub.evaluate(() => h.rtp('pub', 'outbound'));
            const first = await play.evaluate(() => h.rtp('play', 'inbound'));
            await new Promise((r) => setTimeout(r, 1500));
            const second = await play.evaluate(() => h.rtp('play', 'inbound'));
            t.diagnostic(`published ${JSON.stringify(sent)}`);
            t.diagnostic(`received ${JSON.stringify(second)}`);
            assert.ok(second.video, 'no inbound video report');
            assert.ok(second.video.framesDecoded > first.video.framesDecoded,
                `framesDecoded did not grow: ${first.video.framesDecoded} -> ${second.video.framesDecoded}`);
            assert.ok(second.audio && second.audio.packets > 0, 'no audio packets received');
            if (variant.video) {
                assert.equal(sent.video.codec, variant.video, 'publisher video codec');
                assert.equal(second.video.codec, variant.video, 'player video codec');
            } else {
                assert.equal(second.video.codec, sent.video.codec, 'player codec = publisher codec');
            }
            const video = await play.evaluate(() => h.video('play'));
            assert.ok(video && video.videoWidth > 0, `remote <video> has no picture: ${JSON.stringify(video)}`);

            const stopped = await play.evaluate(() => h.stop('play'));
            assert.equal(stopped.status, 'STOPPED', `player stop: ${JSON.stringify(stopped)}`);
            const unpublished = await pub.evaluate(() => h.stop('pub'));
            assert.equal(unpublished.status, 'UNPUBLISHED', `unpublish: ${JSON.stringify(unpublished)}`);
        });
    });
}

// The official SDK shows a played stream with `video.srcObject = event.streams[0]` on every
// `track` event, so audio and video must arrive in one MediaStream (one msid stream id in
// the answer) or the last track's stream wins and the player is silent. The same stream id
// is what Chrome uses to keep audio and video in sync.
test('official SDK player gets audio and video in one MediaStream', { timeout: 60000 }, async () => {
    await withPages('one-stream', ['pub', 'play'], async ({ pub, play }) => {
        await pub.evaluate((url) => h.connect(url), server.wsUrl);
        await play.evaluate((url) => h.connect(url), server.wsUrl);
        const published = await pub.evaluate(() => h.publish('pub', 'test-av'));
        assert.equal(published.status, 'PUBLISHING', JSON.stringify(published));
        const played = await play.evaluate(() => h.play('play', 'test-av'));
        assert.equal(played.status, 'PLAYING', JSON.stringify(played));
        assert.ok(await play.evaluate(() => h.firstFrame('play', 10000)) !== null, 'no video frame');
        const video = await play.evaluate(() => h.video('play'));
        const msids = await play.evaluate(() => h.remoteMsids());
        assert.deepEqual(video.tracks, ['audio', 'video'],
            `the SDK's <video> plays tracks ${JSON.stringify(video.tracks)}; answer msids: ` +
            JSON.stringify(msids));
    });
});

// The SDK's stream.muteAudio(), muteVideo(), unmuteAudio() and sendData() send
// sendStreamEvent; WCS passes each to the stream's players as STREAM_EVENT, and a player that
// joins later reads the mute state with getAudioState() and getVideoState().
// The web apps' bundled client (web/relaycast.js) does the same.
for (const client of ['official SDK', 'bundled relaycast.js']) {
  test(`${client}: stream events reach players, and a late player sees the mute state`,
    { timeout: 60000 }, async () => {
        const official = client === 'official SDK';
        const stream = official ? 'test-events' : 'test-events-bundled';
        await withPages(official ? 'events' : 'events-bundled', ['pub', 'play', 'late'], async ({ pub, play, late }) => {
            for (const page of [pub, play, late]) await page.evaluate((url) => h.connect(url), server.wsUrl);
            const published = await pub.evaluate((n) => h.publish('pub', n), stream);
            assert.equal(published.status, 'PUBLISHING', JSON.stringify(published));
            const played = await play.evaluate((n) => h.play('play', n), stream);
            assert.equal(played.status, 'PLAYING', JSON.stringify(played));
            assert.deepEqual(await play.evaluate(() => h.trackStates('play')),
                { audio: { muted: false }, video: { muted: false } });

            await pub.evaluate(() => h.streams.pub.stream.muteAudio());
            const muted = await play.evaluate(() => h.waitStreamEvent('play', 'audioMuted'));
            assert.ok(muted, 'the player got no audioMuted event');

            const data = { number: 33, string: 'hello', boolean: true, list: [1, 'two'] };
            await pub.evaluate((d) => h.streams.pub.stream.sendData(d), data);
            const got = await play.evaluate(() => h.waitStreamEvent('play', 'data'));
            assert.ok(got, 'the player got no data event');
            assert.deepEqual(got.payload, data);

            await pub.evaluate(() => h.streams.pub.stream.muteVideo());
            assert.ok(await play.evaluate(() => h.waitStreamEvent('play', 'videoMuted')),
                'the player got no videoMuted event');
            const joined = await late.evaluate((n) => h.play('late', n), stream);
            assert.equal(joined.status, 'PLAYING', JSON.stringify(joined));
            assert.deepEqual(await late.evaluate(() => h.trackStates('late')),
                { audio: { muted: true }, video: { muted: true } });

            await pub.evaluate(() => h.streams.pub.stream.unmuteAudio());
            for (const [page, key] of [[play, 'play'], [late, 'late']]) {
                const e = await page.evaluate((k) => h.waitStreamEvent(k, 'audioUnmuted'), key);
                assert.ok(e, `${key} got no audioUnmuted event`);
            }
            // The publisher's session saw no fail frame (the SDK reports those as WARN).
            assert.deepEqual(await pub.evaluate(() => h.warnings), []);
            // Media kept flowing to the first player through it all (the harness reads the
            // official SDK's grouped native stats).
            if (official) {
                assert.ok(await play.evaluate(() => h.firstFrame('play', 10000)) !== null, 'no video frame');
            }
        }, official ? fixture : bundled);
    });
}

// stream.available() (the Two Way Streaming demo's Available button) asks the server
// whether a stream can be played.
for (const client of ['official SDK', 'bundled relaycast.js']) {
    test(`${client}: stream.available() tells a playable stream from a missing one`,
        { timeout: 30000 }, async () => {
            const official = client === 'official SDK';
            const name = official ? 'test-available' : 'test-available-bundled';
            await withPages(official ? 'available' : 'available-bundled', ['pub', 'ask'], async ({ pub, ask }) => {
                for (const page of [pub, ask]) await page.evaluate((url) => h.connect(url), server.wsUrl);
                assert.deepEqual(await ask.evaluate((n) => h.available('before', n), name),
                    { available: false, info: 'Stream not found' });
                const published = await pub.evaluate((n) => h.publish('pub', n), name);
                assert.equal(published.status, 'PUBLISHING', JSON.stringify(published));
                assert.deepEqual(await ask.evaluate((n) => h.available('after', n), name),
                    { available: true, info: null });
                assert.deepEqual(await ask.evaluate(() => h.warnings), []);
            }, official ? fixture : bundled);
        });
}

// session.sendData() sends data for the operator's backend (WCS's OnDataEvent hook) and
// /rest-api/data/send sends data to a session (the SDK's APP_DATA). This server has no
// hooks, so sendData is accepted; a server whose backend cannot be reached answers FAILED,
// and the SDK rejects the promise with the reason.
for (const client of ['official SDK', 'bundled relaycast.js']) {
    test(`${client}: session.sendData() is answered and REST data reaches APP_DATA`,
        { timeout: 30000 }, async () => {
            const official = client === 'official SDK';
            await withPages(official ? 'app-data' : 'app-data-bundled', ['app'], async ({ app }) => {
                await app.evaluate((url) => h.connect(url), server.wsUrl);
                const sent = await app.evaluate(() => h.sendData({ chat: 'hello', n: [1, 2] }));
                assert.deepEqual(sent, { settled: 'resolved', answer: { status: 'ACCEPTED' } });

                const sessionId = await app.evaluate(() => h.sessionId());
                assert.ok(sessionId, 'no sessionId in getUserData');
                const response = await fetch(`${server.restUrl}/rest-api/data/send`, {
                    method: 'POST',
                    headers: { 'content-type': 'application/json' },
                    body: JSON.stringify({ sessionId, operationId: 'from-backend', payload: { reply: 'hi' } }),
                });
                assert.equal(response.status, 200);
                const got = await app.evaluate(() => h.waitAppData('reply', 5000));
                assert.ok(got, 'APP_DATA never fired');
                assert.deepEqual(got.payload, { reply: 'hi' });
                assert.equal(got.operationId, 'from-backend');
                assert.equal(got.sessionId, sessionId);
                assert.deepEqual(await app.evaluate(() => h.warnings), []);
            }, official ? fixture : bundled);
        });
}

test('official SDK: sendData() rejects when the backend cannot be reached', { timeout: 30000 }, async () => {
    // A port nobody listens on.
    const probe = require('node:net').createServer();
    await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = probe.address().port;
    await new Promise((resolve) => probe.close(resolve));
    const config = path.join(ARTIFACTS, 'sdk-broken-hook.toml');
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    fs.writeFileSync(config, `[hooks]\nurl = "http://127.0.0.1:${port}/app"\nmethods = ["OnDataEvent"]\n`);
    const hooked = await startServer('sdk-broken-hook', { extraArgs: ['--config', config] });
    try {
        await withPages('app-data-failed', ['app'], async ({ app }) => {
            await app.evaluate((url) => h.connect(url), hooked.wsUrl);
            const sent = await app.evaluate(() => h.sendData({ chat: 'lost' }));
            assert.equal(sent.settled, 'rejected', JSON.stringify(sent));
            assert.equal(sent.answer.status, 'FAILED');
            assert.match(sent.answer.info, /^Backend unavailable: /);
        });
    } finally {
        await hooked.stop();
    }
});

// WCS's REST hooks: the backend decides who connects and what is published. A small
// backend here refuses the login "mallory" and streams named "forbidden-*".
test('official SDK: the backend\'s connect and publishStream hooks let in or refuse', { timeout: 30000 }, async () => {
    const http = require('node:http');
    const posts = [];
    const backend = http.createServer((req, res) => {
        let body = '';
        req.on('data', (chunk) => { body += chunk; });
        req.on('end', () => {
            const json = JSON.parse(body);
            posts.push({ path: req.url, body: json });
            const refused = (json.custom && json.custom.login === 'mallory')
                || String(json.name || '').startsWith('forbidden-');
            res.writeHead(refused ? 403 : 200, { 'content-type': 'application/json' });
            res.end('{}');
        });
    });
    await new Promise((resolve) => backend.listen(0, '127.0.0.1', resolve));
    const config = path.join(ARTIFACTS, 'sdk-hooks.toml');
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    fs.writeFileSync(config, `[hooks]\nurl = "http://127.0.0.1:${backend.address().port}/rest/my_api"\n`);
    const hooked = await startServer('sdk-hooks', { extraArgs: ['--config', config] });
    try {
        await withPages('hooks', ['ann', 'mallory'], async ({ ann, mallory }) => {
            await ann.evaluate((url) => h.connect(url, { login: 'ann' }), hooked.wsUrl);
            const refused = await ann.evaluate(() => h.publish('no', 'forbidden-cam'));
            assert.equal(refused.status, 'FAILED', JSON.stringify(refused));
            assert.equal(refused.info, 'Refused by the backend (403)');
            const published = await ann.evaluate(() => h.publish('yes', 'hooked-cam'));
            assert.equal(published.status, 'PUBLISHING', JSON.stringify(published));

            const connected = await mallory.evaluate((url) => h.connect(url, { login: 'mallory' })
                .then(() => 'ESTABLISHED', (e) => e.message), hooked.wsUrl);
            assert.notEqual(connected, 'ESTABLISHED');
            const warned = await mallory.evaluate(() => h.warnings.map((w) => w.info));
            assert.deepEqual(warned, ['Refused by the backend (403)']);
        });
        // The decisions, in order (the notifications, StreamStatusEvent and
        // ConnectionStatusEvent, are posted as well).
        const decisions = posts.filter((p) => /\/(connect|publishStream)$/.test(p.path));
        const what = decisions.map((p) => `${p.path} ${p.body.name || p.body.custom.login}`);
        assert.deepEqual(what, [
            '/rest/my_api/connect ann',
            '/rest/my_api/publishStream forbidden-cam',
            '/rest/my_api/publishStream hooked-cam',
            '/rest/my_api/connect mallory',
        ]);
        // The backend knows the publisher by the sessionId its connect hook was given.
        assert.equal(decisions[1].body.sessionId, decisions[0].body.sessionId);
        assert.equal(decisions[2].body.sessionId, decisions[0].body.sessionId);
        const live = posts.find((p) => p.path.endsWith('/StreamStatusEvent') && p.body.status === 'PUBLISHING');
        assert.ok(live, 'no StreamStatusEvent PUBLISHING');
        assert.equal(live.body.name, 'hooked-cam');
    } finally {
        await hooked.stop();
        backend.close();
    }
});

test('playing an unknown stream fails with "Stream not found"', { timeout: 30000 }, async () => {
    await withPages('unknown', ['play'], async ({ play }) => {
        await play.evaluate((url) => h.connect(url), server.wsUrl);
        const played = await play.evaluate(() => h.play('play', 'no-such-stream'));
        assert.equal(played.status, 'FAILED', JSON.stringify(played));
        assert.equal(played.info, 'Stream not found');
    });
});
