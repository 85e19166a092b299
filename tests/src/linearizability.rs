//! A linearizability checker for histories recorded against the real cluster: the Wing–Gong
//! search as refined by Lowe (and used by Porcupine), with memoization of (set of linearized
//! operations, model state) so that equivalent branches are explored once.
//!
//! A history is a list of [`Operation`]s, each with the monotonic times (ns) at which its client
//! invoked it and saw its answer, and an [`Outcome`]:
//! - `Ok(output)`: answered; it took effect exactly once, at some instant inside its interval,
//!   and produced `output`.
//! - `Failed`: answered with an error that proves it had no effect (a version conflict found
//!   before proposing, a connection refused before anything was sent). It constrains nothing and
//!   is left out of the search.
//! - `Unknown`: timed out or failed after it may have reached raft (leadership lost, connection
//!   reset...). It may have taken effect at any instant after its invocation, even long after
//!   the client gave up (its interval ends at +infinity), or never.
//! - `TookEffect`: like `Unknown` but known to have taken effect (e.g. the unique value it wrote
//!   was read later), without a known output.
//!
//! The history is linearizable when there is a total order of the `Ok` and `TookEffect`
//! operations plus any subset of the `Unknown` ones that respects real time (an operation that
//! completed before another was invoked comes first) and in which every operation is legal for
//! the sequential [`Model`] with the output that was observed.
//!
//! Checking is exponential in the worst case; linearizability is compositional, so callers check
//! each independent object (key) separately, which keeps the concurrency of each history small.
//! The search is bounded by a budget of explored configurations and reports when it gives up
//! (never counted as a pass).

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    fn init(&self) -> Self::State;

    /// The state after `input` applied to `state`, when that is legal with the observed `output`
    /// (`None`: the operation took effect but its output is unknown); `None` when it is not.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Whether `input` leaves the same state whatever the state before it (a blind write). An
    /// optional operation placed right before such an operation changes nothing anyone can
    /// observe, so the search does not place one there: without this, every chain of
    /// indeterminate writes would be tried in every order.
    fn overwrites(&self, _input: &Self::Input) -> bool {
        false
    }
}

/// How an operation ended, as far as its client can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<O> {
    Ok(O),
    Failed,
    Unknown,
    TookEffect,
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Operation<I, O> {
    pub client: usize,
    /// Monotonic ns when the client sent it.
    pub invoke: u64,
    /// Monotonic ns when the client saw its answer (ignored unless `Ok`).
    pub complete: u64,
    pub input: I,
    pub outcome: Outcome<O>,
}

/// Why a history was not accepted.
#[derive(Debug, Clone)]
pub enum Violation {
    /// No linearization exists. `linearized` operations (indexes into the history) could be
    /// ordered at best; then `stuck`, which had already completed, could not be placed after them
    /// from any of the `states` reached with that prefix.
    NotLinearizable {
        linearized: Vec<usize>,
        stuck: usize,
        states: Vec<String>,
    },
    /// The search explored `explored` configurations without deciding.
    GaveUp { explored: usize },
}

/// Configurations the search may explore before giving up.
pub const DEFAULT_BUDGET: usize = 5_000_000;

/// Checks `history` against `model`. First without the `Unknown` operations (as if none took
/// effect: usually enough, and cheap), then, if that fails, with them.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
) -> Result<(), Violation> {
    check_with_budget(model, history, DEFAULT_BUDGET)
}

/// [`check`] with an explicit budget of explored configurations.
pub fn check_with_budget<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: usize,
) -> Result<(), Violation> {
    let has_unknown = history
        .iter()
        .any(|o| matches!(o.outcome, Outcome::Unknown));
    if has_unknown && search(model, history, false, budget).is_ok() {
        // Leaving out operations that may not have taken effect only removes linearizations:
        // one found without them is one of the full history.
        return Ok(());
    }
    search(model, history, true, budget)
}

#[derive(Clone, Copy)]
enum Entry {
    Call(usize),
    Return(usize),
}

