//! The machine's physical limit for forwarding: what the cheapest possible forward of one
//! 1200-byte SRTP packet costs on one core (one seal per subscriber plus one send), and how
//! long a bare datagram takes across loopback. The criterion bench (`benches/limit.rs`) and
//! the fan-out driver both measure with these functions, so the server's figures can be
//! given as ratios of numbers taken on the same machine in the same run.
//!
//! Each send is measured twice. Once to a bound receiver socket that is never read: once its
//! buffer is full the kernel drops every datagram at the receiving end, after the copy, the
//! route and the loopback hand-off. And once to a receiver that a thread on another CPU reads
//! ([`Drain`]), as the load generator reads the server's datagrams (a sweep every
//! [`READ_SWEEP`]), with UDP GRO on as the loadgen's sockets have it: on loopback the sender's
//! system call also queues each message (a GSO message whole) on the receiving socket, and
//! frees it after the reader's CPU has touched it, work the drop skips.
//! The second is the like-for-like limit for a server whose datagrams all arrive; the first
//! is kept to compare with runs from before it existed.
//!
//! Beside the limit, the send is also measured in a stream's own shape ([`Mmsg::stream`]):
//! video frames as GSO messages and audio as single datagrams, to many receivers. That is
//! what the server's traffic costs the kernel at best, a reference rather than the limit.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

/// Size of every datagram: a typical full video packet after SRTP.
pub const DATAGRAM: usize = 1200;
/// RTP header of the sealed packets (no extensions).
pub const RTP_HEADER: usize = 12;
/// Datagrams per `sendmmsg` call and segments per GSO send.
pub const BATCH: usize = 32;
/// Datagrams of one delta frame of a 1.5 Mbps, 30 fps video stream: what a fan-out can send
/// to one subscriber as one GSO message.
pub const FRAME: usize = 6;

/// Size of an audio datagram after SRTP: the load generator's 160-byte Opus-sized payload
/// with its RTP header, extensions and tag.
pub const AUDIO_DATAGRAM: usize = 200;
/// The messages a server sends per subscriber in the stream's shape, as segments of each:
/// a video frame ([`FRAME`] datagrams, one GSO message) to three audio datagrams out of
/// five, as 30 video frames and 50 audio packets a second. Audio cannot join a frame's GSO
/// message (only its last segment may be shorter), so each is a message of its own.
pub const STREAM_SHAPE: [usize; 8] = [FRAME, 1, 1, FRAME, 1, FRAME, 1, 1];
/// Receivers of the stream-shaped send: as many sockets as players, swept by one reader.
pub const SWEPT_RECEIVERS: usize = 100;

/// How often a [`Drain`] reads its socket: `relaycast-loadgen`'s default `--read-sweep`.
pub const READ_SWEEP: Duration = Duration::from_millis(1);

/// A thread that reads every datagram arriving at a loopback receiver ([`Drain::spawn`]) or
/// at many ([`Drain::sweep`]), as the load generator reads its players' sockets: each until
/// it is empty, then again after [`READ_SWEEP`], never
/// waiting on the socket (a waiting reader would have the sender wake it, which the load
/// generator's sweep spares the server). The sender then pays for queueing each datagram,
/// not only for a drop at a full buffer. Stops (and joins) when dropped.
pub struct Drain {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drain {
    /// Reads `receiver` on a new thread, pinned to `cpu` when given.
    pub fn spawn(receiver: &UdpSocket, cpu: Option<usize>) -> io::Result<Drain> {
        Drain::start(std::slice::from_ref(receiver), false, cpu)
    }

    /// Reads every socket of `receivers` on one new thread as the load generator's sweep
    /// does: a level-triggered epoll set asked, without waiting, which sockets hold
    /// datagrams, each of those emptied, then again after [`READ_SWEEP`]. The epoll set
    /// makes the sender's system call note each arrival (`ep_poll_callback`), as the server's
    /// does for its players' sockets.
    pub fn sweep(receivers: &[UdpSocket], cpu: Option<usize>) -> io::Result<Drain> {
        Drain::start(receivers, true, cpu)
    }

