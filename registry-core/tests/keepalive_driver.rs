//! The keepalive/retry driver ([`Registrar`]) against a `mockall` mock of the
//! adapter trait, on paused tokio time: cadence, hooks, a lost registration
//! (reported, retried forever by default, given up on request), recovery,
//! install retries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures panic

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mockall::mock;
use registry_core::conf::AfterMaxRetry;
use registry_core::store::StoreWriter;
use registry_core::{Error, GrpcServices, Meta, Register, Registrar, Result, RetryHooks, ServiceConf, ServiceNode};
use tokio::time::Instant;

mock! {
    Writer {}
    #[async_trait]
    impl StoreWriter for Writer {
        fn kind(&self) -> &'static str;
        async fn grant(&self, ttl: Duration) -> Result<i64>;
        async fn put(&self, node: &ServiceNode, ttl: Duration) -> Result<()>;
        async fn renew(&self, node: &ServiceNode, ttl: Duration) -> Result<()>;
        async fn remove(&self, node: &ServiceNode) -> Result<()>;
    }
}

const TTL: Duration = Duration::from_secs(10);

fn down() -> Error {
    Error::unavailable("mock", "connection refused")
}

/// A mock that grants lease 7 and accepts puts; the caller sets `renew`.
fn writer() -> MockWriter {
    let mut w = MockWriter::new();
    w.expect_kind().return_const("mock");
    w.expect_grant().returning(|_| Ok(7));
    w.expect_put().returning(|_, _| Ok(()));
    w.expect_remove().returning(|_| Ok(()));
    w
}

fn registrar(w: MockWriter, max_retry: u32) -> Registrar {
    registrar_with(w, ServiceConf::default().with_max_retry(max_retry))
}

fn registrar_with(w: MockWriter, conf: ServiceConf) -> Registrar {
    Registrar::from_writer(Arc::new(w), Meta::new("prod", "driver", "v1"), conf.with_ttl(TTL)).expect("valid config")
}

fn demo_node() -> ServiceNode {
    GrpcServices::new().service("t.Driver", ["Run"]).expect("valid").into_node()
}

type Log = Arc<Mutex<Vec<String>>>;

fn hooks(log: &Log) -> RetryHooks {
    let (a, b, c, d) = (Arc::clone(log), Arc::clone(log), Arc::clone(log), Arc::clone(log));
    RetryHooks::new()
        .before_retry(move |i| a.lock().unwrap().push(format!("before:{}", i.attempt)))
        .after_recovery(move |n| b.lock().unwrap().push(format!("after:{n}")))
        .on_lost(move |i| d.lock().unwrap().push(format!("lost:{}", i.attempt)))
        .on_give_up(move |i| c.lock().unwrap().push(format!("give_up:{}", i.attempt)))
}

