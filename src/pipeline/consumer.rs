//! One connected session of the worker: consume with bounded concurrency until shutdown or until
//! the broker connection, the consumer channel, a publisher lane or the consumer itself is lost.
//!
//! Every delivery is settled exactly one way: acked after its publishes are confirmed, nacked
//! with requeue when they were not, or — when its channel died — left to the broker, which
//! requeues every unacked delivery of a closed channel. A delivery is never acked on a guess.
//! Acks and nacks go through the channel's [`Settler`], which coalesces acks.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::{
    sync::{Notify, Semaphore},
    task::JoinSet,
    time::{Instant, Interval, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{
    Disposition, PipelineContext,
    inflight::{Claim, InFlightRequests, RequestKey, Settled},
    process::{process_copy, process_rejected, process_valid},
    settler::{Settler, requeue},
};
use crate::{health::Readiness, request::validate, telemetry::propagation};

/// Why a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was requested and in-flight work has been settled.
    Shutdown,
    /// The connection, a channel or the consumer went away; reconnect.
    Lost(String),
}

pub struct SessionSettings {
    pub concurrency: usize,
    /// The whole budget of a graceful shutdown, from the signal to the closed channel.
    pub shutdown_grace: Duration,
    pub consumer_tag: String,
    /// Copies of one request in flight together are processed once; shared by every session of
    /// the worker.
    pub requests: InFlightRequests,
}

/// How often a session checks its connection, consumer channel and publisher lanes. The consumer
/// stream reports a lost channel at once, but only while the loop waits on it: when every slot is
/// busy (handlers retrying an unavailable Genesys) or only a publisher lane died, this check is
/// what notices.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);
/// Part of the shutdown grace kept for nacking what is left and closing the channel.
const SETTLE_RESERVE: Duration = Duration::from_secs(1);
/// Bound on each broker round trip made while a session ends (the broker may be gone).
const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for deliveries the broker sent before it confirmed the consumer's cancel.
const BUFFERED_WAIT: Duration = Duration::from_millis(200);

/// The consumer's prefetch for `concurrency` requests in flight: an eighth more (at least one), so
/// that when a request finishes, the next delivery is already here instead of one ack → delivery
/// round trip away (with a slot idle meanwhile: about 3 ms per request at 200 ms Genesys latency,
/// 0.93 instead of 0.95 of Little's law at 256 in flight). Still bounded: at most an eighth of
/// the concurrency waits here unstarted while another replica could take it, and a crash redoes
/// at most the prefetch (requests in flight and finished ones whose coalesced ack had not left).
pub fn prefetch_for(concurrency: usize) -> u16 {
    let concurrency = concurrency.max(1);
    u16::try_from(concurrency + concurrency.div_ceil(8)).unwrap_or(u16::MAX)
}

