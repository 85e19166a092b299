//! Checks on `linux.resources` made before anything is written, and value conversions.
//!
//! Invariant: [`validate`] rejects every value the kernel would refuse or that has no meaning
//! (negative sizes other than -1, zero CPU shares, a quota below 1 ms, a swap limit lower than
//! the memory limit, CPUs that do not exist...), so `apply` never leaves a cgroup half-configured
//! because of bad input. Unset conventions follow runc: a memory limit, swap or pids limit of 0
//! means "leave as is".

use std::collections::BTreeSet;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use super::CgroupError;

/// CPUs and memory nodes that exist on the host, as kernel list strings ("0-3,8").
#[derive(Debug, Clone)]
pub(super) struct HostCpus {
    pub(super) cpus: String,
    pub(super) mems: String,
}

fn invalid(field: &'static str, value: impl ToString, reason: impl Into<String>) -> CgroupError {
    CgroupError::Invalid {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Validates `r` completely. `host` is called only when the request names CPUs or memory nodes.
pub(super) fn validate(
    r: &LinuxResources,
    host: impl FnOnce() -> Result<HostCpus, CgroupError>,
) -> Result<(), CgroupError> {
    if let Some(m) = r.memory() {
        let limit = m.limit();
        if let Some(v) = limit {
            if v < -1 {
                return Err(invalid(
                    "linux.resources.memory.limit",
                    v,
                    "must be -1 (unlimited) or a positive number of bytes",
                ));
            }
        }
        if let Some(v) = m.reservation() {
            if v < -1 {
                return Err(invalid(
                    "linux.resources.memory.reservation",
                    v,
                    "must be -1 (unlimited) or a number of bytes",
                ));
            }
        }
        if let Some(s) = m.swap() {
            if s < -1 {
                return Err(invalid(
                    "linux.resources.memory.swap",
                    s,
                    "must be -1 (unlimited) or a positive number of bytes (memory + swap)",
                ));
            }
            if s > 0 {
                match limit {
                    Some(l) if l > 0 => {
                        if s < l {
                            return Err(invalid(
                                "linux.resources.memory.swap",
                                s,
                                format!(
                                    "is lower than the memory limit {l}: OCI swap counts memory + \
                                     swap, so it must be at least the memory limit (or -1)"
                                ),
                            ));
                        }
                    }
                    _ => {
                        return Err(invalid(
                            "linux.resources.memory.swap",
                            s,
                            "a swap limit needs a memory limit: set linux.resources.memory.limit",
                        ))
                    }
                }
            }
        }
        if let Some(sw) = m.swappiness() {
            if sw > 100 {
                return Err(invalid(
                    "linux.resources.memory.swappiness",
                    sw,
                    "must be between 0 and 100",
                ));
            }
        }
    }

    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares() {
            if !(2..=262_144).contains(&s) {
                return Err(invalid(
                    "linux.resources.cpu.shares",
                    s,
                    "must be between 2 and 262144",
                ));
            }
        }
        if let Some(q) = c.quota() {
            if q != -1 && q <= 0 {
                return Err(invalid(
                    "linux.resources.cpu.quota",
                    q,
                    "must be -1 (unlimited) or a positive number of microseconds",
                ));
            }
            if q > 0 && q < 1000 {
                return Err(invalid(
                    "linux.resources.cpu.quota",
                    q,
                    "must be at least 1000 microseconds (the kernel's minimum)",
                ));
            }
        }
        if let Some(p) = c.period() {
            if !(1000..=1_000_000).contains(&p) {
                return Err(invalid(
                    "linux.resources.cpu.period",
                    p,
                    "must be between 1000 and 1000000 microseconds",
                ));
            }
        }
        if let Some(i) = c.idle() {
            if i != 0 && i != 1 {
                return Err(invalid("linux.resources.cpu.idle", i, "must be 0 or 1"));
            }
        }
        if let Some(rt) = c.realtime_runtime() {
            if rt < -1 {
                return Err(invalid(
                    "linux.resources.cpu.realtimeRuntime",
                    rt,
                    "must be -1 or a number of microseconds",
                ));
            }
        }
        let cpus = c.cpus().as_deref().filter(|s| !s.trim().is_empty());
        let mems = c.mems().as_deref().filter(|s| !s.trim().is_empty());
        if cpus.is_some() || mems.is_some() {
            let host = host()?;
            if let Some(cpus) = cpus {
                check_list("linux.resources.cpu.cpus", "CPU", cpus, &host.cpus)?;
            }
            if let Some(mems) = mems {
                check_list("linux.resources.cpu.mems", "memory node", mems, &host.mems)?;
            }
        }
    }

    if let Some(p) = r.pids() {
        if p.limit() < -1 {
            return Err(invalid(
                "linux.resources.pids.limit",
                p.limit(),
                "must be -1 (unlimited) or a positive number of processes",
            ));
        }
    }

    if let Some(b) = r.block_io() {
        for (field, w) in [
            ("linux.resources.blockIO.weight", b.weight()),
            ("linux.resources.blockIO.leafWeight", b.leaf_weight()),
        ] {
            if let Some(w) = w {
                if !(10..=1000).contains(&w) {
                    return Err(invalid(field, w, "must be between 10 and 1000"));
                }
            }
        }
        for d in b.weight_device().iter().flatten() {
            check_dev("linux.resources.blockIO.weightDevice", d.major(), d.minor())?;
            if let Some(w) = d.weight() {
                if !(10..=1000).contains(&w) {
                    return Err(invalid(
                        "linux.resources.blockIO.weightDevice.weight",
                        w,
                        "must be between 10 and 1000",
                    ));
                }
            }
        }
        for (field, list) in [
            (
                "linux.resources.blockIO.throttleReadBpsDevice",
                b.throttle_read_bps_device(),
            ),
            (
                "linux.resources.blockIO.throttleWriteBpsDevice",
                b.throttle_write_bps_device(),
            ),
            (
                "linux.resources.blockIO.throttleReadIOPSDevice",
                b.throttle_read_iops_device(),
            ),
            (
                "linux.resources.blockIO.throttleWriteIOPSDevice",
                b.throttle_write_iops_device(),
            ),
        ] {
            for d in list.iter().flatten() {
                check_dev(field, d.major(), d.minor())?;
            }
        }
    }

    for rule in r.devices().iter().flatten() {
        for (what, n) in [("major", rule.major()), ("minor", rule.minor())] {
            if let Some(n) = n {
                if n < -1 {
                    return Err(invalid(
                        "linux.resources.devices",
                        n,
                        format!("device {what} must be -1 (any) or a number"),
                    ));
                }
            }
        }
        if let Some(access) = rule.access() {
            if access.chars().any(|c| !matches!(c, 'r' | 'w' | 'm')) {
                return Err(invalid(
                    "linux.resources.devices.access",
                    format!("{access:?}"),
                    "may only contain the letters r, w and m",
                ));
            }
        }
    }

    for key in r.unified().iter().flat_map(|m| m.keys()) {
        if key.is_empty() || key.contains('/') || key.starts_with('.') {
            return Err(invalid(
                "linux.resources.unified",
                format!("{key:?}"),
                "keys must be plain cgroup file names like \"memory.high\"",
            ));
        }
        if key.starts_with("cgroup.") {
            return Err(invalid(
                "linux.resources.unified",
                format!("{key:?}"),
                "cgroup core files cannot be set through the unified map",
            ));
        }
    }
    Ok(())
}

fn check_dev(field: &'static str, major: i64, minor: i64) -> Result<(), CgroupError> {
    if major < 0 || minor < 0 {
        return Err(invalid(
            field,
            format!("{major}:{minor}"),
            "device numbers must not be negative",
        ));
    }
    Ok(())
}

/// Checks that every id of the `requested` list is in the `available` list.
fn check_list(
    field: &'static str,
    what: &str,
    requested: &str,
    available: &str,
) -> Result<(), CgroupError> {
    let wanted = parse_id_list(requested)
        .map_err(|reason| invalid(field, format!("{requested:?}"), reason))?;
    let have = parse_id_list(available).map_err(|reason| {
        invalid(
            field,
            format!("{requested:?}"),
            format!("cannot read the host's {what} list {available:?}: {reason}"),
        )
    })?;
    let have: BTreeSet<u32> = have
        .iter()
        .flat_map(|&(a, b)| a..=b.min(a.saturating_add(MAX_HOST_IDS)))
        .collect();
    for &(a, b) in &wanted {
        // Stops at the first missing id, so a huge range costs at most |have| + 1 steps.
        if let Some(missing) = (a..=b).find(|id| !have.contains(id)) {
            return Err(invalid(
                field,
                format!("{requested:?}"),
                format!("names {what} {missing}, which does not exist on this host (available: {available})"),
            ));
        }
    }
    Ok(())
}

/// Upper bound on the ids expanded from one host range (guards against garbage input).
const MAX_HOST_IDS: u32 = 1 << 16;

/// Parses a kernel id list such as "0-3,8,10-11" into inclusive ranges.
pub(super) fn parse_id_list(list: &str) -> Result<Vec<(u32, u32)>, String> {
    let mut out = Vec::new();
    for part in list.trim().split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err("empty item in the list (expected e.g. \"0-3,8\")".to_string());
        }
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("{s:?} is not a number (expected e.g. \"0-3,8\")"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(format!("range {part:?} runs backwards"));
        }
        out.push((a, b));
    }
    Ok(out)
}

