//! A drop guard that deletes a test's queues and exchanges when the test ends (a failed
//! assertion) before its own cleanup, so a failing test leaves nothing on the shared broker.
//! Shared by the `it` and `chaos` suites through `#[path]`.

use std::time::Duration;

use guest_session_worker::amqp::{Topology, connect};
use lapin::{Channel, options::QueueDeleteOptions};

pub struct Leftovers {
    url: String,
    topology: Topology,
    /// Queues declared besides the topology (observers bound to its exchanges).
    pub queues: Vec<String>,
    armed: bool,
}

impl Leftovers {
    pub fn new(url: &str, topology: &Topology) -> Self {
        Self {
            url: url.to_string(),
            topology: topology.clone(),
            queues: Vec::new(),
            armed: true,
        }
    }

    /// The test cleans up itself: deletes everything on `channel` and disarms the guard.
    pub async fn delete_now(&mut self, channel: &Channel) {
        self.armed = false;
        delete(channel, &self.topology, &self.queues).await;
    }
}

async fn delete(channel: &Channel, topology: &Topology, queues: &[String]) {
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = topology.delete(channel).await;
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (url, topology, queues) = (
            self.url.clone(),
            self.topology.clone(),
            std::mem::take(&mut self.queues),
        );
        // The panicking test may be inside its runtime: clean up on a thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    let connection = connect(&url, "test-cleanup").await.ok()?;
                    let channel = connection.create_channel().await.ok()?;
                    delete(&channel, &topology, &queues).await;
                    let _ = connection.close(200, "test cleanup".into()).await;
                    Some(())
                })
                .await;
            });
        });
        let _ = cleanup.join();
    }
}
