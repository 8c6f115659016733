//! Batched UDP datagram IO on one raw, nonblocking media socket fd (Linux `recvmmsg`/`sendmmsg`).
//! Owns socket setup (buffers, packet info) and the syscall scratch storage, allocated once, so the
//! data plane moves whole batches per syscall and knows the local address each datagram hit.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;

use rustc_hash::FxHashMap;
use socket2::{Domain, Protocol, Socket, Type};

/// The longest datagram the data plane accepts; longer ones are cut to this and reported as
/// `truncated` (media, STUN and DTLS datagrams all fit well below it).
pub const RECV_BUFFER_SIZE: usize = 2048;

/// Size of each `recvmmsg` slot: with UDP GRO one message can carry up to 64 KiB of datagrams
/// of one sender (a GSO send on loopback, or what the NIC's GRO merged), and a slot smaller
/// than that would cut them off.
const RECV_SLOT_SIZE: usize = 65_536;

/// Datagrams handed to one `sendmmsg` call (well below `UIO_MAXIOV`).
pub const SEND_CHUNK: usize = 64;

/// How many sent datagrams' buffers a [`SendBatch`] keeps for reuse: two full chunks' worth.
/// A burst fills it; then it holds about 1.3 MB of full-size packets' buffers per socket, and
/// 2 MB at most.
const SPARE_BUFFERS: usize = 2 * SEND_CHUNK_DATAGRAMS;

/// The largest buffer kept for reuse: a full-size datagram's, with room to spare.
const SPARE_BUFFER_MAX: usize = 2048;

/// Datagrams one `sendmmsg` call can carry: up to [`SEND_CHUNK`] messages, each several
/// datagrams with UDP GSO.
const SEND_CHUNK_DATAGRAMS: usize = 8 * SEND_CHUNK;

/// The kernel's limit of segments in one UDP GSO send (`UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;

/// The most bytes one UDP GSO send may carry (its IP length is 16 bits).
const GSO_MAX_BYTES: usize = 65_000;

/// The kernel caps `recvmmsg` batches at `UIO_MAXIOV`.
const MAX_RECV_BATCH: usize = 1024;

/// Ancillary data space per message: room for both packet-info kinds, an arrival timestamp
/// and a GRO segment size, cmsg-aligned.
const CMSG_BUFFER_SIZE: usize = 160;

const _: () = assert!(
    cmsg_space(mem::size_of::<libc::in6_pktinfo>())
        + cmsg_space(mem::size_of::<libc::in_pktinfo>())
        + cmsg_space(mem::size_of::<libc::timespec>())
        + cmsg_space(mem::size_of::<libc::c_int>())
        <= CMSG_BUFFER_SIZE
);
const _: () = assert!(
    cmsg_space(mem::size_of::<libc::in6_pktinfo>()) + cmsg_space(mem::size_of::<u16>())
        <= CMSG_BUFFER_SIZE
);

/// Errors from setting up a media socket; each carries the address it was for.
#[derive(thiserror::Error, Debug)]
pub enum UdpError {
    // The OS error is part of each message, not a separate source: printed as a chain, it
    // would otherwise come twice.
    #[error("cannot create UDP socket for {addr}: {error}")]
    Create { addr: SocketAddr, error: io::Error },
    #[error("cannot set {option} on UDP socket for {addr}: {error}")]
    SetOption {
        addr: SocketAddr,
        option: &'static str,
        error: io::Error,
    },
    #[error("cannot bind UDP socket to {addr}: {error}")]
    Bind { addr: SocketAddr, error: io::Error },
}

/// Binds a UDP socket for media: nonblocking, `SO_RCVBUF`/`SO_SNDBUF` set to the
/// requested sizes (best effort: a kernel cap is logged with `tracing::warn`, the effective sizes
/// are logged at debug level; 0 keeps the kernel default), and `IP_PKTINFO` (v4) /
/// `IPV6_RECVPKTINFO` (v6) enabled so [`RecvBatch`] learns the destination address of each
/// datagram even on a wildcard bind. The v6-only flag is left at the system default.
///
/// No `SO_REUSEADDR`: on a UDP socket it lets another socket bind the same address and port
/// and take its datagrams, and the kernel even hands such a taken port out for a bind to
/// port 0 (a server and a load generator on one host then shared a media port now and then).
/// A UDP port is free again as soon as its socket closes, so a restart does not need it.
pub fn bind_media_socket(
    addr: SocketAddr,
    rcvbuf: usize,
    sndbuf: usize,
) -> Result<Socket, UdpError> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|error| UdpError::Create { addr, error })?;
    let option_error = |option: &'static str| {
        move |error| UdpError::SetOption {
            addr,
            option,
            error,
        }
    };
    socket
        .set_nonblocking(true)
        .map_err(option_error("O_NONBLOCK"))?;

    let effective_rcvbuf = tune_buffer(
        addr,
        "SO_RCVBUF",
        rcvbuf,
        |size| socket.set_recv_buffer_size(size),
        || socket.recv_buffer_size(),
    );
    let effective_sndbuf = tune_buffer(
        addr,
        "SO_SNDBUF",
        sndbuf,
        |size| socket.set_send_buffer_size(size),
        || socket.send_buffer_size(),
    );

    let (level, name, option) = match addr {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, "IP_PKTINFO"),
        SocketAddr::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVPKTINFO,
            "IPV6_RECVPKTINFO",
        ),
    };
    set_int_option(socket.as_raw_fd(), level, name, 1).map_err(option_error(option))?;
    // A kernel without GRO (before 5.0) delivers datagrams one by one, which `RecvBatch`
    // reads just as well.
    if let Err(error) = enable_udp_gro(&socket) {
        tracing::debug!(%addr, %error, "UDP GRO refused: datagrams are read one by one");
    }

    socket
        .bind(&addr.into())
        .map_err(|error| UdpError::Bind { addr, error })?;
    tracing::debug!(
        %addr,
        rcvbuf = effective_rcvbuf,
        sndbuf = effective_sndbuf,
        "media socket bound (kernel-reported buffer sizes)"
    );
    Ok(socket)
}

