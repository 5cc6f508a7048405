//! One delivery, top to bottom, once the consumer has validated it ([`crate::request::validate`]):
//! a rejection is dead-lettered ([`process_rejected`]); a valid request gets its session created,
//! then its event, audit record and reply published ([`process_valid`]). Either way the result
//! says whether the consumer acks or requeues the delivery.

use std::{sync::Arc, time::Instant};

use chrono::Utc;
use lapin::{BasicProperties, message::Delivery, types::ShortString};
use tracing::{Instrument, field, info_span};

use super::{
    Disposition, Outcome,
    dead_letter::{DeadLetterCause, dead_letter},
    event::SessionCreatedEvent,
    inflight::Settled,
    outcome::EVENT_UNROUTABLE,
    reply::{Reply, ReplySession, reply_message},
};
use crate::{
    amqp::{Outgoing, PublishError, Publisher, Topology, topology::EVENT_ROUTING_KEY},
    audit::{AuditOutcome, AuditRecord, Pseudonymizer},
    genesys::{CreateError, CreatedSession, GenesysClient},
    metrics::Metrics,
    request::{Consent, RejectReason, Rejection, ValidatedRequest, ValidationPolicy},
    telemetry::propagation,
};

/// Everything a pipeline run needs; shared by all in-flight messages.
pub struct PipelineContext {
    pub topology: Topology,
    pub policy: ValidationPolicy,
    pub genesys: GenesysClient,
    pub publisher: Publisher,
    pub pseudonymizer: Pseudonymizer,
    pub metrics: Metrics,
}

/// Dead-letters a delivery that failed validation.
pub async fn process_rejected(
    ctx: &PipelineContext,
    delivery: &Delivery,
    rejection: Rejection,
    started: Instant,
) -> Disposition {
    let outcome = reject(ctx, delivery, rejection, started).await;
    disposition(ctx, outcome)
}

/// Creates the session of a valid request and publishes what follows from it. Hands back the
/// session once it is created and announced, for copies of the request in flight alongside.
pub async fn process_valid(
    ctx: &PipelineContext,
    delivery: &Delivery,
    request: &ValidatedRequest,
    started: Instant,
    received_at: chrono::DateTime<Utc>,
) -> (Disposition, Option<Arc<CreatedSession>>) {
    let (outcome, published, session) = create(ctx, delivery, request, started, received_at).await;
    (disposition(ctx, (outcome, published)), session)
}

/// Answers for a copy of a request whose first copy created the session (see
/// [`super::inflight`]): the copy's own audit record and, when it set `reply_to`, its own reply,
/// from the first copy's session. No second Genesys call and no second event.
pub async fn process_copy(
    ctx: &PipelineContext,
    delivery: &Delivery,
    request: &ValidatedRequest,
    settled: &Settled,
    started: Instant,
) -> Disposition {
    let outcome = settled.outcome.clone();
    let audit = created_audit(ctx, request, outcome.attempts(), started);
    let reply = created_reply(request, settled.session.as_deref());
    let span = publish_span(&ctx.topology.audit_exchange, "", None);
    match publish_audited(ctx, delivery, span, || None, audit, &reply).await {
        Ok(()) => {
            tracing::Span::current().record("guest_session.outcome", outcome.label());
            Disposition::Ack(outcome)
        }
        Err(error) => requeue(ctx, error),
    }
}

fn disposition(ctx: &PipelineContext, outcome_and_publish: (Outcome, Result<(), PublishError>)) -> Disposition {
    // The consume span (the caller's) says how the request ended, so a trace search by outcome
    // or reason finds it.
    let consume_span = tracing::Span::current();
    match outcome_and_publish {
        (outcome, Ok(())) => {
            ctx.metrics.record_outcome(&outcome);
            consume_span.record("guest_session.outcome", outcome.label());
            if let Some(reason) = outcome.reason() {
                consume_span.record("guest_session.reason", reason);
            }
            // A request the worker could not carry through (Genesys refused it, retries ran out,
            // the event had nowhere to go) is a failed operation, so an error-rate query on
            // `consume` counts it. A rejected one is the sender's mistake, as a 4xx is not a
            // server span's error.
            if let Outcome::Failed { reason, .. } = &outcome {
                consume_span.record("error.type", *reason);
                consume_span.record("otel.status_code", "ERROR");
            }
            Disposition::Ack(outcome)
        }
        (_, Err(error)) => requeue(ctx, error),
    }
}

/// A publish for the request was not confirmed: it goes back to the queue, and the consume span
/// (the caller's) says so.
fn requeue(ctx: &PipelineContext, error: PublishError) -> Disposition {
    ctx.metrics.record_requeue();
    let consume_span = tracing::Span::current();
    consume_span.record("error.type", "publish_unconfirmed");
    consume_span.record("otel.status_code", "ERROR");
    tracing::warn!(error = %error, "publishing for a request failed; it will be redelivered");
    Disposition::Requeue {
        cause: error.to_string(),
    }
}