#[tokio::test(start_paused = true)]
async fn install_fills_identity_and_lease_from_the_store() {
    let r = registrar(writer(), 0);
    let node = r.install(demo_node()).await.expect("installed");
    assert_eq!(node.lease_id, 7);
    assert_eq!(node.meta, Meta::new("prod", "driver", "v1"));
    assert_eq!(node.kernel.language, "rust");
    assert_eq!(node.ttl, Some(10));
    assert!(node.registered_at_ms.is_some() && node.renewed_at_ms.is_some());
    assert_eq!(node.run_date.len(), "2006-01-02 15:04:05".len());
    let again = r.install(demo_node()).await.expect("updated");
    assert_eq!(again.lease_id, 7, "re-install keeps the instance");
    assert_eq!(again.registered_at_ms, node.registered_at_ms);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_runs_every_half_ttl() {
    let times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut w = writer();
    let seen = Arc::clone(&times);
    w.expect_renew().returning(move |_, _| {
        seen.lock().unwrap().push(Instant::now());
        Ok(())
    });
    let r = registrar(w, 0);
    r.install(demo_node()).await.expect("installed");
    let start = Instant::now();
    let task = tokio::spawn({
        let r = r.clone();
        async move { r.sustain_lease().await }
    });
    tokio::time::sleep(TTL * 3 + Duration::from_millis(100)).await;
    r.uninstall().await.expect("uninstalled");
    task.await.expect("joined").expect("sustain ended cleanly");
    let offsets: Vec<u64> = times.lock().unwrap().iter().map(|t| (*t - start).as_secs()).collect();
    assert_eq!(offsets, [5, 10, 15, 20, 25, 30]);
}

#[tokio::test(start_paused = true)]
async fn retry_hooks_fire_in_order_and_recovery_is_reported() {
    let log: Log = Arc::default();
    let failures = Arc::new(Mutex::new(3));
    let mut w = writer();
    let left = Arc::clone(&failures);
    w.expect_renew().returning(move |_, _| {
        let mut left = left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            Err(down())
        } else {
            Ok(())
        }
    });
    let r = registrar(w, 10);
    r.set_hooks(hooks(&log));
    r.install(demo_node()).await.expect("installed");
    let task = tokio::spawn({
        let r = r.clone();
        async move { r.sustain_lease().await }
    });
    tokio::time::sleep(TTL * 2).await;
    r.uninstall().await.expect("uninstalled");
    task.await.expect("joined").expect("clean end");
    assert_eq!(*log.lock().unwrap(), ["before:1", "before:2", "before:3", "after:3"]);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_retry_consecutive_failures_when_asked() {
    let log: Log = Arc::default();
    let mut w = writer();
    w.expect_renew().returning(|_, _| Err(down()));
    let r = registrar_with(w, ServiceConf::default().with_max_retry(3).with_after_max_retry(AfterMaxRetry::GiveUp));
    r.set_hooks(hooks(&log));
    r.install(demo_node()).await.expect("installed");
    let result = tokio::time::timeout(TTL * 10, r.sustain_lease()).await.expect("gave up in time");
    match result {
        Err(Error::GaveUp { attempts: 3, last }) => assert!(matches!(*last, Error::BackendUnavailable { .. })),
        other => panic!("expected GaveUp after 3, got {other:?}"),
    }
    assert_eq!(*log.lock().unwrap(), ["before:1", "before:2", "lost:3", "give_up:3"]);
}

/// The default keepalive never gives up: across an outage far longer than
/// `max_retry` (60) retries it reports the registration lost once — hook,
/// counter, gauge — keeps retrying at most TTL/4 apart, and registers again
/// when the backend is back (issue 26: a plain `sustain_lease` used to stop
/// for good after 60 failures, leaving a healthy instance out of discovery).
#[test]
fn default_keepalive_reports_a_lost_registration_and_retries_forever() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    let outage = Duration::from_secs(600);
    let renews = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let log: Log = Arc::default();
    let during = metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let down_from = Instant::now() + TTL;
            let down_until = down_from + outage;
            let in_outage = move || (down_from..down_until).contains(&Instant::now());
            let mut w = MockWriter::new();
            w.expect_kind().return_const("mock");
            let leases = Arc::new(Mutex::new(7));
            w.expect_grant().returning(move |_| {
                if in_outage() {
                    return Err(down());
                }
                let mut n = leases.lock().unwrap();
                *n += 1;
                Ok(*n - 1)
            });
            w.expect_put().returning(move |_, _| if in_outage() { Err(down()) } else { Ok(()) });
            let seen = Arc::clone(&renews);
            w.expect_renew().returning(move |node, _| {
                if in_outage() {
                    seen.lock().unwrap().push(Instant::now());
                    Err(down())
                } else if node.lease_id == 7 && Instant::now() >= down_until {
                    // The outage outlived the lease.
                    Err(Error::LeaseExpired { backend: "mock" })
                } else {
                    Ok(())
                }
            });
            w.expect_remove().returning(|_| Ok(()));
            let r = registrar(w, registry_core::conf::DEFAULT_MAX_RETRY);
            assert_eq!(r.conf().after_max_retry, AfterMaxRetry::ReportAndRetry);
            r.set_hooks(hooks(&log));
            r.install(demo_node()).await.expect("installed");
            let task = tokio::spawn({
                let r = r.clone();
                async move { r.sustain_lease().await }
            });
            tokio::time::sleep_until(down_until - Duration::from_secs(1)).await;
            assert!(!task.is_finished(), "the keepalive stopped during the outage");
            // A snapshot swaps every value to 0: one during the outage, one at the end.
            let during = metrics_of(&snapshotter);
            tokio::time::sleep_until(down_until + TTL).await;
            assert_eq!(r.node().map(|n| n.lease_id), Some(8), "registered again under a new lease");
            r.uninstall().await.expect("uninstalled");
            task.await.expect("joined").expect("clean end");
            during
        })
    });
    let after = metrics_of(&snapshotter);
    // Retries during the outage are at most TTL/4 (+ jitter) apart: far more than 60.
    let renews = renews.lock().unwrap();
    let gaps_ok = renews.windows(2).all(|w| w[1] - w[0] <= TTL / 4 + TTL / 20);
    assert!(gaps_ok, "a retry waited longer than TTL/4");
    let failures = log.lock().unwrap().iter().filter(|l| l.starts_with("before:")).count();
    assert!(failures > 200, "only {failures} retries in a {outage:?} outage");
    let log = log.lock().unwrap();
    let lost: Vec<&String> = log.iter().filter(|l| l.starts_with("lost:")).collect();
    assert_eq!(lost, ["lost:60"], "reported lost exactly once, at max_retry");
    assert!(log.last().is_some_and(|l| l == &format!("after:{failures}")), "recovery reported: {:?}", log.last());
    assert!(!log.iter().any(|l| l.starts_with("give_up")), "gave up by default");
    use registry_core::telemetry::{GIVE_UPS, REGISTRATION_LOST, REGISTRATIONS_LOST};
    assert_eq!(during.get(REGISTRATION_LOST), Some(&DebugValue::Gauge(1.0.into())), "lost gauge set in the outage");
    assert_eq!(during.get(REGISTRATIONS_LOST), Some(&DebugValue::Counter(1)), "one loss counted");
    assert_eq!(after.get(REGISTRATION_LOST), Some(&DebugValue::Gauge(0.0.into())), "cleared on recovery");
    assert_eq!(after.get(REGISTRATIONS_LOST), Some(&DebugValue::Counter(0)), "no second loss");
    assert!(!during.contains_key(GIVE_UPS) && !after.contains_key(GIVE_UPS), "no give-up counted");

    fn metrics_of(s: &metrics_util::debugging::Snapshotter) -> std::collections::HashMap<String, DebugValue> {
        s.snapshot().into_vec().into_iter().map(|(key, _, _, value)| (key.key().name().to_owned(), value)).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn outage_longer_than_ttl_recovers_within_one_ttl_with_hooks() {
    let down_from = Instant::now() + Duration::from_secs(6);
    let down_until = down_from + Duration::from_secs(33);
    let in_outage = move || {
        let now = Instant::now();
        now >= down_from && now < down_until
    };
    let back: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut w = MockWriter::new();
    w.expect_kind().return_const("mock");
    let next = Arc::new(Mutex::new(7));
    let n = Arc::clone(&next);
    w.expect_grant().returning(move |_| {
        if in_outage() {
            return Err(down());
        }
        let mut n = n.lock().unwrap();
        *n += 1;
        Ok(*n - 1)
    });
    let seen = Arc::clone(&back);
    w.expect_put().returning(move |_, _| {
        if in_outage() {
            return Err(down());
        }
        if Instant::now() >= down_until {
            seen.lock().unwrap().get_or_insert_with(Instant::now);
        }
        Ok(())
    });
    w.expect_renew().returning(move |node, _| {
        if in_outage() {
            Err(down())
        } else if Instant::now() >= down_until && node.lease_id == 7 {
            Err(Error::LeaseExpired { backend: "mock" })
        } else {
            Ok(())
        }
    });
    w.expect_remove().returning(|_| Ok(()));
    let r = registrar(w, 0);
    let log: Log = Arc::default();
    r.set_hooks(hooks(&log));
    assert_eq!(r.install(demo_node()).await.expect("installed").lease_id, 7);
    let task = tokio::spawn({
        let r = r.clone();
        async move { r.sustain_lease().await }
    });
    tokio::time::sleep_until(down_until + TTL * 2).await;
    let back_at = back.lock().unwrap().expect("registration rewritten after the outage");
    assert!(back_at - down_until <= TTL, "came back {:?} after recovery", back_at - down_until);
    assert_eq!(r.node().expect("installed").lease_id, 8, "a new lease replaced the expired one");
    let log = log.lock().unwrap().clone();
    assert!(log.len() >= 2 && log.iter().all(|l| l.starts_with("before:") || l.starts_with("after:")), "{log:?}");
    assert!(log.last().is_some_and(|l| l.starts_with("after:")), "recovery hook fired last: {log:?}");
    r.uninstall().await.expect("uninstalled");
    task.await.expect("joined").expect("clean end");
}

#[tokio::test(start_paused = true)]
async fn uninstall_stops_heartbeats_and_removes_once() {
    let mut w = MockWriter::new();
    w.expect_kind().return_const("mock");
    w.expect_grant().returning(|_| Ok(7));
    w.expect_put().returning(|_, _| Ok(()));
    w.expect_renew().returning(|_, _| Ok(()));
    w.expect_remove().times(1).returning(|_| Ok(()));
    let r = registrar(w, 0);
    r.uninstall().await.expect("harmless before install");
    r.install(demo_node()).await.expect("installed");
    let task = tokio::spawn({
        let r = r.clone();
        async move { r.sustain_lease().await }
    });
    r.uninstall().await.expect("uninstalled");
    r.uninstall().await.expect("idempotent");
    tokio::time::timeout(Duration::from_millis(10), task)
        .await
        .expect("sustain ended promptly")
        .expect("joined")
        .expect("ok");
}

#[tokio::test(start_paused = true)]
async fn install_failure_is_returned_typed_without_retrying() {
    let mut w = MockWriter::new();
    w.expect_kind().return_const("mock");
    w.expect_grant().times(1).returning(|_| Err(Error::PermissionDenied { backend: "mock", message: "no".into() }));
    let r = registrar(w, 0);
    let start = Instant::now();
    let err = r.install(demo_node()).await.expect_err("denied");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert_eq!(start.elapsed(), Duration::ZERO, "a permanent error is not retried");
    assert_eq!(r.node(), None);
}

/// `install` rides out a backend that fails a few times (restarting,
/// failing over): it retries transient failures under its one grant until
/// one write lands (issue 26: it was a single attempt).
#[tokio::test(start_paused = true)]
async fn install_retries_transient_failures_within_its_deadline() {
    let mut w = MockWriter::new();
    w.expect_kind().return_const("mock");
    w.expect_grant().times(1).returning(|_| Ok(7));
    let puts = Arc::new(Mutex::new(Vec::<i64>::new()));
    w.expect_put().returning({
        let puts = Arc::clone(&puts);
        move |node, _| {
            let mut puts = puts.lock().unwrap();
            puts.push(node.lease_id);
            if puts.len() <= 3 { Err(down()) } else { Ok(()) }
        }
    });
    let r = registrar(w, 0);
    let start = Instant::now();
    let node = r.install(demo_node()).await.expect("installed on the fourth write");
    assert_eq!(node.lease_id, 7);
    assert_eq!(*puts.lock().unwrap(), [7, 7, 7, 7]);
    assert!(start.elapsed() < TTL, "retried promptly: {:?}", start.elapsed());
    assert_eq!(r.node().map(|n| n.lease_id), Some(7));
}

/// A backend that stays down fails the install with its own typed error
/// once the deadline is near, not later.
#[tokio::test(start_paused = true)]
async fn install_returns_the_last_transient_error_at_its_deadline() {
    let mut w = writer_without_put();
    w.expect_put().returning(|_, _| Err(down()));
    let deadline = Duration::from_secs(20);
    let r = registrar_with(w, ServiceConf::default().with_install_deadline(deadline));
    let start = Instant::now();
    let err = r.install(demo_node()).await.expect_err("down throughout");
    assert!(matches!(err, Error::BackendUnavailable { .. }), "{err:?}");
    assert!(start.elapsed() <= deadline, "returned after {:?}", start.elapsed());
    assert!(start.elapsed() >= deadline - TTL / 4 - TTL / 20, "gave up early, after {:?}", start.elapsed());
    assert_eq!(r.node(), None);
}

fn writer_without_put() -> MockWriter {
    let mut w = MockWriter::new();
    w.expect_kind().return_const("mock");
    w.expect_grant().returning(|_| Ok(7));
    w.expect_remove().returning(|_| Ok(()));
    w
}

/// An install whose writes fail after its grant (a backend failing over)
/// until its deadline, and is called again, grants again: no write ever
/// carries the caller's placeholder id 0 (seen as a Consul probe registering
/// `…-probe-0` during a leader election, issue 13).
#[tokio::test(start_paused = true)]
async fn an_install_retried_after_a_failed_write_grants_again() {
    let mut w = MockWriter::new();
    w.expect_kind().return_const("mock");
    let grants = Arc::new(Mutex::new(0_i64));
    w.expect_grant().returning({
        let grants = Arc::clone(&grants);
        move |_| {
            let mut n = grants.lock().unwrap();
            *n += 1;
            Ok(100 + *n)
        }
    });
    let back_at = Instant::now() + Duration::from_secs(6);
    let puts = Arc::new(Mutex::new(Vec::<i64>::new()));
    w.expect_put().returning({
        let puts = Arc::clone(&puts);
        move |node, _| {
            puts.lock().unwrap().push(node.lease_id);
            if Instant::now() < back_at { Err(down()) } else { Ok(()) }
        }
    });
    let r = registrar_with(w, ServiceConf::default().with_install_deadline(Duration::from_secs(5)));
    r.install(demo_node()).await.expect_err("every write before the deadline fails");
    tokio::time::sleep_until(back_at).await;
    let installed = r.install(demo_node()).await.expect("the second install succeeds");
    let puts = puts.lock().unwrap();
    assert!(puts.len() > 2, "the first install retried: {puts:?}");
    let (last, first) = puts.split_last().unwrap();
    assert!(first.iter().all(|id| *id == 101), "the first install kept its grant: {puts:?}");
    assert_eq!(*last, 102, "the second install granted again");
    assert_eq!(installed.lease_id, 102);
    assert_eq!(r.node().map(|n| n.lease_id), Some(102));
}

/// A writer whose `renew` hangs (never answers, never fails) while
/// `hang_renewals` is above zero, one call at a time: a silent member or a
/// cut connection. Everything else goes to the mock.
struct HangingRenewals {
    mock: MockWriter,
    hang_renewals: Mutex<u32>,
}

#[async_trait]
impl StoreWriter for HangingRenewals {
    fn kind(&self) -> &'static str {
        self.mock.kind()
    }
    async fn grant(&self, ttl: Duration) -> Result<i64> {
        self.mock.grant(ttl).await
    }
    async fn put(&self, node: &ServiceNode, ttl: Duration) -> Result<()> {
        self.mock.put(node, ttl).await
    }
    async fn renew(&self, node: &ServiceNode, ttl: Duration) -> Result<()> {
        let hang = {
            let mut left = self.hang_renewals.lock().unwrap();
            let hang = *left > 0;
            *left = left.saturating_sub(1);
            hang
        };
        if hang {
            std::future::pending::<()>().await;
        }
        self.mock.renew(node, ttl).await
    }
    async fn remove(&self, node: &ServiceNode) -> Result<()> {
        self.mock.remove(node).await
    }
}