/// Consumes until `cancel` fires or the session is lost.
pub async fn consume(
    connection: &Connection,
    ctx: Arc<PipelineContext>,
    settings: &SessionSettings,
    cancel: &CancellationToken,
    readiness: &Readiness,
) -> Result<SessionEnd, lapin::Error> {
    let channel = connection.create_channel().await?;
    let prefetch = prefetch_for(settings.concurrency);
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            ctx.topology.request_queue.as_str().into(),
            settings.consumer_tag.as_str().into(),
            // Manual acks: a request is acked only after its publishes are confirmed.
            BasicConsumeOptions {
                no_ack: false,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    readiness.set_ready(true);
    tracing::info!(queue = %ctx.topology.request_queue, prefetch, "consuming");

    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let mut in_flight = JoinSet::new();
    let settler = Settler::start(channel.clone());
    let mut liveness = tokio::time::interval(LIVENESS_INTERVAL);
    liveness.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A handler whose publish failed asks for a check at once: a dead publisher channel must stop
    // the session before the requeued delivery comes straight back to fail again.
    let check_now = Arc::new(Notify::new());
    let blocked = Blocked::new(readiness.clone());
    let mut unblocked = blocked.watch();
    let end = loop {
        // Reap finished handlers so the set does not grow with the backlog.
        while in_flight.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = cancel.cancelled() => break SessionEnd::Shutdown,
            cause = lost(&mut liveness, &check_now, connection, &channel, &ctx, &blocked) => break SessionEnd::Lost(cause),
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break SessionEnd::Shutdown,
            },
        };
        let next = tokio::select! {
            _ = cancel.cancelled() => break SessionEnd::Shutdown,
            cause = lost(&mut liveness, &check_now, connection, &channel, &ctx, &blocked) => break SessionEnd::Lost(cause),
            // Backpressure (issue 5, owned by genesys::client): while a 429 pauses Genesys calls or
            // the circuit is open, take no new delivery (it stays in the queue); requests already
            // in flight wait within their own retry budget. Resolves at once when healthy.
            // Likewise while the broker blocks the connection: a request started now could call
            // Genesys but not announce the session until the alarm clears.
            next = async {
                let _ = unblocked.wait_for(|blocked| !blocked).await;
                ctx.genesys.accepting().await;
                consumer.next().await
            } => next,
        };
        match next {
            Some(Ok(delivery)) => {
                let ctx = ctx.clone();
                let requests = settings.requests.clone();
                let settler = settler.clone();
                let check_now = check_now.clone();
                settler.delivered(delivery.delivery_tag);
                // Boxed: the pipeline's state machine is large, and tokio copies a task's whole
                // future several times over its life (spawn, completion, join).
                in_flight.spawn(Box::pin(async move {
                    handle(&ctx, &requests, &settler, &check_now, delivery).await;
                    drop(permit);
                }));
            }
            Some(Err(error)) => break SessionEnd::Lost(error.to_string()),
            None => break SessionEnd::Lost("the broker cancelled the consumer (was the queue deleted?)".into()),
        }
    };
    readiness.set_ready(false);
    let ended_at = Instant::now();
    // Handlers that finished while the loop waited are not in flight: the counts below would
    // report them (an idle worker losing its connection logged `abandoned=1`).
    while in_flight.try_join_next().is_some() {}

    match &end {
        SessionEnd::Shutdown => {
            tracing::info!(
                in_flight = in_flight.len(),
                "stopping: no new deliveries; finishing in-flight requests"
            );
            // Stop deliveries first, hand back what the broker already sent, then let in-flight
            // work finish within the grace period.
            cancel_consumer(&channel, &settings.consumer_tag).await;
            requeue_buffered(&mut consumer).await;
            let deadline = ended_at
                + settings
                    .shutdown_grace
                    .saturating_sub(SETTLE_RESERVE.min(settings.shutdown_grace / 4));
            drain(&mut in_flight, &settler, deadline).await;
        }
        SessionEnd::Lost(cause) if channel.status().connected() && connection.status().connected() => {
            // The broker cancelled the consumer, or a publisher lane died, but acks and nacks
            // still reach the broker: let in-flight work settle before reconnecting.
            tracing::warn!(%cause, in_flight = in_flight.len(), "session lost; settling in-flight requests before reconnecting");
            cancel_consumer(&channel, &settings.consumer_tag).await;
            requeue_buffered(&mut consumer).await;
            drain(&mut in_flight, &settler, ended_at + settings.shutdown_grace).await;
        }
        SessionEnd::Lost(cause) => {
            // The channel is gone, and with it every unacked delivery: the broker requeues them.
            // Their handlers could neither ack nor publish (the publisher shares the connection),
            // so stop them now rather than let them call Genesys for nothing, racing the
            // redelivered copies.
            tracing::warn!(%cause, abandoned = in_flight.len(), "session lost; in-flight requests will be redelivered");
            in_flight.abort_all();
            while in_flight.join_next().await.is_some() {}
        }
    }
    // Closing the channel returns every delivery still unacked to the queue.
    let _ = tokio::time::timeout(BROKER_CALL_TIMEOUT, channel.close(200, "session over".into())).await;
    Ok(end)
}

/// Resolves with a cause once the connection, the consumer channel or a publisher lane is dead;
/// checks every [`LIVENESS_INTERVAL`], and whenever `check_now` is notified.
async fn lost(
    liveness: &mut Interval,
    check_now: &Notify,
    connection: &Connection,
    channel: &Channel,
    ctx: &PipelineContext,
    blocked: &Blocked,
) -> String {
    loop {
        tokio::select! {
            _ = liveness.tick() => {}
            () = check_now.notified() => {}
        }
        blocked.update(connection.status().blocked());
        if !connection.status().connected() {
            return "the broker connection closed".into();
        }
        if !channel.status().connected() {
            return "the consumer channel closed".into();
        }
        if !ctx.publisher.all_lanes_open() {
            return "a publisher channel closed".into();
        }
        if ctx.publisher.topology_lost() {
            return "an audit record or dead letter came back unroutable: a queue of the worker's topology was deleted or unbound".into();
        }
    }
}

