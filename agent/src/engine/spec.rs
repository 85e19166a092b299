//! From a container's configuration (what `flotilla run` asked) to its OCI runtime spec.
//!
//! Pure: `build` edits the image's bundle spec (JSON) with the request and the resources the engine
//! prepared (mounts resolved to host paths, network namespace, generated /etc files), so every
//! rule here is unit-tested without root. Docker's semantics throughout: env overrides by key,
//! `--user` by name through the image's /etc/passwd, `--cap-add/--cap-drop` with `ALL`,
//! `--privileged` = every capability, no seccomp, no masked paths, writable /sys;
//! no-new-privileges on by default (`--security-opt no-new-privileges=false` turns it off);
//! Docker's default seccomp profile unless `seccomp=unconfined` or a profile file.

use std::path::PathBuf;

use flotilla_proto::agent::v1 as pb;
use serde_json::{json, Value};

use super::error::{EngineError, Result};

/// Every capability the kernel knows (what `--privileged` and `--cap-add ALL` give).
pub const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// How the container gets its network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetNs {
    /// A fresh one with only `lo` (`--network none`).
    New,
    /// One prepared by the agent (bridge networks).
    Path(PathBuf),
    /// The host's (`--network host`).
    Host,
}

/// A mount resolved to what the kernel needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedMount {
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    Tmpfs {
        target: String,
        size: u64,
        mode: u32,
    },
}

/// What the engine prepared for the spec.
#[derive(Debug, Clone)]
pub struct SpecContext {
    pub hostname: String,
    pub netns: NetNs,
    pub mounts: Vec<ResolvedMount>,
    /// Generated files bind-mounted over the image's: (host path, target such as `/etc/hosts`).
    pub etc_files: Vec<(PathBuf, String)>,
    /// The image's `/etc/passwd` and `/etc/group`, for `--user NAME`.
    pub passwd: Option<String>,
    pub group: Option<String>,
    /// Docker's default seccomp profile as an OCI `linux.seccomp` object, for the final capability
    /// set (computed by the caller from the capabilities `build` settles on).
    pub default_seccomp: Option<Value>,
    /// A custom seccomp profile (already converted to OCI JSON) from `--security-opt seccomp=FILE`.
    pub custom_seccomp: Option<Value>,
    /// userns-remap: (host uid, host gid, count) that root in the container maps to.
    pub userns: Option<(u32, u32, u32)>,
    /// Annotations to add (labels).
    pub labels: Vec<(String, String)>,
}

/// Security options parsed from `--security-opt`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityOpts {
    pub seccomp_unconfined: bool,
    pub seccomp_profile: Option<String>,
    pub no_new_privileges: bool,
}

pub fn parse_security_opts(opts: &[String]) -> Result<SecurityOpts> {
    let mut out = SecurityOpts {
        no_new_privileges: true,
        ..Default::default()
    };
    for o in opts {
        let (k, v) = o.split_once(['=', ':']).unwrap_or((o.as_str(), ""));
        match k {
            "seccomp" if v == "unconfined" => out.seccomp_unconfined = true,
            "seccomp" if !v.is_empty() => out.seccomp_profile = Some(v.to_string()),
            "no-new-privileges" => {
                out.no_new_privileges = match v {
                    "" | "true" => true,
                    "false" => false,
                    _ => {
                        return Err(EngineError::invalid(format!(
                            "invalid --security-opt {o:?}: no-new-privileges takes true or false"
                        )))
                    }
                }
            }
            "apparmor" | "label" => {
                return Err(EngineError::invalid(format!(
                    "invalid --security-opt {o:?}: AppArmor and SELinux are not supported by flotilla"
                )))
            }
            _ => {
                return Err(EngineError::invalid(format!(
                    "invalid --security-opt {o:?}: use seccomp=unconfined, seccomp=PROFILE.json or no-new-privileges[=false]"
                )))
            }
        }
    }
    Ok(out)
}

