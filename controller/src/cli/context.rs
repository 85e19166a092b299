//! Cluster contexts, like docker contexts: a named controller address with the TLS material to
//! talk to it (the cluster CA, an admin certificate and its key), and which one is current.
//!
//! Storage, under `$FLOTILLA_CONFIG` or else `~/.flotilla/`:
//! ```text
//! config.json                    {"current_context": "prod"}   (other keys are kept)
//! contexts/<name>/meta.json      {"name", "description", "controller"}
//! contexts/<name>/ca.pem, cert.pem, key.pem
//! ```
//! Invariants: directories are 0700 and the key 0600 whatever the umask; every file is written
//! to a temporary sibling, synced and renamed, so a reader sees the old file or the new one; a
//! context's `meta.json` is written last, so a context that lists is complete. Which context a
//! command uses: `--context`, else `FLOTILLA_CONTEXT`, else the current one ([`select_name`]).
//!
//! Also the `flotilla context create|use|ls|inspect|rm` commands. `save_context` is the entry
//! point `flotilla-controller init` uses to write the admin context.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use super::container::print_rows;
use super::format::{self, outln};
use super::template::Template;
use super::Ctx;

/// The message when no context can be found.
pub const NO_CONTEXT: &str =
    "no cluster context: run `flotilla-controller init` on a manager, or `flotilla context create`";

/// What `meta.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default)]
pub struct ContextMeta {
    pub name: String,
    pub description: String,
    /// `host:port` of a manager's control API.
    pub controller: String,
}

/// A context with its TLS material, ready to connect with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedContext {
    pub meta: ContextMeta,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The configuration directory from `$FLOTILLA_CONFIG` and `$HOME` (pure, for tests).
pub fn config_dir_from(
    flotilla_config: Option<OsString>,
    home: Option<OsString>,
) -> anyhow::Result<PathBuf> {
    if let Some(d) = flotilla_config.filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    match home.filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".flotilla")),
        None => anyhow::bail!(
            "cannot find the flotilla configuration directory: neither FLOTILLA_CONFIG nor HOME is set"
        ),
    }
}

/// `$FLOTILLA_CONFIG`, else `~/.flotilla`.
pub fn config_dir() -> anyhow::Result<PathBuf> {
    config_dir_from(
        std::env::var_os("FLOTILLA_CONFIG"),
        std::env::var_os("HOME"),
    )
}

/// Which context to use: the `--context` flag, else `FLOTILLA_CONTEXT`, else the current one.
/// Empty values count as absent.
pub fn select_name(flag: Option<&str>, env: Option<&str>, current: Option<&str>) -> Option<String> {
    [flag, env, current]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .map(str::to_string)
}

/// Docker's rule for context names: a letter or digit, then letters, digits, `_`, `.`, `-`.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let mut c = name.chars();
    let ok = matches!(c.next(), Some(f) if f.is_ascii_alphanumeric())
        && c.all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
        && name.len() <= 64;
    if !ok {
        anyhow::bail!(
            "invalid context name {name:?}: use up to 64 characters from [a-zA-Z0-9_.-], starting with a letter or digit"
        );
    }
    Ok(())
}

fn contexts_dir(config_dir: &Path) -> PathBuf {
    config_dir.join("contexts")
}

fn context_dir(config_dir: &Path, name: &str) -> PathBuf {
    contexts_dir(config_dir).join(name)
}

/// Creates `dir` and its missing parents as 0700 (an existing `dir` is set to 0700).
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))
}

/// Writes `path` atomically with `mode`: a temporary sibling, fsync, rename, fsync of the dir.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; never widen beyond `mode` either.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

