//! Docker seccomp profiles (`--security-opt seccomp=FILE`) converted to the OCI `linux.seccomp`.
//!
//! Owns the reading of Docker's profile schema and its conditional rules. Semantics follow
//! Docker's profile loader:
//! - `architectures` and `archMap` are exclusive. With `archMap`, the entry whose `architecture`
//!   is the target's seccomp architecture contributes itself and its `subArchitectures`; no entry
//!   means no architecture list (libseccomp then uses the native one).
//! - A syscall group is dropped when the target architecture is in `excludes.arches`, when ANY
//!   capability of `excludes.caps` is in the capability set, or when the host kernel is at least
//!   `excludes.minKernel`; it is also dropped when `includes.arches` does not list the target
//!   architecture, when NOT ALL of `includes.caps` are in the capability set, or when the host
//!   kernel is older than `includes.minKernel`.
//! - `name` and `names` are exclusive; `defaultErrnoRet`, `errnoRet`, `flags`, `listenerPath` and
//!   `listenerMetadata` pass through unchanged; `null` is the same as an absent field and unknown
//!   fields are ignored, as Go's JSON decoder does (field names match case-insensitively too).
//!
//! Differences from Docker, on purpose: every action, architecture, operator and flag string is
//! checked here, in every rule (also rules dropped on this host), and errors name the JSON field
//! (`syscalls[3].args[0].op`), so a profile is found broken before it reaches a host where the
//! rule applies. A profile with neither `defaultAction` nor `syscalls` (which Docker treats as
//! "no seccomp") is an error: ask for unconfined explicitly instead. The capability set given is
//! normalised to upper case with a `CAP_` prefix; the profile's own spelling is compared as is.
//!
//! Hand-written because no maintained Rust crate implements Docker's profile format.

use std::str::FromStr;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use serde_json::{Map, Value};
use tracing::debug;

use super::{SeccompError, MAX_ARGS};

/// Where Debian's `golang-github-docker-docker-dev` installs Docker's default profile.
pub const DOCKER_DEFAULT_PROFILE_PATH: &str =
    "/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json";

/// The Debian package that provides [`DOCKER_DEFAULT_PROFILE_PATH`].
pub const DOCKER_DEFAULT_PROFILE_PACKAGE: &str = "golang-github-docker-docker-dev";

/// flotilla's built-in default profile for a container with bounding capability set `caps`
/// (e.g. `"CAP_SYS_ADMIN"`), for the host architecture.
///
/// For now this is Docker's default profile read from [`DOCKER_DEFAULT_PROFILE_PATH`]; the error
/// names the package to install when it is missing.
pub fn default_profile(caps: &[String]) -> Result<LinuxSeccomp, SeccompError> {
    let arch = host_docker_arch()
        .ok_or_else(|| SeccompError::UnknownDockerArch(std::env::consts::ARCH.to_string()))?;
    let json = std::fs::read(DOCKER_DEFAULT_PROFILE_PATH).map_err(|source| {
        SeccompError::DefaultProfileMissing {
            path: DOCKER_DEFAULT_PROFILE_PATH,
            source,
        }
    })?;
    from_docker_profile(&json, caps, arch)
}

/// The Go (Docker) name of the architecture this binary runs on, e.g. `"amd64"`.
pub fn host_docker_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86" => Some("386"),
        "x86_64" => Some("amd64"),
        "arm" => Some("arm"),
        "aarch64" => Some("arm64"),
        "powerpc" => Some("ppc"),
        "powerpc64" if cfg!(target_endian = "little") => Some("ppc64le"),
        "powerpc64" => Some("ppc64"),
        "s390x" => Some("s390x"),
        "riscv64" => Some("riscv64"),
        "mips" if cfg!(target_endian = "little") => Some("mipsle"),
        "mips" => Some("mips"),
        "mips64" if cfg!(target_endian = "little") => Some("mips64le"),
        "mips64" => Some("mips64"),
        _ => None,
    }
}

/// Converts a Docker seccomp profile to the OCI section for a container whose bounding
/// capability set is `caps` (e.g. `"CAP_SYS_ADMIN"`) on architecture `arch` (Go name, e.g.
/// `"amd64"`), applying the profile's include/exclude rules.
pub fn from_docker_profile(
    json: &[u8],
    caps: &[String],
    arch: &str,
) -> Result<LinuxSeccomp, SeccompError> {
    let target = DockerArch::from_name(arch)?;
    let profile = Profile::parse(json)?;
    let kernel = if profile.needs_kernel_version() {
        Some(host_kernel_version()?)
    } else {
        None
    };
    let caps: Vec<String> = caps.iter().map(|c| normalize_cap(c)).collect();
    profile.convert(&caps, &target, kernel)
}

