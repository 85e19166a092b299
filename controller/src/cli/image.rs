//! `flotilla image ...` and the shortcuts `pull`, `push`, `images`, `rmi`, `tag`, `load`, `save`,
//! `import`. Pull and push show one progress bar per layer on a terminal (indicatif) and plain
//! status lines otherwise; progress and the final `Digest:`/`Status:` lines go to stderr so that
//! stdout carries only the result (the pulled reference), which scripts can use. Archives
//! stream in 1 MiB chunks from a reader thread; a tar is never read from or written to a
//! terminal.

use std::collections::HashMap;
use std::io::{Read, Write};

use clap::{Args, Subcommand};
use flotilla_proto::agent::v1::{
    import_image_request, pull_image_progress, push_image_progress, DataChunk, ImageDetails,
    ImageSummary, ImportHeader, ImportImageRequest, InspectImageRequest, LayerProgress,
    ListImagesRequest, PullImageRequest, PushImageRequest, RegistryAuth, RemoveImageRequest,
    SaveImageRequest, TagImageRequest,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::client::Agent;
use super::container::{inspect_each, print_rows};
use super::format::{self, outln};
use super::parse::{self, ParseError};
use super::template::Template;
use super::{term, Ctx};

/// Image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Download an image from a registry
    #[command(after_help = "Examples:
  flotilla pull alpine
  flotilla pull ghcr.io/org/app:1.4
  echo \"$TOKEN\" | flotilla pull --username me --password-stdin registry.example.com/app
  flotilla pull --insecure localhost:5000/app:dev")]
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// List images
    #[command(visible_aliases = ["list"], alias = "images")]
    Ls(ImagesArgs),
    /// Remove one or more images
    #[command(visible_aliases = ["rmi", "remove"])]
    Rm(RmiArgs),
    /// Show detailed information on one or more images (JSON)
    Inspect(ImageInspectArgs),
    /// Load images from an OCI archive (tar), from a file or stdin
    Load(LoadArgs),
    /// Save images to an OCI archive (tar), to a file or stdout
    #[command(after_help = "Examples:
  flotilla save -o alpine.tar alpine
  flotilla save alpine nginx | gzip > images.tar.gz")]
    Save(SaveArgs),
    /// Import a root filesystem tarball as a one-layer image
    #[command(after_help = "Examples:
  flotilla import rootfs.tar myimage:1
  tar -C rootfs -c . | flotilla import - myimage:1
  flotilla import -c 'CMD [\"/bin/sh\"]' -c 'ENV LANG=C.UTF-8' rootfs.tar myimage:1")]
    Import(ImportArgs),
    /// Create a tag TARGET that refers to SOURCE
    Tag(TagArgs),
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Use plain HTTP / skip TLS verification for this registry
    #[arg(long)]
    pub insecure: bool,
    /// Registry user name (with --password-stdin)
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,
    /// Read the registry password or token from stdin
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Only print the image reference
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Image reference (NAME[:TAG|@DIGEST])
    #[arg(value_name = "IMAGE")]
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Only print the pushed digest
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Image reference (NAME[:TAG])
    #[arg(value_name = "IMAGE")]
    pub reference: String,
}

