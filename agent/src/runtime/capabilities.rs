//! Capability sets from the spec, applied with the `caps` crate.
//!
//! Order matters and is fixed here: the bounding set is reduced while the process still holds
//! CAP_SETPCAP, the identity switch keeps the permitted set (PR_SET_KEEPCAPS), then inheritable,
//! effective, permitted and finally ambient (which must be a subset of permitted and inheritable).
use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability as KCap, CapsHashSet};
use oci_spec::runtime::{Capability, LinuxCapabilities};

use super::error::RuntimeError;
use super::spec::cap_name;

/// The five sets, in kernel terms. Capabilities this kernel does not know are dropped from every set
/// (as runc does) and reported by `unknown`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CapPlan {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
    pub unknown: Vec<String>,
}

fn convert(
    set: &Option<HashSet<Capability>>,
    known: &CapsHashSet,
    unknown: &mut Vec<String>,
) -> CapsHashSet {
    let mut out = CapsHashSet::new();
    for c in set.iter().flatten() {
        let name = cap_name(*c);
        match KCap::from_str(&name) {
            Ok(k) if known.contains(&k) => {
                out.insert(k);
            }
            _ => {
                if !unknown.contains(&name) {
                    unknown.push(name);
                }
            }
        }
    }
    out
}

/// Computes the sets to apply; `known` is what the running kernel supports.
pub fn plan(spec: Option<&LinuxCapabilities>, known: &CapsHashSet) -> CapPlan {
    let mut p = CapPlan::default();
    let Some(s) = spec else {
        return p;
    };
    p.bounding = convert(s.bounding(), known, &mut p.unknown);
    p.effective = convert(s.effective(), known, &mut p.unknown);
    p.permitted = convert(s.permitted(), known, &mut p.unknown);
    p.inheritable = convert(s.inheritable(), known, &mut p.unknown);
    // The kernel refuses an ambient capability that is not both permitted and inheritable.
    p.ambient = convert(s.ambient(), known, &mut p.unknown)
        .into_iter()
        .filter(|c| p.permitted.contains(c) && p.inheritable.contains(c))
        .collect();
    p.unknown.sort();
    p
}

/// Capabilities the running kernel knows.
pub fn kernel_caps() -> CapsHashSet {
    caps::runtime::procfs_all_supported(None).unwrap_or_else(|_| caps::all())
}

fn sys(what: &str, e: caps::errors::CapsError) -> RuntimeError {
    RuntimeError::Sys {
        what: format!("{what}: {e}"),
        source: nix::Error::EPERM,
    }
}

/// Drops everything outside the bounding set. Call while still privileged, before switching user.
pub fn apply_bounding(p: &CapPlan) -> Result<(), RuntimeError> {
    for c in kernel_caps() {
        if !p.bounding.contains(&c) {
            caps::drop(None, CapSet::Bounding, c)
                .map_err(|e| sys(&format!("drop {c} from the bounding set"), e))?;
        }
    }
    Ok(())
}

/// Sets inheritable, permitted, effective and ambient. Call after switching user.
pub fn apply_sets(p: &CapPlan) -> Result<(), RuntimeError> {
    // Inheritable first (CAP_SETPCAP may still be effective), then effective before permitted so
    // that effective is a subset of permitted at every step.
    caps::set(None, CapSet::Inheritable, &p.inheritable)
        .map_err(|e| sys("set the inheritable capabilities", e))?;
    caps::set(None, CapSet::Effective, &p.effective)
        .map_err(|e| sys("set the effective capabilities", e))?;
    caps::set(None, CapSet::Permitted, &p.permitted)
        .map_err(|e| sys("set the permitted capabilities", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| sys("clear the ambient capabilities", e))?;
    for c in &p.ambient {
        caps::raise(None, CapSet::Ambient, *c)
            .map_err(|e| sys(&format!("raise ambient {c}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> LinuxCapabilities {
        let mut s = LinuxCapabilities::default();
        for f in [
            LinuxCapabilities::set_bounding,
            LinuxCapabilities::set_effective,
            LinuxCapabilities::set_permitted,
            LinuxCapabilities::set_inheritable,
            LinuxCapabilities::set_ambient,
        ] {
            f(&mut s, None);
        }
        s
    }

    fn set(v: &[Capability]) -> Option<HashSet<Capability>> {
        Some(v.iter().copied().collect())
    }

    #[test]
    fn ambient_is_limited_to_permitted_and_inheritable() {
        let mut s = LinuxCapabilities::default();
        s.set_bounding(set(&[Capability::NetAdmin, Capability::Kill]));
        s.set_permitted(set(&[Capability::NetAdmin, Capability::Kill]));
        s.set_inheritable(set(&[Capability::Kill]));
        s.set_effective(set(&[Capability::Kill]));
        s.set_ambient(set(&[Capability::Kill, Capability::NetAdmin]));
        let p = plan(Some(&s), &caps::all());
        assert_eq!(p.ambient, [KCap::CAP_KILL].into_iter().collect());
        assert!(p.bounding.contains(&KCap::CAP_NET_ADMIN));
        assert!(p.unknown.is_empty());
    }

    #[test]
    fn capabilities_the_kernel_lacks_are_reported_not_applied() {
        let mut s = empty();
        s.set_bounding(set(&[Capability::Bpf, Capability::Kill]));
        let known: CapsHashSet = [KCap::CAP_KILL].into_iter().collect();
        let p = plan(Some(&s), &known);
        assert_eq!(p.bounding, known);
        assert_eq!(p.unknown, vec!["CAP_BPF".to_string()]);
    }

    #[test]
    fn no_capabilities_section_means_none() {
        let p = plan(None, &caps::all());
        assert!(p.bounding.is_empty() && p.effective.is_empty());
    }
}
