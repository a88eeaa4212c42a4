//! The checker: a history of probe calls and each probe's final list (read after the system
//! healed), held to the contract.
//!
//! A token is one logical operation: a client that retries sends the same token with the
//! same idempotency key. A token is *acknowledged* if any of its attempts ended `ok`, and
//! *refused* if every attempt ended `fail`.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Event, Op, Type};

/// What the checker found: how many violations of each rule, and the first example of each.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Operations (invocations) read.
    pub operations: usize,
    /// Tokens acknowledged.
    pub acknowledged: usize,
    /// Acknowledged appends missing from their probe's final list.
    pub lost: usize,
    /// Tokens found more than once in a final list or in a returned list.
    pub duplicated: usize,
    /// Returned lists that are not a prefix of the final list: two timelines (split brain), or
    /// a reply from a state that was later lost.
    pub divergent: usize,
    /// Acknowledged appends whose returned list does not end with their own token.
    pub misplaced: usize,
    /// Pairs out of real-time order: an append acknowledged before another was invoked, yet
    /// placed after it.
    pub reordered: usize,
    /// Refused tokens that were applied anyway.
    pub applied_after_refusal: usize,
    /// Idempotency keys whose acknowledgements differ.
    pub inconsistent_replies: usize,
    /// Acknowledged forwards, timers and effects whose token was not applied exactly once at
    /// its target.
    pub not_exactly_once: usize,
    /// Timer tokens seen in a list returned before the timer was due.
    pub early: usize,
    /// Reads acknowledged (each checked for `stale`).
    pub reads: usize,
    /// Stale reads: a read that returned a list without an append acknowledged before the
    /// read was invoked (linearizability per probe: every reply reflects a state at least as
    /// new as every reply acknowledged before the call began).
    pub stale: usize,
    /// The first example of each violation found, in words.
    pub examples: BTreeMap<&'static str, String>,
}

impl Report {
    /// Whether the history keeps every rule.
    pub fn is_valid(&self) -> bool {
        self.lost
            + self.duplicated
            + self.divergent
            + self.misplaced
            + self.reordered
            + self.applied_after_refusal
            + self.inconsistent_replies
            + self.not_exactly_once
            + self.early
            + self.stale
            == 0
    }

    fn found(&mut self, rule: &'static str, example: impl FnOnce() -> String) {
        let count = match rule {
            "lost" => &mut self.lost,
            "duplicated" => &mut self.duplicated,
            "divergent" => &mut self.divergent,
            "misplaced" => &mut self.misplaced,
            "reordered" => &mut self.reordered,
            "applied_after_refusal" => &mut self.applied_after_refusal,
            "inconsistent_replies" => &mut self.inconsistent_replies,
            "early" => &mut self.early,
            "stale" => &mut self.stale,
            _ => &mut self.not_exactly_once,
        };
        *count += 1;
        self.examples.entry(rule).or_insert_with(example);
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} operations, {} tokens acknowledged; lost {}, duplicated {}, divergent {}, \
             misplaced {}, reordered {}, applied after refusal {}, inconsistent replies {}, \
             not exactly once {}, early {}, stale {} (of {} reads)",
            self.operations,
            self.acknowledged,
            self.lost,
            self.duplicated,
            self.divergent,
            self.misplaced,
            self.reordered,
            self.applied_after_refusal,
            self.inconsistent_replies,
            self.not_exactly_once,
            self.early,
            self.stale,
            self.reads
        )?;
        for (rule, example) in &self.examples {
            write!(f, "\n  first {rule}: {example}")?;
        }
        Ok(())
    }
}

/// One token's attempts, gathered.
#[derive(Default)]
struct Token<'a> {
    invoke: Option<&'a Event>,
    /// When its first attempt was invoked, and when its first `ok` came.
    invoked_at: u64,
    acked_at: Option<u64>,
    acked: Option<&'a Event>,
    all_failed: bool,
}

