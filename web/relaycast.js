/*
 * relaycast.js: a small WebRTC client for relaycast (and any server speaking the
 * Flashphoner Web Call Server signalling protocol), written from the wire contract in
 * PROTOCOL.md. Its API has the shape of the official Flashphoner WebSDK so that page
 * code written for WCS runs unchanged:
 *
 *   Flashphoner.init({});
 *   var S = Flashphoner.constants.SESSION_STATUS, T = Flashphoner.constants.STREAM_STATUS;
 *   Flashphoner.createSession({urlServer: "ws://host:8080/"})
 *     .on(S.ESTABLISHED, function (session) {
 *       session.createStream({name: "cam1", display: divElement})
 *         .on(T.PUBLISHING, function (stream) { ... })
 *         .on(T.FAILED, function (stream) { console.log(stream.getInfo()); })
 *         .publish();
 *     });
 *
 * Flow: a Session owns one WebSocket. Every frame is {message, data: [...]}. The
 * session sends `connection`, the server answers `getUserData` (ESTABLISHED). A Stream
 * owns one RTCPeerConnection: it creates the offer, sends it in `publishStream` or
 * `playStream` (no trickle ICE: the server is ICE-lite and answers with its own host
 * candidates), applies the `setRemoteSDP` answer, and follows the server's
 * `notifyStreamStatusEvent` frames. UNPUBLISHED, STOPPED and FAILED are final: the
 * peer connection is closed and local media released.
 *
 * Like the official SDK, `on(event, cb)` keeps one callback per event (a later call
 * replaces the earlier one) and returns the object, so calls chain.
 */
