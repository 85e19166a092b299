//! Output formatting shared by the commands, aiming at docker's look so muscle memory and scripts
//! carry over: borderless tables with 3-space gutters (comfy-table), "5 seconds ago" ages, sizes in
//! decimal (`7.8MB`, images) or binary (`1.5MiB`, stats) units, `Up 5 seconds (healthy)` states,
//! `0.0.0.0:8080->80/tcp` port lists with ranges folded, RFC 3339 nano timestamps, short ids and
//! image references split into repository and tag. Also the stdout writer that exits quietly when
//! the reader goes away (`flotilla ps | head`). Everything but the writer is pure and unit-tested.

use std::io::Write;

use comfy_table::{presets::NOTHING, ContentArrangement, Table};
use flotilla_proto::agent::v1::{ContainerInfo, PortBinding};

use super::parse::civil_from_days;

/// Writes to stdout; a closed pipe ends the process quietly with status 0 (docker's behaviour
/// with `| head`), any other write error is reported.
pub fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(s.as_bytes()).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            super::term::restore_all();
            std::process::exit(0);
        }
        eprintln!("Error: writing to stdout: {e}");
        super::term::restore_all();
        std::process::exit(1);
    }
}

/// `out` with a newline.
pub fn outln(s: &str) {
    let mut line = String::with_capacity(s.len() + 1);
    line.push_str(s);
    line.push('\n');
    out(&line);
}