/// Checks `history` against `finals`, each probe's list read after the system healed.
pub fn check(history: &[Event], finals: &BTreeMap<String, Vec<String>>) -> Report {
    let mut report = Report::default();
    let empty = Vec::new();
    let final_of = |entity: &str| finals.get(entity).unwrap_or(&empty);
    report.operations = history.iter().filter(|e| e.kind == Type::Invoke).count();

    // Gather each token's attempts.
    let mut tokens: BTreeMap<&str, Token> = BTreeMap::new();
    for event in history {
        let Some(token) = event.token.as_deref() else {
            continue;
        };
        let entry = tokens.entry(token).or_insert_with(|| Token {
            invoked_at: u64::MAX,
            all_failed: true,
            ..Token::default()
        });
        match event.kind {
            Type::Invoke => {
                entry.invoked_at = entry.invoked_at.min(event.time);
                entry.invoke.get_or_insert(event);
            }
            Type::Ok => {
                entry.all_failed = false;
                if entry.acked_at.is_none() {
                    entry.acked_at = Some(event.time);
                    entry.acked = Some(event);
                }
            }
            Type::Info => entry.all_failed = false,
            Type::Fail => {}
        }
    }

    // Where each token sits in each final list; duplicates in final lists.
    let mut positions: HashMap<(&str, &str), usize> = HashMap::new();
    let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
    for (entity, list) in finals {
        for (at, token) in list.iter().enumerate() {
            positions.entry((entity, token)).or_insert(at);
            *counts.entry((entity, token)).or_default() += 1;
        }
        let mut seen = HashSet::new();
        for token in list {
            if !seen.insert(token) {
                report.found("duplicated", || {
                    format!("{token} twice in the final list of {entity}")
                });
            }
        }
    }

    for (token, t) in &tokens {
        let Some(call) = t.invoke else { continue };
        let entity = call.entity.as_str();
        let here = counts.get(&(entity, *token)).copied().unwrap_or(0);
        if t.acked.is_some() {
            report.acknowledged += 1;
        }
        match call.f {
            Op::Append | Op::Forward => {
                if t.acked.is_some() && here == 0 {
                    report.found("lost", || {
                        format!("{token} (acknowledged) is not in the final list of {entity}")
                    });
                }
                if t.all_failed && here > 0 {
                    report.found("applied_after_refusal", || {
                        format!("{token} was refused, yet {entity} holds it")
                    });
                }
            }
            Op::Schedule | Op::Effect => {
                if t.acked.is_some() && here != 1 {
                    let what = if call.f == Op::Schedule {
                        "timer"
                    } else {
                        "effect"
                    };
                    report.found("not_exactly_once", || {
                        format!(
                            "{what} token {token} is in the final list of {entity} {here} times"
                        )
                    });
                }
            }
            Op::Ask => {
                let answer = format!("{token}!");
                let answers = counts.get(&(entity, answer.as_str())).copied().unwrap_or(0);
                if t.acked.is_some() && answers != 1 {
                    report.found("not_exactly_once", || {
                        format!(
                            "the answer to ask {token} is in the final list of {entity} \
                             {answers} times"
                        )
                    });
                }
            }
            Op::Read => {}
        }
        if matches!(call.f, Op::Forward | Op::Ask)
            && t.acked.is_some()
            && let Some(to) = call.to.as_deref()
        {
            let there = counts.get(&(to, *token)).copied().unwrap_or(0);
            if there != 1 {
                let what = if call.f == Op::Ask {
                    "asked"
                } else {
                    "forwarded"
                };
                report.found("not_exactly_once", || {
                    format!("{what} token {token} is in the final list of {to} {there} times")
                });
            }
        }
    }

    // Every returned list: distinct tokens, a prefix of the final list, ending with its own
    // token for appends.
    for event in history.iter().filter(|e| e.kind == Type::Ok) {
        let Some(list) = &event.value else { continue };
        let entity = event.entity.as_str();
        let end = final_of(entity);
        let mut seen = HashSet::new();
        if let Some(dup) = list.iter().find(|t| !seen.insert(*t)) {
            report.found("duplicated", || {
                format!(
                    "{dup} twice in a list {entity} returned (event {})",
                    event.index
                )
            });
        }
        if !end.starts_with(list) {
            report.found("divergent", || {
                format!(
                    "event {}: {entity} returned {list:?}, which is not a prefix of its final list {end:?}",
                    event.index
                )
            });
        }
        if matches!(event.f, Op::Append | Op::Forward) && list.last() != event.token.as_ref() {
            report.found("misplaced", || {
                format!(
                    "event {}: the list {entity} returned for {:?} ends with {:?}",
                    event.index,
                    event.token,
                    list.last()
                )
            });
        }
    }

    // Timers never fire early: a list returned before a timer could be due holds no token of
    // it. The list was made before its reply came, and the timer is due `ms` after a step
    // that began after the call was invoked; the server counts whole milliseconds, hence the
    // slack.
    const SLACK_NS: u64 = 2_000_000;
    let due: HashMap<(&str, &str), u64> = tokens
        .iter()
        .filter_map(|(token, t)| {
            let call = t.invoke?;
            let ms = call.ms.filter(|_| call.f == Op::Schedule)?;
            let at = t.invoked_at.saturating_add(ms.saturating_mul(1_000_000));
            Some(((call.entity.as_str(), *token), at.saturating_sub(SLACK_NS)))
        })
        .collect();
    if !due.is_empty() {
        for event in history.iter().filter(|e| e.kind == Type::Ok) {
            let Some(list) = &event.value else { continue };
            for token in list {
                if let Some(&at) = due.get(&(event.entity.as_str(), token.as_str()))
                    && event.time < at
                {
                    report.found("early", || {
                        format!(
                            "event {}: {} returned timer token {token} {} µs before it was due",
                            event.index,
                            event.entity,
                            (at + SLACK_NS - event.time) / 1000
                        )
                    });
                }
            }
        }
    }

    // Idempotency: every acknowledgement under one key returned the same list.
    let mut by_key: HashMap<(&str, &str), &Event> = HashMap::new();
    for event in history.iter().filter(|e| e.kind == Type::Ok) {
        let Some(key) = event.key.as_deref() else {
            continue;
        };
        match by_key.get(&(event.entity.as_str(), key)) {
            Some(first) if first.value != event.value => {
                report.found("inconsistent_replies", || {
                    format!(
                        "key {key} of {}: events {} and {} returned different lists",
                        event.entity, first.index, event.index
                    )
                });
            }
            Some(_) => {}
            None => {
                by_key.insert((event.entity.as_str(), key), event);
            }
        }
    }

    // Real time, per probe: sweep invocations in time order, keeping the furthest position of
    // the appends acknowledged before; an append placed before it was reordered.
    let mut per_entity: HashMap<&str, Vec<(&str, &Token)>> = HashMap::new();
    for (token, t) in &tokens {
        if let Some(call) = t.invoke
            && matches!(call.f, Op::Append | Op::Forward)
        {
            per_entity
                .entry(call.entity.as_str())
                .or_default()
                .push((token, t));
        }
    }
    let invoked_at: HashMap<u64, u64> = history
        .iter()
        .filter(|e| e.kind == Type::Invoke)
        .map(|e| (e.index, e.time))
        .collect();
    let mut reads: HashMap<&str, Vec<&Event>> = HashMap::new();
    for event in history
        .iter()
        .filter(|e| e.kind == Type::Ok && e.f == Op::Read)
    {
        report.reads += 1;
        reads.entry(event.entity.as_str()).or_default().push(event);
    }
    for (entity, list) in per_entity {
        let mut acked: Vec<(u64, usize, &str)> = list
            .iter()
            .filter_map(|(token, t)| {
                let at = positions.get(&(entity, *token))?;
                Some((t.acked_at?, *at, *token))
            })
            .collect();
        acked.sort_unstable();
        // Reads: each must hold every append acknowledged before the read was invoked, so
        // its list must reach past the furthest of them (lists are checked to be prefixes of
        // the final list above).
        // `furthest_by[i]`: when the i-th acknowledgement came, and the furthest append
        // (position, token) acknowledged by then.
        let mut furthest_by: Vec<(u64, usize, &str)> = Vec::with_capacity(acked.len());
        for &(at, pos, token) in &acked {
            let (pos, token) = match furthest_by.last() {
                Some(&(_, p, t)) if p >= pos => (p, t),
                _ => (pos, token),
            };
            furthest_by.push((at, pos, token));
        }
        for read in reads.get(entity).into_iter().flatten() {
            let Some(&began) = read.invoke.and_then(|i| invoked_at.get(&i)) else {
                continue;
            };
            let before = furthest_by.partition_point(|&(at, _, _)| at < began);
            let Some(&(_, pos, token)) = before.checked_sub(1).and_then(|i| furthest_by.get(i))
            else {
                continue;
            };
            let got = read.value.as_ref().map_or(0, Vec::len);
            if got <= pos {
                report.found("stale", || {
                    format!(
                        "event {}: a read of {entity} returned {got} tokens, without {token}, \
                         which was acknowledged before the read began",
                        read.index
                    )
                });
            }
        }
        let mut invoked: Vec<(u64, usize, &str)> = list
            .iter()
            .filter_map(|(token, t)| {
                Some((t.invoked_at, *positions.get(&(entity, *token))?, *token))
            })
            .collect();
        invoked.sort_unstable();
        let mut done = acked.iter().peekable();
        let mut furthest: Option<(usize, &str)> = None;
        for (invoked_at, at, token) in invoked {
            while let Some(&&(acked_at, pos, earlier)) = done.peek() {
                if acked_at >= invoked_at {
                    break;
                }
                if furthest.is_none_or(|(p, _)| pos > p) {
                    furthest = Some((pos, earlier));
                }
                done.next();
            }
            if let Some((pos, earlier)) = furthest
                && at < pos
            {
                report.found("reordered", || {
                    format!(
                        "{earlier} was acknowledged before {token} was invoked, yet {entity} \
                         holds {token} at {at} and {earlier} at {pos}"
                    )
                });
            }
        }
    }
    report
}
