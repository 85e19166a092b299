//! Pure parsers for the CLI's flag values, written to accept what docker accepts: sizes (`64m`),
//! Go-style durations (`1m30s`), published ports (`127.0.0.1:8080:80/tcp`, ranges), `-v`/`--mount`/
//! `--tmpfs` specs, env files, ulimits, restart policies, `--cpus`, labels, `--add-host`, and the
//! `--since` timestamps of `logs`/`events`. No I/O here (env look-ups and the working directory
//! are passed in), so every rule is unit-tested below; errors quote the input and say what is
//! expected. Hand-written because docker's grammars are small and no crate implements them.

use std::net::IpAddr;
use std::time::Duration;

use flotilla_proto::agent::v1::{mount, Mount, PortBinding, RestartPolicy, Ulimit};

/// A flag value the user typed that we cannot use; the message is shown as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

// ------------------------------------------------------------------ sizes

/// A byte size like docker's `--memory`: a decimal number with an optional unit `b`, `k`, `m`,
/// `g`, `t`, `p` (binary multiples, case-insensitive, optionally followed by `i` and/or `b`:
/// `64m`, `64MiB`, `1.5g`, `512`).
pub fn parse_size(s: &str) -> Result<i64, ParseError> {
    let bad = |why: &str| {
        err(format!(
            "invalid size {s:?}: {why} (expected a number with an optional unit b, k, m, g, t, e.g. 64m)"
        ))
    };
    let t = s.trim();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, rest) = t.split_at(num_end);
    if num.is_empty() {
        return if t.starts_with('-') {
            bad("must not be negative")
        } else {
            bad("no number")
        };
    }
    let value: f64 = match num.parse() {
        Ok(v) => v,
        Err(_) => return bad("not a number"),
    };
    let unit = rest.trim_start().to_ascii_lowercase();
    let mut chars = unit.chars().peekable();
    let mult: f64 = match chars.peek() {
        Some('k') => 1024f64,
        Some('m') => 1024f64.powi(2),
        Some('g') => 1024f64.powi(3),
        Some('t') => 1024f64.powi(4),
        Some('p') => 1024f64.powi(5),
        _ => 1.0,
    };
    if mult > 1.0 {
        chars.next();
        if chars.peek() == Some(&'i') {
            chars.next();
        }
    }
    if chars.peek() == Some(&'b') {
        chars.next();
    }
    if chars.next().is_some() {
        return bad(&format!("unknown unit {:?}", rest.trim()));
    }
    let bytes = value * mult;
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return bad("too large");
    }
    Ok(bytes as i64)
}

/// `--memory-swap`: a size, or `-1` for unlimited swap.
pub fn parse_memory_swap(s: &str) -> Result<i64, ParseError> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    parse_size(s)
}

// ------------------------------------------------------------------ durations

/// Swarm's minimum `--cert-expiry`: shorter validities renew so often that a short outage of the
/// managers leaves nodes with expired certificates.
pub const MIN_CERT_EXPIRY: Duration = Duration::from_secs(3600);

/// `30s`, `45m`, `720h`, `90d` (one number, one unit).
pub fn parse_cert_expiry(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid certificate validity {s:?}: give a number and a unit s, m, h or d, e.g. 90d or 720h")
    };
    let i = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = s.split_at(i);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(24 * 3600),
        _ => return Err(bad()),
    }
    .ok_or_else(bad)?;
    let d = Duration::from_secs(secs);
    if d > flotilla_pki::ROOT_CA_VALIDITY {
        return Err(format!(
            "certificate validity {s:?} is longer than the root CA's (20 years)"
        ));
    }
    Ok(d)
}

/// A Go `time.ParseDuration` string: `300ms`, `1.5h`, `2h45m`, `10s`; units ns, us (µs), ms, s,
/// m, h. `0` alone is zero. Negative durations are refused: no flag wants one.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let bad = |why: &str| {
        err(format!(
            "invalid duration {s:?}: {why} (expected e.g. 30s, 1m30s, 500ms, 2h)"
        ))
    };
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return bad("empty");
    }
    if t.starts_with('-') {
        return bad("must not be negative");
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let mut rest = t;
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 {
            return bad("expected a number");
        }
        let value: f64 = match rest[..n].parse() {
            Ok(v) => v,
            Err(_) => return bad(&format!("{:?} is not a number", &rest[..n])),
        };
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..u];
        rest = &rest[u..];
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return bad("missing unit"),
            other => return bad(&format!("unknown unit {other:?}")),
        };
        total += value * scale;
    }
    if total > u64::MAX as f64 {
        return bad("too large");
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// Nanoseconds of a duration flag, as the proto's `int64 *_ns` fields want them.
pub fn parse_duration_ns(s: &str) -> Result<i64, ParseError> {
    let d = parse_duration(s)?;
    i64::try_from(d.as_nanos()).or_else(|_| err(format!("invalid duration {s:?}: too large")))
}

// ------------------------------------------------------------------ ports

fn parse_port_range(s: &str, what: &str, spec: &str) -> Result<(u32, u32), ParseError> {
    let one = |p: &str| -> Result<u32, ParseError> {
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n),
            _ => err(format!(
                "invalid port spec {spec:?}: {what} must be a number 1-65535"
            )),
        }
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if b < a {
                return err(format!(
                    "invalid port spec {spec:?}: {what} range {s} ends before it starts"
                ));
            }
            Ok((a, b))
        }
        None => {
            let p = one(s)?;
            Ok((p, p))
        }
    }
}

fn parse_protocol(p: &str, spec: &str) -> Result<String, ParseError> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Ok("tcp".into()),
        "udp" => Ok("udp".into()),
        _ => err(format!(
            "invalid port spec {spec:?}: protocol must be tcp or udp, not {p:?}"
        )),
    }
}

