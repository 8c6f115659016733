// Smoke tests of the web apps in jsdom against a fake WCS server (see README.md).
const H = require('./harness');
const assert = require('assert');
(async () => {
  // a publisher first, on a two-way page
  const pubDom = await H.open('two-way.html');
  const pw = pubDom.window, pd = pw.document;
  await H.until(() => !pd.getElementById('connectBtn').disabled && pd.getElementById('url').value.includes(':' + H.wsPort), 'pub sdk');
  pd.getElementById('connectBtn').click();
  await H.until(() => pd.getElementById('sessionStatus').textContent === 'ESTABLISHED', 'pub est');
  pd.getElementById('publishName').value = 'live';
  pd.getElementById('publishBtn').click();
  await H.until(() => pd.getElementById('publishStatus').textContent === 'PUBLISHING', 'pub');

  const dom = await H.open('player.html?streamName=live&autoplay=true&sdk=relaycast.js');
  const w = dom.window, d = w.document, $ = id => d.getElementById(id);
  await H.until(() => $('status').textContent === 'PLAYING', 'autoplay PLAYING (' + $('status').textContent + ')');
  assert.strictEqual($('sessionStatus').textContent, 'ESTABLISHED');
  assert.strictEqual($('playBtn').textContent, 'Stop');
  assert.strictEqual(d.documentElement.getAttribute('data-sdk'), 'relaycast.js');
  const v = $('display').querySelector('video');
  $('volume').value = '30'; $('volume').dispatchEvent(new w.Event('input'));
  assert.strictEqual(v.volume, 0.3);
  $('muteBtn').click(); assert.ok(v.muted); assert.strictEqual($('muteBtn').textContent, 'Unmute');
  $('muteBtn').click(); assert.ok(!v.muted);
  $('fullScreenBtn').click();
  $('playBtn').click();
  await H.until(() => $('status').textContent === 'STOPPED', 'stopped');
  assert.strictEqual($('info').textContent, 'Stopped by user');
  assert.strictEqual($('playBtn').textContent, 'Start');
  // restart reuses session
  const nConn = H.log.filter(e => e[1] === 'connection').length;
  $('playBtn').click();
  await H.until(() => $('status').textContent === 'PLAYING', 'PLAYING again');
  assert.strictEqual(H.log.filter(e => e[1] === 'connection').length, nConn, 'session reused');
  // publisher stops -> player STOPPED
  pd.getElementById('publishBtn').click();
  await H.until(() => $('status').textContent === 'STOPPED' && $('info').textContent === 'Stopped by publisher stop', 'publisher stop');
  // bad sdk param refused
  const dom2 = await H.open('player.html?sdk=https://evil.example/x.js');
  await H.until(() => dom2.window.document.getElementById('banner') && !dom2.window.document.getElementById('playBtn').disabled, 'banner');
  console.log('banner:', dom2.window.document.getElementById('banner').textContent, '| sdk:', dom2.window.document.getElementById('sdkScript').getAttribute('src'));
  // sdk missing file -> banner
  const dom3 = await H.open('player.html?sdk=flashphoner.js');
  await H.until(() => dom3.window.document.getElementById('banner'), 'banner missing sdk');
  console.log('banner3:', dom3.window.document.getElementById('banner').textContent);
  console.log('player: all passed'); process.exit(0);
})().catch(e => { console.error('FAIL', e); process.exit(1); });
