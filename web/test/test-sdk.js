// Smoke tests of the web apps in jsdom against a fake WCS server (see README.md).
const H = require('./harness');
const assert = require('assert');
(async () => {
  const dom = await H.open('two-way.html');
  const w = dom.window;
  await H.until(() => w.Flashphoner && w.document.getElementById('url').value.includes(':' + H.wsPort), 'sdk');
  const F = w.Flashphoner, S = F.constants.SESSION_STATUS, T = F.constants.STREAM_STATUS;
  const url = w.document.getElementById('url').value;
  const events = [];
  const session = await new Promise(r => { const s = F.createSession({urlServer: url}).on(S.ESTABLISHED, r).on(S.DISCONNECTED, () => events.push('S:DISCONNECTED')).on(S.FAILED, () => events.push('S:FAILED')); });
  assert.strictEqual(session.serverSessionId(), 'srv-1');
  const mk = (name, disp) => { const st = session.createStream({name, display: disp || w.document.getElementById('localVideo')}); [T.PENDING, T.PUBLISHING, T.PLAYING, T.UNPUBLISHED, T.STOPPED, T.FAILED].forEach(k => st.on(k, x => events.push(name + ':' + k + ':' + x.getInfo()))); return st; };
  // fail frame with id
  mk('failme').publish();
  await H.until(() => events.includes('failme:FAILED:Restricted access'), 'fail frame');
  mk('failnoid').publish();
  await H.until(() => events.includes('failnoid:FAILED:No common codecs'), 'fail no id');
  // stop before server answers -> timer fallback
  const silent = mk('silent'); silent.publish();
  await H.until(() => H.log.some(e => e[1] === 'publishStream' && e[2].name === 'silent'), 'silent sent');
  silent.stop();
  await H.until(() => H.log.some(e => e[1] === 'unPublishStream' && e[2].name === 'silent'), 'unpub silent');
  // stop during getUserMedia (never sent)
  const early = mk('early'); early.publish(); early.stop();
  await H.until(() => events.includes('early:UNPUBLISHED:Stopped by user'), 'early stop');
  await H.sleep(50);
  assert.ok(!H.log.some(e => e[1] === 'publishStream' && e[2].name === 'early'), 'early never sent');
  // play stop ignored by server -> local STOPPED after 5 s
  const ig = mk('ignoreStop', w.document.getElementById('remoteVideo')); ig.play();
  await H.until(() => events.includes('ignoreStop:PLAYING:'), 'ig playing');
  ig.stop();
  await H.until(() => events.includes('ignoreStop:STOPPED:Stopped by user'), 'stop fallback', 7000);
  await H.until(() => events.includes('silent:UNPUBLISHED:Stopped by user'), 'silent fallback', 7000);
  // server closes ws while publishing
  const kick = mk('kick'); kick.publish();
  await H.until(() => events.includes('kick:PUBLISHING:'), 'kick publishing');
  await H.until(() => events.includes('kick:FAILED:Session disconnected') && events.includes('S:DISCONNECTED'), 'kicked');
  assert.strictEqual(session.status(), 'DISCONNECTED');
  // on() after final; publish twice throws
  assert.throws(() => kick.publish());
  // events order summary
  console.log(events.join('\n'));
  // createSession bad url
  const bad = await new Promise(r => { F.createSession({urlServer: 'notaurl'}).on(S.FAILED, s => r(s)); });
  console.log('bad url info:', bad.getInfo(), bad.status());
  console.log('sdk: all passed'); process.exit(0);
})().catch(e => { console.error('FAIL', e); process.exit(1); });
