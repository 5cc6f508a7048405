//! Settling the deliveries of one consumer channel: acks coalesced into `basic.ack multiple`,
//! requeues sent at once.
//!
//! A handler says how its delivery ends ([`Settler::ack`], [`Settler::requeue`]) and moves on; one
//! task per channel turns that into frames. Everything that arrived since its last round is
//! settled together: the longest run of finished deliveries from the oldest unsettled one is acked
//! with a single `multiple` ack (up to the whole prefetch window in one frame instead of one frame,
//! one write and one broker round per delivery). A finished delivery behind one still in progress
//! cannot be covered by `multiple`; it is held at most [`HOLD`] for the run to close, then acked on
//! its own, so a request stuck in Genesys retries never holds the others' acks (and the broker's
//! prefetch window) back.
//!
//! A delivery is acked only when its handler said so: `multiple` covers exactly the tags this
//! ledger knows finished, because the consumer registers every delivery ([`Settler::delivered`])
//! before its handler starts, in delivery-tag order. [`Settler::finish`] settles what is left when
//! a session ends: finished deliveries are acked, unfinished ones (handlers stopped at the end of
//! the grace period) are nacked with requeue.

use std::{collections::BTreeMap, time::Duration};

use lapin::{
    Channel,
    options::{BasicAckOptions, BasicNackOptions},
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

/// The longest a finished delivery waits for the deliveries before it to finish, so that one
/// `multiple` ack covers them all.
pub const HOLD: Duration = Duration::from_millis(2);

enum Command {
    Delivered(u64),
    Ack(u64),
    Requeue(u64),
    Finish(oneshot::Sender<Finished>),
}

/// What [`Settler::finish`] settled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Unfinished deliveries returned to the queue.
    pub requeued: usize,
}

/// The settling task of one consumer channel; cheap to clone.
#[derive(Clone)]
pub struct Settler {
    commands: mpsc::UnboundedSender<Command>,
}

impl Settler {
    /// Starts the task that settles deliveries on `channel`.
    pub fn start(channel: Channel) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(channel, receiver));
        Self { commands }
    }

    /// Registers a delivery before its handler starts (in delivery-tag order).
    pub fn delivered(&self, tag: u64) {
        let _ = self.commands.send(Command::Delivered(tag));
    }

    /// Its publishes are confirmed: ack it (soon, with others).
    pub fn ack(&self, tag: u64) {
        let _ = self.commands.send(Command::Ack(tag));
    }

    /// It must be redelivered: nack it with requeue now.
    pub fn requeue(&self, tag: u64) {
        let _ = self.commands.send(Command::Requeue(tag));
    }

    /// Acks every finished delivery, nacks (requeue) every unfinished one, and stops. `None` when
    /// the task already stopped (its channel closed: the broker requeues unacked deliveries itself).
    pub async fn finish(&self) -> Option<Finished> {
        let (reply, finished) = oneshot::channel();
        self.commands.send(Command::Finish(reply)).ok()?;
        finished.await.ok()
    }
}

async fn run(channel: Channel, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut ledger = Ledger::default();
    let mut finish = None;
    loop {
        let next = match ledger.next_release(HOLD) {
            Some(at) => tokio::select! {
                command = commands.recv() => command.map(Some),
                () = tokio::time::sleep_until(at) => Some(None),
            },
            None => commands.recv().await.map(Some),
        };
        let Some(first) = next else { break };
        // Everything queued since the last round is settled together.
        let mut pending = first.into_iter().collect::<Vec<_>>();
        while let Ok(command) = commands.try_recv() {
            pending.push(command);
        }
        let now = Instant::now();
        let mut requeue = Vec::new();
        for command in pending {
            match command {
                Command::Delivered(tag) => ledger.delivered(tag),
                Command::Ack(tag) => ledger.finished(tag, now),
                Command::Requeue(tag) => {
                    ledger.forget(tag);
                    requeue.push(tag);
                }
                Command::Finish(reply) => finish = Some(reply),
            }
        }
        // Nacks go first: a `multiple` ack sent before them would also cover their tags.
        for tag in requeue {
            nack(&channel, tag).await;
        }
        if let Some(tag) = ledger.take_run() {
            ack(&channel, tag, true).await;
        }
        let hold = if finish.is_some() { Duration::ZERO } else { HOLD };
        let held = ledger.take_held(Instant::now(), hold);
        for tag in held {
            ack(&channel, tag, false).await;
        }
        if let Some(reply) = finish.take() {
            let unfinished = ledger.take_unfinished();
            for &tag in &unfinished {
                nack(&channel, tag).await;
            }
            let _ = reply.send(Finished {
                requeued: unfinished.len(),
            });
            break;
        }
    }
}

