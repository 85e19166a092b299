//! The node's description for the managers: hostname, platform, resources, engine version and
//! labels, read from the host (uname, the CPUs this process may use, /proc/meminfo).

use std::collections::HashMap;

use flotilla_proto::control::v1 as pb;

/// MemTotal of a /proc/meminfo text, in bytes.
pub fn mem_total(meminfo: &str) -> Option<i64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let mut parts = rest.split_whitespace();
        let n: i64 = parts.next()?.parse().ok()?;
        let mult = match parts.next() {
            Some("kB") | Some("KB") | Some("kb") => 1024,
            None => 1,
            Some(_) => return None,
        };
        n.checked_mul(mult)
    })
}

/// A description from its parts (the testable half of [`describe_host`]).
pub fn describe(
    hostname: &str,
    arch: &str,
    cpus: usize,
    meminfo: &str,
    engine_labels: HashMap<String, String>,
) -> pb::NodeDescription {
    pb::NodeDescription {
        hostname: hostname.to_string(),
        platform: Some(pb::Platform {
            os: "linux".into(),
            architecture: arch.to_string(),
        }),
        resources: Some(pb::Resources {
            nano_cpus: i64::try_from(cpus)
                .unwrap_or(i64::MAX / 1_000_000_000)
                .saturating_mul(1_000_000_000),
            memory_bytes: mem_total(meminfo).unwrap_or(0),
            pids: 0,
        }),
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        engine_labels,
    }
}

/// CPUs this process may run on (its affinity mask), else the available parallelism.
pub fn usable_cpus() -> usize {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .ok()
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count()
        })
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// This host's description.
pub fn describe_host(engine_labels: HashMap<String, String>) -> pb::NodeDescription {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let arch = nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.machine().to_str().map(str::to_string))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    describe(&hostname, &arch, usable_cpus(), &meminfo, engine_labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str =
        "MemTotal:        8136220 kB\nMemFree:         1402112 kB\nMemAvailable:    5829000 kB\n";

    #[test]
    fn description_from_sample_host_data() {
        assert_eq!(mem_total(MEMINFO), Some(8_136_220 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: x kB\n"), None);
        let d = describe(
            "web1",
            "x86_64",
            2,
            MEMINFO,
            [("zone".to_string(), "b".to_string())].into(),
        );
        assert_eq!(d.hostname, "web1");
        let p = d.platform.unwrap();
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str()),
            ("linux", "x86_64")
        );
        let r = d.resources.unwrap();
        assert_eq!(r.nano_cpus, 2_000_000_000);
        assert_eq!(r.memory_bytes, 8_331_489_280);
        assert_eq!(d.engine_labels["zone"], "b");
        assert!(!d.engine_version.is_empty());
    }

    #[test]
    fn the_host_describes_itself() {
        let d = describe_host(HashMap::new());
        assert!(!d.hostname.is_empty());
        assert!(d.resources.unwrap().nano_cpus >= 1_000_000_000);
        assert!(!d.platform.unwrap().architecture.is_empty());
    }
}