/// Renewals that hang are abandoned and tried again before the lease runs
/// out: the lease never lapses. Issue 22: the driver allowed one renewal
/// TTL/2, sent TTL/2 after the last, so one hung round trip outlived the
/// lease (etcd worked around it with 8 slices in its adapter).
#[tokio::test(start_paused = true)]
async fn hung_renewals_are_retried_before_the_lease_runs_out() {
    let renewed = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let mut mock = MockWriter::new();
    mock.expect_kind().return_const("mock");
    mock.expect_grant().times(1).returning(|_| Ok(7));
    mock.expect_put().times(1).returning(|_, _| Ok(()));
    mock.expect_renew().returning({
        let renewed = Arc::clone(&renewed);
        move |_, _| {
            renewed.lock().unwrap().push(Instant::now());
            Ok(())
        }
    });
    mock.expect_remove().returning(|_| Ok(()));
    let writer = Arc::new(HangingRenewals { mock, hang_renewals: Mutex::new(3) });
    let conf = ServiceConf::default().with_ttl(TTL);
    let r = Registrar::from_writer(writer, Meta::new("prod", "driver", "v1"), conf).expect("valid");
    let log: Log = Arc::default();
    r.set_hooks(hooks(&log));
    let installed_at = Instant::now();
    r.install(demo_node()).await.expect("installed");
    let task = tokio::spawn({
        let r = r.clone();
        async move { r.sustain_lease().await }
    });
    tokio::time::sleep(TTL * 3).await;
    r.uninstall().await.expect("uninstalled");
    task.await.expect("joined").expect("clean end");
    let renewed = renewed.lock().unwrap();
    let first = *renewed.first().expect("a renewal answered");
    assert!(first - installed_at < TTL, "first renewal landed {:?} after the grant", first - installed_at);
    assert!(renewed.windows(2).all(|w| w[1] - w[0] < TTL), "a gap of a TTL between renewals: {renewed:?}");
    assert!(log.lock().unwrap().is_empty(), "a hung attempt is not a keepalive failure: {:?}", log.lock().unwrap());
}