async fn ack(channel: &Channel, tag: u64, multiple: bool) {
    if let Err(error) = channel.basic_ack(tag, BasicAckOptions { multiple }).await {
        tracing::warn!(%error, delivery_tag = tag, multiple, "acking failed; the broker will redeliver");
    }
}

/// A nack of one delivery that returns it to the queue.
pub fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        multiple: false,
    }
}

async fn nack(channel: &Channel, tag: u64) {
    if let Err(error) = channel.basic_nack(tag, requeue()).await {
        tracing::warn!(%error, delivery_tag = tag, "requeueing failed; the broker will redeliver");
    }
}

/// The unsettled deliveries of a channel, by tag: `None` while in progress, `Some(since)` once
/// finished and waiting to be acked.
#[derive(Debug, Default)]
struct Ledger {
    unsettled: BTreeMap<u64, Option<Instant>>,
}

impl Ledger {
    fn delivered(&mut self, tag: u64) {
        self.unsettled.insert(tag, None);
    }

    fn finished(&mut self, tag: u64, at: Instant) {
        if let Some(state) = self.unsettled.get_mut(&tag) {
            *state = Some(at);
        }
    }

    fn forget(&mut self, tag: u64) {
        self.unsettled.remove(&tag);
    }

    /// Removes the run of finished deliveries from the oldest unsettled one; returns the tag that
    /// a `multiple` ack covering exactly that run names.
    fn take_run(&mut self) -> Option<u64> {
        let mut last = None;
        while let Some(entry) = self.unsettled.first_entry() {
            if entry.get().is_none() {
                break;
            }
            last = Some(entry.remove_entry().0);
        }
        last
    }

    /// Removes and returns the finished deliveries that have waited at least `hold` behind an
    /// unfinished one.
    fn take_held(&mut self, now: Instant, hold: Duration) -> Vec<u64> {
        let due: Vec<u64> = self
            .unsettled
            .iter()
            .filter(|(_, since)| since.is_some_and(|since| now.saturating_duration_since(since) >= hold))
            .map(|(tag, _)| *tag)
            .collect();
        for tag in &due {
            self.unsettled.remove(tag);
        }
        due
    }

    /// When the oldest held delivery is due.
    fn next_release(&self, hold: Duration) -> Option<Instant> {
        self.unsettled.values().flatten().min().map(|since| *since + hold)
    }

    fn take_unfinished(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.unsettled).into_keys().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_finished_deliveries_is_acked_up_to_its_last_tag() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        for tag in 1..=5 {
            ledger.delivered(tag);
        }
        for tag in [2, 1, 3, 5] {
            ledger.finished(tag, now);
        }
        assert_eq!(ledger.take_run(), Some(3));
        assert_eq!(ledger.take_run(), None, "4 is still in progress");
        assert_eq!(ledger.take_held(now, HOLD), Vec::<u64>::new(), "5 waits for 4 a while");
        assert_eq!(ledger.next_release(HOLD), Some(now + HOLD));
        assert_eq!(ledger.take_held(now + HOLD, HOLD), vec![5], "then goes alone");
        ledger.finished(4, now);
        assert_eq!(ledger.take_run(), Some(4));
        assert!(ledger.unsettled.is_empty());
    }

    #[test]
    fn a_requeued_delivery_does_not_block_the_run_and_is_never_acked() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        for tag in 1..=3 {
            ledger.delivered(tag);
        }
        ledger.forget(1);
        ledger.finished(2, now);
        assert_eq!(ledger.take_run(), Some(2));
        assert_eq!(ledger.take_unfinished(), vec![3]);
    }

    #[test]
    fn an_ack_for_an_unknown_tag_is_ignored() {
        let mut ledger = Ledger::default();
        ledger.finished(7, Instant::now());
        assert_eq!(ledger.take_run(), None);
        assert!(ledger.take_unfinished().is_empty());
    }
}
