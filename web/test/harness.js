// Test harness: static server for /work/main/web + fake REST + fake WCS signalling, and jsdom with WebRTC fakes.
const http = require('http'), fs = require('fs'), path = require('path');
const { WebSocketServer } = require('ws');
const { JSDOM } = require('jsdom');
const WEB = path.resolve(__dirname, '..');
const log = [];
const published = {}; // name -> {ws, id}
const players = [];
const relays = [{uri:'ws://b:8080', localMediaSessionId:'L1', remoteMediaSessionId:'R1', localStreamName:'a', remoteStreamName:'b', status:'PUBLISHING', attempts: 1, lastError: '<b>x</b>', direction:'push'}];
let wsPort;
const rest = http.createServer((req, res) => {
  let body = ''; req.on('data', d => body += d); req.on('end', () => {
    const u = req.url.split('?')[0];
    log.push(['REST', req.method, u, body]);
    const json = (st, obj) => { res.writeHead(st, {'Content-Type':'application/json'}); res.end(JSON.stringify(obj)); };
    if (u === '/rest-api/server/info') return json(200, {version:'0.1.0', wsPort, restPort: rest.address().port, mediaPorts:[31000,31001], cores:2, streams:1, sessions:2, peers:3});
    if (u === '/rest-api/pull/find_all') return relays.length ? json(200, relays) : json(404, {error:'no relays', status:404});
    if (u === '/rest-api/stream/find_all') return json(404, {error:'Not found', status:404});
    if (u === '/rest-api/pull/push') return json(409, {error:'relay exists', status:409});
    if (u === '/rest-api/pull/terminate') { relays.length = 0; return json(200, {}); }
    let f = u === '/' ? '/index.html' : u;
    const p = path.join(WEB, f);
    if (!p.startsWith(WEB) || !fs.existsSync(p)) { res.writeHead(404); return res.end('nf'); }
    const ct = p.endsWith('.js') ? 'text/javascript' : p.endsWith('.css') ? 'text/css' : 'text/html';
    res.writeHead(200, {'Content-Type': ct}); res.end(fs.readFileSync(p));
  });
});
const wss = new WebSocketServer({ port: 0 });
wsPort = wss.address().port;
wss.on('connection', ws => {
  const send = (m, d) => ws.send(JSON.stringify({message: m, data: d}));
  ws.on('message', raw => {
    const f = JSON.parse(raw); const d = f.data[0];
    log.push(['WS', f.message, f.message === 'publishStream' || f.message === 'playStream' ? Object.assign({}, d, {sdp: d.sdp.length + ' chars'}) : d]);
    switch (f.message) {
      case 'connection': send('getUserData', [{sessionId: 'srv-1', authToken: 't', appKey: d.appKey, mediaProviders: ['WebRTC']}]); send('ping', []); break;
      case 'publishStream':
        if (d.name === 'failme') { send('fail', [{apiMethod: 'publishStream', info: 'Restricted access', id: d.mediaSessionId}]); break; }
        if (d.name === 'silent') break;
        if (d.name === 'failnoid') { send('fail', [{apiMethod: 'publishStream', info: 'No common codecs'}]); break; }
        if (d.name === 'kick') { send('setRemoteSDP', [d.mediaSessionId, 'v=0 answer']); send('notifyStreamStatusEvent', [{mediaSessionId: d.mediaSessionId, name: d.name, published: true, status: 'PUBLISHING'}]); setTimeout(() => ws.close(), 100); break; }
        if (published[d.name]) { send('notifyStreamStatusEvent', [{mediaSessionId: d.mediaSessionId, name: d.name, published: true, status: 'FAILED', info: 'Stream name is already in use'}]); break; }
        published[d.name] = {ws, id: d.mediaSessionId};
        send('setRemoteSDP', [d.mediaSessionId, 'v=0 answer']);
        send('notifyStreamStatusEvent', [{mediaSessionId: d.mediaSessionId, name: d.name, published: true, status: 'PUBLISHING'}]); break;
      case 'playStream':
        if (d.name === 'ignoreStop') { send('setRemoteSDP', [d.mediaSessionId, 'v=0 answer']); send('notifyStreamStatusEvent', [{mediaSessionId: d.mediaSessionId, name: d.name, published: false, status: 'PLAYING'}]); break; }
        if (!published[d.name]) { send('notifyStreamStatusEvent', [{mediaSessionId: d.mediaSessionId, name: d.name, published: false, status: 'FAILED', info: 'Stream not found'}]); break; }
        players.push({ws, id: d.mediaSessionId, name: d.name});
        send('setRemoteSDP', [d.mediaSessionId, 'v=0 answer']);
        send('notifyStreamStatusEvent', [{mediaSessionId: d.mediaSessionId, name: d.name, published: false, status: 'PLAYING', width: 640, height: 480}]); break;
      case 'unPublishStream':
        delete published[d.name];
        send('notifyStreamStatusEvent', [{mediaSessionId: d.mediaSessionId, name: d.name, published: true, status: 'UNPUBLISHED', info: 'Stopped by user'}]);
        players.filter(p => p.name === d.name).forEach(p => p.ws.send(JSON.stringify({message:'notifyStreamStatusEvent', data:[{mediaSessionId: p.id, name: p.name, published: false, status: 'STOPPED', info: 'Stopped by publisher stop'}]})));
        break;
      case 'stopStream':
        if (d.name === 'ignoreStop') break;
        send('notifyStreamStatusEvent', [{mediaSessionId: d.mediaSessionId, name: d.name, published: false, status: 'STOPPED', info: 'Stopped by user'}]); break;
    }
  });
});

