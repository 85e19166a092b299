//! `flotilla secret create|ls|inspect|rm` and `flotilla config create|ls|inspect|rm`: named
//! blobs that services mount (secrets under /run/secrets, configs at any path). One
//! implementation serves both; they differ in what is shown: a secret's data is never printed
//! (inspect shows its keyed digest), a config's data is shown by `inspect --pretty`.

use std::collections::HashMap;
use std::io::Read;

use clap::{Args, Subcommand};
use flotilla_proto::control::v1::{
    Config, ConfigSpec, CreateConfigRequest, CreateSecretRequest, GetByNameRequest,
    ListByNameRequest, Secret, SecretSpec,
};
use serde::Serialize;

use super::container::print_rows;
use super::control::{self, Cluster};
use super::format::{self, outln};
use super::objects::{self, kv, Kind};
use super::parse::{self, ParseError};
use super::template::Template;
use super::{with_exit, Ctx};

/// Secret commands.
#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Create a secret from a file or stdin (prints its id)
    #[command(after_help = "Examples:
  flotilla secret create db_password ./password.txt
  printf '%s' \"$TOKEN\" | flotilla secret create api_token -
  flotilla service create --secret db_password ...

The data is sealed in the cluster store and only sent to nodes that run a task using it.")]
    Create(CreateArgs),
    /// List secrets
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show secrets (never their data; the digest instead)
    Inspect(InspectArgs),
    /// Remove one or more secrets
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

/// Config commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Create a config from a file or stdin (prints its id)
    #[command(after_help = "Examples:
  flotilla config create nginx_conf ./nginx.conf
  flotilla service create --config source=nginx_conf,target=/etc/nginx/nginx.conf nginx")]
    Create(CreateArgs),
    /// List configs
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show configs (--pretty shows the data)
    Inspect(InspectArgs),
    /// Remove one or more configs
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Label (KEY=VALUE)
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    #[arg(value_name = "NAME")]
    pub name: String,
    /// File with the data, or - for stdin
    #[arg(value_name = "FILE|-")]
    pub file: String,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter: name=, id= (repeatable)
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Output: table (default), json, or a Go template like '{{.Name}}'
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Human-readable output instead of JSON
    #[arg(long)]
    pub pretty: bool,
    /// Format the output with a Go template (e.g. '{{.Spec.Name}}')
    #[arg(short, long)]
    pub format: Option<String>,
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Secrets or configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Secret,
    Config,
}

impl Which {
    fn word(self) -> &'static str {
        match self {
            Which::Secret => "secret",
            Which::Config => "config",
        }
    }

    /// Docker's limits: 500 KiB for a secret, 1000 KiB for a config.
    fn max_len(self) -> usize {
        match self {
            Which::Secret => 500 * 1024,
            Which::Config => 1000 * 1024,
        }
    }
}

/// What the commands show of either kind.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Item {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Secrets only.
    pub digest: String,
    /// Configs only.
    pub data: Vec<u8>,
}

impl From<&Secret> for Item {
    fn from(s: &Secret) -> Item {
        let spec = s.spec.clone().unwrap_or_default();
        Item {
            id: s.id.clone(),
            name: spec.name,
            labels: spec.labels,
            created_at: s.meta.as_ref().map(|m| m.created_at).unwrap_or(0),
            updated_at: s.meta.as_ref().map(|m| m.updated_at).unwrap_or(0),
            digest: s.digest.clone(),
            data: Vec::new(),
        }
    }
}

impl From<&Config> for Item {
    fn from(c: &Config) -> Item {
        let spec = c.spec.clone().unwrap_or_default();
        Item {
            id: c.id.clone(),
            name: spec.name,
            labels: spec.labels,
            created_at: c.meta.as_ref().map(|m| m.created_at).unwrap_or(0),
            updated_at: c.meta.as_ref().map(|m| m.updated_at).unwrap_or(0),
            digest: String::new(),
            data: spec.data,
        }
    }
}

