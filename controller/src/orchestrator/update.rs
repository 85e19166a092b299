//! Rolling updates and rollbacks: replaces the outdated tasks of a service (see
//! [`super::outdated`]) a few slots at a time, watches the new tasks, and pauses, continues or
//! rolls back when too many fail.
//!
//! State lives in `service.update_status`, everything else is derived from the tasks:
//! - An update starts (UPDATING, `started_at` = now) when a live slot holds only outdated
//!   runnable tasks and the state is UNKNOWN, COMPLETED or ROLLBACK_COMPLETED. The API may also
//!   write UPDATING or ROLLBACK_STARTED itself when it changes the spec (a user's rollback:
//!   `spec` = `previous_spec`, `spec_version` + 1, ROLLBACK_STARTED). While PAUSED or
//!   ROLLBACK_PAUSED nothing is updated until the API writes another state (a new spec should
//!   reset it to UNKNOWN).
//! - The tasks of the update are those of the current spec created since `started_at`; a slot
//!   is in flight while such a task of it is not up (RUNNING, health "" or "healthy"), or while
//!   its old task still runs beside the new one (start-first). At most `parallelism` slots are
//!   in flight (0 = all). A new batch waits `delay_ms` after the last task of the update came up.
//! - Stop-first ends the old task and creates the new one in the same batch, with desired state
//!   READY while the old one still runs (it is placed and prepared, and started once the old
//!   one has stopped: the two never run together, and a host port or memory the old one holds
//!   is free again); start-first creates the new one and ends the old when the new is up. New
//!   tasks are made from the current spec, attempt 0.
//! - A failure is a task of the update observed FAILED or REJECTED, COMPLETE when its restart
//!   condition is ANY (early termination), or running "unhealthy" (tasks marked "node down" are
//!   not failures). When failures / updated slots > `max_failure_ratio`: PAUSE (PAUSED), CONTINUE,
//!   or ROLLBACK: `spec` and `previous_spec` swap, `spec_version` + 1, ROLLBACK_STARTED, and the
//!   rollback proceeds at once with the rollback config. A rollback that fails is paused
//!   (ROLLBACK_PAUSED).
//! - Done when no live slot holds an outdated task, none is in flight, and every task of the
//!   update has been up for `monitor_ms`: COMPLETED (or ROLLBACK_COMPLETED), `completed_at`.
//!
//! The rollback config is the one of the spec rolled away from (now `previous_spec`), else the
//! current spec's; without a config: parallelism 1, no delay, PAUSE, monitor 5 s, ratio 0,
//! stop-first.
//!
//! Known approximation: the store keeps no start time of a task that has since failed, so a
//! task of the update that failed after its monitoring period (while later slots were still
//! being updated) also counts as a failure; Swarm would not count it.

use std::collections::BTreeSet;

use flotilla_proto::control::v1::{
    RestartCondition, Service, Task, TaskState, UpdateConfig, UpdateFailureAction, UpdateOrder,
    UpdateState, UpdateStatus,
};

use super::plan::Group;
use super::slot::{self, SlotKey, SlotView};
use super::{
    created_at, is_runnable, is_terminal, is_up, observed, outdated, status_time, Pass,
    DEFAULT_MONITOR_MS, MSG_NODE_DOWN,
};

/// An update or rollback config with its defaults applied.
#[derive(Debug, Clone, Copy)]
struct Config {
    parallelism: u64,
    delay_ms: i64,
    failure_action: UpdateFailureAction,
    monitor_ms: i64,
    max_failure_ratio: f32,
    order: UpdateOrder,
}

