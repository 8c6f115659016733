// Smoke tests of the web apps in jsdom against a fake WCS server (see README.md).
const H = require('./harness');
const assert = require('assert');
(async () => {
  const dom = await H.open('two-way.html');
  const w = dom.window, d = w.document, $ = id => d.getElementById(id);
  await H.until(() => !$('connectBtn').disabled, 'sdk loaded');
  await H.until(() => $('url').value === 'ws://127.0.0.1:' + H.wsPort + '/', 'url from server info ' + $('url').value);
  $('connectBtn').click();
  await H.until(() => $('sessionStatus').textContent === 'ESTABLISHED', 'established');
  assert.strictEqual($('connectBtn').textContent, 'Disconnect');
  $('publishName').value = 'cam1'; $('publishName').dispatchEvent(new w.Event('input'));
  assert.strictEqual($('playName').value, 'cam1');
  $('publishStripCodecs').value = 'h264';
  $('publishBtn').click();
  await H.until(() => $('publishStatus').textContent === 'PUBLISHING', 'publishing');
  assert.ok($('localVideo').querySelector('video'), 'local video created');
  assert.ok($('localVideo').querySelector('video').muted, 'local preview muted');
  const pubPc = w.__pcs[0];
  assert.strictEqual(pubPc.cfg.bundlePolicy, 'max-compat');
  assert.deepStrictEqual(pubPc.tx, [['audio','sendonly'],['video','sendonly']]);
  assert.ok(!pubPc.local.sdp.includes('H264') && pubPc.local.sdp.includes('m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n'), pubPc.local.sdp);
  assert.strictEqual(pubPc.remote.type, 'answer');
  // play
  $('playBtn').click();
  await H.until(() => $('playStatus').textContent === 'PLAYING', 'playing');
  const playPc = w.__pcs[1];
  assert.deepStrictEqual(playPc.tx, [['audio','recvonly'],['video','recvonly']]);
  const rv = $('remoteVideo').querySelector('video');
  assert.ok(rv && rv.srcObject && rv.srcObject.getTracks().length === 2, 'remote video has 2 tracks');
  const stats = await new Promise(r => w.twoWay.playStream.getStats(r));
  assert.strictEqual(stats.inboundStream.video.codec, 'VP8');
  // publisher stop -> player STOPPED by publisher stop
  $('publishBtn').click();
  await H.until(() => $('publishStatus').textContent === 'UNPUBLISHED', 'unpublished');
  await H.until(() => $('playStatus').textContent === 'STOPPED', 'player stopped');
  assert.strictEqual($('playInfo').textContent, 'Stopped by publisher stop');
  assert.ok(pubPc.closed && playPc.closed, 'pcs closed');
  assert.strictEqual(w.__stoppedTracks, 2, 'local tracks stopped');
  assert.ok(!$('localVideo').querySelector('video') && !$('remoteVideo').querySelector('video'), 'videos removed');
  assert.strictEqual($('publishBtn').textContent, 'Publish'); assert.ok(!$('publishBtn').disabled);
  // play missing -> FAILED Stream not found
  $('playName').value = 'nope'; $('playBtn').click();
  await H.until(() => $('playStatus').textContent === 'FAILED', 'play failed');
  assert.strictEqual($('playInfo').textContent, 'Stream not found');
  // publish again, then disconnect -> UNPUBLISHED (session disconnect), session DISCONNECTED
  $('publishBtn').click();
  await H.until(() => $('publishStatus').textContent === 'PUBLISHING', 'publishing 2');
  $('connectBtn').click();
  await H.until(() => $('sessionStatus').textContent === 'DISCONNECTED', 'disconnected');
  assert.strictEqual($('publishStatus').textContent, 'UNPUBLISHED');
  assert.strictEqual($('publishInfo').textContent, 'Stopped by session disconnect');
  assert.ok($('publishBtn').disabled && $('connectBtn').textContent === 'Connect');
  // pong sent
  assert.ok(H.log.some(e => e[0] === 'WS' && e[1] === 'pong' && e[2] === null), 'pong');
  const conn = H.log.find(e => e[1] === 'connection')[2];
  assert.strictEqual(conn.appKey, 'defaultApp'); assert.deepStrictEqual(conn.mediaProviders, ['WebRTC']);
  const pub = H.log.find(e => e[1] === 'publishStream')[2];
  console.log(JSON.stringify(pub));
  // bad url -> FAILED
  $('url').value = 'ws://127.0.0.1:1/'; $('connectBtn').click();
  await H.until(() => $('sessionStatus').textContent === 'FAILED', 'session failed');
  console.log('sessionInfo:', $('sessionInfo').textContent);
  console.log('two-way: all passed');
  dom.window.close(); process.exit(0);
})().catch(e => { console.error('FAIL', e); console.error(H.log.slice(-10)); process.exit(1); });