/// Turns UDP GRO (`UDP_GRO`) on for `socket`: datagrams of one sender that arrive together
/// (one GSO send on loopback, or what the NIC merged) are queued and read as one message of up
/// to 64 KiB. [`RecvBatch`] splits such messages; any other reader needs 64 KiB buffers and
/// the segment size from the `UDP_GRO` control message.
pub fn enable_udp_gro(socket: &impl AsRawFd) -> io::Result<()> {
    set_int_option(socket.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Asks the kernel to stamp every datagram queued on `socket` with its arrival time
/// (`SO_TIMESTAMPNS`, wall clock), which [`RecvBatch`] reports as
/// [`Datagram::arrival_unix_micros`]. A measuring client uses it so that a packet's latency
/// ends when the packet reached the socket, not when a busy core got round to reading it.
/// The kernel turns stamping on for the host a moment after the first socket asks; a
/// datagram that arrives before then is stamped when it is read (the later time, so a
/// latency can only come out too long).
pub fn enable_arrival_timestamps(socket: &Socket) -> io::Result<()> {
    set_int_option(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPNS,
        1,
    )
}

/// Reusable storage for receiving up to `batch` messages with one `recvmmsg` call. A message
/// is one datagram, or with UDP GRO (which [`bind_media_socket`] turns on) a run of datagrams
/// of one sender, which [`RecvBatch::recv`] splits so that callers see datagrams only.
pub struct RecvBatch {
    /// `batch` slots of [`RECV_SLOT_SIZE`] bytes (zeroed pages: only the bytes received into
    /// are ever made resident).
    buffers: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<CmsgBuffer>,
    headers: Vec<libc::mmsghdr>,
    received: Vec<Received>,
    /// Whether the last `recvmmsg` filled every message slot (the socket may hold more).
    filled: bool,
}

// SAFETY: the raw pointers inside `iovecs` and `headers` only ever point into heap storage owned by
// this same value (re-derived before every syscall), so moving it to another thread is sound.
unsafe impl Send for RecvBatch {}

/// One received datagram, borrowed from a [`RecvBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The peer's address; IPv4-mapped IPv6 addresses are reported as IPv4.
    pub source: SocketAddr,
    /// The local address the datagram was sent to (packet info, else the fallback), with the
    /// socket's port.
    pub destination: SocketAddr,
    /// The payload, cut to [`RECV_BUFFER_SIZE`] when `truncated`.
    pub payload: &'a [u8],
    /// The datagram did not fit the buffer; callers should drop it.
    pub truncated: bool,
    /// When the kernel queued it on the socket (wall clock, microseconds since the UNIX
    /// epoch), on a socket with [`enable_arrival_timestamps`]; `None` otherwise.
    pub arrival_unix_micros: Option<u64>,
}

impl RecvBatch {
    /// Allocates storage for `batch` messages (clamped to `1..=1024`), 64 KiB each.
    pub fn new(batch: usize) -> Self {
        let batch = batch.clamp(1, MAX_RECV_BATCH);
        let empty_iovec = libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        };
        Self {
            buffers: vec![0; batch * RECV_SLOT_SIZE],
            iovecs: vec![empty_iovec; batch],
            names: vec![zeroed_sockaddr(); batch],
            controls: vec![CmsgBuffer::new(); batch],
            headers: vec![zeroed_mmsghdr(); batch],
            received: Vec::with_capacity(batch),
            filled: false,
        }
    }

    /// How many messages one [`RecvBatch::recv`] can read.
    pub fn capacity(&self) -> usize {
        self.headers.len()
    }

    /// Whether the last [`recv`](Self::recv) read as many messages as it could: the socket
    /// may hold more. When it read fewer, it emptied the socket.
    pub fn filled(&self) -> bool {
        self.filled
    }

    /// Receives up to `batch` messages with `recvmmsg(MSG_DONTWAIT)` and returns how many
    /// datagrams they held (more than messages where GRO merged some): `Ok(0)` when none is
    /// waiting (`EAGAIN`), `Err` on other errors. `local_fallback` (the socket's bound address)
    /// is the destination reported when a datagram carries no packet info.
    pub fn recv(&mut self, fd: RawFd, local_fallback: SocketAddr) -> io::Result<usize> {
        self.received.clear();
        self.filled = false;
        self.prepare();
        let count = loop {
            // SAFETY: `prepare` pointed every header at this batch's own name, iovec, buffer and
            // control storage with matching lengths; all stay alive and unmoved during the call.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    self.headers.len() as _,
                    libc::MSG_DONTWAIT as _,
                    ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break (rc as usize).min(self.headers.len());
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock => return Ok(0),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(err),
            }
        };

        self.filled = count == self.headers.len();
        let local = canonical(local_fallback);
        for (i, (header, name)) in self.headers[..count].iter().zip(&self.names).enumerate() {
            let msg = &header.msg_hdr;
            let source = decode_sockaddr(name, msg.msg_namelen)
                .unwrap_or_else(|| SocketAddr::new(unspecified_like(local.ip()), 0));
            // SAFETY: `msg` was filled in by the kernel for this batch; its control pointer and
            // length describe this message's own control buffer.
            let control = unsafe { read_control(msg, local.port()) };
            let slot = i * RECV_SLOT_SIZE;
            let len = (header.msg_len as usize).min(RECV_SLOT_SIZE);
            let cut = msg.msg_flags & libc::MSG_TRUNC != 0;
            let datagram = |start: usize, len: usize| Received {
                source,
                destination: control.destination.unwrap_or(local),
                start,
                len: len.min(RECV_BUFFER_SIZE),
                truncated: cut || len > RECV_BUFFER_SIZE,
                arrival_unix_micros: control.arrival_unix_micros,
            };
            match control.gro_segment {
                // A GRO message: datagrams of `size` bytes, the last one possibly shorter.
                Some(size) if size > 0 && len > size => {
                    for offset in (0..len).step_by(size) {
                        let received = datagram(slot + offset, size.min(len - offset));
                        self.received.push(received);
                    }
                }
                _ => {
                    let received = datagram(slot, len);
                    self.received.push(received);
                }
            }
        }
        Ok(self.received.len())
    }

    /// The `i`-th datagram of the last [`recv`](Self::recv).
    ///
    /// # Panics
    /// If `i >= self.len()` (a caller bug, not network input).
    pub fn get(&self, i: usize) -> Datagram<'_> {
        let received = &self.received[i];
        let start = received.start;
        Datagram {
            source: received.source,
            destination: received.destination,
            payload: &self.buffers[start..start + received.len],
            truncated: received.truncated,
            arrival_unix_micros: received.arrival_unix_micros,
        }
    }

    /// Datagrams held from the last `recv`.
    pub fn len(&self) -> usize {
        self.received.len()
    }

    pub fn is_empty(&self) -> bool {
        self.received.is_empty()
    }

    /// The datagrams of the last `recv`, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = Datagram<'_>> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Points every header at its own storage and resets the lengths the kernel overwrites.
    fn prepare(&mut self) {
        let buffers = self.buffers.as_mut_ptr();
        let iovecs = self.iovecs.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        let controls = self.controls.as_mut_ptr();
        for (i, header) in self.headers.iter_mut().enumerate() {
            // SAFETY: every vector holds `headers.len()` entries (`buffers` that many
            // RECV_SLOT_SIZE slots), so each offset stays inside its allocation.
            let (iovec, name, control) = unsafe {
                let iovec = iovecs.add(i);
                iovec.write(libc::iovec {
                    iov_base: buffers.add(i * RECV_SLOT_SIZE).cast(),
                    iov_len: RECV_SLOT_SIZE,
                });
                (iovec, names.add(i), controls.add(i))
            };
            let msg = &mut header.msg_hdr;
            msg.msg_name = name.cast();
            msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as _;
            msg.msg_iov = iovec;
            msg.msg_iovlen = 1;
            msg.msg_control = control.cast();
            msg.msg_controllen = CMSG_BUFFER_SIZE as _;
            msg.msg_flags = 0;
            header.msg_len = 0;
        }
    }
}

/// What one [`SendBatch::flush`] did. Either way `sent` were handed to the kernel and `dropped`
/// were discarded after a per-datagram error; `Blocked` means the socket is full (`EAGAIN` /
/// `ENOBUFS`) and the rest is still queued in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    Done { sent: usize, dropped: usize },
    Blocked { sent: usize, dropped: usize },
}

impl FlushOutcome {
    pub fn sent(self) -> usize {
        match self {
            Self::Done { sent, .. } | Self::Blocked { sent, .. } => sent,
        }
    }

    pub fn dropped(self) -> usize {
        match self {
            Self::Done { dropped, .. } | Self::Blocked { dropped, .. } => dropped,
        }
    }

    pub fn is_blocked(self) -> bool {
        matches!(self, Self::Blocked { .. })
    }
}

/// A queue of outgoing datagrams sent with `sendmmsg`, with reusable syscall storage.
///
/// Datagrams to one destination leave in the order they were queued. Before a flush the queue
/// is grouped by destination (stable: first destination first), so the datagrams one flush
/// holds for a destination (a video frame's packets to one player) go as one message with UDP
/// GSO (`UDP_SEGMENT`): the kernel then walks its send path once per message instead of once
/// per datagram. A socket that refuses GSO gets plain messages from then on.
pub struct SendBatch {
    queue: VecDeque<Outgoing>,
    iovecs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<CmsgBuffer>,
    headers: Vec<libc::mmsghdr>,
    /// Datagrams in each message of the prepared chunk.
    segments: Vec<usize>,
    /// Sum of the queued payload lengths.
    bytes: usize,
    /// UDP GSO is used (until a socket refuses it).
    gso: bool,
    /// Scratch for grouping the queue by destination (hashed for every datagram sent; the
    /// destinations are the core's connected peers, so an unkeyed fast hash).
    groups: FxHashMap<(SocketAddr, Option<IpAddr>), usize>,
    grouped: Vec<(usize, Outgoing)>,
    /// Messages the kernel accepted so far (a GSO message carries several datagrams).
    messages: u64,
    /// Datagrams queued with RTP padding since the last [`SendBatch::take_padded`].
    padded: u64,
    /// Buffers of sent datagrams, emptied, for [`SendBatch::buffer`]: a forwarded packet
    /// then costs no allocation.
    spare: Vec<Vec<u8>>,
}

