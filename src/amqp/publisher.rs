//! A confirm-mode publisher that many tasks can share.
//!
//! lapin attributes confirms wrongly when `basic_publish` calls on one channel overlap (DESIGN
//! §8): it numbers a publish for confirms under one lock and queues its frames under another. So
//! each channel ("lane") is driven by one task, the only caller of `basic_publish` on it. That
//! task *starts* publishes — it creates each `basic_publish` future and polls it once, which takes
//! the confirm number and queues the frames, both synchronously — and hands the started futures
//! back; callers wait for the write and for their confirms themselves. The lane never waits for
//! the I/O thread, and it starts everything queued since its last turn together: publishes from
//! many concurrent requests leave in one socket write and reach the broker as one batch, which
//! costs the broker (and this process) far less per message than one publish per write.
//!
//! lapin also hands a `basic.return` to whichever pending confirm of the channel completes next
//! (on a multiple ack, in no fixed order), not to the message that was returned. So mandatory
//! messages, which the broker may return, get lanes of their own: a return can then only land on
//! another mandatory message, and the worker's mandatory messages (its events, to one exchange
//! with one routing key) are routable or unroutable together.
//! `tests/it/publisher.rs` would catch a misattributed confirm or return.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use tokio::sync::{mpsc, oneshot};

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub properties: BasicProperties,
    /// Ask the broker to return the message when no queue is bound to receive it.
    pub mandatory: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused (nacked) the message published to exchange '{exchange}'")]
    Nacked { exchange: String },
    #[error("no queue is bound to exchange '{exchange}' for routing key '{routing_key}'; the message was returned")]
    Unroutable { exchange: String, routing_key: String },
    #[error("publishing to exchange '{exchange}' failed: {source}")]
    Channel { exchange: String, source: lapin::Error },
    #[error("the publisher has stopped")]
    Stopped,
}

impl PublishError {
    pub fn is_unroutable(&self) -> bool {
        matches!(self, PublishError::Unroutable { .. })
    }
}

/// Messages to start together, in order, and where to hand their started publishes.
struct Job {
    messages: Vec<Outgoing>,
    reply: oneshot::Sender<Vec<Started>>,
}

/// A confirm-mode channel and the queue of its lane task.
struct Lane {
    channel: Channel,
    jobs: mpsc::UnboundedSender<Job>,
}

/// Cheap to clone; every clone feeds the same lanes.
#[derive(Clone)]
pub struct Publisher {
    /// For messages that are not mandatory.
    lanes: Arc<[Lane]>,
    /// For mandatory messages only (see the module comment).
    mandatory_lanes: Arc<[Lane]>,
    /// Round-robin positions in `lanes` and in `mandatory_lanes`.
    next: Arc<[AtomicUsize; 2]>,
}

impl Publisher {
    /// Opens `lanes` confirm-mode channels on `connection` for messages that are not mandatory,
    /// and as many for mandatory ones, each driven by its own task.
    pub async fn open(connection: &Connection, lanes: usize) -> Result<Self, lapin::Error> {
        Ok(Self {
            lanes: open_lanes(connection, lanes).await?,
            mandatory_lanes: open_lanes(connection, lanes).await?,
            next: Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]),
        })
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(&self, message: Outgoing) -> Result<(), PublishError> {
        let pending = self.submit(message).await?;
        pending.confirmed().await
    }

    /// Publishes every message (in order, in one batch per kind: mandatory ones on their own lane)
    /// and then waits for all their confirms.
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> Result<(), PublishError> {
        let started = self.start(messages).await?;
        let mut pending = Vec::with_capacity(started.len());
        for publish in started {
            pending.push(publish.written().await?);
        }
        let results = futures_util::future::join_all(pending.into_iter().map(Pending::confirmed)).await;
        results.into_iter().collect()
    }

    /// Hands the message to a lane and returns once its frames are written; the confirm is
    /// awaited separately with [`Pending::confirmed`].
    pub async fn submit(&self, message: Outgoing) -> Result<Pending, PublishError> {
        let started = self.start(vec![message]).await?;
        match started.into_iter().next() {
            Some(publish) => publish.written().await,
            None => Err(PublishError::Stopped),
        }
    }

    /// Starts `messages` in order on one lane; a batch that mixes mandatory messages with others
    /// is started as two (each kind in its order), and handed back in the caller's order.
    async fn start(&self, messages: Vec<Outgoing>) -> Result<Vec<Started>, PublishError> {
        let kinds: Vec<bool> = messages.iter().map(|m| m.mandatory).collect();
        if kinds.windows(2).all(|pair| pair[0] == pair[1]) {
            return self.start_on(kinds.first() == Some(&true), messages).await;
        }
        let (returnable, plain): (Vec<Outgoing>, Vec<Outgoing>) = messages.into_iter().partition(|m| m.mandatory);
        let (mut returnable, mut plain) = (
            self.start_on(true, returnable).await?.into_iter(),
            self.start_on(false, plain).await?.into_iter(),
        );
        Ok(kinds
            .into_iter()
            .filter_map(|kind| if kind { returnable.next() } else { plain.next() })
            .collect())
    }

    async fn start_on(&self, mandatory: bool, messages: Vec<Outgoing>) -> Result<Vec<Started>, PublishError> {
        let lanes = if mandatory { &self.mandatory_lanes } else { &self.lanes };
        let next = &self.next[usize::from(mandatory)];
        let lane = &lanes[next.fetch_add(1, Ordering::Relaxed) % lanes.len()];
        let (reply, started) = oneshot::channel();
        lane.jobs
            .send(Job { messages, reply })
            .map_err(|_| PublishError::Stopped)?;
        started.await.map_err(|_| PublishError::Stopped)
    }

    /// True while every lane's channel is open. A channel error on a publish (say, to an
    /// exchange that was deleted) or the connection going away closes a lane's channel; the
    /// worker then reconnects, since every publish routed to that lane would fail.
    pub fn all_lanes_open(&self) -> bool {
        self.lanes
            .iter()
            .chain(self.mandatory_lanes.iter())
            .all(|lane| lane.channel.status().connected() && !lane.jobs.is_closed())
    }
}

