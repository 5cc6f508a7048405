//! A light probe of the disk under a local broker: a quorum queue delivers a message only once it
//! is in the broker's fsynced log, so a stalled `fsync` stalls every request in that moment,
//! whatever the worker does. The latency scenario runs this beside each round to say whether its
//! tail met such a stall.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// One 4 KiB write and `fdatasync` this often: about what a lightly loaded broker adds itself.
const INTERVAL: Duration = Duration::from_millis(10);
/// A sync slower than this counts as a stall.
const STALL: Duration = Duration::from_millis(10);

/// What the probe saw while it ran.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stalls {
    pub syncs: u32,
    /// Syncs slower than 10 ms.
    pub over_10ms: u32,
    pub max_ms: f64,
}

impl std::fmt::Display for Stalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} fsyncs over 10 ms (max {:.1} ms)",
            self.over_10ms, self.syncs, self.max_ms
        )
    }
}

pub struct DiskProbe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Stalls>>,
    file: PathBuf,
}

impl DiskProbe {
    /// Starts probing a file in `dir` (the broker's working directory), or `None` when no file
    /// can be written there.
    pub fn start(dir: &Path) -> Option<Self> {
        let file = dir.join(format!(".guest-session-worker-bench-fsync-{}", std::process::id()));
        let mut out = std::fs::File::create(&file).ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let block = [0u8; 4096];
            let mut stalls = Stalls::default();
            while !stopped.load(Ordering::Relaxed) {
                let started = Instant::now();
                if out.write_all(&block).and_then(|()| out.sync_data()).is_err() {
                    break;
                }
                let took = started.elapsed();
                stalls.syncs += 1;
                stalls.max_ms = stalls.max_ms.max(took.as_secs_f64() * 1000.0);
                if took > STALL {
                    stalls.over_10ms += 1;
                }
                std::thread::sleep(INTERVAL);
            }
            stalls
        });
        Some(Self {
            stop,
            thread: Some(thread),
            file,
        })
    }

    /// The probe's directory for a local broker: its working directory (`/var/lib/rabbitmq` for
    /// Debian's package), on the disk of its data.
    pub fn broker_dir(pid: u32) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
    }

    /// What the probe saw; dropping it then removes its file.
    pub fn stop(mut self) -> Stalls {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

/// A bench that fails or panics mid-round still stops the thread and removes its file.
impl Drop for DiskProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}