// SAFETY: the raw pointers inside `iovecs` and `headers` only ever point into heap storage owned by
// this same value (re-derived before every syscall), so moving it to another thread is sound.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// An empty queue with room for `capacity` datagrams before it grows.
    pub fn new(capacity: usize) -> Self {
        let empty_iovec = libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        };
        Self {
            queue: VecDeque::with_capacity(capacity),
            iovecs: vec![empty_iovec; SEND_CHUNK_DATAGRAMS],
            names: vec![zeroed_sockaddr(); SEND_CHUNK],
            controls: vec![CmsgBuffer::new(); SEND_CHUNK],
            headers: vec![zeroed_mmsghdr(); SEND_CHUNK],
            segments: Vec::with_capacity(SEND_CHUNK),
            bytes: 0,
            gso: true,
            groups: FxHashMap::default(),
            grouped: Vec::new(),
            messages: 0,
            padded: 0,
            spare: Vec::new(),
        }
    }

    /// An empty buffer to fill with a datagram for [`SendBatch::push`]: one that an earlier
    /// datagram left once it was sent, when there is one.
    pub fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps a sent datagram's buffer for [`SendBatch::buffer`], up to [`SPARE_BUFFERS`] of
    /// them, none larger than [`SPARE_BUFFER_MAX`].
    fn recycle(spare: &mut Vec<Vec<u8>>, mut payload: Vec<u8>) {
        if spare.len() < SPARE_BUFFERS && payload.capacity() <= SPARE_BUFFER_MAX {
            payload.clear();
            spare.push(payload);
        }
    }

    /// Queues a datagram. `source`, when set, is the local address it should leave from; it is
    /// applied only on a wildcard-bound socket (where the kernel would otherwise choose).
    pub fn push(&mut self, destination: SocketAddr, source: Option<IpAddr>, payload: Vec<u8>) {
        self.bytes += payload.len();
        self.queue.push_back(Outgoing {
            destination,
            source,
            payload,
        });
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Messages handed to the kernel since this queue was made: equal to the datagrams sent
    /// without GSO, fewer with it.
    pub fn messages_sent(&self) -> u64 {
        self.messages
    }

    /// Notes that the datagram just queued carries RTP padding (a player's packet padded to
    /// the size of the run it joins, so the run goes as one GSO message).
    pub fn note_padded(&mut self) {
        self.padded += 1;
    }

    /// Padded datagrams noted since the last call.
    pub fn take_padded(&mut self) -> u64 {
        std::mem::take(&mut self.padded)
    }

    /// Total payload bytes waiting to be sent.
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Sends queued datagrams with `sendmmsg(MSG_DONTWAIT)`, up to [`SEND_CHUNK`] per call, until
    /// the queue is empty or the socket is full (`EAGAIN`/`ENOBUFS`: `Blocked`, the rest stays
    /// queued in order). A datagram refused with another error (`EINVAL`, `EMSGSIZE`,
    /// `EHOSTUNREACH`, ...) is dropped and counted. If `fd` is not a usable socket the whole queue
    /// is dropped.
    pub fn flush(&mut self, fd: RawFd) -> FlushOutcome {
        if self.queue.is_empty() {
            return FlushOutcome::Done {
                sent: 0,
                dropped: 0,
            };
        }
        // One getsockname per flush keeps the family / wildcard decision right for whatever
        // socket `fd` currently is; `flush_from` skips it when the caller knows the address.
        let local = match local_address(fd) {
            Ok(local) => local,
            Err(err) => return self.drop_all(&err),
        };
        self.flush_with(local, |headers| send_mmsg(fd, headers))
    }

    /// [`SendBatch::flush`] for a socket whose bound address `local` the caller keeps (the
    /// cores do: a syscall less on every flush).
    pub fn flush_from(&mut self, fd: RawFd, local: SocketAddr) -> FlushOutcome {
        if self.queue.is_empty() {
            return FlushOutcome::Done {
                sent: 0,
                dropped: 0,
            };
        }
        self.flush_with(local, |headers| send_mmsg(fd, headers))
    }

    /// Removes and returns the head datagram.
    pub fn pop_front(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let out = self.queue.pop_front()?;
        self.bytes -= out.payload.len();
        Some((out.destination, out.payload))
    }

    /// The flush loop, with the syscall injected so tests can simulate a full socket.
    fn flush_with(
        &mut self,
        local: SocketAddr,
        mut send: impl FnMut(&mut [libc::mmsghdr]) -> io::Result<usize>,
    ) -> FlushOutcome {
        let (mut sent, mut dropped) = (0, 0);
        if self.gso {
            self.group();
        }
        while !self.queue.is_empty() {
            let count = self.prepare(local);
            match send(&mut self.headers[..count]) {
                Ok(0) => return FlushOutcome::Blocked { sent, dropped },
                Ok(accepted) => {
                    let accepted = accepted.min(count);
                    let datagrams: usize = self.segments[..accepted].iter().sum();
                    self.messages += accepted as u64;
                    for out in self.queue.drain(..datagrams) {
                        self.bytes -= out.payload.len();
                        Self::recycle(&mut self.spare, out.payload);
                    }
                    sent += datagrams;
                }
                Err(err)
                    if self.segments.first().is_some_and(|&n| n > 1)
                        && matches!(
                            err.raw_os_error(),
                            Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
                        ) =>
                {
                    // No GSO on this socket's path (no checksum offload, an old kernel):
                    // plain messages from now on; nothing is lost.
                    tracing::info!(error = %err, "UDP GSO refused: sending datagrams one by one");
                    self.gso = false;
                }
                Err(err) => match err.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN | libc::ENOBUFS) => {
                        return FlushOutcome::Blocked { sent, dropped };
                    }
                    Some(libc::EBADF | libc::ENOTSOCK) => {
                        let outcome = self.drop_all(&err);
                        return FlushOutcome::Done {
                            sent,
                            dropped: dropped + outcome.dropped(),
                        };
                    }
                    _ => {
                        // With nothing sent, sendmmsg reports the first message's own error.
                        let first = self.segments.first().copied().unwrap_or(1);
                        for out in self.queue.drain(..first.min(self.queue.len())) {
                            self.bytes -= out.payload.len();
                            tracing::debug!(
                                destination = %out.destination,
                                len = out.payload.len(),
                                error = %err,
                                "dropping outgoing datagram"
                            );
                            dropped += 1;
                        }
                    }
                },
            }
        }
        FlushOutcome::Done { sent, dropped }
    }

    /// Orders the queue by destination, keeping each destination's datagrams in their order
    /// and the destinations in the order of their first datagram.
    fn group(&mut self) {
        if self.queue.len() < 2 {
            return;
        }
        // Peers queue their datagrams together, so the queue is usually grouped already: one
        // hash per run of a destination tells, and nothing has to move.
        self.groups.clear();
        let mut previous = None;
        let mut already = true;
        for out in &self.queue {
            let key = (out.destination, out.source);
            if previous != Some(key) {
                if self.groups.insert(key, 0).is_some() {
                    already = false;
                    break;
                }
                previous = Some(key);
            }
        }
        if already {
            return;
        }
        self.groups.clear();
        let groups = &mut self.groups;
        self.grouped.extend(self.queue.drain(..).map(|out| {
            let next = groups.len();
            let group = *groups.entry((out.destination, out.source)).or_insert(next);
            (group, out)
        }));
        if self.groups.len() < self.grouped.len() {
            // Stable: a destination's datagrams keep their order.
            self.grouped.sort_by_key(|(group, _)| *group);
        }
        self.queue
            .extend(self.grouped.drain(..).map(|(_, out)| out));
    }

    /// Fills the headers for the first queued datagrams, up to [`SEND_CHUNK`] messages: with
    /// GSO a message carries a run of datagrams to one destination, all of one size but the
    /// last, which may be shorter. Returns how many messages; `segments` holds their sizes.
    fn prepare(&mut self, local: SocketAddr) -> usize {
        let v6_socket = local.is_ipv6();
        let wildcard = local.ip().is_unspecified();
        let iovecs = self.iovecs.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        let controls = self.controls.as_mut_ptr();
        self.segments.clear();
        let (mut next, mut used) = (0, 0);
        while self.segments.len() < SEND_CHUNK && next < self.queue.len() {
            let first = &self.queue[next];
            let size = first.payload.len();
            let mut n = 1;
            let mut bytes = size;
            if self.gso {
                while let Some(out) = self.queue.get(next + n) {
                    let len = out.payload.len();
                    if n == GSO_MAX_SEGMENTS
                        || used + n == self.iovecs.len()
                        || out.destination != first.destination
                        || out.source != first.source
                        || len > size
                        || len == 0
                        || bytes + len > GSO_MAX_BYTES
                    {
                        break;
                    }
                    n += 1;
                    bytes += len;
                    if len < size {
                        break;
                    }
                }
            }
            if used + n > self.iovecs.len() {
                break;
            }
            let i = self.segments.len();
            for (k, out) in self.queue.range(next..next + n).enumerate() {
                // SAFETY: `used + k < iovecs.len()` (checked above). The kernel only reads
                // through `iov_base` during sendmmsg, while the payload is still queued.
                unsafe {
                    iovecs.add(used + k).write(libc::iovec {
                        iov_base: out.payload.as_ptr().cast_mut().cast(),
                        iov_len: out.payload.len(),
                    });
                }
            }
            // SAFETY: `i < SEND_CHUNK`, the length of these scratch vectors.
            let (name, control) = unsafe { (&mut *names.add(i), controls.add(i)) };
            let header = &mut self.headers[i];
            let msg = &mut header.msg_hdr;
            msg.msg_namelen = encode_sockaddr(first.destination, v6_socket, name);
            msg.msg_name = ptr::from_mut(name).cast();
            // SAFETY: in bounds, as above.
            msg.msg_iov = unsafe { iovecs.add(used) };
            msg.msg_iovlen = n as _;
            msg.msg_control = ptr::null_mut();
            msg.msg_controllen = 0;
            msg.msg_flags = 0;
            header.msg_len = 0;
            if let (true, Some(source)) = (wildcard, first.source) {
                // SAFETY: `control` is this message's own, cmsghdr-aligned CMSG_BUFFER_SIZE
                // bytes, empty so far.
                unsafe { attach_source(msg, control, source, first.destination, v6_socket) };
            }
            if n > 1 {
                msg.msg_control = control.cast();
                // SAFETY: as above; a packet-info message and this one fit together
                // (checked at compile time).
                unsafe { write_cmsg(msg, libc::SOL_UDP, libc::UDP_SEGMENT, size as u16) };
            }
            self.segments.push(n);
            next += n;
            used += n;
        }
        self.segments.len()
    }

    fn drop_all(&mut self, err: &io::Error) -> FlushOutcome {
        let dropped = self.queue.len();
        self.queue.clear();
        self.bytes = 0;
        tracing::warn!(error = %err, dropped, "media socket unusable, dropping send queue");
        FlushOutcome::Done { sent: 0, dropped }
    }
}

