//! The partition guard itself ([`registry_testenv::partition`]), on real
//! nftables: a cut drops packets silently (a connect times out, it is not
//! refused), healing restores the path, and the table goes away when the
//! guard is dropped — also when the test panics — and after the bound when
//! the guard is never dropped. Uses `127.0.0.91-93`, outside the clusters'
//! address blocks.
// Test code: the panicking thread panics on purpose.
#![allow(clippy::panic, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use registry_testenv::faults::{self, FaultTest, Need};
use registry_testenv::partition::{Cut, Partition, leftover_tables};
use tokio::net::{TcpListener, TcpStream};

fn main() -> ExitCode {
    faults::run(vec![
        FaultTest::new("cut_drops_silently_and_heals", &[Need::Partitions], cut_drops_silently_and_heals),
        FaultTest::new("guard_heals_when_the_test_panics", &[Need::Partitions], guard_heals_when_the_test_panics),
        FaultTest::new("bound_heals_a_forgotten_guard", &[Need::Partitions], bound_heals_a_forgotten_guard),
    ])
}

/// A listener on `address` that accepts and holds connections.
async fn listen(address: Ipv4Addr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((address, 0)).await?;
    let at = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(at)
}

/// `Ok(true)` connected, `Ok(false)` timed out (silently dropped), `Err` refused or other.
async fn reachable(at: SocketAddr) -> anyhow::Result<bool> {
    match tokio::time::timeout(Duration::from_millis(700), TcpStream::connect(at)).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Ok(false),
    }
}

async fn cut_drops_silently_and_heals() -> anyhow::Result<()> {
    let address = Ipv4Addr::new(127, 0, 0, 91);
    let at = listen(address).await?;
    anyhow::ensure!(reachable(at).await?, "not reachable before the cut");
    let partition = Partition::start(Cut::Address(address), Duration::from_secs(30))?;
    let table = partition.table().to_owned();
    anyhow::ensure!(leftover_tables().contains(&table), "table {table} not created");
    anyhow::ensure!(!reachable(at).await?, "reachable during the cut (or refused instead of dropped)");
    let lasted = partition.heal()?;
    anyhow::ensure!(lasted >= Duration::from_millis(700), "lasted {lasted:?}");
    anyhow::ensure!(!leftover_tables().contains(&table), "table {table} left after heal");
    anyhow::ensure!(reachable(at).await?, "not reachable after the heal");
    Ok(())
}

async fn guard_heals_when_the_test_panics() -> anyhow::Result<()> {
    let address = Ipv4Addr::new(127, 0, 0, 92);
    let at = listen(address).await?;
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let partition = Partition::start(Cut::Address(address), Duration::from_secs(30)).expect("partition");
        tx.send(partition.table().to_owned()).expect("sent");
        panic!("a failing test holding a partition");
    })
    .join()
    .is_err();
    anyhow::ensure!(panicked, "the thread did not panic");
    let table = rx.recv()?;
    anyhow::ensure!(!leftover_tables().contains(&table), "table {table} left after the panic");
    anyhow::ensure!(reachable(at).await?, "not reachable after the panic");
    Ok(())
}

async fn bound_heals_a_forgotten_guard() -> anyhow::Result<()> {
    let address = Ipv4Addr::new(127, 0, 0, 93);
    let at = listen(address).await?;
    let partition = Partition::start(Cut::Address(address), Duration::from_secs(2))?;
    let table = partition.table().to_owned();
    // As if this process had been killed: the guard never runs.
    std::mem::forget(partition);
    anyhow::ensure!(!reachable(at).await?, "reachable during the cut");
    let start = Instant::now();
    while leftover_tables().contains(&table) {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(5), "table {table} outlived its 2 s bound");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(reachable(at).await?, "not reachable after the bound");
    Ok(())
}
