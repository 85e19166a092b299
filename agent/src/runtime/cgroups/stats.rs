//! Resource usage of one cgroup, and parsers for the kernel's stat file formats.
//!
//! The parsers are pure (text in, values out) so they are tested on fixtures. "Flat keyed" files
//! (`memory.stat`, `cpu.stat`, `memory.events`, `memory.oom_control`, `cgroup.events`) are parsed
//! leniently: a line whose value is not a number is skipped, so a new kernel field never breaks
//! stats. A key that is absent reads as 0 where the kernel omits zero counters, and as `None` where
//! its absence means "not available on this kernel".

use std::collections::HashMap;

use serde::Serialize;

/// Usage of one container's cgroup. A section is `None` when its controller is not available
/// for this cgroup (not mounted in v1, not enabled in v2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub memory: Option<MemoryStats>,
    pub cpu: Option<CpuStats>,
    pub pids: Option<PidsStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    /// Bytes charged now (v1 `memory.usage_in_bytes`, v2 `memory.current`); includes page cache.
    pub usage: u64,
    /// High-water mark (v1 `memory.max_usage_in_bytes`, v2 `memory.peak` when the kernel has it).
    pub max_usage: Option<u64>,
    /// Memory limit in bytes; `None` is unlimited.
    pub limit: Option<u64>,
    /// Page cache bytes (v1 `total_cache`, v2 `file`).
    pub cache: u64,
    /// Anonymous memory bytes (v1 `total_rss`, v2 `anon`).
    pub rss: u64,
    /// Swap in use, when swap accounting is on.
    pub swap_usage: Option<u64>,
    /// Processes killed by the OOM killer in this cgroup.
    pub oom_kills: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    /// Total CPU time in nanoseconds.
    pub usage_ns: u64,
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    /// CFS bandwidth periods elapsed / throttled, and total throttled time.
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PidsStats {
    pub current: u64,
    /// `None` is unlimited.
    pub limit: Option<u64>,
}

/// Parses a flat keyed file (`key value` per line).
pub(super) fn flat_keyed(text: &str) -> HashMap<&str, u64> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        match value.parse::<u64>() {
            Ok(v) => {
                map.insert(key, v);
            }
            Err(_) => tracing::debug!(line, "skipping non-numeric cgroup stat line"),
        }
    }
    map
}

/// Smallest value treated as "unlimited" in v1 limit files. The kernel reports unlimited as
/// `PAGE_COUNTER_MAX * PAGE_SIZE` (9223372036854771712 with 4 KiB pages); it depends on the page
/// size, so anything from 4 EiB up is unlimited.
const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

/// Parses a limit value: `max` or a v1 "unlimited" number give `None`.
pub(super) fn parse_limit(text: &str) -> Result<Option<u64>, String> {
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    if text == "-1" {
        return Ok(None);
    }
    let v = text.parse::<u64>().map_err(|e| e.to_string())?;
    Ok(if v >= V1_UNLIMITED_FLOOR {
        None
    } else {
        Some(v)
    })
}

/// v2 `cpu.stat` (microseconds) to [`CpuStats`].
pub(super) fn cpu_v2(cpu_stat: &str) -> CpuStats {
    let m = flat_keyed(cpu_stat);
    let us = |k: &str| m.get(k).map(|v| v.saturating_mul(1000));
    CpuStats {
        usage_ns: us("usage_usec").unwrap_or(0),
        user_ns: us("user_usec"),
        system_ns: us("system_usec"),
        nr_periods: m.get("nr_periods").copied().unwrap_or(0),
        nr_throttled: m.get("nr_throttled").copied().unwrap_or(0),
        throttled_ns: us("throttled_usec").unwrap_or(0),
    }
}

/// v1 `cpu.stat` of the cpu controller: (nr_periods, nr_throttled, throttled_time in ns).
pub(super) fn cpu_throttling_v1(cpu_stat: &str) -> (u64, u64, u64) {
    let m = flat_keyed(cpu_stat);
    let get = |k: &str| m.get(k).copied().unwrap_or(0);
    (
        get("nr_periods"),
        get("nr_throttled"),
        get("throttled_time"),
    )
}

/// v1 `cpuacct.stat` (`user`/`system` in USER_HZ ticks) to nanoseconds.
pub(super) fn cpuacct_stat_v1(text: &str, ticks_per_second: u64) -> (Option<u64>, Option<u64>) {
    let m = flat_keyed(text);
    let per_tick = 1_000_000_000 / ticks_per_second.max(1);
    let ns = |k: &str| m.get(k).map(|t| t.saturating_mul(per_tick));
    (ns("user"), ns("system"))
}

/// The `oom_kill` counter of v1 `memory.oom_control` or v2 `memory.events`; `None` when the
/// kernel does not report it.
pub(super) fn oom_kill_count(text: &str) -> Option<u64> {
    flat_keyed(text).get("oom_kill").copied()
}

