/*
 * common.js: helpers shared by the relaycast web apps (no SDK code here).
 *
 * - RC.loadSdk(start): loads the WebSDK, then calls start(). The SDK is relaycast.js
 *   unless the page URL says otherwise: `?sdk=flashphoner.js` loads the official
 *   Flashphoner WebSDK bundle instead (a same-origin relative path; anything that could
 *   name another host is refused), so the same page runs on either SDK.
 * - RC.serverInfo(), RC.rest(path, body): REST calls to the server serving the page.
 * - RC.defaultWsUrl(info): the signalling URL of the server serving the page.
 * - RC.watchVideoSize(container, cb), RC.resolutionText(stream, container): the size of
 *   the picture an SDK-created <video> shows.
 */
(function (global) {
    'use strict';

    var DEFAULT_SDK = 'relaycast.js';
    // Relative (or root-relative) path of .js file: no scheme, no "//host".
    var SAFE_SDK = /^\/?[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*\.js$/;

    var RC = {};

    /** The value of a query-string parameter, or null. */
    RC.param = function (name) {
        return new URLSearchParams(global.location.search).get(name);
    };

    /** Element by id. */
    RC.$ = function (id) { return document.getElementById(id); };

    /** Sets an element's text (by id or element). */
    RC.setText = function (idOrEl, text) {
        var el = typeof idOrEl === 'string' ? RC.$(idOrEl) : idOrEl;
        if (el) el.textContent = text === undefined || text === null ? '' : String(text);
    };

    /** Shows (or clears, with an empty message) a page-level error banner. */
    RC.banner = function (message) {
        var el = RC.$('banner');
        if (!el) {
            if (!message) return;
            el = document.createElement('div');
            el.id = 'banner';
            el.className = 'banner error';
            document.body.insertBefore(el, document.body.firstChild);
        }
        el.textContent = message || '';
        el.hidden = !message;
    };

    /** The SDK script this page should load (see the header). */
    RC.sdkSource = function () {
        var wanted = RC.param('sdk');
        if (!wanted) return DEFAULT_SDK;
        if (!SAFE_SDK.test(wanted)) {
            RC.banner('Ignoring sdk=' + wanted + ': only a same-origin .js path is accepted');
            return DEFAULT_SDK;
        }
        return wanted;
    };

    /** Loads the SDK with a script tag, initializes it and calls start() once. */
    RC.loadSdk = function (start) {
        var src = RC.sdkSource();
        var script = document.createElement('script');
        script.id = 'sdkScript';
        script.src = src;
        script.onload = function () {
            if (!global.Flashphoner) {
                RC.banner(src + ' loaded but defines no Flashphoner object');
                return;
            }
            try {
                global.Flashphoner.init({});
            } catch (e) {
                RC.banner('Flashphoner.init failed: ' + e.message);
                return;
            }
            document.documentElement.setAttribute('data-sdk', src);
            RC.setText('sdkName', src);
            start(global.Flashphoner);
        };
        script.onerror = function () { RC.banner('Could not load the WebSDK from ' + src); };
        document.head.appendChild(script);
    };

    /** Appends the current ?sdk= choice to a link so the choice follows navigation. */
    RC.keepSdk = function (href) {
        var sdk = RC.param('sdk');
        if (!sdk) return href;
        return href + (href.indexOf('?') === -1 ? '?' : '&') + 'sdk=' + encodeURIComponent(sdk);
    };

    /**
     * Calls a REST method. Resolves to {ok, status, data, error}: data is the parsed JSON
     * body (or null), error a readable message when !ok (from the server's
     * {error, status} body when it sent one). Never rejects.
     */
    RC.rest = function (path, body, method) {
        var init = {method: method || 'POST', headers: {}};
        if (init.method === 'POST') {
            init.headers['Content-Type'] = 'application/json';
            init.body = JSON.stringify(body === undefined ? {} : body);
        }
        return fetch(path, init).then(function (resp) {
            return resp.text().then(function (text) {
                var data = null;
                try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
                var result = {ok: resp.ok, status: resp.status, data: data, error: ''};
                if (!resp.ok) {
                    var detail = data && data.error ? data.error : (text || resp.statusText);
                    result.error = resp.status + ' ' + (resp.statusText || '') + ': ' + detail;
                }
                return result;
            });
        }, function (e) {
            return {ok: false, status: 0, data: null, error: 'Network error: ' + e.message};
        });
    };

    /** GET /rest-api/server/info; resolves to the info object or null. */
    RC.serverInfo = function () {
        return RC.rest('/rest-api/server/info', undefined, 'GET').then(function (r) {
            return r.ok && r.data ? r.data : null;
        });
    };

    /**
     * The signalling URL of this server: ws://host:wsPort/ (wss://host:8443/ when the page
     * came over https, or wssPort if the server reports one).
     */
    RC.defaultWsUrl = function (info) {
        var host = global.location.hostname || 'localhost';
        if (host.indexOf(':') !== -1) host = '[' + host + ']';   // IPv6 literal
        if (global.location.protocol === 'https:') {
            return 'wss://' + host + ':' + ((info && info.wssPort) || 8443) + '/';
        }
        return 'ws://' + host + ':' + ((info && info.wsPort) || 8080) + '/';
    };

    /**
     * Fills a URL input: ?urlServer= wins; otherwise the default now and the server's
     * reported port once /rest-api/server/info answers, unless the user typed meanwhile.
     */
    RC.initUrlField = function (input) {
        var fromQuery = RC.param('urlServer');
        if (fromQuery) {
            input.value = fromQuery;
            return;
        }
        var edited = false;
        input.addEventListener('input', function () { edited = true; });
        input.value = RC.defaultWsUrl(null);
        RC.serverInfo().then(function (info) {
            if (info && !edited) input.value = RC.defaultWsUrl(info);
        });
    };

    /**
     * Calls callback({width, height}) whenever a <video> inside `container` (created by the
     * SDK, possibly later) learns or changes its picture size. Media events do not bubble,
     * so this listens in the capture phase. The official SDK's stream.videoResolution()
     * only knows what the server announces in `resize` stream events; this is what is shown.
     */
    RC.watchVideoSize = function (container, callback) {
        var report = function (e) {
            var v = e.target;
            if (v && v.tagName === 'VIDEO' && v.videoWidth) {
                callback({width: v.videoWidth, height: v.videoHeight});
            }
        };
        container.addEventListener('loadedmetadata', report, true);
        container.addEventListener('resize', report, true);
    };

    /** "WxH" of the stream's announced resolution, else of the picture in `container`. */
    RC.resolutionText = function (stream, container) {
        var r = null;
        try {
            if (stream && typeof stream.videoResolution === 'function') r = stream.videoResolution();
        } catch (e) {
            r = null;
        }
        if (!r || !r.width) {
            var v = container && container.querySelector('video');
            r = v && v.videoWidth ? {width: v.videoWidth, height: v.videoHeight} : null;
        }
        return r && r.width ? r.width + 'x' + r.height : '';
    };

    /**
     * Follows the publisher of a played `stream`: its mute state, from getAudioState() and
     * getVideoState() at PLAYING and the STREAM_EVENTs after it, goes to `onMute` as text
     * ("audio on, video muted"); its sendData payloads go to `onData`. Returns the function
     * the page's PLAYING handler calls with the stream.
     */
    RC.followPublisher = function (Flashphoner, stream, onMute, onData) {
        var EVENT = Flashphoner.constants.STREAM_EVENT_TYPE;
        var muted = {audio: false, video: false};
        var show = function () {
            onMute('audio ' + (muted.audio ? 'muted' : 'on') + ', video ' + (muted.video ? 'muted' : 'on'));
        };
        stream.on(Flashphoner.constants.STREAM_EVENT, function (e) {
            switch (e.type) {
            case EVENT.AUDIO_MUTED: muted.audio = true; break;
            case EVENT.AUDIO_UNMUTED: muted.audio = false; break;
            case EVENT.VIDEO_MUTED: muted.video = true; break;
            case EVENT.VIDEO_UNMUTED: muted.video = false; break;
            case EVENT.DATA: if (onData) onData(e.payload); return;
            default: return;
            }
            show();
        });
        return function (s) {
            muted.audio = !!(s.getAudioState() && s.getAudioState().muted);
            muted.video = !!(s.getVideoState() && s.getVideoState().muted);
            show();
        };
    };

    global.RC = RC;
})(window);