/// A renewal that hangs on every attempt fails as a timeout no later than
/// when the lease runs out, and the keepalive goes on retrying.
#[tokio::test(start_paused = true)]
async fn a_renewal_hanging_throughout_times_out_by_the_end_of_the_lease() {
    let mut mock = MockWriter::new();
    mock.expect_kind().return_const("mock");
    mock.expect_grant().returning(|_| Ok(7));
    mock.expect_put().returning(|_, _| Ok(()));
    mock.expect_remove().returning(|_| Ok(()));
    let writer = Arc::new(HangingRenewals { mock, hang_renewals: Mutex::new(u32::MAX) });
    let conf = ServiceConf::default().with_ttl(TTL);
    let r = Registrar::from_writer(writer, Meta::new("prod", "driver", "v1"), conf).expect("valid");
    let failed_at = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    r.set_hooks(RetryHooks::new().before_retry({
        let failed_at = Arc::clone(&failed_at);
        move |i| failed_at.lock().unwrap().push((Instant::now(), i.error.to_string()))
    }));
    let installed_at = Instant::now();
    r.install(demo_node()).await.expect("installed");
    let task = tokio::spawn({
        let r = r.clone();
        async move { r.sustain_lease().await }
    });
    tokio::time::sleep(TTL * 2).await;
    assert!(!task.is_finished(), "the keepalive stopped");
    r.uninstall().await.expect("uninstalled");
    task.await.expect("joined").expect("clean end");
    let failed_at = failed_at.lock().unwrap();
    let (first, error) = failed_at.first().expect("the hung renewal failed");
    assert!(*first - installed_at <= TTL, "failed {:?} after the grant, past the lease", *first - installed_at);
    assert!(error.contains("renew timed out"), "{error}");
}