#[derive(Debug, Args, Default)]
pub struct ImagesArgs {
    /// Only show image ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Output: table (default), json, or a Go template like '{{.Repository}}:{{.Tag}}'
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Do not truncate ids
    #[arg(long)]
    pub no_trunc: bool,
    /// Show the manifest digests
    #[arg(long)]
    pub digests: bool,
    /// Only images of this repository (and tag)
    #[arg(value_name = "REPOSITORY[:TAG]")]
    pub repository: Option<String>,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Remove even when tagged more than once or used by a stopped container
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImageInspectArgs {
    /// Format the output with a Go template (e.g. '{{.Id}}')
    #[arg(short, long)]
    pub format: Option<String>,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from this archive instead of stdin
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<String>,
    /// Print only the loaded references
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Write to this file instead of stdout
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<String>,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Apply a Dockerfile instruction: CMD, ENTRYPOINT, ENV, EXPOSE, USER, WORKDIR
    #[arg(short, long, value_name = "INSTRUCTION")]
    pub change: Vec<String>,
    /// Root filesystem tarball, or - for stdin
    #[arg(value_name = "FILE|-")]
    pub file: String,
    /// Reference for the new image
    #[arg(value_name = "REFERENCE")]
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    #[arg(value_name = "SOURCE")]
    pub source: String,
    #[arg(value_name = "TARGET")]
    pub target: String,
}

/// Runs an image subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: ImageCmd) -> anyhow::Result<i32> {
    match cmd {
        ImageCmd::Pull(a) => pull(ctx, a).await,
        ImageCmd::Push(a) => push(ctx, a).await,
        ImageCmd::Ls(a) => ls(ctx, a).await,
        ImageCmd::Rm(a) => rmi(ctx, a).await,
        ImageCmd::Inspect(a) => inspect(ctx, a).await,
        ImageCmd::Load(a) => load(ctx, a).await,
        ImageCmd::Save(a) => save(ctx, a).await,
        ImageCmd::Import(a) => import(ctx, a).await,
        ImageCmd::Tag(a) => tag(ctx, a).await,
    }
}

// ------------------------------------------------------------------ progress

/// Docker's wording for a layer's state.
pub fn layer_label(status: &str, push: bool) -> String {
    match (status, push) {
        ("exists", false) => "Already exists".into(),
        ("exists", true) => "Layer already exists".into(),
        ("downloading", _) => "Downloading".into(),
        ("verifying", _) => "Verifying Checksum".into(),
        ("unpacking", _) => "Extracting".into(),
        ("done", false) => "Pull complete".into(),
        ("done", true) | ("pushed", _) => "Pushed".into(),
        ("uploading" | "pushing", _) => "Pushing".into(),
        (other, _) => {
            let mut c = other.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect(),
                None => "Waiting".into(),
            }
        }
    }
}

fn is_final(status: &str) -> bool {
    matches!(status, "exists" | "done" | "pushed")
}

/// Per-layer progress: bars on a terminal, one line per state change otherwise.
struct Progress {
    push: bool,
    quiet: bool,
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    last: HashMap<String, String>,
    transferred: bool,
}

impl Progress {
    fn new(push: bool, quiet: bool) -> Self {
        let multi = (!quiet && term::stderr_is_tty())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress {
            push,
            quiet,
            multi,
            bars: HashMap::new(),
            last: HashMap::new(),
            transferred: false,
        }
    }

    fn line(&self, s: &str) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(m) => {
                let _ = m.println(s);
            }
            None => eprintln!("{s}"),
        }
    }

    fn layer(&mut self, l: &LayerProgress) {
        if !matches!(l.status.as_str(), "exists" | "done" | "pushed" | "") {
            self.transferred = true;
        }
        if l.status == "done" || l.status == "pushed" {
            self.transferred = true;
        }
        if self.quiet {
            return;
        }
        let short = format::short_id(&l.digest);
        let label = layer_label(&l.status, self.push);
        let Some(multi) = &self.multi else {
            if self.last.get(&l.digest) != Some(&label) {
                eprintln!("{short}: {label}");
                self.last.insert(l.digest.clone(), label);
            }
            return;
        };
        let with_bar = !is_final(&l.status) && l.total > 0;
        let style = if with_bar {
            ProgressStyle::with_template("{prefix}: {msg:<18} [{bar:40}] {bytes}/{total_bytes}")
        } else {
            ProgressStyle::with_template("{prefix}: {msg}")
        }
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = self.bars.entry(l.digest.clone()).or_insert_with(|| {
            multi.add(
                ProgressBar::new(l.total.max(1))
                    .with_style(style.clone())
                    .with_prefix(short.clone())
                    .with_message(label.clone()),
            )
        });
        bar.set_style(style);
        if with_bar {
            bar.set_length(l.total);
            bar.set_position(l.current.min(l.total));
        }
        if is_final(&l.status) {
            bar.finish_with_message(label);
        } else {
            bar.set_message(label);
        }
    }

    /// Finishes every bar (they stay on screen) and stops drawing, so later lines go below them.
    fn finish(&mut self) {
        for b in self.bars.values() {
            if !b.is_finished() {
                b.finish();
            }
        }
        self.bars.clear();
        self.multi = None;
    }
}

