#!/usr/bin/env python3
"""Interop with an independent WebRTC stack: aiortc (Python) publishes to and plays from
real relaycast servers over the WCS WebSocket protocol, as the WebSDK would.

Checks, for VP8 and H264: aiortc publishes (PUBLISHING), another aiortc peer plays
(PLAYING) and decodes video frames and audio frames; the same through a push relay to a
second server; then unPublishStream gives UNPUBLISHED and the player STOPPED. And an aiortc
player of a relaycast-loadgen publisher, whose frames the server pads to one packet size
for UDP GSO, takes the padded packets as media (libsrtp and aiortc's RTP parser).

Run: python3 tests/interop/aiortc_interop.py  (needs `pip install aiortc websockets`;
RELAYCAST_BIN names the server binary, default target/debug/relaycast, and
RELAYCAST_LOADGEN the loadgen's, default relaycast-loadgen beside the server binary)."""

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from aiortc.rtp import RtpPacket
import websockets

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("RELAYCAST_BIN", str(ROOT / "target" / "debug" / "relaycast"))
# Beside the server binary unless named (scripts/test sets RELAYCAST_BIN under a
# CARGO_TARGET_DIR).
LOADGEN = os.environ.get("RELAYCAST_LOADGEN", str(Path(BIN).parent / "relaycast-loadgen"))


