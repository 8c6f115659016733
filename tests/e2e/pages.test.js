// The project's own web apps, served by the server's REST port, clicked through like a
// user would: Two Way Streaming publishes (and plays back), the Player plays. Each runs on
// the bundled relaycast.js and on the official WebSDK (`?sdk=flashphoner.js`, the bundle
// injected with page.route since the server does not ship it). Screenshots go to artifacts/.
'use strict';

const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const { startServer } = require('./lib/server');
const { launchBrowser, newPage, dumpPage, screenshot } = require('./lib/browser');
const { expectText, info, expectVideoPlaying, openAppPage: openPage } = require('./lib/pages');

let server;
let browser;

before(async () => {
    server = await startServer('pages');
    browser = await launchBrowser();
});

after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop();
});

/** Opens one of the server's pages and waits until its SDK is loaded and the URL known. */
const openAppPage = (label, file, query, sdk) => openPage(browser, server, label, file, query, sdk);

for (const sdk of [null, 'flashphoner.js']) {
    const sdkName = sdk || 'relaycast.js';
    const shot = sdk ? 'official-sdk' : 'relaycast-sdk';
    test(`two-way and player pages stream (${sdkName})`, { timeout: 90000 }, async (t) => {
        const name = `web-${shot}`;
        const twoWay = await openAppPage('two-way', 'two-way.html', {}, sdk);
        let player = null;
        try {
            await twoWay.click('#connectBtn');
            await expectText(twoWay, '#sessionStatus', 'ESTABLISHED');

            await twoWay.fill('#publishName', name);
            assert.equal(await twoWay.inputValue('#playName'), name, 'play name follows publish name');
            await twoWay.click('#publishBtn');
            await expectText(twoWay, '#publishStatus', 'PUBLISHING');
            assert.equal(await twoWay.textContent('#publishBtn'), 'Stop');
            await expectVideoPlaying(twoWay, '#localVideo');

            await twoWay.click('#playBtn');
            await expectText(twoWay, '#playStatus', 'PLAYING');
            const looped = await expectVideoPlaying(twoWay, '#remoteVideo');
            t.diagnostic(`two-way remote video ${looped.width}x${looped.height}`);
            await expectText(twoWay, '#playResolution', `${looped.width}x${looped.height}`, 5000);

            // Stream events and availability, as in WCS's Two Way Streaming demo.
            await expectText(twoWay, '#playMuted', 'audio on, video on');
            await twoWay.check('#muteAudio');
            await expectText(twoWay, '#playMuted', 'audio muted, video on', 5000);
            await twoWay.fill('#sendData', '{"n": 1, "s": "hi"}');
            await twoWay.click('#sendDataBtn');
            await expectText(twoWay, '#receivedData', '{"n":1,"s":"hi"}', 5000);
            await twoWay.uncheck('#muteAudio');
            await expectText(twoWay, '#playMuted', 'audio on, video on', 5000);
            await twoWay.click('#availableBtn');
            await expectText(twoWay, '#availableStatus', 'AVAILABLE', 5000);

            player = await openAppPage('player', 'player.html', { streamName: name }, sdk);
            assert.equal(await player.inputValue('#streamName'), name);
            const clicked = Date.now();
            await player.click('#playBtn');
            await expectText(player, '#status', 'PLAYING');
            await expectText(player, '#sessionStatus', 'ESTABLISHED');
            const played = await expectVideoPlaying(player, '#display');
            t.diagnostic(`player: Start click -> picture ${played.pictureAt - clicked} ms, ` +
                `${played.width}x${played.height}`);
            await expectText(player, '#resolution', `${played.width}x${played.height}`, 5000);
            // The player follows the publisher's mute state too.
            await expectText(player, '#publisherState', 'audio on, video on');
            await twoWay.check('#muteVideo');
            await expectText(player, '#publisherState', 'audio on, video muted', 5000);
            await expectText(twoWay, '#playMuted', 'audio on, video muted', 5000);
            await twoWay.uncheck('#muteVideo');
            await expectText(player, '#publisherState', 'audio on, video on', 5000);
            assert.equal(await player.textContent('#playBtn'), 'Stop');

            await screenshot(twoWay, `two-way-${shot}`);
            await screenshot(player, `player-${shot}`);

            await player.click('#playBtn');
            await expectText(player, '#status', 'STOPPED');
            assert.equal(await player.textContent('#playBtn'), 'Start');

            await twoWay.click('#playBtn');
            await expectText(twoWay, '#playStatus', 'STOPPED');
            await twoWay.click('#publishBtn');
            await expectText(twoWay, '#publishStatus', 'UNPUBLISHED');
            assert.equal(await twoWay.textContent('#publishBtn'), 'Publish');

            await twoWay.click('#connectBtn');
            await expectText(twoWay, '#sessionStatus', 'DISCONNECTED');
        } catch (e) {
            e.message += `\n  two-way info: session "${await info(twoWay, '#sessionInfo')}", ` +
                `publish "${await info(twoWay, '#publishInfo')}", play "${await info(twoWay, '#playInfo')}"`;
            await screenshot(twoWay, `failed-two-way-${shot}`).catch(() => {});
            e.message += `\n  dump: ${await dumpPage(twoWay, `failed-two-way-${shot}`)}`;
            if (player) {
                e.message += `\n  player info: "${await info(player, '#info')}"`;
                await screenshot(player, `failed-player-${shot}`).catch(() => {});
                e.message += `\n  dump: ${await dumpPage(player, `failed-player-${shot}`)}`;
            }
            e.message += `\n  server log: ${server.logFile}`;
            throw e;
        } finally {
            await twoWay.context().close();
            if (player) await player.context().close();
        }
    });
}

test('player page with autoplay shows "Stream not found" for an unknown stream', { timeout: 30000 },
    async () => {
        const page = await newPage(browser, 'player');
        try {
            await page.goto(`${server.restUrl}/player.html?streamName=nothing-here&autoplay=true`);
            await expectText(page, '#status', 'FAILED');
            assert.equal(await info(page, '#info'), 'Stream not found');
            assert.equal(await page.textContent('#playBtn'), 'Start');
        } finally {
            await page.context().close();
        }
    });

test('landing page shows the server facts', { timeout: 30000 }, async () => {
    const page = await newPage(browser, 'index');
    try {
        await page.goto(`${server.restUrl}/`);
        const [wsPort, restPort] = [server.wsAddr, server.restAddr].map((a) => a.split(':').pop());
        await expectText(page, '#wsPort', wsPort, 5000);
        await expectText(page, '#restPort', restPort);
        await expectText(page, '#cores', '2');
        await expectText(page, '#wsUrl', `${server.wsUrl}/`);
        await expectText(page, '#mediaPorts',
            server.mediaAddrs.map((a) => a.split(':').pop()).join(', '));
        for (const id of ['version', 'streams', 'sessions', 'peers']) {
            const text = await page.textContent(`#${id}`);
            assert.ok(text && text !== '—' && text !== '…', `#${id} shows "${text}"`);
        }
        assert.equal(await page.textContent('#infoError'), '');
    } finally {
        await page.context().close();
    }
});