async fn cancel_consumer(channel: &Channel, consumer_tag: &str) {
    let cancelled = tokio::time::timeout(
        BROKER_CALL_TIMEOUT,
        channel.basic_cancel(consumer_tag.into(), BasicCancelOptions::default()),
    )
    .await;
    match cancelled {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "cancelling the consumer failed"),
        Err(_) => tracing::warn!("cancelling the consumer timed out"),
    }
}

/// Whether the broker has blocked the connection (`connection.blocked`: a memory or disk alarm).
/// It then reads nothing from it, so publishes, confirms and acks wait until the alarm clears:
/// in-flight requests hold, nothing is acked early, no new delivery is started, and `/readyz`
/// says so.
struct Blocked {
    state: tokio::sync::watch::Sender<bool>,
    readiness: Readiness,
}

impl Blocked {
    fn new(readiness: Readiness) -> Self {
        Self {
            state: tokio::sync::watch::Sender::new(false),
            readiness,
        }
    }

    fn watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.state.subscribe()
    }

    fn update(&self, now: bool) {
        let changed = self
            .state
            .send_if_modified(|blocked| std::mem::replace(blocked, now) != now);
        if !changed {
            return;
        }
        self.readiness.set_ready(!now);
        if now {
            tracing::warn!(
                "the broker blocked this connection (a memory or disk alarm): publishes, confirms and acks wait until it clears; /readyz answers 503 meanwhile"
            );
        } else {
            tracing::info!("the broker unblocked the connection; processing resumes");
        }
    }
}

/// Nacks (with requeue) deliveries that arrived before the broker confirmed the cancel and were
/// never handed to a handler, so another consumer can take them at once.
async fn requeue_buffered(consumer: &mut lapin::Consumer) {
    let mut requeued = 0usize;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(BUFFERED_WAIT, consumer.next()).await {
        if let Ok(Ok(true)) = tokio::time::timeout(BROKER_CALL_TIMEOUT, delivery.acker.nack(requeue())).await {
            requeued += 1;
        }
    }
    if requeued > 0 {
        tracing::info!(requeued, "returned deliveries that were not started yet");
    }
}

/// Waits for in-flight handlers until `deadline`; then stops the rest. Either way the settler
/// then acks what finished and nacks (requeue) what did not.
async fn drain(in_flight: &mut JoinSet<()>, settler: &Settler, deadline: Instant) {
    let drained = tokio::time::timeout_at(deadline, async { while in_flight.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            remaining = in_flight.len(),
            "grace period over; unfinished requests go back to the queue"
        );
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
    }
    match tokio::time::timeout(BROKER_CALL_TIMEOUT, settler.finish()).await {
        Ok(Some(finished)) if finished.requeued > 0 => {
            tracing::info!(
                requeued = finished.requeued,
                "unfinished requests returned to the queue"
            )
        }
        Ok(_) => {}
        Err(_) => tracing::warn!("settling the last deliveries timed out; the broker will redeliver them"),
    }
}

async fn handle(
    ctx: &PipelineContext,
    requests: &InFlightRequests,
    settler: &Settler,
    check_now: &Notify,
    delivery: Delivery,
) {
    let upstream = propagation::extract(delivery.properties.headers().as_ref());
    let span = consume_span(ctx, &delivery, upstream.clone());
    let _in_flight = ctx.metrics.track_in_flight();
    let mut unfinished = Unfinished {
        span: Some(span.clone()),
        settler,
        tag: delivery.delivery_tag,
    };
    let work = async {
        let disposition = process_once(ctx, requests, &delivery).await;
        unfinished.span = None;
        match &disposition {
            Disposition::Ack(outcome) => {
                tracing::debug!(outcome = outcome.label(), "acking");
                settler.ack(delivery.delivery_tag);
            }
            Disposition::Requeue { cause } => {
                tracing::warn!(%cause, "requeueing");
                check_now.notify_one();
                settler.requeue(delivery.delivery_tag);
            }
        }
    }
    .instrument(span);
    propagation::with_upstream(upstream, work).await;
}