async fn reject(
    ctx: &PipelineContext,
    delivery: &Delivery,
    rejection: Rejection,
    started: Instant,
) -> (Outcome, Result<(), PublishError>) {
    let validate_span = info_span!("validate", outcome = "rejected", reason = rejection.reason.as_str());
    validate_span.in_scope(|| {
        tracing::info!(reason = rejection.reason.as_str(), detail = %rejection.detail, "request rejected");
    });
    let outcome = Outcome::Rejected {
        reason: rejection.reason,
    };
    let request_id = rejection
        .request_id
        .clone()
        .or_else(|| delivery.properties.message_id().as_ref().map(|m| m.to_string()));
    let cause = DeadLetterCause {
        kind: rejection.reason.as_str(),
        detail: &rejection.detail,
        attempts: 0,
        context_id: None,
    };
    let audit = AuditRecord {
        request_id: request_id.clone(),
        guest_ref: rejection.guest_id.as_deref().map(|g| ctx.pseudonymizer.guest_ref(g)),
        outcome: AuditOutcome::Rejected,
        reason: Some(rejection.reason.as_str().to_string()),
        validation_passed: false,
        ..audit_base(rejection.consent, rejection.reason == RejectReason::PiiBlocked, started)
    };
    let reply = Reply {
        request_id: request_id.as_deref(),
        outcome: "rejected",
        reason: Some(rejection.reason.as_str()),
        detail: Some(&rejection.detail),
        session: None,
    };
    let result = dead_letter_publish(ctx, delivery, &cause, audit, &reply).await;
    (outcome, result)
}

async fn create(
    ctx: &PipelineContext,
    delivery: &Delivery,
    request: &ValidatedRequest,
    started: Instant,
    received_at: chrono::DateTime<Utc>,
) -> (Outcome, Result<(), PublishError>, Option<Arc<CreatedSession>>) {
    info_span!("validate", outcome = "passed").in_scope(|| {});
    // Boxed: the retrying HTTP call is by far the largest state machine of the pipeline, and moving
    // it inline with every spawned handler showed up as a tenth of the CPU (memmove) in profiles.
    match Box::pin(ctx.genesys.create_session(request)).await {
        Ok(session) => {
            let latency_ms = started.elapsed().as_millis() as u64;
            ctx.metrics.observe_creation(started.elapsed());
            let outcome = Outcome::Created {
                attempts: session.attempts,
            };
            let event = SessionCreatedEvent::new(request, &session, received_at, latency_ms);
            let audit = created_audit(ctx, request, session.attempts, started);
            let reply = created_reply(request, Some(&session));
            let span = publish_span(&ctx.topology.crm_exchange, EVENT_ROUTING_KEY, Some(&event.event_id));
            // Built inside the publish span, so each message's `traceparent` names it as parent.
            let (event_out, follow_up) = span.in_scope(|| {
                let mut follow_up = vec![audit_message(ctx, &audit)];
                follow_up.extend(reply_to(delivery, &reply));
                (event_message(ctx, request, &event), follow_up)
            });
            span.record(
                "messaging.batch.message_count",
                crate::telemetry::int(1 + follow_up.len()),
            );
            // The event goes alone and first: the outcome is `created` only once the broker has
            // routed it, so the audit record and the reply never announce a session that no CRM
            // consumer heard of (an unroutable event gets one `failed` record, not two records).
            let published = publish_in_turn(ctx, Some(event_out), follow_up, &span).await;
            // Ends the span here, so a dead-letter publish below is its sibling, not inside it.
            drop(span);
            match published {
                Ok(()) => {
                    audit.log();
                    (outcome, Ok(()), Some(Arc::new(session)))
                }
                // The session exists but nobody can hear about it: park the request where an
                // operator sees it; a replay finds the same conversation (Open Messaging: same
                // messageId; Guest Chat opens another, the first is never routed).
                Err(Unpublished::Lead(error)) if error.is_unroutable() => {
                    let detail = error.to_string();
                    let cause = DeadLetterCause {
                        kind: EVENT_UNROUTABLE,
                        detail: &detail,
                        attempts: session.attempts,
                        context_id: None,
                    };
                    let audit = AuditRecord {
                        outcome: AuditOutcome::Failed,
                        reason: Some(EVENT_UNROUTABLE.into()),
                        routing_success: false,
                        ..audit
                    };
                    let failed_reply = Reply {
                        request_id: Some(request.request_id()),
                        outcome: "failed",
                        reason: Some(EVENT_UNROUTABLE),
                        detail: Some(&detail),
                        session: None,
                    };
                    let result = dead_letter_publish(ctx, delivery, &cause, audit, &failed_reply).await;
                    (
                        Outcome::Failed {
                            reason: EVENT_UNROUTABLE,
                            attempts: session.attempts,
                        },
                        result,
                        None,
                    )
                }
                Err(unpublished) => (outcome, Err(unpublished.into_error()), None),
            }
        }
        Err(error) => {
            let reason = match &error {
                CreateError::Rejected { .. } => super::outcome::GENESYS_REJECTED,
                CreateError::RetriesExhausted { .. } => super::outcome::RETRIES_EXHAUSTED,
            };
            tracing::warn!(reason, attempts = error.attempts(), context_id = error.context_id(), error = %error, "session creation failed");
            let detail = error.to_string();
            let cause = DeadLetterCause {
                kind: reason,
                detail: &detail,
                attempts: error.attempts(),
                context_id: error.context_id(),
            };
            let audit = AuditRecord {
                request_id: Some(request.request_id().to_string()),
                guest_ref: Some(ctx.pseudonymizer.guest_ref(request.guest_id())),
                outcome: AuditOutcome::Failed,
                reason: Some(reason.to_string()),
                attempts: error.attempts(),
                validation_passed: true,
                ..audit_base(Some(request.consent()), false, started)
            };
            let reply = Reply {
                request_id: Some(request.request_id()),
                outcome: "failed",
                reason: Some(reason),
                detail: Some(&detail),
                session: None,
            };
            let result = dead_letter_publish(ctx, delivery, &cause, audit, &reply).await;
            (
                Outcome::Failed {
                    reason,
                    attempts: error.attempts(),
                },
                result,
                None,
            )
        }
    }
}

