//! Where a benchmark's CPU went: the CPU time of this process, the worker processes and a local
//! RabbitMQ node, read from Linux's `/proc`. Every party shares the same cores, so a throughput
//! figure means little without knowing who spent them.

use std::time::Duration;

/// `USER_HZ`, the unit of `/proc/<pid>/stat` times: 100 on every Linux architecture this builds
/// for (the kernel fixes it for user space whatever its own tick rate).
const TICKS_PER_SEC: u64 = 100;

/// User plus system CPU time of a live process (`None` once it is gone, or off Linux).
pub fn process_cpu(pid: u32) -> Option<Duration> {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// This process's CPU time.
pub fn own_cpu() -> Option<Duration> {
    stat_cpu("/proc/self/stat")
}

fn stat_cpu(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / TICKS_PER_SEC))
}

/// The pid of a RabbitMQ node running on this machine (its Erlang VM, `beam.smp`), if any.
pub fn local_broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim() == "beam.smp").then_some(pid)
    })
}

/// Waits (at most `timeout`) until the local broker has been nearly idle for half a second: a
/// scenario's teardown (deleting queues that hold thousands of messages, compacting logs) must not
/// be billed to the next scenario. Returns at once when no broker runs here.
pub async fn broker_settled(broker: Option<u32>, timeout: Duration) {
    const WINDOW: Duration = Duration::from_millis(500);
    const IDLE_SHARE: f64 = 0.05;
    let Some(pid) = broker else { return };
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        let Some(before) = process_cpu(pid) else { return };
        tokio::time::sleep(WINDOW).await;
        let Some(after) = process_cpu(pid) else { return };
        if after.saturating_sub(before).as_secs_f64() <= IDLE_SHARE * WINDOW.as_secs_f64() {
            return;
        }
    }
}

/// `cpu` spread over `units` (messages, requests), in microseconds.
pub fn per_unit(cpu: Duration, units: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / units.max(1) as f64
}

/// CPU per message or request of one run, by party, in microseconds (`None`: not measured).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Share {
    /// The worker processes (none in the ceiling loop).
    pub worker: Option<f64>,
    /// This process: the ceiling loop, or the simulator and the observers.
    pub own: Option<f64>,
    /// The local broker.
    pub broker: Option<f64>,
}

/// A measured figure in µs, or `n/a`.
pub fn micros(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0} µs"))
}

/// CPU time of this process and of the local broker at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    own: Option<Duration>,
    broker: Option<(u32, Duration)>,
}

impl Snapshot {
    pub fn now(broker: Option<u32>) -> Self {
        Self {
            own: own_cpu(),
            broker: broker.and_then(|pid| Some((pid, process_cpu(pid)?))),
        }
    }

    /// This process's and the broker's CPU since `earlier`, per one of `units` (no worker share).
    pub fn share_since(&self, earlier: &Snapshot, units: usize) -> Share {
        let own = match (self.own, earlier.own) {
            (Some(now), Some(then)) => Some(per_unit(now.saturating_sub(then), units)),
            _ => None,
        };
        let broker = match (self.broker, earlier.broker) {
            (Some((pid, now)), Some((then_pid, then))) if pid == then_pid => {
                Some(per_unit(now.saturating_sub(then), units))
            }
            _ => None,
        };
        Share {
            worker: None,
            own,
            broker,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_cpu_time_that_grows() {
        let before = own_cpu().expect("/proc/self/stat");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(own_cpu().expect("again") >= before);
    }
}
