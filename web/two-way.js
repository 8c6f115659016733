/*
 * two-way.js: the Two Way Streaming page. Connect a session, publish the camera under
 * one name, play any name. Uses only WebSDK calls the official Flashphoner SDK also has,
 * so `?sdk=flashphoner.js` runs the same page on the official SDK.
 *
 * Status labels (#sessionStatus, #publishStatus, #playStatus) hold exactly the SDK's
 * status word; the accompanying info goes to #sessionInfo, #publishInfo, #playInfo.
 * While publishing, the Mute boxes and Send data reach the stream's players (stream
 * events); the Play panel shows the publisher's mute state (#playMuted), the last data it
 * sent (#receivedData), and asks whether the play name is available (#availableStatus
 * AVAILABLE or UNAVAILABLE, the reason in #availableInfo).
 * Query parameters: urlServer, publishName, playName, sdk.
 * For tests, window.twoWay exposes {session, publishStream, playStream}.
 */
(function () {
    'use strict';

    var $ = RC.$;
    var state = {session: null, publishStream: null, playStream: null};
    window.twoWay = state;

    ['navTwoWay', 'navPlayer', 'navRelay', 'navHome'].forEach(function (id) {
        $(id).href = RC.keepSdk($(id).getAttribute('href'));
    });

    // Default names: a random publish name; the play name follows it until edited.
    var randomName = 'stream-' + Math.random().toString(16).slice(2, 8);
    $('publishName').value = RC.param('publishName') || randomName;
    $('playName').value = RC.param('playName') || $('publishName').value;
    var playNameEdited = !!RC.param('playName');
    $('playName').addEventListener('input', function () { playNameEdited = true; });
    $('publishName').addEventListener('input', function () {
        if (!playNameEdited) $('playName').value = $('publishName').value;
    });

    RC.initUrlField($('url'));
    RC.loadSdk(start);

    function start(Flashphoner) {
        var SESSION_STATUS = Flashphoner.constants.SESSION_STATUS;
        var STREAM_STATUS = Flashphoner.constants.STREAM_STATUS;

        $('connectBtn').disabled = false;
        $('connectBtn').onclick = onConnectClick;
        $('publishBtn').onclick = onPublishClick;
        $('playBtn').onclick = onPlayClick;
        $('availableBtn').onclick = onAvailableClick;
        $('sendDataBtn').onclick = onSendDataClick;
        $('muteAudio').onchange = function () { mute('Audio', $('muteAudio').checked); };
        $('muteVideo').onchange = function () { mute('Video', $('muteVideo').checked); };
        RC.watchVideoSize($('remoteVideo'), function (size) {
            if (state.playStream) RC.setText('playResolution', size.width + 'x' + size.height);
        });

        // ----------------------------------------------------------- session

        function sessionUp() {
            return state.session && state.session.status() === SESSION_STATUS.ESTABLISHED;
        }

        function onConnectClick() {
            if ($('connectBtn').dataset.action === 'disconnect') {
                $('connectBtn').disabled = true;
                if (state.session) state.session.disconnect();
                return;
            }
            var url = $('url').value.trim();
            if (!url) {
                showSession('FAILED', 'Server URL is empty');
                return;
            }
            setButton('connectBtn', 'disconnect', 'Disconnect');
            showSession('', '');
            var session;
            try {
                session = Flashphoner.createSession({urlServer: url});
            } catch (e) {
                setButton('connectBtn', 'connect', 'Connect');
                showSession(SESSION_STATUS.FAILED, e.message);
                return;
            }
            state.session = session;
            showSession(session.status(), '');
            session.on(SESSION_STATUS.CONNECTED, function () {
                if (state.session === session) showSession(SESSION_STATUS.CONNECTED, '');
            }).on(SESSION_STATUS.ESTABLISHED, function () {
                if (state.session !== session) return;
                showSession(SESSION_STATUS.ESTABLISHED, '');
                $('connectBtn').disabled = false;
                $('publishBtn').disabled = false;
                $('playBtn').disabled = false;
                $('availableBtn').disabled = false;
            }).on(SESSION_STATUS.DISCONNECTED, function () {
                sessionEnded(session, SESSION_STATUS.DISCONNECTED);
            }).on(SESSION_STATUS.FAILED, function () {
                sessionEnded(session, SESSION_STATUS.FAILED);
            }).on(SESSION_STATUS.WARN, function (e) {
                // A request the server refused without naming a stream.
                if (state.session === session) RC.setText('sessionInfo', (e && e.info) || '');
            });
        }

        function sessionEnded(session, status) {
            if (state.session !== session) return;
            var info = typeof session.getInfo === 'function' ? session.getInfo() : '';
            showSession(status, info);
            setButton('connectBtn', 'connect', 'Connect');
            $('connectBtn').disabled = false;
            setButton('publishBtn', 'publish', 'Publish');
            setButton('playBtn', 'play', 'Play');
            $('publishBtn').disabled = true;
            $('playBtn').disabled = true;
            $('availableBtn').disabled = true;
            publishControls(false);
        }

        function showSession(status, info) {
            showStatus('sessionStatus', 'sessionInfo', status, info);
        }

        // ----------------------------------------------------------- publish

        function onPublishClick() {
            if ($('publishBtn').dataset.action === 'stop') {
                if (state.publishStream) state.publishStream.stop();
                $('publishBtn').disabled = true;
                return;
            }
            if (!sessionUp()) return;
            var name = $('publishName').value.trim();
            if (!name) {
                showStatus('publishStatus', 'publishInfo', STREAM_STATUS.FAILED, 'Stream name is empty');
                return;
            }
            var options = {name: name, display: $('localVideo')};
            var strip = $('publishStripCodecs').value.trim();
            if (strip) options.stripCodecs = strip;
            var audio = $('publishAudio').checked;
            var video = $('publishVideo').checked;
            if (!audio || !video) options.constraints = {audio: audio, video: video};

            var stream = state.session.createStream(options);
            state.publishStream = stream;
            RC.setText('publishId', stream.id());
            showStatus('publishStatus', 'publishInfo', stream.status(), '');
            setButton('publishBtn', 'stop', 'Stop');

            var show = function (s) {
                if (state.publishStream !== s) return;
                showStatus('publishStatus', 'publishInfo', s.status(), s.getInfo());
            };
            var ended = function (s) {
                if (state.publishStream !== s) return;
                show(s);
                publishControls(false);
                setButton('publishBtn', 'publish', 'Publish');
                $('publishBtn').disabled = !sessionUp();
            };
            stream.on(STREAM_STATUS.PENDING, show)
                .on(STREAM_STATUS.PUBLISHING, function (s) {
                    show(s);
                    if (state.publishStream === s) publishControls(true);
                })
                .on(STREAM_STATUS.UNPUBLISHED, ended)
                .on(STREAM_STATUS.STOPPED, ended)
                .on(STREAM_STATUS.FAILED, ended);
            stream.publish();
        }

        // -------------------------------------------------------------- play

        function onPlayClick() {
            if ($('playBtn').dataset.action === 'stop') {
                if (state.playStream) state.playStream.stop();
                $('playBtn').disabled = true;
                return;
            }
            if (!sessionUp()) return;
            var name = $('playName').value.trim();
            if (!name) {
                showStatus('playStatus', 'playInfo', STREAM_STATUS.FAILED, 'Stream name is empty');
                return;
            }
            var options = {name: name, display: $('remoteVideo')};
            var strip = $('playStripCodecs').value.trim();
            if (strip) options.stripCodecs = strip;

            var stream = state.session.createStream(options);
            state.playStream = stream;
            RC.setText('playId', stream.id());
            RC.setText('playResolution', '');
            RC.setText('playMuted', '');
            RC.setText('receivedData', '');
            showStatus('playStatus', 'playInfo', stream.status(), '');
            setButton('playBtn', 'stop', 'Stop');

            var show = function (s) {
                if (state.playStream !== s) return;
                showStatus('playStatus', 'playInfo', s.status(), s.getInfo());
            };
            var ended = function (s) {
                if (state.playStream !== s) return;
                show(s);
                setButton('playBtn', 'play', 'Play');
                $('playBtn').disabled = !sessionUp();
            };
            var resized = function (s) {
                if (state.playStream !== s) return;
                var text = RC.resolutionText(s, $('remoteVideo'));
                if (text) RC.setText('playResolution', text);
            };
            var current = function (f) {
                return function (x) { if (state.playStream === stream) f(x); };
            };
            var playing = RC.followPublisher(Flashphoner, stream,
                current(function (text) { RC.setText('playMuted', text); }),
                current(function (payload) { RC.setText('receivedData', JSON.stringify(payload)); }));
            stream.on(STREAM_STATUS.PENDING, show)
                .on(STREAM_STATUS.PLAYING, function (s) {
                    show(s);
                    if (state.playStream !== s) return;
                    playing(s);
                    setTimeout(function () { resized(s); }, 1000);
                })
                .on(STREAM_STATUS.RESIZE, resized)
                .on(STREAM_STATUS.UNPUBLISHED, ended)
                .on(STREAM_STATUS.STOPPED, ended)
                .on(STREAM_STATUS.FAILED, ended);
            stream.play();
        }

        // ------------------------------------------- stream events, availability

        function publishControls(on) {
            ['muteAudio', 'muteVideo', 'sendDataBtn'].forEach(function (id) { $(id).disabled = !on; });
            if (!on) {
                $('muteAudio').checked = false;
                $('muteVideo').checked = false;
            }
        }

        function mute(kind, on) {
            var s = state.publishStream;
            if (s) s[(on ? 'mute' : 'unmute') + kind]();
        }

        function onSendDataClick() {
            var s = state.publishStream;
            if (!s) return;
            var payload;
            try {
                payload = JSON.parse($('sendData').value);
            } catch (e) {
                RC.setText('publishInfo', 'Send data: not JSON (' + e.message + ')');
                return;
            }
            try {
                s.sendData(payload);
            } catch (e) {
                RC.setText('publishInfo', 'Send data: ' + e.message);
            }
        }

        function onAvailableClick() {
            if (!sessionUp()) return;
            var name = $('playName').value.trim();
            if (!name) return;
            showStatus('availableStatus', 'availableInfo', '', '');
            // A stream object only to ask: it is never played.
            var probe = state.session.createStream({name: name, display: document.createElement('div')});
            probe.available().then(function () {
                showStatus('availableStatus', 'availableInfo', 'AVAILABLE', '');
            }, function (s) {
                showStatus('availableStatus', 'availableInfo', 'UNAVAILABLE', (s && s.getInfo()) || '');
            });
        }
    }

    // ------------------------------------------------------------ helpers

    /** Puts a status word in its label (data-status drives the colour) and the info beside it. */
    function showStatus(statusId, infoId, status, info) {
        var el = $(statusId);
        el.textContent = status || '';
        el.setAttribute('data-status', status || '');
        RC.setText(infoId, info || '');
    }

    /** A toggle button: data-action says what the next click does. */
    function setButton(id, action, label) {
        var b = $(id);
        b.dataset.action = action;
        b.textContent = label;
        b.disabled = false;
    }
})();
