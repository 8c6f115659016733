// The server's own pages across two servers, clicked through like an operator would:
// Two Way Streaming publishes on A, A's Relay console pushes the stream to B, B's Player
// page plays it (on relaycast.js and on the official WebSDK), then the console's Terminate
// button ends the relay and the players on B stop. Screenshots go to artifacts/.
'use strict';

const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const { startServer } = require('./lib/server');
const { launchBrowser, newPage, dumpPage, screenshot } = require('./lib/browser');
const { expectText, info, expectVideoPlaying, openAppPage } = require('./lib/pages');
const { relaysOf, streamsOf, eventually } = require('./lib/relay');

let a;
let b;
let browser;

before(async () => {
    [a, b] = await Promise.all([startServer('relay-pages-a'), startServer('relay-pages-b')]);
    browser = await launchBrowser();
});

after(async () => {
    if (browser) await browser.close();
    await Promise.all([a && a.stop(), b && b.stop()]);
});

/** The relay console's row for `localStreamName`, as the cells' texts. */
function relayRow(page, localStreamName) {
    return page.$$eval('#relayRows tr.relay-row', (rows, name) => {
        const row = rows.find((r) => r.querySelector('.localStreamName').textContent === name);
        if (!row) return null;
        const out = { localMediaSessionId: row.dataset.localMediaSessionId };
        for (const td of row.querySelectorAll('td')) out[td.className.split(' ')[0]] = td.textContent;
        return out;
    }, localStreamName);
}

/** Waits until the console shows a relay row of `name` with `status`; resolves the row. */
async function expectRelayRow(page, name, status, timeout = 10000) {
    try {
        await page.waitForFunction(([n, s]) => [...document.querySelectorAll('#relayRows tr.relay-row')]
            .some((r) => r.querySelector('.localStreamName').textContent === n &&
                r.querySelector('.status').textContent === s), [name, status], { timeout });
    } catch (e) {
        throw new Error(`relay row of ${name} is ${JSON.stringify(await relayRow(page, name))}, ` +
            `expected status ${status}; console says "${await info(page, '#restError')}" ` +
            `"${await info(page, '#restResult')}"`);
    }
    return relayRow(page, name);
}