/// A configuration of the search: which operations are linearized and the model state reached.
/// Split in required operations (`Ok`, `TookEffect`) and optional ones (`Unknown`) because an
/// optional operation may also never be linearized: a configuration whose optional set is a
/// superset of one already explored with the same required set and state can reach nothing the
/// smaller one could not (every future open to it is open to the smaller one, which may place the
/// extra optional operations later or never), so it is skipped.
struct Seen<S> {
    by_key: HashMap<(Vec<u64>, S), Vec<Vec<u64>>>,
    len: usize,
}

impl<S: Hash + Eq> Seen<S> {
    /// Records the configuration; false when it (or one dominating it) was seen.
    fn insert(&mut self, required: Vec<u64>, optional: Vec<u64>, state: S) -> bool {
        let sets = self.by_key.entry((required, state)).or_default();
        if sets
            .iter()
            .any(|seen| seen.iter().zip(&optional).all(|(a, b)| a & !b == 0))
        {
            return false;
        }
        // Those it dominates are no longer needed to prune.
        sets.retain(|seen| !optional.iter().zip(seen).all(|(a, b)| a & !b == 0));
        sets.push(optional);
        self.len += 1;
        true
    }
}

/// The Wing–Gong–Lowe search over a doubly linked list of call/return entries ordered by time.
/// At each configuration the required operations that may come next are tried first, the
/// optional ones only after them: a valid history is usually linearized without placing any
/// optional operation where it does not help.
fn search<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    with_unknown: bool,
    budget: usize,
) -> Result<(), Violation> {
    // (time, is_return, op): calls before returns at the same instant (treated as concurrent).
    let mut timeline: Vec<(u64, bool, usize)> = Vec::new();
    let words = history.len().div_ceil(64);
    let mut required_mask = vec![0u64; words];
    let mut required = 0usize;
    for (i, op) in history.iter().enumerate() {
        match &op.outcome {
            Outcome::Failed => {}
            Outcome::Unknown if !with_unknown => {}
            Outcome::Unknown => timeline.push((op.invoke, false, i)),
            Outcome::TookEffect => {
                required += 1;
                required_mask[i / 64] |= 1 << (i % 64);
                timeline.push((op.invoke, false, i));
            }
            Outcome::Ok(_) => {
                required += 1;
                required_mask[i / 64] |= 1 << (i % 64);
                timeline.push((op.invoke, false, i));
                timeline.push((op.complete.max(op.invoke), true, i));
            }
        }
    }
    if required == 0 {
        return Ok(());
    }
    timeline.sort_by_key(|&(t, ret, i)| (t, ret, i));
    let entries: Vec<Entry> = timeline
        .iter()
        .map(|&(_, ret, i)| {
            if ret {
                Entry::Return(i)
            } else {
                Entry::Call(i)
            }
        })
        .collect();
    // Node n of the list is entry n; node `head` is the sentinel; NIL ends the list.
    const NIL: usize = usize::MAX;
    let head = entries.len();
    let mut next: Vec<usize> = (0..entries.len())
        .map(|n| if n + 1 < entries.len() { n + 1 } else { NIL })
        .collect();
    next.push(if entries.is_empty() { NIL } else { 0 });
    let mut prev: Vec<usize> = (0..entries.len())
        .map(|n| if n == 0 { head } else { n - 1 })
        .collect();
    prev.push(NIL);
    // The return entry of each op, to lift it with its call.
    let mut return_of = vec![NIL; history.len()];
    for (n, e) in entries.iter().enumerate() {
        if let Entry::Return(i) = e {
            return_of[*i] = n;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, n: usize| {
        let (p, q) = (prev[n], next[n]);
        next[p] = q;
        if q != NIL {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, n: usize| {
        let (p, q) = (prev[n], next[n]);
        next[p] = n;
        if q != NIL {
            prev[q] = n;
        }
    };
    let is_required = |i: usize| required_mask[i / 64] & (1 << (i % 64)) != 0;
    let split = |bits: &[u64]| -> (Vec<u64>, Vec<u64>) {
        (
            bits.iter()
                .zip(&required_mask)
                .map(|(b, m)| b & m)
                .collect(),
            bits.iter()
                .zip(&required_mask)
                .map(|(b, m)| b & !m)
                .collect(),
        )
    };

    let mut linearized = vec![0u64; words];
    let mut done_required = 0usize;
    let mut state = model.init();
    let mut seen: Seen<M::State> = Seen {
        by_key: HashMap::new(),
        len: 0,
    };
    // (call entry lifted, state before it, the pass it was chosen in)
    let mut stack: Vec<(usize, M::State, bool)> = Vec::new();
    // Deepest point reached: (required linearized, stuck op, order, states there).
    let mut best: Option<(usize, usize, Vec<usize>, Vec<String>)> = None;
    // Pass false: required calls only; pass true: optional calls only.
    let mut optional_pass = false;
    let mut cur = next[head];
    loop {
        if seen.len > budget {
            return Err(Violation::GaveUp { explored: seen.len });
        }
        let stuck = match entries.get(cur) {
            None => None,
            Some(Entry::Return(i)) => Some(*i),
            Some(Entry::Call(i)) => {
                let i = *i;
                if is_required(i) == optional_pass {
                    cur = next[cur];
                    continue;
                }
                let after_optional = stack
                    .last()
                    .is_some_and(|(_, _, chosen_in_optional_pass)| *chosen_in_optional_pass);
                if optional_pass && after_optional && model.overwrites(&history[i].input) {
                    cur = next[cur];
                    continue;
                }
                let op = &history[i];
                let output = match &op.outcome {
                    Outcome::Ok(o) => Some(o),
                    _ => None,
                };
                if let Some(after) = model.step(&state, &op.input, output) {
                    let mut bits = linearized.clone();
                    bits[i / 64] |= 1 << (i % 64);
                    let (req, opt) = split(&bits);
                    if seen.insert(req, opt, after.clone()) {
                        stack.push((cur, std::mem::replace(&mut state, after), optional_pass));
                        linearized = bits;
                        unlink(&mut next, &mut prev, cur);
                        if return_of[i] != NIL {
                            unlink(&mut next, &mut prev, return_of[i]);
                        }
                        if is_required(i) {
                            done_required += 1;
                            if done_required == required {
                                // The optional operations left never took effect.
                                return Ok(());
                            }
                        }
                        optional_pass = false;
                        cur = next[head];
                        continue;
                    }
                }
                cur = next[cur];
                continue;
            }
        };
        if !optional_pass {
            optional_pass = true;
            cur = next[head];
            continue;
        }
        // Nothing more can be linearized from here: note how far this branch got, backtrack.
        if let Some(i) = stuck {
            let depth = done_required;
            let order = || -> Vec<usize> {
                stack
                    .iter()
                    .map(|(n, _, _)| match entries[*n] {
                        Entry::Call(j) | Entry::Return(j) => j,
                    })
                    .collect()
            };
            match &mut best {
                Some((d, s, _, states)) if *d == depth && *s == i => {
                    let st = format!("{state:?}");
                    if states.len() < 8 && !states.contains(&st) {
                        states.push(st);
                    }
                }
                Some((d, _, _, _)) if *d >= depth => {}
                _ => best = Some((depth, i, order(), vec![format!("{state:?}")])),
            }
        }
        let Some((n, before, pass)) = stack.pop() else {
            let (linearized, stuck, states) = match best {
                Some((_, s, order, states)) => (order, s, states),
                None => (Vec::new(), usize::MAX, vec![format!("{:?}", model.init())]),
            };
            return Err(Violation::NotLinearizable {
                linearized,
                stuck,
                states,
            });
        };
        let Entry::Call(i) = entries[n] else {
            unreachable!("only call entries are pushed");
        };
        if return_of[i] != NIL {
            relink(&mut next, &mut prev, return_of[i]);
        }
        relink(&mut next, &mut prev, n);
        linearized[i / 64] &= !(1 << (i % 64));
        if is_required(i) {
            done_required -= 1;
        }
        state = before;
        optional_pass = pass;
        cur = next[n];
    }
}

// ---- models ----------------------------------------------------------------------------------

/// A register holding a `u64` (each write writes a value of its own, so a read names the write
/// it saw), with reads, blind writes and compare-and-set.
#[derive(Debug, Clone, Copy)]
pub struct Register {
    pub initial: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    Read,
    Write(u64),
    /// Sets `new` if the register holds `expected`.
    Cas {
        expected: u64,
        new: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    /// What a read returned.
    Value(u64),
    /// A read found no register at all.
    Missing,
    /// A write or a successful compare-and-set.
    Written,
    /// A compare-and-set that found another value (and changed nothing).
    Conflict,
}

impl Model for Register {
    type State = u64;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> u64 {
        self.initial
    }

    fn overwrites(&self, input: &RegisterInput) -> bool {
        matches!(input, RegisterInput::Write(_))
    }

    fn step(&self, s: &u64, input: &RegisterInput, output: Option<&RegisterOutput>) -> Option<u64> {
        use RegisterOutput as O;
        match (input, output) {
            (RegisterInput::Read, None) => Some(*s),
            (RegisterInput::Read, Some(O::Value(v))) => (v == s).then_some(*s),
            (RegisterInput::Read, Some(_)) => None,
            (RegisterInput::Write(v), None | Some(O::Written)) => Some(*v),
            (RegisterInput::Write(_), Some(_)) => None,
            (RegisterInput::Cas { expected, new }, None | Some(O::Written)) => {
                (s == expected).then_some(*new)
            }
            (RegisterInput::Cas { expected, .. }, Some(O::Conflict)) => {
                (s != expected).then_some(*s)
            }
            (RegisterInput::Cas { .. }, Some(_)) => None,
        }
    }
}

/// Whether a name exists: created once (a second create finds it), read by lookups.
#[derive(Debug, Clone, Copy)]
pub struct Exists;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExistsInput {
    Create,
    Lookup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExistsOutput {
    Created,
    AlreadyExists,
    Found,
    NotFound,
}

impl Model for Exists {
    type State = bool;
    type Input = ExistsInput;
    type Output = ExistsOutput;

    fn init(&self) -> bool {
        false
    }

    fn step(&self, s: &bool, input: &ExistsInput, output: Option<&ExistsOutput>) -> Option<bool> {
        use ExistsOutput as O;
        match (input, output) {
            (ExistsInput::Create, None | Some(O::Created)) => (!*s).then_some(true),
            (ExistsInput::Create, Some(O::AlreadyExists)) => s.then_some(true),
            (ExistsInput::Lookup, None) => Some(*s),
            (ExistsInput::Lookup, Some(O::Found)) => s.then_some(true),
            (ExistsInput::Lookup, Some(O::NotFound)) => (!*s).then_some(false),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegisterInput::*;
    use RegisterOutput::*;

    type Op = Operation<RegisterInput, RegisterOutput>;

    fn op(
        client: usize,
        invoke: u64,
        complete: u64,
        input: RegisterInput,
        out: RegisterOutput,
    ) -> Op {
        Operation {
            client,
            invoke,
            complete,
            input,
            outcome: Outcome::Ok(out),
        }
    }

    fn with(mut o: Op, outcome: Outcome<RegisterOutput>) -> Op {
        o.outcome = outcome;
        o
    }

    const R: Register = Register { initial: 0 };

    fn not_linearizable(h: &[Op]) -> (Vec<usize>, usize) {
        match check(&R, h) {
            Err(Violation::NotLinearizable {
                linearized, stuck, ..
            }) => (linearized, stuck),
            other => panic!("expected a violation, got {other:?} for {h:#?}"),
        }
    }

    #[test]
    fn sequential_and_overlapping_histories_pass() {
        assert!(check(&R, &[]).is_ok());
        let h = [
            op(0, 0, 10, Write(1), Written),
            op(1, 20, 30, Read, Value(1)),
            op(
                0,
                40,
                50,
                Cas {
                    expected: 1,
                    new: 2,
                },
                Written,
            ),
            op(
                1,
                60,
                70,
                Cas {
                    expected: 1,
                    new: 3,
                },
                Conflict,
            ),
            op(1, 80, 90, Read, Value(2)),
        ];
        assert!(check(&R, &h).is_ok());
        // A read overlapping a write may see either value; two overlapping reads may see old then
        // new, and the later one may see new while the earlier saw old.
        let h = [
            op(0, 0, 100, Write(1), Written),
            op(1, 10, 20, Read, Value(0)),
            op(2, 30, 40, Read, Value(1)),
            op(1, 50, 60, Read, Value(1)),
        ];
        assert!(check(&R, &h).is_ok());
        // Concurrent writes order either way; the reads after them agree on the winner.
        let h = [
            op(0, 0, 50, Write(1), Written),
            op(1, 10, 40, Write(2), Written),
            op(2, 60, 70, Read, Value(1)),
            op(0, 80, 90, Read, Value(1)),
        ];
        assert!(check(&R, &h).is_ok());
        // Linearization points need not follow invocation order.
        let h = [
            op(0, 0, 100, Write(1), Written),
            op(1, 5, 15, Write(2), Written),
            op(2, 20, 30, Read, Value(2)),
            op(2, 110, 120, Read, Value(1)),
        ];
        assert!(check(&R, &h).is_ok());
    }

    #[test]
    fn stale_read_after_a_completed_write_fails() {
        let h = [
            op(0, 0, 10, Write(1), Written),
            op(1, 20, 30, Read, Value(0)),
        ];
        let (lin, stuck) = not_linearizable(&h);
        assert_eq!(
            stuck, 1,
            "the stale read is the operation that cannot be placed"
        );
        assert_eq!(lin, [0]);
    }

    #[test]
    fn read_of_a_value_never_written_fails() {
        let h = [
            op(0, 0, 10, Write(1), Written),
            op(1, 5, 30, Read, Value(7)),
        ];
        not_linearizable(&h);
        // Also when the only writer of 7 is known to have failed.
        let h = [
            with(op(0, 0, 10, Write(7), Written), Outcome::Failed),
            op(1, 20, 30, Read, Value(7)),
        ];
        not_linearizable(&h);
        let h = [op(1, 20, 30, Read, Missing)];
        not_linearizable(&h);
    }

    #[test]
    fn reads_seeing_opposite_orders_fail() {
        // Writes of 1 and 2 overlap; one reader sees 1 then 2, another 2 then 1, all reads after
        // both writes ended... no: the reads overlap the writes but are ordered among themselves.
        let h = [
            op(0, 0, 100, Write(1), Written),
            op(1, 0, 100, Write(2), Written),
            op(2, 10, 20, Read, Value(1)),
            op(2, 30, 40, Read, Value(2)),
            op(3, 10, 20, Read, Value(2)),
            op(3, 30, 40, Read, Value(1)),
        ];
        not_linearizable(&h);
        // The same reads, each pair spread so that one order is consistent, pass.
        let h = [
            op(0, 0, 100, Write(1), Written),
            op(1, 0, 100, Write(2), Written),
            op(2, 10, 20, Read, Value(1)),
            op(2, 30, 40, Read, Value(2)),
            op(3, 15, 25, Read, Value(1)),
            op(3, 50, 60, Read, Value(2)),
        ];
        assert!(check(&R, &h).is_ok());
    }

    #[test]
    fn lost_acknowledged_write_fails() {
        // Acknowledged write of 2, later reads keep seeing the value before it.
        let h = [
            op(0, 0, 10, Write(1), Written),
            op(1, 20, 30, Write(2), Written),
            op(2, 40, 50, Read, Value(1)),
        ];
        let (_, stuck) = not_linearizable(&h);
        assert_eq!(stuck, 2);
        // A compare-and-set that reported success but whose value is never seen.
        let h = [
            op(
                0,
                0,
                10,
                Cas {
                    expected: 0,
                    new: 5,
                },
                Written,
            ),
            op(1, 20, 30, Read, Value(0)),
        ];
        not_linearizable(&h);
        // A successful compare-and-set from a value the register did not hold.
        let h = [op(
            0,
            0,
            10,
            Cas {
                expected: 3,
                new: 5,
            },
            Written,
        )];
        not_linearizable(&h);
        // A conflict reported while the register held the expected value, nothing concurrent.
        let h = [
            op(0, 0, 10, Write(3), Written),
            op(
                1,
                20,
                30,
                Cas {
                    expected: 3,
                    new: 5,
                },
                Conflict,
            ),
        ];
        not_linearizable(&h);
    }

    #[test]
    fn indeterminate_writes_may_or_may_not_apply() {
        // A timed-out write seen later: it took effect, long after its client gave up.
        let unknown = |o: Op| with(o, Outcome::Unknown);
        let h = [
            unknown(op(0, 0, 10, Write(1), Written)),
            op(1, 20, 30, Read, Value(0)),
            op(1, 40, 50, Read, Value(1)),
            op(1, 60, 70, Read, Value(1)),
        ];
        assert!(check(&R, &h).is_ok());
        // ... or it never took effect.
        let h = [
            unknown(op(0, 0, 10, Write(1), Written)),
            op(1, 20, 30, Read, Value(0)),
            op(1, 40, 50, Read, Value(0)),
        ];
        assert!(check(&R, &h).is_ok());
        // But it takes effect once: seen, then not seen, then seen again is a violation.
        let h = [
            unknown(op(0, 0, 10, Write(1), Written)),
            op(1, 20, 30, Read, Value(1)),
            op(1, 40, 50, Read, Value(0)),
        ];
        not_linearizable(&h);
        let h = [
            unknown(op(0, 0, 10, Write(1), Written)),
            op(2, 15, 16, Write(2), Written),
            op(1, 20, 30, Read, Value(1)),
            op(1, 40, 50, Read, Value(2)),
            op(1, 60, 70, Read, Value(1)),
        ];
        not_linearizable(&h);
        // An indeterminate write cannot take effect before it was invoked.
        let h = [
            op(1, 0, 10, Read, Value(1)),
            unknown(op(0, 20, 30, Write(1), Written)),
        ];
        not_linearizable(&h);
        // An unknown compare-and-set explains a later conflict only if it can have applied.
        let h = [
            unknown(op(
                0,
                0,
                10,
                Cas {
                    expected: 0,
                    new: 4,
                },
                Written,
            )),
            op(
                1,
                20,
                30,
                Cas {
                    expected: 0,
                    new: 5,
                },
                Conflict,
            ),
        ];
        assert!(check(&R, &h).is_ok());
        let h = [
            unknown(op(
                0,
                0,
                10,
                Cas {
                    expected: 9,
                    new: 4,
                },
                Written,
            )),
            op(
                1,
                20,
                30,
                Cas {
                    expected: 0,
                    new: 5,
                },
                Conflict,
            ),
        ];
        not_linearizable(&h);
        // An unseen indeterminate write is the only explanation of a conflict: it is used.
        let h = [
            op(0, 0, 10, Write(1), Written),
            unknown(op(1, 20, 30, Write(5), Written)),
            unknown(op(2, 21, 31, Write(6), Written)),
            op(
                0,
                40,
                50,
                Cas {
                    expected: 1,
                    new: 7,
                },
                Conflict,
            ),
            op(0, 60, 70, Write(8), Written),
            op(0, 80, 90, Read, Value(8)),
        ];
        assert!(check(&R, &h).is_ok());
        let h = [h[0].clone(), h[3].clone(), h[4].clone(), h[5].clone()];
        not_linearizable(&h);
        // Known to have taken effect (its value was observed elsewhere) means it must apply:
        // a compare-and-set from a value never held then cannot be placed anywhere.
        let h = [
            with(
                op(
                    0,
                    0,
                    10,
                    Cas {
                        expected: 9,
                        new: 4,
                    },
                    Written,
                ),
                Outcome::Unknown,
            ),
            op(1, 20, 30, Read, Value(0)),
        ];
        assert!(check(&R, &h).is_ok());
        let h = [
            with(
                op(
                    0,
                    0,
                    10,
                    Cas {
                        expected: 9,
                        new: 4,
                    },
                    Written,
                ),
                Outcome::TookEffect,
            ),
            op(1, 20, 30, Read, Value(0)),
        ];
        not_linearizable(&h);
        // Failed operations are ignored: a failed write seen is a violation (above), unseen fine.
        let h = [
            with(op(0, 0, 10, Write(1), Written), Outcome::Failed),
            op(1, 20, 30, Read, Value(0)),
        ];
        assert!(check(&R, &h).is_ok());
    }

    #[test]
    fn exists_model() {
        use ExistsInput::*;
        use ExistsOutput::*;
        let e = |c, i, r, input, out| Operation {
            client: c,
            invoke: i,
            complete: r,
            input,
            outcome: Outcome::Ok(out),
        };
        let h = [
            e(1, 0, 5, Lookup, NotFound),
            e(0, 0, 100, Create, Created),
            e(1, 10, 20, Lookup, NotFound),
            e(1, 30, 40, Lookup, Found),
            e(2, 110, 120, Lookup, Found),
        ];
        assert!(check(&Exists, &h).is_ok());
        // Acknowledged, then not found through another manager.
        let h = [e(0, 0, 10, Create, Created), e(1, 20, 30, Lookup, NotFound)];
        assert!(matches!(
            check(&Exists, &h),
            Err(Violation::NotLinearizable { .. })
        ));
        // Found, then not found.
        let h = [
            e(0, 0, 100, Create, Created),
            e(1, 10, 20, Lookup, Found),
            e(1, 30, 40, Lookup, NotFound),
        ];
        assert!(check(&Exists, &h).is_err());
        // A single create answered "already exists": it was applied twice (or by someone else).
        let h = [e(0, 0, 10, Create, AlreadyExists)];
        assert!(check(&Exists, &h).is_err());
    }

    #[test]
    fn many_concurrent_unknowns_stay_tractable() {
        // 40 clients each time out on a write and never see it; reads in between see only
        // acknowledged values. The pass without unknowns decides at once.
        let mut h = Vec::new();
        for c in 0..40u64 {
            h.push(with(
                op(c as usize, c * 10, c * 10 + 5, Write(1000 + c), Written),
                Outcome::Unknown,
            ));
        }
        for k in 0..200u64 {
            let t = 1000 + k * 20;
            h.push(op(100, t, t + 5, Write(k + 1), Written));
            h.push(op(101, t + 10, t + 15, Read, Value(k + 1)));
        }
        let r = check(&R, &h);
        assert!(r.is_ok(), "{r:?}");
        // And one of them seen late must be placed: still decided quickly.
        h.push(op(101, 100_000, 100_010, Read, Value(1007)));
        assert!(check(&R, &h).is_ok());
        // A violation after them is found without trying every subset of them.
        h.push(op(101, 100_020, 100_030, Read, Value(1)));
        let started = std::time::Instant::now();
        match check(&R, &h) {
            Err(Violation::NotLinearizable { stuck, .. }) => assert_eq!(stuck, h.len() - 1),
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        // A budget too small to decide says so instead of passing.
        match check_with_budget(&R, &h, 50) {
            Err(Violation::GaveUp { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