/// A target architecture: Docker's native name (used in `arches`) and its seccomp architecture.
#[derive(Debug, Clone, Copy)]
struct DockerArch {
    native: &'static str,
    seccomp: Arch,
}

impl DockerArch {
    fn from_name(name: &str) -> Result<Self, SeccompError> {
        let (native, seccomp) = match name {
            "386" | "x86" => ("x86", Arch::ScmpArchX86),
            "amd64" | "x86_64" => ("amd64", Arch::ScmpArchX86_64),
            "arm" => ("arm", Arch::ScmpArchArm),
            "arm64" | "aarch64" => ("arm64", Arch::ScmpArchAarch64),
            "mips" => ("mips", Arch::ScmpArchMips),
            "mipsle" | "mipsel" => ("mipsel", Arch::ScmpArchMipsel),
            "mips64" => ("mips64", Arch::ScmpArchMips64),
            "mips64le" | "mipsel64" => ("mipsel64", Arch::ScmpArchMipsel64),
            "mips64p32" | "mips64n32" => ("mips64n32", Arch::ScmpArchMips64n32),
            // Docker's own spelling of the native name.
            "mips64p32le" | "mips3l64n32" => ("mips3l64n32", Arch::ScmpArchMipsel64n32),
            "ppc" => ("ppc", Arch::ScmpArchPpc),
            "ppc64" => ("ppc64", Arch::ScmpArchPpc64),
            "ppc64le" => ("ppc64le", Arch::ScmpArchPpc64le),
            "s390" => ("s390", Arch::ScmpArchS390),
            "s390x" => ("s390x", Arch::ScmpArchS390x),
            "riscv64" => ("riscv64", Arch::ScmpArchRiscv64),
            other => return Err(SeccompError::UnknownDockerArch(other.to_string())),
        };
        Ok(DockerArch { native, seccomp })
    }
}

/// A kernel version as Docker compares it: `<kernel>.<major>`, the rest ignored.
type KernelVersion = (u64, u64);

/// Reads the host kernel's `<kernel>.<major>` from `uname`.
fn host_kernel_version() -> Result<KernelVersion, SeccompError> {
    let uts = nix::sys::utsname::uname()
        .map_err(|errno| SeccompError::KernelVersion(format!("uname: {errno}")))?;
    let release = uts.release().to_string_lossy();
    parse_release(&release).ok_or_else(|| {
        SeccompError::KernelVersion(format!(
            "release {release:?} does not start with <kernel>.<major>"
        ))
    })
}

/// Parses the leading `<kernel>.<major>` of a release such as `6.1.0-13-amd64` or `3.12-rc5`.
fn parse_release(release: &str) -> Option<KernelVersion> {
    let mut parts = release.splitn(2, '.');
    let kernel = leading_number(parts.next()?)?;
    let major = leading_number(parts.next()?)?;
    Some((kernel, major))
}

