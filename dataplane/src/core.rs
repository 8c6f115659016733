//! The per-core runtime. [`DataPlane::start`] binds one UDP socket per core and starts one
//! glommio executor per core (pinned on the server); each owns its socket, its peers, its
//! router and its timers, and talks to other cores only through the mesh. Inside a core,
//! a few tasks share the [`Core`] state: socket readers, the command reader, the timer and
//! the mesh readers. None holds the state across an await, so there are no locks and no
//! busy-polling: an idle core sleeps in io_uring until a datagram, a command or a deadline.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use futures_lite::FutureExt;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::UdpSocket;
use glommio::{LocalExecutorBuilder, Placement};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use rustc_hash::FxHashMap;
use str0m::config::DtlsCert;
use str0m::media::{KeyframeRequestKind, MediaKind};
use tokio::sync::Notify;

use crate::api::{Command, DataPlaneConfig, Event, PeerFailure, PeerReport, Role};
use crate::demux::Demux;
use crate::direct::ResendHistory;
use crate::ids::{CoreId, PeerId, StreamId};
use crate::media::MediaPacket;
use crate::mesh::{self, Mesh, MeshEnds, MeshError, MeshMsg};
use crate::peer::{self, Peer, PeerEvent, PeerSetup};
use crate::router::{KeyframeDecision, KeyframePacing, Router};
use crate::timers::Timers;
use crate::udp::{self, FlushOutcome, RecvBatch, SendBatch};

/// A running data plane: the handle the control plane (or a client) drives it with.
pub struct DataPlane {
    cores: Vec<CoreHandle>,
    events: Receiver<Event>,
    notify: Arc<Notify>,
    joins: Vec<glommio::ExecutorJoinHandle<()>>,
    media_addrs: Vec<SocketAddr>,
    counters: Vec<Arc<CoreCounters>>,
}

/// Per-core counters, written only by their core (relaxed atomics), read by metrics.
#[derive(Debug, Default)]
pub struct CoreCounters {
    pub peers: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Messages handed to `sendmmsg`: one per datagram, or one per UDP GSO run of datagrams
    /// to one destination (`tx_packets / tx_messages` is the GSO batching achieved).
    pub tx_messages: AtomicU64,
    /// Wake-ups of the socket readers that found datagrams (`rx_packets / rx_wakeups` is the
    /// receive batching achieved).
    pub rx_wakeups: AtomicU64,
    /// Media packets written to subscribers (before encryption).
    pub forwarded: AtomicU64,
    pub dropped_unknown_source: AtomicU64,
    pub dropped_malformed: AtomicU64,
    pub dropped_send_error: AtomicU64,
    pub dropped_ring_full: AtomicU64,
    /// Keyframe requests sent to sources.
    pub keyframe_requests: AtomicU64,
    /// PLI/FIR received from players.
    pub player_keyframe_requests: AtomicU64,
    /// Packets NACKed by remotes (players asking for retransmissions), as str0m reports them
    /// every few seconds.
    pub nacks_received: AtomicU64,
    /// Packets this core's peers NACKed towards their remotes (publishers).
    pub nacks_sent: AtomicU64,
    /// NACKed packets resent to players from the core's history (direct egress path).
    pub resent: AtomicU64,
    /// Datagrams to players given RTP padding (counted as queued), so that a run of one
    /// player's packets of near sizes goes as one UDP GSO message (direct egress path).
    pub tx_padded: AtomicU64,
}

/// Why a data plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("media port {base}+{cores} is out of range")]
    PortRange { base: u16, cores: usize },
    /// A media socket could not be set up (its message names the address).
    #[error(transparent)]
    Socket(udp::UdpError),
    #[error("starting core {core}: {message}")]
    Core { core: usize, message: String },
}

/// Sending to a core that has stopped.
#[derive(Debug, thiserror::Error)]
#[error("data plane core {0} has stopped")]
pub struct CoreStopped(pub CoreId);

