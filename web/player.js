/*
 * player.js: the Player page. Start opens a session (or reuses the open one to the same
 * URL) and plays the named stream into #display; Stop stops the stream and keeps the
 * session. #status holds exactly the SDK's status word, #info its info text, and
 * #publisherState the publisher's mute state ("audio on, video muted").
 *
 * Query parameters, as WCS's player takes them: streamName, autoplay=true, urlServer;
 * plus sdk (see common.js). For tests, window.player exposes {session, stream}.
 */
(function () {
    'use strict';

    var $ = RC.$;
    var state = {session: null, stream: null};
    window.player = state;

    ['navTwoWay', 'navPlayer', 'navRelay', 'navHome'].forEach(function (id) {
        $(id).href = RC.keepSdk($(id).getAttribute('href'));
    });

    $('streamName').value = RC.param('streamName') || '';
    RC.initUrlField($('url'));
    RC.loadSdk(start);

    function start(Flashphoner) {
        var SESSION_STATUS = Flashphoner.constants.SESSION_STATUS;
        var STREAM_STATUS = Flashphoner.constants.STREAM_STATUS;

        $('playBtn').disabled = false;
        $('playBtn').onclick = function () {
            if ($('playBtn').dataset.action === 'stop') stopPlayback();
            else startPlayback();
        };
        RC.watchVideoSize($('display'), function (size) {
            if (state.stream) RC.setText('resolution', size.width + 'x' + size.height);
        });
        $('volume').oninput = function () {
            if (state.stream) state.stream.setVolume(Number($('volume').value));
        };
        $('muteBtn').onclick = function () {
            var muted = $('muteBtn').dataset.muted === 'true';
            if (state.stream) {
                if (muted) state.stream.unmuteRemoteAudio();
                else state.stream.muteRemoteAudio();
            }
            showMuted(!muted);
        };
        $('fullScreenBtn').onclick = function () {
            var d = $('display');
            if (document.fullscreenElement) document.exitFullscreen();
            else if (d.requestFullscreen) d.requestFullscreen().catch(function () {});
        };

        // The URL field may still be waiting for /rest-api/server/info: let it answer first.
        if (RC.param('autoplay') === 'true' && $('streamName').value) {
            RC.serverInfo().then(function () { setTimeout(startPlayback, 0); });
        }

        function startPlayback() {
            var name = $('streamName').value.trim();
            var url = $('url').value.trim();
            if (!name || !url) {
                showStatus(STREAM_STATUS.FAILED, !name ? 'Stream name is empty' : 'Server URL is empty');
                return;
            }
            setButton('stop', 'Stop');
            var s = state.session;
            if (s && s.status() === SESSION_STATUS.ESTABLISHED && s.getServerUrl() === url) {
                play(s, name);
                return;
            }
            if (s) s.disconnect();
            connect(url, function (session) { play(session, name); });
        }

        function stopPlayback() {
            $('playBtn').disabled = true;
            if (state.stream) {
                state.stream.stop();
            } else {
                // Still connecting: give up on the session.
                if (state.session) state.session.disconnect();
                setButton('start', 'Start');
            }
        }

        function connect(url, onReady) {
            var session;
            try {
                session = Flashphoner.createSession({urlServer: url});
            } catch (e) {
                setButton('start', 'Start');
                showStatus(STREAM_STATUS.FAILED, e.message);
                return;
            }
            state.session = session;
            showSession(session.status());
            session.on(SESSION_STATUS.CONNECTED, function () {
                if (state.session === session) showSession(SESSION_STATUS.CONNECTED);
            }).on(SESSION_STATUS.ESTABLISHED, function () {
                if (state.session !== session) return;
                showSession(SESSION_STATUS.ESTABLISHED);
                onReady(session);
            }).on(SESSION_STATUS.DISCONNECTED, function () {
                sessionEnded(session, SESSION_STATUS.DISCONNECTED);
            }).on(SESSION_STATUS.FAILED, function () {
                sessionEnded(session, SESSION_STATUS.FAILED);
            });
        }

        function sessionEnded(session, status) {
            if (state.session !== session) return;
            showSession(status);
            state.session = null;
            var info = typeof session.getInfo === 'function' ? session.getInfo() : '';
            // A session that failed before playback began: say so on the status line.
            if (status === SESSION_STATUS.FAILED && !state.stream) {
                showStatus(SESSION_STATUS.FAILED, 'Connection failed' + (info ? ': ' + info : ''));
            }
            setButton('start', 'Start');
        }

        function play(session, name) {
            var stream = session.createStream({name: name, display: $('display')});
            state.stream = stream;
            RC.setText('resolution', '');
            RC.setText('publisherState', '');
            showStatus(stream.status(), '');
            var playing = RC.followPublisher(Flashphoner, stream, function (text) {
                if (state.stream === stream) RC.setText('publisherState', text);
            });
            var show = function (s) {
                if (state.stream === s) showStatus(s.status(), s.getInfo());
            };
            var ended = function (s) {
                if (state.stream !== s) return;
                show(s);
                state.stream = null;
                setButton('start', 'Start');
            };
            var resized = function (s) {
                if (state.stream !== s) return;
                var text = RC.resolutionText(s, $('display'));
                if (text) RC.setText('resolution', text);
            };
            stream.on(STREAM_STATUS.PENDING, show)
                .on(STREAM_STATUS.PLAYING, function (s) {
                    show(s);
                    if (state.stream === s) playing(s);
                    s.setVolume(Number($('volume').value));
                    if ($('muteBtn').dataset.muted === 'true') s.muteRemoteAudio();
                    // The browser may have refused sound without a click: show what it did.
                    setTimeout(function () {
                        if (state.stream === s && typeof s.isRemoteAudioMuted === 'function') {
                            showMuted(s.isRemoteAudioMuted());
                        }
                        resized(s);
                    }, 1000);
                })
                .on(STREAM_STATUS.RESIZE, resized)
                .on(STREAM_STATUS.PLAYBACK_PROBLEM, show)
                .on(STREAM_STATUS.STOPPED, ended)
                .on(STREAM_STATUS.UNPUBLISHED, ended)
                .on(STREAM_STATUS.FAILED, ended);
            stream.play();
        }
    }

    // ------------------------------------------------------------ helpers

    function showStatus(status, info) {
        $('status').textContent = status || '';
        $('status').setAttribute('data-status', status || '');
        RC.setText('info', info || '');
    }

    function showSession(status) {
        $('sessionStatus').textContent = status || '';
        $('sessionStatus').setAttribute('data-status', status || '');
    }

    function showMuted(muted) {
        $('muteBtn').dataset.muted = muted ? 'true' : 'false';
        $('muteBtn').textContent = muted ? 'Unmute' : 'Mute';
    }

    function setButton(action, label) {
        var b = $('playBtn');
        b.dataset.action = action;
        b.textContent = label;
        b.disabled = false;
    }
})();