#[derive(Debug)]
struct Outgoing {
    destination: SocketAddr,
    source: Option<IpAddr>,
    payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Received {
    source: SocketAddr,
    destination: SocketAddr,
    /// Where the datagram starts in `RecvBatch::buffers`.
    start: usize,
    len: usize,
    truncated: bool,
    arrival_unix_micros: Option<u64>,
}

/// Control-message storage with the alignment `cmsghdr` requires.
#[derive(Clone, Copy)]
#[repr(C)]
union CmsgBuffer {
    _align: libc::cmsghdr,
    _bytes: [u8; CMSG_BUFFER_SIZE],
}

impl CmsgBuffer {
    fn new() -> Self {
        Self {
            _bytes: [0; CMSG_BUFFER_SIZE],
        }
    }
}

/// Sets the packet-info control message on `msg` so the datagram leaves from `source`. Skipped
/// when `source` cannot apply to `destination` on this socket family.
///
/// # Safety
/// `control` must point to a writable, cmsghdr-aligned `CmsgBuffer` that outlives the send.
unsafe fn attach_source(
    msg: &mut libc::msghdr,
    control: *mut CmsgBuffer,
    source: IpAddr,
    destination: SocketAddr,
    v6_socket: bool,
) {
    let destination_v4 = canonical(destination).is_ipv4();
    let source = canonical_ip(source);
    if source.is_ipv4() != destination_v4 || (!v6_socket && !destination_v4) {
        return;
    }
    msg.msg_control = control.cast();
    if v6_socket {
        let ip = match source {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: ip.octets(),
            },
            ipi6_ifindex: 0,
        };
        // SAFETY: forwarded from the caller's contract; `info` fits (checked at compile time).
        unsafe { write_cmsg(msg, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, info) };
    } else if let IpAddr::V4(v4) = source {
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.octets()),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        // SAFETY: as above.
        unsafe { write_cmsg(msg, libc::IPPROTO_IP, libc::IP_PKTINFO, info) };
    }
}

/// Appends one control message holding `data` after the `msg_controllen` bytes already used
/// in `msg`'s control buffer.
///
/// # Safety
/// `msg.msg_control` must point to at least `msg_controllen + cmsg_space(size_of::<T>())`
/// writable bytes aligned for `cmsghdr`, and `msg_controllen` must be a sum of `cmsg_space`s.
unsafe fn write_cmsg<T>(msg: &mut libc::msghdr, level: libc::c_int, kind: libc::c_int, data: T) {
    let used: usize = msg.msg_controllen as _; // size_t on glibc, socklen_t on musl
    msg.msg_controllen = (used + cmsg_space(mem::size_of::<T>())) as _;
    // SAFETY: the control buffer is large and aligned enough (caller contract) and `used` is a
    // multiple of the cmsghdr alignment, so the header plus data fit at that offset; the data
    // may be unaligned.
    unsafe {
        let cmsg = msg
            .msg_control
            .cast::<u8>()
            .add(used)
            .cast::<libc::cmsghdr>();
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<T>() as _) as _;
        libc::CMSG_DATA(cmsg).cast::<T>().write_unaligned(data);
    }
}

/// What a received datagram's control messages say.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Control {
    /// From the packet-info message.
    destination: Option<SocketAddr>,
    /// From `SCM_TIMESTAMPNS`.
    arrival_unix_micros: Option<u64>,
    /// From `UDP_GRO`: the message holds datagrams of this size (the last may be shorter).
    gro_segment: Option<usize>,
}

/// The destination (packet info) and arrival time (`SCM_TIMESTAMPNS`) of a received datagram,
/// where its control messages carry them.
///
/// # Safety
/// `msg.msg_control` / `msg.msg_controllen` must describe readable control data written by the
/// kernel (or be empty).
unsafe fn read_control(msg: &libc::msghdr, port: u16) -> Control {
    let mut control = Control::default();
    // `msg_controllen` is `size_t` with glibc but `socklen_t` with musl.
    #[allow(clippy::unnecessary_cast)]
    let Some(end) = (msg.msg_control as usize).checked_add(msg.msg_controllen as usize) else {
        return control;
    };
    // SAFETY: FIRSTHDR / NXTHDR only yield headers that start inside the control data.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null, inside the control buffer and cmsghdr-aligned.
        let header = unsafe { cmsg.read() };
        // SAFETY: only computes the address right after the header.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        let data_len = (header.cmsg_len as usize).saturating_sub(data as usize - cmsg as usize);
        let in_bounds = |size: usize| data_len >= size && data as usize + size <= end;
        match (header.cmsg_level, header.cmsg_type) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO)
                if in_bounds(mem::size_of::<libc::in_pktinfo>()) =>
            {
                // SAFETY: bounds checked above; the data may be unaligned.
                let info = unsafe { data.cast::<libc::in_pktinfo>().read_unaligned() };
                let ip = Ipv4Addr::from(info.ipi_addr.s_addr.to_ne_bytes());
                control.destination = Some(SocketAddr::new(IpAddr::V4(ip), port));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                if in_bounds(mem::size_of::<libc::in6_pktinfo>()) =>
            {
                // SAFETY: bounds checked above; the data may be unaligned.
                let info = unsafe { data.cast::<libc::in6_pktinfo>().read_unaligned() };
                let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                let scope = if ip.is_unicast_link_local() {
                    info.ipi6_ifindex
                } else {
                    0
                };
                control.destination = Some(canonical(SocketAddr::V6(SocketAddrV6::new(
                    ip, port, 0, scope,
                ))));
            }
            (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS)
                if in_bounds(mem::size_of::<libc::timespec>()) =>
            {
                // SAFETY: bounds checked above; the data may be unaligned.
                let ts = unsafe { data.cast::<libc::timespec>().read_unaligned() };
                control.arrival_unix_micros = u64::try_from(ts.tv_sec)
                    .ok()
                    .zip(u64::try_from(ts.tv_nsec).ok())
                    .map(|(s, ns)| s.saturating_mul(1_000_000).saturating_add(ns / 1_000));
            }
            (libc::SOL_UDP, libc::UDP_GRO) if in_bounds(mem::size_of::<libc::c_int>()) => {
                // SAFETY: bounds checked above; the data may be unaligned.
                let size = unsafe { data.cast::<libc::c_int>().read_unaligned() };
                control.gro_segment = usize::try_from(size).ok();
            }
            _ => {}
        }
        // SAFETY: `cmsg` came from FIRSTHDR/NXTHDR for this same `msg`.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    control
}