    fn start(receivers: &[UdpSocket], epoll: bool, cpu: Option<usize>) -> io::Result<Drain> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let mut sockets = Vec::with_capacity(receivers.len());
        for receiver in receivers {
            let socket = receiver.try_clone()?;
            socket.set_nonblocking(true)?;
            // The buffer the server's and the loadgen's media sockets ask for (capped by the
            // kernel's rmem_max).
            socket2::SockRef::from(&socket).set_recv_buffer_size(
                relaycast_dataplane::DataPlaneConfig::default().socket_buffer,
            )?;
            // UDP GRO, as the loadgen's media sockets have it: a GSO send arrives as one
            // message instead of one per datagram.
            relaycast_dataplane::udp::enable_udp_gro(&socket)?;
            sockets.push(socket);
        }
        let mut set = if epoll {
            Some(EpollSet::new(&sockets)?)
        } else {
            None
        };
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let received = std::sync::Arc::new(AtomicU64::new(0));
        let (thread_stop, thread_received) = (stop.clone(), received.clone());
        let thread = std::thread::Builder::new()
            .name("limit-drain".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_thread(cpu);
                }
                const N: usize = 64;
                // Room for a whole GRO message in each.
                const SLOT: usize = 65_536;
                let mut buffers = vec![0u8; N * SLOT];
                // SAFETY: iovec and mmsghdr are plain C structs; all-zero is a valid value.
                let mut iovecs = vec![unsafe { zeroed::<libc::iovec>() }; N];
                let mut headers = vec![unsafe { zeroed::<libc::mmsghdr>() }; N];
                let mut ready = Vec::with_capacity(sockets.len());
                while !thread_stop.load(Ordering::Relaxed) {
                    ready.clear();
                    match &mut set {
                        Some(set) => set.ready(&mut ready),
                        None => ready.extend(0..sockets.len()),
                    }
                    for &ready_socket in &ready {
                        let fd = sockets[ready_socket].as_raw_fd();
                        // Until the socket is empty (EAGAIN) or emptied by a short batch.
                        loop {
                            for i in 0..N {
                                iovecs[i] = libc::iovec {
                                    iov_base: buffers[i * SLOT..].as_mut_ptr().cast(),
                                    iov_len: SLOT,
                                };
                                headers[i].msg_hdr.msg_iov = &mut iovecs[i];
                                headers[i].msg_hdr.msg_iovlen = 1;
                            }
                            // SAFETY: every header points into buffers that outlive the call.
                            let n = unsafe {
                                libc::recvmmsg(
                                    fd,
                                    headers.as_mut_ptr(),
                                    N as libc::c_uint,
                                    0,
                                    std::ptr::null_mut(),
                                )
                            };
                            if n > 0 {
                                // The datagrams sent here are at most DATAGRAM bytes, and a
                                // GRO message's are DATAGRAM bytes but the last.
                                let datagrams: usize = headers[..n as usize]
                                    .iter()
                                    .map(|h| (h.msg_len as usize).div_ceil(DATAGRAM).max(1))
                                    .sum();
                                thread_received.fetch_add(datagrams as u64, Ordering::Relaxed);
                            }
                            if n < N as i32 {
                                break;
                            }
                        }
                    }
                    std::thread::sleep(READ_SWEEP);
                }
            })?;
        Ok(Drain {
            stop,
            received,
            thread: Some(thread),
        })
    }

    /// Datagrams read so far.
    pub fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A level-triggered epoll set of sockets, asked without waiting which hold datagrams.
struct EpollSet {
    epoll: Epoll,
    events: Vec<EpollEvent>,
}

impl EpollSet {
    /// Registers every socket of `sockets`, identified by its index.
    fn new(sockets: &[UdpSocket]) -> io::Result<EpollSet> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        for (i, socket) in sockets.iter().enumerate() {
            epoll.add(socket, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))?;
        }
        Ok(EpollSet {
            epoll,
            events: vec![EpollEvent::empty(); sockets.len().max(1)],
        })
    }

    /// Appends the indices of the sockets that hold datagrams now to `ready`.
    fn ready(&mut self, ready: &mut Vec<usize>) {
        let n = self.epoll.wait(&mut self.events, 0).unwrap_or(0);
        ready.extend(self.events[..n].iter().map(|e| e.data() as usize));
    }
}