/// The capability set after `--privileged`, `--cap-add`, `--cap-drop` (names with or without
/// `CAP_`, any case; `ALL`).
pub fn capabilities(cfg: &pb::ContainerConfig, default: &[String]) -> Result<Vec<String>> {
    if cfg.privileged {
        return Ok(ALL_CAPS.iter().map(|s| s.to_string()).collect());
    }
    let norm = |c: &str| -> Result<String> {
        let up = c.trim().to_ascii_uppercase();
        if up == "ALL" {
            return Ok(up);
        }
        let name = if up.starts_with("CAP_") {
            up
        } else {
            format!("CAP_{up}")
        };
        if ALL_CAPS.contains(&name.as_str()) {
            Ok(name)
        } else {
            Err(EngineError::invalid(format!(
                "unknown capability {c:?} (e.g. NET_ADMIN, SYS_TIME)"
            )))
        }
    };
    let mut caps: Vec<String> = default.to_vec();
    let drops: Vec<String> = cfg
        .cap_drop
        .iter()
        .map(|c| norm(c))
        .collect::<Result<_>>()?;
    let adds: Vec<String> = cfg.cap_add.iter().map(|c| norm(c)).collect::<Result<_>>()?;
    if drops.iter().any(|d| d == "ALL") {
        caps.clear();
    } else {
        caps.retain(|c| !drops.contains(c));
    }
    if adds.iter().any(|a| a == "ALL") {
        caps = ALL_CAPS.iter().map(|s| s.to_string()).collect();
    } else {
        for a in adds {
            if !caps.contains(&a) {
                caps.push(a);
            }
        }
    }
    caps.sort();
    Ok(caps)
}

/// `uid[:gid]` or `name[:group]` resolved through the image's passwd/group files.
pub fn resolve_user(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32, Vec<u32>)> {
    if user.is_empty() {
        return Ok((0, 0, Vec::new()));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entries = |file: Option<&str>| -> Vec<Vec<String>> {
        file.unwrap_or("")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(':').map(str::to_string).collect())
            .collect()
    };
    let pw = entries(passwd);
    let gr = entries(group);
    let (uid, primary_gid, name) = match u.parse::<u32>() {
        Ok(uid) => {
            let e = pw
                .iter()
                .find(|e| e.get(2).and_then(|s| s.parse().ok()) == Some(uid));
            (
                uid,
                e.and_then(|e| e.get(3)?.parse().ok()).unwrap_or(0),
                e.and_then(|e| e.first().cloned()),
            )
        }
        Err(_) => {
            let e = pw
                .iter()
                .find(|e| e.first().map(String::as_str) == Some(u))
                .ok_or_else(|| {
                    EngineError::invalid(format!(
                        "unable to find user {u}: no matching entries in the image's /etc/passwd"
                    ))
                })?;
            let uid = e.get(2).and_then(|s| s.parse().ok()).ok_or_else(|| {
                EngineError::invalid(format!("malformed /etc/passwd entry for user {u}"))
            })?;
            (
                uid,
                e.get(3).and_then(|s| s.parse().ok()).unwrap_or(0),
                Some(u.to_string()),
            )
        }
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => gr
                .iter()
                .find(|e| e.first().map(String::as_str) == Some(g))
                .and_then(|e| e.get(2)?.parse().ok())
                .ok_or_else(|| {
                    EngineError::invalid(format!(
                        "unable to find group {g}: no matching entries in the image's /etc/group"
                    ))
                })?,
        },
    };
    // Supplementary groups: the groups that list the user by name.
    let mut extra = Vec::new();
    if let Some(name) = name {
        for e in &gr {
            let members = e.get(3).map(String::as_str).unwrap_or("");
            if members.split(',').any(|m| m == name) {
                if let Some(id) = e.get(2).and_then(|s| s.parse::<u32>().ok()) {
                    if id != gid && !extra.contains(&id) {
                        extra.push(id);
                    }
                }
            }
        }
    }
    Ok((uid, gid, extra))
}

