//! A randomized fault test of the replicated store: three managers, six clients (two through each
//! manager, calling the gRPC API directly from inside that manager's network namespace) doing
//! reads, blind writes and compare-and-sets on a few registers (a label of a service each) and
//! creating and looking up configs, while a seeded schedule SIGKILLs or SIGTERMs and restarts
//! managers, SIGSTOPs and resumes them, and cuts their links, one at a time (plus once two at a
//! time, to lose the quorum briefly). Everything is then healed, every manager is read, and the history is
//! checked:
//! - every acknowledged config is listed by every manager, nothing else is, and all agree;
//! - the whole history is linearizable (Wing–Gong–Lowe search, `flotilla_tests::linearizability`),
//!   each register and each config name on its own; a write that failed in a way that leaves
//!   its fate open (timeout, leadership lost, connection reset) may have taken effect any time
//!   after it was sent, or never;
//! - no call hung: every one was answered within the controller's own request timeout;
//! - no write was acknowledged while two of the three managers were dead.
//!
//! The seed is printed; `FLOTILLA_CHAOS_SEED=<n>` replays that schedule (the interleaving of the
//! clients with it still depends on timing). The full history and fault timeline are written as
//! JSON under the target dir's tmp (the path is printed) to analyse a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_pki::{never_sent, MtlsConnector};
use flotilla_proto::control::v1::{self as pb, control_client::ControlClient, service_spec::Mode};
use flotilla_tests::cluster::ClusterLab;
use flotilla_tests::linearizability::{
    check, Exists, ExistsInput, ExistsOutput, Model, Operation, Outcome, Register, RegisterInput,
    RegisterOutput, Violation,
};
use serde_json::json;
use tonic::transport::Channel;

/// Hosts running a manager.
const MANAGERS: [u8; 3] = [1, 2, 3];
/// Registers (services `reg0`..).
const KEYS: usize = 4;
const CLIENTS_PER_MANAGER: usize = 2;
/// How long faults are injected.
const CHAOS: Duration = Duration::from_secs(45);
/// The client's own limit on a call: more than the controller's request timeout (10 s), so a
/// call that reaches it was not answered when the controller promises to answer.
const CALL_DEADLINE: Duration = Duration::from_secs(15);

/// SplitMix64: a seeded generator for the schedule and the clients' choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// What one call was about.
#[derive(Debug, Clone)]
enum Call {
    Reg(usize, RegisterInput, Outcome<RegisterOutput>),
    Name(String, ExistsInput, Outcome<ExistsOutput>),
}

/// One call of the history.
#[derive(Debug, Clone)]
struct Record {
    client: usize,
    /// The manager's host the call went to.
    host: u8,
    invoke: u64,
    complete: u64,
    call: Call,
    /// The version the service had, for register reads.
    version: u64,
    /// The error, when it failed.
    error: String,
    /// The client gave up waiting (CALL_DEADLINE).
    hung: bool,
}

impl Record {
    fn to_json(&self) -> serde_json::Value {
        let (key, input, outcome) = match &self.call {
            Call::Reg(k, i, o) => (format!("reg{k}"), format!("{i:?}"), format!("{o:?}")),
            Call::Name(n, i, o) => (format!("config {n}"), format!("{i:?}"), format!("{o:?}")),
        };
        json!({
            "client": self.client, "host": self.host, "key": key, "input": input,
            "outcome": outcome, "invoke_ns": self.invoke, "complete_ns": self.complete,
            "version": self.version, "error": self.error, "hung": self.hung,
        })
    }

    fn line(&self) -> String {
        let (key, input, outcome) = match &self.call {
            Call::Reg(k, i, o) => (format!("reg{k}"), format!("{i:?}"), format!("{o:?}")),
            Call::Name(n, i, o) => (n.clone(), format!("{i:?}"), format!("{o:?}")),
        };
        format!(
            "[{:>9.3} .. {:>9.3} s] client {} via host {} {key} {input} -> {outcome}{}",
            self.invoke as f64 / 1e9,
            self.complete as f64 / 1e9,
            self.client,
            self.host,
            if self.error.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.error)
            }
        )
    }
}

/// Runs `f` on a new thread inside the network namespace of lab host `ns` (lab addresses exist
/// only there), with a runtime of its own.
fn in_netns<T, F, Fut>(ns: &str, f: F) -> std::thread::JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        // This thread only: the test process stays in its own namespace.
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {path}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("build a runtime")?;
        rt.block_on(f())
    })
}

fn join<T>(h: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
}

fn client(addr: &str, tls: &MtlsConnector) -> ControlClient<Channel> {
    ControlClient::new(tls.channel(addr))
}