class Server:
    def __init__(self, name):
        log_dir = ROOT / "target" / "interop"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self.proc = subprocess.Popen(
            [BIN, "--ws-port", "0", "--rest-port", "0", "--media-port-base", "0",
             "--bind", "127.0.0.1", "--cores", "2"],
            stdout=subprocess.PIPE, stderr=open(self.log_path, "w"), text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("relaycast ready "):
            raise RuntimeError(f"{name} did not start: {line!r}; see {self.log_path}")
        fields = dict(f.split("=", 1) for f in line.split()[2:])
        self.ws = f"ws://{fields['ws']}/"
        self.rest = f"http://{fields['rest']}"

    def post(self, path, body):
        req = urllib.request.Request(self.rest + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Session:
    """A WCS signalling session: connection/getUserData, then streams by mediaSessionId."""

    async def open(self, url):
        self.ws = await websockets.connect(url)
        self.queues = {}
        await self.send("connection", {"appKey": "defaultApp", "mediaProviders": ["WebRTC"],
                                       "clientVersion": "2.0", "keepAlive": False})
        while True:
            msg = json.loads(await self.ws.recv())
            if msg["message"] == "getUserData":
                break
        self.reader = asyncio.ensure_future(self.read())
        return self

    async def send(self, message, obj):
        await self.ws.send(json.dumps({"message": message, "data": [obj]}))

    async def read(self):
        async for text in self.ws:
            msg = json.loads(text)
            name, data = msg["message"], msg.get("data") or []
            if name == "ping":
                await self.ws.send(json.dumps({"message": "pong", "data": [None]}))
            elif name == "setRemoteSDP":
                self.queue(data[0]).put_nowait(("sdp", data[1]))
            elif name == "notifyStreamStatusEvent":
                self.queue(data[0]["mediaSessionId"]).put_nowait(("status", data[0]))

    def queue(self, msid):
        return self.queues.setdefault(msid, asyncio.Queue())

    async def expect(self, msid, kind, status=None, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            what, value = await asyncio.wait_for(self.queue(msid).get(), max(left, 0.01))
            if what == kind == "sdp":
                return value
            if what == kind == "status":
                if value["status"] == status:
                    return value
                if value["status"] in ("FAILED", "STOPPED", "UNPUBLISHED"):
                    raise AssertionError(f"expected {status}, got {value}")

    async def close(self):
        self.reader.cancel()
        await self.ws.close()


def prefer(pc, kind, mime):
    for t in pc.getTransceivers():
        if t.kind == kind:
            codecs = [c for c in RTCRtpSender.getCapabilities(kind).codecs
                      if c.mimeType == mime or c.mimeType == "video/rtx"]
            t.setCodecPreferences(codecs)


async def publish(session, name, codec):
    pc = RTCPeerConnection()
    pc.addTrack(AudioStreamTrack())
    pc.addTrack(VideoStreamTrack())
    prefer(pc, "video", codec)
    await pc.setLocalDescription(await pc.createOffer())
    msid = str(uuid.uuid4())
    await session.send("publishStream", {
        "mediaSessionId": msid, "name": name, "published": True, "hasVideo": True,
        "hasAudio": True, "status": "PENDING", "record": False, "mediaProvider": "WebRTC",
        "sdp": pc.localDescription.sdp})
    answer = await session.expect(msid, "sdp")
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await session.expect(msid, "status", "PUBLISHING")
    return pc, msid


class Counter:
    def __init__(self):
        self.frames = {"audio": 0, "video": 0}
        self.size = None

    async def consume(self, track):
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames[track.kind] += 1
            if track.kind == "video":
                self.size = (frame.width, frame.height)


async def play(session, name):
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    counter = Counter()
    pc.on("track", lambda track: asyncio.ensure_future(counter.consume(track)))
    await pc.setLocalDescription(await pc.createOffer())
    msid = str(uuid.uuid4())
    await session.send("playStream", {
        "mediaSessionId": msid, "name": name, "published": False, "hasVideo": True,
        "hasAudio": True, "status": "PENDING", "record": False, "mediaProvider": "WebRTC",
        "sdp": pc.localDescription.sdp})
    answer = await session.expect(msid, "sdp")
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await session.expect(msid, "status", "PLAYING")
    return pc, msid, counter


async def wait_frames(counter, label, video=20, audio=20, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if counter.frames["video"] >= video and counter.frames["audio"] >= audio:
            print(f"  {label}: decoded {counter.frames} size {counter.size}")
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{label}: only {counter.frames} frames in {timeout} s")


async def scenario(a, b, codec):
    label = codec.split("/")[1]
    pub_session = await Session().open(a.ws)
    play_session = await Session().open(a.ws)
    name = f"aiortc-{label}"
    pub_pc, pub_id = await publish(pub_session, name, codec)
    started = time.monotonic()
    play_pc, play_id, counter = await play(play_session, name)
    await wait_frames(counter, f"{label} direct")
    print(f"  {label}: play to 20 video frames {time.monotonic() - started:.2f} s")

    status, relay = a.post("/rest-api/pull/push", {"uri": b.ws, "localStreamName": name})
    assert status == 200 and relay["status"] == "PUBLISHING", (status, relay)
    far_session = await Session().open(b.ws)
    far_pc, far_id, far_counter = await play(far_session, name)
    await wait_frames(far_counter, f"{label} through a push relay")

    await pub_session.send("unPublishStream", {"mediaSessionId": pub_id, "name": name})
    await pub_session.expect(pub_id, "status", "UNPUBLISHED")
    stopped = await play_session.expect(play_id, "status", "STOPPED")
    assert stopped["info"] == "Stopped by publisher stop", stopped
    await far_session.expect(far_id, "status", "STOPPED")
    for pc in (pub_pc, play_pc, far_pc):
        await pc.close()
    for s in (pub_session, play_session, far_session):
        await s.close()


async def padded(a):
    """The loadgen's publisher splits each frame as libwebrtc does (packets a byte apart in
    size, the larger last), so the server pads a frame's packets to one size before sealing
    them. aiortc must take them as media: every one arrives, none is lost, and its RTP
    parser (after libsrtp) sees the padding."""
    name = "aiortc-padded"
    seen = {"padded": 0, "packets": 0}
    parse = RtpPacket.parse.__func__

    def counting(cls, data, *args, **kwargs):
        packet = parse(cls, data, *args, **kwargs)
        seen["packets"] += 1
        seen["padded"] += packet.padding_size > 0
        return packet

    log = open(ROOT / "target" / "interop" / "loadgen-padded.log", "w")
    publisher = subprocess.Popen(
        [LOADGEN, "publish", "--server", a.ws, "--stream", name, "--bitrate", "1500k",
         "--warmup", "0s", "--duration", "20s"],
        stdout=log, stderr=log)
    RtpPacket.parse = classmethod(counting)
    session = await Session().open(a.ws)
    try:
        deadline = time.monotonic() + 10
        while True:
            status, _ = a.post("/rest-api/stream/find", {"name": name})
            if status == 200:
                break
            assert time.monotonic() < deadline, "the loadgen's stream was not published"
            await asyncio.sleep(0.2)
        pc, msid, _ = await play(session, name)
        await asyncio.sleep(4)
        stats = [s for s in (await pc.getStats()).values()
                 if s.type == "inbound-rtp" and s.kind == "video"]
        assert stats, "no inbound video statistics"
        received, lost = stats[0].packetsReceived, stats[0].packetsLost
        print(f"  padded frames: {received} video packets received, {lost} lost, "
              f"{seen['padded']} of {seen['packets']} RTP packets carried padding")
        assert received > 300, f"only {received} video packets in 4 s"
        assert lost == 0, f"{lost} video packets lost"
        assert seen["padded"] > 30, f"only {seen['padded']} packets carried padding"
        await pc.close()
    finally:
        RtpPacket.parse = classmethod(parse)
        await session.close()
        publisher.terminate()
        publisher.wait(10)
        log.close()


async def main():
    a, b = Server("a"), Server("b")
    try:
        for codec in ("video/VP8", "video/H264"):
            print(f"aiortc interop, {codec}")
            await scenario(a, b, codec)
        print("aiortc interop, a loadgen publisher's frames padded to one size")
        await padded(a)
    finally:
        a.stop()
        b.stop()
    print("aiortc interop: ok")


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(), 120))
    except Exception as e:  # one clear line, then the details
        print(f"aiortc interop FAILED: {e!r}", file=sys.stderr)
        raise