/// An `ls` row.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Row {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

pub const HEADERS: [&str; 4] = ["ID", "NAME", "CREATED", "UPDATED"];

pub fn cells(r: &Row) -> Vec<String> {
    vec![
        r.id.clone(),
        r.name.clone(),
        r.created_at.clone(),
        r.updated_at.clone(),
    ]
}

pub fn row(i: &Item, now_ms: i64) -> Row {
    let ago = |ms: i64| {
        format::ago(
            ms.saturating_mul(1_000_000),
            now_ms.saturating_mul(1_000_000),
        )
    };
    Row {
        id: i.id.clone(),
        name: i.name.clone(),
        created_at: ago(i.created_at),
        updated_at: ago(i.updated_at),
    }
}

/// `inspect --pretty`: never a secret's data; a config's data as text.
pub fn pretty(which: Which, i: &Item) -> String {
    let mut s = String::new();
    kv(&mut s, "ID", &i.id);
    kv(&mut s, "Name", &i.name);
    if !i.labels.is_empty() {
        s.push_str("Labels:\n");
        let mut l: Vec<_> = i.labels.iter().collect();
        l.sort();
        for (k, v) in l {
            s.push_str(&format!(" - {k}={v}\n"));
        }
    }
    if which == Which::Secret {
        // Keyed (`hmac-sha256:…`) since secrets got cluster-keyed digests; a bare hex digest is a
        // plain sha256 of a secret created before.
        let digest = if i.digest.contains(':') {
            i.digest.clone()
        } else {
            format!("sha256:{}", i.digest)
        };
        kv(&mut s, "Digest", digest);
    }
    kv(&mut s, "Created at", objects::rfc3339_ms(i.created_at));
    kv(&mut s, "Updated at", objects::rfc3339_ms(i.updated_at));
    if which == Which::Config {
        s.push_str("Data:\n");
        let text = String::from_utf8_lossy(&i.data);
        s.push_str(&text);
        if !text.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

/// `ls` filters -> names.
pub fn ls_names(filters: &[String]) -> Result<Vec<String>, ParseError> {
    filters
        .iter()
        .map(|f| match f.split_once('=') {
            Some(("name" | "id", v)) if !v.is_empty() => Ok(v.to_string()),
            _ => Err(ParseError(format!(
                "invalid filter {f:?}: expected name= or id="
            ))),
        })
        .collect()
}

/// Checks the data size against the kind's limit.
pub fn check_data(which: Which, name: &str, data: &[u8]) -> Result<(), ParseError> {
    if data.is_empty() {
        return Err(ParseError(format!(
            "{} {name:?}: the data is empty",
            which.word()
        )));
    }
    if data.len() > which.max_len() {
        return Err(ParseError(format!(
            "{} {name:?}: the data is {} bytes, more than the limit of {} KiB",
            which.word(),
            data.len(),
            which.max_len() / 1024
        )));
    }
    Ok(())
}

fn read_data(file: &str) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin()
            .lock()
            .read_to_end(&mut data)
            .map_err(|e| anyhow::anyhow!("reading stdin: {e}"))?;
    } else {
        data = std::fs::read(file).map_err(|e| anyhow::anyhow!("reading {file:?}: {e}"))?;
    }
    Ok(data)
}

async fn get(cl: &Cluster, which: Which, name: &str) -> anyhow::Result<(Item, serde_json::Value)> {
    let req = GetByNameRequest {
        name: name.to_string(),
    };
    Ok(match which {
        Which::Secret => {
            let s = cl
                .api()
                .get_secret(req)
                .await
                .map_err(|s| cl.err(s))?
                .into_inner();
            (Item::from(&s), objects::inspect_value(Kind::Secret, &s)?)
        }
        Which::Config => {
            let c = cl
                .api()
                .get_config(req)
                .await
                .map_err(|s| cl.err(s))?
                .into_inner();
            (Item::from(&c), objects::inspect_value(Kind::Config, &c)?)
        }
    })
}