/// Pins the calling thread to `cpu` (best effort: a CPU the process may not use is ignored).
pub fn pin_thread(cpu: usize) {
    // SAFETY: cpu_set_t is a plain bit set; all-zero is empty, and the call only changes this
    // thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A sending socket and an unread receiver on loopback.
pub struct Loopback {
    pub sender: UdpSocket,
    pub receiver: UdpSocket,
    pub destination: SocketAddr,
    dest_raw: libc::sockaddr_in,
}

impl Loopback {
    pub fn new() -> io::Result<Loopback> {
        let receiver = UdpSocket::bind("127.0.0.1:0")?;
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        sender.set_nonblocking(true)?;
        let destination = receiver.local_addr()?;
        let SocketAddr::V4(v4) = destination else {
            return Err(io::Error::other("loopback bound to a non-IPv4 address"));
        };
        Ok(Loopback {
            sender,
            receiver,
            destination,
            dest_raw: sockaddr_in(v4),
        })
    }

    /// One `sendto` of one datagram.
    pub fn sendto(&self, payload: &[u8]) -> io::Result<usize> {
        // SAFETY: the buffer and the address are valid for the duration of the call.
        let n = unsafe {
            libc::sendto(
                self.sender.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                libc::MSG_DONTWAIT,
                (&self.dest_raw as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// `sendmmsg` of [`BATCH`] messages per call, each with its own destination address and
/// control data (as a server sending to many subscribers does), reusing its headers. Each
/// message is one datagram ([`Mmsg::new`]), a UDP GSO message of several segments
/// ([`Mmsg::frames`]: a video frame to one subscriber, the shape a fan-out can reach), or one
/// of either in the stream's proportions to many receivers ([`Mmsg::stream`]).
pub struct Mmsg {
    /// Segments and segment size of each message of a call.
    shape: Vec<(usize, usize)>,
    buffers: Vec<Vec<u8>>,
    controls: Vec<Vec<u8>>,
    iovecs: Vec<libc::iovec>,
    /// Where the messages go, in turn across calls.
    destinations: Vec<libc::sockaddr_in>,
    next: usize,
    names: Vec<libc::sockaddr_in>,
    headers: Vec<libc::mmsghdr>,
}

impl Mmsg {
    /// One datagram per message.
    pub fn new(lo: &Loopback) -> Mmsg {
        Mmsg::frames(lo, 1)
    }

    /// `segments` datagrams per message, sent with UDP GSO when more than one.
    pub fn frames(lo: &Loopback, segments: usize) -> Mmsg {
        Mmsg::with(vec![(segments, DATAGRAM); BATCH], vec![lo.dest_raw])
    }

    /// The server's send shape for a stream ([`STREAM_SHAPE`]): video frames as GSO messages
    /// of [`FRAME`] datagrams of [`DATAGRAM`] bytes, audio as single [`AUDIO_DATAGRAM`]-byte
    /// messages, to each of `receivers` in turn.
    pub fn stream(receivers: &[UdpSocket]) -> io::Result<Mmsg> {
        let shape = STREAM_SHAPE
            .iter()
            .cycle()
            .take(BATCH)
            .map(|&segments| match segments {
                1 => (1, AUDIO_DATAGRAM),
                n => (n, DATAGRAM),
            })
            .collect();
        let mut destinations = Vec::with_capacity(receivers.len());
        for receiver in receivers {
            let SocketAddr::V4(v4) = receiver.local_addr()? else {
                return Err(io::Error::other("loopback bound to a non-IPv4 address"));
            };
            destinations.push(sockaddr_in(v4));
        }
        Ok(Mmsg::with(shape, destinations))
    }

    fn with(shape: Vec<(usize, usize)>, destinations: Vec<libc::sockaddr_in>) -> Mmsg {
        Mmsg {
            buffers: shape
                .iter()
                .map(|&(segments, size)| vec![0x5au8; segments * size])
                .collect(),
            controls: vec![vec![0u8; udp_segment_space()]; BATCH],
            // SAFETY: iovec and mmsghdr are plain C structs; all-zero is a valid value.
            iovecs: vec![unsafe { zeroed::<libc::iovec>() }; BATCH],
            names: vec![destinations[0]; BATCH],
            headers: vec![unsafe { zeroed::<libc::mmsghdr>() }; BATCH],
            shape,
            destinations,
            next: 0,
        }
    }

    /// Datagrams (segments) in one call's messages.
    pub fn datagrams_per_call(&self) -> usize {
        self.shape.iter().map(|&(segments, _)| segments).sum()
    }

    /// Sends one batch; returns the datagrams (segments) the kernel took.
    pub fn send(&mut self, lo: &Loopback) -> io::Result<usize> {
        for i in 0..BATCH {
            let (segments, size) = self.shape[i];
            self.names[i] = self.destinations[self.next];
            self.next = (self.next + 1) % self.destinations.len();
            self.iovecs[i] = libc::iovec {
                iov_base: self.buffers[i].as_mut_ptr().cast(),
                iov_len: self.buffers[i].len(),
            };
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovecs[i];
            h.msg_iovlen = 1;
            if segments > 1 {
                set_udp_segment(h, &mut self.controls[i], size);
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        // SAFETY: every header points into buffers owned by `self` for the call's duration.
        let n = unsafe {
            libc::sendmmsg(
                lo.sender.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(self.shape[..n as usize].iter().map(|&(s, _)| s).sum())
        }
    }
}

/// UDP GSO: [`BATCH`] segments of [`DATAGRAM`] bytes in one `sendmsg` with `UDP_SEGMENT`. Only
/// possible when every segment goes to the same destination, so a fan-out to many
/// subscribers cannot use it; it is the floor of the send cost, not a reachable target.
/// [`Mmsg::frames`] is the shape a fan-out can reach.
pub struct Gso {
    buffer: Vec<u8>,
    control: Vec<u8>,
}

impl Gso {
    pub fn new() -> Gso {
        Gso {
            buffer: vec![0x5au8; DATAGRAM * BATCH],
            control: vec![0u8; udp_segment_space()],
        }
    }

    /// Sends one super-datagram of [`BATCH`] segments; returns the segments sent.
    pub fn send(&mut self, lo: &Loopback) -> io::Result<usize> {
        let mut iov = libc::iovec {
            iov_base: self.buffer.as_mut_ptr().cast(),
            iov_len: self.buffer.len(),
        };
        let mut name = lo.dest_raw;
        // SAFETY: msghdr is a plain C struct; all-zero is valid, and every pointer set below
        // points into storage that outlives the call.
        let n = unsafe {
            let mut msg: libc::msghdr = zeroed();
            msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            set_udp_segment(&mut msg, &mut self.control, DATAGRAM);
            libc::sendmsg(lo.sender.as_raw_fd(), &msg, libc::MSG_DONTWAIT)
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize / DATAGRAM)
        }
    }
}

impl Default for Gso {
    fn default() -> Self {
        Gso::new()
    }
}

/// Bytes of control data one `UDP_SEGMENT` message needs.
fn udp_segment_space() -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) as usize }
}

/// Makes `msg` a UDP GSO message of `size`-byte segments, with `control` (at least
/// [`udp_segment_space`] bytes, alive until the send) as its control data.
fn set_udp_segment(msg: &mut libc::msghdr, control: &mut [u8], size: usize) {
    assert!(control.len() >= udp_segment_space());
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    // SAFETY: the control buffer is set on `msg` and has room for one u16 control message,
    // so CMSG_FIRSTHDR is non-null and its data fits.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size as u16);
    }
}

/// Seals RTP packets with SRTP's AEAD-AES-GCM (RFC 7714): a 12-byte IV from the salt, SSRC
/// and packet index, the header as associated data, a 16-byte tag. The key is set up once.
pub struct GcmSealer {
    key: LessSafeKey,
    salt: [u8; 12],
    packet: Vec<u8>,
}

impl GcmSealer {
    pub fn aes128() -> GcmSealer {
        GcmSealer::with(&AES_128_GCM, &[7u8; 16])
    }

    pub fn aes256() -> GcmSealer {
        GcmSealer::with(&AES_256_GCM, &[7u8; 32])
    }

    fn with(alg: &'static aws_lc_rs::aead::Algorithm, key: &[u8]) -> GcmSealer {
        let key = LessSafeKey::new(UnboundKey::new(alg, key).expect("a valid AES key length"));
        let mut packet = vec![0x5au8; DATAGRAM];
        packet[0] = 0x80;
        GcmSealer {
            key,
            salt: [3u8; 12],
            packet,
        }
    }

    /// Seals packet number `index` in place (payload and tag fill [`DATAGRAM`] bytes).
    pub fn seal(&mut self, index: u64) -> u8 {
        let mut iv = self.salt;
        for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
            iv[6 + i] ^= b;
        }
        let nonce = Nonce::assume_unique_for_key(iv);
        let (header, rest) = self.packet.split_at_mut(RTP_HEADER);
        let body = DATAGRAM - RTP_HEADER - 16;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&header[..]), &mut rest[..body])
            .expect("sealing a bounded buffer cannot fail");
        rest[body..].copy_from_slice(tag.as_ref());
        rest[body]
    }
}

/// Seals RTP packets with SRTP_AES128_CM_HMAC_SHA1_80 (RFC 3711): AES-128 in counter mode
/// over the payload, HMAC-SHA1 over header, payload and ROC, 10 bytes of tag.
pub struct CmSealer {
    key: [u8; 16],
    cipher: EncryptingKey,
    auth: hmac::Key,
    salt: [u8; 16],
    packet: Vec<u8>,
}

impl CmSealer {
    pub fn new() -> CmSealer {
        let key = [9u8; 16];
        let cipher = EncryptingKey::ctr(UnboundCipherKey::new(&AES_128, &key).expect("16 bytes"))
            .expect("AES-128-CTR is supported");
        let auth = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &[5u8; 20]);
        let mut packet = vec![0x5au8; DATAGRAM];
        packet[0] = 0x80;
        CmSealer {
            key,
            cipher,
            auth,
            salt: [1u8; 16],
            packet,
        }
    }

    /// Seals packet number `index` with a cipher key set up once.
    pub fn seal(&mut self, index: u64) -> u8 {
        let iv = self.iv(index);
        self.seal_with(iv, None)
    }

    /// Seals packet number `index` setting the AES key up again for this packet, as str0m's
    /// aws-lc-rs backend does for AES-CM: the extra cost of per-packet key setup.
    pub fn seal_with_key_setup(&mut self, index: u64) -> u8 {
        let iv = self.iv(index);
        let cipher =
            EncryptingKey::ctr(UnboundCipherKey::new(&AES_128, &self.key).expect("16 bytes"))
                .expect("AES-128-CTR is supported");
        self.seal_with(iv, Some(cipher))
    }

    fn iv(&self, index: u64) -> [u8; 16] {
        let mut iv = self.salt;
        for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
            iv[8 + i] ^= b;
        }
        iv[14] = 0;
        iv[15] = 0;
        iv
    }

    fn seal_with(&mut self, iv: [u8; 16], cipher: Option<EncryptingKey>) -> u8 {
        let body = DATAGRAM - RTP_HEADER - 10;
        let context = EncryptionContext::Iv128(FixedLength::from(iv));
        let cipher = cipher.as_ref().unwrap_or(&self.cipher);
        cipher
            .less_safe_encrypt(&mut self.packet[RTP_HEADER..RTP_HEADER + body], context)
            .expect("AES-CTR over a bounded buffer cannot fail");
        let mut ctx = hmac::Context::with_key(&self.auth);
        ctx.update(&self.packet[..RTP_HEADER + body]);
        ctx.update(&0u32.to_be_bytes());
        let tag = ctx.sign();
        self.packet[RTP_HEADER + body..].copy_from_slice(&tag.as_ref()[..10]);
        self.packet[RTP_HEADER]
    }
}

