// Helpers for driving the server's own web apps (two-way.html, player.html, relay.html)
// like a user: open a page on a server's REST port, wait for status labels, check videos.
'use strict';

const assert = require('node:assert/strict');
const { newPage, routeOfficialSdk } = require('./browser');

const STATUS_TIMEOUT = 15000;

/** Waits until element `selector`'s text is `text`; fails with what it says instead. */
async function expectText(page, selector, text, timeout = STATUS_TIMEOUT) {
    try {
        await page.waitForFunction(([s, t]) => {
            const el = document.querySelector(s);
            return el && el.textContent.trim() === t;
        }, [selector, text], { timeout });
    } catch (e) {
        const actual = await page.$eval(selector, (el) => el.textContent.trim()).catch(() => '?');
        throw new Error(`${selector} is "${actual}", expected "${text}"`);
    }
}

/** The text of `selector` (e.g. a status label's info beside it), '?' when absent. */
function info(page, selector) {
    return page.$eval(selector, (el) => el.textContent.trim()).catch(() => '?');
}

/**
 * Asserts the <video> inside `container` shows a picture and its time advances; resolves
 * `{width, height, pictureAt}` (Date.now() when the first picture was seen).
 */
async function expectVideoPlaying(page, container) {
    const selector = `${container} video`;
    await page.waitForFunction((s) => {
        const v = document.querySelector(s);
        return v && v.videoWidth > 0 && v.currentTime > 0;
    }, selector, { timeout: 10000 }).catch(async () => {
        const state = await page.$eval(selector, (v) => ({
            w: v.videoWidth, t: v.currentTime, paused: v.paused, ready: v.readyState,
        })).catch(() => 'no video element');
        throw new Error(`${selector} shows no picture: ${JSON.stringify(state)}`);
    });
    const pictureAt = Date.now();
    const t0 = await page.$eval(selector, (v) => v.currentTime);
    await page.waitForTimeout(1000);
    const t1 = await page.$eval(selector, (v) => v.currentTime);
    assert.ok(t1 > t0 + 0.5, `${selector} currentTime did not advance: ${t0} -> ${t1}`);
    const size = await page.$eval(selector, (v) => ({ width: v.videoWidth, height: v.videoHeight }));
    return { ...size, pictureAt };
}

/**
 * Opens one of `server`'s streaming pages (`file` with `query`) on `sdk` (null: the bundled
 * relaycast.js; 'flashphoner.js': the official bundle, injected with page.route) and waits
 * until the SDK is loaded and the signalling URL field holds the server's ws URL.
 */
async function openAppPage(browser, server, label, file, query, sdk) {
    const page = await newPage(browser, label);
    if (sdk === 'flashphoner.js') await routeOfficialSdk(page);
    const params = new URLSearchParams(query);
    if (sdk) params.set('sdk', sdk);
    await page.goto(`${server.restUrl}/${file}?${params}`);
    await page.waitForFunction((s) => document.documentElement.getAttribute('data-sdk') === s,
        sdk || 'relaycast.js', { timeout: 10000 });
    // The signalling URL is filled from /rest-api/server/info: wait for it.
    await page.waitForFunction((url) => document.getElementById('url').value === url,
        `${server.wsUrl}/`, { timeout: 10000 });
    assert.equal(await page.$('#banner:not([hidden])'), null, 'the page shows an error banner');
    return page;
}

module.exports = { STATUS_TIMEOUT, expectText, info, expectVideoPlaying, openAppPage };