/// A writer whose first `put` fails (the backend refuses the connection)
/// and whose later ones hang until the caller's deadline cuts them.
struct RefusedThenHanging {
    puts: Mutex<u32>,
}

#[async_trait]
impl StoreWriter for RefusedThenHanging {
    fn kind(&self) -> &'static str {
        "mock"
    }
    async fn grant(&self, _ttl: Duration) -> Result<i64> {
        Ok(7)
    }
    async fn put(&self, _node: &ServiceNode, _ttl: Duration) -> Result<()> {
        let first = {
            let mut puts = self.puts.lock().unwrap();
            *puts += 1;
            *puts == 1
        };
        if first {
            return Err(down());
        }
        std::future::pending::<()>().await;
        Ok(())
    }
    async fn renew(&self, _node: &ServiceNode, _ttl: Duration) -> Result<()> {
        Ok(())
    }
    async fn remove(&self, _node: &ServiceNode) -> Result<()> {
        Ok(())
    }
}

/// When the install deadline cuts the last attempt short, the install fails
/// with why the attempts failed (the backend refused), not with the cut
/// (a TLS handshake slower than the time left made a test see `Timeout`).
#[tokio::test(start_paused = true)]
async fn an_install_cut_by_its_deadline_reports_the_failure_before() {
    let writer = Arc::new(RefusedThenHanging { puts: Mutex::new(0) });
    let deadline = Duration::from_secs(20);
    let conf = ServiceConf::default().with_ttl(TTL).with_install_deadline(deadline);
    let r = Registrar::from_writer(writer.clone(), Meta::new("prod", "driver", "v1"), conf).expect("valid config");
    let start = Instant::now();
    let err = r.install(demo_node()).await.expect_err("the second write hangs past the deadline");
    assert!(matches!(err, Error::BackendUnavailable { .. }), "{err:?}");
    assert!(*writer.puts.lock().unwrap() >= 2, "a refused write, then hung ones until the deadline");
    assert!(start.elapsed() <= deadline + Duration::from_millis(1), "returned after {:?}", start.elapsed());
}