/// Which publish of [`publish_in_turn`] failed. For a created session: a returned event (the
/// lead) means no CRM consumer is bound (dead-lettered); a returned audit record means the
/// worker's own audit queue is gone (requeued, and the session restarts to declare it again).
enum Unpublished {
    Lead(PublishError),
    FollowUp(PublishError),
}

impl Unpublished {
    fn into_error(self) -> PublishError {
        match self {
            Unpublished::Lead(error) | Unpublished::FollowUp(error) => error,
        }
    }
}

/// Publishes `lead` alone and first, when there is one, then `follow_up` once it is confirmed.
async fn publish_in_turn(
    ctx: &PipelineContext,
    lead: Option<Outgoing>,
    follow_up: Vec<Outgoing>,
    span: &tracing::Span,
) -> Result<(), Unpublished> {
    if let Some(lead) = lead {
        publish_traced(ctx, vec![lead], span).await.map_err(Unpublished::Lead)?;
    }
    publish_traced(ctx, follow_up, span)
        .await
        .map_err(Unpublished::FollowUp)
}

/// Dead letter + audit + optional reply, all confirmed before the caller acks.
async fn dead_letter_publish(
    ctx: &PipelineContext,
    delivery: &Delivery,
    cause: &DeadLetterCause<'_>,
    audit: AuditRecord,
    reply: &Reply<'_>,
) -> Result<(), PublishError> {
    let message_id = delivery.properties.message_id().as_ref().map(|m| m.as_str());
    let span = publish_span(
        &ctx.topology.dead_letter_exchange,
        delivery.routing_key.as_str(),
        message_id,
    );
    let dead = || Some(dead_letter(&ctx.topology.dead_letter_exchange, delivery, cause));
    publish_audited(ctx, delivery, span, dead, audit, reply).await
}

/// Publishes `lead` (the dead letter, if any) and, once it is confirmed, the audit record and,
/// when asked, the reply, inside `span` (built there, so each `traceparent` names it); logs the
/// audit record once all are confirmed. The dead letter goes first and alone, as the event does:
/// if its queue is gone, no record or reply has announced an outcome the redelivery will repeat.
async fn publish_audited(
    ctx: &PipelineContext,
    delivery: &Delivery,
    span: tracing::Span,
    lead: impl FnOnce() -> Option<Outgoing>,
    audit: AuditRecord,
    reply: &Reply<'_>,
) -> Result<(), PublishError> {
    let (lead, follow_up) = span.in_scope(|| {
        let mut follow_up = vec![audit_message(ctx, &audit)];
        follow_up.extend(reply_to(delivery, reply));
        (lead(), follow_up)
    });
    span.record(
        "messaging.batch.message_count",
        crate::telemetry::int(usize::from(lead.is_some()) + follow_up.len()),
    );
    let result = publish_in_turn(ctx, lead, follow_up, &span)
        .await
        .map_err(Unpublished::into_error);
    if result.is_ok() {
        audit.log();
    }
    result
}