impl DataPlane {
    /// Binds every core's socket, then starts the executors; returns once all are running.
    pub fn start(config: DataPlaneConfig) -> Result<DataPlane, StartError> {
        let cores = config.cores.max(1);
        if config.media_port_base != 0 && config.media_port_base as usize + cores > 65_536 {
            return Err(StartError::PortRange {
                base: config.media_port_base,
                cores,
            });
        }
        let config = Arc::new(config);
        // Cores are pinned to the CPUs this process may use, in turn.
        let cpus = if config.pin {
            crate::process::allowed_cpus()
                .ok()
                .filter(|c| !c.is_empty())
                // Without the mask (never seen on Linux), the CPUs counted from 0.
                .unwrap_or_else(|| {
                    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
                })
        } else {
            Vec::new()
        };
        if config.pin && cores > cpus.len() {
            tracing::warn!(
                cores,
                cpus = ?cpus,
                "more data-plane cores than CPUs this process may run on: cores share CPUs"
            );
        }
        // The CPU of each core, in turn over the allowed ones (none when unpinned).
        let pinned: Vec<usize> = if cpus.is_empty() {
            Vec::new()
        } else {
            (0..cores).map(|n| cpus[n % cpus.len()]).collect()
        };
        let (event_tx, events) = crossbeam_channel::unbounded();
        let notify = Arc::new(Notify::new());
        let cert = generate_cert();

        let mut sockets = Vec::with_capacity(cores);
        for n in 0..cores {
            let port = match config.media_port_base {
                0 => 0,
                base => base + n as u16,
            };
            let addr = SocketAddr::new(config.bind, port);
            let socket = udp::bind_media_socket(addr, config.socket_buffer, config.socket_buffer)
                .map_err(StartError::Socket)?;
            if config.arrival_timestamps {
                stamp_arrivals(&socket, addr);
            }
            sockets.push(socket);
        }

        let mut plane = DataPlane {
            cores: Vec::with_capacity(cores),
            events,
            notify: Arc::clone(&notify),
            joins: Vec::with_capacity(cores),
            media_addrs: Vec::with_capacity(cores),
            counters: Vec::with_capacity(cores),
        };
        let meshes = mesh::wire(cores, config.ring_capacity);
        let mut pending = Vec::with_capacity(cores);
        for (n, (socket, mesh_ends)) in sockets.into_iter().zip(meshes).enumerate() {
            let id = CoreId(n as u16);
            let local = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| StartError::Core {
                    core: n,
                    message: "media socket has no local address".into(),
                })?;
            let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
            let flag = Arc::new(AtomicBool::new(false));
            let counters = Arc::new(CoreCounters::default());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let start = CoreStart {
                id,
                config: Arc::clone(&config),
                cert: cert.clone(),
                socket,
                local,
                mesh: mesh_ends,
                commands: cmd_rx,
                flag: Arc::clone(&flag),
                sink: EventSink {
                    tx: event_tx.clone(),
                    notify: Arc::clone(&notify),
                },
                counters: Arc::clone(&counters),
                ready: ready_tx,
            };
            let placement = match pinned.get(n) {
                Some(&cpu) => Placement::Fixed(cpu),
                None => Placement::Unbound,
            };
            let join = LocalExecutorBuilder::new(placement)
                .name(&format!("rc-core{n}"))
                .io_memory(CORE_IO_MEMORY)
                .ring_depth(256)
                .spawn(move || core_main(start))
                .map_err(|e| StartError::Core {
                    core: n,
                    message: e.to_string(),
                })?;
            plane.joins.push(join);
            pending.push((n, id, ready_rx, cmd_tx, flag, local, counters));
        }
        // Every core must be spawned before any is waited for: each connects its rings to
        // all the others before it reports ready.
        for (n, id, ready_rx, cmd_tx, flag, local, counters) in pending {
            let wake_addr = match ready_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(ready) => ready.map_err(|message| StartError::Core { core: n, message })?,
                Err(RecvTimeoutError::Disconnected) => {
                    // The thread ended before its executor ran (the joins are in core
                    // order): glommio says why.
                    let why = match (n < plane.joins.len()).then(|| plane.joins.remove(n).join()) {
                        Some(Err(e)) => executor_failure(&e.to_string()),
                        _ => "core did not start".into(),
                    };
                    return Err(StartError::Core {
                        core: n,
                        message: why,
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(StartError::Core {
                        core: n,
                        message: "core did not start within 10 s".into(),
                    });
                }
            };
            let wake = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|s| s.connect(wake_addr).map(|()| s))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|e| StartError::Core {
                    core: n,
                    message: format!("wake socket: {e}"),
                })?;
            plane.cores.push(CoreHandle {
                id,
                commands: cmd_tx,
                flag,
                wake,
            });
            plane.media_addrs.push(local);
            plane.counters.push(counters);
        }
        tracing::info!(cores, media = ?plane.media_addrs, cpus = ?pinned, "data plane started");
        Ok(plane)
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// The local address of each core's media socket.
    pub fn media_addrs(&self) -> &[SocketAddr] {
        &self.media_addrs
    }

    /// Each core's counters.
    pub fn counters(&self) -> &[Arc<CoreCounters>] {
        &self.counters
    }

    /// Queues a command for a core and wakes it.
    pub fn send(&self, core: CoreId, command: Command) -> Result<(), CoreStopped> {
        let handle = self.cores.get(core.index()).ok_or(CoreStopped(core))?;
        handle.send(command)
    }

    /// The next event, if one is waiting.
    pub fn try_event(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Waits for the next event; `None` once every core has stopped.
    pub async fn next_event(&self) -> Option<Event> {
        loop {
            match self.events.try_recv() {
                Ok(event) => return Some(event),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => self.notify.notified().await,
            }
        }
    }

    /// Stops every core (peers are closed) and waits for their threads.
    pub fn shutdown(&mut self) {
        for core in &self.cores {
            let _ = core.send(Command::Shutdown);
        }
        for join in self.joins.drain(..) {
            if let Err(e) = join.join() {
                tracing::warn!(error = %e, "data plane core ended with an error");
            }
        }
        self.cores.clear();
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct CoreHandle {
    id: CoreId,
    commands: Sender<Command>,
    /// Set while a wake datagram is in flight, so a burst of commands costs one datagram.
    flag: Arc<AtomicBool>,
    wake: StdUdpSocket,
}

impl CoreHandle {
    fn send(&self, command: Command) -> Result<(), CoreStopped> {
        self.commands
            .send(command)
            .map_err(|_| CoreStopped(self.id))?;
        if !self.flag.swap(true, Ordering::SeqCst) {
            let _ = self.wake.send(&[1]);
        }
        Ok(())
    }
}

#[derive(Clone)]
struct EventSink {
    tx: Sender<Event>,
    notify: Arc<Notify>,
}

impl EventSink {
    fn emit(&self, event: Event) {
        if self.tx.send(event).is_ok() {
            self.notify.notify_one();
        }
    }
}

struct CoreStart {
    id: CoreId,
    config: Arc<DataPlaneConfig>,
    cert: DtlsCert,
    socket: socket2::Socket,
    local: SocketAddr,
    mesh: MeshEnds,
    commands: Receiver<Command>,
    flag: Arc<AtomicBool>,
    sink: EventSink,
    counters: Arc<CoreCounters>,
    ready: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
}

async fn core_main(start: CoreStart) {
    let CoreStart {
        id,
        config,
        cert,
        socket,
        local,
        mesh,
        commands,
        flag,
        sink,
        counters,
        ready,
    } = start;
    let wake = match wake_socket() {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("wake socket: {e}")));
            return;
        }
    };
    let wake_addr = match wake.local_addr() {
        Ok(a) => a,
        Err(e) => {
            let _ = ready.send(Err(format!("wake socket: {e}")));
            return;
        }
    };
    let (mesh, mesh_receivers) = mesh.connect().await;
    let (timer_tx, timer_rx) = local_channel::new_bounded(1);
    let (stop_tx, stop_rx) = local_channel::new_bounded(1);
    let shared = Rc::new(into_glommio(socket));
    let candidates = candidate_addrs(&config, local.port());
    let sweep = match config.read_sweep {
        Some(every) => match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
            Ok(epoll) => Some((Rc::new(epoll), every)),
            Err(e) => {
                let _ = ready.send(Err(format!("read sweep (epoll): {e}")));
                return;
            }
        },
        None => None,
    };
    tracing::debug!(core = %id, %local, ?candidates, "core running");

    let core = Rc::new(RefCell::new(Core {
        id,
        this: Weak::new(),
        config,
        cert,
        peers: FxHashMap::default(),
        demux: Demux::new(),
        router: Router::new(),
        timers: Timers::new(),
        epoch: Instant::now(),
        shared: SocketIo::new(Rc::clone(&shared), local, None),
        candidates,
        dedicated: FxHashMap::default(),
        failed_reports: FxHashMap::default(),
        sweep: sweep.as_ref().map(|(epoll, _)| Rc::clone(epoll)),
        dirty: Vec::new(),
        sink,
        mesh,
        counters,
        queue: VecDeque::new(),
        scratch: Vec::new(),
        due_now: Vec::new(),
        media_window: (Instant::now(), 0),
        quiet: false,
        unhold: Rc::new(Notify::new()),
        fanout: Vec::new(),
        mirrors: Vec::new(),
        history: FxHashMap::default(),
        timer_signal: timer_tx,
        stop: stop_tx,
    }));
    core.borrow_mut().this = Rc::downgrade(&core);
    let _ = ready.send(Ok(wake_addr));

    glommio::spawn_local(socket_reader(
        Rc::downgrade(&core),
        SocketKey::Shared,
        shared,
        local,
        None,
    ))
    .detach();
    glommio::spawn_local(command_reader(Rc::downgrade(&core), wake, commands, flag)).detach();
    if let Some((epoll, every)) = sweep {
        glommio::spawn_local(sweep_reader(Rc::downgrade(&core), epoll, every)).detach();
    }
    glommio::spawn_local(timer_loop(Rc::downgrade(&core), timer_rx)).detach();
    for (from, rx) in mesh_receivers {
        let weak = Rc::downgrade(&core);
        glommio::spawn_local(async move {
            // What the ring holds when it wakes this task is handled as one batch, as a
            // socket read is: a frame's packets from another core then reach each player
            // in one drive (one size, one GSO message) and one flush.
            let mut batch = Vec::with_capacity(MESH_BATCH);
            while let Some(msg) = rx.recv().await {
                batch.push(msg);
                while batch.len() < MESH_BATCH {
                    match futures_lite::future::poll_once(rx.recv()).await {
                        Some(Some(msg)) => batch.push(msg),
                        _ => break,
                    }
                }
                let Some(core) = weak.upgrade() else { return };
                let mut core = core.borrow_mut();
                let now = Instant::now();
                for msg in batch.drain(..) {
                    core.on_mesh(msg, now);
                }
                core.finish(now);
            }
            tracing::trace!(%from, "mesh ring closed");
        })
        .detach();
    }
    let _ = stop_rx.recv().await;
    tracing::debug!(core = %id, "core stopped");
}

/// Asks for kernel arrival stamps on a client's media socket. Best effort: without them a
/// probe measures latency to when its core read the packet, which only adds the client's
/// own queueing.
fn stamp_arrivals(socket: &socket2::Socket, addr: SocketAddr) {
    if let Err(e) = udp::enable_arrival_timestamps(socket) {
        tracing::warn!(%addr, error = %e, "no kernel arrival timestamps: latency includes the client's own queueing");
    }
}