/// The device rules every container gets (the Docker/runc default allow-list): mknod of any
/// device, and read/write/mknod on null, zero, full, random, urandom, tty, console, ptmx, the
/// pty slaves and tun. On v1 they are written after the spec's rules.
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    let rule = |typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true);
        r.set_typ(Some(typ));
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some(access.to_string()));
        r
    };
    use LinuxDeviceType::{B, C};
    vec![
        rule(C, None, None, "m"),
        rule(B, None, None, "m"),
        rule(C, Some(1), Some(3), "rwm"),
        rule(C, Some(1), Some(5), "rwm"),
        rule(C, Some(1), Some(7), "rwm"),
        rule(C, Some(1), Some(8), "rwm"),
        rule(C, Some(1), Some(9), "rwm"),
        rule(C, Some(5), Some(0), "rwm"),
        rule(C, Some(5), Some(1), "rwm"),
        rule(C, Some(5), Some(2), "rwm"),
        rule(C, Some(136), None, "rwm"),
        rule(C, Some(10), Some(200), "rwm"),
    ]
}

/// A device rule in the kernel's v1 format: "c 1:3 rwm", "a *:* rwm". `None` for rules the
/// device controller cannot express (FIFOs are not devices).
pub(super) fn device_rule_v1(rule: &LinuxDeviceCgroup) -> Option<String> {
    let typ = match rule.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => "a",
        LinuxDeviceType::B => "b",
        LinuxDeviceType::C | LinuxDeviceType::U => "c",
        LinuxDeviceType::P => return None,
    };
    let num = |n: Option<i64>| match n {
        Some(n) if n >= 0 => n.to_string(),
        _ => "*".to_string(),
    };
    let access = match rule.access().as_deref() {
        Some(a) if !a.is_empty() => a.to_string(),
        _ => "rwm".to_string(),
    };
    Some(format!(
        "{typ} {}:{} {access}",
        num(rule.major()),
        num(rule.minor())
    ))
}