fn check_format(f: &str) -> anyhow::Result<()> {
    if f != "table" && f != "json" {
        Template::parse(f.strip_prefix("table ").unwrap_or(f))?;
    }
    Ok(())
}

/// Runs a secret subcommand.
pub async fn dispatch_secret(ctx: &Ctx, cmd: SecretCmd) -> anyhow::Result<i32> {
    match cmd {
        SecretCmd::Create(a) => create(ctx, Which::Secret, a).await,
        SecretCmd::Ls(a) => ls(ctx, Which::Secret, a).await,
        SecretCmd::Inspect(a) => inspect(ctx, Which::Secret, a).await,
        SecretCmd::Rm(a) => rm(ctx, Which::Secret, a).await,
    }
}

/// Runs a config subcommand.
pub async fn dispatch_config(ctx: &Ctx, cmd: ConfigCmd) -> anyhow::Result<i32> {
    match cmd {
        ConfigCmd::Create(a) => create(ctx, Which::Config, a).await,
        ConfigCmd::Ls(a) => ls(ctx, Which::Config, a).await,
        ConfigCmd::Inspect(a) => inspect(ctx, Which::Config, a).await,
        ConfigCmd::Rm(a) => rm(ctx, Which::Config, a).await,
    }
}

async fn create(ctx: &Ctx, which: Which, a: CreateArgs) -> anyhow::Result<i32> {
    let labels = a
        .label
        .iter()
        .map(|l| parse::parse_label(l))
        .collect::<Result<HashMap<_, _>, _>>()
        .map_err(|e| with_exit(125, e.into()))?;
    let data = read_data(&a.file)?;
    check_data(which, &a.name, &data).map_err(|e| with_exit(125, e.into()))?;
    let cl = Cluster::open(ctx).await?;
    let id = match which {
        Which::Secret => {
            cl.api()
                .create_secret(CreateSecretRequest {
                    spec: Some(SecretSpec {
                        name: a.name.clone(),
                        labels,
                        data,
                    }),
                })
                .await
                .map_err(|s| cl.err(s))?
                .into_inner()
                .id
        }
        Which::Config => {
            cl.api()
                .create_config(CreateConfigRequest {
                    spec: Some(ConfigSpec {
                        name: a.name.clone(),
                        labels,
                        data,
                    }),
                })
                .await
                .map_err(|s| cl.err(s))?
                .into_inner()
                .id
        }
    };
    outln(&id);
    Ok(0)
}

async fn ls(ctx: &Ctx, which: Which, a: LsArgs) -> anyhow::Result<i32> {
    let names = ls_names(&a.filter).map_err(|e| with_exit(125, e.into()))?;
    check_format(&a.format)?;
    let cl = Cluster::open(ctx).await?;
    let req = ListByNameRequest { names };
    let mut items: Vec<Item> = match which {
        Which::Secret => cl
            .api()
            .list_secrets(req)
            .await
            .map_err(|s| cl.err(s))?
            .into_inner()
            .secrets
            .iter()
            .map(Item::from)
            .collect(),
        Which::Config => cl
            .api()
            .list_configs(req)
            .await
            .map_err(|s| cl.err(s))?
            .into_inner()
            .configs
            .iter()
            .map(Item::from)
            .collect(),
    };
    items.sort_by(|x, y| x.name.cmp(&y.name));
    if a.quiet {
        let s: String = items.iter().map(|i| format!("{}\n", i.id)).collect();
        format::out(&s);
        return Ok(0);
    }
    let now = objects::now_ms();
    let rows: Vec<Row> = items.iter().map(|i| row(i, now)).collect();
    print_rows(&rows, &a.format, &HEADERS, cells)?;
    Ok(0)
}