/// `-p/--publish [hostip:][hostport:]containerport[/tcp|udp]`, with ranges on both ports
/// (`8000-8002:80-82`, which expands to three bindings). IPv6 host addresses go in brackets
/// (`[::1]:8080:80`). An empty or absent host port lets the agent pick a free one.
pub fn parse_publish(spec: &str) -> Result<Vec<PortBinding>, ParseError> {
    let s = spec.trim();
    if s.is_empty() {
        return err("invalid port spec \"\": expected [hostip:][hostport:]containerport[/proto]");
    }
    let (s, proto) = match s.rsplit_once('/') {
        Some((a, p)) => (a, parse_protocol(p, spec)?),
        None => (s, "tcp".to_string()),
    };
    // Split off a bracketed IPv6 address first; the rest splits on ':'.
    let (ip, rest) = if let Some(r) = s.strip_prefix('[') {
        let Some((addr, after)) = r.split_once(']') else {
            return err(format!(
                "invalid port spec {spec:?}: missing ']' after the IPv6 address"
            ));
        };
        let Some(after) = after.strip_prefix(':') else {
            return err(format!(
                "invalid port spec {spec:?}: expected ':' after the host address"
            ));
        };
        (Some(addr.to_string()), after.to_string())
    } else {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.len() {
            1 | 2 => (None, s.to_string()),
            3 => (Some(parts[0].to_string()), format!("{}:{}", parts[1], parts[2])),
            _ => {
                return err(format!(
                "invalid port spec {spec:?}: too many ':' (write IPv6 host addresses in brackets, e.g. [::1]:8080:80)"
            ))
            }
        }
    };
    if let Some(ip) = &ip {
        if !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
            return err(format!(
                "invalid port spec {spec:?}: host address {ip:?} is not an IP address"
            ));
        }
    }
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (h, c),
        None if ip.is_some() => {
            return err(format!(
                "invalid port spec {spec:?}: expected hostip:hostport:containerport"
            ))
        }
        None => ("", rest.as_str()),
    };
    if container.is_empty() {
        return err(format!(
            "invalid port spec {spec:?}: container port must be a number 1-65535"
        ));
    }
    let (c0, c1) = parse_port_range(container, "container port", spec)?;
    let host_range = if host.is_empty() {
        None
    } else {
        Some(parse_port_range(host, "host port", spec)?)
    };
    if let Some((h0, h1)) = host_range {
        if h1 - h0 != c1 - c0 {
            return err(format!(
                "invalid port spec {spec:?}: the host port range and the container port range must have the same size"
            ));
        }
    }
    let host_ip = ip.unwrap_or_default();
    Ok((c0..=c1)
        .enumerate()
        .map(|(i, cp)| PortBinding {
            host_ip: host_ip.clone(),
            host_port: host_range.map(|(h0, _)| h0 + i as u32).unwrap_or(0),
            container_port: cp,
            protocol: proto.clone(),
        })
        .collect())
}

/// `--expose 80`, `--expose 8000-8002/udp` -> `["80/tcp"]`, `["8000/udp", "8001/udp", ...]`.
pub fn parse_expose(spec: &str) -> Result<Vec<String>, ParseError> {
    let s = spec.trim();
    let (ports, proto) = match s.rsplit_once('/') {
        Some((a, p)) => (a, parse_protocol(p, spec)?),
        None => (s, "tcp".to_string()),
    };
    let (a, b) = parse_port_range(ports, "port", spec)?;
    Ok((a..=b).map(|p| format!("{p}/{proto}")).collect())
}

// ------------------------------------------------------------------ volumes and mounts

fn valid_volume_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric())
        && c.all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
}

fn resolve_host_path(p: &str, cwd: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        let rel = p.strip_prefix("./").unwrap_or(p);
        let base = cwd.trim_end_matches('/');
        if rel == "." {
            base.to_string()
        } else {
            format!("{base}/{rel}")
        }
    }
}

/// `-v/--volume`: `name:/path[:opts]` (named volume), `/host:/path[:opts]` or `./rel:/path`
/// (bind, relative paths resolved against `cwd`), `/path` alone (anonymous volume). Options,
/// comma separated: `ro`, `rw`; SELinux `z`/`Z` are accepted and ignored.
pub fn parse_volume(spec: &str, cwd: &str) -> Result<Mount, ParseError> {
    let bad = |why: String| err(format!("invalid volume spec {spec:?}: {why}"));
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [d] => ("", *d, ""),
        [s, d] => (*s, *d, ""),
        [s, d, o] => (*s, *d, *o),
        _ => return bad("expected [source:]/container/path[:ro|rw]".into()),
    };
    if dst.is_empty() {
        return bad("the container path is empty".into());
    }
    if !dst.starts_with('/') {
        return bad(format!("the container path {dst:?} must be absolute"));
    }
    if parts.len() > 1 && src.is_empty() {
        return bad("the source is empty".into());
    }
    let mut read_only = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "z" | "Z" => {}
            other => return bad(format!("unknown option {other:?} (expected ro or rw)")),
        }
    }
    let (kind, source) = if src.is_empty() {
        (mount::Type::Volume, String::new())
    } else if src.starts_with('/') || src.starts_with('.') {
        (mount::Type::Bind, resolve_host_path(src, cwd))
    } else if valid_volume_name(src) {
        (mount::Type::Volume, src.to_string())
    } else {
        return bad(format!(
            "{src:?} is neither a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*) nor a host path (absolute or starting with ./)"
        ));
    };
    Ok(Mount {
        r#type: kind as i32,
        source,
        target: dst.to_string(),
        read_only,
        tmpfs_size: 0,
        tmpfs_mode: 0,
    })
}

