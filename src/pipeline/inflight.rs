//! In-replica duplicate suppression: two deliveries of the same request that are in flight in
//! this replica at the same time are processed once.
//!
//! Copies of one request meet in flight when an upstream app publishes a request again (it did
//! not get its publisher confirm in time) or when a copy is redelivered while an older copy is
//! still being worked on. Genesys itself recognises a repeated request (`channel.messageId` is the
//! request id, so it answers with the same conversation), but each copy would still cost a
//! Genesys call and announce its own `session.created` event.
//!
//! So the first copy to arrive *leads*: it runs the pipeline. A later copy *follows*: it waits
//! for the leader's settlement and then
//! - if the leader created the session and its `session.created` event was confirmed by the
//!   broker, and the follower's body is byte-identical, the follower shares that outcome: the
//!   request already has its event, and a second would only be a duplicate. The follower still
//!   answers for itself (its own audit record, and its own reply when it set `reply_to`: a
//!   republished copy often comes from a new connection with a new reply queue), from the
//!   leader's session;
//! - otherwise the follower claims again and runs the pipeline itself. That covers a leader whose
//!   publish failed or that was aborted (a shutdown, a lost connection), a follower with a
//!   different body under the same request id (not assumed to be a copy: it gets its own outcome),
//!   and a leader that dead-lettered the request. A dead letter is not shared because it may not
//!   last: an operator replaying or draining the dead queue at the same moment may already have
//!   taken it, and acking the copy on its strength could lose the request. A second dead letter is
//!   harmless; a missing one is not.
//!
//! Either way the follower runs only after the leader has settled, so Genesys never sees one
//! `messageId` twice at once. Only valid requests take part: an invalid one never reaches Genesys
//! and is dead-lettered at once, whatever else is in flight.
//!
//! Copies that are *not* in flight together (a redelivery after a crash, or a copy on another
//! replica) are processed again, and recognisable: same `correlation_id`, same Genesys
//! conversation (DESIGN §3). This map lives as long as the worker, across reconnects.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::Outcome;
use crate::genesys::CreatedSession;

/// What identifies a copy: the request id and the exact body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    request_id: String,
    digest: [u8; 32],
}

impl RequestKey {
    /// The key of a valid request (invalid ones never reach Genesys: there is nothing to share).
    pub fn new(request_id: &str, body: &[u8]) -> Self {
        Self {
            request_id: request_id.to_string(),
            digest: Sha256::digest(body).into(),
        }
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }
}

/// A leader's confirmed run: every publish for the request was confirmed by the broker.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The request's terminal outcome.
    pub outcome: Outcome,
    /// The session the leader created, when it did: a follower answers its own requester with it.
    pub session: Option<Arc<CreatedSession>>,
}

/// How a leader ended.
#[derive(Debug, Clone)]
enum Settlement {
    Confirmed(Settled),
    /// Nothing was confirmed (a publish failed, or the work was abandoned).
    NotConfirmed,
}

struct Slot {
    /// Tells a slot from a later one under the same request id.
    id: u64,
    digest: [u8; 32],
    settled: watch::Receiver<Option<Settlement>>,
}

/// The requests in flight in this replica; cheap to clone.
#[derive(Clone, Default)]
pub struct InFlightRequests {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    next_id: Arc<AtomicU64>,
}

/// The result of [`InFlightRequests::claim`].
pub enum Claim {
    /// No other copy is in flight: process it, then [`Leader::settle`].
    Leader(Leader),
    /// Another copy is in flight: [`Follower::outcome`] says whether it settled this one too.
    Follower(Follower),
}