impl Default for CmSealer {
    fn default() -> Self {
        CmSealer::new()
    }
}

/// Every physical-limit figure, measured for about `budget` each (the median of 5 rounds).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub sendto_ns: f64,
    pub sendmmsg_ns: f64,
    pub gso_ns: f64,
    /// Per datagram of a `sendmmsg` of GSO messages of [`FRAME`] segments ([`Mmsg::frames`]).
    #[serde(default)]
    pub gso_frames_ns: f64,
    /// `sendmmsg_ns` with the receiver read by a [`Drain`] (0 in runs from before it existed).
    #[serde(default)]
    pub sendmmsg_read_ns: f64,
    /// `gso_frames_ns` with the receiver read by a [`Drain`]. Both read figures are the
    /// median of three measurements (one, in runs before commit c6e8ac5).
    #[serde(default)]
    pub gso_frames_read_ns: f64,
    /// Per datagram of a `sendmmsg` in the stream's shape ([`Mmsg::stream`]) to
    /// [`SWEPT_RECEIVERS`] receivers that one reader sweeps ([`Drain::sweep`]), the median of
    /// three measurements (0 in runs from before it existed). A reference for the server's
    /// own send shape, not the limit.
    #[serde(default)]
    pub stream_read_ns: f64,
    /// Share of the datagrams sent to the read receiver that its reader got, in percent (the
    /// lowest of the three measurements).
    #[serde(default)]
    pub read_pct: f64,
    pub gcm128_ns: f64,
    pub gcm256_ns: f64,
    pub cm_sha1_ns: f64,
    pub cm_sha1_key_setup_ns: f64,
    /// One-way loopback latency of a bare datagram between two threads (p50, p99), in us.
    pub loopback_p50_us: f64,
    pub loopback_p99_us: f64,
}