/// Cache and rss from v1 `memory.stat`: hierarchical totals, falling back to the local values.
pub(super) fn memory_stat_v1(text: &str) -> (u64, u64) {
    let m = flat_keyed(text);
    let pick =
        |total: &str, local: &str| m.get(total).or_else(|| m.get(local)).copied().unwrap_or(0);
    (pick("total_cache", "cache"), pick("total_rss", "rss"))
}

/// Cache (`file`) and rss (`anon`) from v2 `memory.stat`.
pub(super) fn memory_stat_v2(text: &str) -> (u64, u64) {
    let m = flat_keyed(text);
    let get = |k: &str| m.get(k).copied().unwrap_or(0);
    (get("file"), get("anon"))
}

/// The `frozen` flag of v2 `cgroup.events` (absent reads as not frozen).
pub(super) fn events_frozen(text: &str) -> bool {
    flat_keyed(text).get("frozen").copied() == Some(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_CPU_STAT: &str = "usage_usec 2500\nuser_usec 1500\nsystem_usec 1000\n\
        core_sched.force_idle_usec 0\nnr_periods 10\nnr_throttled 3\nthrottled_usec 700\n\
        nr_bursts 0\nburst_usec 0\n";

    const V2_MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";

    const V2_MEMORY_STAT: &str = "anon 1048576\nfile 4096\nkernel 8192\nshmem 0\n\
        file_mapped 0\nanon_thp 0\nworkingset_refault_anon 0\npgfault 42\n";

    const V1_MEMORY_STAT: &str = "cache 10\nrss 20\nrss_huge 0\nswap 0\n\
        hierarchical_memory_limit 9223372036854771712\ntotal_cache 100\ntotal_rss 200\n";

    const V1_OOM_CONTROL: &str = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";

    #[test]
    fn flat_keyed_skips_malformed_lines() {
        let m = flat_keyed("a 1\nb x\nc\nd 4 5\ne 5\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("a"), Some(&1));
        assert_eq!(m.get("e"), Some(&5));
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max\n"), Ok(None));
        assert_eq!(parse_limit("9223372036854771712"), Ok(None));
        assert_eq!(parse_limit("33554432"), Ok(Some(33554432)));
        assert!(parse_limit("lots").is_err());
    }

    #[test]
    fn v2_cpu_stat_fixture() {
        assert_eq!(
            cpu_v2(V2_CPU_STAT),
            CpuStats {
                usage_ns: 2_500_000,
                user_ns: Some(1_500_000),
                system_ns: Some(1_000_000),
                nr_periods: 10,
                nr_throttled: 3,
                throttled_ns: 700_000,
            }
        );
        // Without the cpu controller only the core fields are present.
        let core = cpu_v2("usage_usec 5\nuser_usec 3\nsystem_usec 2\n");
        assert_eq!(core.usage_ns, 5000);
        assert_eq!(core.nr_throttled, 0);
    }

    #[test]
    fn v2_memory_fixtures() {
        assert_eq!(oom_kill_count(V2_MEMORY_EVENTS), Some(1));
        assert_eq!(memory_stat_v2(V2_MEMORY_STAT), (4096, 1048576));
    }

    #[test]
    fn v1_fixtures() {
        assert_eq!(oom_kill_count(V1_OOM_CONTROL), Some(3));
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert_eq!(memory_stat_v1(V1_MEMORY_STAT), (100, 200));
        assert_eq!(memory_stat_v1("cache 10\nrss 20\n"), (10, 20));
        assert_eq!(
            cpu_throttling_v1("nr_periods 4\nnr_throttled 2\nthrottled_time 999\n"),
            (4, 2, 999)
        );
        assert_eq!(
            cpuacct_stat_v1("user 150\nsystem 50\n", 100),
            (Some(1_500_000_000), Some(500_000_000))
        );
    }

    #[test]
    fn cgroup_events_frozen() {
        assert!(events_frozen("populated 1\nfrozen 1\n"));
        assert!(!events_frozen("populated 1\nfrozen 0\n"));
        assert!(!events_frozen(""));
    }

    #[test]
    fn stats_serialize_as_json() {
        let stats = Stats {
            memory: Some(MemoryStats {
                usage: 1,
                limit: None,
                ..Default::default()
            }),
            cpu: None,
            pids: Some(PidsStats {
                current: 2,
                limit: Some(10),
            }),
        };
        let json = serde_json::to_value(&stats).expect("json");
        assert_eq!(json["memory"]["usage"], 1);
        assert!(json["memory"]["limit"].is_null());
        assert!(json["cpu"].is_null());
        assert_eq!(json["pids"]["limit"], 10);
    }
}