fn auth(r: &RegistryArgs) -> anyhow::Result<Option<RegistryAuth>> {
    match (&r.username, r.password_stdin) {
        (None, false) => Ok(None),
        (None, true) => anyhow::bail!("--password-stdin needs --username"),
        (Some(_), false) => anyhow::bail!(
            "--username needs --password-stdin (echo \"$TOKEN\" | flotilla pull --username USER --password-stdin IMAGE)"
        ),
        (Some(u), true) => {
            if term::stdin_is_tty() {
                eprint!("Password: ");
            }
            let mut p = String::new();
            std::io::stdin()
                .read_to_string(&mut p)
                .map_err(|e| anyhow::anyhow!("reading the password from stdin: {e}"))?;
            let p = p.trim_end_matches(['\n', '\r']).to_string();
            if p.is_empty() {
                anyhow::bail!("the password read from stdin is empty");
            }
            Ok(Some(RegistryAuth { username: u.clone(), password: p }))
        }
    }
}

async fn pull(ctx: &Ctx, a: PullArgs) -> anyhow::Result<i32> {
    let auth = auth(&a.registry)?;
    let agent = ctx.agent().await?;
    let reference =
        pull_with_progress(&agent, &a.reference, auth, a.registry.insecure, a.quiet).await?;
    outln(&reference);
    Ok(0)
}

/// Pulls an image showing docker's progress on stderr (nothing when `quiet`); returns the
/// fully-qualified reference. Also used by `run`/`create` for missing images.
pub async fn pull_with_progress(
    agent: &Agent,
    reference: &str,
    auth: Option<RegistryAuth>,
    insecure: bool,
    quiet: bool,
) -> anyhow::Result<String> {
    let mut stream = agent
        .images()
        .pull(PullImageRequest {
            reference: reference.to_string(),
            auth,
            insecure,
        })
        .await
        .map_err(|s| agent.err(s))?
        .into_inner();
    let mut p = Progress::new(false, quiet);
    let mut done: Option<ImageSummary> = None;
    let mut resolved_digest = String::new();
    loop {
        let msg = match stream.message().await {
            Ok(m) => m,
            Err(s) => {
                p.finish();
                return Err(agent.err(s));
            }
        };
        let Some(msg) = msg else { break };
        match msg.event {
            Some(pull_image_progress::Event::Resolved(r)) => {
                let (_, tag) = format::split_reference(&r.reference);
                p.line(&format!("{tag}: Pulling from {}", repo_path(&r.reference)));
                resolved_digest = r.manifest_digest;
            }
            Some(pull_image_progress::Event::Layer(l)) => p.layer(&l),
            Some(pull_image_progress::Event::Done(s)) => done = Some(s),
            None => {}
        }
    }
    p.finish();
    let Some(s) = done else {
        anyhow::bail!("the agent ended the pull of {reference} without a result");
    };
    let digest = if s.manifest_digest.is_empty() {
        resolved_digest
    } else {
        s.manifest_digest.clone()
    };
    let full = if s.reference.is_empty() {
        reference.to_string()
    } else {
        s.reference.clone()
    };
    if !quiet {
        if !digest.is_empty() {
            p.line(&format!("Digest: {digest}"));
        }
        let fam = format::familiar_reference(&full);
        if p.transferred {
            p.line(&format!("Status: Downloaded newer image for {fam}"));
        } else {
            p.line(&format!("Status: Image is up to date for {fam}"));
        }
    }
    Ok(full)
}