impl Limits {
    /// The cheapest possible forward of one packet to one subscriber: one AEAD-AES-128-GCM
    /// seal plus one datagram of a `sendmmsg` of GSO messages that each carry a video frame
    /// to one subscriber (GSO cannot batch datagrams to different subscribers; the server
    /// sends this way), delivered to a socket that is read. The decrypt of the publisher's
    /// packet is shared by every subscriber. Results from before a figure existed fall back to
    /// the unread receiver, then to plain `sendmmsg`.
    pub fn cheapest_forward_ns(&self) -> f64 {
        self.gcm128_ns
            + first_measured(&[
                self.gso_frames_read_ns,
                self.gso_frames_ns,
                self.sendmmsg_ns,
            ])
    }

    /// The same with one plain datagram per message: the cheapest forward without GSO.
    pub fn cheapest_forward_plain_ns(&self) -> f64 {
        self.gcm128_ns + first_measured(&[self.sendmmsg_read_ns, self.sendmmsg_ns])
    }

    /// The cheapest forward with GSO to a receiver that is never read (the kernel drops at
    /// its full buffer): the definition used before the read receiver was measured.
    pub fn cheapest_forward_unread_ns(&self) -> f64 {
        self.gcm128_ns + first_measured(&[self.gso_frames_ns, self.sendmmsg_ns])
    }