/// Writes `addr` as a `sockaddr_in`/`sockaddr_in6` for a socket of the given family (IPv4 is
/// mapped into IPv6 on a v6 socket, IPv4-mapped IPv6 unmapped on a v4 one); returns its length.
fn encode_sockaddr(
    addr: SocketAddr,
    v6_socket: bool,
    storage: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    let addr = match (canonical(addr), v6_socket) {
        (SocketAddr::V4(v4), true) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        (other, _) => other,
    };
    let storage = ptr::from_mut(storage);
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type.
            unsafe { storage.cast::<libc::sockaddr_in>().write(sin) };
            mem::size_of::<libc::sockaddr_in>() as _
        }
        SocketAddr::V6(v6) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_scope_id = v6.scope_id();
            // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type.
            unsafe { storage.cast::<libc::sockaddr_in6>().write(sin6) };
            mem::size_of::<libc::sockaddr_in6>() as _
        }
    }
}

/// Reads an IPv4/IPv6 socket address of `len` bytes; IPv4-mapped IPv6 comes back as IPv4.
fn decode_sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    let family = libc::c_int::from(storage.ss_family);
    let storage = ptr::from_ref(storage);
    match family {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in, and every bit
            // pattern is a valid sockaddr_in.
            let sin = unsafe { storage.cast::<libc::sockaddr_in>().read() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { storage.cast::<libc::sockaddr_in6>().read() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            // Flow info is dropped so one peer always maps to one `SocketAddr` key.
            Some(canonical(SocketAddr::V6(SocketAddrV6::new(
                ip,
                port,
                0,
                sin6.sin6_scope_id,
            ))))
        }
        _ => None,
    }
}