impl InFlightRequests {
    pub fn claim(&self, key: &RequestKey) -> Claim {
        let mut slots = self.lock();
        if let Some(slot) = slots.get(&key.request_id) {
            return Claim::Follower(Follower {
                settled: slot.settled.clone(),
                same_body: slot.digest == key.digest,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        slots.insert(
            key.request_id.clone(),
            Slot {
                id,
                digest: key.digest,
                settled: rx,
            },
        );
        Claim::Leader(Leader {
            requests: self.clone(),
            request_id: key.request_id.clone(),
            id,
            settled: Some(tx),
        })
    }

    /// How many distinct requests are in flight.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // The map stays consistent even if a holder panicked: every critical section is one
        // insert or remove.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, request_id: &str, id: u64) {
        let mut slots = self.lock();
        if slots.get(request_id).is_some_and(|slot| slot.id == id) {
            slots.remove(request_id);
        }
    }
}

/// The copy that processes the request. Dropping it unsettled (a panic, an abort) releases the
/// followers as [`Settlement::NotConfirmed`].
pub struct Leader {
    requests: InFlightRequests,
    request_id: String,
    id: u64,
    settled: Option<watch::Sender<Option<Settlement>>>,
}

impl Leader {
    /// `Some` when every publish for the request was confirmed, `None` otherwise.
    pub fn settle(mut self, confirmed: Option<Settled>) {
        // Leave the map first, so a follower that wakes up and claims again finds it free.
        self.requests.release(&self.request_id, self.id);
        if let Some(tx) = self.settled.take() {
            let settlement = match confirmed {
                Some(settled) => Settlement::Confirmed(settled),
                None => Settlement::NotConfirmed,
            };
            let _ = tx.send(Some(settlement));
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if self.settled.is_some() {
            self.requests.release(&self.request_id, self.id);
            // Dropping the sender wakes the followers with "not confirmed".
        }
    }
}

/// A copy that waits for the leader.
pub struct Follower {
    settled: watch::Receiver<Option<Settlement>>,
    same_body: bool,
}

impl Follower {
    /// Waits for the leader. `Some`: the leader created the session and its event was confirmed,
    /// which settles this copy too (answer for it, then ack it). `None`: claim again and process
    /// it; that includes a confirmed dead letter, which is not shared (see the module comment).
    pub async fn outcome(mut self) -> Option<Settled> {
        let settlement = match self.settled.wait_for(Option::is_some).await {
            Ok(settled) => settled.clone(),
            // The leader was dropped without settling.
            Err(_) => None,
        };
        match settlement {
            Some(Settlement::Confirmed(settled))
                if self.same_body && matches!(settled.outcome, Outcome::Created { .. }) =>
            {
                Some(settled)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(body: &str) -> RequestKey {
        let request_id = serde_json::from_str::<serde_json::Value>(body).expect("json")["request_id"]
            .as_str()
            .expect("request_id")
            .to_string();
        RequestKey::new(&request_id, body.as_bytes())
    }

    fn created() -> Outcome {
        Outcome::Created { attempts: 1 }
    }

    fn settled(outcome: Outcome) -> Option<Settled> {
        Some(Settled { outcome, session: None })
    }

    #[tokio::test]
    async fn a_follower_of_the_same_body_shares_the_confirmed_outcome() {
        let requests = InFlightRequests::default();
        let k = key(r#"{"request_id":"r1"}"#);
        let Claim::Leader(leader) = requests.claim(&k) else {
            panic!("first claim leads")
        };
        let Claim::Follower(follower) = requests.claim(&k) else {
            panic!("second claim follows")
        };
        let waiting = tokio::spawn(follower.outcome());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a follower waits for its leader");
        leader.settle(settled(created()));
        let shared = waiting.await.unwrap().expect("shared");
        assert_eq!(shared.outcome, created());
        assert!(requests.is_empty());
    }

    #[tokio::test]
    async fn an_unconfirmed_or_dropped_leader_lets_the_follower_process() {
        let requests = InFlightRequests::default();
        let k = key(r#"{"request_id":"r1"}"#);
        let Claim::Leader(leader) = requests.claim(&k) else {
            panic!("leads")
        };
        let Claim::Follower(follower) = requests.claim(&k) else {
            panic!("follows")
        };
        leader.settle(None);
        assert!(follower.outcome().await.is_none());

        let Claim::Leader(leader) = requests.claim(&k) else {
            panic!("free again after settling")
        };
        let Claim::Follower(follower) = requests.claim(&k) else {
            panic!("follows")
        };
        drop(leader);
        assert!(follower.outcome().await.is_none());
        assert!(matches!(requests.claim(&k), Claim::Leader(_)));
    }

    #[tokio::test]
    async fn a_different_body_under_the_same_id_waits_but_is_processed_itself() {
        let requests = InFlightRequests::default();
        let Claim::Leader(leader) = requests.claim(&key(r#"{"request_id":"r1"}"#)) else {
            panic!("leads")
        };
        let Claim::Follower(follower) = requests.claim(&key(r#"{"request_id":"r1","guest_id":"g"}"#)) else {
            panic!("same id follows")
        };
        leader.settle(settled(created()));
        assert!(follower.outcome().await.is_none());
    }

    #[tokio::test]
    async fn a_confirmed_dead_letter_is_not_shared_the_follower_processes_its_copy() {
        let requests = InFlightRequests::default();
        let k = key(r#"{"request_id":"r1"}"#);
        for dead_lettered in [
            Outcome::Rejected {
                reason: crate::request::RejectReason::Invalid,
            },
            Outcome::Failed {
                reason: "genesys_rejected",
                attempts: 1,
            },
        ] {
            let Claim::Leader(leader) = requests.claim(&k) else {
                panic!("leads")
            };
            let Claim::Follower(follower) = requests.claim(&k) else {
                panic!("follows")
            };
            let waiting = tokio::spawn(follower.outcome());
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!waiting.is_finished(), "a follower waits for its leader");
            leader.settle(settled(dead_lettered.clone()));
            assert!(waiting.await.unwrap().is_none(), "{dead_lettered:?}");
            // The follower then leads its own run (one at a time, never alongside the first).
            assert!(matches!(requests.claim(&k), Claim::Leader(_)));
        }
    }

    #[test]
    fn a_stale_leader_does_not_release_a_newer_slot() {
        let requests = InFlightRequests::default();
        let k = key(r#"{"request_id":"r1"}"#);
        let Claim::Leader(first) = requests.claim(&k) else {
            panic!("leads")
        };
        // Simulate the slot having been taken over (released by id, then claimed anew).
        requests.release(k.request_id(), first.id);
        let Claim::Leader(second) = requests.claim(&k) else {
            panic!("leads again")
        };
        drop(first);
        assert_eq!(requests.len(), 1, "the newer leader's slot survives");
        drop(second);
        assert!(requests.is_empty());
    }
}