    /// A forward in the stream's own send shape: one AES-128-GCM seal plus one datagram of
    /// [`Limits::stream_read_ns`]. Audio's single-datagram messages make it dearer than
    /// [`Limits::cheapest_forward_ns`]; `None` in runs that did not measure it.
    pub fn stream_forward_ns(&self) -> Option<f64> {
        (self.stream_read_ns > 0.0).then_some(self.gcm128_ns + self.stream_read_ns)
    }

    /// Whether the run measured sends to a read receiver.
    pub fn has_read(&self) -> bool {
        self.gso_frames_read_ns > 0.0
    }

    /// The cheapest forward alone ([`Limits::cheapest_forward_ns`]), measured afresh: the
    /// fan-out driver takes it just before each step, so that each step is compared with the
    /// machine as it is then (on the shared VM the same step's cost drifts by up to 2x within
    /// minutes).
    pub fn cheapest_forward_now(budget: Duration, reader_cpu: Option<usize>) -> io::Result<f64> {
        let (_, gso_read_ns, _, _) = read_sends(budget, reader_cpu, false)?;
        Ok(gcm128_seal_ns(budget) + gso_read_ns)
    }

    /// Measures everything; `budget` is the time spent on each figure. The thread that reads
    /// the second receiver runs on `reader_cpu` when given (the load generator's CPU).
    pub fn measure(budget: Duration, reader_cpu: Option<usize>) -> io::Result<Limits> {
        let lo = Loopback::new()?;
        let payload = vec![0x5au8; DATAGRAM];
        let sendto_ns = per_packet(budget, 1, || {
            let _ = lo.sendto(&payload);
        });
        let mut mmsg = Mmsg::new(&lo);
        let sendmmsg_ns = per_packet(budget, BATCH, || {
            let _ = mmsg.send(&lo);
        });
        let mut gso = Gso::new();
        gso.send(&lo)?;
        let gso_ns = per_packet(budget, BATCH, || {
            let _ = gso.send(&lo);
        });
        let mut frames = Mmsg::frames(&lo, FRAME);
        frames.send(&lo)?;
        let gso_frames_ns = per_packet(budget, BATCH * FRAME, || {
            let _ = frames.send(&lo);
        });
        let (sendmmsg_read_ns, gso_frames_read_ns, stream_read_ns, read_pct) =
            read_sends(budget, reader_cpu, true)?;
        let gcm128_ns = gcm128_seal_ns(budget);
        let mut n = 0u64;
        let mut g256 = GcmSealer::aes256();
        let gcm256_ns = per_packet(budget, 1, || {
            n += 1;
            std::hint::black_box(g256.seal(n));
        });
        let mut cm = CmSealer::new();
        let cm_sha1_ns = per_packet(budget, 1, || {
            n += 1;
            std::hint::black_box(cm.seal(n));
        });
        let cm_sha1_key_setup_ns = per_packet(budget, 1, || {
            n += 1;
            std::hint::black_box(cm.seal_with_key_setup(n));
        });
        let (loopback_p50_us, loopback_p99_us) = loopback_latency(2_000)?;
        Ok(Limits {
            sendto_ns,
            sendmmsg_ns,
            gso_ns,
            gso_frames_ns,
            sendmmsg_read_ns,
            gso_frames_read_ns,
            stream_read_ns,
            read_pct,
            gcm128_ns,
            gcm256_ns,
            cm_sha1_ns,
            cm_sha1_key_setup_ns,
            loopback_p50_us,
            loopback_p99_us,
        })
    }
}

/// The first of `figures` that was measured: a saved run from before a figure existed has 0
/// in its place.
fn first_measured(figures: &[f64]) -> f64 {
    figures.iter().copied().find(|ns| *ns > 0.0).unwrap_or(0.0)
}