async fn push(ctx: &Ctx, a: PushArgs) -> anyhow::Result<i32> {
    let auth = auth(&a.registry)?;
    let agent = ctx.agent().await?;
    let mut stream = agent
        .images()
        .push(PushImageRequest {
            reference: a.reference.clone(),
            auth,
            insecure: a.registry.insecure,
        })
        .await
        .map_err(|s| agent.err(s))?
        .into_inner();
    let mut p = Progress::new(true, a.quiet);
    let (repo, _) = format::split_reference(&a.reference);
    p.line(&format!("The push refers to repository [{repo}]"));
    let mut digest = None;
    loop {
        let msg = match stream.message().await {
            Ok(m) => m,
            Err(s) => {
                p.finish();
                return Err(agent.err(s));
            }
        };
        let Some(msg) = msg else { break };
        match msg.event {
            Some(push_image_progress::Event::Layer(l)) => p.layer(&l),
            Some(push_image_progress::Event::Done(d)) => digest = Some(d),
            None => {}
        }
    }
    p.finish();
    let Some(d) = digest else {
        anyhow::bail!(
            "the agent ended the push of {} without a result",
            a.reference
        );
    };
    let (_, tag) = format::split_reference(if d.reference.is_empty() {
        &a.reference
    } else {
        &d.reference
    });
    if a.quiet {
        outln(&d.digest);
    } else {
        outln(&format!("{tag}: digest: {}", d.digest));
    }
    Ok(0)
}

/// The repository path without the registry, as docker's "Pulling from" line shows it:
/// `docker.io/library/alpine:3` -> `library/alpine`, `127.0.0.1:5000/app:1` -> `app`.
pub fn repo_path(reference: &str) -> String {
    let name = reference.split('@').next().unwrap_or(reference);
    let name = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    };
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            rest.to_string()
        }
        Some(_) => name.to_string(),
        None => format!("library/{name}"),
    }
}

// ------------------------------------------------------------------ ls / rm / tag / inspect

/// One `images` row (docker's keys for templates and JSON).
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageRow {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub created_at: String,
    pub created_since: String,
    pub size: String,
    pub containers: u32,
}

/// The `images` row of an image.
pub fn image_row(i: &ImageSummary, now: i64, no_trunc: bool) -> ImageRow {
    let (repository, tag) = format::split_reference(&i.reference);
    let created = parse::parse_rfc3339(&i.created);
    ImageRow {
        repository,
        tag,
        digest: if i.manifest_digest.is_empty() {
            "<none>".into()
        } else {
            i.manifest_digest.clone()
        },
        id: if no_trunc {
            i.id.clone()
        } else {
            format::short_id(&i.id)
        },
        created_at: i.created.clone(),
        created_since: created
            .map(|t| format::ago(t, now))
            .unwrap_or_else(|| "N/A".into()),
        size: format::human_size(i.size),
        containers: i.containers,
    }
}

/// Whether an image matches `images REPOSITORY[:TAG]`.
pub fn image_matches(i: &ImageSummary, want: &str) -> bool {
    let (repo, tag) = format::split_reference(&i.reference);
    let (wrepo, wtag) = format::split_reference(want);
    repo == wrepo && (wtag == "<none>" || tag == wtag)
}

async fn ls(ctx: &Ctx, a: ImagesArgs) -> anyhow::Result<i32> {
    if a.format != "table" && a.format != "json" {
        Template::parse(&a.format)?;
    }
    let agent = ctx.agent().await?;
    let mut images = agent
        .images()
        .list(ListImagesRequest {})
        .await
        .map_err(|s| agent.err(s))?
        .into_inner()
        .images;
    if let Some(r) = &a.repository {
        images.retain(|i| image_matches(i, r));
    }
    images.sort_by(|x, y| {
        let tx = parse::parse_rfc3339(&x.created).unwrap_or(0);
        let ty = parse::parse_rfc3339(&y.created).unwrap_or(0);
        ty.cmp(&tx).then(x.reference.cmp(&y.reference))
    });
    if a.quiet {
        let mut seen = std::collections::HashSet::new();
        let mut s = String::new();
        for i in &images {
            let id = if a.no_trunc {
                i.id.clone()
            } else {
                format::short_id(&i.id)
            };
            if seen.insert(id.clone()) {
                s.push_str(&id);
                s.push('\n');
            }
        }
        format::out(&s);
        return Ok(0);
    }
    let now = format::now_ns();
    let rows: Vec<ImageRow> = images
        .iter()
        .map(|i| image_row(i, now, a.no_trunc))
        .collect();
    let mut headers = vec!["REPOSITORY", "TAG"];
    if a.digests {
        headers.push("DIGEST");
    }
    headers.extend(["IMAGE ID", "CREATED", "SIZE"]);
    print_rows(&rows, &a.format, &headers, |r| {
        let mut v = vec![r.repository.clone(), r.tag.clone()];
        if a.digests {
            v.push(r.digest.clone());
        }
        v.extend([r.id.clone(), r.created_since.clone(), r.size.clone()]);
        v
    })?;
    Ok(0)
}

