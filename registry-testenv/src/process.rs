//! A server child process: started with its log in a file, killed on drop,
//! restartable with the same arguments (for outage scenarios).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Unavailable;

/// A running server process.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `program args…`, appending its output to `log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        log: PathBuf,
    ) -> Result<Self, Unavailable> {
        let mut process = Self { name: name.to_owned(), program: program.to_owned(), args, envs, log, child: None };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> Result<(), Unavailable> {
        let fail = |reason: String| Unavailable::StartFailed { server: self.name.clone(), reason };
        let out = File::options().create(true).append(true).open(&self.log).map_err(|e| fail(e.to_string()))?;
        let err = out.try_clone().map_err(|e| fail(e.to_string()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| fail(format!("spawn {}: {e}", self.program.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same arguments (same ports, same data dir).
    pub fn restart(&mut self) -> Result<(), Unavailable> {
        self.stop();
        self.spawn()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Polls `ready` every 100 ms until it returns true, the process exits,
    /// or `timeout` passes.
    pub fn wait_until(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), Unavailable> {
        let start = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            if !self.is_running() {
                return Err(Unavailable::StartFailed {
                    server: self.name.clone(),
                    reason: format!("exited early; log tail:\n{}", self.log_tail(30)),
                });
            }
            if start.elapsed() > timeout {
                return Err(Unavailable::StartFailed {
                    server: self.name.clone(),
                    reason: format!("not ready after {timeout:?}; log tail:\n{}", self.log_tail(30)),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