/// Plain and frame-per-subscriber GSO `sendmmsg` to a receiver that a [`Drain`] reads, and
/// when `shaped`, the stream-shaped `sendmmsg` to [`SWEPT_RECEIVERS`] swept receivers:
/// (plain ns, GSO ns, stream ns or 0, lowest share read in percent). Sends to a read receiver settle, for a whole
/// measurement, at one of two costs (1.1 or 1.6 us per GSO datagram on the 2-CPU VM of
/// 2026-11-27, fresh sockets each time), so each figure is the median of three measurements
/// with fresh sockets.
fn read_sends(
    budget: Duration,
    reader_cpu: Option<usize>,
    shaped: bool,
) -> io::Result<(f64, f64, f64, f64)> {
    let (mut plain, mut gso, mut stream, mut read_pcts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let read = Loopback::new()?;
        let drain = Drain::spawn(&read.receiver, reader_cpu)?;
        let mut sent = 0u64;
        let mut mmsg = Mmsg::new(&read);
        plain.push(per_packet(budget, BATCH, || {
            sent += mmsg.send(&read).unwrap_or(0) as u64;
        }));
        let mut frames = Mmsg::frames(&read, FRAME);
        gso.push(per_packet(budget, BATCH * FRAME, || {
            sent += frames.send(&read).unwrap_or(0) as u64;
        }));
        let mut swept = None;
        if shaped {
            let receivers = (0..SWEPT_RECEIVERS)
                .map(|_| UdpSocket::bind("127.0.0.1:0"))
                .collect::<io::Result<Vec<_>>>()?;
            let sweep = Drain::sweep(&receivers, reader_cpu)?;
            let mut mix = Mmsg::stream(&receivers)?;
            let mut mix_sent = 0u64;
            stream.push(per_packet(budget, mix.datagrams_per_call(), || {
                mix_sent += mix.send(&read).unwrap_or(0) as u64;
            }));
            swept = Some((sweep, mix_sent));
        }
        // Let the readers finish what is queued before counting.
        std::thread::sleep(Duration::from_millis(100));
        read_pcts.push(100.0 * drain.received() as f64 / sent.max(1) as f64);
        if let Some((sweep, mix_sent)) = swept {
            read_pcts.push(100.0 * sweep.received() as f64 / mix_sent.max(1) as f64);
        }
    }
    let lowest = read_pcts.into_iter().fold(f64::INFINITY, f64::min);
    let stream = if shaped { median(stream) } else { 0.0 };
    Ok((median(plain), median(gso), stream, lowest))
}