/// The spec of register `k` holding `v` (a service of no replicas: nothing to schedule).
fn spec(k: usize, v: u64) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: format!("reg{k}"),
        labels: [("v".to_string(), v.to_string())].into(),
        task: Some(pb::TaskSpec {
            container: Some(pb::ContainerSpec {
                image: "busybox:latest".into(),
                args: vec!["sleep".into(), "1000".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        mode: Some(Mode::Replicated(pb::ReplicatedService { replicas: 0 })),
        ..Default::default()
    }
}

/// How a failed write ended: `Failed` only when the error proves nothing was proposed (the
/// connection was refused, no leader was known so nothing was sent to raft, or the read barrier
/// before the proposal failed); any other error leaves it open.
fn failed_write<O>(status: &tonic::Status) -> Outcome<O> {
    let m = status.message();
    if never_sent(status)
        || m.starts_with("no raft leader: the cluster has lost its quorum (")
        || m.starts_with("raft read barrier did not complete")
    {
        Outcome::Failed
    } else {
        Outcome::Unknown
    }
}

fn error_text(s: &tonic::Status) -> String {
    use std::error::Error;
    let mut t = format!("{:?}: {}", s.code(), s.message());
    let mut source = s.source();
    while let Some(e) = source {
        t.push_str(&format!(": {e}"));
        source = e.source();
    }
    t
}

/// Shared between the clients.
struct Shared {
    start: Instant,
    stop: AtomicBool,
    /// Config names some client started creating.
    names: Mutex<Vec<String>>,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// One client: random operations through the manager at `addr` until told to stop.
async fn run_client(
    id: usize,
    host: u8,
    addr: String,
    tls: MtlsConnector,
    shared: Arc<Shared>,
    seed: u64,
) -> Result<Vec<Record>> {
    let mut rng = Rng(seed);
    let mut api = client(&addr, &tls);
    let mut out: Vec<Record> = Vec::new();
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let k = rng.below(KEYS as u64) as usize;
        let dice = rng.below(100);
        let mut failed = false;
        if dice < 55 {
            // A read, and for some a compare-and-set from what it read.
            let invoke = shared.now();
            let r = tokio::time::timeout(
                CALL_DEADLINE,
                api.get_service(pb::GetServiceRequest {
                    service: format!("reg{k}"),
                }),
            )
            .await;
            let complete = shared.now();
            let mut rec = Record {
                client: id,
                host,
                invoke,
                complete,
                call: Call::Reg(k, RegisterInput::Read, Outcome::Failed),
                version: 0,
                error: String::new(),
                hung: false,
            };
            let mut read = None;
            match r {
                Err(_) => {
                    rec.hung = true;
                    rec.error = "no answer".into();
                }
                Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                    rec.call =
                        Call::Reg(k, RegisterInput::Read, Outcome::Ok(RegisterOutput::Missing));
                }
                Ok(Err(s)) => rec.error = error_text(&s),
                Ok(Ok(svc)) => {
                    let svc = svc.into_inner();
                    let v = svc
                        .spec
                        .as_ref()
                        .and_then(|s| s.labels.get("v"))
                        .and_then(|v| v.parse::<u64>().ok())
                        .with_context(|| format!("reg{k} has no numeric label v: {svc:?}"))?;
                    let version = svc.meta.map_or(0, |m| m.version);
                    rec.version = version;
                    rec.call = Call::Reg(
                        k,
                        RegisterInput::Read,
                        Outcome::Ok(RegisterOutput::Value(v)),
                    );
                    read = Some((v, version));
                }
            }
            failed |= !rec.error.is_empty();
            out.push(rec);
            if let (Some((v, version)), true) = (read, dice < 20) {
                seq += 1;
                let new = (id as u64 + 1) * 1_000_000 + seq;
                out.push(update(&mut api, &shared, id, host, k, version, new, Some(v)).await);
            }
        } else if dice < 80 {
            seq += 1;
            let new = (id as u64 + 1) * 1_000_000 + seq;
            out.push(update(&mut api, &shared, id, host, k, 0, new, None).await);
        } else if dice < 90 {
            seq += 1;
            let name = format!("c{id}-{seq}");
            if let Ok(mut n) = shared.names.lock() {
                n.push(name.clone());
            }
            let invoke = shared.now();
            let r = tokio::time::timeout(
                CALL_DEADLINE,
                api.create_config(pb::CreateConfigRequest {
                    spec: Some(pb::ConfigSpec {
                        name: name.clone(),
                        data: b"chaos".to_vec(),
                        ..Default::default()
                    }),
                }),
            )
            .await;
            let complete = shared.now();
            let (outcome, error, hung) = match r {
                Err(_) => (Outcome::Unknown, "no answer".to_string(), true),
                Ok(Ok(_)) => (Outcome::Ok(ExistsOutput::Created), String::new(), false),
                Ok(Err(s)) if s.code() == tonic::Code::AlreadyExists => (
                    Outcome::Ok(ExistsOutput::AlreadyExists),
                    error_text(&s),
                    false,
                ),
                Ok(Err(s)) => (failed_write(&s), error_text(&s), false),
            };
            out.push(Record {
                client: id,
                host,
                invoke,
                complete,
                call: Call::Name(name, ExistsInput::Create, outcome),
                version: 0,
                error,
                hung,
            });
        } else {
            // Look up a config some client created recently (maybe still being created).
            let name = shared.names.lock().ok().and_then(|n| {
                let recent = &n[n.len().saturating_sub(12)..];
                (!recent.is_empty())
                    .then(|| recent[rng.below(recent.len() as u64) as usize].clone())
            });
            let Some(name) = name else { continue };
            let invoke = shared.now();
            let r = tokio::time::timeout(
                CALL_DEADLINE,
                api.list_configs(pb::ListByNameRequest {
                    names: vec![name.clone()],
                }),
            )
            .await;
            let complete = shared.now();
            let (outcome, error, hung) = match r {
                Err(_) => (Outcome::Failed, "no answer".to_string(), true),
                Ok(Ok(l)) => {
                    let found = l
                        .into_inner()
                        .configs
                        .iter()
                        .any(|c| c.spec.as_ref().is_some_and(|s| s.name == name));
                    let o = if found {
                        ExistsOutput::Found
                    } else {
                        ExistsOutput::NotFound
                    };
                    (Outcome::Ok(o), String::new(), false)
                }
                Ok(Err(s)) => (Outcome::Failed, error_text(&s), false),
            };
            out.push(Record {
                client: id,
                host,
                invoke,
                complete,
                call: Call::Name(name, ExistsInput::Lookup, outcome),
                version: 0,
                error,
                hung,
            });
        }
        let last = out.last();
        failed |= last.is_some_and(|r| !r.error.is_empty());
        if last.is_some_and(|r| r.hung) {
            // A fresh connection rather than one that may be stuck.
            api = client(&addr, &tls);
        }
        let pause = if failed {
            Duration::from_millis(100)
        } else {
            rng.millis(0, 15)
        };
        tokio::time::sleep(pause).await;
    }
    Ok(out)
}

/// `UpdateService` of register `k` to `new`: a blind write (`version` 0) or a compare-and-set
/// from the version read along with `expected`.
#[allow(clippy::too_many_arguments)]
async fn update(
    api: &mut ControlClient<Channel>,
    shared: &Shared,
    id: usize,
    host: u8,
    k: usize,
    version: u64,
    new: u64,
    expected: Option<u64>,
) -> Record {
    let input = match expected {
        Some(expected) => RegisterInput::Cas { expected, new },
        None => RegisterInput::Write(new),
    };
    let invoke = shared.now();
    let r = tokio::time::timeout(
        CALL_DEADLINE,
        api.update_service(pb::UpdateServiceRequest {
            service: format!("reg{k}"),
            version,
            spec: Some(spec(k, new)),
            rollback: false,
        }),
    )
    .await;
    let complete = shared.now();
    let (outcome, error, hung) = match r {
        Err(_) => (Outcome::Unknown, "no answer".to_string(), true),
        Ok(Ok(_)) => (Outcome::Ok(RegisterOutput::Written), String::new(), false),
        // A version conflict, found before proposing or when applying: nothing changed. For a
        // compare-and-set it says the register held another write at some point of the call;
        // a blind write only meets one when another write slipped in between the version the
        // handler read and its proposal, which says nothing about the register.
        Ok(Err(s))
            if s.code() == tonic::Code::Aborted
                && s.message().contains("changed since it was read") =>
        {
            let o = if expected.is_some() {
                Outcome::Ok(RegisterOutput::Conflict)
            } else {
                Outcome::Failed
            };
            (o, error_text(&s), false)
        }
        Ok(Err(s)) => (failed_write(&s), error_text(&s), false),
    };
    Record {
        client: id,
        host,
        invoke,
        complete,
        call: Call::Reg(k, input, outcome),
        version: 0,
        error,
        hung,
    }
}

/// The host whose manager leads, asked of the managers on `up` (None if none answers).
fn leader(lab: &ClusterLab, tls: &MtlsConnector, up: &[u8]) -> Option<u8> {
    for &h in up {
        let (addr, tls) = (lab.manager_addr(h), tls.clone());
        let r = join(in_netns(&lab.netns(h), move || async move {
            let mut api = client(&addr, &tls);
            let c = tokio::time::timeout(
                Duration::from_secs(2),
                api.get_cluster(pb::GetClusterRequest {}),
            )
            .await??
            .into_inner();
            Ok(c.managers.iter().find(|m| m.leader).map(|m| m.addr.clone()))
        }));
        if let Ok(Some(addr)) = r {
            return MANAGERS
                .iter()
                .copied()
                .find(|m| lab.manager_addr(*m) == addr);
        }
    }
    None
}

/// What one manager answered after healing; times in ns since the history's start.
struct FinalRead {
    /// Per register: (invoke, complete, value, version).
    regs: Vec<(u64, u64, u64, u64)>,
    /// When the config list was asked and answered.
    list: (u64, u64),
    names: BTreeSet<String>,
}

/// Every register read through the manager of `host`, and the names of all configs.
fn read_all(lab: &ClusterLab, tls: &MtlsConnector, host: u8, start: Instant) -> Result<FinalRead> {
    let (addr, tls) = (lab.manager_addr(host), tls.clone());
    join(in_netns(&lab.netns(host), move || async move {
        let mut api = client(&addr, &tls);
        let mut regs = Vec::new();
        for k in 0..KEYS {
            let invoke = start.elapsed().as_nanos() as u64;
            let svc = tokio::time::timeout(
                CALL_DEADLINE,
                api.get_service(pb::GetServiceRequest {
                    service: format!("reg{k}"),
                }),
            )
            .await
            .with_context(|| format!("GetService reg{k} hung"))?
            .with_context(|| format!("GetService reg{k}"))?
            .into_inner();
            let complete = start.elapsed().as_nanos() as u64;
            let v = svc
                .spec
                .as_ref()
                .and_then(|s| s.labels.get("v"))
                .and_then(|v| v.parse::<u64>().ok())
                .with_context(|| format!("reg{k} has no numeric label v"))?;
            regs.push((invoke, complete, v, svc.meta.map_or(0, |m| m.version)));
        }
        let invoke = start.elapsed().as_nanos() as u64;
        let configs = tokio::time::timeout(
            CALL_DEADLINE,
            api.list_configs(pb::ListByNameRequest { names: vec![] }),
        )
        .await
        .context("ListConfigs hung")?
        .context("ListConfigs")?
        .into_inner()
        .configs;
        let complete = start.elapsed().as_nanos() as u64;
        let names = configs
            .into_iter()
            .filter_map(|c| c.spec.map(|s| s.name))
            .collect();
        Ok(FinalRead {
            regs,
            list: (invoke, complete),
            names,
        })
    }))
}

/// One checked object: its records, the model's operations built from them.
fn to_ops<I: Clone, O: Clone>(
    recs: &[&Record],
    get: impl Fn(&Record) -> (I, Outcome<O>),
) -> Vec<Operation<I, O>> {
    recs.iter()
        .map(|r| {
            let (input, outcome) = get(r);
            Operation {
                client: r.client,
                invoke: r.invoke,
                complete: r.complete,
                input,
                outcome,
            }
        })
        .collect()
}

/// Checks one object's history; on a violation, the lines that show it.
fn check_object<M: Model>(
    model: &M,
    what: &str,
    recs: &[&Record],
    ops: &[Operation<M::Input, M::Output>],
) -> Result<()> {
    match check(model, ops) {
        Ok(()) => Ok(()),
        Err(Violation::GaveUp { explored }) => bail!(
            "{what}: the checker gave up after {explored} configurations ({} operations): \
             cannot tell whether it is linearizable",
            ops.len()
        ),
        Err(Violation::NotLinearizable {
            linearized,
            stuck,
            states,
        }) => {
            let Some(s) = recs.get(stuck) else {
                bail!("{what}: not linearizable (no operation can come first)");
            };
            let from = s.invoke.saturating_sub(3_000_000_000);
            let slice: Vec<String> = recs
                .iter()
                .filter(|r| {
                    let open = matches!(
                        r.call,
                        Call::Reg(_, _, Outcome::Unknown | Outcome::TookEffect)
                            | Call::Name(_, _, Outcome::Unknown | Outcome::TookEffect)
                    );
                    r.invoke <= s.complete && (r.complete >= from || open)
                })
                .map(|r| format!("  {}", r.line()))
                .collect();
            let last: Vec<String> = linearized
                .iter()
                .rev()
                .take(5)
                .rev()
                .filter_map(|i| recs.get(*i))
                .map(|r| format!("  {}", r.line()))
                .collect();
            bail!(
                "{what} is not linearizable: after {} operations ordered, this one cannot be placed \
                 from any state reached ({}):\n  {}\nthe last operations ordered before it:\n{}\n\
                 its neighbourhood (3 s before it, and every operation still open):\n{}",
                linearized.len(),
                states.join(", "),
                s.line(),
                last.join("\n"),
                slice.join("\n")
            )
        }
    }
}

#[test]
fn random_faults_keep_the_store_linearizable() -> Result<()> {
    let seed = match std::env::var("FLOTILLA_CHAOS_SEED") {
        Ok(s) => s
            .parse::<u64>()
            .with_context(|| format!("FLOTILLA_CHAOS_SEED={s} is not a number"))?,
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64
                % 1_000_000_007
        }
    };
    eprintln!("chaos seed {seed} (replay the schedule with FLOTILLA_CHAOS_SEED={seed})");
    let mut lab = ClusterLab::new(3)?;
    lab.scenario(|lab| chaos(lab, seed))
}

fn chaos(lab: &mut ClusterLab, seed: u64) -> Result<()> {
    let began = Instant::now();
    lab.init(1, &[])?;
    lab.join_manager(2, 1)?;
    lab.join_manager(3, 1)?;
    let admin = lab.admin_context_dir()?;
    let read = |f: &str| {
        std::fs::read_to_string(admin.join(f)).with_context(|| format!("read the admin {f}"))
    };
    let tls = MtlsConnector::new(
        flotilla_pki::client_config(
            &read("ca.pem")?,
            Some((&read("cert.pem")?, &read("key.pem")?)),
        )
        .context("the admin context's TLS files")?,
    );

    // The registers, all at 0.
    {
        let (addr, tls) = (lab.manager_addr(1), tls.clone());
        join(in_netns(&lab.netns(1), move || async move {
            let mut api = client(&addr, &tls);
            for k in 0..KEYS {
                api.create_service(pb::CreateServiceRequest {
                    spec: Some(spec(k, 0)),
                })
                .await
                .with_context(|| format!("create reg{k}"))?;
            }
            Ok(())
        }))?;
    }
    eprintln!(
        "3 managers and {KEYS} registers ready after {:?}",
        began.elapsed()
    );

    let shared = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        names: Mutex::new(Vec::new()),
    });
    let mut clients = Vec::new();
    for (n, host) in MANAGERS
        .iter()
        .flat_map(|h| std::iter::repeat_n(*h, CLIENTS_PER_MANAGER))
        .enumerate()
    {
        let (addr, tls, shared) = (lab.manager_addr(host), tls.clone(), shared.clone());
        let client_seed = seed.wrapping_mul(31).wrapping_add(n as u64 + 1);
        clients.push(in_netns(&lab.netns(host), move || {
            run_client(n, host, addr, tls, shared, client_seed)
        }));
    }

    // The faults.
    let mut rng = Rng(seed);
    let mut faults: Vec<(u64, String)> = Vec::new();
    let note = |faults: &mut Vec<(u64, String)>, what: String| {
        eprintln!("[{:>7.3} s] {what}", shared.now() as f64 / 1e9);
        faults.push((shared.now(), what));
    };
    let mut quorum_lost: Option<(u64, u64)> = None;
    let fault_result = (|| -> Result<()> {
        while shared.start.elapsed() < CHAOS {
            std::thread::sleep(rng.millis(500, 2000));
            if quorum_lost.is_none() && shared.start.elapsed() > CHAOS / 2 {
                let spare = MANAGERS[rng.below(3) as usize];
                let down: Vec<u8> = MANAGERS.iter().copied().filter(|h| *h != spare).collect();
                for &h in &down {
                    lab.kill_manager(h)?;
                }
                let from = shared.now();
                note(&mut faults, format!("SIGKILL managers {down:?}: no quorum"));
                std::thread::sleep(rng.millis(2500, 4000));
                let to = shared.now();
                for &h in &down {
                    lab.restart_manager(h)?;
                }
                quorum_lost = Some((from, to));
                note(&mut faults, format!("restarted managers {down:?}"));
                continue;
            }
            let victim = match leader(lab, &tls, &MANAGERS) {
                Some(l) if rng.below(2) == 0 => l,
                _ => MANAGERS[rng.below(3) as usize],
            };
            let hold = rng.millis(800, 3500);
            match rng.below(4) {
                3 => {
                    let asked = Instant::now();
                    lab.stop_manager(victim)?;
                    note(
                        &mut faults,
                        format!(
                            "SIGTERM manager {victim} (exited after {:?}), down for {hold:?}",
                            asked.elapsed()
                        ),
                    );
                    std::thread::sleep(hold);
                    lab.restart_manager(victim)?;
                    note(&mut faults, format!("restarted manager {victim}"));
                }
                0 => {
                    lab.kill_manager(victim)?;
                    note(
                        &mut faults,
                        format!("SIGKILL manager {victim} for {hold:?}"),
                    );
                    std::thread::sleep(hold);
                    lab.restart_manager(victim)?;
                    note(&mut faults, format!("restarted manager {victim}"));
                }
                1 => {
                    lab.pause_manager(victim, true)?;
                    note(
                        &mut faults,
                        format!("SIGSTOP manager {victim} for {hold:?}"),
                    );
                    std::thread::sleep(hold);
                    lab.pause_manager(victim, false)?;
                    note(&mut faults, format!("SIGCONT manager {victim}"));
                }
                _ => {
                    lab.set_connected(victim, false)?;
                    note(&mut faults, format!("cut host {victim} off for {hold:?}"));
                    std::thread::sleep(hold);
                    lab.set_connected(victim, true)?;
                    note(&mut faults, format!("reconnected host {victim}"));
                }
            }
        }
        Ok(())
    })();
    // Heal everything whatever happened (each fault above heals itself; this is for errors).
    for h in MANAGERS {
        let _ = lab.set_connected(h, true);
        let _ = lab.pause_manager(h, false);
        if !lab.manager_running(h) {
            lab.restart_manager(h)?;
        }
    }
    fault_result?;
    note(
        &mut faults,
        "healed: waiting for every manager to answer".into(),
    );
    for h in MANAGERS {
        lab.eventually(Duration::from_secs(30), || {
            read_all(lab, &tls, h, shared.start).map(|_| ())
        })
        .with_context(|| format!("the manager of host {h} does not answer after healing"))?;
    }
    note(
        &mut faults,
        "every manager answers; stopping the clients".into(),
    );
    shared.stop.store(true, Ordering::Relaxed);
    let mut records: Vec<Record> = Vec::new();
    for c in clients {
        records.extend(join(c)?);
    }

    // The final reads through every manager, part of the history.
    let names_started: BTreeSet<String> = shared
        .names
        .lock()
        .map(|n| n.iter().cloned().collect())
        .unwrap_or_default();
    let mut listed: BTreeMap<u8, BTreeSet<String>> = BTreeMap::new();
    let mut finals: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
    for h in MANAGERS {
        let FinalRead {
            regs,
            list: (li, lc),
            names,
        } = read_all(lab, &tls, h, shared.start)?;
        for (k, (i, c, v, version)) in regs.iter().enumerate() {
            records.push(Record {
                client: 100 + h as usize,
                host: h,
                invoke: *i,
                complete: *c,
                call: Call::Reg(
                    k,
                    RegisterInput::Read,
                    Outcome::Ok(RegisterOutput::Value(*v)),
                ),
                version: *version,
                error: String::new(),
                hung: false,
            });
        }
        for n in &names_started {
            let o = if names.contains(n) {
                ExistsOutput::Found
            } else {
                ExistsOutput::NotFound
            };
            records.push(Record {
                client: 100 + h as usize,
                host: h,
                invoke: li,
                complete: lc,
                call: Call::Name(n.clone(), ExistsInput::Lookup, Outcome::Ok(o)),
                version: 0,
                error: String::new(),
                hung: false,
            });
        }
        finals.insert(h, regs.iter().map(|r| r.2).collect());
        listed.insert(h, names);
    }
    records.sort_by_key(|r| (r.invoke, r.client));

    // Indeterminate writes whose unique value (or name) was seen took effect.
    let seen_values: BTreeSet<(usize, u64)> = records
        .iter()
        .filter_map(|r| match &r.call {
            Call::Reg(k, _, Outcome::Ok(RegisterOutput::Value(v))) => Some((*k, *v)),
            _ => None,
        })
        .collect();
    let seen_names: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| match &r.call {
            Call::Name(n, _, Outcome::Ok(ExistsOutput::Found)) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    let seen_names: BTreeSet<String> = seen_names.into_iter().map(str::to_string).collect();
    for r in records.iter_mut() {
        match &mut r.call {
            Call::Reg(k, RegisterInput::Write(v) | RegisterInput::Cas { new: v, .. }, o)
                if *o == Outcome::Unknown && seen_values.contains(&(*k, *v)) =>
            {
                *o = Outcome::TookEffect
            }
            Call::Name(n, ExistsInput::Create, o)
                if *o == Outcome::Unknown && seen_names.contains(n.as_str()) =>
            {
                *o = Outcome::TookEffect
            }
            _ => {}
        }
    }

    // The history, whatever the verdict.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(dir)?;
    let file = dir.join(format!("cluster_chaos-{seed}.json"));
    let doc = json!({
        "seed": seed,
        "faults": faults.iter().map(|(t, w)| json!({"t_ns": t, "event": w})).collect::<Vec<_>>(),
        "ops": records.iter().map(Record::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(&file, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("write {}", file.display()))?;

    let count = |f: &dyn Fn(&Record) -> bool| records.iter().filter(|r| f(r)).count();
    let ok_writes = count(&|r| {
        matches!(
            r.call,
            Call::Reg(
                _,
                RegisterInput::Write(_) | RegisterInput::Cas { .. },
                Outcome::Ok(RegisterOutput::Written)
            )
        )
    });
    let ok_reads = count(&|r| matches!(r.call, Call::Reg(_, RegisterInput::Read, Outcome::Ok(_))));
    let conflicts = count(&|r| {
        matches!(
            r.call,
            Call::Reg(_, _, Outcome::Ok(RegisterOutput::Conflict))
        )
    });
    let created = count(&|r| {
        matches!(
            r.call,
            Call::Name(_, ExistsInput::Create, Outcome::Ok(ExistsOutput::Created))
        )
    });
    let lookups = count(&|r| matches!(r.call, Call::Name(_, ExistsInput::Lookup, Outcome::Ok(_))));
    let unknown = count(&|r| {
        matches!(
            r.call,
            Call::Reg(_, _, Outcome::Unknown) | Call::Name(_, _, Outcome::Unknown)
        )
    });
    let took = count(&|r| {
        matches!(
            r.call,
            Call::Reg(_, _, Outcome::TookEffect) | Call::Name(_, _, Outcome::TookEffect)
        )
    });
    let failed = count(&|r| !r.error.is_empty());
    eprintln!(
        "history: {} calls ({ok_writes} writes acknowledged, {conflicts} compare-and-set conflicts, \
         {ok_reads} register reads, {created} configs created, {lookups} lookups; {failed} failed, \
         {unknown} indeterminate and unseen, {took} indeterminate but seen); written to {}",
        records.len(),
        file.display()
    );

    // Enough happened for the checks to mean something.
    if ok_writes < 50 || ok_reads < 100 || created < 10 {
        bail!("too little got through to check anything: {ok_writes} writes, {ok_reads} reads, {created} configs acknowledged");
    }
    for k in 0..KEYS {
        if !records.iter().any(|r| matches!(&r.call, Call::Reg(x, RegisterInput::Write(_) | RegisterInput::Cas { .. }, Outcome::Ok(RegisterOutput::Written)) if *x == k)) {
            bail!("no acknowledged write of reg{k}");
        }
    }

    // Liveness: every call was answered within the controller's bound.
    let hung: Vec<String> = records
        .iter()
        .filter(|r| r.hung)
        .map(Record::line)
        .collect();
    if !hung.is_empty() {
        bail!(
            "{} calls got no answer within {CALL_DEADLINE:?} (the controller bounds requests by 10 s):\n{}",
            hung.len(),
            hung.join("\n")
        );
    }
    // No write acknowledged without a quorum.
    let (from, to) = quorum_lost.context("the schedule never took the quorum away")?;
    let grace = 1_000_000_000;
    let during: Vec<String> = records
        .iter()
        .filter(|r| {
            r.invoke > from + grace
                && r.complete < to
                && matches!(
                    r.call,
                    Call::Reg(_, _, Outcome::Ok(RegisterOutput::Written))
                        | Call::Name(_, ExistsInput::Create, Outcome::Ok(_))
                )
        })
        .map(Record::line)
        .collect();
    if !during.is_empty() {
        bail!(
            "writes acknowledged while two of the three managers were dead:\n{}",
            during.join("\n")
        );
    }

    // Every manager lists every acknowledged config, nothing else, and they agree.
    let acked: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| match &r.call {
            Call::Name(n, ExistsInput::Create, Outcome::Ok(ExistsOutput::Created)) => {
                Some(n.as_str())
            }
            _ => None,
        })
        .collect();
    for (h, names) in &listed {
        let lost: Vec<&&str> = acked.iter().filter(|n| !names.contains(**n)).collect();
        if !lost.is_empty() {
            bail!("acknowledged configs missing on the manager of host {h}: {lost:?}");
        }
        let strange: Vec<&String> = names
            .iter()
            .filter(|n| !names_started.contains(*n))
            .collect();
        if !strange.is_empty() {
            bail!("the manager of host {h} lists configs nobody created: {strange:?}");
        }
    }
    if listed.values().collect::<BTreeSet<_>>().len() != 1 {
        bail!("the managers list different configs: {listed:?}");
    }
    if finals.values().collect::<BTreeSet<_>>().len() != 1 {
        bail!("the managers hold different register values after healing: {finals:?}");
    }

    // Versions name writes: the same value read twice comes with the same version (else
    // something other than this test wrote the registers, and compare-and-set conflicts would
    // not say what the checker assumes).
    let mut version_of: BTreeMap<(usize, u64), (u64, &Record)> = BTreeMap::new();
    for r in &records {
        if let Call::Reg(k, RegisterInput::Read, Outcome::Ok(RegisterOutput::Value(v))) = &r.call {
            if let Some((version, first)) = version_of.get(&(*k, *v)) {
                if *version != r.version {
                    bail!(
                        "reg{k} held {v} at version {version} and at version {}: written by something else?\n  {}\n  {}",
                        r.version,
                        first.line(),
                        r.line()
                    );
                }
            } else {
                version_of.insert((*k, *v), (r.version, r));
            }
        }
    }

    // Linearizability, object by object.
    let checked = Instant::now();
    for k in 0..KEYS {
        let recs: Vec<&Record> = records
            .iter()
            .filter(|r| matches!(&r.call, Call::Reg(x, _, _) if *x == k))
            .collect();
        let ops = to_ops(&recs, |r| match &r.call {
            Call::Reg(_, i, o) => (*i, o.clone()),
            Call::Name(..) => unreachable!("filtered"),
        });
        check_object(&Register { initial: 0 }, &format!("reg{k}"), &recs, &ops)
            .with_context(|| format!("seed {seed}; full history in {}", file.display()))?;
    }
    for name in &names_started {
        let recs: Vec<&Record> = records
            .iter()
            .filter(|r| matches!(&r.call, Call::Name(n, _, _) if n == name))
            .collect();
        let ops = to_ops(&recs, |r| match &r.call {
            Call::Name(_, i, o) => (*i, o.clone()),
            Call::Reg(..) => unreachable!("filtered"),
        });
        check_object(&Exists, &format!("config {name}"), &recs, &ops)
            .with_context(|| format!("seed {seed}; full history in {}", file.display()))?;
    }
    // The checker is not blind on this very history: a final read turned stale (the first
    // acknowledged write of reg0, overwritten by a later acknowledged one) and a final lookup
    // turned "not found" for an acknowledged config must both be rejected.
    let recs: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(&r.call, Call::Reg(0, _, _)))
        .collect();
    let mut ops = to_ops(&recs, |r| match &r.call {
        Call::Reg(_, i, o) => (*i, o.clone()),
        Call::Name(..) => unreachable!("filtered"),
    });
    let acked = |o: &Operation<RegisterInput, RegisterOutput>| {
        matches!(
            (o.input, &o.outcome),
            (
                RegisterInput::Write(_),
                Outcome::Ok(RegisterOutput::Written)
            )
        )
    };
    let stale = ops
        .iter()
        .enumerate()
        .find(|(_, w)| {
            acked(w)
                && ops
                    .iter()
                    .any(|later| acked(later) && later.invoke > w.complete)
        })
        .and_then(|(_, w)| match w.input {
            RegisterInput::Write(v) => Some(v),
            _ => None,
        })
        .context("reg0 has no acknowledged write overwritten by a later one")?;
    let last = ops.len() - 1;
    ops[last].outcome = Outcome::Ok(RegisterOutput::Value(stale));
    if !matches!(
        check(&Register { initial: 0 }, &ops),
        Err(Violation::NotLinearizable { .. })
    ) {
        bail!("the checker accepted reg0's history with a stale final read of {stale}");
    }
    let name = records
        .iter()
        .find_map(|r| match &r.call {
            Call::Name(n, ExistsInput::Create, Outcome::Ok(ExistsOutput::Created)) => {
                Some(n.clone())
            }
            _ => None,
        })
        .context("no acknowledged config")?;
    let recs: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(&r.call, Call::Name(n, _, _) if *n == name))
        .collect();
    let mut ops = to_ops(&recs, |r| match &r.call {
        Call::Name(_, i, o) => (*i, o.clone()),
        Call::Reg(..) => unreachable!("filtered"),
    });
    let last = ops.len() - 1;
    ops[last].outcome = Outcome::Ok(ExistsOutput::NotFound);
    if !matches!(check(&Exists, &ops), Err(Violation::NotLinearizable { .. })) {
        bail!("the checker accepted config {name} acknowledged and then not found");
    }
    eprintln!(
        "linearizable: {KEYS} registers and {} config names checked in {:?}; whole test {:?}",
        names_started.len(),
        checked.elapsed(),
        began.elapsed()
    );
    Ok(())
}
