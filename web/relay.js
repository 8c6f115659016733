/*
 * relay.js: the Relay console. Push and pull forms, the relay table and the live stream
 * table, both refreshed every second over REST. No WebSDK needed.
 *
 * REST: /rest-api/pull/{push,pull,find_all,terminate}, /rest-api/stream/{find_all,terminate}.
 * A 404 from a find_all means "none" and shows an empty table; any other failure shows
 * the server's {error, status} message.
 */
(function () {
    'use strict';

    var $ = RC.$;
    var REFRESH_MS = 1000;
    var lastRelays = null;    // JSON of the last rendered data: re-render only on change,
    var lastStreams = null;   // so a button is never replaced under the pointer.

    ['navTwoWay', 'navPlayer', 'navRelay', 'navHome'].forEach(function (id) {
        $(id).href = RC.keepSdk($(id).getAttribute('href'));
    });

    $('pushForm').addEventListener('submit', function (e) {
        e.preventDefault();
        submit('/rest-api/pull/push', {
            uri: $('pushUri').value,
            localStreamName: $('pushLocalName').value,
            remoteStreamName: $('pushRemoteName').value,
        }, $('pushBtn'));
    });

    $('pullForm').addEventListener('submit', function (e) {
        e.preventDefault();
        submit('/rest-api/pull/pull', {
            uri: $('pullUri').value,
            remoteStreamName: $('pullRemoteName').value,
            localStreamName: $('pullLocalName').value,
        }, $('pullBtn'));
    });

    // Terminate buttons are created per row; one listener handles them all.
    document.addEventListener('click', function (e) {
        var b = e.target.closest('button[data-terminate]');
        if (!b) return;
        if (b.dataset.terminate === 'relay') {
            submit('/rest-api/pull/terminate', {localMediaSessionId: b.dataset.id}, b);
        } else {
            submit('/rest-api/stream/terminate', {mediaSessionId: b.dataset.id}, b);
        }
    });

    refresh();

    // --------------------------------------------------------------- actions

    /** POSTs body (empty strings dropped: the server fills defaults) and reports the result. */
    function submit(path, body, button) {
        var clean = {};
        Object.keys(body).forEach(function (k) {
            var v = typeof body[k] === 'string' ? body[k].trim() : body[k];
            if (v !== '' && v !== undefined) clean[k] = v;
        });
        if (button) button.disabled = true;
        RC.setText('restError', '');
        RC.setText('restResult', '');
        RC.rest(path, clean).then(function (r) {
            if (button) button.disabled = false;
            if (r.ok) {
                RC.setText('restResult', 'POST ' + path + ': ' + r.status + ' OK' +
                    (r.data ? ' ' + JSON.stringify(r.data) : ''));
            } else {
                RC.setText('restError', 'POST ' + path + ' failed: ' + r.error);
            }
            lastRelays = lastStreams = null;   // show the effect at once
        });
    }

    // --------------------------------------------------------------- refresh

    function refresh() {
        Promise.all([
            RC.rest('/rest-api/pull/find_all', {}),
            RC.rest('/rest-api/stream/find_all', {}),
        ]).then(function (results) {
            showRelays(results[0]);
            showStreams(results[1]);
            RC.setText('lastUpdate', 'Last update ' + new Date().toLocaleTimeString());
            setTimeout(refresh, REFRESH_MS);
        });
    }

    /** The list in a find_all answer: 404 is an empty list, a failure is null. */
    function listOf(r, errorId, what) {
        if (r.ok) {
            RC.setText(errorId, '');
            return Array.isArray(r.data) ? r.data : [];
        }
        if (r.status === 404) {
            RC.setText(errorId, '');
            return [];
        }
        RC.setText(errorId, 'POST /rest-api/' + what + '/find_all failed: ' + r.error);
        return null;
    }

    function showRelays(r) {
        var relays = listOf(r, 'relayError', 'pull');
        if (!relays) return;
        var json = JSON.stringify(relays);
        if (json === lastRelays) return;
        lastRelays = json;

        var body = $('relayRows');
        body.textContent = '';
        relays.forEach(function (relay) {
            var tr = document.createElement('tr');
            tr.className = 'relay-row';
            tr.dataset.localMediaSessionId = relay.localMediaSessionId || '';
            cell(tr, 'type', relay.direction || relay.type || '');
            cell(tr, 'uri mono', relay.uri);
            cell(tr, 'localStreamName', relay.localStreamName);
            cell(tr, 'remoteStreamName', relay.remoteStreamName);
            var status = cell(tr, 'status', relay.status);
            status.setAttribute('data-status', relay.status || '');
            cell(tr, 'info', relay.info);
            cell(tr, 'attempts', relay.attempts);
            cell(tr, 'lastError', relay.lastError);
            cell(tr, 'link', linkText(relay.link));
            var actions = cell(tr, 'actions', '');
            if (relay.localMediaSessionId) {
                actions.appendChild(button('Terminate', 'relay', relay.localMediaSessionId, 'terminateBtn'));
            }
            body.appendChild(tr);
        });
        $('relayEmpty').hidden = relays.length > 0;
        RC.setText('relayCount', relays.length ? '(' + relays.length + ')' : '');
    }

    function showStreams(r) {
        var streams = listOf(r, 'streamError', 'stream');
        if (!streams) return;
        var json = JSON.stringify(streams);
        if (json === lastStreams) return;
        lastStreams = json;

        var body = $('streamRows');
        var names = $('liveNames');
        body.textContent = '';
        names.textContent = '';
        streams.forEach(function (s) {
            var tr = document.createElement('tr');
            tr.className = 'stream-row';
            tr.dataset.mediaSessionId = s.mediaSessionId || '';
            cell(tr, 'name', s.name);
            cell(tr, 'role', s.published ? 'publisher' : 'player');
            var status = cell(tr, 'status', s.status);
            status.setAttribute('data-status', s.status || '');
            cell(tr, 'codecs', [s.videoCodec, s.audioCodec].filter(Boolean).join(' / '));
            cell(tr, 'resolution', s.width && s.height ? s.width + 'x' + s.height : '');
            // 0 is what a server that does not measure it reports: show nothing rather than 0.
            cell(tr, 'bitrate', s.bitrate ? s.bitrate : '');
            cell(tr, 'mediaSessionId mono', s.mediaSessionId);
            var actions = cell(tr, 'actions', '');
            if (s.published) {
                var a = document.createElement('a');
                a.href = RC.keepSdk('player.html?streamName=' + encodeURIComponent(s.name) + '&autoplay=true');
                a.target = '_blank';
                a.textContent = 'Play';
                a.style.marginRight = '0.5rem';
                actions.appendChild(a);
                var opt = document.createElement('option');
                opt.value = s.name;
                names.appendChild(opt);
            }
            if (s.mediaSessionId) {
                actions.appendChild(button('Terminate', 'stream', s.mediaSessionId, 'terminateStreamBtn'));
            }
            body.appendChild(tr);
        });
        $('streamEmpty').hidden = streams.length > 0;
        RC.setText('streamCount', streams.length ? '(' + streams.length + ')' : '');
    }

    // --------------------------------------------------------------- helpers

    /** A relay's link (relaycast's `link` object), e.g. "1.6 Mbit/s out, rtt 0.7 ms, loss 0%". */
    function linkText(link) {
        if (!link) return '';
        var parts = [];
        var push = (link.bitrateOut || 0) >= (link.bitrateIn || 0);
        parts.push(rate(push ? link.bitrateOut : link.bitrateIn) + (push ? ' out' : ' in'));
        if (typeof link.rttMs === 'number') parts.push('rtt ' + link.rttMs.toFixed(1) + ' ms');
        if (typeof link.lossPct === 'number') parts.push('loss ' + link.lossPct + '%');
        return parts.join(', ');
    }

    function rate(bits) {
        if (bits >= 1e6) return (bits / 1e6).toFixed(1) + ' Mbit/s';
        return Math.round((bits || 0) / 1e3) + ' kbit/s';
    }

    function cell(tr, className, value) {
        var td = document.createElement('td');
        td.className = className;
        td.textContent = value === undefined || value === null ? '' : String(value);
        tr.appendChild(td);
        return td;
    }

    function button(label, kind, id, className) {
        var b = document.createElement('button');
        b.type = 'button';
        b.className = 'danger small ' + className;
        b.dataset.terminate = kind;
        b.dataset.id = id;
        b.textContent = label;
        return b;
    }
})();
