//! A confirm-mode publisher that many tasks can share.
//!
//! lapin attributes confirms wrongly when several tasks call `basic_publish` on one channel
//! (DESIGN §8), so each channel ("lane") is owned by a single task that performs the publishes and
//! hands every caller back its own `PublisherConfirm`. Callers then wait for their confirms
//! concurrently, so confirms are pipelined across messages while the publish order on a lane stays
//! serial.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
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
    #[error("the publisher has stopped (its channel closed)")]
    Stopped,
}

impl PublishError {
    pub fn is_unroutable(&self) -> bool {
        matches!(self, PublishError::Unroutable { .. })
    }
}

struct Job {
    message: Outgoing,
    reply: oneshot::Sender<Result<PublisherConfirm, lapin::Error>>,
}

/// Cheap to clone; every clone feeds the same lanes.
#[derive(Clone)]
pub struct Publisher {
    lanes: Arc<[mpsc::Sender<Job>]>,
    /// The lanes' channels, only to read their status (every publish goes through the lane task).
    channels: Arc<[Channel]>,
    next: Arc<AtomicUsize>,
}

impl Publisher {
    /// Opens `lanes` confirm-mode channels on `connection`, each driven by its own task.
    pub async fn open(connection: &Connection, lanes: usize) -> Result<Self, lapin::Error> {
        let mut senders = Vec::with_capacity(lanes.max(1));
        let mut channels = Vec::with_capacity(lanes.max(1));
        for _ in 0..lanes.max(1) {
            let channel = connection.create_channel().await?;
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            let (tx, rx) = mpsc::channel(1024);
            channels.push(channel.clone());
            tokio::spawn(drive_lane(channel, rx));
            senders.push(tx);
        }
        Ok(Self {
            lanes: senders.into(),
            channels: channels.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(&self, message: Outgoing) -> Result<(), PublishError> {
        let pending = self.submit(message).await?;
        pending.confirmed().await
    }

    /// Publishes every message (in order, on one lane) and then waits for all their confirms.
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> Result<(), PublishError> {
        let mut pending = Vec::with_capacity(messages.len());
        let lane = self.pick_lane();
        for message in messages {
            pending.push(self.submit_on(lane, message).await?);
        }
        let results = futures_util::future::join_all(pending.into_iter().map(Pending::confirmed)).await;
        results.into_iter().collect()
    }

    /// Hands the message to a lane and returns once the lane has published it; the confirm is
    /// awaited separately with [`Pending::confirmed`].
    pub async fn submit(&self, message: Outgoing) -> Result<Pending, PublishError> {
        self.submit_on(self.pick_lane(), message).await
    }

    fn pick_lane(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len()
    }

    async fn submit_on(&self, lane: usize, message: Outgoing) -> Result<Pending, PublishError> {
        let exchange = message.exchange.clone();
        let routing_key = message.routing_key.clone();
        let (reply, receive) = oneshot::channel();
        self.lanes[lane]
            .send(Job { message, reply })
            .await
            .map_err(|_| PublishError::Stopped)?;
        match receive.await {
            Ok(Ok(confirm)) => Ok(Pending {
                confirm,
                exchange,
                routing_key,
            }),
            Ok(Err(source)) => Err(PublishError::Channel { exchange, source }),
            Err(_) => Err(PublishError::Stopped),
        }
    }

    /// True while at least one lane still runs (its channel is open).
    pub fn is_open(&self) -> bool {
        self.lanes.iter().any(|lane| !lane.is_closed())
    }

    /// True while every lane runs on an open channel. A channel error on a publish (say, to an
    /// exchange that was deleted) or the connection going away closes a lane's channel at once,
    /// before its task notices; the worker then reconnects, since every publish routed to that
    /// lane would fail.
    pub fn all_lanes_open(&self) -> bool {
        self.lanes.iter().all(|lane| !lane.is_closed()) && self.channels.iter().all(|c| c.status().connected())
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
            Ok(Confirmation::Ack(Some(_returned))) => Err(PublishError::Unroutable { exchange, routing_key }),
            Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked { exchange }),
            Err(source) => Err(PublishError::Channel { exchange, source }),
        }
    }
}

async fn drive_lane(channel: Channel, mut jobs: mpsc::Receiver<Job>) {
    while let Some(Job { message, reply }) = jobs.recv().await {
        let options = BasicPublishOptions {
            mandatory: message.mandatory,
            ..Default::default()
        };
        let result = channel
            .basic_publish(
                message.exchange.as_str().into(),
                message.routing_key.as_str().into(),
                options,
                &message.payload,
                message.properties,
            )
            .await;
        let failed = result.is_err();
        // The caller may have given up (shutdown); nothing to do then.
        let _ = reply.send(result);
        if failed && !channel.status().connected() {
            break;
        }
    }
}