/// Whether `rule` is part of the default list a runtime always produces: deny-all, allow-all
/// (privileged containers) or one of [`default_device_rules`].
pub(super) fn is_default_device_rule(rule: &LinuxDeviceCgroup) -> bool {
    let Some(text) = device_rule_v1(rule) else {
        return false;
    };
    if text == "a *:* rwm" {
        return true;
    }
    rule.allow()
        && default_device_rules()
            .iter()
            .any(|d| device_rule_v1(d).as_deref() == Some(text.as_str()))
}

/// cgroup v1 `cpu.shares` (2..262144) to v2 `cpu.weight` (1..10000).
pub(super) fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// blkio weight (10..1000) to v2 `io.weight` (1..10000).
pub(super) fn blkio_weight_to_io_weight(weight: u16) -> u64 {
    let w = u64::from(weight.clamp(10, 1000));
    1 + ((w - 10) * 9999) / 990
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
        LinuxResourcesBuilder,
    };

    fn host() -> Result<HostCpus, CgroupError> {
        Ok(HostCpus {
            cpus: "0-3".into(),
            mems: "0".into(),
        })
    }

    fn mem(limit: Option<i64>, swap: Option<i64>) -> LinuxResources {
        let mut m = LinuxMemoryBuilder::default();
        if let Some(l) = limit {
            m = m.limit(l);
        }
        if let Some(s) = swap {
            m = m.swap(s);
        }
        LinuxResourcesBuilder::default()
            .memory(m.build().expect("memory"))
            .build()
            .expect("resources")
    }

    fn cpu(b: LinuxCpuBuilder) -> LinuxResources {
        LinuxResourcesBuilder::default()
            .cpu(b.build().expect("cpu"))
            .build()
            .expect("resources")
    }

    fn err_text(r: &LinuxResources) -> String {
        validate(r, host).expect_err("must be rejected").to_string()
    }

    #[test]
    fn memory_rules() {
        assert!(validate(&mem(Some(-1), Some(-1)), host).is_ok());
        assert!(validate(&mem(Some(1 << 20), Some(2 << 20)), host).is_ok());
        assert!(validate(&mem(Some(1 << 20), Some(1 << 20)), host).is_ok());
        assert_eq!(
            err_text(&mem(Some(-5), None)),
            "invalid linux.resources.memory.limit -5: must be -1 (unlimited) or a positive \
             number of bytes"
        );
        assert!(
            err_text(&mem(Some(2 << 20), Some(1 << 20))).contains("lower than the memory limit")
        );
        assert!(err_text(&mem(None, Some(1 << 20))).contains("needs a memory limit"));
        assert!(err_text(&mem(Some(1 << 20), Some(-3))).contains("swap -3"));
    }

    #[test]
    fn cpu_rules() {
        assert!(validate(&cpu(LinuxCpuBuilder::default().shares(1024u64)), host).is_ok());
        assert!(err_text(&cpu(LinuxCpuBuilder::default().shares(0u64))).contains("shares 0"));
        assert!(err_text(&cpu(LinuxCpuBuilder::default().quota(0i64))).contains("quota 0"));
        assert!(err_text(&cpu(LinuxCpuBuilder::default().quota(-2i64))).contains("quota -2"));
        assert!(err_text(&cpu(LinuxCpuBuilder::default().quota(500i64))).contains("1000"));
        assert!(validate(&cpu(LinuxCpuBuilder::default().quota(-1i64)), host).is_ok());
        assert!(err_text(&cpu(LinuxCpuBuilder::default().period(10u64))).contains("period 10"));
        assert!(validate(&cpu(LinuxCpuBuilder::default().cpus("0-1,3")), host).is_ok());
        assert_eq!(
            err_text(&cpu(LinuxCpuBuilder::default().cpus("2-7"))),
            "invalid linux.resources.cpu.cpus \"2-7\": names CPU 4, which does not exist on \
             this host (available: 0-3)"
        );
        assert!(err_text(&cpu(LinuxCpuBuilder::default().cpus("a-b"))).contains("not a number"));
        assert!(err_text(&cpu(LinuxCpuBuilder::default().mems("1"))).contains("memory node 1"));
        // Empty cpus means "any" and does not even look at the host.
        let r = cpu(LinuxCpuBuilder::default().cpus(""));
        assert!(validate(&r, || panic!("host must not be read")).is_ok());
    }

    #[test]
    fn pids_and_blkio_rules() {
        let pids = |l: i64| {
            LinuxResourcesBuilder::default()
                .pids(LinuxPidsBuilder::default().limit(l).build().expect("pids"))
                .build()
                .expect("resources")
        };
        assert!(validate(&pids(-1), host).is_ok());
        assert!(err_text(&pids(-2)).contains("pids.limit -2"));
        let blkio = LinuxResourcesBuilder::default()
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(5u16)
                    .build()
                    .expect("blkio"),
            )
            .build()
            .expect("resources");
        assert!(err_text(&blkio).contains("blockIO.weight 5"));
    }

    #[test]
    fn id_lists() {
        assert_eq!(parse_id_list("0-3,8"), Ok(vec![(0, 3), (8, 8)]));
        assert_eq!(parse_id_list(" 1 \n"), Ok(vec![(1, 1)]));
        assert!(parse_id_list("3-1").is_err());
        assert!(parse_id_list("1,,2").is_err());
        assert!(parse_id_list("x").is_err());
    }

    #[test]
    fn device_rule_classification() {
        for rule in default_device_rules() {
            assert!(is_default_device_rule(&rule), "{rule:?}");
        }
        let mut deny_all = LinuxDeviceCgroup::default();
        deny_all.set_access(Some("rwm".into()));
        assert!(is_default_device_rule(&deny_all));
        assert_eq!(device_rule_v1(&deny_all).as_deref(), Some("a *:* rwm"));
        let mut fuse = LinuxDeviceCgroup::default();
        fuse.set_allow(true);
        fuse.set_typ(Some(LinuxDeviceType::C));
        fuse.set_major(Some(10));
        fuse.set_minor(Some(229));
        fuse.set_access(Some("rwm".into()));
        assert!(!is_default_device_rule(&fuse));
        // Denying one default device is not a default rule either.
        let mut deny_null = default_device_rules()[2].clone();
        deny_null.set_allow(false);
        assert!(!is_default_device_rule(&deny_null));
    }

    #[test]
    fn conversions() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(blkio_weight_to_io_weight(10), 1);
        assert_eq!(blkio_weight_to_io_weight(500), 4950);
        assert_eq!(blkio_weight_to_io_weight(1000), 10_000);
    }
}