/// The addresses advertised as host candidates for a socket on `port`.
fn candidate_addrs(config: &DataPlaneConfig, port: u16) -> Vec<SocketAddr> {
    let ips: Vec<IpAddr> = if !config.candidate_ips.is_empty() {
        config.candidate_ips.clone()
    } else if config.bind.is_unspecified() {
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    } else {
        vec![config.bind]
    };
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

fn generate_cert() -> DtlsCert {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("the crypto backend generates a DTLS certificate")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum TimerKey {
    Peer(PeerId),
    Keyframe(StreamId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SocketKey {
    Shared,
    Dedicated(PeerId),
}

/// A socket and its outgoing queue.
struct SocketIo {
    socket: Rc<UdpSocket>,
    /// The socket's bound address, for sending without asking the kernel each time.
    local: SocketAddr,
    tx: SendBatch,
    /// The kernel buffer is full: a task waits for room, nothing else flushes meanwhile.
    blocked: bool,
    dirty: bool,
    /// Ends the reader task of a dedicated socket.
    stop: Option<LocalSender<()>>,
}

impl SocketIo {
    fn new(socket: Rc<UdpSocket>, local: SocketAddr, stop: Option<LocalSender<()>>) -> Self {
        SocketIo {
            socket,
            local,
            tx: SendBatch::new(256),
            blocked: false,
            dirty: false,
            stop,
        }
    }
}

struct Core {
    id: CoreId,
    this: Weak<RefCell<Core>>,
    config: Arc<DataPlaneConfig>,
    cert: DtlsCert,
    /// Boxed: a `Peer` (its str0m `Rtc`) is about 10 KiB, and a map of them inline would
    /// keep up to twice that per peer in spare capacity and move them all when it grows.
    /// Looked up for every packet written to a subscriber; peer ids are the core's own, so
    /// an unkeyed fast hash.
    peers: FxHashMap<PeerId, Box<Peer>>,
    demux: Demux<PeerId>,
    router: Router,
    timers: Timers<TimerKey>,
    shared: SocketIo,
    candidates: Vec<SocketAddr>,
    dedicated: FxHashMap<PeerId, SocketIo>,
    /// The last reports of failed peers, kept until they are closed
    /// ([`DataPlaneConfig::keep_failed_reports`]).
    failed_reports: FxHashMap<PeerId, PeerReport>,
    /// With [`DataPlaneConfig::read_sweep`], the dedicated sockets are registered here (keyed
    /// by peer) and read by [`sweep_reader`] instead of a reader task each.
    sweep: Option<Rc<Epoll>>,
    dirty: Vec<PeerId>,
    sink: EventSink,
    mesh: Mesh,
    counters: Arc<CoreCounters>,
    /// Peer events waiting to be acted on (processed after the peer that raised them).
    queue: VecDeque<(PeerId, PeerEvent)>,
    scratch: Vec<PeerEvent>,
    /// The origin of the timer grid that far peer deadlines are rounded to.
    epoch: Instant,
    /// Peers whose WebRTC stack wants to be driven again at once (str0m hands out the RTP
    /// written to it on its next timeout): driven at the end of the batch.
    due_now: Vec<PeerId>,
    fanout: Vec<PeerId>,
    mirrors: Vec<CoreId>,
    /// The last second of video of each stream with subscribers on this core, which the
    /// direct egress path resends NACKed packets from (see `direct`).
    history: FxHashMap<StreamId, ResendHistory>,
    /// Media packets forwarded since `media_window.0`, to tell a quiet core (see
    /// [`Core::idle_hold`]).
    media_window: (Instant, u32),
    quiet: bool,
    /// Ends the socket readers' quiet hold early, when a peer joins: its ICE and DTLS
    /// must not wait for the next step of the quiet grid.
    unhold: Rc<Notify>,
    timer_signal: LocalSender<()>,
    stop: LocalSender<()>,
}

impl Core {
    fn on_datagrams(&mut self, key: SocketKey, batch: &RecvBatch, n: usize, now: Instant) {
        for i in 0..n {
            let d = batch.get(i);
            self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
            self.counters
                .rx_bytes
                .fetch_add(d.payload.len() as u64, Ordering::Relaxed);
            if d.truncated {
                self.counters
                    .dropped_malformed
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let peer = match key {
                SocketKey::Shared => self.demux.route(d.source, d.payload),
                SocketKey::Dedicated(peer) => Some(peer),
            };
            let Some(peer) = peer else {
                self.counters
                    .dropped_unknown_source
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let accepted = self.with_peer(peer, now, |p, tx, events| {
                let accepted = p.receive(now, d)?;
                if accepted {
                    p.drive(now, tx, events)?;
                }
                Ok(accepted)
            });
            if accepted == Some(false) {
                self.counters
                    .dropped_malformed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Runs `f` on a peer with the send queue of its socket, catching str0m panics: a
    /// failing peer is removed and reported, everyone else keeps going. Re-arms the peer's
    /// timer and queues the events it raised.
    fn with_peer<R>(
        &mut self,
        id: PeerId,
        now: Instant,
        f: impl FnOnce(&mut Peer, &mut SendBatch, &mut Vec<PeerEvent>) -> Result<R, PeerFailure>,
    ) -> Option<R> {
        let rounding = self.timer_rounding();
        let peer = self.peers.get_mut(&id)?;
        let io = if peer.dedicated {
            let io = self.dedicated.get_mut(&id)?;
            if !io.dirty {
                io.dirty = true;
                self.dirty.push(id);
            }
            io
        } else {
            &mut self.shared
        };
        let mut events = std::mem::take(&mut self.scratch);
        let result = catch_unwind(AssertUnwindSafe(|| f(peer, &mut io.tx, &mut events)));
        let deadline = peer.deadline();
        self.queue.extend(events.drain(..).map(|e| (id, e)));
        self.scratch = events;
        match result {
            Ok(Ok(r)) => {
                if deadline <= now && !peer.listed {
                    peer.listed = true;
                    self.due_now.push(id);
                }
                let floor = now + Duration::from_micros(500);
                let at = coalesce(deadline.max(floor), now, self.epoch, rounding);
                arm_peer(&mut self.timers, &self.timer_signal, peer, at);
                Some(r)
            }
            Ok(Err(failure)) => {
                self.fail_peer(id, failure);
                None
            }
            Err(_) => {
                self.fail_peer(
                    id,
                    PeerFailure::Internal("the WebRTC stack panicked".into()),
                );
                None
            }
        }
    }

    /// Acts on queued peer events, drives once more the peers that are due at once (so the
    /// packets written in this batch leave with it instead of after the timer floor), then
    /// sends what is queued on every socket.
    fn finish(&mut self, now: Instant) {
        self.act_on_events(now);
        let mut due = std::mem::take(&mut self.due_now);
        for &id in &due {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            peer.listed = false;
            if peer.deadline() <= now {
                self.with_peer(id, now, |p, tx, events| p.on_timeout(now, tx, events));
            }
            if self.shared.tx.len() >= EARLY_FLUSH_DATAGRAMS {
                self.flush_all();
            }
        }
        self.act_on_events(now);
        // Whoever was listed during this pass waits for the timer's floor: no busy loop.
        let floor = now + Duration::from_micros(500);
        for id in std::mem::take(&mut self.due_now) {
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.listed = false;
                arm_peer(&mut self.timers, &self.timer_signal, peer, floor);
            }
        }
        due.clear();
        self.due_now = due;
        self.flush_all();
    }

    /// How long a socket reader waits before it looks at its socket again: nothing while media
    /// flows or a peer is connecting; on a quiet core (under [`QUIET_MEDIA_PER_S`] media
    /// packets in the last second) until the next step of the quiet grid, where the peers'
    /// timers also fire (see [`Core::timer_rounding`]). So the RTCP reports and ICE consent
    /// checks of many silent peers are read and answered in one wake-up every 100 ms, not
    /// one wake-up each. A peer joining ends the wait at once ([`Core::unhold`]).
    fn idle_hold(&mut self, now: Instant) -> Option<Duration> {
        if !self.config.quiet_batching {
            return None;
        }
        let (since, media) = self.media_window;
        if now.saturating_duration_since(since) >= Duration::from_secs(1) {
            self.quiet = media < QUIET_MEDIA_PER_S;
            self.media_window = (now, 0);
        } else if media >= QUIET_MEDIA_PER_S {
            // Media started: no waiting for the second to end.
            self.quiet = false;
        }
        if !self.quiet || self.peers.is_empty() || self.peers.values().any(|p| !p.is_connected()) {
            return None;
        }
        Some(grid_ceil(now + Duration::from_millis(1), self.epoch, QUIET_GRID) - now)
    }

    /// How peer deadlines are rounded so that many peers share a wake-up: those at least
    /// [`TIMER_SLACK_FROM`] away go up to the [`TIMER_GRID`]; on a quiet core every deadline,
    /// however near, goes up to the coarser [`QUIET_GRID`].
    fn timer_rounding(&self) -> Rounding {
        if self.quiet {
            Rounding {
                slack_from: Duration::ZERO,
                grid: QUIET_GRID,
            }
        } else {
            Rounding {
                slack_from: TIMER_SLACK_FROM,
                grid: TIMER_GRID,
            }
        }
    }

    fn act_on_events(&mut self, now: Instant) {
        while let Some((peer, event)) = self.queue.pop_front() {
            match event {
                PeerEvent::Connected => {
                    self.sink.emit(Event::Connected { peer });
                    let subscribed = self
                        .peers
                        .get(&peer)
                        .filter(|p| !p.is_ingest())
                        .and_then(|p| p.stream());
                    if let Some(stream) = subscribed {
                        self.request_keyframe(stream, now);
                    }
                }
                PeerEvent::Media(packet) => {
                    if let Some(stream) = self.peers.get(&peer).and_then(|p| p.stream()) {
                        self.forward(stream, packet, true, now);
                    }
                }
                PeerEvent::Keyframe => {
                    if let Some(stream) = self.peers.get(&peer).and_then(|p| p.stream()) {
                        tracing::debug!(core = self.id.0, stream = stream.0, "keyframe arrived");
                        self.router.keyframe_arrived(stream);
                    }
                }
                PeerEvent::Resolution { width, height } => {
                    self.sink.emit(Event::Resolution {
                        peer,
                        width,
                        height,
                    });
                }
                PeerEvent::Nacks { received, sent } => {
                    self.counters
                        .nacks_received
                        .fetch_add(received, Ordering::Relaxed);
                    self.counters.nacks_sent.fetch_add(sent, Ordering::Relaxed);
                }
                PeerEvent::Resend(seqs) => self.resend(peer, &seqs),
                PeerEvent::KeyframeRequest(_) => {
                    self.counters
                        .player_keyframe_requests
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(stream) = self.peers.get(&peer).and_then(|p| p.stream()) {
                        self.request_keyframe(stream, now);
                    }
                }
            }
        }
    }

    /// Sends a stream packet to this core's subscribers and, from the home core, to the
    /// cores that mirror it.
    fn forward(&mut self, stream: StreamId, packet: MediaPacket, originate: bool, now: Instant) {
        self.media_window.1 = self.media_window.1.saturating_add(1);
        let Some(route) = self.router.route(stream) else {
            return;
        };
        self.fanout.clear();
        self.fanout.extend_from_slice(&route.subscribers);
        self.mirrors.clear();
        if originate {
            self.mirrors.extend_from_slice(&route.mirrors);
        }
        for i in 0..self.mirrors.len() {
            let to = self.mirrors[i];
            let msg = MeshMsg::Media {
                stream,
                packet: packet.clone(),
            };
            if let Err(MeshError::Full) = self.mesh.send(to, msg) {
                self.counters
                    .dropped_ring_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.config.direct_egress && packet.kind == MediaKind::Video {
            if self.fanout.is_empty() {
                self.history.remove(&stream);
            } else {
                self.history
                    .entry(stream)
                    .or_insert_with(|| {
                        ResendHistory::new(peer::RESEND_HISTORY, peer::RESEND_HISTORY_PACKETS)
                    })
                    .push(&packet);
            }
        }
        for i in 0..self.fanout.len() {
            self.write_to(self.fanout[i], &packet, now);
        }
        self.counters
            .forwarded
            .fetch_add(self.fanout.len() as u64, Ordering::Relaxed);
    }

    /// Writes a packet to one subscriber and lists it to be driven (which sends it) at the
    /// end of the batch: one drive and one timer update per subscriber and batch, not per
    /// packet.
    fn write_to(&mut self, id: PeerId, packet: &MediaPacket, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        match catch_unwind(AssertUnwindSafe(|| peer.write_media(packet, now))) {
            Ok(true) if !peer.listed => {
                peer.listed = true;
                self.due_now.push(id);
            }
            Ok(_) => {}
            Err(_) => self.fail_peer(
                id,
                PeerFailure::Internal("the WebRTC stack panicked".into()),
            ),
        }
    }

    /// Resends the packets a player NACKed, from its stream's history on this core; the peer
    /// is driven (and the packets sent) at the end of the batch.
    fn resend(&mut self, id: PeerId, seqs: &[u64]) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(history) = peer.stream().and_then(|s| self.history.get(&s)) else {
            return;
        };
        let mut queued = 0u64;
        for seq in seqs {
            if let Some(packet) = history.get(*seq)
                && peer.resend(packet)
            {
                queued += 1;
            }
        }
        self.counters.resent.fetch_add(queued, Ordering::Relaxed);
        if queued > 0 && !peer.listed {
            peer.listed = true;
            self.due_now.push(id);
        }
    }

    /// Routes a keyframe request to the stream's source: here (through the coalescing
    /// gate), or to the stream's home core.
    fn request_keyframe(&mut self, stream: StreamId, now: Instant) {
        let Some(route) = self.router.route(stream) else {
            return;
        };
        if let Some(source) = route.source {
            let pacing = KeyframePacing {
                unanswered: self.config.keyframe_min_interval,
                answered: self.config.keyframe_answered_interval,
            };
            let decision = self.router.keyframe(stream, now, pacing);
            tracing::debug!(
                core = self.id.0,
                stream = stream.0,
                ?decision,
                "keyframe request"
            );
            match decision {
                KeyframeDecision::SendNow => self.send_keyframe_request(source, now),
                KeyframeDecision::Defer(at) => self.arm(TimerKey::Keyframe(stream), at),
                KeyframeDecision::Coalesced => {}
            }
        } else if let Some(home) = route.home
            && home != self.id
        {
            let _ = self.mesh.send(home, MeshMsg::Keyframe { stream });
        }
    }

    fn send_keyframe_request(&mut self, source: PeerId, now: Instant) {
        self.counters
            .keyframe_requests
            .fetch_add(1, Ordering::Relaxed);
        self.with_peer(source, now, |p, tx, events| {
            p.request_keyframe(KeyframeRequestKind::Pli, now, tx, events)
        });
    }

    fn on_mesh(&mut self, msg: MeshMsg, now: Instant) {
        match msg {
            MeshMsg::Media { stream, packet } => self.forward(stream, packet, false, now),
            MeshMsg::Keyframe { stream } => self.request_keyframe(stream, now),
            MeshMsg::Subscribe { stream, core } => self.router.set_mirror(stream, core, true),
            MeshMsg::Unsubscribe { stream, core } => self.router.set_mirror(stream, core, false),
        }
    }

    fn on_command(&mut self, command: Command, now: Instant) -> bool {
        match command {
            Command::Accept { peer, offer, role } => self.accept(peer, &offer, role, now),
            Command::Offer { peer, role } => self.offer(peer, role, now),
            Command::Answer { peer, answer } => {
                if !self.peers.contains_key(&peer) {
                    self.sink.emit(Event::Failed {
                        peer,
                        reason: PeerFailure::UnknownPeer,
                        continuity: None,
                    });
                    return true;
                }
                let media = self.with_peer(peer, now, |p, tx, events| {
                    let media = p.apply_answer(&answer)?;
                    p.drive(now, tx, events)?;
                    Ok(media)
                });
                if let Some(media) = media {
                    self.sink.emit(Event::Negotiated { peer, media });
                }
            }
            Command::Close { peer } => {
                self.failed_reports.remove(&peer);
                self.with_peer(peer, now, |p, tx, events| {
                    p.close(now, tx, events);
                    Ok(())
                });
                self.flush_all();
                if let Some(removed) = self.remove_peer(peer) {
                    self.sink.emit(Event::Closed {
                        peer,
                        continuity: removed.continuity(),
                    });
                }
            }
            Command::RequestKeyframe { stream } => self.request_keyframe(stream, now),
            Command::Query { peer, reply } => {
                let report = match self.peers.get(&peer) {
                    Some(p) => Some(p.report()),
                    None => self.failed_reports.get(&peer).cloned(),
                };
                let _ = reply.send(report);
            }
            Command::Shutdown => {
                let ids: Vec<PeerId> = self.peers.keys().copied().collect();
                for id in ids {
                    self.with_peer(id, now, |p, tx, events| {
                        p.close(now, tx, events);
                        Ok(())
                    });
                }
                self.queue.clear();
                self.failed_reports.clear();
                self.flush_all();
                for id in self.peers.keys().copied().collect::<Vec<_>>() {
                    self.remove_peer(id);
                }
                let _ = self.stop.try_send(());
                return false;
            }
        }
        true
    }

    fn accept(&mut self, id: PeerId, offer: &str, role: Role, now: Instant) {
        if self.peers.len() >= self.config.max_peers_per_core {
            self.emit_failed(id, PeerFailure::PeerLimit);
            return;
        }
        let attach = attachment(&role);
        let setup = PeerSetup {
            core: self.id,
            now,
            config: &self.config,
            cert: &self.cert,
            candidates: &self.candidates,
        };
        let built = catch_unwind(AssertUnwindSafe(|| Peer::accept(id, offer, role, &setup)));
        match flatten(built) {
            Ok((mut peer, sdp, media)) => {
                self.demux.add_ufrag(peer.ice_ufrag(), id);
                self.insert_peer(peer, attach);
                self.sink.emit(Event::Sdp {
                    peer: id,
                    sdp,
                    media,
                });
                self.with_peer(id, now, |p, tx, events| p.drive(now, tx, events));
            }
            Err(failure) => self.emit_failed(id, failure),
        }
    }

    fn offer(&mut self, id: PeerId, role: Role, now: Instant) {
        if self.peers.len() >= self.config.max_peers_per_core {
            self.emit_failed(id, PeerFailure::PeerLimit);
            return;
        }
        let bind = SocketAddr::new(self.config.bind, 0);
        let buffer = self.config.socket_buffer.min(1 << 20);
        let socket = match udp::bind_media_socket(bind, buffer, buffer) {
            Ok(s) => s,
            Err(e) => {
                self.emit_failed(id, PeerFailure::Socket(e.to_string()));
                return;
            }
        };
        if self.config.arrival_timestamps {
            stamp_arrivals(&socket, bind);
        }
        let Some(local) = socket.local_addr().ok().and_then(|a| a.as_socket()) else {
            self.emit_failed(id, PeerFailure::Socket("no local address".into()));
            return;
        };
        let candidates = candidate_addrs(&self.config, local.port());
        let attach = attachment(&role);
        let setup = PeerSetup {
            core: self.id,
            now,
            config: &self.config,
            cert: &self.cert,
            candidates: &candidates,
        };
        let built = catch_unwind(AssertUnwindSafe(|| Peer::offer(id, role, &setup)));
        match flatten(built) {
            Ok((peer, sdp, media)) => {
                if let Some(sweep) = &self.sweep {
                    let watched = EpollEvent::new(EpollFlags::EPOLLIN, id.0);
                    if let Err(e) = sweep.add(&socket, watched) {
                        self.emit_failed(id, PeerFailure::Socket(format!("epoll: {e}")));
                        return;
                    }
                }
                let socket = Rc::new(into_glommio(socket));
                // Swept sockets have no reader task of their own to stop.
                let (stop_tx, stop_rx) = match self.sweep {
                    Some(_) => (None, None),
                    None => {
                        let (tx, rx) = local_channel::new_bounded(1);
                        (Some(tx), Some(rx))
                    }
                };
                let io = SocketIo::new(Rc::clone(&socket), local, stop_tx);
                self.dedicated.insert(id, io);
                self.insert_peer(peer, attach);
                if let Some(stop_rx) = stop_rx {
                    spawn_later(socket_reader(
                        self.this.clone(),
                        SocketKey::Dedicated(id),
                        socket,
                        local,
                        Some(stop_rx),
                    ));
                }
                self.sink.emit(Event::Sdp {
                    peer: id,
                    sdp,
                    media,
                });
            }
            Err(failure) => self.emit_failed(id, failure),
        }
    }

    fn insert_peer(&mut self, peer: Peer, attach: Option<Attach>) {
        let id = peer.id;
        // A connecting peer ends the quiet state: readers holding for the grid look now.
        self.unhold.notify_waiters();
        match attach {
            Some(Attach::Source(stream)) => self.router.set_source(stream, id),
            Some(Attach::Subscriber {
                stream,
                home,
                relay,
            }) => {
                self.router.subscribe(stream, id, home, relay);
                let first = self
                    .router
                    .route(stream)
                    .is_some_and(|r| r.subscribers.len() == 1);
                if home != self.id && first {
                    let msg = MeshMsg::Subscribe {
                        stream,
                        core: self.id,
                    };
                    let _ = self.mesh.send(home, msg);
                }
            }
            None => {}
        }
        self.peers.insert(id, Box::new(peer));
        self.counters.peers.fetch_add(1, Ordering::Relaxed);
    }

    fn remove_peer(&mut self, id: PeerId) -> Option<Box<Peer>> {
        let peer = self.peers.remove(&id)?;
        self.counters.peers.fetch_sub(1, Ordering::Relaxed);
        self.demux.remove_peer(id);
        self.timers.cancel(TimerKey::Peer(id));
        if let Some(stream) = peer.stream() {
            if peer.is_ingest() {
                self.router.clear_source(stream, id);
            } else {
                let home = self.router.route(stream).and_then(|r| r.home);
                self.router.unsubscribe(stream, id);
                let none_left = self
                    .router
                    .route(stream)
                    .is_none_or(|r| r.subscribers.is_empty());
                if none_left {
                    self.history.remove(&stream);
                }
                if let Some(home) = home
                    && home != self.id
                    && none_left
                {
                    let msg = MeshMsg::Unsubscribe {
                        stream,
                        core: self.id,
                    };
                    let _ = self.mesh.send(home, msg);
                }
            }
        }
        if let Some(mut io) = self.dedicated.remove(&id) {
            let _ = io.tx.flush_from(io.socket.as_raw_fd(), io.local);
            if let Some(sweep) = &self.sweep {
                // SAFETY: `io` owns the socket, so the descriptor is open for this call.
                let fd = unsafe { BorrowedFd::borrow_raw(io.socket.as_raw_fd()) };
                if let Err(e) = sweep.delete(fd) {
                    tracing::debug!(peer = %id, error = %e, "epoll delete");
                }
            }
            if let Some(stop) = io.stop.take() {
                let _ = stop.try_send(());
            }
        }
        Some(peer)
    }

    fn fail_peer(&mut self, id: PeerId, reason: PeerFailure) {
        if let Some(peer) = self.remove_peer(id) {
            tracing::info!(core = %self.id, peer = %id, %reason, "peer failed");
            if self.config.keep_failed_reports {
                self.failed_reports.insert(id, peer.report());
            }
            self.sink.emit(Event::Failed {
                peer: id,
                reason,
                continuity: peer.continuity(),
            });
        }
    }

    fn emit_failed(&self, peer: PeerId, reason: PeerFailure) {
        tracing::info!(core = %self.id, %peer, %reason, "peer not created");
        self.sink.emit(Event::Failed {
            peer,
            reason,
            continuity: None,
        });
    }

    fn arm(&mut self, key: TimerKey, at: Instant) {
        if self.timers.schedule(key, at) {
            let _ = self.timer_signal.try_send(());
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        let mut budget = 8192;
        let rounding = self.timer_rounding();
        while let Some(key) = self.timers.pop_due(now) {
            match key {
                TimerKey::Peer(id) => {
                    let Some(peer) = self.peers.get_mut(&id) else {
                        continue;
                    };
                    peer.armed = None;
                    let due = peer.deadline();
                    if due > now {
                        let at = coalesce(due, now, self.epoch, rounding);
                        arm_peer(&mut self.timers, &self.timer_signal, peer, at);
                        continue;
                    }
                    self.with_peer(id, now, |p, tx, events| p.on_timeout(now, tx, events));
                }
                TimerKey::Keyframe(stream) => {
                    let source = self.router.route(stream).and_then(|r| r.source);
                    if let Some(source) = source
                        && self.router.keyframe_due(stream, now)
                    {
                        self.send_keyframe_request(source, now);
                    }
                }
            }
            budget -= 1;
            if budget == 0 {
                break;
            }
        }
        self.finish(now);
    }

    /// Sends what every socket has queued: the dedicated sockets (relays to other servers)
    /// first, so their packets do not wait behind this core's players.
    fn flush_all(&mut self) {
        while let Some(id) = self.dirty.pop() {
            let Some(io) = self.dedicated.get_mut(&id) else {
                continue;
            };
            io.dirty = false;
            if io.blocked {
                continue;
            }
            let fd = io.socket.as_raw_fd();
            if flush_one(io, fd, &self.counters) {
                io.blocked = true;
                self.spawn_unblock(SocketKey::Dedicated(id));
            }
        }
        let fd = self.shared.socket.as_raw_fd();
        if !self.shared.blocked {
            let blocked = flush_one(&mut self.shared, fd, &self.counters);
            if blocked {
                self.shared.blocked = true;
                self.spawn_unblock(SocketKey::Shared);
            }
        }
    }

    fn io_mut(&mut self, key: SocketKey) -> Option<&mut SocketIo> {
        match key {
            SocketKey::Shared => Some(&mut self.shared),
            SocketKey::Dedicated(id) => self.dedicated.get_mut(&id),
        }
    }

    /// The socket's buffer is full: wait for room with one asynchronous send of the head
    /// datagram, then flush the rest, in order.
    fn spawn_unblock(&self, key: SocketKey) {
        let weak = self.this.clone();
        spawn_later(async move {
            loop {
                let (socket, head) = {
                    let Some(core) = weak.upgrade() else { return };
                    let mut core = core.borrow_mut();
                    let Some(io) = core.io_mut(key) else { return };
                    (Rc::clone(&io.socket), io.tx.pop_front())
                };
                if let Some((dst, data)) = head {
                    let _ = socket.send_to(&data, dst).await;
                }
                let Some(core) = weak.upgrade() else { return };
                let mut core = core.borrow_mut();
                let counters = Arc::clone(&core.counters);
                let Some(io) = core.io_mut(key) else { return };
                let fd = io.socket.as_raw_fd();
                if !flush_one(io, fd, &counters) {
                    io.blocked = false;
                    return;
                }
            }
        });
    }
}

/// Why a core's executor could not start, with what to do about the usual cause: glommio
/// refuses to start under a locked-memory limit of 512 KiB (io_uring's rings and buffers
/// count against it), above the old default of 64 KiB.
fn executor_failure(error: &str) -> String {
    if error.contains("MemLockLimit") {
        format!(
            "{error}: io_uring needs a locked-memory limit of at least 512 KiB; raise it \
             (ulimit -l, or LimitMEMLOCK= in a systemd unit)"
        )
    } else {
        error.to_owned()
    }
}

/// Bytes of io_uring buffers each core registers (locked memory; past the limit glommio
/// goes on without registering them).
const CORE_IO_MEMORY: usize = 512 << 10;

/// A batch's sends start once this many datagrams are sealed for the shared socket, so the
/// first subscribers' packets leave while the rest are still being sealed (a keyframe to
/// 100 players is 1,700 datagrams); it costs one more `sendmmsg` per this many datagrams.
const EARLY_FLUSH_DATAGRAMS: usize = udp::SEND_CHUNK;
/// The most messages from another core's ring handled in one batch.
const MESH_BATCH: usize = 256;

/// A core that forwarded fewer media packets than this in the last second is quiet (an audio
/// stream alone is 50 a second).
const QUIET_MEDIA_PER_S: u32 = 10;

/// Peer deadlines at least this far away are rounded up to the timer grid.
const TIMER_SLACK_FROM: Duration = Duration::from_millis(100);
/// The grid those deadlines are rounded to: the periodic work of many peers (RTCP reports
/// every second, statistics every 2 s) then shares one wake-up per grid step instead of
/// one each, at the price of at most this much delay for work that is not urgent.
const TIMER_GRID: Duration = Duration::from_millis(25);
/// The grid of a quiet core (see [`Core::idle_hold`]): its socket reads and all its peer
/// timers. With no media to delay, only RTCP, ICE consent and statistics wait for it. A
/// multiple of [`TIMER_GRID`], so the two grids' steps coincide.
const QUIET_GRID: Duration = Duration::from_millis(100);

/// How [`coalesce`] rounds a deadline.
#[derive(Clone, Copy, Debug)]
struct Rounding {
    /// Deadlines closer than this stay exact.
    slack_from: Duration,
    /// The steps the others are rounded up to, counted from the core's epoch.
    grid: Duration,
}

/// Ensures a peer is driven at or before `at`, and wakes the core's sleeping timer if that
/// is now the earliest deadline of all.
fn arm_peer(timers: &mut Timers<TimerKey>, signal: &LocalSender<()>, peer: &mut Peer, at: Instant) {
    if timers.schedule_mirrored(TimerKey::Peer(peer.id), at, &mut peer.armed) {
        let _ = signal.try_send(());
    }
}

/// Rounds a far deadline up to the core's timer grid; near ones stay exact. Never earlier
/// than `at`.
fn coalesce(at: Instant, now: Instant, epoch: Instant, rounding: Rounding) -> Instant {
    if at.saturating_duration_since(now) < rounding.slack_from {
        return at;
    }
    grid_ceil(at, epoch, rounding.grid)
}

/// The first step of a grid at or after `at`.
fn grid_ceil(at: Instant, epoch: Instant, grid: Duration) -> Instant {
    let grid = grid.as_micros();
    let offset = at.saturating_duration_since(epoch).as_micros();
    let rounded = offset.div_ceil(grid) * grid;
    epoch + Duration::from_micros(u64::try_from(rounded).unwrap_or(u64::MAX))
}

/// Flushes one socket's queue; true if the kernel buffer filled up.
fn flush_one(io: &mut SocketIo, fd: std::os::fd::RawFd, counters: &CoreCounters) -> bool {
    if io.tx.is_empty() {
        return false;
    }
    let bytes = io.tx.queued_bytes();
    let messages = io.tx.messages_sent();
    let (sent, dropped, blocked) = match io.tx.flush_from(fd, io.local) {
        FlushOutcome::Done { sent, dropped } => (sent, dropped, false),
        FlushOutcome::Blocked { sent, dropped } => (sent, dropped, true),
    };
    // Datagrams first, then messages: `/metrics` reads them in the other order, so a page
    // never shows more messages than datagrams.
    counters
        .tx_packets
        .fetch_add(sent as u64, Ordering::Relaxed);
    counters
        .tx_messages
        .fetch_add(io.tx.messages_sent() - messages, Ordering::Relaxed);
    let remaining = io.tx.queued_bytes();
    counters
        .tx_bytes
        .fetch_add(bytes.saturating_sub(remaining) as u64, Ordering::Relaxed);
    counters
        .dropped_send_error
        .fetch_add(dropped as u64, Ordering::Relaxed);
    counters
        .tx_padded
        .fetch_add(io.tx.take_padded(), Ordering::Relaxed);
    blocked
}

/// How a peer attaches to a stream's route.
#[derive(Clone, Copy)]
enum Attach {
    Source(StreamId),
    Subscriber {
        stream: StreamId,
        home: CoreId,
        relay: bool,
    },
}

/// Which stream a role attaches to, and how.
fn attachment(role: &Role) -> Option<Attach> {
    match role {
        Role::Ingest { stream, .. } => Some(Attach::Source(*stream)),
        Role::Egress {
            stream,
            home,
            relay,
            ..
        } => Some(Attach::Subscriber {
            stream: *stream,
            home: *home,
            relay: *relay,
        }),
        Role::Generate(_) | Role::Probe => None,
    }
}

fn flatten<T>(r: std::thread::Result<Result<T, PeerFailure>>) -> Result<T, PeerFailure> {
    match r {
        Ok(r) => r,
        Err(_) => Err(PeerFailure::Internal("the WebRTC stack panicked".into())),
    }
}

/// Reads one socket: waits for readability (a one-byte peek through io_uring), then drains
/// it with batched `recvmmsg` so every datagram's destination address is known.
/// Spawns a task on this core that first runs at the next scheduling point. glommio's
/// `spawn_local` polls a new task at once, inside the caller; a task that borrows the core
/// must not start while the caller (a method of the borrowed core) still holds it.
fn spawn_later(task: impl std::future::Future<Output = ()> + 'static) {
    glommio::spawn_local(async move {
        futures_lite::future::yield_now().await;
        task.await;
    })
    .detach();
}

/// Messages per `recvmmsg` on a core's shared socket and in the sweep of its dedicated ones.
/// Each message has a 64 KiB slot (a GRO message can fill one), and the slots' pages become
/// resident as datagrams land in them: with 64 slots (4 MiB) the server's RSS at 400 idle
/// players grew by 3.5 MB; with 8 or 16 an idle player cost what it did before GRO (27
/// November). Fan-out servers receive little (1 datagram in 130 at 1,600 players), and a
/// GRO message holds a whole frame.
const SHARED_RECV_BATCH: usize = 16;

/// Messages per `recvmmsg` on a socket of its own (a relay's, or a loadgen peer's without
/// the sweep).
const DEDICATED_RECV_BATCH: usize = 8;

async fn socket_reader(
    core: Weak<RefCell<Core>>,
    key: SocketKey,
    socket: Rc<UdpSocket>,
    local: SocketAddr,
    stop: Option<LocalReceiver<()>>,
) {
    let fd = socket.as_raw_fd();
    // A core's shared socket carries all its peers; a dedicated one a single peer, for which
    // fewer 64 KiB slots do (one GRO message holds up to 64 datagrams).
    let mut batch = RecvBatch::new(match key {
        SocketKey::Shared => SHARED_RECV_BATCH,
        SocketKey::Dedicated(_) => DEDICATED_RECV_BATCH,
    });
    let mut probe = [0u8; 1];
    loop {
        let ready = async { Some(socket.peek_from(&mut probe).await.map(|_| ())) };
        let outcome = match &stop {
            Some(stop) => {
                ready
                    .or(async { stop.recv().await.map(|()| None).unwrap_or(None) })
                    .await
            }
            None => ready.await,
        };
        let Some(readable) = outcome else {
            return;
        };
        if let Err(e) = readable {
            tracing::debug!(?key, error = %e, "socket wait failed");
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let Some(core) = core.upgrade() else { return };
        let now = Instant::now();
        let drained = drain(&core, key, fd, local, &mut batch, now);
        let hold = {
            let mut core = core.borrow_mut();
            if drained > 0 {
                core.counters.rx_wakeups.fetch_add(1, Ordering::Relaxed);
            }
            core.finish(now);
            core.idle_hold(now)
                .map(|hold| (hold, Rc::clone(&core.unhold)))
        };
        drop(core);
        match hold {
            // The Notified future registers when first polled, here, before any other task
            // of this executor can add a peer: no wake-up is missed.
            Some((hold, unhold)) => glommio::timer::sleep(hold).or(unhold.notified()).await,
            None => glommio::yield_if_needed().await,
        }
    }
}

/// Reads what is waiting on one socket, in batches, up to 1,024 datagrams (the rest is read
/// on the next wake-up, so one busy socket cannot starve the others); returns how many.
fn drain(
    core: &RefCell<Core>,
    key: SocketKey,
    fd: RawFd,
    local: SocketAddr,
    batch: &mut RecvBatch,
    now: Instant,
) -> usize {
    let mut drained = 0;
    loop {
        let n = match batch.recv(fd, local) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(?key, error = %e, "recvmmsg failed");
                break;
            }
        };
        core.borrow_mut().on_datagrams(key, batch, n, now);
        drained += n;
        // A batch that was not full drained the socket: no second recvmmsg to hear
        // EAGAIN (what arrives meanwhile makes the next readiness wait end at once).
        if drained >= 1024 || !batch.filled() {
            break;
        }
    }
    drained
}

/// Reads a core's dedicated sockets every `every` ([`DataPlaneConfig::read_sweep`]): one
/// non-blocking `epoll_wait` lists the sockets with datagrams waiting, and each is drained.
/// No socket has a readiness wait armed, so senders never have to interrupt this CPU.
async fn sweep_reader(core: Weak<RefCell<Core>>, epoll: Rc<Epoll>, every: Duration) {
    let mut batch = RecvBatch::new(SHARED_RECV_BATCH);
    let mut ready = vec![EpollEvent::empty(); 1024];
    loop {
        glommio::timer::sleep(every).await;
        let Some(core) = core.upgrade() else { return };
        let now = Instant::now();
        let n = match epoll.wait(&mut ready, 0) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "epoll_wait failed");
                continue;
            }
        };
        // Level-triggered: a socket left with datagrams (over 1,024, or more than `ready`
        // holds) is listed again on the next sweep.
        let mut drained = 0;
        for event in &ready[..n] {
            let id = PeerId(event.data());
            let socket = core
                .borrow()
                .dedicated
                .get(&id)
                .map(|io| (io.socket.as_raw_fd(), io.local));
            if let Some((fd, local)) = socket {
                drained += drain(&core, SocketKey::Dedicated(id), fd, local, &mut batch, now);
            }
        }
        let mut core = core.borrow_mut();
        if drained > 0 {
            core.counters.rx_wakeups.fetch_add(1, Ordering::Relaxed);
        }
        core.finish(now);
    }
}

/// Drains commands whenever the control plane's wake datagram arrives.
async fn command_reader(
    core: Weak<RefCell<Core>>,
    wake: UdpSocket,
    commands: Receiver<Command>,
    flag: Arc<AtomicBool>,
) {
    let mut buf = [0u8; 16];
    loop {
        flag.store(false, Ordering::SeqCst);
        {
            let Some(core) = core.upgrade() else { return };
            let mut core = core.borrow_mut();
            let now = Instant::now();
            loop {
                match commands.try_recv() {
                    Ok(command) => {
                        if !core.on_command(command, now) {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        core.on_command(Command::Shutdown, now);
                        return;
                    }
                }
            }
            core.finish(now);
        }
        let _ = wake.recv_from(&mut buf).await;
    }
}

/// Sleeps until the earliest deadline (or until an earlier one is armed), then fires what
/// is due.
async fn timer_loop(core: Weak<RefCell<Core>>, signal: LocalReceiver<()>) {
    loop {
        let next = {
            let Some(core) = core.upgrade() else { return };
            core.borrow_mut().timers.next_deadline()
        };
        let wait = next.map_or(Duration::from_secs(3600), |t| {
            t.saturating_duration_since(Instant::now())
        });
        if !wait.is_zero() {
            async {
                glommio::timer::sleep(wait).await;
            }
            .or(async {
                let _ = signal.recv().await;
            })
            .await;
        }
        let Some(core) = core.upgrade() else { return };
        core.borrow_mut().fire_timers(Instant::now());
        drop(core);
        glommio::yield_if_needed().await;
    }
}

/// The socket a core's command reader waits on, bound without `SO_REUSEPORT`: glommio's own
/// `UdpSocket::bind` sets it, and the kernel then hands a bind to port 0 a port that another
/// process's such socket holds, which takes some of the wake datagrams. A core whose wake went
/// to another process slept on its commands for good (seen as a load generator that never
/// made its first peer).
fn wake_socket() -> std::io::Result<UdpSocket> {
    let socket = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.set_nonblocking(true)?;
    Ok(into_glommio(socket2::Socket::from(socket)))
}

/// Hands a configured socket2 socket to glommio. glommio's own `From<socket2::Socket>`
/// is for an older socket2, so the descriptor moves across as a raw fd.
fn into_glommio(socket: socket2::Socket) -> UdpSocket {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `into_raw_fd` gives up ownership of an open, bound UDP socket descriptor;
    // the glommio socket becomes its only owner.
    unsafe { UdpSocket::from_raw_fd(socket.into_raw_fd()) }
}

#[cfg(test)]
mod spawn_tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use glommio::LocalExecutorBuilder;

    use std::time::{Duration, Instant};

    use super::{
        QUIET_GRID, Rounding, TIMER_GRID, TIMER_SLACK_FROM, coalesce, spawn_later, wake_socket,
    };

    #[test]
    fn the_wake_socket_keeps_its_port_to_itself() {
        LocalExecutorBuilder::default()
            .spawn(|| async {
                let wake = wake_socket().unwrap();
                let port = wake.local_addr().unwrap().port();
                use std::os::fd::{AsRawFd, BorrowedFd};
                // SAFETY: the descriptor stays open while `wake` lives, past this statement.
                let fd = unsafe { BorrowedFd::borrow_raw(wake.as_raw_fd()) };
                assert!(!socket2::SockRef::from(&fd).reuse_port().unwrap());
                // Another process's SO_REUSEPORT socket cannot join the port.
                let other = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::DGRAM,
                    Some(socket2::Protocol::UDP),
                )
                .unwrap();
                other.set_reuse_port(true).unwrap();
                let taken = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                assert!(other.bind(&taken.into()).is_err(), "port {port} was shared");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    const BUSY: Rounding = Rounding {
        slack_from: TIMER_SLACK_FROM,
        grid: TIMER_GRID,
    };
    const QUIET: Rounding = Rounding {
        slack_from: Duration::ZERO,
        grid: QUIET_GRID,
    };

    #[test]
    fn far_deadlines_share_grid_steps_and_are_never_earlier() {
        let epoch = Instant::now();
        let now = epoch + Duration::from_millis(7);
        // Near deadlines (a packet to release, a NACK) stay exact.
        for near in [
            now,
            now + Duration::from_millis(30),
            now + Duration::from_millis(99),
        ] {
            assert_eq!(coalesce(near, now, epoch, BUSY), near);
        }
        // Many peers' RTCP deadlines spread over one grid step wake up together.
        let base = epoch + Duration::from_millis(1_000);
        let woken: std::collections::BTreeSet<Instant> = (1..25)
            .map(|ms| coalesce(base + Duration::from_millis(ms), now, epoch, BUSY))
            .collect();
        assert_eq!(woken.len(), 1);
        assert_eq!(woken.first(), Some(&(epoch + Duration::from_millis(1_025))));
        for us in [100_001u64, 512_345, 999_999, 1_000_000, 7_654_321] {
            let at = now + Duration::from_micros(us);
            let c = coalesce(at, now, epoch, BUSY);
            assert!(c >= at && c - at < TIMER_GRID, "{us}: {c:?} vs {at:?}");
        }
    }

    /// On a quiet core every deadline goes to the quiet grid, however near: a peer's timer
    /// and the socket readers' next look then share its 100 ms steps, which are also steps
    /// of the busy grid.
    #[test]
    fn on_a_quiet_core_near_deadlines_join_the_grid_too() {
        let epoch = Instant::now();
        let now = epoch + Duration::from_millis(7);
        for ms in [1u64, 10, 17, 30, 93, 150] {
            let at = now + Duration::from_millis(ms);
            let c = coalesce(at, now, epoch, QUIET);
            assert!(c >= at && c - at < QUIET_GRID, "{ms}: {c:?} vs {at:?}");
            assert_eq!((c - epoch).as_micros() % QUIET_GRID.as_micros(), 0);
            assert_eq!((c - epoch).as_micros() % TIMER_GRID.as_micros(), 0);
        }
        // A hundred peers' timers over 93 ms of a quiet core: one wake-up.
        let woken: std::collections::BTreeSet<Instant> = (1..=93)
            .map(|ms| coalesce(now + Duration::from_millis(ms), now, epoch, QUIET))
            .collect();
        assert_eq!(woken.len(), 1);
    }

    /// A task spawned while the core is borrowed (as in `Core::offer`, or when a send
    /// buffer fills) and that borrows it at once must wait for the borrow to end.
    #[test]
    fn a_task_spawned_under_a_borrow_starts_after_it() {
        LocalExecutorBuilder::default()
            .spawn(|| async {
                let state = Rc::new(RefCell::new(0));
                {
                    let mut held = state.borrow_mut();
                    let inner = Rc::clone(&state);
                    spawn_later(async move {
                        *inner.borrow_mut() += 1;
                    });
                    *held += 10;
                }
                glommio::yield_if_needed().await;
                futures_lite::future::yield_now().await;
                futures_lite::future::yield_now().await;
                assert_eq!(*state.borrow(), 11);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
