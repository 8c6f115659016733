// Chrome as the player of a stream whose frames arrive at once, as Chrome's own encoder and
// the load generator send them: the server pads a frame's packets to one size so that they
// leave as one UDP GSO message (RTP padding, RFC 3550 5.1). Chrome must take every padded
// packet as it takes any other: none lost.
//
// The publisher is relaycast-loadgen (a browser publisher's low-bitrate frames are paced a
// packet at a time and rarely padded). Its VP8 payloads are well-formed packets of an
// undecodable picture, so this checks delivery (packets, loss), not decoding.
'use strict';

const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { startServer, ARTIFACTS, E2E_DIR } = require('./lib/server');
const { launchBrowser, startFixtureServer, openSdkPage, dumpPage } = require('./lib/browser');
const { streamsOf, eventually } = require('./lib/relay');

const LOADGEN = process.env.RELAYCAST_LOADGEN
    || (process.env.RELAYCAST_BIN
        ? path.join(path.dirname(process.env.RELAYCAST_BIN), 'relaycast-loadgen')
        : path.resolve(E2E_DIR, '../../target/debug/relaycast-loadgen'));

let server;
let fixture;
let browser;
let publisher;

before(async () => {
    server = await startServer('padding', { cores: 1 });
    fixture = await startFixtureServer();
    browser = await launchBrowser();
});

after(async () => {
    if (publisher && publisher.exitCode === null) publisher.kill('SIGKILL');
    if (browser) await browser.close();
    if (fixture) await fixture.close();
    if (server) await server.stop();
});

/** One counter of the server's /metrics, summed over its labels. */
async function counter(name) {
    const text = await (await fetch(`${server.restUrl}/metrics`)).text();
    let sum = 0;
    for (const line of text.split('\n')) {
        if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) {
            sum += Number(line.slice(line.lastIndexOf(' ') + 1));
        }
    }
    return sum;
}

test('Chrome receives every packet of frames the server padded for GSO', { timeout: 90000 }, async (t) => {
    assert.ok(fs.existsSync(LOADGEN),
        `relaycast-loadgen not found at ${LOADGEN} (cargo build, or set RELAYCAST_LOADGEN)`);
    const log = fs.createWriteStream(path.join(ARTIFACTS, 'padding-loadgen.log'));
    publisher = spawn(LOADGEN, [
        'publish', '--server', `${server.wsUrl}/`, '--stream', 'padded',
        '--bitrate', '1500k', '--codec', 'vp8', '--duration', '60s',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    publisher.stdout.pipe(log);
    publisher.stderr.pipe(log);
    const listed = await eventually(
        async () => (await streamsOf(server)).some((s) => s.name === 'padded'), 15000);
    assert.ok(listed, `the loadgen's stream was never listed; see ${log.path}`);

    const play = await openSdkPage(browser, fixture, 'play');
    try {
        await play.evaluate((url) => h.connect(url), server.wsUrl);
        const played = await play.evaluate(() => h.play('play', 'padded'));
        assert.equal(played.status, 'PLAYING', `play: ${JSON.stringify(played)}`);
        // Past the first packets (and any keyframe the player asks for at its start).
        await new Promise((r) => setTimeout(r, 2000));

        // The same window on both ends: the server's counters just before the player's
        // stats, then again after 5 s. Chrome is the server's only player.
        const snapshot = async () => {
            const forwarded = await counter('relaycast_core_forwarded_packets_total');
            const padded = await counter('relaycast_core_padded_packets_total');
            const rtp = await play.evaluate(() => h.rtp('play', 'inbound'));
            return { forwarded, padded, rtp };
        };
        const first = await snapshot();
        await new Promise((r) => setTimeout(r, 5000));
        const second = await snapshot();
        assert.ok(second.rtp.video && second.rtp.audio, `inbound reports: ${JSON.stringify(second.rtp)}`);

        const forwarded = second.forwarded - first.forwarded;
        const padded = second.padded - first.padded;
        const video = second.rtp.video.packets - first.rtp.video.packets;
        const audio = second.rtp.audio.packets - first.rtp.audio.packets;
        const lost = second.rtp.video.packetsLost - first.rtp.video.packetsLost;
        t.diagnostic(`server: ${forwarded} packets forwarded to Chrome, ${padded} of them padded; ` +
            `Chrome: ${video} video + ${audio} audio packets received, ${lost} video lost`);
        t.diagnostic(`Chrome's video report: ${JSON.stringify(second.rtp.video)}`);
        // About a third of a 1.5 Mbps stream's video packets are padded (a frame's packets
        // differ by a byte); fewer than 100 in 5 s would mean the padding path was not taken.
        assert.ok(padded >= 100, `the server padded only ${padded} packets in 5 s`);
        // Every packet reached Chrome. A padded packet it could not parse still counts as
        // received but shows in packetsLost: with the padding's count byte written as 0 the
        // server padded 446 packets in the window and Chrome lost 446.
        assert.ok(video + audio >= 0.97 * forwarded,
            `Chrome counted ${video + audio} packets of the ${forwarded} the server forwarded`);
        assert.ok(lost <= 0.01 * video, `Chrome lost ${lost} of ${video} video packets`);
    } catch (e) {
        e.message += `\n  page dump: ${await dumpPage(play, 'padding-play')}\n  server log: ${server.logFile}`;
        throw e;
    } finally {
        await play.context().close();
        publisher.kill('SIGINT');
    }
});
