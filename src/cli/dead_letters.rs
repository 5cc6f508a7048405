//! `dead-letters list` / `dead-letters replay`: what operators do with the dead queue.

use anyhow::Context;
use lapin::{
    BasicProperties, Channel,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions},
};

use crate::{
    amqp::{
        AmqpArgs, Outgoing, Publisher, Topology, connect, headers,
        topology::{REQUEST_ROUTING_KEY, inspect},
    },
    pipeline::dead_letter::{self, properties_for_replay},
    request::request_id_of,
};

#[derive(clap::Subcommand)]
pub enum DeadLettersCommand {
    /// Show dead letters (they stay in the queue).
    List(ListArgs),
    /// Re-queue dead letters to the request exchange; each leaves the dead queue only after the
    /// broker confirmed its re-publication.
    Replay(ReplayArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Only this reason (`x-error-kind`, or `delivery_limit` for poison messages the broker dead-lettered).
    #[arg(long)]
    pub reason: Option<String>,
    /// At most this many messages are shown.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Only this reason (`x-error-kind`, or `delivery_limit` for poison messages the broker dead-lettered).
    #[arg(long)]
    pub reason: Option<String>,
    /// At most this many messages are replayed.
    #[arg(long)]
    pub limit: Option<usize>,
}

pub async fn run(command: DeadLettersCommand) -> anyhow::Result<()> {
    match command {
        DeadLettersCommand::List(args) => list(args).await,
        DeadLettersCommand::Replay(args) => replay(args).await,
    }
}

/// The reason a dead letter carries: the worker's header, else the broker's own dead-lettering.
pub fn reason_of(properties: &BasicProperties) -> String {
    let table = properties.headers().as_ref();
    headers::get_str(table, dead_letter::KIND)
        .or_else(|| headers::get_str(table, "x-first-death-reason"))
        .unwrap_or_else(|| "unknown".to_string())
}

/// How `list` names a dead letter: its `message_id`, else the body's well-formed `request_id`,
/// else its `correlation_id`.
fn shown_id(delivery: &lapin::message::Delivery) -> String {
    let properties = &delivery.properties;
    properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .or_else(|| request_id_of(&delivery.data))
        .or_else(|| properties.correlation_id().as_ref().map(|c| c.to_string()))
        .unwrap_or_else(|| "-".into())
}

/// Every reason a dead letter of this worker (or the broker's delivery limit) carries.
fn known_reasons() -> Vec<&'static str> {
    use crate::pipeline::outcome::{EVENT_UNROUTABLE, GENESYS_REJECTED, RETRIES_EXHAUSTED};
    let mut reasons: Vec<&str> = crate::request::RejectReason::ALL.iter().map(|r| r.as_str()).collect();
    reasons.extend([GENESYS_REJECTED, RETRIES_EXHAUSTED, EVENT_UNROUTABLE, "delivery_limit"]);
    reasons
}

