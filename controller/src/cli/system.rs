//! `flotilla system info|events` and `flotilla version`: System.* calls printed the way `docker
//! info`, `docker events` and `docker version` print theirs (text by default, `--format json`
//! for scripts). `version` prints the client's half even when the agent is down.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use flotilla_proto::agent::v1::{
    Event, EventsRequest, InfoRequest, InfoResponse, VersionRequest, VersionResponse, API_VERSION,
};
use serde::Serialize;

use super::format::{self, outln};
use super::parse;
use super::template::Template;
use super::Ctx;

/// System commands.
#[derive(Debug, Subcommand)]
pub enum SystemCmd {
    /// Show node-wide information
    Info(InfoArgs),
    /// Stream the agent's events
    #[command(after_help = "Examples:
  flotilla events
  flotilla events --since 10m -f type=container -f event=die
  flotilla events --format json

Filters (-f, all must match): type=container|image|volume|network, container=NAME, event=ACTION")]
    Events(EventsArgs),
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Output: text (default), json, or a Go template like '{{.ncpu}}'
    #[arg(short, long)]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Replay retained events since: relative (10m), RFC 3339, or unix seconds
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Filter: type=, container=, event= (repeatable; all must match)
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Output: text (default), json (one object per line), or a Go template
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Output: text (default) or json
    #[arg(short, long)]
    pub format: Option<String>,
}

/// Runs a system subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: SystemCmd) -> anyhow::Result<i32> {
    match cmd {
        SystemCmd::Info(a) => info(ctx, a).await,
        SystemCmd::Events(a) => events(ctx, a).await,
    }
}

