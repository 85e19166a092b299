//! Restart policy: whether and when a task that ended gets a replacement.
//!
//! The policy is the ended task's own (`task.spec.restart`, the spec it ran): condition ANY
//! (always), ON_FAILURE (unless it COMPLETEd with exit code 0), NONE (never); `delay_ms`
//! (0 = [`DEFAULT_RESTART_DELAY_MS`]) counted from the task's last status time; `max_attempts`
//! (0 = unlimited) restarts of the slot for the same spec, over the whole life of that spec
//! when `window_ms` is 0, else within `window_ms` before the task ended.
//!
//! Counting is derived from the store, not kept in memory: `task.attempt` is the number of
//! restarts of its slot since the slot's spec last changed (replacements for a lost node, a
//! drain or a rebalance keep it; an update starts again at 0), and a restart's time is the
//! creation time of the first task carrying its attempt number. The reaper keeps
//! `max_attempts + 1` tasks per slot when a window is set, so the window sees every restart it
//! counts. Decisions depend only on the ended task and its slot, never on the current time,
//! so a declined restart stays declined.

use std::collections::BTreeMap;

use flotilla_proto::control::v1::{RestartCondition, RestartPolicy, Task, TaskSpec, TaskState};

use super::{created_at, observed, status_time, DEFAULT_RESTART_DELAY_MS};

/// What to do with a task that ended while runnable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Restart {
    /// Replace it now.
    Now,
    /// Replace it at this time (unix ms).
    At(i64),
    /// Its slot is done.
    Never,
}

fn policy(spec: Option<&TaskSpec>) -> RestartPolicy {
    spec.and_then(|s| s.restart).unwrap_or_default()
}

/// Tasks the reaper must keep per slot for the restart window of `spec` to see every restart.
pub(super) fn history_needed(spec: Option<&TaskSpec>) -> usize {
    let p = policy(spec);
    if p.window_ms > 0 && p.max_attempts > 0 {
        usize::try_from(p.max_attempts)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    } else {
        0
    }
}

/// Whether `a` and `b` run the same spec (the same restart chain).
pub(super) fn same_spec(a: &Task, b: &Task) -> bool {
    a.spec_version == b.spec_version || (a.spec == b.spec && a.endpoint == b.endpoint)
}

/// Decides for `task`, which ended while runnable; `slot` holds every task of its slot;
/// `immediate` skips the delay (its node is drained, DOWN or gone).
pub(super) fn decide(task: &Task, slot: &[&Task], now: i64, immediate: bool) -> Restart {
    let p = policy(task.spec.as_ref());
    let status = task.status.as_ref();
    let state = observed(task);
    let wanted = match RestartCondition::try_from(p.condition).unwrap_or(RestartCondition::Any) {
        RestartCondition::Any => true,
        RestartCondition::OnFailure => {
            !(state == TaskState::Complete && status.map_or(0, |s| s.exit_code) == 0)
        }
        RestartCondition::None => false,
    };
    if !wanted {
        return Restart::Never;
    }
    if p.max_attempts > 0 {
        let restarts = if p.window_ms == 0 {
            task.attempt
        } else {
            restarts_within(task, slot, p.window_ms)
        };
        if restarts >= p.max_attempts {
            return Restart::Never;
        }
    }
    let delay = if p.delay_ms == 0 {
        DEFAULT_RESTART_DELAY_MS
    } else {
        p.delay_ms
    };
    let at = status_time(task).saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
    if immediate || now >= at {
        Restart::Now
    } else {
        Restart::At(at)
    }
}

/// Restarts of the task's chain (up to and including the one that made it) within `window`
/// before it ended.
fn restarts_within(task: &Task, slot: &[&Task], window: u64) -> u64 {
    let since = status_time(task).saturating_sub(i64::try_from(window).unwrap_or(i64::MAX));
    let mut first: BTreeMap<u64, i64> = BTreeMap::new();
    for t in slot {
        if t.attempt == 0 || t.attempt > task.attempt || !same_spec(t, task) {
            continue;
        }
        let c = created_at(t);
        first
            .entry(t.attempt)
            .and_modify(|v| *v = (*v).min(c))
            .or_insert(c);
    }
    first.values().filter(|&&c| c >= since).count() as u64
}
