//! Cross-core rings: one single-producer single-consumer ring per ordered pair of cores
//! (glommio's shared channels: lock-free, waking a parked executor without busy-polling),
//! wired before the executors start. They carry stream packets from a stream's home core
//! to the cores of its subscribers (the payload is an `Arc`, never copied), and keyframe
//! requests and subscription changes back.

use std::rc::Rc;

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::{GlommioError, ResourceType};

use crate::ids::{CoreId, StreamId};
use crate::media::MediaPacket;

/// A message between cores.
#[derive(Debug)]
pub enum MeshMsg {
    /// A packet of a stream, sent by its home core.
    Media {
        stream: StreamId,
        packet: MediaPacket,
    },
    /// A subscriber on the sending core wants a keyframe of a stream homed on the receiver.
    Keyframe { stream: StreamId },
    /// The sending core gained its first subscriber of a stream homed on the receiver.
    Subscribe { stream: StreamId, core: CoreId },
    /// The sending core lost its last subscriber of that stream.
    Unsubscribe { stream: StreamId, core: CoreId },
}

impl MeshMsg {
    /// Media may be dropped when a ring is full; control messages must arrive.
    pub fn is_droppable(&self) -> bool {
        matches!(self, MeshMsg::Media { .. })
    }
}

/// One core's ends of the mesh, before the executors start (these halves are `Send`).
pub struct MeshEnds {
    to: Vec<Option<SharedSender<MeshMsg>>>,
    from: Vec<(CoreId, SharedReceiver<MeshMsg>)>,
}

/// A core's connected senders, indexed by destination core.
pub struct Mesh {
    to: Vec<Option<Rc<ConnectedSender<MeshMsg>>>>,
}

/// Builds the full mesh for `cores` cores; element `n` belongs to core `n`.
pub fn wire(cores: usize, capacity: usize) -> Vec<MeshEnds> {
    let mut ends: Vec<MeshEnds> = (0..cores)
        .map(|_| MeshEnds {
            to: (0..cores).map(|_| None).collect(),
            from: Vec::new(),
        })
        .collect();
    for from in 0..cores {
        for to in 0..cores {
            if from == to {
                continue;
            }
            let (tx, rx) = shared_channel::new_bounded(capacity);
            ends[from].to[to] = Some(tx);
            ends[to].from.push((CoreId(from as u16), rx));
        }
    }
    ends
}

impl MeshEnds {
    /// Connects this core's ends; must run inside the core's executor. Returns the senders
    /// and one receiver per other core.
    pub async fn connect(self) -> (Mesh, Vec<(CoreId, ConnectedReceiver<MeshMsg>)>) {
        // Every core connects its senders and receivers at the same time; a sender's
        // connect waits for the peer core to connect the matching receiver, so the
        // receivers must be connecting in their own tasks or two cores deadlock.
        let receivers: Vec<_> = self
            .from
            .into_iter()
            .map(|(core, rx)| glommio::spawn_local(async move { (core, rx.connect().await) }))
            .collect();
        let mut to = Vec::with_capacity(self.to.len());
        for tx in self.to {
            match tx {
                Some(tx) => to.push(Some(Rc::new(tx.connect().await))),
                None => to.push(None),
            }
        }
        let mut from = Vec::with_capacity(receivers.len());
        for task in receivers {
            from.push(task.await);
        }
        (Mesh { to }, from)
    }
}

/// Why a message was not delivered.
#[derive(Debug, PartialEq, Eq)]
pub enum MeshError {
    /// The ring is full: media is dropped, control messages are retried asynchronously.
    Full,
    /// No ring to that core (itself or out of range).
    NoRoute,
}

impl Mesh {
    /// Sends without waiting. A full ring drops media; control messages are handed to a
    /// task that waits for room, so they are never lost.
    pub fn send(&self, to: CoreId, msg: MeshMsg) -> Result<(), MeshError> {
        let Some(Some(tx)) = self.to.get(to.index()) else {
            return Err(MeshError::NoRoute);
        };
        if msg.is_droppable() {
            return match tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(_) => Err(MeshError::Full),
            };
        }
        match tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                let tx = Rc::clone(tx);
                glommio::spawn_local(async move {
                    let _ = tx.send(msg).await;
                })
                .detach();
                Ok(())
            }
            Err(_) => Err(MeshError::NoRoute),
        }
    }
}
