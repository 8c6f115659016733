// Smoke tests of the web apps in jsdom against a fake WCS server (see README.md).
const H = require('./harness');
const assert = require('assert');
(async () => {
  const dom = await H.open('relay.html');
  const w = dom.window, d = w.document, $ = id => d.getElementById(id);
  await H.until(() => d.querySelectorAll('#relayRows tr').length === 1, 'relay row');
  const tr = d.querySelector('#relayRows tr');
  assert.strictEqual(tr.dataset.localMediaSessionId, 'L1');
  assert.strictEqual(tr.querySelector('.lastError').textContent, '<b>x</b>');
  assert.strictEqual(tr.querySelector('.attempts').textContent, '1');
  assert.ok($('relayEmpty').hidden);
  assert.ok(!$('streamEmpty').hidden, 'streams 404 -> empty');
  assert.strictEqual($('streamError').textContent, '');
  // push -> 409 error shown
  $('pushUri').value = 'ws://b:8080'; $('pushLocalName').value = 'a';
  $('pushBtn').click();
  await H.until(() => $('restError').textContent, 'rest error');
  console.log('restError:', $('restError').textContent);
  const push = H.log.filter(e => e[2] === '/rest-api/pull/push').pop();
  assert.deepStrictEqual(JSON.parse(push[3]), {uri: 'ws://b:8080', localStreamName: 'a'});
  // terminate
  tr.querySelector('.terminateBtn').click();
  await H.until(() => $('restResult').textContent, 'terminate result');
  const term = H.log.filter(e => e[2] === '/rest-api/pull/terminate').pop();
  assert.deepStrictEqual(JSON.parse(term[3]), {localMediaSessionId: 'L1'});
  await H.until(() => d.querySelectorAll('#relayRows tr').length === 0 && !$('relayEmpty').hidden, 'relays empty after 404');
  assert.strictEqual($('relayError').textContent, '');
  console.log('relay: all passed');

  const idx = await H.open('?sdk=flashphoner.js');
  const i$ = id => idx.window.document.getElementById(id);
  await H.until(() => i$('peers').textContent === '3', 'index info');
  console.log(['version','wsPort','restPort','mediaPorts','cores','streams','sessions','peers','wsUrl'].map(k => k + '=' + i$(k).textContent).join(' '));
  console.log('link:', i$('twoWayLink').getAttribute('href'));
  process.exit(0);
})().catch(e => { console.error('FAIL', e); process.exit(1); });