(function (global) {
    'use strict';

    // ---------------------------------------------------------------- constants

    /** Builds a frozen {NAME: "NAME"} table. */
    function names(list) {
        var table = {};
        list.forEach(function (n) { table[n] = n; });
        return Object.freeze(table);
    }

    var SESSION_STATUS = names([
        'PENDING', 'CONNECTED', 'ESTABLISHED', 'DISCONNECTED', 'FAILED', 'WARN', 'DEBUG',
        'APP_DATA', 'SEND_DATA_STATUS', 'REGISTERED', 'UNREGISTERED', 'INCOMING_CALL',
    ]);

    var STREAM_STATUS = names([
        'NEW', 'PENDING', 'PUBLISHING', 'PLAYING', 'PAUSED', 'UNPUBLISHED', 'STOPPED',
        'FAILED', 'PLAYBACK_PROBLEM', 'RESIZE', 'SNAPSHOT_COMPLETE', 'NOT_ENOUGH_BANDWIDTH',
    ]);

    // The `info` strings the server sends (PROTOCOL.md), keyed as the official SDK does.
    var STREAM_STATUS_INFO = Object.freeze({
        FAILED_BY_ICE_ERROR: 'Failed by ICE error',
        FAILED_BY_ICE_TIMEOUT: 'Failed by ICE timeout',
        FAILED_BY_KEEP_ALIVE: 'Failed by ICE keep alive',
        FAILED_BY_DTLS_FINGERPRINT_ERROR: 'Failed by DTLS fingerprint error',
        FAILED_BY_DTLS_ERROR: 'Failed by DTLS error',
        FAILED_BY_RTP_ACTIVITY: 'Failed by RTP activity',
        FAILED_BY_ERROR: 'Failed by error',
        STOPPED_BY_SESSION_DISCONNECT: 'Stopped by session disconnect',
        STOPPED_BY_REST_TERMINATE: 'Stopped by rest /terminate',
        STOPPED_BY_PUBLISHER_STOP: 'Stopped by publisher stop',
        STOPPED_BY_USER: 'Stopped by user',
        STREAM_NOT_FOUND: 'Stream not found',
        STREAM_NAME_ALREADY_IN_USE: 'Stream name is already in use',
        MEDIASESSION_ID_NULL: 'MediaSessionId is null',
        MEDIASESSION_ID_ALREADY_IN_USE: 'MediaSessionId is already in use',
        SESSION_NOT_READY: 'Session not ready',
        NO_COMMON_CODECS: 'No common codecs',
        FAILED_TO_CONNECT_TO_ORIGIN_STREAM: 'Failed to connect to origin stream',
        RESTRICTED_ACCESS: 'Restricted access',
    });

    // Stream events (the SDK's STREAM_EVENT and STREAM_EVENT_TYPE): a publisher's mute,
    // unmute and sendData reach its players; the server also sends `resize`.
    var STREAM_EVENT = 'STREAM_EVENT';
    var STREAM_EVENT_TYPE = Object.freeze({
        AUDIO_MUTED: 'audioMuted',
        AUDIO_UNMUTED: 'audioUnmuted',
        VIDEO_MUTED: 'videoMuted',
        VIDEO_UNMUTED: 'videoUnmuted',
        DATA: 'data',
        RESIZE: 'resize',
    });

    var MEDIA_PROVIDER = 'WebRTC';
    var CLIENT_VERSION = '2.0';

    // Statuses after which a stream is over and its peer connection closed.
    var FINAL = [STREAM_STATUS.UNPUBLISHED, STREAM_STATUS.STOPPED, STREAM_STATUS.FAILED];

    // Statuses the server may send as events: callbacks fire, status() is unchanged.
    var EVENT_ONLY = [
        STREAM_STATUS.RESIZE, STREAM_STATUS.PLAYBACK_PROBLEM, STREAM_STATUS.SNAPSHOT_COMPLETE,
        STREAM_STATUS.NOT_ENOUGH_BANDWIDTH,
    ];

    // How long stop() waits for the server's final status before ending locally.
    var STOP_TIMEOUT_MS = 5000;

    // ------------------------------------------------------------------ helpers

    var sessions = {};
    var defaults = {constraints: {audio: true, video: true}};

    function log() {
        var args = Array.prototype.slice.call(arguments);
        args.unshift('[relaycast]');
        console.debug.apply(console, args);
    }

    /** An RFC 4122 version 4 UUID. crypto.randomUUID needs a secure context; this does not. */
    function uuid() {
        var b = new Uint8Array(16);
        global.crypto.getRandomValues(b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); });
        return h.slice(0, 4).join('') + '-' + h.slice(4, 6).join('') + '-' +
            h.slice(6, 8).join('') + '-' + h.slice(8, 10).join('') + '-' + h.slice(10).join('');
    }

    function isFinal(status) { return FINAL.indexOf(status) !== -1; }

    function errorText(e) {
        if (!e) return 'Unknown error';
        if (typeof e === 'string') return e;
        return (e.name && e.name !== 'Error' ? e.name + ': ' : '') + (e.message || String(e));
    }

    /**
     * Removes the named codecs (comma-separated, case-insensitive, e.g. "H264,VP9" or
     * "PCMU,PCMA") from an SDP: their rtpmap/fmtp/rtcp-fb lines and their payload types
     * on the m= line. Payloads that only make sense for a removed codec (rtx whose apt
     * points at it, red whose fmtp lists it) go too. A media section whose every payload
     * would disappear is left untouched: an m= line without formats is invalid.
     */
    function stripCodecs(sdp, codecs) {
        var wanted = String(codecs || '').split(',').map(function (c) {
            return c.trim().toUpperCase();
        }).filter(Boolean);
        if (!wanted.length || !sdp) return sdp;

        var eol = sdp.indexOf('\r\n') !== -1 ? '\r\n' : '\n';
        var lines = sdp.split(eol);
        if (lines[lines.length - 1] === '') lines.pop();

        // Split into the session part and one array of lines per media section.
        var sections = [[]];
        lines.forEach(function (line) {
            if (line.indexOf('m=') === 0) sections.push([]);
            sections[sections.length - 1].push(line);
        });

        var out = sections[0];
        sections.slice(1).forEach(function (section) {
            out = out.concat(stripSection(section, wanted));
        });
        return out.join(eol) + eol;
    }

    function stripSection(section, wanted) {
        var mline = section[0].split(' ');
        var formats = mline.slice(3);
        var removed = {};
        var rtpmapRe = /^a=rtpmap:(\d+) ([^/\s]+)/;
        var fmtpRe = /^a=fmtp:(\d+) (.*)$/;

        section.forEach(function (line) {
            var m = rtpmapRe.exec(line);
            if (m && wanted.indexOf(m[2].toUpperCase()) !== -1) removed[m[1]] = true;
        });
        if (!Object.keys(removed).length) return section;

        // Dependent payloads: rtx (apt=PT) and red (PT/PT) of a removed codec.
        var changed = true;
        while (changed) {
            changed = false;
            section.forEach(function (line) {
                var m = fmtpRe.exec(line);
                if (!m || removed[m[1]]) return;
                var apt = /(?:^|;)\s*apt=(\d+)/.exec(m[2]);
                var refs = apt ? [apt[1]] : (/^\d+(\/\d+)*$/.test(m[2]) ? m[2].split('/') : []);
                if (refs.some(function (pt) { return removed[pt]; })) {
                    removed[m[1]] = true;
                    changed = true;
                }
            });
        }

        var kept = formats.filter(function (pt) { return !removed[pt]; });
        if (!kept.length) return section;

        var perPayload = /^a=(?:rtpmap|fmtp|rtcp-fb):(\d+)[ ]/;
        var result = [mline.slice(0, 3).concat(kept).join(' ')];
        section.slice(1).forEach(function (line) {
            var m = perPayload.exec(line);
            if (!m || !removed[m[1]]) result.push(line);
        });
        return result;
    }

    /**
     * The <video> element a stream renders into. Like the official SDK, `display` is
     * normally a container (div) and the video element is created inside it; a <video>
     * passed directly is used as is.
     */
    function videoFor(display, stream, local) {
        if (!display) return null;
        var video = display;
        if (display.tagName !== 'VIDEO') {
            video = document.createElement('video');
            video.setAttribute('data-relaycast', local ? 'local' : 'remote');
            video.id = stream.id() + (local ? '-local' : '-remote');
            video.className = 'relaycast-video';
            video.style.width = '100%';
            video.style.height = '100%';
            video.style.objectFit = 'contain';
            display.appendChild(video);
        }
        video.autoplay = true;
        video.playsInline = true;
        video.setAttribute('playsinline', '');
        if (local) video.muted = true;
        return video;
    }

    /** Starts playback; if the browser refuses unmuted autoplay, plays muted instead. */
    function startVideo(video) {
        if (!video) return;
        var p = video.play();
        if (p && p.catch) {
            p.catch(function (e) {
                if (video.muted || e.name !== 'NotAllowedError') return;
                log('autoplay with sound refused, playing muted');
                video.muted = true;
                video.play().catch(function () {});
            });
        }
    }

    function stopTracks(mediaStream) {
        if (mediaStream) mediaStream.getTracks().forEach(function (t) { t.stop(); });
    }

    // ------------------------------------------------------------------ Session

    /** One signalling connection to a server. Create with Flashphoner.createSession. */
    function Session(options) {
        this._options = options;
        this._id = uuid();
        this._url = options.urlServer;
        this._status = SESSION_STATUS.PENDING;
        this._callbacks = {};
        this._streams = {};          // mediaSessionId -> Stream
        this._serverData = null;     // the getUserData object
        this._userDisconnect = false;
        this._everEstablished = false;
        this._ws = null;
        this._timer = null;
        sessions[this._id] = this;
        this._open();
    }

    Session.prototype._open = function () {
        var self = this;
        var ws;
        try {
            ws = new WebSocket(this._url);
        } catch (e) {
            // A malformed URL throws synchronously; report it once callbacks are attached.
            this._info = errorText(e);
            setTimeout(function () { self._closed(); }, 0);
            return;
        }
        this._ws = ws;
        if (this._options.timeout > 0) {
            this._timer = setTimeout(function () {
                if (self._status !== SESSION_STATUS.ESTABLISHED) {
                    self._info = 'Connection timeout';
                    ws.close();
                }
            }, this._options.timeout);
        }
        ws.onopen = function () {
            self._setStatus(SESSION_STATUS.CONNECTED);
            var hello = {
                appKey: self._options.appKey || 'defaultApp',
                mediaProviders: [MEDIA_PROVIDER],
                clientVersion: CLIENT_VERSION,
                clientOSVersion: navigator.platform || '',
                clientBrowserVersion: navigator.userAgent,
                keepAlive: !!self._options.keepAlive,
            };
            if (self._options.authToken) hello.authToken = self._options.authToken;
            if (self._options.custom) hello.custom = self._options.custom;
            self._send('connection', hello);
        };
        ws.onmessage = function (event) { self._receive(event.data); };
        ws.onerror = function () {
            if (self._info) return;
            self._info = self._status === SESSION_STATUS.PENDING ? 'Could not connect to ' + self._url : 'WebSocket error';
        };
        ws.onclose = function (event) {
            if (!self._info && event.code !== 1000 && event.code !== 1005) {
                self._info = 'WebSocket closed (' + event.code + (event.reason ? ' ' + event.reason : '') + ')';
            }
            self._closed();
        };
    };

    Session.prototype._send = function (message, payload) {
        if (!this._ws || this._ws.readyState !== WebSocket.OPEN) return false;
        var frame = {message: message, data: [payload]};
        log('->', message, payload);
        this._ws.send(JSON.stringify(frame));
        return true;
    };

    Session.prototype._receive = function (text) {
        var frame;
        try {
            frame = JSON.parse(text);
        } catch (e) {
            log('ignoring a frame that is not JSON', text);
            return;
        }
        var data = Array.isArray(frame.data) ? frame.data : [];
        var first = data[0] || {};
        var stream;
        if (frame.message !== 'ping') log('<-', frame.message, data);
        switch (frame.message) {
            case 'ping':
                this._send('pong', null);
                break;
            case 'getUserData':
                this._serverData = first;
                this._everEstablished = true;
                clearTimeout(this._timer);
                this._setStatus(SESSION_STATUS.ESTABLISHED);
                break;
            case 'setRemoteSDP':
                stream = this._streams[data[0]];
                if (stream) stream._applyAnswer(data[1]);
                break;
            case 'notifyStreamStatusEvent':
                stream = this._streams[first.mediaSessionId];
                if (stream) stream._serverStatus(first);
                break;
            case 'notifyStreamEvent':
                stream = this._streams[first.mediaSessionId];
                if (stream) stream._serverEvent(first);
                break;
            case 'availableStream':
                stream = this._streams[first.id];
                if (stream) stream._availability(first);
                break;
            case 'fail':
                // A refused stream event does not end the stream (the SDK only warns).
                stream = first.apiMethod === 'sendStreamEvent' ? null
                    : (first.id && this._streams[first.id]) || this._awaiting(first.apiMethod);
                if (stream) {
                    stream._finish(STREAM_STATUS.FAILED, first.info || 'Failed by error');
                } else {
                    this._info = first.info || '';
                    this._fire(SESSION_STATUS.WARN, first);
                }
                break;
            case 'OnDataEvent':
                // Data the operator's backend sent this session (/rest-api/data/send).
                this._fire(SESSION_STATUS.APP_DATA, first);
                break;
            case 'DataStatusEvent':
                this._dataStatus(first);
                break;
            default:
                // Frames this client has no use for (SIP, transcoding, ...) are ignored.
                break;
        }
    };

    /**
     * The stream a `fail` frame without an id is about: the only one that sent
     * `apiMethod` (publishStream/playStream) and has heard nothing back since.
     */
    Session.prototype._awaiting = function (apiMethod) {
        var self = this;
        var published = apiMethod === 'publishStream';
        if (!published && apiMethod !== 'playStream') return undefined;
        var waiting = Object.keys(this._streams).map(function (id) { return self._streams[id]; })
            .filter(function (s) {
                return s._sent && !s._serverData && !isFinal(s._status) && s._published === published;
            });
        return waiting.length === 1 ? waiting[0] : undefined;
    };

    Session.prototype._closed = function () {
        clearTimeout(this._timer);
        var wasUp = this._everEstablished;
        var self = this;
        var pendingData = this._pendingData || {};
        this._pendingData = {};
        Object.keys(pendingData).forEach(function (id) {
            pendingData[id].reject({status: 'FAILED', info: 'Session disconnected'});
        });
        Object.keys(this._streams).forEach(function (id) {
            var s = self._streams[id];
            if (s._isActive()) {
                if (self._userDisconnect) {
                    s._finish(s._published ? STREAM_STATUS.UNPUBLISHED : STREAM_STATUS.STOPPED,
                        STREAM_STATUS_INFO.STOPPED_BY_SESSION_DISCONNECT);
                } else {
                    s._finish(STREAM_STATUS.FAILED, 'Session disconnected');
                }
            }
        });
        delete sessions[this._id];
        this._setStatus(wasUp || this._userDisconnect ? SESSION_STATUS.DISCONNECTED : SESSION_STATUS.FAILED);
    };

    Session.prototype._setStatus = function (status) {
        if (this._status === status) return;
        if (this._status === SESSION_STATUS.DISCONNECTED || this._status === SESSION_STATUS.FAILED) return;
        this._status = status;
        // As the SDK's, ESTABLISHED callbacks also get the getUserData object.
        this._fire(status, this, status === SESSION_STATUS.ESTABLISHED ? this._serverData : undefined);
    };

    Session.prototype._fire = function (event, arg, extra) {
        var cb = this._callbacks[event];
        if (!cb) return;
        try {
            cb(arg === undefined ? this : arg, extra);
        } catch (e) {
            console.error('[relaycast] session ' + event + ' callback threw', e);
        }
    };

    /** Registers the callback for a SESSION_STATUS event; returns the session. */
    Session.prototype.on = function (event, callback) {
        if (!event) throw new TypeError('Event can\'t be null');
        if (typeof callback !== 'function') throw new TypeError('Callback needs to be a valid function');
        this._callbacks[event] = callback;
        return this;
    };

    Session.prototype.id = function () { return this._id; };
    Session.prototype.status = function () { return this._status; };
    Session.prototype.getServerUrl = function () { return this._url; };
    /** The server's session id from getUserData (relaycast extension; REST uses it). */
    Session.prototype.serverSessionId = function () {
        return this._serverData ? this._serverData.sessionId : undefined;
    };
    /** The getUserData object (relaycast extension). */
    Session.prototype.serverData = function () { return this._serverData; };
    /** The last session-level info (failure reason, `fail` frame text). */
    Session.prototype.getInfo = function () { return this._info || ''; };

    Session.prototype.getStreams = function () {
        var self = this;
        return Object.keys(this._streams).map(function (id) { return self._streams[id]; });
    };
    Session.prototype.getStream = function (id) { return this._streams[id]; };

    /** Closes the WebSocket; active streams end locally, the session becomes DISCONNECTED. */
    Session.prototype.disconnect = function () {
        this._userDisconnect = true;
        if (this._ws && this._ws.readyState <= WebSocket.OPEN) {
            this._ws.close(1000);
        } else if (this._status !== SESSION_STATUS.DISCONNECTED && this._status !== SESSION_STATUS.FAILED) {
            this._closed();
        }
    };

    /**
     * Sends data to the operator's backend (`sendData`, posted to the backend's OnDataEvent hook).
     * Returns a promise that resolves when the server accepts it and rejects with the
     * server's answer ({status: 'FAILED', info}) when it does not, as the official SDK's.
     */
    Session.prototype.sendData = function (payload) {
        var self = this;
        return new Promise(function (resolve, reject) {
            var operationId = uuid();
            self._pendingData = self._pendingData || {};
            self._pendingData[operationId] = {resolve: resolve, reject: reject};
            if (!self._send('sendData', {operationId: operationId, payload: payload})) {
                delete self._pendingData[operationId];
                reject({status: 'FAILED', info: 'Session is not established'});
            }
        });
    };

    Session.prototype._dataStatus = function (answer) {
        var pending = this._pendingData && this._pendingData[answer.operationId];
        if (!pending) return;
        delete this._pendingData[answer.operationId];
        var result = {status: answer.status};
        if (answer.info !== undefined) result.info = answer.info;
        if (answer.status === 'ACCEPTED') pending.resolve(result); else pending.reject(result);
    };

    /**
     * Creates a stream bound to this session. Options: name (required), display (a div
     * or a video element), constraints ({audio, video} for publishing), receiveAudio /
     * receiveVideo (playing, default true), stripCodecs ("H264,VP9"), record, custom,
     * mediaConnectionConstraints (extra RTCPeerConnection configuration).
     */
    Session.prototype.createStream = function (options) {
        if (!options || typeof options.name !== 'string' || !options.name) {
            throw new TypeError('Stream name must be provided');
        }
        var stream = new Stream(this, options);
        this._streams[stream.id()] = stream;
        return stream;
    };

    // ------------------------------------------------------------------- Stream

    function Stream(session, options) {
        this._session = session;
        this._options = options;
        this._id = uuid();
        this._name = options.name;
        this._display = options.display || null;
        this._status = STREAM_STATUS.NEW;
        this._info = '';
        this._callbacks = {};
        this._published = false;
        this._started = false;       // publish()/play() called
        this._sent = false;          // publishStream/playStream reached the server
        this._stopRequested = false;
        this._pc = null;
        this._localMedia = null;     // MediaStream from getUserMedia
        this._remoteMedia = null;    // MediaStream assembled from ontrack
        this._video = null;
        this._stopTimer = null;
        this._serverData = null;     // last notifyStreamStatusEvent object
        this._width = 0;
        this._height = 0;
    }

    Stream.prototype.on = function (event, callback) {
        if (!event) throw new TypeError('Event can\'t be null');
        if (typeof callback !== 'function') throw new TypeError('Callback needs to be a valid function');
        this._callbacks[event] = callback;
        return this;
    };

    Stream.prototype.id = function () { return this._id; };
    Stream.prototype.name = function () { return this._name; };
    Stream.prototype.status = function () { return this._status; };
    Stream.prototype.published = function () { return this._published; };
    Stream.prototype.getInfo = function () { return this._info; };
    Stream.prototype.getErrorInfo = function () {
        return this._status === STREAM_STATUS.FAILED ? this._info : '';
    };
    /** The last notifyStreamStatusEvent object (codecs, sizes; relaycast extension). */
    Stream.prototype.serverData = function () { return this._serverData; };

    /** Publishes the local camera and microphone (or options.constraints) under name(). */
    Stream.prototype.publish = function () {
        if (this._started) throw new Error('Invalid stream state ' + this._status);
        this._started = true;
        this._published = true;
        // Like the official SDK, publishing shows no local PENDING.
        this._startPublish().catch(this._startFailed.bind(this));
    };

    /** Plays the server's stream name() into display. */
    Stream.prototype.play = function () {
        if (this._started) throw new Error('Invalid stream state ' + this._status);
        this._started = true;
        this._published = false;
        this._setStatus(STREAM_STATUS.PENDING);
        this._startPlay().catch(this._startFailed.bind(this));
    };

    Stream.prototype._startPublish = async function () {
        var constraints = this._options.constraints || defaults.constraints;
        var media = await getLocalMedia(constraints);
        if (this._stopRequested) {
            stopTracks(media);
            return;
        }
        this._localMedia = media;
        this._attachVideo(true, media);

        var pc = this._newPeerConnection();
        media.getTracks().forEach(function (track) {
            pc.addTransceiver(track, {direction: 'sendonly', streams: [media]});
        });
        var offer = await this._makeOffer(pc);
        if (this._stopRequested) return;
        this._sendStart('publishStream', offer, {
            hasAudio: media.getAudioTracks().length > 0,
            hasVideo: media.getVideoTracks().length > 0,
            constraints: {audio: constraints.audio !== false, video: constraints.video !== false},
        });
    };

    Stream.prototype._startPlay = async function () {
        var opts = this._options;
        var c = opts.constraints || {};
        var audio = opts.receiveAudio !== false && c.audio !== false;
        var video = opts.receiveVideo !== false && c.video !== false;
        var self = this;

        var pc = this._newPeerConnection();
        if (audio) pc.addTransceiver('audio', {direction: 'recvonly'});
        if (video) pc.addTransceiver('video', {direction: 'recvonly'});
        this._remoteMedia = new MediaStream();
        pc.ontrack = function (event) {
            if (self._pc !== pc) return;
            self._remoteMedia.addTrack(event.track);
            var v = self._attachVideo(false, self._remoteMedia);
            if (v) startVideo(v);
        };
        var offer = await this._makeOffer(pc);
        if (this._stopRequested) return;
        this._sendStart('playStream', offer, {
            hasAudio: audio,
            hasVideo: video,
            constraints: {audio: audio, video: video},
        });
    };

    Stream.prototype._newPeerConnection = function () {
        var config = {bundlePolicy: 'max-compat', iceServers: []};
        var extra = this._options.mediaConnectionConstraints || this._session._options.mediaOptions;
        if (extra && typeof extra === 'object') {
            Object.keys(extra).forEach(function (k) { config[k] = extra[k]; });
        }
        var pc = new RTCPeerConnection(config);
        var self = this;
        pc.oniceconnectionstatechange = function () {
            log(self._id, 'ICE', pc.iceConnectionState);
        };
        this._pc = pc;
        return pc;
    };

    /**
     * Creates the offer, strips unwanted codecs and applies it locally. The offer is sent
     * at once, without gathering candidates: the server is ICE-lite and learns our
     * address from our connectivity checks.
     */
    Stream.prototype._makeOffer = async function (pc) {
        var offer = await pc.createOffer();
        var sdp = stripCodecs(offer.sdp, this._options.stripCodecs);
        try {
            await pc.setLocalDescription({type: 'offer', sdp: sdp});
        } catch (e) {
            // The browser refused the edited offer: use its own, send the edited one.
            log('edited offer refused, applying the original', e);
            await pc.setLocalDescription(offer);
        }
        return sdp;
    };

    Stream.prototype._sendStart = function (message, sdp, extra) {
        var payload = {
            mediaSessionId: this._id,
            name: this._name,
            published: this._published,
            hasVideo: extra.hasVideo,
            hasAudio: extra.hasAudio,
            status: this._status,
            sdp: sdp,
            mediaProvider: MEDIA_PROVIDER,
            record: !!this._options.record,
            custom: this._options.custom || {},
            constraints: extra.constraints,
        };
        if (!this._session._send(message, payload)) {
            throw new Error('Session not ready');
        }
        this._sent = true;
    };

    Stream.prototype._startFailed = function (e) {
        if (this._stopRequested && !this._sent) return;
        log(this._id, 'start failed', e);
        this._finish(STREAM_STATUS.FAILED, errorText(e));
    };

    Stream.prototype._applyAnswer = function (sdp) {
        var pc = this._pc;
        if (!pc || !sdp || pc.signalingState !== 'have-local-offer') return;
        var self = this;
        pc.setRemoteDescription({type: 'answer', sdp: sdp}).catch(function (e) {
            if (self._pc !== pc) return;
            var info = 'Failed to apply the answer: ' + errorText(e);
            self._tellServerStop();
            self._finish(STREAM_STATUS.FAILED, info);
        });
    };

    Stream.prototype._serverStatus = function (event) {
        if (isFinal(this._status)) return;
        this._serverData = event;
        if (event.width) this._width = event.width;
        if (event.height) this._height = event.height;
        var status = event.status;
        if (!status) return;
        if (isFinal(status)) {
            this._finish(status, event.info || '');
        } else if (EVENT_ONLY.indexOf(status) !== -1) {
            if (event.info !== undefined) this._info = event.info;
            this._fire(status);
        } else {
            this._info = event.info || '';
            if (status === STREAM_STATUS.PLAYING && this._video) startVideo(this._video);
            this._setStatus(status);
        }
    };

    Stream.prototype._serverEvent = function (event) {
        var payload = event.payload || {};
        if (String(event.type).toLowerCase() === 'resize') {
            this._width = payload.streamerVideoWidth || payload.width || this._width;
            this._height = payload.streamerVideoHeight || payload.height || this._height;
            this._fire(STREAM_STATUS.RESIZE);
        }
        var cb = this._callbacks[STREAM_EVENT];
        if (!cb) return;
        try {
            cb(event);
        } catch (e) {
            console.error('[relaycast] stream STREAM_EVENT callback threw', e);
        }
    };

    /**
     * Asks the server whether this stream's name can be played now. Resolves with the stream
     * when it can; rejects with the stream (its getInfo() says why) when it cannot.
     */
    Stream.prototype.available = function () {
        var self = this;
        return new Promise(function (resolve, reject) {
            self._availableWaiters = (self._availableWaiters || []).concat([{resolve: resolve, reject: reject}]);
            if (!self._session._send('availableStream', {mediaSessionId: self._id, name: self._name})) {
                self._info = 'Session is not established';
                self._availability({status: 'false', info: self._info});
            }
        });
    };

    Stream.prototype._availability = function (answer) {
        var waiters = this._availableWaiters || [];
        this._availableWaiters = [];
        if (answer.info !== undefined) this._info = answer.info;
        var self = this;
        waiters.forEach(function (w) {
            if (answer.status === 'true' || answer.status === true) w.resolve(self); else w.reject(self);
        });
    };

    /** Tells the server about this published stream (mute, unmute, data) for its players. */
    Stream.prototype._sendStreamEvent = function (type, payload) {
        if (!this._published || !this._sent || isFinal(this._status)) return;
        var data = {mediaSessionId: this._id, type: type};
        if (payload !== undefined) data.payload = payload;
        this._session._send('sendStreamEvent', data);
    };

    /** Sends `payload` to every player of this published stream (their STREAM_EVENT `data`). */
    Stream.prototype.sendData = function (payload) {
        if (this._status !== STREAM_STATUS.PUBLISHING) throw new Error('Invalid stream state');
        this._sendStreamEvent(STREAM_EVENT_TYPE.DATA, payload);
    };

    /** A played stream's {muted} audio and video state, as the server last told it. */
    Stream.prototype.getAudioState = function () {
        return (this._serverData && this._serverData.audioState) || undefined;
    };
    Stream.prototype.getVideoState = function () {
        return (this._serverData && this._serverData.videoState) || undefined;
    };

    /** Stops publishing or playing; the final status comes from the server. */
    Stream.prototype.stop = function () {
        if (!this._started || isFinal(this._status) || this._stopRequested) return;
        this._stopRequested = true;
        var final = this._published ? STREAM_STATUS.UNPUBLISHED : STREAM_STATUS.STOPPED;
        if (this._sent && this._tellServerStop()) {
            // Like the official SDK: close the peer connection now, wait for the server.
            this._release();
            this._removeVideo();
            var self = this;
            this._stopTimer = setTimeout(function () {
                self._finish(final, STREAM_STATUS_INFO.STOPPED_BY_USER);
            }, STOP_TIMEOUT_MS);
        } else {
            // The server never heard of this stream (or cannot be told): end it here.
            this._finish(final, STREAM_STATUS_INFO.STOPPED_BY_USER);
        }
    };

    Stream.prototype._tellServerStop = function () {
        return this._session._send(this._published ? 'unPublishStream' : 'stopStream',
            {mediaSessionId: this._id, name: this._name});
    };

    Stream.prototype._isActive = function () {
        return this._started && !isFinal(this._status);
    };

    /** Moves to a final status once: closes the peer connection, releases media, fires. */
    Stream.prototype._finish = function (status, info) {
        if (isFinal(this._status)) return;
        clearTimeout(this._stopTimer);
        this._release();
        this._removeVideo();
        this._info = info || '';
        this._setStatus(status, true);
    };

    Stream.prototype._release = function () {
        if (this._pc) {
            try { this._pc.close(); } catch (e) { /* already closed */ }
            this._pc = null;
        }
        stopTracks(this._localMedia);
        this._localMedia = null;
    };

    Stream.prototype._attachVideo = function (local, media) {
        if (!this._video) this._video = videoFor(this._display, this, local);
        if (this._video && this._video.srcObject !== media) this._video.srcObject = media;
        if (this._video && local) startVideo(this._video);
        return this._video;
    };

    Stream.prototype._removeVideo = function () {
        var v = this._video;
        if (!v) return;
        v.srcObject = null;
        if (v !== this._display && v.parentNode) v.parentNode.removeChild(v);
        this._video = null;
        this._remoteMedia = null;
    };

    Stream.prototype._setStatus = function (status, force) {
        if (this._status === status && !force) return;
        this._status = status;
        this._fire(status);
    };

    Stream.prototype._fire = function (event) {
        var cb = this._callbacks[event];
        if (!cb) return;
        try {
            cb(this);
        } catch (e) {
            console.error('[relaycast] stream ' + event + ' callback threw', e);
        }
    };

    // Media controls. Volume is 0..100 as in the official SDK.

    Stream.prototype.setVolume = function (volume) {
        if (this._video) this._video.volume = Math.max(0, Math.min(100, Number(volume))) / 100;
    };
    Stream.prototype.getVolume = function () {
        return this._video ? Math.round(this._video.volume * 100) : 0;
    };
    Stream.prototype.muteRemoteAudio = function () { if (this._video) this._video.muted = true; };
    Stream.prototype.unmuteRemoteAudio = function () {
        if (this._video) {
            this._video.muted = false;
            startVideo(this._video);
        }
    };
    Stream.prototype.isRemoteAudioMuted = function () { return this._video ? this._video.muted : true; };

    function setEnabled(media, kind, enabled) {
        if (!media) return;
        var tracks = kind === 'audio' ? media.getAudioTracks() : media.getVideoTracks();
        tracks.forEach(function (t) { t.enabled = enabled; });
    }
    function allDisabled(media, kind) {
        if (!media) return false;
        var tracks = kind === 'audio' ? media.getAudioTracks() : media.getVideoTracks();
        return tracks.length > 0 && tracks.every(function (t) { return !t.enabled; });
    }
    function muter(kind, enabled, type) {
        return function () {
            if (!this._localMedia) return;
            setEnabled(this._localMedia, kind, enabled);
            this._sendStreamEvent(type);
        };
    }
    Stream.prototype.muteAudio = muter('audio', false, STREAM_EVENT_TYPE.AUDIO_MUTED);
    Stream.prototype.unmuteAudio = muter('audio', true, STREAM_EVENT_TYPE.AUDIO_UNMUTED);
    Stream.prototype.isAudioMuted = function () { return allDisabled(this._localMedia, 'audio'); };
    Stream.prototype.muteVideo = muter('video', false, STREAM_EVENT_TYPE.VIDEO_MUTED);
    Stream.prototype.unmuteVideo = muter('video', true, STREAM_EVENT_TYPE.VIDEO_UNMUTED);
    Stream.prototype.isVideoMuted = function () { return allDisabled(this._localMedia, 'video'); };

    Stream.prototype.fullScreen = function () {
        var el = this._display || this._video;
        if (el && el.requestFullscreen) el.requestFullscreen().catch(function () {});
    };

    /** {width, height} of the picture being shown (or announced by the server). */
    Stream.prototype.videoResolution = function () {
        var v = this._video;
        if (v && v.videoWidth) return {width: v.videoWidth, height: v.videoHeight};
        return {width: this._width, height: this._height};
    };

    /**
     * Calls callback with a summary of the peer connection's statistics:
     * {timestamp, inboundStream: {audio, video}, outboundStream: {audio, video}}, each
     * entry holding the RTP counters and the codec. With nativeStats true the browser's
     * RTCStatsReport is passed instead. Also returns a promise of the same value.
     */
    Stream.prototype.getStats = function (callback, nativeStats) {
        var cb = typeof callback === 'function' ? callback : function () {};
        if (!this._pc) {
            cb(null);
            return Promise.resolve(null);
        }
        return this._pc.getStats().then(function (report) {
            var result = nativeStats ? report : summarizeStats(report);
            cb(result);
            return result;
        });
    };

    function summarizeStats(report) {
        var codecs = {};
        var result = {timestamp: Date.now(), type: 'relaycast', inboundStream: {}, outboundStream: {}};
        report.forEach(function (s) {
            if (s.type === 'codec') codecs[s.id] = s.mimeType;
        });
        var fields = [
            'ssrc', 'bytesSent', 'packetsSent', 'bytesReceived', 'packetsReceived', 'packetsLost',
            'jitter', 'framesEncoded', 'framesDecoded', 'framesSent', 'framesReceived',
            'framesPerSecond', 'frameWidth', 'frameHeight', 'nackCount', 'pliCount', 'firCount',
            'keyFramesDecoded', 'keyFramesEncoded', 'qualityLimitationReason',
        ];
        report.forEach(function (s) {
            if (s.type !== 'inbound-rtp' && s.type !== 'outbound-rtp') return;
            var kind = s.kind || s.mediaType;
            var entry = {codec: (codecs[s.codecId] || '').replace(/^(audio|video)\//, '')};
            fields.forEach(function (f) { if (s[f] !== undefined) entry[f] = s[f]; });
            (s.type === 'inbound-rtp' ? result.inboundStream : result.outboundStream)[kind] = entry;
        });
        return result;
    }

    // ------------------------------------------------------------- local media

    /**
     * getUserMedia with SDK-style constraints; `video.type: "screen"` asks for screen
     * sharing instead of a camera.
     */
    function getLocalMedia(constraints) {
        var md = navigator.mediaDevices;
        if (!md || !md.getUserMedia) {
            return Promise.reject(new Error(
                'Camera and microphone need a secure context (https:// or localhost)'));
        }
        var audio = constraints.audio === undefined ? true : constraints.audio;
        var video = constraints.video === undefined ? true : constraints.video;
        if (video && typeof video === 'object') {
            video = Object.assign({}, video);
            var screen = video.type === 'screen';
            delete video.type;
            delete video.mediaSource;
            if (screen) {
                return md.getDisplayMedia({video: video}).then(function (display) {
                    if (!audio) return display;
                    return md.getUserMedia({audio: audio}).then(function (mic) {
                        mic.getAudioTracks().forEach(function (t) { display.addTrack(t); });
                        return display;
                    });
                });
            }
        }
        if (!audio && !video) return Promise.reject(new Error('Nothing to publish: no audio, no video'));
        return md.getUserMedia({audio: audio, video: video});
    }

    // ------------------------------------------------------------ the namespace

    var Flashphoner = {
        version: 'relaycast-1',

        constants: Object.freeze({
            SESSION_STATUS: SESSION_STATUS,
            STREAM_STATUS: STREAM_STATUS,
            STREAM_STATUS_INFO: STREAM_STATUS_INFO,
            STREAM_EVENT: STREAM_EVENT,
            STREAM_EVENT_TYPE: STREAM_EVENT_TYPE,
            MEDIA_PROVIDERS: names(['WebRTC']),
        }),

        /** Global options; only `constraints` (default local media) is used. */
        init: function (options) {
            if (options && options.constraints) defaults.constraints = options.constraints;
        },

        /** Opens a session to options.urlServer (ws:// or wss://). */
        createSession: function (options) {
            if (!options || !options.urlServer) throw new TypeError('options.urlServer must be provided');
            return new Session(options);
        },

        getSessions: function () {
            return Object.keys(sessions).map(function (id) { return sessions[id]; });
        },
        getSession: function (id) { return sessions[id]; },
        getMediaProviders: function () { return [MEDIA_PROVIDER]; },

        /** Lists cameras and microphones as {audio: [...], video: [...]} of {id, label, type}. */
        getMediaDevices: function () {
            return navigator.mediaDevices.enumerateDevices().then(function (devices) {
                var list = {audio: [], video: []};
                devices.forEach(function (d) {
                    if (d.kind === 'audioinput') list.audio.push({id: d.deviceId, label: d.label, type: 'mic'});
                    if (d.kind === 'videoinput') list.video.push({id: d.deviceId, label: d.label, type: 'camera'});
                });
                return list;
            });
        },

        /** Shows local media in display without publishing (a preview). */
        getMediaAccess: function (constraints, display) {
            return getLocalMedia(constraints || defaults.constraints).then(function (media) {
                var fake = {id: function () { return 'preview'; }};
                var v = videoFor(display, fake, true);
                v.srcObject = media;
                startVideo(v);
                return display;
            });
        },

        /** Releases media shown by getMediaAccess. */
        releaseLocalMedia: function (display) {
            var v = display && (display.tagName === 'VIDEO' ? display : display.querySelector('video[data-relaycast]'));
            if (!v || !v.srcObject) return false;
            stopTracks(v.srcObject);
            v.srcObject = null;
            if (v !== display && v.parentNode) v.parentNode.removeChild(v);
            return true;
        },

        // Safari helpers of the official SDK; nothing to do here.
        playFirstSound: function () {},
        playFirstVideo: function () { return Promise.resolve(); },

        Browser: {
            isChrome: function () { return /Chrome\//.test(navigator.userAgent) && !/Edg\//.test(navigator.userAgent); },
            isFirefox: function () { return /Firefox\//.test(navigator.userAgent); },
            isSafari: function () { return /^((?!chrome|android).)*safari/i.test(navigator.userAgent); },
            isAndroid: function () { return /Android/.test(navigator.userAgent); },
            isiOS: function () { return /iPad|iPhone|iPod/.test(navigator.userAgent); },
            isChromiumEdge: function () { return /Edg\//.test(navigator.userAgent); },
        },

        // Exposed for tests and tools.
        _stripCodecs: stripCodecs,
    };

    global.Flashphoner = Flashphoner;
})(typeof window !== 'undefined' ? window : this);