fn leading_number(s: &str) -> Option<u64> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// Normalises a capability name: upper case, `CAP_` prefix.
fn normalize_cap(cap: &str) -> String {
    let upper = cap.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// A parsed, validated profile (before include/exclude rules are applied).
#[derive(Debug)]
struct Profile {
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    architectures: Vec<Arch>,
    arch_map: Vec<(Arch, Vec<Arch>)>,
    flags: Vec<LinuxSeccompFilterFlag>,
    listener_path: Option<String>,
    listener_metadata: Option<String>,
    syscalls: Vec<Rule>,
}

/// One entry of `syscalls`.
#[derive(Debug)]
struct Rule {
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Vec<LinuxSeccompArg>,
    includes: Conditions,
    excludes: Conditions,
}

/// `includes` or `excludes` of a rule.
#[derive(Debug, Default)]
struct Conditions {
    caps: Vec<String>,
    arches: Vec<String>,
    min_kernel: Option<KernelVersion>,
}

impl Profile {
    fn parse(json: &[u8]) -> Result<Profile, SeccompError> {
        let root: Value = serde_json::from_slice(json).map_err(SeccompError::ProfileJson)?;
        let root = Fields::new(&root, String::new())?;

        let syscalls_json = root.array("syscalls")?;
        let default_action = match root.string("defaultAction")? {
            Some(action) if !action.is_empty() => parse_enum(&root.path("defaultAction"), action)?,
            _ => {
                let reason = if syscalls_json.is_empty() {
                    "missing; docker reads a profile without defaultAction and syscalls as \
                     'no seccomp': run the container unconfined instead"
                } else {
                    "missing; set it to the action for syscalls that no rule matches, \
                     e.g. SCMP_ACT_ERRNO"
                };
                return Err(root.error("defaultAction", reason));
            }
        };
        let default_errno_ret = root.u32("defaultErrnoRet")?;

        let mut architectures = Vec::new();
        for (i, arch) in root.strings("architectures")?.iter().enumerate() {
            architectures.push(parse_enum(
                &root.path(&format!("architectures[{i}]")),
                arch,
            )?);
        }

        let mut arch_map = Vec::new();
        for (i, entry) in root.array("archMap")?.iter().enumerate() {
            let entry = Fields::new(entry, root.path(&format!("archMap[{i}]")))?;
            let main = match entry.string("architecture")? {
                Some(arch) => parse_enum(&entry.path("architecture"), arch)?,
                None => return Err(entry.error("architecture", "missing")),
            };
            let mut subs = Vec::new();
            for (j, sub) in entry.strings("subArchitectures")?.iter().enumerate() {
                subs.push(parse_enum(
                    &entry.path(&format!("subArchitectures[{j}]")),
                    sub,
                )?);
            }
            arch_map.push((main, subs));
        }
        if !architectures.is_empty() && !arch_map.is_empty() {
            return Err(root.error(
                "architectures",
                "both architectures and archMap are set; use only one of them",
            ));
        }

        let mut flags = Vec::new();
        for (i, flag) in root.strings("flags")?.iter().enumerate() {
            flags.push(parse_enum(&root.path(&format!("flags[{i}]")), flag)?);
        }

        let mut syscalls = Vec::with_capacity(syscalls_json.len());
        for (i, rule) in syscalls_json.iter().enumerate() {
            syscalls.push(Rule::parse(Fields::new(
                rule,
                root.path(&format!("syscalls[{i}]")),
            )?)?);
        }

        Ok(Profile {
            default_action,
            default_errno_ret,
            architectures,
            arch_map,
            flags,
            listener_path: root.string("listenerPath")?.map(str::to_string),
            listener_metadata: root.string("listenerMetadata")?.map(str::to_string),
            syscalls,
        })
    }

    fn needs_kernel_version(&self) -> bool {
        self.syscalls
            .iter()
            .any(|r| r.includes.min_kernel.is_some() || r.excludes.min_kernel.is_some())
    }

    /// Applies the include/exclude rules for `caps` on `target` with host kernel `kernel`
    /// (needed only when a rule has `minKernel`).
    fn convert(
        &self,
        caps: &[String],
        target: &DockerArch,
        kernel: Option<KernelVersion>,
    ) -> Result<LinuxSeccomp, SeccompError> {
        let mut architectures = self.architectures.clone();
        if let Some((main, subs)) = self.arch_map.iter().find(|(a, _)| *a == target.seccomp) {
            architectures.push(*main);
            architectures.extend(subs.iter().copied());
        }

        let mut syscalls = Vec::new();
        let mut dropped = 0usize;
        for (index, rule) in self.syscalls.iter().enumerate() {
            if !rule.applies(caps, target, kernel)? {
                debug!(rule = index, names = ?rule.names, "profile rule does not apply here");
                dropped += 1;
                continue;
            }
            if rule.names.is_empty() {
                debug!(
                    rule = index,
                    "seccomp profile rule names no syscall; skipped"
                );
                continue;
            }
            let mut call = LinuxSyscall::default();
            call.set_names(rule.names.clone());
            call.set_action(rule.action);
            call.set_errno_ret(rule.errno_ret);
            call.set_args((!rule.args.is_empty()).then(|| rule.args.clone()));
            syscalls.push(call);
        }
        debug!(
            arch = target.native,
            kept = syscalls.len(),
            dropped,
            "docker seccomp profile converted"
        );

        let mut spec = LinuxSeccomp::default();
        spec.set_default_action(self.default_action);
        spec.set_default_errno_ret(self.default_errno_ret);
        spec.set_architectures((!architectures.is_empty()).then_some(architectures));
        spec.set_flags((!self.flags.is_empty()).then(|| self.flags.clone()));
        spec.set_listener_path(self.listener_path.clone().map(Into::into));
        spec.set_listener_metadata(self.listener_metadata.clone());
        spec.set_syscalls(Some(syscalls));
        Ok(spec)
    }
}

impl Rule {
    fn parse(rule: Fields<'_>) -> Result<Rule, SeccompError> {
        let name = rule.string("name")?.filter(|n| !n.is_empty());
        let names = rule.strings("names")?;
        let names = match (name, names.is_empty()) {
            (Some(_), false) => {
                return Err(rule.error("name", "both name and names are set; use only one of them"))
            }
            (Some(name), true) => vec![name.to_string()],
            (None, _) => names,
        };
        let action = match rule.string("action")? {
            Some(action) if !action.is_empty() => parse_enum(&rule.path("action"), action)?,
            _ => return Err(rule.error("action", "missing")),
        };
        let errno_ret = rule.u32("errnoRet")?;

        let mut args = Vec::new();
        for (i, arg) in rule.array("args")?.iter().enumerate() {
            args.push(parse_arg(Fields::new(
                arg,
                rule.path(&format!("args[{i}]")),
            )?)?);
        }

        Ok(Rule {
            names,
            action,
            errno_ret,
            args,
            includes: Conditions::parse(rule.object("includes")?)?,
            excludes: Conditions::parse(rule.object("excludes")?)?,
        })
    }

    /// Docker's include/exclude decision for one rule.
    fn applies(
        &self,
        caps: &[String],
        target: &DockerArch,
        kernel: Option<KernelVersion>,
    ) -> Result<bool, SeccompError> {
        let kernel_at_least = |min: KernelVersion| {
            kernel.map(|k| k >= min).ok_or_else(|| {
                SeccompError::KernelVersion("no kernel version for a minKernel rule".to_string())
            })
        };
        let ex = &self.excludes;
        if ex.arches.iter().any(|a| a == target.native) {
            return Ok(false);
        }
        if ex.caps.iter().any(|c| caps.contains(c)) {
            return Ok(false);
        }
        if let Some(min) = ex.min_kernel {
            if kernel_at_least(min)? {
                return Ok(false);
            }
        }
        let inc = &self.includes;
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == target.native) {
            return Ok(false);
        }
        if !inc.caps.iter().all(|c| caps.contains(c)) {
            return Ok(false);
        }
        if let Some(min) = inc.min_kernel {
            if !kernel_at_least(min)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Conditions {
    fn parse(fields: Option<Fields<'_>>) -> Result<Conditions, SeccompError> {
        let Some(fields) = fields else {
            return Ok(Conditions::default());
        };
        let min_kernel = match fields.string("minKernel")? {
            None | Some("") => None,
            Some(v) => Some(parse_min_kernel(v).ok_or_else(|| {
                fields.error(
                    "minKernel",
                    &format!("{v:?} is not a kernel version <kernel>.<major> such as \"4.8\""),
                )
            })?),
        };
        Ok(Conditions {
            caps: fields.strings("caps")?,
            arches: fields.strings("arches")?,
            min_kernel,
        })
    }
}

/// Docker's `minKernel`: exactly `<kernel>.<major>`, each 0..=255, not `0.0`.
fn parse_min_kernel(v: &str) -> Option<KernelVersion> {
    let (kernel, major) = v.split_once('.')?;
    let kernel: u8 = kernel.parse().ok()?;
    let major: u8 = major.parse().ok()?;
    if kernel == 0 && major == 0 {
        return None;
    }
    Some((kernel.into(), major.into()))
}

fn parse_arg(arg: Fields<'_>) -> Result<LinuxSeccompArg, SeccompError> {
    let index = arg.u64("index")?.unwrap_or(0);
    let index = match usize::try_from(index) {
        Ok(i) if i < MAX_ARGS => i,
        _ => {
            return Err(arg.error(
                "index",
                &format!("{index} is out of range 0..={}", MAX_ARGS - 1),
            ))
        }
    };
    let op: LinuxSeccompOperator = match arg.string("op")? {
        Some(op) if !op.is_empty() => parse_enum(&arg.path("op"), op)?,
        _ => return Err(arg.error("op", "missing")),
    };
    let mut builder = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(arg.u64("value")?.unwrap_or(0))
        .op(op);
    if let Some(two) = arg.u64("valueTwo")? {
        builder = builder.value_two(two);
    }
    builder
        .build()
        .map_err(|e| arg.error("args", &format!("building the argument rule: {e}")))
}

/// The enums of oci-spec parse their SCREAMING_SNAKE_CASE names.
trait ProfileEnum: FromStr {
    const KIND: &'static str;
    const EXAMPLES: &'static str;
}

impl ProfileEnum for LinuxSeccompAction {
    const KIND: &'static str = "seccomp action";
    const EXAMPLES: &'static str = "SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL, \
        SCMP_ACT_KILL_PROCESS, SCMP_ACT_KILL_THREAD, SCMP_ACT_TRAP, SCMP_ACT_TRACE, SCMP_ACT_LOG, \
        SCMP_ACT_NOTIFY";
}

impl ProfileEnum for Arch {
    const KIND: &'static str = "seccomp architecture";
    const EXAMPLES: &'static str = "SCMP_ARCH_X86_64, SCMP_ARCH_X86, SCMP_ARCH_X32, \
        SCMP_ARCH_AARCH64, SCMP_ARCH_ARM, SCMP_ARCH_PPC64LE, SCMP_ARCH_S390X, SCMP_ARCH_RISCV64";
}

impl ProfileEnum for LinuxSeccompOperator {
    const KIND: &'static str = "seccomp operator";
    const EXAMPLES: &'static str = "SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_EQ, \
        SCMP_CMP_GE, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ";
}

impl ProfileEnum for LinuxSeccompFilterFlag {
    const KIND: &'static str = "seccomp filter flag";
    const EXAMPLES: &'static str = "SECCOMP_FILTER_FLAG_LOG, SECCOMP_FILTER_FLAG_SPEC_ALLOW, \
        SECCOMP_FILTER_FLAG_TSYNC";
}

fn parse_enum<T: ProfileEnum>(field: &str, value: &str) -> Result<T, SeccompError> {
    value.parse().map_err(|_| SeccompError::ProfileField {
        field: field.to_string(),
        reason: format!(
            "unknown {} {value:?}; expected one of {}",
            T::KIND,
            T::EXAMPLES
        ),
    })
}

/// A JSON object with its path, for typed reads that name the field on error.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    fn new(value: &'a Value, path: String) -> Result<Self, SeccompError> {
        match value {
            Value::Object(map) => Ok(Fields { map, path }),
            other => Err(SeccompError::ProfileField {
                field: if path.is_empty() {
                    "(top level)".to_string()
                } else {
                    path
                },
                reason: format!("expected an object, found {}", kind(other)),
            }),
        }
    }

    /// The JSON path of `key` inside this object.
    fn path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn error(&self, key: &str, reason: &str) -> SeccompError {
        SeccompError::ProfileField {
            field: self.path(key),
            reason: reason.to_string(),
        }
    }

    /// The value of `key`, matched exactly or else case-insensitively (as Go does); `null` is
    /// absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        let value = self.map.get(key).or_else(|| {
            self.map
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })?;
        (!value.is_null()).then_some(value)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, SeccompError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => {
                Err(self.error(key, &format!("expected a string, found {}", kind(other))))
            }
        }
    }

    fn u64(&self, key: &str) -> Result<Option<u64>, SeccompError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                self.error(
                    key,
                    &format!("expected an unsigned 64-bit integer, found {}", kind(v)),
                )
            }),
        }
    }

    fn u32(&self, key: &str) -> Result<Option<u32>, SeccompError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.error(
                        key,
                        &format!("expected an unsigned 32-bit integer, found {}", kind(v)),
                    )
                }),
        }
    }

    fn array(&self, key: &str) -> Result<&'a [Value], SeccompError> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => {
                Err(self.error(key, &format!("expected an array, found {}", kind(other))))
            }
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, SeccompError> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(SeccompError::ProfileField {
                    field: format!("{}[{i}]", self.path(key)),
                    reason: format!("expected a string, found {}", kind(other)),
                }),
            })
            .collect()
    }

    fn object(&self, key: &str) -> Result<Option<Fields<'a>>, SeccompError> {
        self.get(key)
            .map(|v| Fields::new(v, self.path(key)))
            .transpose()
    }
}

