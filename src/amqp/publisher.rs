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
//! with one routing key) are routable or unroutable together. Mandatory messages to an *owned*
//! exchange (the audit and dead-letter fanouts, whose queues the worker declares) get lanes of
//! their own per exchange, for the same reason; a return from one means a queue of the owner's
//! topology is gone, which [`Publisher::topology_lost`] reports.
//! `tests/it/publisher.rs` would catch a misattributed confirm or return.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
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
    /// The owned lanes' flag, set when one of these messages is returned.
    lost: Option<Arc<AtomicBool>>,
}

/// A confirm-mode channel and the queue of its lane task.
struct Lane {
    channel: Channel,
    jobs: mpsc::UnboundedSender<Job>,
}

/// Lanes taken in turn.
struct Lanes {
    lanes: Box<[Lane]>,
    next: AtomicUsize,
    /// Set when a message of an owned exchange's lanes is returned.
    lost: Option<Arc<AtomicBool>>,
}

/// Cheap to clone; every clone feeds the same lanes.
#[derive(Clone)]
pub struct Publisher {
    /// For messages that are not mandatory.
    plain: Arc<Lanes>,
    /// For mandatory messages to any exchange but the owned ones (see the module comment).
    mandatory: Arc<Lanes>,
    /// For mandatory messages to each owned exchange.
    owned: Arc<[(String, Lanes)]>,
    topology_lost: Arc<AtomicBool>,
}

impl Publisher {
    /// Opens `lanes` confirm-mode channels on `connection` for messages that are not mandatory,
    /// and as many for mandatory ones (to any exchange), each driven by its own task.
    pub async fn open(connection: &Connection, lanes: usize) -> Result<Self, lapin::Error> {
        Self::open_owning(connection, lanes, &[]).await
    }

    /// [`Self::open`], plus `lanes` channels for the mandatory messages to each of
    /// `owned_exchanges`: exchanges whose queues the caller declares, so that a message returned
    /// from one sets [`Self::topology_lost`].
    pub async fn open_owning(
        connection: &Connection,
        lanes: usize,
        owned_exchanges: &[&str],
    ) -> Result<Self, lapin::Error> {
        let topology_lost = Arc::new(AtomicBool::new(false));
        let mut owned = Vec::with_capacity(owned_exchanges.len());
        for exchange in owned_exchanges {
            let group = open_lanes(connection, lanes, Some(topology_lost.clone())).await?;
            owned.push((exchange.to_string(), group));
        }
        Ok(Self {
            plain: Arc::new(open_lanes(connection, lanes, None).await?),
            mandatory: Arc::new(open_lanes(connection, lanes, None).await?),
            owned: owned.into(),
            topology_lost,
        })
    }