/// The median of an odd number of figures.
fn median(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

/// One AEAD-AES-128-GCM seal of a 1200-byte packet, in ns.
fn gcm128_seal_ns(budget: Duration) -> f64 {
    let mut sealer = GcmSealer::aes128();
    let mut n = 0u64;
    per_packet(budget, 1, || {
        n += 1;
        std::hint::black_box(sealer.seal(n));
    })
}

/// Median over 5 rounds of the time per packet of `f`, which handles `per_call` packets.
fn per_packet(budget: Duration, per_call: usize, mut f: impl FnMut()) -> f64 {
    // Warm up, and size a round to about a fifth of the budget.
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget / 20 {
        f();
        calls += 1;
    }
    let per_call_ns = start.elapsed().as_nanos() as f64 / calls.max(1) as f64;
    let round = ((budget.as_nanos() as f64 / 5.0) / per_call_ns).max(10.0) as u64;
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..round {
                f();
            }
            t.elapsed().as_nanos() as f64 / (round as f64 * per_call as f64)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[2]
}

/// One-way latency of a datagram across loopback: a thread blocked in `recv` stamps each
/// arrival against the send time carried in the datagram. Returns (p50, p99) in us.
pub fn loopback_latency(samples: usize) -> io::Result<(f64, f64)> {
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    sender.connect(receiver.local_addr()?)?;
    receiver.set_read_timeout(Some(Duration::from_secs(2)))?;
    let origin = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)
            .expect("constant bounds");
        let mut buf = vec![0u8; DATAGRAM];
        for _ in 0..samples {
            let Ok(n) = receiver.recv(&mut buf) else {
                break;
            };
            if n < 8 {
                continue;
            }
            let sent = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
            let now = origin.elapsed().as_nanos() as u64;
            let _ = hist.record(now.saturating_sub(sent).max(1));
        }
        hist
    });
    let mut buf = vec![0u8; DATAGRAM];
    for _ in 0..samples {
        let now = origin.elapsed().as_nanos() as u64;
        buf[..8].copy_from_slice(&now.to_le_bytes());
        sender.send(&buf)?;
        // Paced like a stream, so each datagram finds the reader waiting.
        std::thread::sleep(Duration::from_micros(200));
    }
    let hist = reader
        .join()
        .map_err(|_| io::Error::other("latency reader panicked"))?;
    Ok((
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
    ))
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is a plain C struct; all-zero is valid.
    let mut raw: libc::sockaddr_in = unsafe { zeroed() };
    raw.sin_family = libc::AF_INET as libc::sa_family_t;
    raw.sin_port = addr.port().to_be();
    raw.sin_addr = libc::in_addr {
        s_addr: u32::from(*addr.ip()).to_be(),
    };
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_send_path_sends() {
        let lo = Loopback::new().unwrap();
        assert_eq!(lo.sendto(&[0u8; DATAGRAM]).unwrap(), DATAGRAM);
        assert_eq!(Mmsg::new(&lo).send(&lo).unwrap(), BATCH);
        assert_eq!(Gso::new().send(&lo).unwrap(), BATCH);
        assert_eq!(Mmsg::frames(&lo, FRAME).send(&lo).unwrap(), BATCH * FRAME);
        let receivers: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut stream = Mmsg::stream(&receivers).unwrap();
        // 32 messages: four rounds of three video frames and five audio datagrams.
        assert_eq!(stream.datagrams_per_call(), 4 * (3 * FRAME + 5));
        assert_eq!(stream.send(&lo).unwrap(), 4 * (3 * FRAME + 5));
    }

    #[test]
    fn a_sweep_reads_every_receiver_in_the_stream_shape() {
        let lo = Loopback::new().unwrap();
        let receivers: Vec<UdpSocket> = (0..5)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let sweep = Drain::sweep(&receivers, None).unwrap();
        let mut stream = Mmsg::stream(&receivers).unwrap();
        let sent = stream.send(&lo).unwrap() as u64;
        let deadline = Instant::now() + Duration::from_secs(5);
        while sweep.received() < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sweep.received(), sent);
        // And none is left on any receiver.
        let mut buf = [0u8; DATAGRAM];
        for r in &receivers {
            r.set_nonblocking(true).unwrap();
            assert!(
                r.recv(&mut buf).is_err(),
                "the sweep left a datagram behind"
            );
        }
    }

    #[test]
    fn a_drain_reads_what_is_sent_and_stops_when_dropped() {
        let lo = Loopback::new().unwrap();
        let drain = Drain::spawn(&lo.receiver, None).unwrap();
        // One batch, small enough for the receiver's default buffer.
        assert_eq!(Mmsg::new(&lo).send(&lo).unwrap(), BATCH);
        let deadline = Instant::now() + Duration::from_secs(5);
        while drain.received() < BATCH as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(drain.received(), BATCH as u64);
        drop(drain);
    }

    #[test]
    fn runs_from_before_the_read_receiver_keep_their_limit() {
        // A fanout.json written before the read figures existed has none of their keys.
        let old = r#"{"sendto_ns":1500,"sendmmsg_ns":1100,"gso_ns":500,"gso_frames_ns":900,
            "gcm128_ns":360,"gcm256_ns":390,"cm_sha1_ns":1400,"cm_sha1_key_setup_ns":1600,
            "loopback_p50_us":20,"loopback_p99_us":60}"#;
        let l: Limits = serde_json::from_str(old).unwrap();
        assert!(!l.has_read());
        assert_eq!(l.stream_forward_ns(), None);
        assert_eq!(l.cheapest_forward_ns(), 1260.0);
        assert_eq!(l.cheapest_forward_unread_ns(), 1260.0);
        assert_eq!(l.cheapest_forward_plain_ns(), 1460.0);
        let new = Limits {
            sendmmsg_read_ns: 1400.0,
            gso_frames_read_ns: 1200.0,
            read_pct: 99.0,
            ..l
        };
        assert_eq!(new.cheapest_forward_ns(), 1560.0);
        assert_eq!(new.cheapest_forward_unread_ns(), 1260.0);
        assert_eq!(new.cheapest_forward_plain_ns(), 1760.0);
        let shaped = Limits {
            stream_read_ns: 1500.0,
            ..new
        };
        assert_eq!(shaped.stream_forward_ns(), Some(1860.0));
        assert_eq!(shaped.cheapest_forward_ns(), 1560.0);
    }

    #[test]
    fn seals_change_the_packet() {
        let mut g = GcmSealer::aes128();
        let a = g.packet.clone();
        g.seal(1);
        assert_ne!(a, g.packet);
        let mut c = CmSealer::new();
        let b = c.packet.clone();
        c.seal(1);
        assert_ne!(b, c.packet);
        c.seal_with_key_setup(2);
    }
}