/// The `publish` span (DESIGN §6) with the messaging conventions for RabbitMQ. Its destination is
/// the request's main message (the event or the dead letter); the audit record and the reply are
/// published within it too, and `messaging.batch.message_count` counts them all.
fn publish_span(exchange: &str, routing_key: &str, message_id: Option<&str>) -> tracing::Span {
    info_span!(
        "publish",
        otel.kind = "producer",
        otel.status_code = field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = exchange,
        messaging.rabbitmq.destination.routing_key = (!routing_key.is_empty()).then_some(routing_key),
        messaging.message.id = message_id,
        messaging.batch.message_count = field::Empty,
        error.type = field::Empty,
    )
}

/// Publishes `messages` and waits for their confirms inside `span`, recording a failure on it.
async fn publish_traced(
    ctx: &PipelineContext,
    messages: Vec<Outgoing>,
    span: &tracing::Span,
) -> Result<(), PublishError> {
    let result = ctx.publisher.publish_all(messages).instrument(span.clone()).await;
    if let Err(error) = &result {
        let kind = if error.is_unroutable() {
            "unroutable"
        } else {
            "unconfirmed"
        };
        span.record("error.type", kind);
        span.record("otel.status_code", "ERROR");
    }
    result
}

/// The audit record of a created session.
fn created_audit(ctx: &PipelineContext, request: &ValidatedRequest, attempts: u32, started: Instant) -> AuditRecord {
    AuditRecord {
        request_id: Some(request.request_id().to_string()),
        guest_ref: Some(ctx.pseudonymizer.guest_ref(request.guest_id())),
        outcome: AuditOutcome::Created,
        reason: None,
        attempts,
        routing_success: true,
        validation_passed: true,
        ..audit_base(Some(request.consent()), false, started)
    }
}

/// The reply announcing a created session.
fn created_reply<'a>(request: &'a ValidatedRequest, session: Option<&'a CreatedSession>) -> Reply<'a> {
    Reply {
        request_id: Some(request.request_id()),
        outcome: "created",
        reason: None,
        detail: None,
        session: session.map(ReplySession::from_created),
    }
}

/// `privacy_compliant`: consent to data processing given and no personal-data key blocked.
fn audit_base(consent: Option<Consent>, pii_blocked: bool, started: Instant) -> AuditRecord {
    let consent_given = consent.map(|c| c.data_processing);
    AuditRecord {
        timestamp: AuditRecord::timestamp(Utc::now()),
        request_id: None,
        guest_ref: None,
        outcome: AuditOutcome::Rejected,
        reason: None,
        latency_ms: started.elapsed().as_millis() as u64,
        attempts: 0,
        routing_success: false,
        validation_passed: false,
        consent_data_processing: consent_given,
        consent_marketing: consent.map(|c| c.marketing),
        pii_blocked,
        privacy_compliant: consent_given == Some(true) && !pii_blocked,
        trace_id: propagation::current_trace_id(),
    }
}

/// Properties of a JSON message the worker publishes (DESIGN §4): persistent, `message_id`,
/// `correlation_id` = the request id, and the current trace context in the headers.
pub fn json_properties(message_id: String, correlation_id: Option<&str>) -> BasicProperties {
    let headers = propagation::current_headers();
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(Utc::now().timestamp() as u64)
        .with_message_id(message_id.into())
        .with_headers(headers);
    if let Some(id) = correlation_id.and_then(crate::amqp::headers::short) {
        properties = properties.with_correlation_id(id);
    }
    properties
}

fn event_message(ctx: &PipelineContext, request: &ValidatedRequest, event: &SessionCreatedEvent) -> Outgoing {
    Outgoing {
        exchange: ctx.topology.crm_exchange.clone(),
        routing_key: EVENT_ROUTING_KEY.to_string(),
        payload: serde_json::to_vec(event).unwrap_or_default(),
        properties: json_properties(event.event_id.clone(), Some(request.request_id()))
            .with_type(super::event::EVENT_TYPE.into()),
        mandatory: true,
    }
}

fn audit_message(ctx: &PipelineContext, audit: &AuditRecord) -> Outgoing {
    Outgoing {
        exchange: ctx.topology.audit_exchange.clone(),
        routing_key: String::new(),
        payload: serde_json::to_vec(audit).unwrap_or_default(),
        properties: json_properties(uuid::Uuid::new_v4().to_string(), audit.request_id.as_deref()),
        // Returned if the audit queue is gone: the request is then requeued, not acked.
        mandatory: true,
    }
}

fn reply_to(delivery: &Delivery, reply: &Reply<'_>) -> Option<Outgoing> {
    let reply_to: &ShortString = delivery
        .properties
        .reply_to()
        .as_ref()
        .filter(|r| !r.as_str().is_empty())?;
    let correlation_id = delivery
        .properties
        .correlation_id()
        .clone()
        .or_else(|| reply.request_id.and_then(crate::amqp::headers::short));
    Some(reply_message(
        reply_to,
        correlation_id,
        reply,
        propagation::current_headers(),
    ))
}