async fn open_lanes(connection: &Connection, lanes: usize) -> Result<Arc<[Lane]>, lapin::Error> {
    let mut opened = Vec::with_capacity(lanes.max(1));
    for _ in 0..lanes.max(1) {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let (jobs, queued) = mpsc::unbounded_channel();
        tokio::spawn(drive_lane(channel.clone(), queued));
        opened.push(Lane { channel, jobs });
    }
    Ok(opened.into())
}

/// The lane task: the only caller of `basic_publish` on `channel`.
async fn drive_lane(channel: Channel, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::new();
    let mut busy = false;
    while let Some(first) = jobs.recv().await {
        // Under load, let the requests that are ready to publish right now queue their messages
        // too, so they all leave together; a lone publish goes at once.
        if busy {
            tokio::task::yield_now().await;
        }
        batch.push(first);
        while let Ok(job) = jobs.try_recv() {
            batch.push(job);
        }
        busy = batch.len() > 1;
        for Job { messages, reply } in batch.drain(..) {
            let started = messages.into_iter().map(|message| start(&channel, message)).collect();
            // The caller may have given up (shutdown); its publishes go out regardless.
            let _ = reply.send(started);
        }
    }
}

type Write = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// A publish whose frames are queued (its confirm number is taken) but maybe not written yet.
struct Started {
    write: Result<Write, lapin::Error>,
    exchange: String,
    routing_key: String,
}

/// Creates the `basic_publish` future and polls it once: that poll takes the confirm number and
/// queues the frames (both synchronous in lapin). The future then only waits for the I/O thread
/// to write the frames.
fn start(channel: &Channel, message: Outgoing) -> Started {
    let Outgoing {
        exchange,
        routing_key,
        payload,
        properties,
        mandatory,
    } = message;
    let channel = channel.clone();
    let (ex, rk) = (exchange.as_str().into(), routing_key.as_str().into());
    let options = BasicPublishOptions {
        mandatory,
        ..Default::default()
    };
    let mut write: Write = Box::pin(async move { channel.basic_publish(ex, rk, options, &payload, properties).await });
    // No waker is needed for this first poll: whoever awaits `write` next registers its own.
    let write = match write.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Pending => Ok(write),
        Poll::Ready(Ok(confirm)) => Ok(Box::pin(std::future::ready(Ok(confirm))) as Write),
        Poll::Ready(Err(error)) => Err(error),
    };
    Started {
        write,
        exchange,
        routing_key,
    }
}

impl Started {
    async fn written(self) -> Result<Pending, PublishError> {
        let Started {
            write,
            exchange,
            routing_key,
        } = self;
        let written = match write {
            Ok(write) => write.await,
            Err(error) => Err(error),
        };
        match written {
            Ok(confirm) => Ok(Pending {
                confirm,
                exchange,
                routing_key,
            }),
            Err(source) => Err(PublishError::Channel { exchange, source }),
        }
    }
}

/// A published message whose confirm has not been awaited yet.
pub struct Pending {
    confirm: PublisherConfirm,
    exchange: String,
    routing_key: String,
}

impl Pending {
    pub async fn confirmed(self) -> Result<(), PublishError> {
        let Pending {
            confirm,
            exchange,
            routing_key,
        } = self;
        match confirm.await {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
            // Whichever message the return was: on the worker's event lanes every message goes to
            // one exchange with one routing key, so all are returned or none (but for the moment a
            // binding changes). Checking the return's own id would make things worse there: when
            // all are returned, a publish handed another one's return would pass as routed.
            Ok(Confirmation::Ack(Some(_returned))) => Err(PublishError::Unroutable { exchange, routing_key }),
            Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked { exchange }),
            Err(source) => Err(PublishError::Channel { exchange, source }),
        }
    }
}