async fn rmi(ctx: &Ctx, a: RmiArgs) -> anyhow::Result<i32> {
    let agent = ctx.agent().await?;
    let mut code = 0;
    for i in &a.images {
        match agent
            .images()
            .remove(RemoveImageRequest {
                reference: i.clone(),
                force: a.force,
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                let mut s = String::new();
                for u in &r.untagged {
                    s.push_str(&format!("Untagged: {}\n", format::familiar_reference(u)));
                }
                for d in &r.deleted {
                    s.push_str(&format!("Deleted: {d}\n"));
                }
                format::out(&s);
            }
            Err(s) => {
                eprintln!("Error: {}", agent.err(s));
                code = 1;
            }
        }
    }
    Ok(code)
}

async fn tag(ctx: &Ctx, a: TagArgs) -> anyhow::Result<i32> {
    let agent = ctx.agent().await?;
    agent
        .images()
        .tag(TagImageRequest {
            source: a.source,
            target: a.target,
        })
        .await
        .map_err(|s| agent.err(s))?;
    Ok(0)
}

/// `image inspect` in docker's shape: Id, RepoTags, RepoDigests, Created, Size, Architecture,
/// Os, Config (the image config's `config`), RootFS.
pub fn image_view(d: &ImageDetails) -> serde_json::Value {
    let s = d.summary.clone().unwrap_or_default();
    let cfg: serde_json::Value =
        serde_json::from_str(&d.config_json).unwrap_or(serde_json::Value::Null);
    let (repo, tag) = format::split_reference(&s.reference);
    let repo_tags: Vec<String> = if tag == "<none>" {
        vec![]
    } else {
        vec![format!("{repo}:{tag}")]
    };
    let repo_digests: Vec<String> = if s.manifest_digest.is_empty() || repo == "<none>" {
        vec![]
    } else {
        vec![format!("{repo}@{}", s.manifest_digest)]
    };
    let mut config = cfg.get("config").cloned().unwrap_or(serde_json::json!({}));
    if let Some(obj) = config.as_object_mut() {
        if !d.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, serde_json::Value> = d
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), serde_json::json!({})))
                .collect();
            obj.insert("ExposedPorts".into(), ports.into());
        }
    }
    serde_json::json!({
        "Id": s.id,
        "RepoTags": repo_tags,
        "RepoDigests": repo_digests,
        "Created": if s.created.is_empty() { cfg.get("created").cloned().unwrap_or_default() } else { s.created.clone().into() },
        "Size": s.size,
        "Architecture": cfg.get("architecture").cloned().unwrap_or_default(),
        "Os": cfg.get("os").cloned().unwrap_or_default(),
        "Config": config,
        "RootFS": {"Type": "layers", "Layers": d.layers},
        "Containers": s.containers,
    })
}

async fn inspect(ctx: &Ctx, a: ImageInspectArgs) -> anyhow::Result<i32> {
    let agent = ctx.agent().await?;
    inspect_each(&a.images, a.format.as_deref(), |r| {
        let agent = agent.clone();
        async move {
            let d = agent
                .images()
                .inspect(InspectImageRequest { reference: r })
                .await
                .map_err(|s| agent.err(s))?
                .into_inner();
            Ok(image_view(&d))
        }
    })
    .await
}

// ------------------------------------------------------------------ archives

const CHUNK: usize = 1024 * 1024;