test('two-way on A, relay console push to B, player on B; the console terminates it', { timeout: 90000 },
    async (t) => {
        const name = 'relay-web';
        const pages = {};
        try {
            // Two Way Streaming on A publishes the camera.
            pages.twoWay = await openAppPage(browser, a, 'two-way-a', 'two-way.html', {}, null);
            const { twoWay } = pages;
            await twoWay.click('#connectBtn');
            await expectText(twoWay, '#sessionStatus', 'ESTABLISHED');
            await twoWay.fill('#publishName', name);
            await twoWay.click('#publishBtn');
            await expectText(twoWay, '#publishStatus', 'PUBLISHING');
            await expectVideoPlaying(twoWay, '#localVideo');

            // A's Relay console: the stream is live; push it to B.
            pages.console = await newPage(browser, 'relay-console-a');
            const { console: relayConsole } = pages;
            await relayConsole.goto(`${a.restUrl}/relay.html`);
            await relayConsole.waitForFunction((n) => [...document.querySelectorAll('#streamRows tr.stream-row')]
                .some((r) => r.querySelector('.name').textContent === n &&
                    r.querySelector('.status').textContent === 'PUBLISHING'), name, { timeout: 5000 });
            assert.equal(await relayConsole.isVisible('#relayEmpty'), true, 'the console lists no relay yet');
            await relayConsole.fill('#pushUri', `${b.wsUrl}/`);
            await relayConsole.fill('#pushLocalName', name);
            // #pushRemoteName left empty: "same as local".
            await relayConsole.click('#pushBtn');
            await relayConsole.waitForFunction(() => /200 OK/.test(document.getElementById('restResult').textContent),
                null, { timeout: 10000 }).catch(async () => {
                throw new Error(`push result "${await info(relayConsole, '#restResult')}", ` +
                    `error "${await info(relayConsole, '#restError')}"`);
            });
            const row = await expectRelayRow(relayConsole, name, 'PUBLISHING');
            t.diagnostic(`console row: ${JSON.stringify(row)}`);
            assert.equal(row.type, 'push');
            assert.equal(row.uri, `${b.wsUrl}/`);
            assert.equal(row.remoteStreamName, name);
            assert.equal(row.attempts, '1');
            await expectText(relayConsole, '#relayCount', '(1)');

            // B's Player page plays the pushed stream, on both SDKs.
            for (const [label, sdk] of [['player-b', null], ['player-b-official', 'flashphoner.js']]) {
                pages[label] = await openAppPage(browser, b, label, 'player.html', { streamName: name }, sdk);
                const player = pages[label];
                const clicked = Date.now();
                await player.click('#playBtn');
                await expectText(player, '#sessionStatus', 'ESTABLISHED');
                await expectText(player, '#status', 'PLAYING');
                const played = await expectVideoPlaying(player, '#display');
                await expectText(player, '#resolution', `${played.width}x${played.height}`, 5000);
                t.diagnostic(`${label} (${sdk || 'relaycast.js'}): Start click -> picture through the relay ` +
                    `${played.pictureAt - clicked} ms, ${played.width}x${played.height}`);
                if (label === 'player-b') {
                    // The console shows the relay's link once media crosses it.
                    await relayConsole.waitForFunction((n) => [...document.querySelectorAll('#relayRows tr.relay-row')]
                        .some((r) => r.querySelector('.localStreamName').textContent === n
                            && /[1-9][0-9.]* (M|k)bit\/s out, rtt [0-9.]+ ms/.test(r.querySelector('.link').textContent)),
                    name, { timeout: 10000 });
                    t.diagnostic(`console link: ${(await relayRow(relayConsole, name)).link}`);
                }
            }

            // B's console lists the relayed stream as published there.
            pages.consoleB = await newPage(browser, 'relay-console-b');
            await pages.consoleB.goto(`${b.restUrl}/relay.html`);
            await pages.consoleB.waitForFunction((n) => [...document.querySelectorAll('#streamRows tr.stream-row')]
                .some((r) => r.querySelector('.name').textContent === n &&
                    r.querySelector('.role').textContent === 'publisher'), name, { timeout: 5000 });

            await relayConsole.waitForTimeout(1200);   // one refresh with the players' effect
            await screenshot(twoWay, 'relay-two-way-a');
            await screenshot(relayConsole, 'relay-console-a');
            await screenshot(pages['player-b'], 'relay-player-b');
            await screenshot(pages['player-b-official'], 'relay-player-b-official');
            await screenshot(pages.consoleB, 'relay-console-b');

            // Terminate from the console: the row goes, B's players stop, A keeps publishing.
            await relayConsole.click(`#relayRows tr.relay-row[data-local-media-session-id="${row.localMediaSessionId}"] button.terminateBtn`);
            await relayConsole.waitForFunction(() => /terminate: 200 OK/.test(document.getElementById('restResult').textContent),
                null, { timeout: 5000 }).catch(async () => {
                throw new Error(`terminate result "${await info(relayConsole, '#restResult')}", ` +
                    `error "${await info(relayConsole, '#restError')}"`);
            });
            await relayConsole.waitForSelector('#relayEmpty', { state: 'visible', timeout: 5000 });
            for (const label of ['player-b', 'player-b-official']) {
                await expectText(pages[label], '#status', 'STOPPED', 5000);
                t.diagnostic(`${label} after terminate: STOPPED "${await info(pages[label], '#info')}"`);
                assert.equal(await pages[label].textContent('#playBtn'), 'Start');
            }
            assert.deepEqual(await relaysOf(a), [], 'A still lists a relay after terminate');
            const unlisted = await eventually(async () => !(await streamsOf(b)).some((s) => s.name === name), 3000);
            assert.ok(unlisted, `B still lists ${name}: ${JSON.stringify(await streamsOf(b))}`);
            assert.equal(await info(twoWay, '#publishStatus'), 'PUBLISHING', 'the publisher on A goes on');

            await twoWay.click('#publishBtn');
            await expectText(twoWay, '#publishStatus', 'UNPUBLISHED');
        } catch (e) {
            for (const [label, page] of Object.entries(pages)) {
                await screenshot(page, `failed-relay-${label}`).catch(() => {});
                e.message += `\n  ${label} dump: ${await dumpPage(page, `failed-relay-${label}`)}`;
            }
            e.message += `\n  logs: ${a.logFile} ${b.logFile}`;
            throw e;
        } finally {
            for (const page of Object.values(pages)) await page.context().close().catch(() => {});
        }
    });