fn docker_arch(a: &str) -> &str {
    match a {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `docker info`-like text.
pub fn info_text(i: &InfoResponse, host: &str) -> String {
    let mut s = String::new();
    let mut l = |k: &str, v: String| s.push_str(&format!(" {k}: {v}\n"));
    l("Containers", i.containers.to_string());
    l(" Running", i.running.to_string());
    l(" Paused", i.paused.to_string());
    l(" Stopped", i.stopped.to_string());
    l("Images", i.images.to_string());
    l("Volumes", i.volumes.to_string());
    l("Networks", i.networks.to_string());
    l("Server Version", i.version.clone());
    l("Storage Used", format::human_size4(i.storage_bytes));
    l("Cgroup Version", i.cgroup_layout.clone());
    l("Runtime", i.runtime.clone());
    l("Kernel Version", i.kernel.clone());
    l("Operating System", i.operating_system.clone());
    l("OSType", "linux".into());
    l("Architecture", i.arch.clone());
    l("CPUs", i.ncpu.to_string());
    l("Total Memory", format::bytes_size(i.mem_total));
    l("Name", i.name.clone());
    l("State Dir", i.state_dir.clone());
    l("Run Dir", i.run_dir.clone());
    l(
        "User Namespace Remap",
        if i.userns_remap.is_empty() {
            "off".into()
        } else {
            i.userns_remap.clone()
        },
    );
    if !i.allowed_host_paths.is_empty() {
        l("Allowed Host Paths", i.allowed_host_paths.join(", "));
    }
    let mut out = format!(
        "Client:\n Version: {}\n Host: {host}\n\nServer:\n{s}",
        env!("CARGO_PKG_VERSION")
    );
    if !i.features.is_empty() {
        out.push_str(" Kernel Features:\n");
        let sorted: BTreeMap<_, _> = i.features.iter().collect();
        for (k, v) in sorted {
            out.push_str(&format!("  {k}: {v}\n"));
        }
    }
    out
}

/// The JSON view of `info` (the proto's field names).
#[derive(Debug, Serialize)]
pub struct InfoView {
    pub name: String,
    pub version: String,
    pub kernel: String,
    pub operating_system: String,
    pub arch: String,
    pub ncpu: u32,
    pub mem_total: u64,
    pub cgroup_layout: String,
    pub runtime: String,
    pub state_dir: String,
    pub run_dir: String,
    pub storage_bytes: u64,
    pub containers: u32,
    pub running: u32,
    pub paused: u32,
    pub stopped: u32,
    pub images: u32,
    pub volumes: u32,
    pub networks: u32,
    pub features: BTreeMap<String, String>,
    pub userns_remap: String,
    pub allowed_host_paths: Vec<String>,
}

fn info_view(i: InfoResponse) -> InfoView {
    InfoView {
        name: i.name,
        version: i.version,
        kernel: i.kernel,
        operating_system: i.operating_system,
        arch: i.arch,
        ncpu: i.ncpu,
        mem_total: i.mem_total,
        cgroup_layout: i.cgroup_layout,
        runtime: i.runtime,
        state_dir: i.state_dir,
        run_dir: i.run_dir,
        storage_bytes: i.storage_bytes,
        containers: i.containers,
        running: i.running,
        paused: i.paused,
        stopped: i.stopped,
        images: i.images,
        volumes: i.volumes,
        networks: i.networks,
        features: i.features.into_iter().collect(),
        userns_remap: i.userns_remap,
        allowed_host_paths: i.allowed_host_paths,
    }
}

async fn info(ctx: &Ctx, a: InfoArgs) -> anyhow::Result<i32> {
    let tpl = match a.format.as_deref() {
        None | Some("json") => None,
        Some(t) => Some(Template::parse(t)?),
    };
    let agent = ctx.agent().await?;
    let i = agent
        .system()
        .info(InfoRequest {})
        .await
        .map_err(|s| agent.err(s))?
        .into_inner();
    match (a.format.as_deref(), tpl) {
        (Some("json"), _) => format::print_json(&info_view(i))?,
        (_, Some(t)) => outln(&t.render(&serde_json::to_value(info_view(i))?)?),
        _ => format::out(&info_text(&i, &ctx.host)),
    }
    Ok(0)
}

/// One event as `docker events` prints it:
/// `2026-11-28T10:00:00.000000000Z container start <id> (image=alpine, name=web)`.
pub fn event_line(e: &Event) -> String {
    let mut attrs: BTreeMap<&str, &str> = e
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if !e.name.is_empty() {
        attrs.entry("name").or_insert(e.name.as_str());
    }
    let mut s = format!(
        "{} {} {} {}",
        format::rfc3339_nano(e.time_unix_nano),
        e.r#type,
        e.action,
        e.id
    );
    if !attrs.is_empty() {
        let parts: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&format!(" ({})", parts.join(", ")));
    }
    s
}

/// An event's JSON (docker's message shape).
#[derive(Debug, Serialize)]
pub struct EventView {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: ActorView,
    pub scope: String,
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

#[derive(Debug, Serialize)]
pub struct ActorView {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

pub fn event_view(e: &Event) -> EventView {
    let mut attributes: BTreeMap<String, String> = e.attributes.clone().into_iter().collect();
    if !e.name.is_empty() {
        attributes
            .entry("name".into())
            .or_insert_with(|| e.name.clone());
    }
    EventView {
        kind: e.r#type.clone(),
        action: e.action.clone(),
        actor: ActorView {
            id: e.id.clone(),
            attributes,
        },
        scope: "local".into(),
        time: e.time_unix_nano.div_euclid(1_000_000_000),
        time_nano: e.time_unix_nano,
    }
}

async fn events(ctx: &Ctx, a: EventsArgs) -> anyhow::Result<i32> {
    let since = a
        .since
        .as_deref()
        .map(|s| parse::parse_timestamp("--since", s, format::now_ns()))
        .transpose()?
        .unwrap_or(0);
    let tpl = match a.format.as_deref() {
        None | Some("json") => None,
        Some(t) => Some(Template::parse(t)?),
    };
    let agent = ctx.agent().await?;
    let mut stream = agent
        .system()
        .events(EventsRequest {
            since_unix_nano: since,
            filters: a.filter,
        })
        .await
        .map_err(|s| agent.err(s))?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(|s| agent.err(s))? {
        let line = match (a.format.as_deref(), &tpl) {
            (Some("json"), _) => serde_json::to_string(&event_view(&e))?,
            (_, Some(t)) => t.render(&serde_json::to_value(event_view(&e))?)?,
            _ => event_line(&e),
        };
        outln(&line);
    }
    Ok(0)
}

/// The client half of `version`.
pub fn client_version_text() -> String {
    format!(
        "Client:\n Version:           {}\n API version:       {API_VERSION}\n OS/Arch:           {}/{}\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        docker_arch(std::env::consts::ARCH)
    )
}

/// The server half of `version`.
pub fn server_version_text(v: &VersionResponse) -> String {
    format!(
        "\nServer:\n Version:           {}\n API version:       {}\n Git commit:        {}\n OS/Arch:           {}/{}\n Kernel:            {}\n",
        v.version,
        v.api_version,
        if v.git_commit.is_empty() { "unknown" } else { &v.git_commit },
        v.os,
        docker_arch(&v.arch),
        v.kernel
    )
}

/// `flotilla version`.
pub async fn version(ctx: &Ctx, a: VersionArgs) -> anyhow::Result<i32> {
    let json = match a.format.as_deref() {
        None => false,
        Some("json") => true,
        Some(f) => anyhow::bail!("invalid --format {f:?}: expected json"),
    };
    let server = async {
        let agent = ctx.agent().await?;
        agent
            .system()
            .version(VersionRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| agent.err(s))
    }
    .await;
    if json {
        let client = serde_json::json!({
            "Version": env!("CARGO_PKG_VERSION"),
            "ApiVersion": API_VERSION,
            "Os": std::env::consts::OS,
            "Arch": docker_arch(std::env::consts::ARCH),
        });
        let server_json = server.as_ref().ok().map(|v| {
            serde_json::json!({
                "Version": v.version, "ApiVersion": v.api_version, "GitCommit": v.git_commit,
                "Os": v.os, "Arch": docker_arch(&v.arch), "KernelVersion": v.kernel,
            })
        });
        format::print_json(&serde_json::json!({"Client": client, "Server": server_json}))?;
    } else {
        format::out(&client_version_text());
        if let Ok(v) = &server {
            format::out(&server_version_text(v));
        }
    }
    server.map(|_| 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines() {
        let e = Event {
            time_unix_nano: 5,
            r#type: "container".into(),
            action: "start".into(),
            id: "abc".into(),
            name: "web".into(),
            attributes: [("image".to_string(), "alpine".to_string())]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            event_line(&e),
            "1970-01-01T00:00:00.000000005Z container start abc (image=alpine, name=web)"
        );
        let bare = Event {
            r#type: "volume".into(),
            action: "create".into(),
            id: "data".into(),
            ..Default::default()
        };
        assert_eq!(
            event_line(&bare),
            "1970-01-01T00:00:00.000000000Z volume create data"
        );
        let v = serde_json::to_value(event_view(&e)).unwrap();
        assert_eq!(v["Type"], "container");
        assert_eq!(v["Actor"]["Attributes"]["name"], "web");
        assert_eq!(v["timeNano"], 5);
        assert_eq!(v["time"], 0);
    }

    #[test]
    fn info_and_version_text() {
        let i = InfoResponse {
            name: "node1".into(),
            containers: 3,
            running: 1,
            stopped: 2,
            mem_total: 8 << 30,
            ncpu: 4,
            features: [("seccomp".to_string(), "yes".to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let t = info_text(&i, "unix:///run/flotilla/agent.sock");
        assert!(t.starts_with("Client:\n Version: "));
        assert!(t.contains("\nServer:\n Containers: 3\n  Running: 1\n  Paused: 0\n  Stopped: 2\n"));
        assert!(t.contains(" Total Memory: 8GiB\n"));
        assert!(t.contains(" User Namespace Remap: off\n"));
        assert!(t.ends_with(" Kernel Features:\n  seccomp: yes\n"));
        assert!(client_version_text().contains(" API version:       1\n"));
        let v = VersionResponse {
            version: "0.1.0".into(),
            api_version: "1".into(),
            arch: "x86_64".into(),
            os: "linux".into(),
            ..Default::default()
        };
        let s = server_version_text(&v);
        assert!(s.contains(" OS/Arch:           linux/amd64\n"));
        assert!(s.contains(" Git commit:        unknown\n"));
    }
}