/// A short description of a JSON value for error messages.
fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::seccomp::tests::{docker_default, docker_default_caps};
    use crate::runtime::seccomp::Filter;
    use serde_json::json;

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|c| c.to_string()).collect()
    }

    fn convert(profile: &Value, caps: &[String], arch: &str) -> Result<LinuxSeccomp, SeccompError> {
        from_docker_profile(profile.to_string().as_bytes(), caps, arch)
    }

    /// Converts with an explicit host kernel version.
    fn convert_on_kernel(profile: &Value, kernel: KernelVersion) -> LinuxSeccomp {
        let parsed = Profile::parse(profile.to_string().as_bytes()).expect("parse");
        let arch = DockerArch::from_name("amd64").expect("amd64");
        parsed.convert(&[], &arch, Some(kernel)).expect("convert")
    }

    fn names(spec: &LinuxSeccomp) -> Vec<String> {
        spec.syscalls()
            .iter()
            .flatten()
            .flat_map(|s| s.names().iter().cloned())
            .collect()
    }

    /// Syscalls allowed without conditions.
    fn allowed(spec: &LinuxSeccomp) -> Vec<String> {
        spec.syscalls()
            .iter()
            .flatten()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow)
            .filter(|s| s.args().as_ref().is_none_or(|a| a.is_empty()))
            .flat_map(|s| s.names().iter().cloned())
            .collect()
    }

    fn rules_for<'a>(spec: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        spec.syscalls()
            .iter()
            .flatten()
            .filter(|s| s.names().iter().any(|n| n == name))
            .collect()
    }

    fn field_error(err: SeccompError) -> (String, String) {
        match err {
            SeccompError::ProfileField { field, reason } => (field, reason),
            other => panic!("expected a field error, got {other}"),
        }
    }

    fn conditional_profile() -> Value {
        json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "syscalls": [
                {"names": ["chmod"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["syslog"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYSLOG"]}},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN", "CAP_SYS_CHROOT"]}},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW",
                 "excludes": {"caps": ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]}},
                {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"arches": ["amd64", "x32"]}},
                {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"arches": ["arm", "arm64"]}},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                 "excludes": {"arches": ["s390x"]}},
                {"name": "personality", "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "comment": "no namespaces",
                 "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97, "args": [
                    {"index": 0, "value": 16, "op": "SCMP_CMP_EQ"},
                    {"index": 1, "value": 15, "valueTwo": 3, "op": "SCMP_CMP_MASKED_EQ"}
                ]}
            ]
        })
    }

    #[test]
    fn includes_need_every_capability() {
        let none = convert(&conditional_profile(), &[], "amd64").expect("convert");
        assert!(!names(&none).contains(&"syslog".to_string()));
        let syslog =
            convert(&conditional_profile(), &caps(&["CAP_SYSLOG"]), "amd64").expect("convert");
        assert!(allowed(&syslog).contains(&"syslog".to_string()));

        let admin =
            convert(&conditional_profile(), &caps(&["CAP_SYS_ADMIN"]), "amd64").expect("convert");
        assert!(
            !names(&admin).contains(&"mount".to_string()),
            "needs both caps"
        );
        let both = convert(
            &conditional_profile(),
            &caps(&["CAP_SYS_ADMIN", "CAP_SYS_CHROOT"]),
            "amd64",
        )
        .expect("convert");
        assert!(allowed(&both).contains(&"mount".to_string()));
    }

    #[test]
    fn excludes_drop_on_any_capability() {
        let none = convert(&conditional_profile(), &[], "amd64").expect("convert");
        assert!(allowed(&none).contains(&"ptrace".to_string()));
        assert_eq!(rules_for(&none, "clone").len(), 1);
        for cap in ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"] {
            let spec = convert(&conditional_profile(), &caps(&[cap]), "amd64").expect("convert");
            assert!(!names(&spec).contains(&"ptrace".to_string()), "{cap}");
        }
        let admin =
            convert(&conditional_profile(), &caps(&["CAP_SYS_ADMIN"]), "amd64").expect("convert");
        assert!(rules_for(&admin, "clone").is_empty());
    }

    #[test]
    fn capability_names_are_normalised() {
        let spec = convert(&conditional_profile(), &caps(&["syslog"]), "amd64").expect("convert");
        assert!(allowed(&spec).contains(&"syslog".to_string()));
        let spec =
            convert(&conditional_profile(), &caps(&["cap_syslog"]), "amd64").expect("convert");
        assert!(allowed(&spec).contains(&"syslog".to_string()));
    }

    #[test]
    fn arches_include_and_exclude() {
        let amd64 = convert(&conditional_profile(), &[], "amd64").expect("convert");
        assert!(allowed(&amd64).contains(&"arch_prctl".to_string()));
        assert!(!names(&amd64).contains(&"set_tls".to_string()));
        assert_eq!(rules_for(&amd64, "clone3").len(), 1);

        let arm64 = convert(&conditional_profile(), &[], "arm64").expect("convert");
        assert!(!names(&arm64).contains(&"arch_prctl".to_string()));
        assert!(allowed(&arm64).contains(&"set_tls".to_string()));

        let s390x = convert(&conditional_profile(), &[], "s390x").expect("convert");
        assert!(rules_for(&s390x, "clone3").is_empty());
        assert!(!names(&s390x).contains(&"arch_prctl".to_string()));
    }

    #[test]
    fn values_pass_through() {
        let spec = convert(&conditional_profile(), &[], "amd64").expect("convert");
        assert_eq!(spec.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(spec.default_errno_ret(), Some(1));
        assert_eq!(spec.architectures(), &None);

        let clone3 = rules_for(&spec, "clone3")[0];
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(38));

        let personality = rules_for(&spec, "personality");
        assert_eq!(personality.len(), 1, "name is read like names");
        let args = personality[0].args().clone().expect("args");
        assert_eq!(
            (
                args[0].index(),
                args[0].value(),
                args[0].value_two(),
                args[0].op()
            ),
            (0, 8, None, LinuxSeccompOperator::ScmpCmpEq)
        );

        let socket = rules_for(&spec, "socket")[0];
        assert_eq!(socket.errno_ret(), Some(97));
        let args = socket.args().clone().expect("args");
        assert_eq!(args.len(), 2);
        assert_eq!(
            (
                args[1].index(),
                args[1].value(),
                args[1].value_two(),
                args[1].op()
            ),
            (1, 15, Some(3), LinuxSeccompOperator::ScmpCmpMaskedEq)
        );
        // The result is a valid OCI section that compiles.
        Filter::compile(&spec).expect("compile");
    }

    #[test]
    fn arch_map_selects_the_target_entry() {
        let profile = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "archMap": [
                {"architecture": "SCMP_ARCH_X86_64",
                 "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
            ],
            "syscalls": []
        });
        let amd64 = convert(&profile, &[], "amd64").expect("convert");
        assert_eq!(
            amd64.architectures(),
            &Some(vec![
                Arch::ScmpArchX86_64,
                Arch::ScmpArchX86,
                Arch::ScmpArchX32
            ])
        );
        let arm64 = convert(&profile, &[], "arm64").expect("convert");
        assert_eq!(
            arm64.architectures(),
            &Some(vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm])
        );
        let ppc = convert(&profile, &[], "ppc64le").expect("convert");
        assert_eq!(ppc.architectures(), &None);
    }

    #[test]
    fn architectures_and_flags_pass_through() {
        let profile = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": null
        });
        let spec = convert(&profile, &[], "amd64").expect("convert");
        assert_eq!(
            spec.architectures(),
            &Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86])
        );
        assert_eq!(
            spec.flags(),
            &Some(vec![LinuxSeccompFilterFlag::SeccompFilterFlagLog])
        );
        assert_eq!(spec.syscalls(), &Some(vec![]));
    }

    #[test]
    fn min_kernel_compares_kernel_and_major() {
        let profile = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
                {"names": ["old_only"], "action": "SCMP_ACT_ALLOW",
                 "excludes": {"minKernel": "4.8"}}
            ]
        });
        for (kernel, ptrace, old_only) in [
            ((4, 7), false, true),
            ((4, 8), true, false),
            ((4, 20), true, false),
            ((3, 99), false, true),
            ((6, 1), true, false),
        ] {
            let spec = convert_on_kernel(&profile, kernel);
            let names = names(&spec);
            assert_eq!(names.contains(&"ptrace".to_string()), ptrace, "{kernel:?}");
            assert_eq!(
                names.contains(&"old_only".to_string()),
                old_only,
                "{kernel:?}"
            );
        }
        // The public entry point reads the host kernel.
        convert(&profile, &[], "amd64").expect("convert on this host");
    }

    #[test]
    fn kernel_versions_parse_like_docker() {
        assert_eq!(parse_release("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_release("3.12-rc5"), Some((3, 12)));
        assert_eq!(parse_release("3.12.25-gentoo"), Some((3, 12)));
        assert_eq!(parse_release("nonsense"), None);
        assert_eq!(parse_min_kernel("4.8"), Some((4, 8)));
        for bad in ["4", "4.8.1", "0.0", "a.b", "256.1", "-1.2", "4."] {
            assert_eq!(parse_min_kernel(bad), None, "{bad}");
        }
        let (field, reason) = field_error(
            convert(
                &json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                    {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW",
                     "includes": {"minKernel": "4.8.1"}}
                ]}),
                &[],
                "amd64",
            )
            .expect_err("bad minKernel"),
        );
        assert_eq!(field, "syscalls[0].includes.minKernel");
        assert!(reason.contains("4.8.1"), "{reason}");
    }

    #[test]
    fn malformed_profiles_name_the_field() {
        let cases = [
            (
                json!({"defaultAction": "SCMP_ACT_NOPE"}),
                "defaultAction",
                "SCMP_ACT_NOPE",
            ),
            (
                json!({"defaultAction": 3}),
                "defaultAction",
                "expected a string",
            ),
            (
                json!({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}),
                "defaultAction",
                "missing",
            ),
            (json!({}), "defaultAction", "unconfined"),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}),
                "defaultErrnoRet",
                "unsigned",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_Z80"]}),
                "architectures[0]",
                "SCMP_ARCH_Z80",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86"],
                    "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}),
                "architectures",
                "archMap",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "archMap": [{"subArchitectures": []}]}),
                "archMap[0].architecture",
                "missing",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO",
                       "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": [7]}]}),
                "archMap[0].subArchitectures[0]",
                "expected a string",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_FAST"]}),
                "flags[0]",
                "SECCOMP_FILTER_FLAG_FAST",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {"names": []}}),
                "syscalls",
                "expected an array",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": ["read"]}),
                "syscalls[0]",
                "expected an object",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["write"], "action": "SCMP_ACT_FROB"}]}),
                "syscalls[1].action",
                "SCMP_ACT_FROB",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}),
                "syscalls[0].action",
                "missing",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}]}),
                "syscalls[0].name",
                "names",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": "read", "action": "SCMP_ACT_ALLOW"}]}),
                "syscalls[0].names",
                "expected an array",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": "EPERM"}]}),
                "syscalls[0].errnoRet",
                "string \"EPERM\"",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]}),
                "syscalls[0].args[0].op",
                "SCMP_CMP_ABOUT",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 1}]}]}),
                "syscalls[0].args[0].op",
                "missing",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}),
                "syscalls[0].args[0].index",
                "out of range",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}),
                "syscalls[0].args[0].value",
                "unsigned",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": "CAP_SYS_ADMIN"}}]}),
                "syscalls[0].includes.caps",
                "expected an array",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW", "excludes": []}]}),
                "syscalls[0].excludes",
                "expected an object",
            ),
        ];
        for (profile, want_field, want_reason) in cases {
            let err = convert(&profile, &[], "amd64").expect_err(&profile.to_string());
            let message = err.to_string();
            let (field, reason) = field_error(err);
            assert_eq!(field, want_field, "{profile}");
            assert!(reason.contains(want_reason), "{profile}: {message}");
        }
    }

    #[test]
    fn not_json_and_unknown_arch_are_errors() {
        let err =
            from_docker_profile(b"{\"defaultAction\": ", &[], "amd64").expect_err("truncated");
        assert!(matches!(err, SeccompError::ProfileJson(_)), "{err}");
        let err = from_docker_profile(b"[]", &[], "amd64").expect_err("array");
        assert_eq!(field_error(err).0, "(top level)");
        let err = convert(&conditional_profile(), &[], "z80").expect_err("z80");
        assert!(err.to_string().contains("\"z80\""), "{err}");
    }

    #[test]
    fn go_like_json_reading() {
        // null is absent, unknown fields are ignored, keys match case-insensitively.
        let profile = json!({
            "DefaultAction": "SCMP_ACT_ERRNO",
            "archMap": null,
            "futureField": {"anything": true},
            "syscalls": [{"Names": ["read"], "action": "SCMP_ACT_ALLOW", "args": null,
                          "errnoRet": null, "includes": null, "excludes": {}}]
        });
        let spec = convert(&profile, &[], "amd64").expect("convert");
        assert_eq!(spec.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(allowed(&spec), vec!["read".to_string()]);
    }

    #[test]
    fn host_arch_is_known() {
        let arch = host_docker_arch().expect("host arch");
        DockerArch::from_name(arch).expect("host arch maps");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(arch, "amd64");
        }
    }

    #[test]
    fn docker_default_profile_with_default_caps() {
        let spec = docker_default(&docker_default_caps());
        assert_eq!(spec.default_action(), LinuxSeccompAction::ScmpActErrno);
        let allowed = allowed(&spec);
        for name in [
            "read", "write", "getpid", "execve", "mkdir", "socket", "chroot", "ptrace",
        ] {
            assert!(
                allowed.contains(&name.to_string()),
                "{name} must be allowed"
            );
        }
        let all = names(&spec);
        for name in [
            "unshare",
            "mount",
            "keyctl",
            "setns",
            "bpf",
            "reboot",
            "init_module",
            "umount2",
        ] {
            assert!(
                !all.contains(&name.to_string()),
                "{name} must not be allowed"
            );
        }
        // clone is allowed only without namespace flags.
        let clone = rules_for(&spec, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].action(), LinuxSeccompAction::ScmpActAllow);
        let args = clone[0].args().clone().expect("clone args");
        assert_eq!(
            (args[0].index(), args[0].value(), args[0].op()),
            (0, 0x7E02_0000, LinuxSeccompOperator::ScmpCmpMaskedEq)
        );
        let clone3 = rules_for(&spec, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0].errno_ret(), Some(libc::ENOSYS as u32));

        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                spec.architectures(),
                &Some(vec![
                    Arch::ScmpArchX86_64,
                    Arch::ScmpArchX86,
                    Arch::ScmpArchX32
                ])
            );
            assert!(allowed.contains(&"arch_prctl".to_string()));
        }
        Filter::compile(&spec).expect("docker's default profile compiles");
    }

    #[test]
    fn docker_default_profile_with_sys_admin() {
        let mut caps = docker_default_caps();
        caps.push("CAP_SYS_ADMIN".to_string());
        let spec = docker_default(&caps);
        let allowed = allowed(&spec);
        for name in ["unshare", "mount", "setns", "clone", "umount2"] {
            assert!(
                allowed.contains(&name.to_string()),
                "{name} must be allowed"
            );
        }
        assert!(rules_for(&spec, "clone3")
            .iter()
            .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow));
        assert!(!allowed.contains(&"keyctl".to_string()));
        Filter::compile(&spec).expect("compiles");
    }

    #[test]
    fn docker_default_profile_for_other_arches() {
        let json = std::fs::read(DOCKER_DEFAULT_PROFILE_PATH).unwrap_or_else(|e| {
            panic!(
                "reading {DOCKER_DEFAULT_PROFILE_PATH}: {e}; \
                 apt-get install {DOCKER_DEFAULT_PROFILE_PACKAGE}"
            )
        });
        let caps = docker_default_caps();
        let arm64 = from_docker_profile(&json, &caps, "arm64").expect("arm64");
        assert_eq!(
            arm64.architectures(),
            &Some(vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm])
        );
        assert!(allowed(&arm64).contains(&"set_tls".to_string()));
        assert!(!names(&arm64).contains(&"arch_prctl".to_string()));

        let s390x = from_docker_profile(&json, &caps, "s390x").expect("s390x");
        let clone = rules_for(&s390x, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(
            clone[0].args().clone().expect("args")[0].index(),
            1,
            "s390 clone flags are arg 1"
        );
    }
}