/// Reads `src` (a file, or stdin for None) on a thread, sending chunks built by `mk`; the
/// handle yields the read error, if any, after the stream ends.
fn spawn_reader<T: Send + 'static>(
    src: Option<String>,
    tx: mpsc::Sender<T>,
    mk: fn(Vec<u8>) -> T,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let (mut r, name): (Box<dyn Read>, String) = match &src {
            Some(p) => (
                Box::new(std::fs::File::open(p).map_err(|e| anyhow::anyhow!("opening {p}: {e}"))?),
                p.clone(),
            ),
            None => (Box::new(std::io::stdin()), "stdin".into()),
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => anyhow::bail!("reading {name}: {e}"),
            };
            if tx.blocking_send(mk(buf[..n].to_vec())).is_err() {
                return Ok(());
            }
        }
    })
}

fn reader_result(h: std::thread::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    h.join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the archive reader panicked")))
}

fn refuse_tty_input(file: Option<&str>, flag: &str) -> anyhow::Result<()> {
    if file.is_none() && term::stdin_is_tty() {
        anyhow::bail!(
            "refusing to read an archive from a terminal: use {flag} or redirect stdin from a file"
        );
    }
    Ok(())
}

async fn load(ctx: &Ctx, a: LoadArgs) -> anyhow::Result<i32> {
    refuse_tty_input(a.input.as_deref(), "-i FILE")?;
    if let Some(p) = &a.input {
        std::fs::metadata(p).map_err(|e| anyhow::anyhow!("opening {p}: {e}"))?;
    }
    let agent = ctx.agent().await?;
    let (tx, rx) = mpsc::channel::<DataChunk>(4);
    let reader = spawn_reader(a.input.clone(), tx, |data| DataChunk { data });
    let result = agent.images().load(ReceiverStream::new(rx)).await;
    let read = reader_result(reader);
    let resp = match result {
        Ok(r) => r.into_inner(),
        Err(s) => {
            read?;
            return Err(agent.err(s));
        }
    };
    read?;
    let mut s = String::new();
    for i in &resp.images {
        if i.reference.is_empty() {
            s.push_str(&format!("Loaded image ID: {}\n", i.id));
        } else if a.quiet {
            s.push_str(&format!("{}\n", i.reference));
        } else {
            s.push_str(&format!(
                "Loaded image: {}\n",
                format::familiar_reference(&i.reference)
            ));
        }
    }
    format::out(&s);
    Ok(0)
}

