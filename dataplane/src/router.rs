//! The per-core forwarding table: for each stream, its source peer (on the stream's home
//! core), the subscribers on this core, and the other cores that want a copy. Also the
//! keyframe gate that coalesces requests towards a source. Pure state: the core does the IO.

use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

use crate::ids::{CoreId, PeerId, StreamId};

#[derive(Default)]
pub struct Router {
    /// Looked up for every forwarded packet; stream ids are the server's own, so an
    /// unkeyed fast hash.
    routes: FxHashMap<StreamId, Route>,
}

#[derive(Debug, Default)]
pub struct Route {
    /// The ingest peer, when it lives on this core.
    pub source: Option<PeerId>,
    /// Egress peers on this core: relays first (the first `relays`), then players.
    pub subscribers: Vec<PeerId>,
    relays: usize,
    /// Cores this (home) core copies the stream's packets to.
    pub mirrors: Vec<CoreId>,
    /// Where the stream's source lives, as told by subscribers' roles.
    pub home: Option<CoreId>,
    keyframe: KeyframeGate,
}

/// Keyframe requests towards one source: at most one per `unanswered` interval while the
/// last request has not been answered with a keyframe, and one per (shorter) `answered`
/// interval once it has, so a player joining just after another (or after a relay
/// attached) does not wait out the full interval for a keyframe the source already sent.
#[derive(Debug, Default)]
struct KeyframeGate {
    last_sent: Option<Instant>,
    /// A request arrived too soon and waits for its timer (or for the keyframe).
    pending: bool,
    /// A keyframe arrived from the source since the last request was sent.
    answered: bool,
}

/// The two intervals of the keyframe gate.
#[derive(Clone, Copy, Debug)]
pub struct KeyframePacing {
    /// Between two requests while the first is not answered by a keyframe.
    pub unanswered: Duration,
    /// Between two requests once the first is answered.
    pub answered: Duration,
}

/// What to do with a keyframe request.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyframeDecision {
    /// Ask the source now.
    SendNow,
    /// Too soon after the last one: ask at this instant (arm a timer).
    Defer(Instant),
    /// A deferred request is already pending: this one is coalesced into it.
    Coalesced,
}

impl KeyframeGate {
    fn send(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.pending = false;
        self.answered = false;
    }
}

impl Router {
    pub fn new() -> Self {
        Router::default()
    }

    pub fn route(&self, stream: StreamId) -> Option<&Route> {
        self.routes.get(&stream)
    }

    pub fn set_source(&mut self, stream: StreamId, peer: PeerId) {
        self.routes.entry(stream).or_default().source = Some(peer);
    }

    /// Removes the source if it is `peer`; the route (subscribers, mirrors) stays so a
    /// replacement source can take over without anyone renegotiating.
    pub fn clear_source(&mut self, stream: StreamId, peer: PeerId) {
        if let Some(route) = self.routes.get_mut(&stream)
            && route.source == Some(peer)
        {
            route.source = None;
            self.collect(stream);
        }
    }

    /// Adds a subscriber. A relay (`relay`: it feeds another server's players) goes ahead of
    /// the players, so each packet reaches the next server before this core works through
    /// its own players instead of after them.
    pub fn subscribe(&mut self, stream: StreamId, peer: PeerId, home: CoreId, relay: bool) {
        let route = self.routes.entry(stream).or_default();
        route.home = Some(home);
        if route.subscribers.contains(&peer) {
            return;
        }
        if relay {
            route.subscribers.insert(route.relays, peer);
            route.relays += 1;
        } else {
            route.subscribers.push(peer);
        }
    }

    pub fn unsubscribe(&mut self, stream: StreamId, peer: PeerId) {
        if let Some(route) = self.routes.get_mut(&stream) {
            if let Some(i) = route.subscribers.iter().position(|p| *p == peer) {
                route.subscribers.remove(i);
                if i < route.relays {
                    route.relays -= 1;
                }
            }
            self.collect(stream);
        }
    }

    pub fn set_mirror(&mut self, stream: StreamId, to: CoreId, on: bool) {
        let route = self.routes.entry(stream).or_default();
        route.mirrors.retain(|c| *c != to);
        if on {
            route.mirrors.push(to);
        }
        self.collect(stream);
    }

    /// Decides what to do with a keyframe request for a stream whose source is here.
    pub fn keyframe(
        &mut self,
        stream: StreamId,
        now: Instant,
        pacing: KeyframePacing,
    ) -> KeyframeDecision {
        let gate = &mut self.routes.entry(stream).or_default().keyframe;
        let Some(last) = gate.last_sent else {
            gate.send(now);
            return KeyframeDecision::SendNow;
        };
        let gap = if gate.answered {
            pacing.answered
        } else {
            pacing.unanswered
        };
        if now >= last + gap {
            gate.send(now);
            KeyframeDecision::SendNow
        } else if gate.pending {
            KeyframeDecision::Coalesced
        } else {
            gate.pending = true;
            KeyframeDecision::Defer(last + gap)
        }
    }

    /// A keyframe arrived from the stream's source: it answers the last request, and every
    /// request waiting behind it (their players are subscribed, so it reaches them).
    pub fn keyframe_arrived(&mut self, stream: StreamId) {
        if let Some(route) = self.routes.get_mut(&stream) {
            route.keyframe.answered = true;
            route.keyframe.pending = false;
        }
    }