fn parse_bool_opt(v: Option<&str>, key: &str, spec: &str) -> Result<bool, ParseError> {
    match v.map(|v| v.to_ascii_lowercase()) {
        None => Ok(true),
        Some(v) => match v.as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => err(format!(
                "invalid mount spec {spec:?}: {key} must be true or false, not {v:?}"
            )),
        },
    }
}

fn parse_mode(v: &str, spec: &str, what: &str) -> Result<u32, ParseError> {
    match u32::from_str_radix(v, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => err(format!(
            "invalid {what} {spec:?}: mode {v:?} must be octal permission bits, e.g. 1777"
        )),
    }
}

/// `--mount type=bind|volume|tmpfs,source=..,target=..[,readonly][,tmpfs-size=64m][,tmpfs-mode=1777]`
/// (docker's keys and aliases: `src`, `dst`/`destination`, `ro`). The type defaults to volume.
pub fn parse_mount(spec: &str, cwd: &str) -> Result<Mount, ParseError> {
    let bad = |why: String| err(format!("invalid mount spec {spec:?}: {why}"));
    let mut kind: Option<mount::Type> = None;
    let (mut source, mut target) = (None::<String>, None::<String>);
    let mut read_only = false;
    let (mut size, mut mode) = (None::<u64>, None::<u32>);
    for field in spec.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (field.to_ascii_lowercase(), None),
        };
        let need = |v: Option<&str>| -> Result<String, ParseError> {
            match v {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(ParseError(format!(
                    "invalid mount spec {spec:?}: {k} needs a value ({k}=...)"
                ))),
            }
        };
        match k.as_str() {
            "type" => {
                kind = Some(match need(v)?.as_str() {
                    "bind" => mount::Type::Bind,
                    "volume" => mount::Type::Volume,
                    "tmpfs" => mount::Type::Tmpfs,
                    other => {
                        return Err(ParseError(format!(
                            "invalid mount spec {spec:?}: unknown type {other:?} (expected bind, volume or tmpfs)"
                        )))
                    }
                })
            }
            "source" | "src" => source = Some(need(v)?),
            "target" | "dst" | "destination" => target = Some(need(v)?),
            "readonly" | "ro" => read_only = parse_bool_opt(v, &k, spec)?,
            "tmpfs-size" => {
                let n = need(v)?;
                let b = parse_size(&n)
                    .map_err(|e| ParseError(format!("invalid mount spec {spec:?}: {}", e.0)))?;
                size = Some(b as u64);
            }
            "tmpfs-mode" => mode = Some(parse_mode(&need(v)?, spec, "mount spec")?),
            other => {
                return bad(format!(
                    "unknown option {other:?} (expected type, source, target, readonly, tmpfs-size, tmpfs-mode)"
                ))
            }
        }
    }
    let kind = kind.unwrap_or(mount::Type::Volume);
    let Some(target) = target else {
        return bad("target is required (target=/path/in/container)".into());
    };
    if !target.starts_with('/') {
        return bad(format!("target {target:?} must be an absolute path"));
    }
    if kind != mount::Type::Tmpfs && (size.is_some() || mode.is_some()) {
        return bad("tmpfs-size and tmpfs-mode are only for type=tmpfs".into());
    }
    let source = match kind {
        mount::Type::Bind => match source {
            Some(s) if s.starts_with('/') || s.starts_with('.') => resolve_host_path(&s, cwd),
            Some(s) => return bad(format!("bind source {s:?} must be a host path")),
            None => return bad("type=bind needs source=/host/path".into()),
        },
        mount::Type::Volume => match source {
            Some(s) if !valid_volume_name(&s) => {
                return bad(format!("{s:?} is not a valid volume name"));
            }
            Some(s) => s,
            None => String::new(),
        },
        mount::Type::Tmpfs => {
            if source.is_some() {
                return bad("type=tmpfs takes no source".into());
            }
            String::new()
        }
    };
    Ok(Mount {
        r#type: kind as i32,
        source,
        target,
        read_only,
        tmpfs_size: size.unwrap_or(0),
        tmpfs_mode: mode.unwrap_or(0),
    })
}

/// `--tmpfs /path[:size=64m,mode=1777,ro|rw]`.
pub fn parse_tmpfs(spec: &str) -> Result<Mount, ParseError> {
    let bad = |why: String| err(format!("invalid tmpfs spec {spec:?}: {why}"));
    let (path, opts) = spec.split_once(':').unwrap_or((spec, ""));
    if !path.starts_with('/') {
        return bad(format!("the path {path:?} must be absolute"));
    }
    let mut m = Mount {
        r#type: mount::Type::Tmpfs as i32,
        source: String::new(),
        target: path.to_string(),
        read_only: false,
        tmpfs_size: 0,
        tmpfs_mode: 0,
    };
    for o in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => {
                m.tmpfs_size = parse_size(v)
                    .map_err(|e| ParseError(format!("invalid tmpfs spec {spec:?}: {}", e.0)))?
                    as u64
            }
            Some(("mode", v)) => m.tmpfs_mode = parse_mode(v, spec, "tmpfs spec")?,
            None if o == "ro" => m.read_only = true,
            None if o == "rw" => m.read_only = false,
            _ => {
                return bad(format!(
                    "unsupported option {o:?} (expected size=, mode=, ro, rw)"
                ))
            }
        }
    }
    Ok(m)
}

// ------------------------------------------------------------------ environment and labels