fn rlimit_type(name: &str) -> Result<String> {
    const KNOWN: [&str; 16] = [
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
    let n = name.to_ascii_lowercase();
    if KNOWN.contains(&n.as_str()) {
        Ok(format!("RLIMIT_{}", n.to_ascii_uppercase()))
    } else {
        Err(EngineError::invalid(format!(
            "unknown ulimit {name:?} (one of {})",
            KNOWN.join(", ")
        )))
    }
}

/// Edits the bundle `spec` (the image's process on the runtime's default container) for `cfg`.
pub fn build(
    mut spec: Value,
    cfg: &pb::ContainerConfig,
    ctx: &SpecContext,
    caps: &[String],
    sec: &SecurityOpts,
) -> Result<Value> {
    let process = &mut spec["process"];
    // Env: the image's, overridden key by key by the request's.
    let mut env: Vec<String> = process["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for e in &cfg.env {
        let key = e.split('=').next().unwrap_or(e);
        if key.is_empty() {
            return Err(EngineError::invalid(format!(
                "invalid environment variable {e:?}: empty name"
            )));
        }
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", ctx.hostname));
    }
    if cfg.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    process["env"] = json!(env);
    if !cfg.working_dir.is_empty() {
        if !cfg.working_dir.starts_with('/') {
            return Err(EngineError::invalid(format!(
                "the working directory {:?} is invalid: it must be an absolute path",
                cfg.working_dir
            )));
        }
        process["cwd"] = json!(cfg.working_dir);
    }
    if !cfg.user.is_empty() {
        let (uid, gid, extra) =
            resolve_user(&cfg.user, ctx.passwd.as_deref(), ctx.group.as_deref())?;
        process["user"] = json!({"uid": uid, "gid": gid, "additionalGids": extra});
    }
    process["terminal"] = json!(cfg.tty);
    process["noNewPrivileges"] = json!(sec.no_new_privileges && !cfg.privileged);
    process["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps,
    });
    let res = cfg.resources.clone().unwrap_or_default();
    if !res.ulimits.is_empty() {
        let mut rl = Vec::new();
        for u in &res.ulimits {
            if u.soft > u.hard && u.hard >= 0 {
                return Err(EngineError::invalid(format!(
                    "invalid ulimit {}: soft limit {} is above the hard limit {}",
                    u.name, u.soft, u.hard
                )));
            }
            rl.push(json!({"type": rlimit_type(&u.name)?, "soft": u.soft as u64, "hard": u.hard as u64}));
        }
        process["rlimits"] = json!(rl);
    }
    if res.oom_score_adj != 0 {
        if !(-1000..=1000).contains(&res.oom_score_adj) {
            return Err(EngineError::invalid(format!(
                "invalid --oom-score-adj {}: must be between -1000 and 1000",
                res.oom_score_adj
            )));
        }
        process["oomScoreAdj"] = json!(res.oom_score_adj);
    }

    spec["hostname"] = json!(ctx.hostname);
    spec["root"]["readonly"] = json!(cfg.read_only);

    // Mounts: the defaults, minus anything the request or the generated files cover.
    let mut mounts: Vec<Value> = spec["mounts"].as_array().cloned().unwrap_or_default();
    let mut extra: Vec<Value> = Vec::new();
    for m in &ctx.mounts {
        match m {
            ResolvedMount::Bind {
                source,
                target,
                read_only,
            } => {
                let mut opts = vec!["rbind", "rprivate"];
                if *read_only {
                    opts.push("ro");
                }
                extra.push(json!({"destination": target, "type": "bind", "source": source, "options": opts}));
            }
            ResolvedMount::Tmpfs { target, size, mode } => {
                let mut opts = vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    format!("mode={:o}", if *mode == 0 { 0o1777 } else { *mode }),
                ];
                if *size > 0 {
                    opts.push(format!("size={size}"));
                }
                extra.push(json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts}));
            }
        }
    }
    for (src, target) in &ctx.etc_files {
        if extra.iter().any(|m| m["destination"] == json!(target)) {
            continue;
        }
        extra.push(json!({"destination": target, "type": "bind", "source": src, "options": ["rbind", "rprivate"]}));
    }
    let mut seen = std::collections::HashSet::new();
    for m in &extra {
        let d = m["destination"]
            .as_str()
            .unwrap_or("")
            .trim_end_matches('/')
            .to_string();
        if !d.starts_with('/') {
            return Err(EngineError::invalid(format!(
                "invalid mount target {d:?}: it must be an absolute path"
            )));
        }
        if !seen.insert(d.clone()) {
            return Err(EngineError::invalid(format!("duplicate mount point: {d}")));
        }
    }
    mounts.retain(|m| {
        !seen.contains(
            m["destination"]
                .as_str()
                .unwrap_or("")
                .trim_end_matches('/'),
        )
    });
    if cfg.privileged {
        for m in mounts.iter_mut() {
            if m["destination"] == json!("/sys") {
                if let Some(opts) = m["options"].as_array_mut() {
                    opts.retain(|o| o != "ro");
                }
            }
        }
    }
    mounts.extend(extra);
    spec["mounts"] = json!(mounts);

    let linux = &mut spec["linux"];
    // Network namespace.
    let mut namespaces: Vec<Value> = linux["namespaces"].as_array().cloned().unwrap_or_default();
    namespaces.retain(|n| n["type"] != json!("network") && n["type"] != json!("user"));
    match &ctx.netns {
        NetNs::New => namespaces.push(json!({"type": "network"})),
        NetNs::Path(p) => namespaces.push(json!({"type": "network", "path": p})),
        NetNs::Host => {}
    }
    if let Some((uid, gid, count)) = ctx.userns {
        namespaces.push(json!({"type": "user"}));
        linux["uidMappings"] = json!([{"containerID": 0, "hostID": uid, "size": count}]);
        linux["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": count}]);
    }
    linux["namespaces"] = json!(namespaces);
    if cfg.privileged {
        linux["maskedPaths"] = json!([]);
        linux["readonlyPaths"] = json!([]);
    }
    // Seccomp.
    let seccomp = if cfg.privileged || sec.seccomp_unconfined {
        None
    } else if let Some(custom) = &ctx.custom_seccomp {
        Some(custom.clone())
    } else {
        ctx.default_seccomp.clone()
    };
    match seccomp {
        Some(s) => linux["seccomp"] = s,
        None => {
            if let Some(o) = linux.as_object_mut() {
                o.remove("seccomp");
            }
        }
    }
    // Resources.
    let mut r = json!({});
    if res.memory < 0 || (res.memory > 0 && res.memory < 6 * 1024 * 1024) {
        return Err(EngineError::invalid(format!(
            "invalid --memory {}: the minimum memory limit is 6MB",
            res.memory
        )));
    }
    if res.memory > 0 {
        r["memory"]["limit"] = json!(res.memory);
    }
    if res.memory_swap != 0 {
        if res.memory == 0 {
            return Err(EngineError::invalid("--memory-swap needs --memory as well"));
        }
        if res.memory_swap > 0 && res.memory_swap < res.memory {
            return Err(EngineError::invalid(format!(
                "invalid --memory-swap {}: it must be at least --memory ({}), it counts memory plus swap",
                res.memory_swap, res.memory
            )));
        }
        r["memory"]["swap"] = json!(res.memory_swap);
    }
    if res.nano_cpus < 0 {
        return Err(EngineError::invalid("invalid --cpus: must be positive"));
    }
    if res.nano_cpus > 0 {
        let ncpu = std::thread::available_parallelism()
            .map(|n| n.get() as i64)
            .unwrap_or(1);
        if res.nano_cpus > ncpu * 1_000_000_000 {
            return Err(EngineError::invalid(format!(
                "invalid --cpus {:.2}: this node has {ncpu} CPUs",
                res.nano_cpus as f64 / 1e9
            )));
        }
        let period: i64 = 100_000;
        r["cpu"]["period"] = json!(period);
        r["cpu"]["quota"] = json!((res.nano_cpus * period / 1_000_000_000).max(1000));
    }
    if res.cpu_shares > 0 {
        r["cpu"]["shares"] = json!(res.cpu_shares.clamp(2, 262_144));
    }
    if !res.cpuset_cpus.is_empty() {
        r["cpu"]["cpus"] = json!(res.cpuset_cpus);
    }
    if res.pids_limit != 0 {
        r["pids"] = json!({"limit": res.pids_limit});
    }
    let devices = linux["resources"]["devices"].clone();
    if !devices.is_null() {
        r["devices"] = devices;
    }
    linux["resources"] = r;
    if !ctx.labels.is_empty() {
        let mut ann = spec["annotations"].as_object().cloned().unwrap_or_default();
        for (k, v) in &ctx.labels {
            ann.insert(k.clone(), json!(v));
        }
        spec["annotations"] = Value::Object(ann);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        let spec = crate::runtime::spec::default_spec(vec!["sh".into()]);
        let mut v = serde_json::to_value(&spec).expect("json");
        v["process"]["env"] = json!(["PATH=/bin", "A=1"]);
        v
    }

    fn ctx() -> SpecContext {
        SpecContext {
            hostname: "abc".into(),
            netns: NetNs::Path("/run/flotilla/netns/x".into()),
            mounts: vec![],
            etc_files: vec![("/var/lib/c/hosts".into(), "/etc/hosts".into())],
            passwd: Some("root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n".into()),
            group: Some("root:x:0:\nwww:x:34:\nweb:x:500:www\n".into()),
            default_seccomp: Some(json!({"defaultAction": "SCMP_ACT_ERRNO"})),
            custom_seccomp: None,
            userns: None,
            labels: vec![("k".into(), "v".into())],
        }
    }

    fn defaults() -> Vec<String> {
        vec!["CAP_CHOWN".into(), "CAP_KILL".into(), "CAP_NET_RAW".into()]
    }

    fn run(cfg: &pb::ContainerConfig) -> Result<Value> {
        let caps = capabilities(cfg, &defaults())?;
        let sec = parse_security_opts(&cfg.security_opt)?;
        build(base(), cfg, &ctx(), &caps, &sec)
    }

    #[test]
    fn env_overrides_by_key_and_basics_apply() {
        let cfg = pb::ContainerConfig {
            env: vec!["A=2".into(), "B=3".into()],
            working_dir: "/srv".into(),
            tty: true,
            read_only: true,
            ..Default::default()
        };
        let s = run(&cfg).expect("spec");
        let env: Vec<&str> = s["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            env,
            ["PATH=/bin", "A=2", "B=3", "HOSTNAME=abc", "TERM=xterm"]
        );
        assert_eq!(s["process"]["cwd"], "/srv");
        assert_eq!(s["process"]["terminal"], true);
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(s["hostname"], "abc");
        assert_eq!(s["annotations"]["k"], "v");
        assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/flotilla/netns/x"));
        assert!(s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/etc/hosts" && m["type"] == "bind"));
        // The result is a valid OCI spec.
        let _: oci_spec::runtime::Spec = serde_json::from_value(s).expect("valid spec");
    }

    #[test]
    fn capabilities_add_drop_all_and_privileged() {
        let d = defaults();
        let c = |add: &[&str], drop: &[&str], privileged: bool| {
            capabilities(
                &pb::ContainerConfig {
                    cap_add: add.iter().map(|s| s.to_string()).collect(),
                    cap_drop: drop.iter().map(|s| s.to_string()).collect(),
                    privileged,
                    ..Default::default()
                },
                &d,
            )
        };
        assert_eq!(
            c(&["net_admin"], &["KILL"], false).unwrap(),
            ["CAP_CHOWN", "CAP_NET_ADMIN", "CAP_NET_RAW"]
        );
        assert_eq!(
            c(&["CAP_SYS_TIME"], &["ALL"], false).unwrap(),
            ["CAP_SYS_TIME"]
        );
        assert_eq!(c(&["ALL"], &[], false).unwrap().len(), ALL_CAPS.len());
        assert_eq!(c(&[], &[], true).unwrap().len(), ALL_CAPS.len());
        let e = c(&["FLY"], &[], false).unwrap_err();
        assert!(e.msg.contains("unknown capability \"FLY\""), "{}", e.msg);
    }

    #[test]
    fn privileged_and_unconfined_drop_seccomp_and_masks() {
        let s = run(&pb::ContainerConfig {
            privileged: true,
            ..Default::default()
        })
        .unwrap();
        assert!(s["linux"].get("seccomp").is_none());
        assert_eq!(s["linux"]["maskedPaths"], json!([]));
        assert_eq!(s["process"]["noNewPrivileges"], false);
        let s = run(&pb::ContainerConfig {
            security_opt: vec!["seccomp=unconfined".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(s["linux"].get("seccomp").is_none());
        let s = run(&pb::ContainerConfig {
            security_opt: vec!["no-new-privileges=false".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s["process"]["noNewPrivileges"], false);
        for bad in ["apparmor=x", "nope", "no-new-privileges=maybe"] {
            assert!(
                run(&pb::ContainerConfig {
                    security_opt: vec![bad.into()],
                    ..Default::default()
                })
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn users_resolve_by_name_and_number() {
        let p = Some("root:x:0:0::/root:/bin/sh\nwww:x:33:34::/:/bin/false");
        let g = Some("root:x:0:\nwww:x:34:\nweb:x:500:www,other");
        assert_eq!(resolve_user("www", p, g).unwrap(), (33, 34, vec![500]));
        assert_eq!(resolve_user("33", p, g).unwrap(), (33, 34, vec![500]));
        assert_eq!(resolve_user("1000:7", p, g).unwrap(), (1000, 7, vec![]));
        assert_eq!(resolve_user("www:web", p, g).unwrap(), (33, 500, vec![]));
        assert!(resolve_user("nobody", p, g)
            .unwrap_err()
            .msg
            .contains("unable to find user nobody"));
        assert!(resolve_user("www:nogroup", p, g)
            .unwrap_err()
            .msg
            .contains("unable to find group nogroup"));
        let s = run(&pb::ContainerConfig {
            user: "www".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s["process"]["user"]["uid"], 33);
    }

    #[test]
    fn resources_and_limits_validate() {
        let res = |r: pb::Resources| {
            run(&pb::ContainerConfig {
                resources: Some(r),
                ..Default::default()
            })
        };
        let s = res(pb::Resources {
            memory: 64 << 20,
            memory_swap: 128 << 20,
            nano_cpus: 500_000_000,
            cpu_shares: 512,
            pids_limit: 50,
            ulimits: vec![pb::Ulimit {
                name: "nofile".into(),
                soft: 100,
                hard: 200,
            }],
            oom_score_adj: 500,
            ..Default::default()
        })
        .unwrap();
        let r = &s["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(r["memory"]["swap"], 128 << 20);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["cpu"]["shares"], 512);
        assert_eq!(r["pids"]["limit"], 50);
        assert_eq!(s["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(s["process"]["oomScoreAdj"], 500);
        let _: oci_spec::runtime::Spec = serde_json::from_value(s).expect("valid spec");
        for (bad, want) in [
            (
                pb::Resources {
                    memory: 1024,
                    ..Default::default()
                },
                "minimum memory limit",
            ),
            (
                pb::Resources {
                    memory: 64 << 20,
                    memory_swap: 1 << 20,
                    ..Default::default()
                },
                "at least --memory",
            ),
            (
                pb::Resources {
                    memory_swap: 1 << 30,
                    ..Default::default()
                },
                "needs --memory",
            ),
            (
                pb::Resources {
                    nano_cpus: 1_000_000_000_000,
                    ..Default::default()
                },
                "CPUs",
            ),
            (
                pb::Resources {
                    oom_score_adj: 5000,
                    ..Default::default()
                },
                "-1000 and 1000",
            ),
            (
                pb::Resources {
                    ulimits: vec![pb::Ulimit {
                        name: "bogus".into(),
                        soft: 1,
                        hard: 1,
                    }],
                    ..Default::default()
                },
                "unknown ulimit",
            ),
            (
                pb::Resources {
                    ulimits: vec![pb::Ulimit {
                        name: "nofile".into(),
                        soft: 10,
                        hard: 1,
                    }],
                    ..Default::default()
                },
                "above the hard limit",
            ),
        ] {
            let e = res(bad).unwrap_err();
            assert!(e.msg.contains(want), "{} vs {want}", e.msg);
        }
    }

    #[test]
    fn mounts_replace_defaults_and_duplicates_are_refused() {
        let mut c = ctx();
        c.mounts = vec![
            ResolvedMount::Tmpfs {
                target: "/tmp".into(),
                size: 1 << 20,
                mode: 0,
            },
            ResolvedMount::Bind {
                source: "/srv/data".into(),
                target: "/data".into(),
                read_only: true,
            },
        ];
        let cfg = pb::ContainerConfig::default();
        let caps = capabilities(&cfg, &defaults()).unwrap();
        let sec = parse_security_opts(&[]).unwrap();
        let s = build(base(), &cfg, &c, &caps, &sec).unwrap();
        let ms = s["mounts"].as_array().unwrap();
        let data = ms.iter().find(|m| m["destination"] == "/data").unwrap();
        assert!(data["options"].as_array().unwrap().contains(&json!("ro")));
        let tmp = ms.iter().find(|m| m["destination"] == "/tmp").unwrap();
        assert!(tmp["options"]
            .as_array()
            .unwrap()
            .contains(&json!("size=1048576")));
        c.mounts.push(ResolvedMount::Tmpfs {
            target: "/data/".into(),
            size: 0,
            mode: 0,
        });
        let e = build(base(), &cfg, &c, &caps, &sec).unwrap_err();
        assert!(e.msg.contains("duplicate mount point: /data"), "{}", e.msg);
    }

    #[test]
    fn host_network_and_userns() {
        let mut c = ctx();
        c.netns = NetNs::Host;
        c.userns = Some((100_000, 100_000, 65536));
        let cfg = pb::ContainerConfig::default();
        let caps = capabilities(&cfg, &defaults()).unwrap();
        let s = build(base(), &cfg, &c, &caps, &parse_security_opts(&[]).unwrap()).unwrap();
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network"));
        assert!(ns.iter().any(|n| n["type"] == "user"));
        assert_eq!(s["linux"]["uidMappings"][0]["hostID"], 100_000);
    }
}