fn read_config(config_dir: &Path) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let path = config_dir.join("config.json");
    match std::fs::read(&path) {
        Ok(b) => match serde_json::from_slice::<serde_json::Value>(&b) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => anyhow::bail!("invalid {}: expected a JSON object", path.display()),
            Err(e) => anyhow::bail!("invalid {}: {e}", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The current context's name from `config.json`, if any.
pub fn current_name(config_dir: &Path) -> anyhow::Result<Option<String>> {
    Ok(read_config(config_dir)?
        .get("current_context")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string))
}

/// Sets (or with `None` clears) the current context in `config.json`, keeping its other keys.
pub fn set_current(config_dir: &Path, name: Option<&str>) -> anyhow::Result<()> {
    private_dir(config_dir)?;
    let mut cfg = read_config(config_dir)?;
    match name {
        Some(n) => {
            cfg.insert("current_context".into(), n.into());
        }
        None => {
            cfg.remove("current_context");
        }
    }
    let mut text = serde_json::to_string_pretty(&serde_json::Value::Object(cfg))?;
    text.push('\n');
    write_atomic(&config_dir.join("config.json"), text.as_bytes(), 0o600)
}

/// Writes a context (replacing one of the same name) and, with `make_current`, makes it the
/// current one. Called by `flotilla-controller init` for the admin context.
pub fn save_context(
    config_dir: &Path,
    ctx: &ContextMeta,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    make_current: bool,
) -> anyhow::Result<()> {
    validate_name(&ctx.name)?;
    if ctx.controller.is_empty() {
        anyhow::bail!("context {:?} has no controller address", ctx.name);
    }
    private_dir(config_dir)?;
    private_dir(&contexts_dir(config_dir))?;
    let dir = context_dir(config_dir, &ctx.name);
    private_dir(&dir)?;
    write_atomic(&dir.join("ca.pem"), ca_pem.as_bytes(), 0o644)?;
    write_atomic(&dir.join("cert.pem"), cert_pem.as_bytes(), 0o644)?;
    write_atomic(&dir.join("key.pem"), key_pem.as_bytes(), 0o600)?;
    let mut meta = serde_json::to_string_pretty(ctx)?;
    meta.push('\n');
    write_atomic(&dir.join("meta.json"), meta.as_bytes(), 0o644)?;
    if make_current {
        set_current(config_dir, Some(&ctx.name))?;
    }
    Ok(())
}

/// Whether a context of that name exists.
pub fn exists(config_dir: &Path, name: &str) -> bool {
    context_dir(config_dir, name).join("meta.json").is_file()
}

fn load_meta(config_dir: &Path, name: &str) -> anyhow::Result<ContextMeta> {
    validate_name(name)?;
    let path = context_dir(config_dir, name).join("meta.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("context {name:?} does not exist (list them with `flotilla context ls`)")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut meta: ContextMeta = serde_json::from_slice(&bytes)
        .with_context(|| format!("invalid context file {}", path.display()))?;
    // The directory name is the context's name.
    meta.name = name.to_string();
    Ok(meta)
}

/// Loads a context by name.
pub fn load(config_dir: &Path, name: &str) -> anyhow::Result<LoadedContext> {
    let meta = load_meta(config_dir, name)?;
    let dir = context_dir(config_dir, name);
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "context {name:?} is incomplete: cannot read {}",
                p.display()
            )
        })
    };
    Ok(LoadedContext {
        ca_pem: read("ca.pem")?,
        cert_pem: read("cert.pem")?,
        key_pem: read("key.pem")?,
        meta,
    })
}

/// Loads the current context (`config.json`).
pub fn load_current(config_dir: &Path) -> anyhow::Result<LoadedContext> {
    match current_name(config_dir)? {
        Some(n) => load(config_dir, &n),
        None => anyhow::bail!(NO_CONTEXT),
    }
}

/// The context a command uses: `flag`, else `FLOTILLA_CONTEXT`, else the current one.
pub fn resolve(config_dir: &Path, flag: Option<&str>) -> anyhow::Result<LoadedContext> {
    let env = std::env::var("FLOTILLA_CONTEXT").ok();
    let current = current_name(config_dir)?;
    match select_name(flag, env.as_deref(), current.as_deref()) {
        Some(n) => load(config_dir, &n),
        None => anyhow::bail!(NO_CONTEXT),
    }
}

