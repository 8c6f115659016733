/*
 * index.js: the landing page. Shows /rest-api/server/info, refreshed every 2 s, and
 * carries a ?sdk= choice over to the app links.
 */
(function () {
    'use strict';

    var REFRESH_MS = 2000;
    var FIELDS = ['version', 'wsPort', 'restPort', 'cores', 'streams', 'sessions', 'peers'];

    ['twoWayLink', 'playerLink', 'relayLink', 'navTwoWay', 'navPlayer', 'navRelay'].forEach(function (id) {
        var a = RC.$(id);
        a.href = RC.keepSdk(a.getAttribute('href'));
    });

    function show(info) {
        FIELDS.forEach(function (key) {
            var v = info[key];
            // `sessions` may be missing while `connections` is reported: use it.
            if (v === undefined && key === 'sessions') v = info.connections;
            // relaycast reports its peer connections as `mediaSessions` (one per publisher or
            // player).
            if (v === undefined && key === 'peers') v = info.mediaSessions;
            RC.setText(key, v === undefined || v === null ? '—' : v);
        });
        var ports = Array.isArray(info.mediaPorts) ? info.mediaPorts : [];
        RC.setText('mediaPorts', ports.length ? ports.join(', ') : '—');
        RC.setText('wsUrl', RC.defaultWsUrl(info));
    }

    function refresh() {
        RC.rest('/rest-api/server/info', undefined, 'GET').then(function (r) {
            if (r.ok && r.data) {
                RC.setText('infoError', '');
                show(r.data);
            } else {
                RC.setText('infoError', 'GET /rest-api/server/info failed: ' + r.error);
            }
            setTimeout(refresh, REFRESH_MS);
        });
    }

    refresh();
})();
