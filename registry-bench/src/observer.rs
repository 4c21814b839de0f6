//! The bench's side of the separate discoverer ([`crate::observe`]): a child
//! process of this binary (`--observe`), or a thread for the embedded
//! `memory` backend, kept in step through its stdout and stdin (or channels).

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncBufReadExt;

use crate::observe;
use crate::{BenchArgs, ENV, URL_ENV, conf};

/// The separate discoverer, running.
pub enum Observer {
    Child {
        child: Box<tokio::process::Child>,
        lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    },
    Thread {
        ready: Option<tokio::sync::oneshot::Receiver<()>>,
        held: Option<tokio::sync::oneshot::Receiver<()>>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        done: tokio::sync::oneshot::Receiver<anyhow::Result<observe::Observed>>,
    },
}

impl Observer {
    /// Starts the separate discoverer of the fleet in `namespace`.
    pub fn start(args: &BenchArgs, url: &str, namespace: &str, ttl: Duration, hold: Duration) -> anyhow::Result<Self> {
        if url.starts_with("memory://") {
            // The embedded store lives in this process: observe from a thread of its own.
            let (ready_tx, ready) = tokio::sync::oneshot::channel();
            let (held_tx, held) = tokio::sync::oneshot::channel();
            let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let (done_tx, done) = tokio::sync::oneshot::channel();
            let plan =
                observe::Plan { env: ENV.to_owned(), conf: conf(namespace, ttl), cold_starts: args.cold_starts, hold };
            let url = url.to_owned();
            std::thread::Builder::new().name("bench-observer".into()).spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("observer runtime")
                    .and_then(|rt| {
                        rt.block_on(observe::observe(
                            || async move { Ok(registry::connect(url.as_str()).await?) },
                            plan,
                            observe::Scope::Thread,
                            observe::Signals {
                                ready: move || {
                                    let _ = ready_tx.send(());
                                },
                                held: move || {
                                    let _ = held_tx.send(());
                                },
                                stop: async move {
                                    let _ = stop_rx.await;
                                },
                            },
                        ))
                    });
                let _ = done_tx.send(result);
            })?;
            return Ok(Observer::Thread { ready: Some(ready), held: Some(held), stop: Some(stop), done });
        }
        // This very binary, even when a rebuild replaced its file meanwhile.
        let own = std::path::Path::new("/proc/self/exe");
        let exe = if own.exists() {
            own.to_path_buf()
        } else {
            std::env::current_exe().context("locating registry-bench for the separate discoverer")?
        };
        let mut child = tokio::process::Command::new(exe)
            .args(["--observe", "--backend", &args.backend, "--namespace", namespace, "--env", ENV])
            .args(["--ttl", &ttl.as_secs().to_string(), "--hold", &hold.as_secs().to_string()])
            .args(["--cold-starts", &args.cold_starts.to_string()])
            .env(URL_ENV, url)
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the separate discoverer")?;
        let stdout = child.stdout.take().context("separate discoverer's stdout")?;
        Ok(Observer::Child { child: Box::new(child), lines: tokio::io::BufReader::new(stdout).lines() })
    }

    /// Waits until the hold starts (cold starts done).
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        match self {
            Observer::Child { lines, .. } => Self::line(lines, "ready").await,
            Observer::Thread { ready, .. } => {
                if let Some(ready) = ready.take() {
                    ready.await.context("the separate discoverer ended before it was ready")?;
                }
                Ok(())
            }
        }
    }

    /// Waits until the hold ended.
    pub async fn held(&mut self) -> anyhow::Result<()> {
        match self {
            Observer::Child { lines, .. } => Self::line(lines, "held").await,
            Observer::Thread { held, .. } => {
                if let Some(held) = held.take() {
                    held.await.context("the separate discoverer ended in its hold")?;
                }
                Ok(())
            }
        }
    }

    async fn line(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
        want: &str,
    ) -> anyhow::Result<()> {
        loop {
            match lines.next_line().await? {
                Some(line) if line.trim() == want => return Ok(()),
                Some(_) => {}
                None => anyhow::bail!("the separate discoverer ended before `{want}`"),
            }
        }
    }

    /// Tells the observer the probes are done.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        match self {
            Observer::Child { child, .. } => {
                use tokio::io::AsyncWriteExt;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(b"stop\n").await?;
                }
                Ok(())
            }
            Observer::Thread { stop, .. } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                Ok(())
            }
        }
    }

    /// What the separate discoverer measured, once it ended.
    pub async fn done(self) -> anyhow::Result<observe::Observed> {
        match self {
            Observer::Child { mut child, mut lines } => {
                let mut report = None;
                while let Some(line) = lines.next_line().await? {
                    if let Some(json) = line.strip_prefix("done ") {
                        report = Some(observe::Observed::from_json(&serde_json::from_str(json)?)?);
                    }
                }
                let status = child.wait().await?;
                anyhow::ensure!(status.success(), "the separate discoverer failed ({status})");
                report.context("the separate discoverer printed no report")
            }
            Observer::Thread { done, .. } => done.await.context("the observer thread ended")?,
        }
    }
}