/// The current time in unix nanoseconds.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A docker-style table: headers and rows, no borders, columns 3 spaces apart, no trailing
/// whitespace, newline-terminated lines. An empty row set still prints the header line.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        t.add_row(r.clone());
    }
    let n = headers.len();
    for (i, c) in t.column_iter_mut().enumerate() {
        c.set_padding((0, if i + 1 == n { 0 } else { 3 }));
    }
    let mut s = String::new();
    for line in t.lines() {
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// Go's `units.HumanDuration`, which docker uses for ages ("5 seconds", "About a minute").
pub fn human_duration(secs_f: f64) -> String {
    let seconds = secs_f as i64;
    let minutes = (secs_f / 60.0) as i64;
    let hours = (secs_f / 3600.0 + 0.5) as i64;
    if seconds < 1 {
        "Less than a second".into()
    } else if seconds == 1 {
        "1 second".into()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", (secs_f / 3600.0 / 24.0 / 365.0) as i64)
    }
}

/// "5 seconds ago" for a unix-nano time, relative to `now_ns`; "N/A" for 0.
pub fn ago(t_ns: i64, now_ns: i64) -> String {
    if t_ns <= 0 {
        return "N/A".into();
    }
    format!("{} ago", human_duration(since_secs(t_ns, now_ns)))
}

fn since_secs(t_ns: i64, now_ns: i64) -> f64 {
    (now_ns.saturating_sub(t_ns)).max(0) as f64 / 1e9
}

/// `value` rounded to `prec` significant digits, trailing zeros dropped (Go's `%.<prec>g` for
/// the range sizes are printed in).
fn sig(value: f64, prec: i32) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let mag = value.abs().log10().floor() as i32;
    let decimals = (prec - 1 - mag).max(0) as usize;
    let mut s = format!("{value:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    s
}

fn scaled(size: f64, base: f64, units: &[&str], prec: i32) -> String {
    let mut v = size;
    let mut i = 0;
    while v >= base && i + 1 < units.len() {
        v /= base;
        i += 1;
    }
    format!("{}{}", sig(v, prec), units[i])
}

/// Decimal size like docker's `images` column: `7.8MB`, `142MB`, `1.2GB` (3 significant digits).
pub fn human_size(bytes: u64) -> String {
    scaled(
        bytes as f64,
        1000.0,
        &["B", "kB", "MB", "GB", "TB", "PB"],
        3,
    )
}

/// Decimal size with 4 significant digits (go-units `HumanSize`): `1.235MB`.
pub fn human_size4(bytes: u64) -> String {
    scaled(
        bytes as f64,
        1000.0,
        &["B", "kB", "MB", "GB", "TB", "PB"],
        4,
    )
}

/// Binary size like docker's `stats` memory column: `1.5MiB`, `7.676GiB` (4 significant digits).
pub fn bytes_size(bytes: u64) -> String {
    scaled(
        bytes as f64,
        1024.0,
        &["B", "KiB", "MiB", "GiB", "TiB", "PiB"],
        4,
    )
}

/// RFC 3339 UTC with exactly nine fractional digits (docker's `RFC3339NanoFixed`), as used by
/// `logs -t` and `events`.
pub fn rfc3339_nano(t_ns: i64) -> String {
    let secs = t_ns.div_euclid(1_000_000_000);
    let nanos = t_ns.rem_euclid(1_000_000_000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// RFC 3339 UTC with the fraction trimmed (Go's `RFC3339Nano`), for inspect output; "" for 0.
pub fn rfc3339(t_ns: i64) -> String {
    if t_ns == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    let s = rfc3339_nano(t_ns);
    let (head, frac) = s.trim_end_matches('Z').split_once('.').unwrap_or((&s, ""));
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{head}Z")
    } else {
        format!("{head}.{frac}Z")
    }
}

/// Docker's 12-character id: hex digits without any `sha256:` prefix.
pub fn short_id(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.chars().take(12).collect()
}

/// Truncates to `max` characters with a trailing `…` (docker's `Ellipsis`).
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// The `ps` COMMAND column: quoted, truncated to 20 characters unless `no_trunc`.
pub fn command_column(cmd: &str, no_trunc: bool) -> String {
    if no_trunc {
        format!("\"{cmd}\"")
    } else {
        format!("\"{}\"", ellipsis(cmd, 20))
    }
}

/// The `ps` STATUS column from a container's state.
pub fn status_column(c: &ContainerInfo, now_ns: i64) -> String {
    let Some(st) = &c.state else {
        return String::new();
    };
    let health = match st.health.as_ref().map(|h| h.status.as_str()) {
        Some("starting") => " (health: starting)",
        Some("healthy") => " (healthy)",
        Some("unhealthy") => " (unhealthy)",
        _ => "",
    };
    match st.status.as_str() {
        "running" => format!(
            "Up {}{health}",
            human_duration(since_secs(st.started_unix_nano, now_ns))
        ),
        "paused" => format!(
            "Up {} (Paused)",
            human_duration(since_secs(st.started_unix_nano, now_ns))
        ),
        "restarting" => format!(
            "Restarting ({}) {} ago",
            st.exit_code,
            human_duration(since_secs(st.finished_unix_nano, now_ns))
        ),
        "exited" if st.finished_unix_nano > 0 => format!(
            "Exited ({}) {} ago",
            st.exit_code,
            human_duration(since_secs(st.finished_unix_nano, now_ns))
        ),
        "exited" => format!("Exited ({})", st.exit_code),
        "created" => "Created".into(),
        "dead" => "Dead".into(),
        "removing" => "Removal In Progress".into(),
        other => other.to_string(),
    }
}

/// The `ps` PORTS column: bound ports as `ip:host->container/proto`, runs of consecutive ports
/// folded into ranges (`0.0.0.0:8000-8002->80-82/tcp`), exposed but unpublished ports as
/// `80/tcp`; sorted, comma separated.
pub fn ports_column(bound: &[PortBinding], exposed: &[String]) -> String {
    #[derive(Clone)]
    struct P {
        ip: String,
        proto: String,
        host: u32,
        cont: u32,
    }
    let mut ps: Vec<P> = bound
        .iter()
        .map(|b| P {
            ip: if b.host_port == 0 {
                String::new()
            } else if b.host_ip.is_empty() {
                "0.0.0.0".into()
            } else {
                b.host_ip.clone()
            },
            proto: if b.protocol.is_empty() {
                "tcp".into()
            } else {
                b.protocol.clone()
            },
            host: b.host_port,
            cont: b.container_port,
        })
        .collect();
    for e in exposed {
        let (port, proto) = e.split_once('/').unwrap_or((e, "tcp"));
        let Ok(cont) = port.parse::<u32>() else {
            continue;
        };
        if !ps.iter().any(|p| p.cont == cont && p.proto == proto) {
            ps.push(P {
                ip: String::new(),
                proto: proto.into(),
                host: 0,
                cont,
            });
        }
    }
    ps.sort_by(|a, b| (&a.ip, &a.proto, a.cont, a.host).cmp(&(&b.ip, &b.proto, b.cont, b.host)));
    ps.dedup_by(|a, b| a.ip == b.ip && a.proto == b.proto && a.cont == b.cont && a.host == b.host);
    let mut groups: Vec<(P, P)> = Vec::new();
    for p in ps {
        if let Some((_, last)) = groups.last_mut() {
            let next_host = if p.host == 0 { 0 } else { last.host + 1 };
            if last.ip == p.ip
                && last.proto == p.proto
                && p.cont == last.cont + 1
                && (p.host == 0) == (last.host == 0)
                && p.host == next_host
            {
                *last = p;
                continue;
            }
        }
        groups.push((p.clone(), p));
    }
    let range = |a: u32, b: u32| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        }
    };
    groups
        .iter()
        .map(|(first, last)| {
            let c = range(first.cont, last.cont);
            if first.host == 0 {
                format!("{c}/{}", first.proto)
            } else {
                let ip = if first.ip.contains(':') {
                    format!("[{}]", first.ip)
                } else {
                    first.ip.clone()
                };
                format!("{ip}:{}->{c}/{}", range(first.host, last.host), first.proto)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits a fully-qualified reference the way `docker images` shows it: the default registry
/// and `library/` are hidden, a digest-only reference has tag `<none>`.
pub fn split_reference(reference: &str) -> (String, String) {
    if reference.is_empty() {
        return ("<none>".into(), "<none>".into());
    }
    let name = reference.split('@').next().unwrap_or(reference);
    // A ':' after the last '/' separates the tag (a ':' before it is a registry port).
    let (repo, tag) = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (&name[..i], &name[i + 1..]),
        _ => (name, "<none>"),
    };
    let repo = repo
        .strip_prefix("docker.io/")
        .or_else(|| repo.strip_prefix("index.docker.io/"))
        .map(|r| r.strip_prefix("library/").unwrap_or(r))
        .unwrap_or(repo);
    (repo.to_string(), tag.to_string())
}

/// A docker-style short reference: `docker.io/library/alpine:3.20` -> `alpine:3.20`.
pub fn familiar_reference(reference: &str) -> String {
    let (repo, tag) = split_reference(reference);
    if reference.contains('@') {
        let digest = reference.split_once('@').map(|(_, d)| d).unwrap_or("");
        if tag == "<none>" {
            return format!("{repo}@{digest}");
        }
    }
    if tag == "<none>" {
        repo
    } else {
        format!("{repo}:{tag}")
    }
}

/// JSON to stdout, pretty-printed with a trailing newline.
pub fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    let s = serde_json::to_string_pretty(v)?;
    outln(&s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::agent::v1::{ContainerState, HealthState};

    const S: i64 = 1_000_000_000;

    #[test]
    fn table_looks_like_docker() {
        let t = table(
            &["CONTAINER ID", "IMAGE", "NAMES"],
            &[
                vec!["0123456789ab".into(), "alpine".into(), "web".into()],
                vec!["ba9876543210".into(), "nginx:1.27".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "CONTAINER ID   IMAGE        NAMES\n\
             0123456789ab   alpine       web\n\
             ba9876543210   nginx:1.27\n"
        );
        assert_eq!(table(&["A", "BB"], &[]), "A   BB\n");
        // Non-ASCII cells keep the columns aligned by character.
        assert_eq!(
            table(&["A", "B"], &[vec!["\"sh -c…\"".into(), "x".into()]]),
            "A          B\n\"sh -c…\"   x\n"
        );
    }

    #[test]
    fn durations_like_go_units() {
        assert_eq!(human_duration(0.4), "Less than a second");
        assert_eq!(human_duration(1.0), "1 second");
        assert_eq!(human_duration(5.9), "5 seconds");
        assert_eq!(human_duration(59.0), "59 seconds");
        assert_eq!(human_duration(60.0), "About a minute");
        assert_eq!(human_duration(119.0), "About a minute");
        assert_eq!(human_duration(120.0), "2 minutes");
        assert_eq!(human_duration(59.0 * 60.0), "59 minutes");
        assert_eq!(human_duration(3600.0), "About an hour");
        assert_eq!(human_duration(5400.0), "2 hours");
        assert_eq!(human_duration(47.0 * 3600.0), "47 hours");
        assert_eq!(human_duration(48.0 * 3600.0), "2 days");
        assert_eq!(human_duration(14.0 * 86400.0), "2 weeks");
        assert_eq!(human_duration(60.0 * 86400.0), "2 months");
        assert_eq!(human_duration(800.0 * 86400.0), "2 years");
        assert_eq!(ago(0, 10 * S), "N/A");
        assert_eq!(ago(5 * S, 10 * S), "5 seconds ago");
        assert_eq!(ago(15 * S, 10 * S), "Less than a second ago");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(7_800_000), "7.8MB");
        assert_eq!(human_size(7_834_567), "7.83MB");
        assert_eq!(human_size(142_000_000), "142MB");
        assert_eq!(human_size(1_234_000_000), "1.23GB");
        assert_eq!(human_size4(1_234_500), "1.234MB");
        assert_eq!(bytes_size(0), "0B");
        assert_eq!(bytes_size(1536 * 1024), "1.5MiB");
        assert_eq!(bytes_size(8_242_000_000), "7.676GiB");
        assert_eq!(bytes_size(1023), "1023B");
        assert_eq!(bytes_size(1024), "1KiB");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00.000000000Z");
        let t = (super::super::parse::days_from_civil(2026, 11, 28) * 86_400 + 36_000) * S + 5;
        assert_eq!(rfc3339_nano(t), "2026-11-28T10:00:00.000000005Z");
        assert_eq!(rfc3339(t), "2026-11-28T10:00:00.000000005Z");
        assert_eq!(rfc3339(t - 5 + 500_000_000), "2026-11-28T10:00:00.5Z");
        assert_eq!(rfc3339(t - 5), "2026-11-28T10:00:00Z");
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339_nano(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(
            super::super::parse::parse_rfc3339(&rfc3339_nano(t)),
            Some(t)
        );
    }

    #[test]
    fn ids_and_commands() {
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(ellipsis("short", 20), "short");
        assert_eq!(
            ellipsis("docker-entrypoint.sh nginx", 20),
            "docker-entrypoint.s…"
        );
        assert_eq!(
            command_column("docker-entrypoint.sh nginx", false),
            "\"docker-entrypoint.s…\""
        );
        assert_eq!(
            command_column("docker-entrypoint.sh nginx", true),
            "\"docker-entrypoint.sh nginx\""
        );
        assert_eq!(command_column("", false), "\"\"");
    }

    fn info(status: &str, code: i32, started: i64, finished: i64, health: &str) -> ContainerInfo {
        ContainerInfo {
            state: Some(ContainerState {
                status: status.into(),
                exit_code: code,
                started_unix_nano: started,
                finished_unix_nano: finished,
                health: Some(HealthState {
                    status: health.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn statuses() {
        let now = 1000 * S;
        assert_eq!(
            status_column(&info("running", 0, 995 * S, 0, ""), now),
            "Up 5 seconds"
        );
        assert_eq!(
            status_column(&info("running", 0, 880 * S, 0, "healthy"), now),
            "Up 2 minutes (healthy)"
        );
        assert_eq!(
            status_column(&info("running", 0, 999 * S, 0, "starting"), now),
            "Up 1 second (health: starting)"
        );
        assert_eq!(
            status_column(&info("running", 0, 999 * S, 0, "unhealthy"), now),
            "Up 1 second (unhealthy)"
        );
        assert_eq!(
            status_column(&info("paused", 0, 990 * S, 0, ""), now),
            "Up 10 seconds (Paused)"
        );
        assert_eq!(
            status_column(&info("exited", 0, 900 * S, 997 * S, ""), now),
            "Exited (0) 3 seconds ago"
        );
        assert_eq!(
            status_column(&info("exited", 137, 0, 0, ""), now),
            "Exited (137)"
        );
        assert_eq!(
            status_column(&info("restarting", 1, 900 * S, 990 * S, ""), now),
            "Restarting (1) 10 seconds ago"
        );
        assert_eq!(status_column(&info("created", 0, 0, 0, ""), now), "Created");
        assert_eq!(status_column(&info("dead", 0, 0, 0, ""), now), "Dead");
        assert_eq!(status_column(&ContainerInfo::default(), now), "");
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
        assert_eq!(ports_column(&[], &[]), "");
        assert_eq!(
            ports_column(&[pb("", 8080, 80, "tcp")], &[]),
            "0.0.0.0:8080->80/tcp"
        );
        assert_eq!(
            ports_column(&[pb("127.0.0.1", 53, 53, "udp")], &["53/udp".into()]),
            "127.0.0.1:53->53/udp"
        );
        assert_eq!(
            ports_column(&[pb("::", 8080, 80, "tcp")], &[]),
            "[::]:8080->80/tcp"
        );
        assert_eq!(
            ports_column(
                &[
                    pb("", 8002, 82, "tcp"),
                    pb("", 8000, 80, "tcp"),
                    pb("", 8001, 81, "tcp")
                ],
                &[]
            ),
            "0.0.0.0:8000-8002->80-82/tcp"
        );
        assert_eq!(
            ports_column(&[pb("", 9000, 80, "tcp"), pb("", 8001, 81, "tcp")], &[]),
            "0.0.0.0:9000->80/tcp, 0.0.0.0:8001->81/tcp"
        );
        assert_eq!(
            ports_column(&[], &["80/tcp".into(), "81/tcp".into(), "53/udp".into()]),
            "80-81/tcp, 53/udp"
        );
        assert_eq!(
            ports_column(&[pb("", 8080, 80, "tcp")], &["443/tcp".into()]),
            "443/tcp, 0.0.0.0:8080->80/tcp"
        );
        assert_eq!(ports_column(&[pb("", 0, 80, "")], &[]), "80/tcp");
    }

    #[test]
    fn references() {
        let s = |r| split_reference(r);
        assert_eq!(
            s("docker.io/library/alpine:3.20"),
            ("alpine".into(), "3.20".into())
        );
        assert_eq!(
            s("docker.io/bitnami/redis:7"),
            ("bitnami/redis".into(), "7".into())
        );
        assert_eq!(s("ghcr.io/a/b:v1"), ("ghcr.io/a/b".into(), "v1".into()));
        assert_eq!(
            s("localhost:5000/app:dev"),
            ("localhost:5000/app".into(), "dev".into())
        );
        assert_eq!(
            s("localhost:5000/app"),
            ("localhost:5000/app".into(), "<none>".into())
        );
        assert_eq!(
            s("docker.io/library/alpine@sha256:abc"),
            ("alpine".into(), "<none>".into())
        );
        assert_eq!(s(""), ("<none>".into(), "<none>".into()));
        assert_eq!(
            familiar_reference("docker.io/library/alpine:latest"),
            "alpine:latest"
        );
        assert_eq!(
            familiar_reference("docker.io/library/alpine@sha256:abc"),
            "alpine@sha256:abc"
        );
        assert_eq!(familiar_reference("quay.io/x/y:1"), "quay.io/x/y:1");
    }
}