function fakes(window) {
  class MediaStream { constructor(t) { this._t = t || []; } getTracks() { return this._t.slice(); } getAudioTracks() { return this._t.filter(t => t.kind === 'audio'); } getVideoTracks() { return this._t.filter(t => t.kind === 'video'); } addTrack(t) { this._t.push(t); } }
  const track = kind => ({kind, enabled: true, stopped: false, stop() { this.stopped = true; window.__stoppedTracks = (window.__stoppedTracks||0)+1; }});
  window.console.debug = () => {};  // relaycast.js logs every frame at debug level
  window.MediaStream = MediaStream;
  window.fetch = (u, init) => fetch(new URL(u, window.location.href), init);
  Object.defineProperty(window.navigator, 'mediaDevices', {value: {getUserMedia: async c => new MediaStream([c.audio && track('audio'), c.video && track('video')].filter(Boolean)), enumerateDevices: async () => []}});
  const SDP = ['v=0','o=- 1 2 IN IP4 127.0.0.1','s=-','t=0 0','m=video 9 UDP/TLS/RTP/SAVPF 96 97 102','a=rtpmap:96 VP8/90000','a=rtpmap:97 rtx/90000','a=fmtp:97 apt=96','a=rtpmap:102 H264/90000',''].join('\r\n');
  window.__pcs = [];
  window.RTCPeerConnection = class { constructor(cfg) { this.cfg = cfg; this.tx = []; this.signalingState = 'stable'; this.closed = false; window.__pcs.push(this); }
    addTransceiver(t, o) { this.tx.push([typeof t === 'string' ? t : t.kind, o.direction]); }
    async createOffer() { return {type: 'offer', sdp: SDP}; }
    async setLocalDescription(d) { this.local = d; this.signalingState = 'have-local-offer'; }
    async setRemoteDescription(d) { this.remote = d; this.signalingState = 'stable'; this.tx.filter(x => x[1] === 'recvonly').forEach(x => this.ontrack && this.ontrack({track: track(x[0])})); }
    close() { this.closed = true; this.signalingState = 'closed'; }
    async getStats() { return new Map([['c1', {id:'c1', type:'codec', mimeType:'video/VP8'}], ['i1', {type:'inbound-rtp', kind:'video', codecId:'c1', bytesReceived: 100}]]); } };
  Object.defineProperty(window.HTMLMediaElement.prototype, 'srcObject', {get() { return this._so || null; }, set(v) { this._so = v; }, configurable: true});
  window.HTMLMediaElement.prototype.play = function () { return Promise.resolve(); };
  window.HTMLElement.prototype.requestFullscreen = function () { return Promise.resolve(); };
}

async function open(page) {
  await new Promise(r => rest.listening ? r() : rest.listen(0, '127.0.0.1', r));
  const url = 'http://127.0.0.1:' + rest.address().port + '/' + page;
  const dom = await JSDOM.fromURL(url, {runScripts: 'dangerously', resources: 'usable', pretendToBeVisual: true, beforeParse: fakes});
  return dom;
}
const sleep = ms => new Promise(r => setTimeout(r, ms));
async function until(fn, what, ms = 3000) { const t0 = Date.now(); while (Date.now() - t0 < ms) { try { if (fn()) return; } catch (e) {} await sleep(20); } throw new Error('timeout: ' + what); }
module.exports = { open, sleep, until, log, rest, wss, relays, get wsPort() { return wsPort; } };