async fn inspect(ctx: &Ctx, which: Which, a: InspectArgs) -> anyhow::Result<i32> {
    let cl = Cluster::open(ctx).await?;
    if a.pretty {
        let mut code = 0;
        let mut first = true;
        for n in &a.names {
            match get(&cl, which, n).await {
                Ok((item, _)) => {
                    if !first {
                        format::out("\n");
                    }
                    first = false;
                    format::out(&pretty(which, &item));
                }
                Err(e) => {
                    eprintln!("{}", control::error_line(&e));
                    code = 1;
                }
            }
        }
        return Ok(code);
    }
    super::container::inspect_each(&a.names, a.format.as_deref(), |n| {
        let cl = cl.clone();
        async move { Ok(get(&cl, which, &n).await?.1) }
    })
    .await
}

async fn rm(ctx: &Ctx, which: Which, a: RmArgs) -> anyhow::Result<i32> {
    let cl = Cluster::open(ctx).await?;
    let mut code = 0;
    for n in &a.names {
        let req = GetByNameRequest { name: n.clone() };
        let r = match which {
            Which::Secret => cl.api().remove_secret(req).await.map(|_| ()),
            Which::Config => cl.api().remove_config(req).await.map(|_| ()),
        };
        match r {
            Ok(()) => outln(n),
            Err(s) => {
                eprintln!("{}", control::error_line(&cl.err(s)));
                code = 1;
            }
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::control::v1::Meta;

    fn secret() -> Secret {
        Secret {
            id: "s0123456789abcdefghijklm".into(),
            meta: Some(Meta {
                version: 4,
                created_at: 10_000,
                updated_at: 55_000,
            }),
            spec: Some(SecretSpec {
                name: "db_password".into(),
                labels: [("env".to_string(), "prod".to_string())].into(),
                data: b"hunter2".to_vec(),
            }),
            data_sealed: vec![9, 9],
            digest: "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7".into(),
        }
    }

    #[test]
    fn ls_table() {
        let mut cfg_item = Item::from(&Config {
            id: "c1".into(),
            meta: Some(Meta {
                version: 1,
                created_at: 0,
                updated_at: 0,
            }),
            spec: Some(ConfigSpec {
                name: "app".into(),
                ..Default::default()
            }),
        });
        cfg_item.created_at = 59_000;
        cfg_item.updated_at = 59_000;
        let rows = [row(&Item::from(&secret()), 60_000), row(&cfg_item, 60_000)];
        let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
        assert_eq!(
            format::table(&HEADERS, &body),
            "ID                         NAME          CREATED          UPDATED\n\
             s0123456789abcdefghijklm   db_password   50 seconds ago   5 seconds ago\n\
             c1                         app           1 second ago     1 second ago\n"
        );
    }

    #[test]
    fn pretty_never_shows_secret_data() {
        let text = pretty(Which::Secret, &Item::from(&secret()));
        assert!(!text.contains("hunter2"));
        assert_eq!(
            text,
            "ID:                     s0123456789abcdefghijklm
Name:                   db_password
Labels:
 - env=prod
Digest:                 sha256:f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7
Created at:             1970-01-01T00:00:10Z
Updated at:             1970-01-01T00:00:55Z
"
        );
        let c = Config {
            id: "c1".into(),
            meta: None,
            spec: Some(ConfigSpec {
                name: "nginx_conf".into(),
                labels: Default::default(),
                data: b"worker_processes 1;".to_vec(),
            }),
        };
        assert!(pretty(Which::Config, &Item::from(&c)).ends_with("Data:\nworker_processes 1;\n"));
    }

    #[test]
    fn checks() {
        assert_eq!(ls_names(&["name=db".into()]).unwrap(), vec!["db"]);
        assert!(ls_names(&["label=x".into()]).is_err());
        assert!(check_data(Which::Secret, "x", b"")
            .unwrap_err()
            .0
            .contains("empty"));
        assert!(check_data(Which::Secret, "x", &vec![0; 500 * 1024 + 1])
            .unwrap_err()
            .0
            .contains("500 KiB"));
        check_data(Which::Config, "x", &vec![0; 600 * 1024]).unwrap();
    }
}