async fn save(ctx: &Ctx, a: SaveArgs) -> anyhow::Result<i32> {
    if a.output.is_none() && term::stdout_is_tty() {
        anyhow::bail!(
            "refusing to write a tar archive to a terminal: use -o FILE or redirect stdout"
        );
    }
    let agent = ctx.agent().await?;
    let mut stream = agent
        .images()
        .save(SaveImageRequest {
            references: a.images.clone(),
        })
        .await
        .map_err(|s| agent.err(s))?
        .into_inner();
    // To a file: write next to it and rename at the end, so a failure leaves no half archive.
    let (mut w, partial): (Box<dyn Write>, Option<(String, String)>) = match &a.output {
        Some(p) => {
            let path = std::path::Path::new(p);
            let tmp = path.with_file_name(format!(
                ".{}.partial",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            let tmp = tmp.to_string_lossy().into_owned();
            let f =
                std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("creating {p}: {e}"))?;
            (Box::new(std::io::BufWriter::new(f)), Some((tmp, p.clone())))
        }
        None => (Box::new(std::io::stdout().lock()), None),
    };
    let result: anyhow::Result<()> = async {
        while let Some(c) = stream.message().await.map_err(|s| agent.err(s))? {
            w.write_all(&c.data)
                .map_err(|e| anyhow::anyhow!("writing the archive: {e}"))?;
        }
        w.flush()
            .map_err(|e| anyhow::anyhow!("writing the archive: {e}"))?;
        Ok(())
    }
    .await;
    drop(w);
    match (result, partial) {
        (Ok(()), Some((tmp, dst))) => {
            std::fs::rename(&tmp, &dst)
                .map_err(|e| anyhow::anyhow!("renaming {tmp} to {dst}: {e}"))?;
            Ok(0)
        }
        (Ok(()), None) => Ok(0),
        (Err(e), partial) => {
            if let Some((tmp, _)) = partial {
                let _ = std::fs::remove_file(tmp);
            }
            Err(e)
        }
    }
}

const CHANGES: &[&str] = &["CMD", "ENTRYPOINT", "ENV", "EXPOSE", "USER", "WORKDIR"];

/// Checks an `import -c` instruction: one of CMD, ENTRYPOINT, ENV, EXPOSE, USER, WORKDIR with an
/// argument; the keyword is upper-cased.
pub fn check_change(c: &str) -> Result<String, ParseError> {
    let t = c.trim();
    // `KEY VALUE` (Dockerfile style) or `KEY=VALUE` (what flotilla-agent image import takes).
    let (kw, rest) = t
        .split_once(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or((t, ""));
    let up = kw.to_ascii_uppercase();
    if !CHANGES.contains(&up.as_str()) {
        return Err(ParseError(format!(
            "invalid --change {c:?}: {kw:?} is not supported (one of {})",
            CHANGES.join(", ")
        )));
    }
    if rest.trim().is_empty() {
        return Err(ParseError(format!(
            "invalid --change {c:?}: {up} needs an argument"
        )));
    }
    Ok(format!("{up} {}", rest.trim()))
}

async fn import(ctx: &Ctx, a: ImportArgs) -> anyhow::Result<i32> {
    let changes = a
        .change
        .iter()
        .map(|c| check_change(c))
        .collect::<Result<Vec<_>, _>>()?;
    let file = (a.file != "-").then(|| a.file.clone());
    refuse_tty_input(file.as_deref(), "a FILE")?;
    if let Some(p) = &file {
        std::fs::metadata(p).map_err(|e| anyhow::anyhow!("opening {p}: {e}"))?;
    }
    let agent = ctx.agent().await?;
    let (tx, rx) = mpsc::channel::<ImportImageRequest>(4);
    tx.send(ImportImageRequest {
        part: Some(import_image_request::Part::Header(ImportHeader {
            reference: a.reference.clone().unwrap_or_default(),
            changes,
        })),
    })
    .await
    .map_err(|_| anyhow::anyhow!("import stream closed"))?;
    let reader = spawn_reader(file, tx, |data| ImportImageRequest {
        part: Some(import_image_request::Part::Data(data)),
    });
    let result = agent.images().import(ReceiverStream::new(rx)).await;
    let read = reader_result(reader);
    let s = match result {
        Ok(r) => r.into_inner(),
        Err(s) => {
            read?;
            return Err(agent.err(s));
        }
    };
    read?;
    outln(&s.id);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(layer_label("exists", false), "Already exists");
        assert_eq!(layer_label("exists", true), "Layer already exists");
        assert_eq!(layer_label("downloading", false), "Downloading");
        assert_eq!(layer_label("verifying", false), "Verifying Checksum");
        assert_eq!(layer_label("unpacking", false), "Extracting");
        assert_eq!(layer_label("done", false), "Pull complete");
        assert_eq!(layer_label("done", true), "Pushed");
        assert_eq!(layer_label("pushed", true), "Pushed");
        assert_eq!(layer_label("waiting", false), "Waiting");
        assert_eq!(layer_label("", false), "Waiting");
    }

    fn img(reference: &str, created: &str, size: u64) -> ImageSummary {
        ImageSummary {
            id: "sha256:4048db5d36726e313ab8f7ffccf2362a34cba69e4cdd49119713483a68641fce".into(),
            reference: reference.into(),
            manifest_digest: "sha256:beef".into(),
            size,
            created: created.into(),
            containers: 0,
        }
    }

    #[test]
    fn rows() {
        let now = parse::parse_rfc3339("2026-11-28T10:00:00Z").unwrap();
        let r = image_row(
            &img(
                "docker.io/library/alpine:3.20",
                "2026-11-14T10:00:00Z",
                3_600_000,
            ),
            now,
            false,
        );
        assert_eq!(
            r,
            ImageRow {
                repository: "alpine".into(),
                tag: "3.20".into(),
                digest: "sha256:beef".into(),
                id: "4048db5d3672".into(),
                created_at: "2026-11-14T10:00:00Z".into(),
                created_since: "2 weeks ago".into(),
                size: "3.6MB".into(),
                containers: 0,
            }
        );
        let r = image_row(&img("", "", 0), now, true);
        assert_eq!(
            (r.repository.as_str(), r.tag.as_str()),
            ("<none>", "<none>")
        );
        assert_eq!(r.created_since, "N/A");
        assert_eq!(r.id.len(), 71);
    }

    #[test]
    fn repository_filter() {
        let i = img("docker.io/library/alpine:3.20", "", 0);
        assert!(image_matches(&i, "alpine"));
        assert!(image_matches(&i, "alpine:3.20"));
        assert!(image_matches(&i, "docker.io/library/alpine"));
        assert!(!image_matches(&i, "alpine:3.19"));
        assert!(!image_matches(&i, "nginx"));
        let j = img("localhost:5000/app:dev", "", 0);
        assert!(image_matches(&j, "localhost:5000/app"));
        assert!(image_matches(&j, "localhost:5000/app:dev"));
        assert!(!image_matches(&j, "app"));
    }

    #[test]
    fn inspect_view_shape() {
        let d = ImageDetails {
            summary: Some(img("docker.io/library/alpine:3.20", "2026-11-14T10:00:00Z", 10)),
            config_json: r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"],"Env":["PATH=/bin"]}}"#.into(),
            layers: vec!["sha256:aaa".into()],
            exposed_ports: vec!["80/tcp".into()],
        };
        let v = image_view(&d);
        assert_eq!(v["RepoTags"][0], "alpine:3.20");
        assert_eq!(v["RepoDigests"][0], "alpine@sha256:beef");
        assert_eq!(v["Architecture"], "amd64");
        assert_eq!(v["Config"]["Cmd"][0], "/bin/sh");
        assert_eq!(v["Config"]["ExposedPorts"]["80/tcp"], serde_json::json!({}));
        assert_eq!(v["RootFS"]["Layers"][0], "sha256:aaa");
        let v = image_view(&ImageDetails {
            config_json: "not json".into(),
            ..Default::default()
        });
        assert_eq!(v["RepoTags"], serde_json::json!([]));
        assert_eq!(v["Config"], serde_json::json!({}));
    }

    #[test]
    fn repo_paths() {
        assert_eq!(repo_path("docker.io/library/alpine:3.20"), "library/alpine");
        assert_eq!(
            repo_path("docker.io/bitnami/redis@sha256:abc"),
            "bitnami/redis"
        );
        assert_eq!(repo_path("127.0.0.1:5055/bb:1"), "bb");
        assert_eq!(repo_path("localhost/team/app"), "team/app");
        assert_eq!(repo_path("ghcr.io/org/app:v1"), "org/app");
        assert_eq!(repo_path("alpine"), "library/alpine");
    }

    #[test]
    fn changes() {
        assert_eq!(
            check_change("cmd [\"/bin/sh\"]").unwrap(),
            "CMD [\"/bin/sh\"]"
        );
        assert_eq!(check_change("ENV  A=1").unwrap(), "ENV A=1");
        assert_eq!(check_change("WORKDIR /app").unwrap(), "WORKDIR /app");
        assert_eq!(check_change("ENV=A=1").unwrap(), "ENV A=1");
        assert_eq!(
            check_change("CMD=[\"/bin/sh\"]").unwrap(),
            "CMD [\"/bin/sh\"]"
        );
        assert!(check_change("RUN make")
            .unwrap_err()
            .0
            .contains("\"RUN\" is not supported"));
        assert!(check_change("USER")
            .unwrap_err()
            .0
            .contains("USER needs an argument"));
        assert!(check_change("").unwrap_err().0.contains("not supported"));
    }
}