/// Marks the `consume` span of a handler stopped before its request ended (the grace period ran
/// out, or the connection was lost): its delivery goes back to the queue, and the trace says so.
/// A handler that panicked (a bug) requeues its delivery at once: left unsettled, it would hold
/// a prefetch slot until the session ends. A request that panics every time is stopped by the
/// queue's delivery limit.
struct Unfinished<'a> {
    span: Option<tracing::Span>,
    settler: &'a Settler,
    tag: u64,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(span) = self.span.take() {
            let panicked = std::thread::panicking();
            span.record("error.type", if panicked { "panicked" } else { "abandoned" });
            span.record("otel.status_code", "ERROR");
            if panicked {
                span.in_scope(|| tracing::error!("processing a request panicked; it goes back to the queue"));
                self.settler.requeue(self.tag);
            }
        }
    }
}

/// Runs the pipeline, unless a copy of the same valid request in flight in this replica created
/// the session and had its event confirmed, which settles this one too: it then only gets its own
/// audit record and reply (see [`super::inflight`]).
/// A copy whose first copy was dead-lettered is processed itself, after the first. An invalid
/// request never reaches Genesys, so it is dead-lettered without waiting for other copies.
async fn process_once(ctx: &PipelineContext, requests: &InFlightRequests, delivery: &Delivery) -> Disposition {
    let started = std::time::Instant::now();
    let received_at = chrono::Utc::now();
    let request = match validate(&delivery.data, &ctx.policy) {
        Ok(request) => request,
        Err(rejection) => return process_rejected(ctx, delivery, rejection, started).await,
    };
    let key = RequestKey::new(request.request_id(), &delivery.data);
    loop {
        match requests.claim(&key) {
            Claim::Leader(leader) => {
                let (disposition, session) = process_valid(ctx, delivery, &request, started, received_at).await;
                leader.settle(match &disposition {
                    Disposition::Ack(outcome) => Some(Settled {
                        outcome: outcome.clone(),
                        session,
                    }),
                    Disposition::Requeue { .. } => None,
                });
                return disposition;
            }
            Claim::Follower(follower) => {
                if let Some(settled) = follower.outcome().await {
                    tracing::info!(
                        request_id = key.request_id(),
                        "a copy of this request in flight in this replica created its session; answering this one from it without a second Genesys call or event"
                    );
                    return process_copy(ctx, delivery, &request, &settled, started).await;
                }
            }
        }
    }
}

fn consume_span(ctx: &PipelineContext, delivery: &Delivery, parent: opentelemetry::Context) -> tracing::Span {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    // Named `consume` (DESIGN §6); attributes from the messaging conventions for RabbitMQ. The
    // outcome fields are filled in by the pipeline when the request ends.
    let span = info_span!(
        "consume",
        otel.kind = "consumer",
        otel.status_code = field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "consume",
        messaging.destination.name = %delivery.exchange,
        messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
        messaging.rabbitmq.message.delivery_tag = crate::telemetry::int(delivery.delivery_tag),
        messaging.message.id = (!message_id.is_empty()).then_some(message_id.as_str()),
        messaging.message.body.size = crate::telemetry::int(delivery.data.len()),
        messaging.destination.subscription.name = %ctx.topology.request_queue,
        guest_session.outcome = field::Empty,
        guest_session.reason = field::Empty,
        error.type = field::Empty,
    );
    // Without an OpenTelemetry layer there is nothing to link; that is not an error.
    let _ = span.set_parent(parent);
    span
}

#[cfg(test)]
mod tests {
    use super::prefetch_for;

    #[test]
    fn prefetch_leaves_an_eighth_of_headroom_and_stays_bounded() {
        assert_eq!(prefetch_for(1), 2);
        assert_eq!(prefetch_for(64), 72);
        assert_eq!(prefetch_for(256), 288);
        assert_eq!(prefetch_for(0), 2);
        assert_eq!(prefetch_for(usize::MAX / 2), u16::MAX);
    }
}