    /// True once a mandatory message to an owned exchange came back unroutable: a queue the
    /// caller declares was deleted (or unbound), and stays so until the topology is declared
    /// again.
    pub fn topology_lost(&self) -> bool {
        self.topology_lost.load(Ordering::Relaxed)
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(&self, message: Outgoing) -> Result<(), PublishError> {
        let pending = self.submit(message).await?;
        pending.confirmed().await
    }

    /// Publishes every message (in order, in one batch per lane group: see the module comment)
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

    /// Starts `messages` in order on one lane; a batch that mixes messages of several lane groups
    /// (not mandatory, mandatory, mandatory to an owned exchange) is started as one batch per
    /// group (each in its order), and handed back in the caller's order.
    async fn start(&self, messages: Vec<Outgoing>) -> Result<Vec<Started>, PublishError> {
        let groups: Vec<usize> = messages.iter().map(|m| self.group_of(m)).collect();
        if groups.windows(2).all(|pair| pair[0] == pair[1]) {
            return self.start_on(groups.first().copied().unwrap_or(0), messages).await;
        }
        let mut batches: Vec<(usize, Vec<Outgoing>)> = Vec::new();
        for (group, message) in groups.iter().copied().zip(messages) {
            match batches.iter_mut().find(|(g, _)| *g == group) {
                Some((_, batch)) => batch.push(message),
                None => batches.push((group, vec![message])),
            }
        }
        let mut started = Vec::with_capacity(batches.len());
        for (group, batch) in batches {
            started.push((group, self.start_on(group, batch).await?.into_iter()));
        }
        Ok(groups
            .into_iter()
            .filter_map(|group| {
                started
                    .iter_mut()
                    .find(|(g, _)| *g == group)
                    .and_then(|(_, batch)| batch.next())
            })
            .collect())
    }

    /// The lane group of `message`: 0 not mandatory, 1 mandatory, 2 + i mandatory to the i-th
    /// owned exchange.
    fn group_of(&self, message: &Outgoing) -> usize {
        if !message.mandatory {
            return 0;
        }
        self.owned
            .iter()
            .position(|(exchange, _)| *exchange == message.exchange)
            .map_or(1, |i| 2 + i)
    }

    fn lanes(&self, group: usize) -> &Lanes {
        match group {
            0 => &self.plain,
            1 => &self.mandatory,
            owned => &self.owned[owned - 2].1,
        }
    }

    /// Starts `messages`, all of lane group `group`, on the next lane of that group.
    async fn start_on(&self, group: usize, messages: Vec<Outgoing>) -> Result<Vec<Started>, PublishError> {
        let group = self.lanes(group);
        let lane = &group.lanes[group.next.fetch_add(1, Ordering::Relaxed) % group.lanes.len()];
        let (reply, started) = oneshot::channel();
        lane.jobs
            .send(Job {
                messages,
                reply,
                lost: group.lost.clone(),
            })
            .map_err(|_| PublishError::Stopped)?;
        started.await.map_err(|_| PublishError::Stopped)
    }

    /// True while every lane's channel is open. A channel error on a publish (say, to an
    /// exchange that was deleted) or the connection going away closes a lane's channel; the
    /// worker then reconnects, since every publish routed to that lane would fail.
    pub fn all_lanes_open(&self) -> bool {
        self.plain
            .lanes
            .iter()
            .chain(self.mandatory.lanes.iter())
            .chain(self.owned.iter().flat_map(|(_, group)| group.lanes.iter()))
            .all(|lane| lane.channel.status().connected() && !lane.jobs.is_closed())
    }
}

async fn open_lanes(
    connection: &Connection,
    lanes: usize,
    lost: Option<Arc<AtomicBool>>,
) -> Result<Lanes, lapin::Error> {
    let mut opened = Vec::with_capacity(lanes.max(1));
    for _ in 0..lanes.max(1) {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let (jobs, queued) = mpsc::unbounded_channel();
        tokio::spawn(drive_lane(channel.clone(), queued));
        opened.push(Lane { channel, jobs });
    }
    Ok(Lanes {
        lanes: opened.into(),
        next: AtomicUsize::new(0),
        lost,
    })
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
        for Job { messages, reply, lost } in batch.drain(..) {
            let started = messages
                .into_iter()
                .map(|message| start(&channel, message, lost.clone()))
                .collect();
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
    lost: Option<Arc<AtomicBool>>,
}

/// Creates the `basic_publish` future and polls it once: that poll takes the confirm number and
/// queues the frames (both synchronous in lapin). The future then only waits for the I/O thread
/// to write the frames.
fn start(channel: &Channel, message: Outgoing, lost: Option<Arc<AtomicBool>>) -> Started {
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
        lost,
    }
}

impl Started {
    async fn written(self) -> Result<Pending, PublishError> {
        let Started {
            write,
            exchange,
            routing_key,
            lost,
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
                lost,
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
    lost: Option<Arc<AtomicBool>>,
}

impl Pending {
    pub async fn confirmed(self) -> Result<(), PublishError> {
        let Pending {
            confirm,
            exchange,
            routing_key,
            lost,
        } = self;
        match confirm.await {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
            // Whichever message the return was: on the worker's event lanes every message goes to
            // one exchange with one routing key, so all are returned or none (but for the moment a
            // binding changes). Checking the return's own id would make things worse there: when
            // all are returned, a publish handed another one's return would pass as routed.
            Ok(Confirmation::Ack(Some(_returned))) => {
                if let Some(lost) = lost {
                    lost.store(true, Ordering::Relaxed);
                }
                Err(PublishError::Unroutable { exchange, routing_key })
            }
            Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked { exchange }),
            Err(source) => Err(PublishError::Channel { exchange, source }),
        }
    }
}