/// `-e KEY=VAL` as is; a bare `-e KEY` takes KEY's value from our environment (`lookup`), and
/// is dropped when we do not have it (docker's behaviour).
pub fn parse_env(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, ParseError> {
    match s.split_once('=') {
        Some(("", _)) => err(format!(
            "invalid environment variable {s:?}: the name is empty"
        )),
        Some(_) => Ok(Some(s.to_string())),
        None if s.is_empty() => err("invalid environment variable \"\": the name is empty"),
        None => Ok(lookup(s).map(|v| format!("{s}={v}"))),
    }
}

/// An env file in docker's format: `KEY=VALUE` lines taken verbatim (no quote processing),
/// blank lines and `#` comments skipped, a bare `KEY` takes our environment's value (and is
/// dropped when unset). `name` is for messages.
pub fn parse_env_file(
    name: &str,
    content: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, ParseError> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let mut out = Vec::new();
    for (i, raw) in content.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (line.trim_end(), None),
        };
        if key.is_empty() {
            return err(format!(
                "invalid env file {name:?} line {}: the variable name is empty",
                i + 1
            ));
        }
        if key.contains(char::is_whitespace) {
            return err(format!(
                "invalid env file {name:?} line {}: variable {key:?} contains whitespace",
                i + 1
            ));
        }
        match value {
            Some(v) => out.push(format!("{key}={v}")),
            None => {
                if let Some(v) = lookup(key) {
                    out.push(format!("{key}={v}"))
                }
            }
        }
    }
    Ok(out)
}

/// `-l key=value` or `-l key` (empty value).
pub fn parse_label(s: &str) -> Result<(String, String), ParseError> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.trim().is_empty() {
        return err(format!("invalid label {s:?}: the key is empty"));
    }
    Ok((k.to_string(), v.to_string()))
}

// ------------------------------------------------------------------ resources and policies

const ULIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// `--ulimit name=soft[:hard]` (hard defaults to soft; -1 is unlimited).
pub fn parse_ulimit(s: &str) -> Result<Ulimit, ParseError> {
    let bad = |why: String| err(format!("invalid ulimit {s:?}: {why}"));
    let Some((name, vals)) = s.split_once('=') else {
        return bad("expected name=soft[:hard], e.g. nofile=1024:2048".into());
    };
    if !ULIMITS.contains(&name) {
        return bad(format!(
            "unknown resource {name:?} (one of {})",
            ULIMITS.join(", ")
        ));
    }
    let num = |v: &str| -> Result<i64, ParseError> {
        match v.parse::<i64>() {
            Ok(n) if n >= -1 => Ok(n),
            _ => Err(ParseError(format!(
                "invalid ulimit {s:?}: {v:?} is not a limit (a number, or -1 for unlimited)"
            ))),
        }
    };
    let (soft, hard) = match vals.split_once(':') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(vals)?;
            (n, n)
        }
    };
    let unl = |n: i64| if n == -1 { i64::MAX } else { n };
    if unl(soft) > unl(hard) {
        return bad(format!(
            "the soft limit {soft} is above the hard limit {hard}"
        ));
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// `--restart no|always|unless-stopped|on-failure[:N]`.
pub fn parse_restart(s: &str) -> Result<RestartPolicy, ParseError> {
    let (name, n) = match s.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    match (name, n) {
        ("no" | "always" | "unless-stopped", None) => Ok(RestartPolicy {
            name: name.to_string(),
            max_retries: 0,
        }),
        ("no" | "always" | "unless-stopped", Some(_)) => err(format!(
            "invalid restart policy {s:?}: a maximum retry count is only valid with on-failure"
        )),
        ("on-failure", n) => {
            let max_retries = match n {
                None => 0,
                Some(v) => v.parse::<u32>().or_else(|_| {
                    err(format!(
                        "invalid restart policy {s:?}: the retry count {v:?} must be a non-negative number"
                    ))
                })?,
            };
            Ok(RestartPolicy {
                name: "on-failure".into(),
                max_retries,
            })
        }
        _ => err(format!(
            "invalid restart policy {s:?}: expected no, always, unless-stopped or on-failure[:max-retries]"
        )),
    }
}

/// `--cpus 1.5` -> 1_500_000_000 nano CPUs, exactly (no float rounding); at most 9 decimals.
pub fn parse_cpus(s: &str) -> Result<i64, ParseError> {
    let bad = |why: &str| err(format!("invalid --cpus value {s:?}: {why}"));
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return bad("expected a non-negative decimal number of CPUs, e.g. 1.5");
    }
    if frac.len() > 9 {
        return bad("too precise (at most 9 decimal places)");
    }
    let i: i64 = if int.is_empty() {
        0
    } else {
        match int.parse::<i64>() {
            Ok(v) if v < 1_000_000 => v,
            _ => return bad("too large"),
        }
    };
    let f: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().unwrap_or(0)
    };
    Ok(i * 1_000_000_000 + f)
}

/// `--add-host name:ip` (or `name=ip`); `host-gateway` is passed through for the agent.
pub fn parse_add_host(s: &str) -> Result<String, ParseError> {
    let split = match (s.find('='), s.find(':')) {
        (Some(e), Some(c)) => Some(e.min(c)),
        (Some(e), None) => Some(e),
        (None, c) => c,
    };
    let Some(i) = split else {
        return err(format!("invalid --add-host {s:?}: expected name:ip"));
    };
    let (name, ip) = (&s[..i], &s[i + 1..]);
    if name.is_empty() {
        return err(format!("invalid --add-host {s:?}: the host name is empty"));
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if ip != "host-gateway" && ip.parse::<IpAddr>().is_err() {
        return err(format!(
            "invalid --add-host {s:?}: {ip:?} is not an IP address"
        ));
    }
    Ok(format!("{name}:{ip}"))
}

/// An IP address flag (`--ip`, `--dns`).
pub fn parse_ip(flag: &str, s: &str) -> Result<String, ParseError> {
    s.parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .or_else(|_| err(format!("invalid {flag} {s:?}: not an IP address")))
}

/// `logs --tail N|all` -> the proto's `tail` (-1 = all).
pub fn parse_tail(s: &str) -> Result<i64, ParseError> {
    if s == "all" {
        return Ok(-1);
    }
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => err(format!(
            "invalid --tail {s:?}: expected a number of lines or \"all\""
        )),
    }
}

