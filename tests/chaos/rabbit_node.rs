//! A dedicated RabbitMQ node for the test that restarts a broker: the shared broker on 5672 serves
//! everyone else's tests and is never stopped.
//!
//! The node lives in a temporary directory: its own Erlang cookie (`HOME`), database, logs, an
//! empty config and plugin list (the machine's `/etc/rabbitmq` would give it the shared node's
//! listener and plugins), its own AMQP and distribution ports on 127.0.0.1. The CLI commands get
//! the same environment. Its ports are picked in 40000–49999, clear of those RabbitMQ takes by
//! default (5672, 25672, and 35672–35682, where every `rabbitmqctl` run listens for the
//! distribution: a node configured on one of those fails to boot while a CLI command runs).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use rand::Rng;

pub struct RabbitNode {
    name: String,
    dir: PathBuf,
    port: u16,
    server: PathBuf,
    ctl: PathBuf,
}

impl RabbitNode {
    /// Starts a node and waits until it accepts AMQP connections; `None` when no RabbitMQ server
    /// is installed on this machine (the broker may be a container).
    pub async fn start() -> Option<Self> {
        let (server, ctl) = find_binaries()?;
        let port = free_port_in_40000s();
        let dist_port = loop {
            let candidate = free_port_in_40000s();
            if candidate != port {
                break candidate;
            }
        };
        let name = format!("chaos-{}-{port}@localhost", std::process::id());
        let dir = std::env::temp_dir().join(format!("chaos-rabbit-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("node dir");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .expect("config");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins");
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("env conf");
        std::fs::write(dir.join("dist_port"), dist_port.to_string()).expect("dist port");
        let node = Self {
            name,
            dir,
            port,
            server,
            ctl,
        };
        let started = node.command(&node.server).arg("-detached").status();
        assert!(
            started.is_ok_and(|s| s.success()),
            "rabbitmq-server -detached failed to start the dedicated node"
        );
        // `wait` follows the pid file until the node has booted.
        let pid_file = node.dir.join("pid");
        node.ctl_blocking(&["wait", "--timeout", "90", pid_file.to_str().expect("utf-8 path")])
            .await;
        node.wait_for_port(Duration::from_secs(30)).await;
        Some(node)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `rabbitmqctl stop_app`: the broker closes every connection and stops listening; the Erlang
    /// node keeps running.
    pub async fn stop_app(&self) {
        self.ctl_blocking(&["stop_app"]).await;
    }

    /// `rabbitmqctl start_app`, then waits until the AMQP port accepts connections again.
    pub async fn start_app(&self) {
        self.ctl_blocking(&["start_app"]).await;
        self.wait_for_port(Duration::from_secs(30)).await;
    }

    /// Raises (or clears) a memory alarm by moving the memory high watermark below (or back
    /// above) what the node uses: the broker then blocks every connection that publishes.
    pub async fn memory_alarm(&self, on: bool) {
        let fraction = if on { "0.000001" } else { "0.4" };
        self.ctl_blocking(&["set_vm_memory_high_watermark", fraction]).await;
    }

    /// SIGSTOP the node: its sockets stay open but nothing answers, not even heartbeats (a hung
    /// or partitioned broker).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: the node resumes where it was.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).expect("the node's pid file");
        let sent = Command::new("kill").args([signal, pid.trim()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }

    async fn wait_for_port(&self, timeout: Duration) {
        let addr = format!("127.0.0.1:{}", self.port);
        let open = crate::harness::eventually(timeout, || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        assert!(
            open,
            "the dedicated node does not listen on {addr}; see {}",
            self.dir.display()
        );
    }

    async fn ctl_blocking(&self, args: &[&str]) {
        let mut command = self.command(&self.ctl);
        command.arg("-n").arg(&self.name).args(args);
        let what = args.join(" ");
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("rabbitmqctl task");
        match output {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!(
                "rabbitmqctl {what} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => panic!("rabbitmqctl {what} could not run: {error}"),
        }
    }

    fn command(&self, program: &Path) -> Command {
        let dist_port = std::fs::read_to_string(self.dir.join("dist_port")).expect("dist port");
        let mut command = Command::new(program);
        command
            .env("HOME", &self.dir)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("enabled_plugins"))
            .env("RABBITMQ_DIST_PORT", dist_port.trim())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env_remove("RABBITMQ_NODE_PORT")
            .env_remove("RABBITMQ_NODE_IP_ADDRESS");
        command
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        // The node and its data are disposable: SIGKILL is instant where `rabbitmqctl stop` takes
        // seconds, and it also ends a node that a failed test left frozen.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server script and `rabbitmqctl`. The Debian package's scripts in `/usr/sbin` switch to the
/// `rabbitmq` user (and its cookie) when run as root; the real ones live in
/// `/usr/lib/rabbitmq/bin`.
fn find_binaries() -> Option<(PathBuf, PathBuf)> {
    let debian = Path::new("/usr/lib/rabbitmq/bin");
    if debian.join("rabbitmq-server").exists() && debian.join("rabbitmqctl").exists() {
        return Some((debian.join("rabbitmq-server"), debian.join("rabbitmqctl")));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        let server = dir.join("rabbitmq-server");
        let ctl = dir.join("rabbitmqctl");
        (server.exists() && ctl.exists()).then_some((server, ctl))
    })
}

fn free_port_in_40000s() -> u16 {
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(40_000..50_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
