//! One connected session of the worker: consume with bounded concurrency until shutdown or until
//! the broker connection is lost.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    Connection,
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{Disposition, PipelineContext, process::process};
use crate::{health::Readiness, telemetry::propagation};

/// Why a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was requested and in-flight work has been settled.
    Shutdown,
    /// The connection, channel or consumer went away; reconnect.
    Lost(String),
}

pub struct SessionSettings {
    pub concurrency: usize,
    pub shutdown_grace: Duration,
    pub consumer_tag: String,
}

/// Consumes until `cancel` fires or the consumer stream ends.
pub async fn consume(
    connection: &Connection,
    ctx: Arc<PipelineContext>,
    settings: &SessionSettings,
    cancel: &CancellationToken,
    readiness: &Readiness,
) -> Result<SessionEnd, lapin::Error> {
    let channel = connection.create_channel().await?;
    // Prefetch equals the in-flight bound: the broker never hands us more than we will work on,
    // so nothing waits unacknowledged in our memory while another replica could take it.
    let prefetch = u16::try_from(settings.concurrency).unwrap_or(u16::MAX);
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
    let end = loop {
        // Reap finished handlers so the set does not grow with the backlog.
        while in_flight.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = cancel.cancelled() => break SessionEnd::Shutdown,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break SessionEnd::Shutdown,
            },
        };
        let next = tokio::select! {
            _ = cancel.cancelled() => break SessionEnd::Shutdown,
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                let ctx = ctx.clone();
                in_flight.spawn(async move {
                    handle(&ctx, delivery).await;
                    drop(permit);
                });
            }
            Some(Err(error)) => break SessionEnd::Lost(error.to_string()),
            None => break SessionEnd::Lost("the broker cancelled the consumer or closed the channel".into()),
        }
    };
    readiness.set_ready(false);

    match end {
        SessionEnd::Shutdown => {
            // Stop deliveries first, then let in-flight work finish within the grace period.
            if let Err(error) = channel
                .basic_cancel(settings.consumer_tag.as_str().into(), BasicCancelOptions::default())
                .await
            {
                tracing::warn!(%error, "cancelling the consumer failed");
            }
            let drained = tokio::time::timeout(settings.shutdown_grace, async {
                while in_flight.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    remaining = in_flight.len(),
                    "shutdown grace period over; unfinished requests go back to the queue"
                );
                in_flight.abort_all();
            }
            // Closing the channel returns every unacked delivery to the queue.
            let _ = channel.close(200, "shutdown".into()).await;
            Ok(SessionEnd::Shutdown)
        }
        SessionEnd::Lost(cause) => {
            // Their acks cannot reach the broker any more, which will redeliver them; let them
            // finish in the background rather than abort mid-call.
            tokio::spawn(async move { while in_flight.join_next().await.is_some() {} });
            Ok(SessionEnd::Lost(cause))
        }
    }
}

async fn handle(ctx: &PipelineContext, delivery: Delivery) {
    let span = consume_span(ctx, &delivery);
    let _in_flight = ctx.metrics.track_in_flight();
    async {
        let disposition = process(ctx, &delivery).await;
        let result = match &disposition {
            Disposition::Ack(outcome) => {
                tracing::debug!(outcome = outcome.label(), "acking");
                delivery.acker.ack(BasicAckOptions::default()).await
            }
            Disposition::Requeue { cause } => {
                tracing::warn!(%cause, "requeueing");
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, "settling the delivery failed; the broker will redeliver it");
        }
    }
    .instrument(span)
    .await;
}

fn consume_span(ctx: &PipelineContext, delivery: &Delivery) -> tracing::Span {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let span = info_span!(
        "consume",
        otel.kind = "consumer",
        otel.name = format!("process {}", ctx.topology.request_queue),
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %ctx.topology.request_exchange,
        messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
        messaging.message.id = %message_id,
        messaging.message.body.size = delivery.data.len(),
    );
    let parent = propagation::extract(delivery.properties.headers().as_ref());
    // Without an OpenTelemetry layer there is nothing to link; that is not an error.
    let _ = span.set_parent(parent);
    span
}
