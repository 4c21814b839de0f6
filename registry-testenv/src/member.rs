//! What makes a server a cluster member: its own loopback address, held in
//! a [`ClusterSlot`], and its own group id ([`member_gid`]), so a
//! [`Partition`](super::partition::Partition) can match every packet its
//! sockets send. The member itself is a [`Process`](crate::process::Process)
//! started with [`Process::member`](crate::process::Process::member).
//!
//! When this process runs as root, a member is started through `setpriv
//! --regid GID --clear-groups --pdeathsig SIGKILL`: the kernel kills it when
//! the thread that started it ends — a test binary that is itself killed
//! leaves no server behind holding the addresses of the next run. Without
//! root, members run as plain children (no group of their own: partitions
//! of members are then unavailable).
//!
//! Because the signal follows the starting *thread*, a cluster is started
//! from a thread that lives as long as it: a test's own thread or a runtime
//! worker, never `tokio::task::spawn_blocking`, whose threads end after 10 s
//! idle and would take the cluster with them. A cluster whose members all
//! vanish at once with nothing in their logs was killed this way, or dropped.
//!
//! [`ClusterSlot`] hands out the loopback address blocks: a lock file per
//! block under the system temp dir, held for the cluster's lifetime, so
//! concurrent test binaries (and concurrent tests in one binary) never start
//! two servers on one address.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::{Unavailable, is_root};

/// Group id of the member listening on `address`: 64000 + the last octet.
pub fn member_gid(address: Ipv4Addr) -> u32 {
    64_000 + u32::from(address.octets()[3])
}

/// True when this process may start members under their own group id (root).
pub fn can_isolate() -> bool {
    is_root() && setpriv().is_some()
}

/// The `setpriv` that starts members under their group id.
pub(crate) fn setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"].iter().map(PathBuf::from).find(|p| p.is_file())
}

/// A block of loopback addresses held by one cluster.
#[derive(Debug)]
pub struct ClusterSlot {
    /// The addresses of the block, in order.
    pub addresses: Vec<Ipv4Addr>,
    /// Held open (and locked) for the cluster's lifetime.
    _lock: File,
}

impl ClusterSlot {
    /// The first free block of `size` addresses among `slots` blocks
    /// starting at `127.0.0.<first>`: block `s` is `first + s*size ..`.
    pub fn acquire(kind: &str, first: u8, size: u8, slots: u8) -> Result<Self, Unavailable> {
        let dir = std::env::temp_dir().join("registry-cluster-slots");
        let fail = |reason: String| Unavailable::StartFailed { server: format!("{kind} cluster"), reason };
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        for slot in 0..slots {
            let base = u16::from(first) + u16::from(slot) * u16::from(size);
            if base + u16::from(size) > 255 {
                break;
            }
            let path = dir.join(format!("{kind}-{base}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            if file.try_lock().is_ok() {
                let addresses = (0..u16::from(size)).map(|i| Ipv4Addr::new(127, 0, 0, (base + i) as u8)).collect();
                return Ok(Self { addresses, _lock: file });
            }
        }
        Err(fail(format!("all {slots} address blocks of {size} from 127.0.0.{first} are in use")))
    }
}