/// Every complete context, sorted by name.
pub fn list(config_dir: &Path) -> anyhow::Result<Vec<ContextMeta>> {
    let dir = contexts_dir(config_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if validate_name(&name).is_err() || !exists(config_dir, &name) {
            continue;
        }
        out.push(load_meta(config_dir, &name)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes a context; clears the current context when it was this one.
pub fn remove(config_dir: &Path, name: &str) -> anyhow::Result<()> {
    validate_name(name)?;
    if !exists(config_dir, name) {
        anyhow::bail!("context {name:?} does not exist");
    }
    let dir = context_dir(config_dir, name);
    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    if current_name(config_dir)?.as_deref() == Some(name) {
        set_current(config_dir, None)?;
    }
    Ok(())
}

// ------------------------------------------------------------------ commands

const CONTEXT_LONG: &str = "Manage cluster contexts.

A context names a cluster manager (`HOST:PORT` of its control API) and the TLS material to \
talk to it: the cluster CA and an admin certificate with its key. `flotilla-controller init` \
writes one for the new cluster and makes it current. The cluster commands (`cluster`, `node`, \
`service`, `secret`, `config`) use --context NAME, else FLOTILLA_CONTEXT, else the current \
context. Contexts live in $FLOTILLA_CONFIG, else ~/.flotilla.";

/// Context commands.
#[derive(Debug, Subcommand)]
#[command(long_about = CONTEXT_LONG)]
pub enum ContextCmd {
    /// Create a context from a manager address and TLS files
    #[command(after_help = "Examples:
  flotilla context create prod --controller 10.0.0.1:4242 \\
      --ca ca.pem --cert admin.pem --key admin-key.pem --description 'production'
  flotilla context use prod

The first context created becomes the current one.")]
    Create(ContextCreateArgs),
    /// Set the current context
    Use(ContextUseArgs),
    /// List contexts (the current one is marked *)
    #[command(visible_alias = "list")]
    Ls(ContextLsArgs),
    /// Show contexts (JSON; never the key)
    Inspect(ContextInspectArgs),
    /// Remove one or more contexts
    #[command(visible_alias = "remove")]
    Rm(ContextRmArgs),
}

#[derive(Debug, Args)]
pub struct ContextCreateArgs {
    /// Name of the context
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Address of a manager's control API (HOST:PORT)
    #[arg(long, value_name = "HOST:PORT")]
    pub controller: String,
    /// The cluster CA certificate (PEM file)
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// The admin certificate (PEM file)
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// The admin certificate's private key (PEM file)
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// A description shown by `context ls`
    #[arg(long, default_value = "")]
    pub description: String,
}

#[derive(Debug, Args)]
pub struct ContextUseArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ContextLsArgs {
    /// Only display the names
    #[arg(short, long)]
    pub quiet: bool,
    /// Output: table (default), json, or a Go template like '{{.Name}}'
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct ContextInspectArgs {
    /// Format the output with a Go template (e.g. '{{.Controller}}')
    #[arg(short, long)]
    pub format: Option<String>,
    /// Contexts (default: the one in use)
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ContextRmArgs {
    /// Also remove the current context
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// A `context ls` row.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ContextRow {
    pub name: String,
    pub description: String,
    pub controller: String,
    pub current: bool,
}

/// The `context ls` rows, current first marked.
pub fn ls_rows(metas: &[ContextMeta], current: Option<&str>) -> Vec<ContextRow> {
    metas
        .iter()
        .map(|m| ContextRow {
            name: m.name.clone(),
            description: m.description.clone(),
            controller: m.controller.clone(),
            current: Some(m.name.as_str()) == current,
        })
        .collect()
}

const LS_HEADERS: [&str; 3] = ["NAME", "DESCRIPTION", "CONTROLLER"];

/// A `context ls` table row: the current context's name is followed by ` *` (docker's mark).
pub fn ls_cells(r: &ContextRow) -> Vec<String> {
    vec![
        if r.current {
            format!("{} *", r.name)
        } else {
            r.name.clone()
        },
        r.description.clone(),
        r.controller.clone(),
    ]
}

/// `inspect`'s view: the meta, whether current, and where the files are (never the key).
pub fn inspect_view(config_dir: &Path, m: &ContextMeta, current: bool) -> serde_json::Value {
    let dir = context_dir(config_dir, &m.name);
    serde_json::json!({
        "Name": m.name,
        "Description": m.description,
        "Controller": m.controller,
        "Current": current,
        "Storage": dir.display().to_string(),
        "TLS": {
            "CA": dir.join("ca.pem").display().to_string(),
            "Cert": dir.join("cert.pem").display().to_string(),
            "Key": dir.join("key.pem").display().to_string(),
        },
    })
}

/// `HOST:PORT` with a port number (IPv6 hosts in brackets).
pub fn validate_controller(addr: &str) -> anyhow::Result<()> {
    let bad = |why: &str| {
        anyhow::bail!(
            "invalid --controller {addr:?}: {why} (expected HOST:PORT, e.g. 10.0.0.1:4242)"
        )
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad("missing port");
    };
    if host.is_empty() {
        return bad("missing host");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return bad("write IPv6 addresses in brackets");
    }
    if addr.contains("://") || addr.contains('/') {
        return bad("no scheme or path");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => bad("the port must be a number 1-65535"),
    }
}

fn read_pem(path: &Path, what: &str, marker: &str) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    if !s.contains("-----BEGIN ") || !s.contains(marker) {
        anyhow::bail!(
            "{} does not look like a PEM {what} (no \"{marker}\" block)",
            path.display()
        );
    }
    Ok(s)
}

/// Runs a context subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: ContextCmd) -> anyhow::Result<i32> {
    let dir = config_dir()?;
    match cmd {
        ContextCmd::Create(a) => {
            validate_name(&a.name)?;
            validate_controller(&a.controller)?;
            if exists(&dir, &a.name) {
                anyhow::bail!(
                    "context {:?} already exists (remove it first with `flotilla context rm {}`)",
                    a.name,
                    a.name
                );
            }
            let ca = read_pem(&a.ca, "CA certificate", "CERTIFICATE-----")?;
            let cert = read_pem(&a.cert, "certificate", "CERTIFICATE-----")?;
            let key = read_pem(&a.key, "private key", "PRIVATE KEY-----")?;
            let first = current_name(&dir)?.is_none();
            let meta = ContextMeta {
                name: a.name.clone(),
                description: a.description,
                controller: a.controller,
            };
            save_context(&dir, &meta, &ca, &cert, &key, first)?;
            outln(&a.name);
            eprintln!("Successfully created context {:?}", a.name);
            if first {
                eprintln!("Current context is now {:?}", a.name);
            }
            Ok(0)
        }
        ContextCmd::Use(a) => {
            load_meta(&dir, &a.name)?;
            set_current(&dir, Some(&a.name))?;
            outln(&a.name);
            eprintln!("Current context is now {:?}", a.name);
            if let Ok(env) = std::env::var("FLOTILLA_CONTEXT") {
                if !env.is_empty() && env != a.name {
                    eprintln!(
                        "Warning: FLOTILLA_CONTEXT={env} overrides the current context in this shell"
                    );
                }
            }
            Ok(0)
        }
        ContextCmd::Ls(a) => {
            if a.format != "table" && a.format != "json" {
                Template::parse(a.format.strip_prefix("table ").unwrap_or(&a.format))?;
            }
            let metas = list(&dir)?;
            let current = current_name(&dir)?;
            if a.quiet {
                let s: String = metas.iter().map(|m| format!("{}\n", m.name)).collect();
                format::out(&s);
                return Ok(0);
            }
            print_rows(
                &ls_rows(&metas, current.as_deref()),
                &a.format,
                &LS_HEADERS,
                ls_cells,
            )?;
            Ok(0)
        }
        ContextCmd::Inspect(a) => {
            let current = current_name(&dir)?;
            let names = if a.names.is_empty() {
                let env = std::env::var("FLOTILLA_CONTEXT").ok();
                match select_name(ctx.context.as_deref(), env.as_deref(), current.as_deref()) {
                    Some(n) => vec![n],
                    None => anyhow::bail!(NO_CONTEXT),
                }
            } else {
                a.names
            };
            super::container::inspect_each(&names, a.format.as_deref(), |n| {
                let dir = dir.clone();
                let current = current.clone();
                async move {
                    let m = load_meta(&dir, &n)?;
                    Ok(inspect_view(
                        &dir,
                        &m,
                        current.as_deref() == Some(n.as_str()),
                    ))
                }
            })
            .await
        }
        ContextCmd::Rm(a) => {
            let mut code = 0;
            for n in &a.names {
                let current = current_name(&dir)?;
                let result = if current.as_deref() == Some(n.as_str()) && !a.force {
                    Err(anyhow::anyhow!(
                        "context {n:?} is in use: switch with `flotilla context use OTHER`, or remove it with --force"
                    ))
                } else {
                    remove(&dir, n)
                };
                match result {
                    Ok(()) => outln(n),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn meta(name: &str) -> ContextMeta {
        ContextMeta {
            name: name.into(),
            description: "lab".into(),
            controller: "10.0.0.1:4242".into(),
        }
    }

    #[test]
    fn save_load_round_trip_with_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cfg");
        save_context(&dir, &meta("prod"), "CA", "CERT", "KEY", true).unwrap();
        let l = load(&dir, "prod").unwrap();
        assert_eq!(
            l,
            LoadedContext {
                meta: meta("prod"),
                ca_pem: "CA".into(),
                cert_pem: "CERT".into(),
                key_pem: "KEY".into(),
            }
        );
        assert_eq!(load_current(&dir).unwrap(), l);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("contexts")), 0o700);
        assert_eq!(mode(&dir.join("contexts/prod")), 0o700);
        assert_eq!(mode(&dir.join("contexts/prod/key.pem")), 0o600);
        assert_eq!(mode(&dir.join("config.json")), 0o600);
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg, serde_json::json!({"current_context": "prod"}));
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(dir.join("contexts/prod"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");

        // A second context does not take over unless asked; overwriting replaces the files.
        save_context(&dir, &meta("lab"), "CA2", "C2", "K2", false).unwrap();
        assert_eq!(current_name(&dir).unwrap().as_deref(), Some("prod"));
        save_context(&dir, &meta("lab"), "CA3", "C3", "K3", true).unwrap();
        assert_eq!(load_current(&dir).unwrap().ca_pem, "CA3");
        assert_eq!(
            list(&dir)
                .unwrap()
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["lab", "prod"]
        );

        // Other keys of config.json survive.
        std::fs::write(
            dir.join("config.json"),
            r#"{"current_context":"lab","other":1}"#,
        )
        .unwrap();
        set_current(&dir, Some("prod")).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(
            cfg,
            serde_json::json!({"current_context": "prod", "other": 1})
        );

        // Removing the current context clears it.
        remove(&dir, "prod").unwrap();
        assert_eq!(current_name(&dir).unwrap(), None);
        assert_eq!(load_current(&dir).unwrap_err().to_string(), NO_CONTEXT);
        assert!(load(&dir, "prod")
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        assert!(remove(&dir, "prod").is_err());
    }

    #[test]
    fn empty_dir_has_no_context() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(list(tmp.path()).unwrap(), vec![]);
        assert_eq!(
            load_current(tmp.path()).unwrap_err().to_string(),
            NO_CONTEXT
        );
    }

    #[test]
    fn selection_precedence() {
        assert_eq!(
            select_name(Some("a"), Some("b"), Some("c")).as_deref(),
            Some("a")
        );
        assert_eq!(
            select_name(None, Some("b"), Some("c")).as_deref(),
            Some("b")
        );
        assert_eq!(
            select_name(Some(""), Some("b"), Some("c")).as_deref(),
            Some("b")
        );
        assert_eq!(select_name(None, Some(""), Some("c")).as_deref(), Some("c"));
        assert_eq!(select_name(None, None, Some("c")).as_deref(), Some("c"));
        assert_eq!(select_name(None, None, None), None);
    }

    #[test]
    fn resolve_uses_the_flag_over_current() {
        let tmp = tempfile::tempdir().unwrap();
        save_context(tmp.path(), &meta("a"), "A", "A", "A", true).unwrap();
        save_context(tmp.path(), &meta("b"), "B", "B", "B", false).unwrap();
        assert_eq!(resolve(tmp.path(), Some("b")).unwrap().ca_pem, "B");
        assert!(resolve(tmp.path(), Some("zz"))
            .unwrap_err()
            .to_string()
            .contains("\"zz\" does not exist"));
    }

    #[test]
    fn config_dir_choice() {
        assert_eq!(
            config_dir_from(Some("/etc/fl".into()), Some("/home/u".into())).unwrap(),
            PathBuf::from("/etc/fl")
        );
        assert_eq!(
            config_dir_from(Some("".into()), Some("/home/u".into())).unwrap(),
            PathBuf::from("/home/u/.flotilla")
        );
        assert!(config_dir_from(None, None).is_err());
    }

    #[test]
    fn names_and_addresses() {
        for ok in ["prod", "a", "lab-1.eu_west"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        for ok in ["10.0.0.1:4242", "m1:1", "[::1]:4242"] {
            validate_controller(ok).unwrap();
        }
        for bad in ["10.0.0.1", ":4242", "h:0", "::1:4242", "tcp://h:1", "h:x"] {
            assert!(validate_controller(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ls_table_marks_the_current_context() {
        let rows = ls_rows(
            &[
                meta("lab"),
                ContextMeta {
                    name: "prod".into(),
                    description: "".into(),
                    controller: "m1:4242".into(),
                },
            ],
            Some("prod"),
        );
        assert!(rows[1].current && !rows[0].current);
        let body: Vec<Vec<String>> = rows.iter().map(ls_cells).collect();
        assert_eq!(
            format::table(&LS_HEADERS, &body),
            "NAME     DESCRIPTION   CONTROLLER\n\
             lab      lab           10.0.0.1:4242\n\
             prod *                 m1:4242\n"
        );
        let j = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"Name": "prod", "Description": "", "Controller": "m1:4242", "Current": true})
        );
    }
}