/// IPv4-mapped IPv6 addresses as plain IPv4; everything else unchanged.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// The socket's bound address (`getsockname`).
fn local_address(fd: RawFd) -> io::Result<SocketAddr> {
    let mut storage = zeroed_sockaddr();
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are valid for writes and `len` is the storage size.
    let rc = unsafe { libc::getsockname(fd, ptr::from_mut(&mut storage).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    decode_sockaddr(&storage, len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
}

/// One `sendmmsg(MSG_DONTWAIT)` call; returns how many datagrams the kernel accepted.
fn send_mmsg(fd: RawFd, headers: &mut [libc::mmsghdr]) -> io::Result<usize> {
    // SAFETY: the headers were filled by `SendBatch::prepare` and point at storage and payloads
    // that stay alive and unmoved for the duration of the call.
    let rc = unsafe {
        libc::sendmmsg(
            fd,
            headers.as_mut_ptr(),
            headers.len() as _,
            libc::MSG_DONTWAIT as _,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int together with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            ptr::from_ref(&value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Best-effort buffer sizing; returns the size the kernel reports afterwards.
fn tune_buffer(
    addr: SocketAddr,
    option: &'static str,
    requested: usize,
    set: impl FnOnce(usize) -> io::Result<()>,
    read: impl FnOnce() -> io::Result<usize>,
) -> Option<usize> {
    if requested > 0
        && let Err(error) = set(requested)
    {
        tracing::warn!(%addr, option, requested, %error, "cannot set socket buffer size");
    }
    let effective = read().ok()?;
    // Linux reports twice the granted size (bookkeeping overhead); less means it was capped by
    // net.core.rmem_max / wmem_max.
    if requested > 0 && effective < requested.saturating_mul(2) {
        tracing::warn!(
            %addr,
            option,
            requested,
            effective,
            "kernel capped socket buffer size (raise net.core.rmem_max / wmem_max)"
        );
    }
    Some(effective)
}

const fn cmsg_space(len: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE(len as libc::c_uint) as usize }
}

fn zeroed_sockaddr() -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage (plain integers).
    unsafe { mem::zeroed() }
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: all-zero is a valid mmsghdr (integers and null pointers).
    unsafe { mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    const POLL_TIMEOUT_MS: libc::c_int = 5_000;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn bind(addr: &str) -> (Socket, SocketAddr) {
        let socket = bind_media_socket(sa(addr), 1 << 20, 1 << 20).unwrap();
        let local = socket.local_addr().unwrap().as_socket().unwrap();
        (socket, local)
    }

    fn bind_v6(addr: &str) -> Option<(Socket, SocketAddr)> {
        match bind_media_socket(sa(addr), 1 << 20, 1 << 20) {
            Ok(socket) => {
                let local = socket.local_addr().unwrap().as_socket().unwrap();
                Some((socket, local))
            }
            Err(err) => {
                eprintln!("skipping IPv6 part: {err}");
                None
            }
        }
    }

    /// Waits (bounded) until `fd` is readable; false on timeout.
    fn readable(fd: RawFd) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, POLL_TIMEOUT_MS) > 0 }
    }

    type Owned = (SocketAddr, SocketAddr, Vec<u8>, bool);

    /// Receives exactly `count` datagrams through a RecvBatch of `batch`.
    fn recv_n(socket: &Socket, batch: usize, count: usize) -> Vec<Owned> {
        let fd = socket.as_raw_fd();
        let local = socket.local_addr().unwrap().as_socket().unwrap();
        let mut rb = RecvBatch::new(batch);
        let mut out = Vec::new();
        while out.len() < count {
            let n = rb.recv(fd, local).unwrap();
            if n == 0 {
                assert!(
                    readable(fd),
                    "timed out with {} of {count} datagrams",
                    out.len()
                );
                continue;
            }
            assert_eq!(n, rb.len());
            out.extend(
                rb.iter()
                    .map(|d| (d.source, d.destination, d.payload.to_vec(), d.truncated)),
            );
        }
        assert_eq!(out.len(), count);
        out
    }

    fn payload(seq: usize, len: usize) -> Vec<u8> {
        let mut p: Vec<u8> = (0..len).map(|j| (seq + j) as u8).collect();
        p[..4].copy_from_slice(&(seq as u32).to_be_bytes());
        p
    }

    fn seq_of(payload: &[u8]) -> usize {
        u32::from_be_bytes(payload[..4].try_into().unwrap()) as usize
    }

    #[test]
    fn a_media_port_in_use_is_refused_not_shared() {
        let first = bind_media_socket(sa("127.0.0.1:0"), 0, 0).unwrap();
        let taken = first.local_addr().unwrap().as_socket().unwrap();
        let err = bind_media_socket(taken, 0, 0).unwrap_err();
        assert!(
            matches!(err, UdpError::Bind { addr, .. } if addr == taken),
            "{err}"
        );
        // Ephemeral binds never hand out a port another media socket holds.
        let sockets: Vec<Socket> = (0..500)
            .map(|_| bind_media_socket(sa("127.0.0.1:0"), 0, 0).unwrap())
            .collect();
        let mut ports: Vec<u16> = sockets
            .iter()
            .map(|s| s.local_addr().unwrap().as_socket().unwrap().port())
            .collect();
        ports.push(taken.port());
        let count = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), count, "a port was handed out twice");
    }

    #[test]
    fn arrival_timestamps_come_from_the_kernel_when_asked_for() {
        let wall = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64
        };
        let (stamped, stamped_addr) = bind("127.0.0.1:0");
        enable_arrival_timestamps(&stamped).unwrap();
        let (plain, plain_addr) = bind("127.0.0.1:0");
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();

        // The kernel turns stamping on for the whole host a moment after the first socket
        // asks (a deferred static key); until then a datagram is stamped when it is read.
        // So a few tries: one of them must carry its arrival time, not its read time.
        let mut rb = RecvBatch::new(4);
        let mut stamps = Vec::new();
        for _ in 0..20 {
            let before = wall();
            sender.send_to(b"stamped", stamped_addr).unwrap();
            // Read well after the arrival: the stamp is the arrival, not the read.
            std::thread::sleep(std::time::Duration::from_millis(50));
            let read_at = wall();
            assert!(readable(stamped.as_raw_fd()));
            assert_eq!(rb.recv(stamped.as_raw_fd(), stamped_addr).unwrap(), 1);
            let d = rb.get(0);
            assert_eq!(d.payload, b"stamped");
            assert_eq!(d.destination, stamped_addr, "packet info still read");
            let arrival = d
                .arrival_unix_micros
                .expect("a stamped socket reports a time");
            assert!(
                arrival >= before,
                "stamped {arrival}, before the send at {before}"
            );
            stamps.push((arrival - before, read_at - before));
            if arrival < read_at.saturating_sub(40_000) {
                break;
            }
        }
        let (arrived, read) = *stamps.last().unwrap();
        assert!(
            arrived + 40_000 < read,
            "every stamp was the read time, not the arrival (us after the send): {stamps:?}"
        );

        sender.send_to(b"plain", plain_addr).unwrap();
        assert!(readable(plain.as_raw_fd()));
        assert_eq!(rb.recv(plain.as_raw_fd(), plain_addr).unwrap(), 1);
        assert_eq!(rb.get(0).payload, b"plain");
        assert_eq!(rb.get(0).arrival_unix_micros, None);
    }

    #[test]
    fn bind_reports_errors_with_address() {
        let blocker = UdpSocket::bind("127.0.0.1:0").unwrap(); // no SO_REUSEADDR: bind conflicts
        let taken = blocker.local_addr().unwrap();
        let err = bind_media_socket(taken, 0, 0).unwrap_err();
        assert!(
            matches!(err, UdpError::Bind { addr, .. } if addr == taken),
            "{err}"
        );
        assert!(err.to_string().contains(&taken.to_string()));
    }

    #[test]
    fn batch_of_200_to_three_receivers() {
        let (sender, sender_addr) = bind("127.0.0.1:0");
        let receivers: Vec<_> = (0..3).map(|_| bind("127.0.0.1:0")).collect();
        let mut batch = SendBatch::new(256);
        let mut expected = vec![Vec::new(); 3];
        for seq in 0..200 {
            let len = 4 + (seq * 97) % (RECV_BUFFER_SIZE - 3); // 4..=2048, never truncated
            let p = payload(seq, len);
            expected[seq % 3].push(p.clone());
            batch.push(receivers[seq % 3].1, None, p);
        }
        assert_eq!(batch.len(), 200);
        let outcome = batch.flush(sender.as_raw_fd());
        assert_eq!(
            outcome,
            FlushOutcome::Done {
                sent: 200,
                dropped: 0
            }
        );
        assert!(batch.is_empty());

        for ((socket, addr), expected) in receivers.iter().zip(&expected) {
            let got = recv_n(socket, 16, expected.len());
            for ((source, destination, data, truncated), want) in got.iter().zip(expected) {
                assert_eq!(*source, sender_addr);
                assert_eq!(destination, addr);
                assert_eq!(data, want);
                assert!(!truncated);
            }
        }
    }

    #[test]
    fn wildcard_bind_reports_destination_and_honours_source() {
        let (receiver, wildcard) = bind("0.0.0.0:0");
        let port = wildcard.port();
        let (sender, sender_addr) = bind("0.0.0.0:0");
        let mut batch = SendBatch::new(4);
        let to_1 = SocketAddr::new(sa("127.0.0.1:0").ip(), port);
        let to_3 = SocketAddr::new(sa("127.0.0.3:0").ip(), port);
        let from_2: IpAddr = "127.0.0.2".parse().unwrap();
        batch.push(to_1, Some(from_2), payload(0, 10));
        batch.push(to_3, None, payload(1, 10));
        assert_eq!(batch.flush(sender.as_raw_fd()).sent(), 2);

        let got = recv_n(&receiver, 8, 2);
        assert_eq!(got[0].1, to_1);
        assert_eq!(got[0].0, SocketAddr::new(from_2, sender_addr.port()));
        assert_eq!(got[1].1, to_3);
        assert!(got[1].0.ip().is_loopback());
        assert_eq!(got[1].0.port(), sender_addr.port());
    }

    #[test]
    fn flush_from_a_known_wildcard_address_honours_the_source() {
        // The cores pass the socket's address they keep instead of asking the kernel.
        let (receiver, wildcard) = bind("0.0.0.0:0");
        let (sender, sender_addr) = bind("0.0.0.0:0");
        let mut batch = SendBatch::new(4);
        let to = SocketAddr::new(sa("127.0.0.1:0").ip(), wildcard.port());
        let from: IpAddr = "127.0.0.2".parse().unwrap();
        batch.push(to, Some(from), payload(0, 10));
        batch.push(to, None, payload(1, 10));
        batch.push(to, Some(from), payload(2, 10));
        assert_eq!(batch.flush_from(sender.as_raw_fd(), sender_addr).sent(), 3);
        // The two from `from` went as one GSO message (packet info and segment size).
        let got = recv_n(&receiver, 8, 3);
        assert_eq!(got[0].0, SocketAddr::new(from, sender_addr.port()));
        assert_eq!(got[0].2, payload(0, 10));
        assert_eq!(got[1].0, SocketAddr::new(from, sender_addr.port()));
        assert_eq!(got[1].2, payload(2, 10));
        assert_eq!(got[2].0.port(), sender_addr.port());
        assert_ne!(got[2].0.ip(), from);
        assert_eq!(got[2].2, payload(1, 10));
    }

    #[test]
    fn fallback_destination_without_pktinfo() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap(); // packet info not enabled
        receiver.set_nonblocking(true).unwrap();
        let local = receiver.local_addr().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"hello", local).unwrap();
        let mut rb = RecvBatch::new(4);
        let fd = receiver.as_raw_fd();
        while rb.recv(fd, local).unwrap() == 0 {
            assert!(readable(fd));
        }
        let d = rb.get(0);
        assert_eq!(
            (d.source, d.destination, d.payload),
            (sender.local_addr().unwrap(), local, &b"hello"[..])
        );
    }

    #[test]
    fn oversized_datagram_is_flagged_truncated() {
        let (receiver, addr) = bind("127.0.0.1:0");
        let (sender, _) = bind("127.0.0.1:0");
        let mut batch = SendBatch::new(2);
        batch.push(addr, None, payload(7, 3000));
        batch.push(addr, None, payload(8, 100));
        assert_eq!(batch.flush(sender.as_raw_fd()).sent(), 2);
        let got = recv_n(&receiver, 4, 2);
        assert!(got[0].3);
        assert_eq!(got[0].2, payload(7, 3000)[..RECV_BUFFER_SIZE]);
        assert!(!got[1].3);
        assert_eq!(got[1].2, payload(8, 100));
    }

    #[test]
    fn invalid_destinations_are_dropped_and_the_rest_sent() {
        let (receiver, addr) = bind("127.0.0.1:0");
        let (sender, _) = bind("127.0.0.1:0");
        let mut batch = SendBatch::new(8);
        batch.push(addr, None, payload(0, 20));
        batch.push(sa("127.0.0.1:0"), None, payload(1, 20)); // port 0: EINVAL
        batch.push(addr, None, payload(2, 20));
        batch.push(sa("[::1]:9"), None, payload(3, 20)); // v6 on a v4 socket: EAFNOSUPPORT
        batch.push(addr, None, payload(4, 70_000)); // EMSGSIZE
        batch.push(addr, None, payload(5, 20));
        let outcome = batch.flush(sender.as_raw_fd());
        assert_eq!(
            outcome,
            FlushOutcome::Done {
                sent: 3,
                dropped: 3
            }
        );
        let got: Vec<_> = recv_n(&receiver, 8, 3)
            .iter()
            .map(|g| seq_of(&g.2))
            .collect();
        assert_eq!(got, [0, 2, 5]);
    }

    /// Video-like traffic for three players: frames of five full packets and a shorter last
    /// one, queued packet by packet across the players as a core forwards them.
    fn frames_for(batch: &mut SendBatch, receivers: &[(Socket, SocketAddr)]) -> Vec<Vec<Vec<u8>>> {
        let mut expected = vec![Vec::new(); receivers.len()];
        let mut seq = 0;
        for _frame in 0..10 {
            for packet in 0..6 {
                let len = if packet == 5 { 500 } else { 1200 };
                for (r, (_, addr)) in receivers.iter().enumerate() {
                    let p = payload(seq, len);
                    seq += 1;
                    expected[r].push(p.clone());
                    batch.push(*addr, None, p);
                }
            }
        }
        expected
    }

    #[test]
    fn gso_sends_a_destinations_run_as_one_message_and_every_datagram_arrives() {
        let (sender, sender_addr) = bind("127.0.0.1:0");
        let receivers: Vec<_> = (0..3).map(|_| bind("127.0.0.1:0")).collect();
        let mut batch = SendBatch::new(256);
        let expected = frames_for(&mut batch, &receivers);

        // Grouped by player, each frame (a run of equal sizes ended by a shorter packet) is
        // one message: 30 messages for 180 datagrams.
        batch.group();
        assert_eq!(batch.prepare(sender_addr), 30);
        assert!(
            batch.segments.iter().all(|&n| n == 6),
            "{:?}",
            batch.segments
        );

        assert_eq!(
            batch.flush(sender.as_raw_fd()),
            FlushOutcome::Done {
                sent: 180,
                dropped: 0
            }
        );
        assert!(batch.is_empty());
        assert_eq!(batch.queued_bytes(), 0);
        assert_eq!(
            batch.messages_sent(),
            30,
            "one message per frame and player"
        );
        for ((socket, addr), expected) in receivers.iter().zip(&expected) {
            let got = recv_n(socket, 64, expected.len());
            assert_eq!(got.len(), expected.len());
            for ((source, destination, data, truncated), want) in got.iter().zip(expected) {
                assert_eq!(*source, sender_addr);
                assert_eq!(destination, addr);
                assert_eq!(data, want, "datagrams arrive whole and in order");
                assert!(!truncated);
            }
        }
    }

    #[test]
    fn a_gro_message_is_split_into_the_datagrams_that_were_sent() {
        let (sender, sender_addr) = bind("127.0.0.1:0");
        let (receiver, addr) = bind("127.0.0.1:0");
        enable_arrival_timestamps(&receiver).unwrap();
        let mut batch = SendBatch::new(16);
        // Two frames (five full packets and a shorter last one) and a lone datagram.
        let mut sent = Vec::new();
        for frame in 0..2 {
            for i in 0..6 {
                let len = if i == 5 { 700 } else { 1200 };
                sent.push(payload(frame * 6 + i, len));
                batch.push(addr, None, sent.last().unwrap().clone());
            }
        }
        sent.push(payload(12, 300));
        batch.push(addr, None, sent.last().unwrap().clone());
        assert_eq!(batch.flush(sender.as_raw_fd()).sent(), 13);
        assert_eq!(
            batch.messages_sent(),
            3,
            "two GSO frames and the lone datagram"
        );

        // On loopback a GSO send reaches a GRO socket whole: three messages, 13 datagrams.
        let fd = receiver.as_raw_fd();
        let mut rb = RecvBatch::new(3);
        let mut n = rb.recv(fd, addr).unwrap();
        while n == 0 {
            assert!(readable(fd), "nothing arrived");
            n = rb.recv(fd, addr).unwrap();
        }
        assert_eq!(
            n, 13,
            "every datagram of the three messages, from one recvmmsg"
        );
        assert!(rb.filled(), "three messages filled a batch of three");
        let got: Vec<_> = rb.iter().collect();
        for (d, want) in got.iter().zip(&sent) {
            assert_eq!((d.source, d.destination), (sender_addr, addr));
            assert_eq!(d.payload, &want[..], "whole and in order");
            assert!(!d.truncated);
            assert!(d.arrival_unix_micros.is_some());
        }
        assert_eq!(
            got[0].arrival_unix_micros, got[5].arrival_unix_micros,
            "a frame's datagrams share their message's arrival time"
        );
        assert_eq!(rb.recv(fd, addr).unwrap(), 0, "the socket is empty");
        assert!(!rb.filled());
    }

    #[test]
    fn a_destination_that_comes_back_after_another_is_grouped_with_its_first_run() {
        let (sender, sender_addr) = bind("127.0.0.1:0");
        let (a, b) = (bind("127.0.0.1:0"), bind("127.0.0.1:0"));
        let mut batch = SendBatch::new(16);
        // A A B B A: grouped (one run each) except for A's last datagram.
        for (addr, seq) in [(a.1, 0), (a.1, 1), (b.1, 2), (b.1, 3), (a.1, 4)] {
            batch.push(addr, None, payload(seq, 1200));
        }
        batch.group();
        assert_eq!(
            queued_order(&batch),
            [(a.1, 0), (a.1, 1), (a.1, 4), (b.1, 2), (b.1, 3)],
            "a destination's datagrams keep their order and come together"
        );
        assert_eq!(batch.prepare(sender_addr), 2);
        assert_eq!(batch.segments, [3, 2]);

        // Already grouped: left as queued.
        let mut batch = SendBatch::new(16);
        for (addr, seq) in [(b.1, 0), (b.1, 1), (a.1, 2)] {
            batch.push(addr, None, payload(seq, 1200));
        }
        batch.group();
        assert_eq!(queued_order(&batch), [(b.1, 0), (b.1, 1), (a.1, 2)]);
        drop(sender);
    }

    /// The queue as (destination, sequence number) pairs, in the order it would be sent.
    fn queued_order(batch: &SendBatch) -> Vec<(SocketAddr, usize)> {
        batch
            .queue
            .iter()
            .map(|o| (o.destination, seq_of(&o.payload)))
            .collect()
    }

    #[test]
    fn sent_datagrams_leave_their_buffers_for_the_next_ones() {
        let (sender, _) = bind("127.0.0.1:0");
        let (receiver, addr) = bind("127.0.0.1:0");
        let mut batch = SendBatch::new(16);
        assert_eq!(
            batch.buffer().capacity(),
            0,
            "nothing sent yet, nothing to reuse"
        );
        let mut sent = Vec::new();
        for seq in 0..4 {
            let mut buf = batch.buffer();
            buf.extend_from_slice(&payload(seq, 1200));
            sent.push(buf.as_ptr() as usize);
            batch.push(addr, None, buf);
        }
        // A buffer too large to keep (a jumbo datagram) is freed, not kept.
        batch.push(addr, None, vec![7; SPARE_BUFFER_MAX + 1]);
        assert_eq!(
            batch.flush(sender.as_raw_fd()),
            FlushOutcome::Done {
                sent: 5,
                dropped: 0
            }
        );
        assert_eq!(recv_n(&receiver, 8, 5).len(), 5);
        for _ in 0..4 {
            let buf = batch.buffer();
            assert!(buf.is_empty(), "a reused buffer starts empty");
            assert!(buf.capacity() >= 1200);
            assert!(
                sent.contains(&(buf.as_ptr() as usize)),
                "it is a sent datagram's"
            );
        }
        assert_eq!(batch.buffer().capacity(), 0, "four kept, the jumbo one not");
    }

    #[test]
    fn a_socket_refusing_gso_gets_plain_datagrams_and_loses_none() {
        let (sender, sender_addr) = bind("127.0.0.1:0");
        let receivers: Vec<_> = (0..2).map(|_| bind("127.0.0.1:0")).collect();
        let fd = sender.as_raw_fd();
        let mut batch = SendBatch::new(256);
        let expected = frames_for(&mut batch, &receivers);
        // As a path without checksum offload answers a GSO send.
        let outcome = batch.flush_with(sender_addr, |headers| {
            if headers.iter().any(|h| h.msg_hdr.msg_iovlen > 1) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            send_mmsg(fd, headers)
        });
        assert_eq!(
            outcome,
            FlushOutcome::Done {
                sent: 120,
                dropped: 0
            }
        );
        assert!(!batch.gso);
        assert_eq!(
            batch.messages_sent(),
            120,
            "one message per datagram without GSO"
        );
        for ((socket, _), expected) in receivers.iter().zip(&expected) {
            let got: Vec<_> = recv_n(socket, 64, expected.len())
                .into_iter()
                .map(|g| g.2)
                .collect();
            assert_eq!(&got, expected);
        }
    }

    #[test]
    fn blocked_keeps_the_rest_queued_in_order() {
        // Loopback never fills a UDP send buffer (skbs are orphaned on transmit), so the real
        // sendmmsg is wrapped to accept only a budget of datagrams and then report EAGAIN.
        let (receiver, addr) = bind("127.0.0.1:0");
        let (sender, sender_addr) = bind("127.0.0.1:0");
        let fd = sender.as_raw_fd();
        let mut batch = SendBatch::new(200);
        for seq in 0..150 {
            batch.push(addr, None, payload(seq, 64 + seq));
        }
        let mut budget = 100; // spans two full chunks and a partial one
        let outcome = batch.flush_with(sender_addr, |headers| {
            let n = headers.len().min(budget);
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::EAGAIN));
            }
            budget -= n;
            send_mmsg(fd, &mut headers[..n])
        });
        assert_eq!(
            outcome,
            FlushOutcome::Blocked {
                sent: 100,
                dropped: 0
            }
        );
        assert_eq!(batch.len(), 50);
        let got: Vec<_> = recv_n(&receiver, 64, 100)
            .iter()
            .map(|g| seq_of(&g.2))
            .collect();
        assert_eq!(got, (0..100).collect::<Vec<_>>());

        // The caller sends the head itself, then flushes the rest for real.
        let (destination, head) = batch.pop_front().unwrap();
        assert_eq!((destination, seq_of(&head)), (addr, 100));
        assert_eq!(
            batch.flush(fd),
            FlushOutcome::Done {
                sent: 49,
                dropped: 0
            }
        );
        let got: Vec<_> = recv_n(&receiver, 64, 49)
            .iter()
            .map(|g| seq_of(&g.2))
            .collect();
        assert_eq!(got, (101..150).collect::<Vec<_>>());
    }

    #[test]
    fn tiny_send_buffer_and_idle_receiver_accounting() {
        // Real sockets: whatever the outcome, what is reported sent arrived in order and what is
        // not is still queued in order.
        let (receiver, addr) = bind("127.0.0.1:0");
        let sender = bind_media_socket(sa("127.0.0.1:0"), 1 << 20, 1).unwrap();
        let total = 150;
        let mut batch = SendBatch::new(total);
        for seq in 0..total {
            batch.push(addr, None, payload(seq, 500));
        }
        let outcome = batch.flush(sender.as_raw_fd());
        assert_eq!(outcome.dropped(), 0);
        let sent = outcome.sent();
        assert_eq!(sent + batch.len(), total);
        assert_eq!(outcome.is_blocked(), sent < total);
        let mut next = sent;
        while let Some((_, p)) = batch.pop_front() {
            assert_eq!(seq_of(&p), next);
            next += 1;
        }
        let got: Vec<_> = recv_n(&receiver, 64, sent)
            .iter()
            .map(|g| seq_of(&g.2))
            .collect();
        assert_eq!(got, (0..sent).collect::<Vec<_>>());
    }

    #[test]
    fn bad_fd_drops_the_queue() {
        let mut batch = SendBatch::new(2);
        batch.push(sa("127.0.0.1:9"), None, vec![1]);
        batch.push(sa("127.0.0.1:9"), None, vec![2]);
        assert_eq!(
            batch.flush(-1),
            FlushOutcome::Done {
                sent: 0,
                dropped: 2
            }
        );
        assert!(batch.is_empty());
        assert_eq!(
            RecvBatch::new(1)
                .recv(-1, sa("127.0.0.1:9"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EBADF)
        );
    }

    #[test]
    fn ipv6_loopback_and_wildcard() {
        let Some((receiver, addr)) = bind_v6("[::1]:0") else {
            return;
        };
        let Some((sender, sender_addr)) = bind_v6("[::1]:0") else {
            return;
        };
        let mut batch = SendBatch::new(4);
        batch.push(addr, None, payload(0, 30));
        batch.push(
            addr,
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            payload(1, 1500),
        );
        assert_eq!(
            batch.flush(sender.as_raw_fd()),
            FlushOutcome::Done {
                sent: 2,
                dropped: 0
            }
        );
        let got = recv_n(&receiver, 4, 2);
        for (i, (source, destination, data, truncated)) in got.into_iter().enumerate() {
            assert_eq!((source, destination, truncated), (sender_addr, addr, false));
            assert_eq!(seq_of(&data), i);
        }

        let Some((wild, wild_addr)) = bind_v6("[::]:0") else {
            return;
        };
        let target = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), wild_addr.port());
        batch.push(target, None, payload(2, 30));
        assert_eq!(batch.flush(sender.as_raw_fd()).sent(), 1);
        let got = recv_n(&wild, 4, 1);
        assert_eq!((got[0].0, got[0].1), (sender_addr, target));
    }

    #[test]
    fn ipv4_mapped_on_dual_stack_socket() {
        let Some((wild, wild_addr)) = bind_v6("[::]:0") else {
            return;
        };
        if wild.only_v6().unwrap_or(true) {
            eprintln!("skipping: system binds IPv6 sockets v6-only");
            return;
        }
        let (v4_peer, v4_peer_addr) = bind("127.0.0.1:0");
        let target = SocketAddr::new(sa("127.0.0.1:0").ip(), wild_addr.port());
        let mut batch = SendBatch::new(2);
        batch.push(target, None, payload(0, 40));
        assert_eq!(batch.flush(v4_peer.as_raw_fd()).sent(), 1);
        let got = recv_n(&wild, 4, 1);
        assert_eq!((got[0].0, got[0].1), (v4_peer_addr, target)); // unmapped on the way in

        // Reply from the v6 socket to a plain IPv4 address with a v4 source: mapped on the way out.
        batch.push(v4_peer_addr, Some(target.ip()), payload(1, 40));
        assert_eq!(
            batch.flush(wild.as_raw_fd()),
            FlushOutcome::Done {
                sent: 1,
                dropped: 0
            }
        );
        let got = recv_n(&v4_peer, 4, 1);
        assert_eq!(
            (got[0].0, got[0].1, seq_of(&got[0].2)),
            (target, v4_peer_addr, 1)
        );
    }

    #[test]
    fn sockaddr_round_trip() {
        let mut storage = zeroed_sockaddr();
        for (addr, v6_socket, family, back) in [
            ("10.1.2.3:5000", false, libc::AF_INET, "10.1.2.3:5000"),
            ("10.1.2.3:5000", true, libc::AF_INET6, "10.1.2.3:5000"),
            (
                "[::ffff:10.1.2.3]:5000",
                false,
                libc::AF_INET,
                "10.1.2.3:5000",
            ),
            (
                "[2001:db8::1]:443",
                true,
                libc::AF_INET6,
                "[2001:db8::1]:443",
            ),
            ("[fe80::1%7]:443", true, libc::AF_INET6, "[fe80::1%7]:443"),
        ] {
            let len = encode_sockaddr(sa(addr), v6_socket, &mut storage);
            assert_eq!(libc::c_int::from(storage.ss_family), family, "{addr}");
            assert_eq!(decode_sockaddr(&storage, len), Some(sa(back)), "{addr}");
            assert_eq!(decode_sockaddr(&storage, len - 1), None);
        }
    }
}
