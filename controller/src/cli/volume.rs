//! `flotilla volume create|ls|inspect|rm|prune`: Volumes.* calls with docker's output (the
//! `DRIVER  VOLUME NAME` table, docker's inspect keys, a confirmation before prune).

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use flotilla_proto::agent::v1::{
    CreateVolumeRequest, ListVolumesRequest, PruneVolumesRequest, RemoveVolumeRequest, Volume,
    VolumeRef,
};
use serde::Serialize;

use super::container::{inspect_each, print_rows};
use super::format::{self, outln};
use super::parse;
use super::template::Template;
use super::{term, Ctx};

/// Volume commands.
#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a volume (prints its name)
    #[command(after_help = "Examples:
  flotilla volume create data
  flotilla volume create --label backup=daily pgdata
  flotilla run -v pgdata:/var/lib/postgresql/data postgres")]
    Create(VolumeCreateArgs),
    /// List volumes
    #[command(visible_aliases = ["list"])]
    Ls(VolumeLsArgs),
    /// Show detailed information on one or more volumes (JSON)
    Inspect(VolumeInspectArgs),
    /// Remove one or more volumes
    #[command(visible_aliases = ["remove"])]
    Rm(VolumeRmArgs),
    /// Remove every volume no container uses
    Prune(VolumePruneArgs),
}

#[derive(Debug, Args)]
pub struct VolumeCreateArgs {
    /// Volume driver (only "local")
    #[arg(short, long, default_value = "local")]
    pub driver: String,
    /// Set a label (KEY=VALUE)
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Name (generated when omitted)
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct VolumeLsArgs {
    /// Only display volume names
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter: name=, label=KEY[=VALUE], dangling=true (repeatable)
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Output: table (default), json, or a Go template like '{{.Name}}'
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct VolumeInspectArgs {
    /// Format the output with a Go template (e.g. '{{.Mountpoint}}')
    #[arg(short, long)]
    pub format: Option<String>,
    #[arg(required = true, value_name = "VOLUME")]
    pub volumes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VolumeRmArgs {
    /// Do not fail when a volume does not exist (a volume in use is never removed)
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true, value_name = "VOLUME")]
    pub volumes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VolumePruneArgs {
    /// Do not ask for confirmation
    #[arg(short, long)]
    pub force: bool,
}

/// A volume in docker's inspect/JSON shape.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeView {
    pub created_at: String,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub mountpoint: String,
    pub name: String,
    pub scope: String,
    pub used_by: Vec<String>,
    pub anonymous: bool,
}

/// The view of a volume.
pub fn volume_view(v: &Volume) -> VolumeView {
    VolumeView {
        created_at: format::rfc3339(v.created_unix_nano),
        driver: if v.driver.is_empty() {
            "local".into()
        } else {
            v.driver.clone()
        },
        labels: v.labels.clone().into_iter().collect(),
        mountpoint: v.mountpoint.clone(),
        name: v.name.clone(),
        scope: "local".into(),
        used_by: v.used_by.clone(),
        anonymous: v.anonymous,
    }
}

/// Runs a volume subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: VolumeCmd) -> anyhow::Result<i32> {
    match cmd {
        VolumeCmd::Create(a) => {
            if a.driver != "local" {
                anyhow::bail!("unsupported volume driver {:?}: only \"local\"", a.driver);
            }
            let mut labels = std::collections::HashMap::new();
            for l in &a.label {
                let (k, v) = parse::parse_label(l)?;
                labels.insert(k, v);
            }
            let agent = ctx.agent().await?;
            let v = agent
                .volumes()
                .create(CreateVolumeRequest {
                    name: a.name.unwrap_or_default(),
                    labels,
                })
                .await
                .map_err(|s| agent.err(s))?
                .into_inner();
            outln(&v.name);
            Ok(0)
        }
        VolumeCmd::Ls(a) => {
            if a.format != "table" && a.format != "json" {
                Template::parse(&a.format)?;
            }
            let agent = ctx.agent().await?;
            let mut vols = agent
                .volumes()
                .list(ListVolumesRequest { filters: a.filter })
                .await
                .map_err(|s| agent.err(s))?
                .into_inner()
                .volumes;
            vols.sort_by(|x, y| x.name.cmp(&y.name));
            if a.quiet {
                let s: String = vols.iter().map(|v| format!("{}\n", v.name)).collect();
                format::out(&s);
                return Ok(0);
            }
            let rows: Vec<VolumeView> = vols.iter().map(volume_view).collect();
            print_rows(&rows, &a.format, &["DRIVER", "VOLUME NAME"], |r| {
                vec![r.driver.clone(), r.name.clone()]
            })?;
            Ok(0)
        }
        VolumeCmd::Inspect(a) => {
            let agent = ctx.agent().await?;
            inspect_each(&a.volumes, a.format.as_deref(), |name| {
                let agent = agent.clone();
                async move {
                    let v = agent
                        .volumes()
                        .inspect(VolumeRef { name })
                        .await
                        .map_err(|s| agent.err(s))?
                        .into_inner();
                    Ok(serde_json::to_value(volume_view(&v))?)
                }
            })
            .await
        }
        VolumeCmd::Rm(a) => {
            let agent = ctx.agent().await?;
            let mut code = 0;
            for name in &a.volumes {
                match agent
                    .volumes()
                    .remove(RemoveVolumeRequest {
                        name: name.clone(),
                        force: a.force,
                    })
                    .await
                {
                    Ok(_) => outln(name),
                    Err(s) => {
                        eprintln!("Error: {}", agent.err(s));
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        VolumeCmd::Prune(a) => {
            if !a.force
                && !term::confirm(
                    "WARNING! This will remove all volumes not used by at least one container.\nAre you sure you want to continue?",
                )
            {
                eprintln!("Aborted: nothing was removed.");
                return Ok(1);
            }
            let agent = ctx.agent().await?;
            let r = agent
                .volumes()
                .prune(PruneVolumesRequest {})
                .await
                .map_err(|s| agent.err(s))?
                .into_inner();
            format::out(&prune_report(&r.removed, r.reclaimed_bytes));
            Ok(0)
        }
    }
}

/// Docker's prune summary.
pub fn prune_report(removed: &[String], reclaimed: u64) -> String {
    let mut s = String::new();
    if !removed.is_empty() {
        s.push_str("Deleted Volumes:\n");
        for n in removed {
            s.push_str(n);
            s.push('\n');
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "Total reclaimed space: {}\n",
        format::human_size4(reclaimed)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_and_report() {
        let v = Volume {
            name: "data".into(),
            driver: "".into(),
            mountpoint: "/var/lib/flotilla/volumes/data/_data".into(),
            created_unix_nano: 1_000_000_000,
            labels: [("a".to_string(), "b".to_string())].into_iter().collect(),
            used_by: vec!["web".into()],
            anonymous: false,
        };
        let j = serde_json::to_value(volume_view(&v)).unwrap();
        assert_eq!(j["Driver"], "local");
        assert_eq!(j["Scope"], "local");
        assert_eq!(j["CreatedAt"], "1970-01-01T00:00:01Z");
        assert_eq!(j["Labels"]["a"], "b");
        assert_eq!(j["UsedBy"][0], "web");
        assert_eq!(
            prune_report(&["a".into(), "b".into()], 1_234_500),
            "Deleted Volumes:\na\nb\n\nTotal reclaimed space: 1.234MB\n"
        );
        assert_eq!(prune_report(&[], 0), "Total reclaimed space: 0B\n");
    }
}