/// `--subnet 10.1.0.0/24` (IPv4 or IPv6 CIDR).
pub fn parse_cidr(s: &str) -> Result<String, ParseError> {
    let bad = |why: &str| {
        err(format!(
            "invalid subnet {s:?}: {why} (expected CIDR, e.g. 10.10.0.0/24)"
        ))
    };
    let Some((addr, len)) = s.split_once('/') else {
        return bad("missing /prefix-length");
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return bad("not an IP address");
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len.parse::<u8>() {
        Ok(n) if n <= max => Ok(format!("{ip}/{n}")),
        _ => bad(&format!("the prefix length must be 0-{max}")),
    }
}

// ------------------------------------------------------------------ time

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// RFC 3339 (`2026-11-28T10:00:00Z`, `...T10:00:00.5+01:00`, lower-case `t`/`z` too, a space
/// for `T`) or a bare date (`2026-11-28`, midnight UTC) -> unix nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    if b.len() == 10 {
        return Some(days * 86_400 * 1_000_000_000);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        let mut f = frac.chars().take(9).collect::<String>();
        while f.len() < 9 {
            f.push('0');
        }
        nanos = f.parse().ok()?;
    }
    let offset_s = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some(secs * 1_000_000_000 + nanos)
}

/// `--since`/`--until`: a duration before `now_ns` (`10m`, `1h30m`), an RFC 3339 time or date,
/// or unix seconds with an optional fraction (`1700000000.5`). Returns unix nanoseconds.
pub fn parse_timestamp(flag: &str, s: &str, now_ns: i64) -> Result<i64, ParseError> {
    let t = s.trim();
    if !t.is_empty()
        && t.chars().all(|c| c.is_ascii_digit() || c == '.')
        && t.matches('.').count() <= 1
    {
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if frac.len() <= 9 && !int.is_empty() {
            if let Ok(secs) = int.parse::<i64>() {
                let f: i64 = format!("{frac:0<9}").parse().unwrap_or(0);
                if let Some(v) = secs
                    .checked_mul(1_000_000_000)
                    .and_then(|v| v.checked_add(f))
                {
                    return Ok(v);
                }
            }
        }
    }
    if let Some(ns) = parse_rfc3339(t) {
        return Ok(ns);
    }
    if let Ok(d) = parse_duration(t) {
        return Ok(now_ns.saturating_sub(d.as_nanos().min(i64::MAX as u128) as i64));
    }
    err(format!(
        "invalid {flag} {s:?}: expected a relative time like 10m or 1h30m, an RFC 3339 time like 2026-11-28T10:00:00Z, or unix seconds"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e<T: std::fmt::Debug>(r: Result<T, ParseError>) -> String {
        r.expect_err("expected an error").0
    }

    const MI: i64 = 1024 * 1024;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64m").unwrap(), 64 * MI);
        assert_eq!(parse_size("64M").unwrap(), 64 * MI);
        assert_eq!(parse_size("64mb").unwrap(), 64 * MI);
        assert_eq!(parse_size("64MiB").unwrap(), 64 * MI);
        assert_eq!(parse_size("64 m").unwrap(), 64 * MI);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("512b").unwrap(), 512);
        assert_eq!(parse_size("1k").unwrap(), 1024);
        assert_eq!(parse_size("1g").unwrap(), 1024 * MI);
        assert_eq!(parse_size("1.5g").unwrap(), 1536 * MI);
        assert_eq!(parse_size("2t").unwrap(), 2 * 1024 * 1024 * MI);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert!(e(parse_size("")).contains("no number"));
        assert!(e(parse_size("abc")).contains("invalid size \"abc\""));
        assert!(e(parse_size("-1m")).contains("negative"));
        assert!(e(parse_size("10x")).contains("unknown unit \"x\""));
        assert!(e(parse_size("10mm")).contains("unknown unit"));
        assert!(e(parse_size("1.2.3m")).contains("not a number"));
        assert!(e(parse_size("99999999999p")).contains("too large"));
        assert_eq!(parse_memory_swap("-1").unwrap(), -1);
        assert_eq!(parse_memory_swap("1g").unwrap(), 1024 * MI);
        assert!(parse_memory_swap("-2").is_err());
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("2h45m"), Duration::from_secs(2 * 3600 + 45 * 60));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("10us"), Duration::from_micros(10));
        assert_eq!(d("10µs"), Duration::from_micros(10));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(parse_duration_ns("1s").unwrap(), 1_000_000_000);
        assert!(e(parse_duration("30")).contains("missing unit"));
        assert!(e(parse_duration("")).contains("empty"));
        assert!(e(parse_duration("-5s")).contains("negative"));
        assert!(e(parse_duration("5d")).contains("unknown unit \"d\""));
        assert!(e(parse_duration("s")).contains("expected a number"));
        assert!(e(parse_duration("1..5s")).contains("not a number"));
        assert!(e(parse_duration("abc")).contains("invalid duration \"abc\""));
    }

    fn pb(ip: &str, h: u32, c: u32, p: &str) -> PortBinding {
        PortBinding {
            host_ip: ip.into(),
            host_port: h,
            container_port: c,
            protocol: p.into(),
        }
    }

    #[test]
    fn ports() {
        let p = |s| parse_publish(s).unwrap();
        assert_eq!(p("80"), vec![pb("", 0, 80, "tcp")]);
        assert_eq!(p("80/udp"), vec![pb("", 0, 80, "udp")]);
        assert_eq!(p("8080:80"), vec![pb("", 8080, 80, "tcp")]);
        assert_eq!(p(":80"), vec![pb("", 0, 80, "tcp")]);
        assert_eq!(
            p("127.0.0.1:8080:80"),
            vec![pb("127.0.0.1", 8080, 80, "tcp")]
        );
        assert_eq!(p("127.0.0.1::80/UDP"), vec![pb("127.0.0.1", 0, 80, "udp")]);
        assert_eq!(p("[::1]:8080:80"), vec![pb("::1", 8080, 80, "tcp")]);
        assert_eq!(p("[::]::53/udp"), vec![pb("::", 0, 53, "udp")]);
        assert_eq!(
            p("8000-8002:80-82"),
            vec![
                pb("", 8000, 80, "tcp"),
                pb("", 8001, 81, "tcp"),
                pb("", 8002, 82, "tcp")
            ]
        );
        assert_eq!(p("80-81"), vec![pb("", 0, 80, "tcp"), pb("", 0, 81, "tcp")]);

        assert_eq!(
            e(parse_publish("80:abc")),
            "invalid port spec \"80:abc\": container port must be a number 1-65535"
        );
        assert!(e(parse_publish("abc:80")).contains("host port must be a number 1-65535"));
        assert!(e(parse_publish("0")).contains("container port must be a number"));
        assert!(e(parse_publish("65536")).contains("container port must be a number"));
        assert!(e(parse_publish("8080:")).contains("container port must be a number"));
        assert!(e(parse_publish("")).contains("expected [hostip:]"));
        assert!(e(parse_publish("80/sctp")).contains("protocol must be tcp or udp"));
        assert!(e(parse_publish("80/")).contains("protocol must be tcp or udp"));
        assert!(e(parse_publish("8000-8001:80")).contains("same size"));
        assert!(e(parse_publish("82-80")).contains("ends before it starts"));
        assert!(e(parse_publish("1.2.3.4:5:6:7")).contains("too many ':'"));
        assert!(e(parse_publish("foo:8080:80")).contains("\"foo\" is not an IP address"));
        assert!(e(parse_publish("[::1:8080:80")).contains("missing ']'"));
        assert!(e(parse_publish("[::1]8080:80")).contains("expected ':'"));
        assert!(e(parse_publish("[::1]:80")).contains("hostip:hostport:containerport"));
    }

    #[test]
    fn expose() {
        assert_eq!(parse_expose("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(parse_expose("53/udp").unwrap(), vec!["53/udp"]);
        assert_eq!(
            parse_expose("8000-8002").unwrap(),
            vec!["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(e(parse_expose("x")).contains("port must be a number"));
        assert!(e(parse_expose("80/icmp")).contains("protocol"));
    }

    fn m(t: mount::Type, src: &str, dst: &str, ro: bool) -> Mount {
        Mount {
            r#type: t as i32,
            source: src.into(),
            target: dst.into(),
            read_only: ro,
            tmpfs_size: 0,
            tmpfs_mode: 0,
        }
    }

    #[test]
    fn volumes() {
        use mount::Type::*;
        let v = |s| parse_volume(s, "/home/u/proj").unwrap();
        assert_eq!(
            v("data:/var/lib/data"),
            m(Volume, "data", "/var/lib/data", false)
        );
        assert_eq!(v("data:/d:ro"), m(Volume, "data", "/d", true));
        assert_eq!(v("data:/d:rw"), m(Volume, "data", "/d", false));
        assert_eq!(
            v("/srv/www:/usr/share/nginx:ro,z"),
            m(Bind, "/srv/www", "/usr/share/nginx", true)
        );
        assert_eq!(
            v("./site:/site"),
            m(Bind, "/home/u/proj/site", "/site", false)
        );
        assert_eq!(v(".:/src"), m(Bind, "/home/u/proj", "/src", false));
        assert_eq!(v("../x:/x"), m(Bind, "/home/u/proj/../x", "/x", false));
        assert_eq!(v("/cache"), m(Volume, "", "/cache", false));
        assert!(e(parse_volume("data:rel", "/")).contains("must be absolute"));
        assert!(e(parse_volume("rel", "/")).contains("must be absolute"));
        assert!(e(parse_volume("", "/")).contains("container path is empty"));
        assert!(e(parse_volume(":/d", "/")).contains("source is empty"));
        assert!(e(parse_volume("a:/b:/c:ro", "/")).contains("expected [source:]"));
        assert!(e(parse_volume("data:/d:rx", "/")).contains("unknown option \"rx\""));
        assert!(e(parse_volume("bad name:/d", "/")).contains("neither a volume name"));
        assert!(e(parse_volume("_x:/d", "/")).contains("neither a volume name"));
    }

    #[test]
    fn mounts() {
        use mount::Type::*;
        let p = |s| parse_mount(s, "/cwd").unwrap();
        assert_eq!(
            p("type=bind,source=/src,target=/dst"),
            m(Bind, "/src", "/dst", false)
        );
        assert_eq!(
            p("type=bind,src=./a,dst=/dst,readonly"),
            m(Bind, "/cwd/a", "/dst", true)
        );
        assert_eq!(
            p("type=bind,src=/a,destination=/d,ro=true"),
            m(Bind, "/a", "/d", true)
        );
        assert_eq!(
            p("type=bind,src=/a,destination=/d,readonly=false"),
            m(Bind, "/a", "/d", false)
        );
        assert_eq!(
            p("type=bind,src=/a,destination=/d,ro=1"),
            m(Bind, "/a", "/d", true)
        );
        assert_eq!(p("source=vol,target=/v"), m(Volume, "vol", "/v", false));
        assert_eq!(p("type=volume,target=/v"), m(Volume, "", "/v", false));
        let t = p("type=tmpfs,target=/run,tmpfs-size=64m,tmpfs-mode=1770");
        assert_eq!(t.tmpfs_size, 64 * MI as u64);
        assert_eq!(t.tmpfs_mode, 0o1770);
        assert_eq!(t.r#type, Tmpfs as i32);

        let bad = |s| e(parse_mount(s, "/"));
        assert!(bad("type=bind,src=/a").contains("target is required"));
        assert!(bad("type=bind,target=/a").contains("needs source"));
        assert!(bad("type=bind,src=vol,target=/a").contains("must be a host path"));
        assert!(bad("type=nfs,target=/a").contains("unknown type \"nfs\""));
        assert!(bad("type=volume,target=/a,foo=bar").contains("unknown option \"foo\""));
        assert!(bad("type=volume,target=rel").contains("must be an absolute path"));
        assert!(bad("type=volume,target=/a,tmpfs-size=1m").contains("only for type=tmpfs"));
        assert!(bad("type=tmpfs,src=/x,target=/a").contains("takes no source"));
        assert!(bad("type=tmpfs,target=/a,tmpfs-mode=999").contains("octal"));
        assert!(bad("type=tmpfs,target=/a,tmpfs-size=lots").contains("invalid size"));
        assert!(bad("type=volume,target=/a,ro=maybe").contains("true or false"));
        assert!(bad("type=,target=/a").contains("type needs a value"));
        assert!(bad("type=volume,src=a b,target=/a").contains("not a valid volume name"));
    }

    #[test]
    fn tmpfs() {
        let t = parse_tmpfs("/run").unwrap();
        assert_eq!(
            (t.target.as_str(), t.tmpfs_size, t.tmpfs_mode),
            ("/run", 0, 0)
        );
        let t = parse_tmpfs("/run:size=64m,mode=1777,ro").unwrap();
        assert_eq!(
            (t.tmpfs_size, t.tmpfs_mode, t.read_only),
            (64 * MI as u64, 0o1777, true)
        );
        assert!(e(parse_tmpfs("run")).contains("must be absolute"));
        assert!(e(parse_tmpfs("/run:noexec")).contains("unsupported option \"noexec\""));
        assert!(e(parse_tmpfs("/run:size=x")).contains("invalid size"));
        assert!(e(parse_tmpfs("/run:mode=8")).contains("octal"));
    }

    fn env(k: &str) -> Option<String> {
        match k {
            "HOME" => Some("/home/u".into()),
            _ => None,
        }
    }

    #[test]
    fn env_flags_and_files() {
        assert_eq!(parse_env("A=1", &env).unwrap(), Some("A=1".into()));
        assert_eq!(parse_env("A=", &env).unwrap(), Some("A=".into()));
        assert_eq!(parse_env("A=b=c", &env).unwrap(), Some("A=b=c".into()));
        assert_eq!(
            parse_env("HOME", &env).unwrap(),
            Some("HOME=/home/u".into())
        );
        assert_eq!(parse_env("UNSET", &env).unwrap(), None);
        assert!(e(parse_env("=x", &env)).contains("name is empty"));
        assert!(e(parse_env("", &env)).contains("name is empty"));

        let file = "\u{feff}# comment\n\nA=1\n  B= spaced \nC=\"quoted\"\nHOME\nUNSET\n   # indented comment\nD=x=y\r\n";
        assert_eq!(
            parse_env_file("f", file, &env).unwrap(),
            vec!["A=1", "B= spaced ", "C=\"quoted\"", "HOME=/home/u", "D=x=y"]
        );
        // docker refuses whitespace in names, also before the '='.
        assert!(
            e(parse_env_file("f", "B =1\n", &env)).contains("variable \"B \" contains whitespace")
        );
        assert!(e(parse_env_file("f", "A=1\nB C=2\n", &env))
            .contains("line 2: variable \"B C\" contains whitespace"));
        assert!(e(parse_env_file("f", "=2\n", &env))
            .contains("\"f\" line 1: the variable name is empty"));
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("a=b").unwrap(), ("a".into(), "b".into()));
        assert_eq!(parse_label("a").unwrap(), ("a".into(), "".into()));
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(e(parse_label("=b")).contains("key is empty"));
    }

    #[test]
    fn ulimits() {
        let u = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!((u.name.as_str(), u.soft, u.hard), ("nofile", 1024, 2048));
        let u = parse_ulimit("nproc=512").unwrap();
        assert_eq!((u.soft, u.hard), (512, 512));
        let u = parse_ulimit("core=-1").unwrap();
        assert_eq!((u.soft, u.hard), (-1, -1));
        assert!(parse_ulimit("core=0:-1").is_ok());
        assert!(e(parse_ulimit("nofile")).contains("expected name=soft[:hard]"));
        assert!(e(parse_ulimit("files=1")).contains("unknown resource \"files\""));
        assert!(e(parse_ulimit("nofile=a")).contains("\"a\" is not a limit"));
        assert!(e(parse_ulimit("nofile=-2")).contains("is not a limit"));
        assert!(e(parse_ulimit("nofile=10:5")).contains("above the hard limit"));
        assert!(e(parse_ulimit("nofile=-1:5")).contains("above the hard limit"));
    }

    #[test]
    fn restart() {
        let r = |s| {
            let p = parse_restart(s).unwrap();
            (p.name, p.max_retries)
        };
        assert_eq!(r("no"), ("no".into(), 0));
        assert_eq!(r("always"), ("always".into(), 0));
        assert_eq!(r("unless-stopped"), ("unless-stopped".into(), 0));
        assert_eq!(r("on-failure"), ("on-failure".into(), 0));
        assert_eq!(r("on-failure:5"), ("on-failure".into(), 5));
        assert!(e(parse_restart("always:3")).contains("only valid with on-failure"));
        assert!(e(parse_restart("on-failure:x")).contains("non-negative number"));
        assert!(e(parse_restart("on-failure:-1")).contains("non-negative number"));
        assert!(e(parse_restart("sometimes")).contains("expected no, always"));
        assert!(e(parse_restart("")).contains("expected no, always"));
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("1").unwrap(), 1_000_000_000);
        assert_eq!(parse_cpus("1.5").unwrap(), 1_500_000_000);
        assert_eq!(parse_cpus(".25").unwrap(), 250_000_000);
        assert_eq!(parse_cpus("0.000000001").unwrap(), 1);
        assert_eq!(parse_cpus("2.").unwrap(), 2_000_000_000);
        assert!(e(parse_cpus("-1")).contains("non-negative decimal"));
        assert!(e(parse_cpus("abc")).contains("invalid --cpus value \"abc\""));
        assert!(e(parse_cpus("")).contains("non-negative decimal"));
        assert!(e(parse_cpus(".")).contains("non-negative decimal"));
        assert!(e(parse_cpus("1e3")).contains("non-negative decimal"));
        assert!(e(parse_cpus("0.0000000001")).contains("too precise"));
        assert!(e(parse_cpus("99999999")).contains("too large"));
    }

    #[test]
    fn add_host_ip_tail() {
        assert_eq!(parse_add_host("db:10.0.0.2").unwrap(), "db:10.0.0.2");
        assert_eq!(parse_add_host("db=10.0.0.2").unwrap(), "db:10.0.0.2");
        assert_eq!(parse_add_host("v6:::1").unwrap(), "v6:::1");
        assert_eq!(parse_add_host("v6=[::1]").unwrap(), "v6:::1");
        assert_eq!(
            parse_add_host("gw:host-gateway").unwrap(),
            "gw:host-gateway"
        );
        assert!(e(parse_add_host("db")).contains("expected name:ip"));
        assert!(e(parse_add_host(":1.2.3.4")).contains("host name is empty"));
        assert!(e(parse_add_host("db:nope")).contains("\"nope\" is not an IP address"));
        assert_eq!(parse_ip("--ip", "10.0.0.5").unwrap(), "10.0.0.5");
        assert!(e(parse_ip("--dns", "dns.example")).contains("invalid --dns"));
        assert_eq!(parse_tail("all").unwrap(), -1);
        assert_eq!(parse_tail("10").unwrap(), 10);
        assert!(e(parse_tail("-3")).contains("\"all\""));
        assert!(e(parse_tail("x")).contains("invalid --tail"));
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.1.0.0/24").unwrap(), "10.1.0.0/24");
        assert_eq!(parse_cidr("fd00::/64").unwrap(), "fd00::/64");
        assert!(e(parse_cidr("10.1.0.0")).contains("missing /prefix-length"));
        assert!(e(parse_cidr("10.1.0/24")).contains("not an IP address"));
        assert!(e(parse_cidr("10.1.0.0/33")).contains("0-32"));
        assert!(e(parse_cidr("fd00::/129")).contains("0-128"));
        assert!(e(parse_cidr("10.1.0.0/x")).contains("0-32"));
    }

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        for d in [-1000, -1, 0, 1, 11016, 11017, 20000, 60000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(civil_from_days(20785), (2026, 11, 28));
    }

    #[test]
    fn timestamps() {
        const S: i64 = 1_000_000_000;
        let base = days_from_civil(2026, 11, 28) * 86_400;
        assert_eq!(
            parse_rfc3339("2026-11-28T10:00:00Z"),
            Some((base + 36_000) * S)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28t10:00:00z"),
            Some((base + 36_000) * S)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28 10:00:00Z"),
            Some((base + 36_000) * S)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28T10:00:00.5Z"),
            Some((base + 36_000) * S + 500_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28T10:00:00.123456789123Z"),
            Some((base + 36_000) * S + 123_456_789)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28T11:30:00+01:30"),
            Some((base + 36_000) * S)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28T08:00:00-02:00"),
            Some((base + 36_000) * S)
        );
        assert_eq!(parse_rfc3339("2026-11-28"), Some(base * S));
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "2026-11-28T25:00:00Z",
            "2026-11-28T10:00:00",
            "2026-11-28T10:00Z",
            "2026-11-28T10:00:00.Z",
            "2026-11-28T10:00:00+0100",
            "x",
            "",
            "2026-1a-01",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(
            parse_rfc3339("2024-02-29"),
            Some(days_from_civil(2024, 2, 29) * 86_400 * S)
        );
        assert_eq!(parse_rfc3339("2023-02-29"), None);

        let now = 1_800_000_000 * S;
        assert_eq!(
            parse_timestamp("--since", "10m", now).unwrap(),
            now - 600 * S
        );
        assert_eq!(
            parse_timestamp("--since", "1700000000", now).unwrap(),
            1_700_000_000 * S
        );
        assert_eq!(
            parse_timestamp("--since", "1700000000.25", now).unwrap(),
            1_700_000_000 * S + 250_000_000
        );
        assert_eq!(
            parse_timestamp("--since", "2026-11-28T10:00:00Z", now).unwrap(),
            (base + 36_000) * S
        );
        assert!(e(parse_timestamp("--since", "yesterday", now))
            .contains("invalid --since \"yesterday\""));
        assert!(parse_timestamp("--until", "1.2.3", now).is_err());
    }
}