fn millis(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl From<Option<&UpdateConfig>> for Config {
    fn from(c: Option<&UpdateConfig>) -> Config {
        match c {
            None => Config {
                parallelism: 1,
                delay_ms: 0,
                failure_action: UpdateFailureAction::Pause,
                monitor_ms: millis(DEFAULT_MONITOR_MS),
                max_failure_ratio: 0.0,
                order: UpdateOrder::StopFirst,
            },
            Some(c) => Config {
                parallelism: c.parallelism,
                delay_ms: millis(c.delay_ms),
                failure_action: UpdateFailureAction::try_from(c.failure_action)
                    .unwrap_or(UpdateFailureAction::Pause),
                monitor_ms: millis(if c.monitor_ms == 0 {
                    DEFAULT_MONITOR_MS
                } else {
                    c.monitor_ms
                }),
                max_failure_ratio: c.max_failure_ratio,
                order: UpdateOrder::try_from(c.order).unwrap_or(UpdateOrder::StopFirst),
            },
        }
    }
}

/// The service's update state (UNKNOWN when it has none).
pub fn state_of(svc: &Service) -> UpdateState {
    svc.update_status
        .as_ref()
        .and_then(|s| UpdateState::try_from(s.state).ok())
        .unwrap_or(UpdateState::Unknown)
}

fn rolling_back(st: UpdateState) -> bool {
    matches!(
        st,
        UpdateState::RollbackStarted | UpdateState::RollbackPaused
    )
}

fn config(svc: &Service) -> Config {
    let spec = svc.spec.as_ref();
    if rolling_back(state_of(svc)) {
        let prev = svc.previous_spec.as_ref().and_then(|s| s.rollback.as_ref());
        Config::from(prev.or_else(|| spec.and_then(|s| s.rollback.as_ref())))
    } else {
        Config::from(spec.and_then(|s| s.update.as_ref()))
    }
}

fn started_at(svc: &Service) -> i64 {
    svc.update_status.as_ref().map_or(0, |s| s.started_at)
}

/// Whether `t` was made by the update in progress.
fn in_update(t: &Task, svc: &Service, started: i64) -> bool {
    t.spec_version == svc.spec_version && created_at(t) >= started && !outdated(t, svc)
}

/// Whether a task of the update counts as a failure of the update.
fn failed(t: &Task) -> bool {
    let status = t.status.as_ref();
    if status.is_some_and(|s| s.message == MSG_NODE_DOWN) {
        return false;
    }
    match observed(t) {
        TaskState::Failed | TaskState::Rejected => true,
        TaskState::Complete => {
            let cond = t
                .spec
                .as_ref()
                .and_then(|s| s.restart)
                .map_or(0, |r| r.condition);
            cond == RestartCondition::Any as i32
        }
        TaskState::Running => is_runnable(t) && status.is_some_and(|s| s.health == "unhealthy"),
        _ => false,
    }
}

fn set_status(pass: &mut Pass, svc: &mut Service, state: UpdateState, message: String) {
    let status = svc.update_status.get_or_insert_with(UpdateStatus::default);
    status.state = state as i32;
    status.message = message;
    match state {
        UpdateState::Updating | UpdateState::RollbackStarted => {
            status.started_at = pass.now;
            status.completed_at = 0;
        }
        UpdateState::Completed | UpdateState::RollbackCompleted => status.completed_at = pass.now,
        _ => {}
    }
    super::touch_service(svc, pass.now);
    let mut g = Group::default();
    g.service(svc.clone());
    pass.plan.commit(g);
}

/// Counts the failures of the update in progress and applies the failure action when there
/// are too many. On ROLLBACK, `svc` leaves with the rolled-back spec.
pub(super) fn check_failures(pass: &mut Pass, svc: &mut Service, tasks: &[&Task]) {
    let st = state_of(svc);
    if !matches!(st, UpdateState::Updating | UpdateState::RollbackStarted) {
        return;
    }
    let started = started_at(svc);
    let mut slots = BTreeSet::new();
    let mut first: Option<&Task> = None;
    let mut failures = 0usize;
    for &t in tasks {
        if !in_update(t, svc, started) {
            continue;
        }
        slots.insert(SlotKey::of(t));
        if failed(t) {
            failures += 1;
            if first.is_none_or(|f| (status_time(t), &t.id) < (status_time(f), &f.id)) {
                first = Some(t);
            }
        }
    }
    let Some(first) = first else { return };
    let cfg = config(svc);
    if failures as f64 / slots.len() as f64 <= f64::from(cfg.max_failure_ratio) {
        return;
    }
    let rollback = st == UpdateState::RollbackStarted;
    let what = if rollback { "rollback" } else { "update" };
    match cfg.failure_action {
        UpdateFailureAction::Continue => {}
        UpdateFailureAction::Rollback if !rollback && svc.previous_spec.is_some() => {
            let failed_spec = svc.spec.take();
            svc.spec = svc.previous_spec.take();
            svc.previous_spec = failed_spec;
            svc.spec_version += 1;
            let msg = format!(
                "update rolled back due to failure or early termination of task {}",
                first.id
            );
            set_status(pass, svc, UpdateState::RollbackStarted, msg);
        }
        _ => {
            let state = if rollback {
                UpdateState::RollbackPaused
            } else {
                UpdateState::Paused
            };
            let msg = format!(
                "{what} paused due to failure or early termination of task {}",
                first.id
            );
            set_status(pass, svc, state, msg);
        }
    }
}

/// Moves the update of `svc` forward over its live slots.
pub(super) fn run(pass: &mut Pass, svc: &mut Service, views: &mut [SlotView]) {
    // Start-first: the old task ends once the new one is up (even while paused).
    for v in views.iter_mut() {
        let new_up = v.runnable.iter().any(|t| !outdated(t, svc) && is_up(t));
        if new_up && v.runnable.iter().any(|t| outdated(t, svc)) {
            let mut g = Group::default();
            for t in v.runnable.iter().filter(|t| outdated(t, svc)) {
                g.update(pass.ended_copy(t, TaskState::Shutdown, false));
            }
            pass.plan.commit(g);
            v.runnable.retain(|t| !outdated(t, svc));
        }
    }
    let st = state_of(svc);
    if matches!(st, UpdateState::Paused | UpdateState::RollbackPaused) {
        return;
    }
    let dirty: Vec<usize> = views
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            v.may_create && !v.runnable.is_empty() && v.runnable.iter().all(|t| outdated(t, svc))
        })
        .map(|(i, _)| i)
        .collect();
    if !matches!(st, UpdateState::Updating | UpdateState::RollbackStarted) {
        if dirty.is_empty() {
            return;
        }
        set_status(
            pass,
            svc,
            UpdateState::Updating,
            "update in progress".into(),
        );
    }
    let cfg = config(svc);
    let started = started_at(svc);
    let ro: &Service = svc;
    let in_flight = views
        .iter()
        .filter(|v| {
            let mut new = v.runnable.iter().filter(|t| !outdated(t, ro));
            let pair = v.runnable.iter().any(|t| outdated(t, ro)) && new.clone().next().is_some();
            pair || new.any(|t| in_update(t, ro, started) && !is_up(t))
        })
        .count();
    let up_since = |views: &[SlotView]| -> Vec<i64> {
        views
            .iter()
            .flat_map(|v| v.runnable.iter())
            .filter(|t| in_update(t, ro, started) && is_up(t))
            .map(status_time)
            .collect()
    };

    if !dirty.is_empty() {
        let capacity = if cfg.parallelism == 0 {
            usize::MAX
        } else {
            usize::try_from(cfg.parallelism)
                .unwrap_or(usize::MAX)
                .saturating_sub(in_flight)
        };
        if capacity == 0 {
            return;
        }
        if cfg.delay_ms > 0 {
            if let Some(last) = up_since(views).into_iter().max() {
                let at = last.saturating_add(cfg.delay_ms);
                if pass.now < at {
                    pass.wake(at);
                    return;
                }
            }
        }
        for &i in dirty.iter().take(capacity) {
            if !update_slot(pass, ro, &mut views[i], cfg.order) {
                break;
            }
        }
        return;
    }
    if in_flight > 0 {
        return;
    }
    if let Some(end) = up_since(views).into_iter().max() {
        let end = end.saturating_add(cfg.monitor_ms);
        if pass.now < end {
            pass.wake(end);
            return;
        }
    }
    let (state, msg) = if rolling_back(st) {
        (UpdateState::RollbackCompleted, "rollback completed")
    } else {
        (UpdateState::Completed, "update completed")
    };
    set_status(pass, svc, state, msg.into());
}

/// Replaces the outdated task of one slot by a task of the current spec; false when the batch
/// is full.
fn update_slot(pass: &mut Pass, svc: &Service, v: &mut SlotView, order: UpdateOrder) -> bool {
    if pass.plan.is_full() {
        return false;
    }
    let mut g = Group::default();
    let mut kept = Vec::new();
    let mut stopping = false;
    for t in v.runnable.drain(..) {
        if order == UpdateOrder::StopFirst || is_terminal(observed(&t)) {
            stopping |= slot::holds_node(pass, &t);
            g.update(pass.ended_copy(&t, TaskState::Shutdown, false));
        } else {
            kept.push(t);
        }
    }
    let mut t = pass.new_task(svc, v.key.number(), &v.node_id, 0);
    if stopping {
        // Stop-first: prepared, started once the old task has stopped (see `slot`).
        t.desired_state = TaskState::Ready as i32;
    }
    g.create(t.clone());
    kept.push(t);
    v.runnable = kept;
    pass.plan.commit(g)
}