/// A mistyped `--reason` would silently match nothing: say so (other values still filter, for
/// dead letters written by other versions).
fn note_unknown_reason(reason: Option<&str>) {
    if let Some(reason) = reason
        && !known_reasons().contains(&reason)
    {
        eprintln!(
            "note: --reason {reason:?} is not a reason this worker writes (known: {})",
            known_reasons().join(", ")
        );
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    note_unknown_reason(args.reason.as_deref());
    let connection = connect(&args.amqp.url, "guest-session-worker dead-letters").await?;
    let topology = Topology::new(&args.amqp.name_prefix);
    let channel = connection.create_channel().await?;
    let depth = depth(&channel, &topology).await?;
    let mut shown = 0usize;
    let mut read = 0usize;
    println!(
        "{:<38} {:<18} {:<25} {:<8} detail",
        "request / message id", "reason", "failed at", "attempts"
    );
    // Messages are held unacked while reading so each is seen once; closing the channel puts
    // them all back.
    while read < depth && shown < args.limit {
        let Some(message) = get(&channel, &topology).await? else {
            break;
        };
        read += 1;
        let reason = reason_of(&message.delivery.properties);
        if args.reason.as_deref().is_some_and(|r| r != reason) {
            continue;
        }
        shown += 1;
        let table = message.delivery.properties.headers().as_ref();
        let id = shown_id(&message.delivery);
        let detail = headers::get_str(table, dead_letter::DETAIL).unwrap_or_default();
        // The worker's own detail already names the contextId; an older or foreign one may not.
        let context = headers::get_str(table, dead_letter::CONTEXT_ID)
            .filter(|c| !detail.contains(c.as_str()))
            .map(|c| format!(" (Genesys contextId {c})"))
            .unwrap_or_default();
        println!(
            "{:<38} {:<18} {:<25} {:<8} {}{}",
            id,
            reason,
            headers::get_str(table, dead_letter::FAILED_AT).unwrap_or_else(|| "-".into()),
            headers::get_str(table, dead_letter::ATTEMPTS).unwrap_or_else(|| "-".into()),
            detail,
            context,
        );
    }
    let _ = channel.close(200, "listed".into()).await;
    let _ = connection.close(200, "done".into()).await;
    println!("{shown} shown of {read} read from '{}'", topology.dead_letter_queue);
    Ok(())
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    note_unknown_reason(args.reason.as_deref());
    let connection = connect(&args.amqp.url, "guest-session-worker dead-letters").await?;
    let topology = Topology::new(&args.amqp.name_prefix);
    let channel = connection.create_channel().await?;
    let publisher = Publisher::open(&connection, 1).await?;
    let limit = args.limit.unwrap_or(usize::MAX);
    // Only what is in the queue now: a replayed request that fails again (still invalid, Genesys
    // still refusing) comes back to the tail of the dead queue while we read, and without this
    // bound the replay would chase it for as long as a worker keeps refusing it.
    let depth = depth(&channel, &topology).await?;
    let mut read = 0usize;
    let mut replayed = 0usize;
    let mut skipped = Vec::new();
    while replayed < limit && read < depth {
        let Some(message) = get(&channel, &topology).await? else {
            break;
        };
        read += 1;
        let delivery = message.delivery;
        if args
            .reason
            .as_deref()
            .is_some_and(|r| r != reason_of(&delivery.properties))
        {
            skipped.push(delivery.delivery_tag);
            continue;
        }
        // No `expiration`, no failure or broker headers (`x-delivery-count`, `x-death`): the
        // request starts over.
        let properties = properties_for_replay(&delivery.properties);
        let outgoing = Outgoing {
            exchange: topology.request_exchange.clone(),
            routing_key: REQUEST_ROUTING_KEY.to_string(),
            payload: delivery.data.clone(),
            properties,
            mandatory: true,
        };
        publisher
            .publish(outgoing)
            .await
            .context("re-publishing a dead letter failed; it stays in the dead queue")?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        replayed += 1;
    }
    for tag in skipped {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    requeue: true,
                    multiple: false,
                },
            )
            .await?;
    }
    let _ = channel.close(200, "replayed".into()).await;
    let _ = connection.close(200, "done".into()).await;
    println!("replayed {replayed} dead letter(s) to '{}'", topology.request_exchange);
    Ok(())
}

/// How many messages the dead queue holds now (a passive declare: it never creates the queue).
async fn depth(channel: &Channel, topology: &Topology) -> anyhow::Result<usize> {
    let queue = inspect(channel, &topology.dead_letter_queue).await.with_context(|| {
        format!(
            "cannot find the dead-letter queue '{}' (has a worker declared it?)",
            topology.dead_letter_queue
        )
    })?;
    Ok(usize::try_from(queue.message_count()).unwrap_or(usize::MAX))
}

async fn get(channel: &Channel, topology: &Topology) -> anyhow::Result<Option<BasicGetMessage>> {
    channel
        .basic_get(
            topology.dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .with_context(|| {
            format!(
                "cannot read the dead-letter queue '{}' (has a worker declared it?)",
                topology.dead_letter_queue
            )
        })
}
