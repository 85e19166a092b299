//! `System`: version, info, events.

use std::sync::Arc;

use flotilla_proto::agent::v1 as pb;
use tonic::{Request, Response, Status};

use super::{stream_of, BoxStream};
use crate::engine::events;
use crate::engine::Engine;

pub struct SystemService {
    engine: Arc<Engine>,
}

impl SystemService {
    pub fn new(engine: Arc<Engine>) -> Self {
        SystemService { engine }
    }
}

fn kernel() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn feature(present: bool) -> String {
    if present { "yes" } else { "no" }.to_string()
}

#[tonic::async_trait]
impl pb::system_server::System for SystemService {
    async fn version(
        &self,
        _: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: pb::API_VERSION.into(),
            git_commit: option_env!("FLOTILLA_GIT_COMMIT").unwrap_or("").into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            kernel: kernel(),
        }))
    }

    async fn info(
        &self,
        _: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let e = &self.engine;
        let (containers, running, paused, stopped) = e.counts();
        let layout = crate::runtime::cgroups::detect(&e.cfg.cgroup_root)
            .map(|l| format!("{l:?}").to_lowercase())
            .unwrap_or_else(|err| format!("unknown ({err})"));
        let state_dir = e.cfg.state_dir.clone();
        let storage =
            tokio::task::spawn_blocking(move || crate::engine::volumes::dir_size(&state_dir))
                .await
                .unwrap_or(0);
        let mut features = std::collections::HashMap::new();
        for (ns, name) in [
            ("mnt", "mount"),
            ("pid", "pid"),
            ("net", "network"),
            ("ipc", "ipc"),
            ("uts", "uts"),
            ("user", "user"),
            ("cgroup", "cgroup"),
        ] {
            features.insert(
                format!("namespace.{name}"),
                feature(std::path::Path::new(&format!("/proc/self/ns/{ns}")).exists()),
            );
        }
        let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        features.insert("overlayfs".into(), feature(fs.contains("overlay")));
        features.insert(
            "seccomp".into(),
            feature(
                std::fs::read_to_string("/proc/self/status")
                    .unwrap_or_default()
                    .contains("Seccomp:"),
            ),
        );
        features.insert(
            "nftables".into(),
            feature(std::path::Path::new("/usr/sbin/nft").exists()),
        );
        Ok(Response::new(pb::InfoResponse {
            name: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: kernel(),
            operating_system: os_name(),
            arch: std::env::consts::ARCH.into(),
            ncpu: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            mem_total: mem_total(),
            cgroup_layout: layout,
            runtime: "flotilla-runtime (in-process library, one flotilla-shim per container)"
                .into(),
            state_dir: e.cfg.state_dir.display().to_string(),
            run_dir: e.cfg.run_dir.display().to_string(),
            storage_bytes: storage,
            containers,
            running,
            paused,
            stopped,
            images: e.images.list().len() as u32,
            volumes: e.volumes.list(|_| Vec::new()).len() as u32,
            networks: 0,
            features,
            userns_remap: e
                .cfg
                .userns_remap
                .map(|(u, g, c)| format!("{u}:{g}:{c}"))
                .unwrap_or_default(),
            allowed_host_paths: e
                .cfg
                .allow_host_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        }))
    }

    type EventsStream = BoxStream<pb::Event>;

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let req = req.into_inner();
        let mut filters = Vec::new();
        for f in &req.filters {
            let (k, v) = f.split_once('=').ok_or_else(|| {
                Status::invalid_argument(format!("invalid filter {f:?}: use KEY=VALUE"))
            })?;
            filters.push((k.to_string(), v.to_string()));
        }
        let (past, mut rx) = self.engine.events.subscribe(req.since_unix_nano);
        let (tx, out) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            for ev in past {
                if events::matches(&ev, &filters) && tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if events::matches(&ev, &filters) && tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "an events subscriber fell behind");
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(stream_of(out)))
    }
}