    /// A deferred keyframe request came due: true if it must be sent now (no keyframe
    /// answered it meanwhile).
    pub fn keyframe_due(&mut self, stream: StreamId, now: Instant) -> bool {
        let Some(route) = self.routes.get_mut(&stream) else {
            return false;
        };
        let gate = &mut route.keyframe;
        if !gate.pending {
            return false;
        }
        gate.send(now);
        true
    }

    /// Number of streams with any route on this core.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    fn collect(&mut self, stream: StreamId) {
        if let Some(route) = self.routes.get(&stream)
            && route.source.is_none()
            && route.subscribers.is_empty()
            && route.mirrors.is_empty()
        {
            self.routes.remove(&stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: StreamId = StreamId(1);

    const PACING: KeyframePacing = KeyframePacing {
        unanswered: Duration::from_millis(500),
        answered: Duration::from_millis(200),
    };

    #[test]
    fn unanswered_keyframe_requests_are_coalesced_and_rate_limited() {
        let mut r = Router::new();
        let t0 = Instant::now();
        let gap = PACING.unanswered;
        r.set_source(S, PeerId(1));
        assert_eq!(r.keyframe(S, t0, PACING), KeyframeDecision::SendNow);
        let due = t0 + gap;
        assert_eq!(
            r.keyframe(S, t0 + gap / 10, PACING),
            KeyframeDecision::Defer(due)
        );
        assert_eq!(
            r.keyframe(S, t0 + gap / 5, PACING),
            KeyframeDecision::Coalesced
        );
        assert!(r.keyframe_due(S, due), "no keyframe came: asked again");
        assert!(!r.keyframe_due(S, due), "one deferred request sends once");
        assert_eq!(r.keyframe(S, due + gap, PACING), KeyframeDecision::SendNow);
    }

    #[test]
    fn an_answered_request_lets_the_next_one_through_sooner() {
        let mut r = Router::new();
        let t0 = Instant::now();
        r.set_source(S, PeerId(1));
        assert_eq!(r.keyframe(S, t0, PACING), KeyframeDecision::SendNow);
        let arrived = t0 + Duration::from_millis(40);
        r.keyframe_arrived(S);
        // A player joining 250 ms later: answered, so past the shorter interval.
        let joined = arrived + Duration::from_millis(210);
        assert_eq!(r.keyframe(S, joined, PACING), KeyframeDecision::SendNow);
        // Too soon after that one, still unanswered: the long interval.
        assert_eq!(
            r.keyframe(S, joined + Duration::from_millis(10), PACING),
            KeyframeDecision::Defer(joined + PACING.unanswered)
        );
        // Its keyframe arrives: it answers the waiting request too, so the timer sends nothing.
        r.keyframe_arrived(S);
        assert!(!r.keyframe_due(S, joined + PACING.unanswered));
        // A request 100 ms after an answered one waits for the short interval only.
        let soon = joined + Duration::from_millis(100);
        assert_eq!(
            r.keyframe(S, soon, PACING),
            KeyframeDecision::Defer(joined + PACING.answered)
        );
        assert!(r.keyframe_due(S, joined + PACING.answered));
    }

    #[test]
    fn route_survives_source_change_and_is_collected_when_empty() {
        let mut r = Router::new();
        r.set_source(S, PeerId(1));
        r.subscribe(S, PeerId(2), CoreId(0), false);
        r.clear_source(S, PeerId(1));
        assert_eq!(r.route(S).unwrap().subscribers, vec![PeerId(2)]);
        r.set_source(S, PeerId(3));
        r.clear_source(S, PeerId(1));
        assert_eq!(
            r.route(S).unwrap().source,
            Some(PeerId(3)),
            "only the current source"
        );
        r.clear_source(S, PeerId(3));
        r.unsubscribe(S, PeerId(2));
        assert!(r.is_empty());
    }

    #[test]
    fn relays_are_served_before_players() {
        let mut r = Router::new();
        let subscribers = |r: &Router| r.route(S).unwrap().subscribers.clone();
        r.subscribe(S, PeerId(1), CoreId(0), false);
        r.subscribe(S, PeerId(2), CoreId(0), false);
        r.subscribe(S, PeerId(10), CoreId(0), true);
        r.subscribe(S, PeerId(3), CoreId(0), false);
        r.subscribe(S, PeerId(11), CoreId(0), true);
        assert_eq!(
            subscribers(&r),
            [10, 11, 1, 2, 3].map(PeerId),
            "relays first, each group in joining order"
        );
        r.unsubscribe(S, PeerId(10));
        r.unsubscribe(S, PeerId(2));
        r.subscribe(S, PeerId(12), CoreId(0), true);
        r.subscribe(S, PeerId(4), CoreId(0), false);
        assert_eq!(subscribers(&r), [11, 12, 1, 3, 4].map(PeerId));
    }

    #[test]
    fn mirrors_toggle() {
        let mut r = Router::new();
        r.set_mirror(S, CoreId(1), true);
        r.set_mirror(S, CoreId(1), true);
        assert_eq!(r.route(S).unwrap().mirrors, vec![CoreId(1)]);
        r.set_mirror(S, CoreId(1), false);
        assert!(r.route(S).is_none());
    }
}
