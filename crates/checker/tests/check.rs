//! The checker passes histories that keep the contract and finds each kind of violation:
//! valid histories come from a model of a correct system, and each mutation of one must be
//! reported under its rule (a checker that cannot fail proves nothing).

use std::collections::BTreeMap;

use perennial_checker::{
    Event, Invocation, Op, Recorder, Report, Type, check, from_jsonl, to_jsonl,
};
use proptest::prelude::*;

/// One step of a model run: which client does what, and how the call ends.
#[derive(Debug, Clone)]
struct Step {
    client: u64,
    op: Op,
    entity: usize,
    target: usize,
    /// 0: ok; 1: info, applied; 2: info, not applied; 3: fail; 4: info then retried ok.
    outcome: u8,
}

fn step() -> impl Strategy<Value = Step> {
    (0u64..4, 0u8..12, 0usize..3, 1usize..3, 0u8..5).prop_map(
        |(client, op, entity, other, outcome)| {
            // A forward or an ask goes to another probe: to itself, its token would be there
            // twice.
            let target = (entity + other) % 3;
            let op = match op {
                0..=5 => Op::Append,
                6 | 7 => Op::Forward,
                8 => Op::Schedule,
                9 => Op::Effect,
                10 => Op::Ask,
                _ => Op::Read,
            };
            Step {
                client,
                op,
                entity,
                target,
                outcome,
            }
        },
    )
}

fn probe(n: usize) -> String {
    format!("p{n}")
}

/// Runs `steps` one at a time against a correct model of three probes, recording the history;
/// returns it with the final lists. Timers (of 0 ms), effects and messages arrive at once.
fn run(steps: &[Step]) -> (Vec<Event>, BTreeMap<String, Vec<String>>) {
    let history = Recorder::new();
    let mut lists: Vec<Vec<String>> = vec![Vec::new(); 3];
    for (n, s) in steps.iter().enumerate() {
        let token = (s.op != Op::Read).then(|| format!("t{n}"));
        let call = || Invocation {
            process: s.client,
            f: s.op,
            entity: probe(s.entity),
            token: token.clone(),
            to: matches!(s.op, Op::Forward | Op::Ask).then(|| probe(s.target)),
            ms: (s.op == Op::Schedule).then_some(0),
            key: token.clone(),
        };
        let apply = |lists: &mut Vec<Vec<String>>| -> Vec<String> {
            match (&token, s.op) {
                // The target appends the token, then the asker its answer.
                (Some(t), Op::Ask) => {
                    lists[s.target].push(t.clone());
                    lists[s.entity].push(format!("{t}!"));
                }
                (Some(t), _) => {
                    lists[s.entity].push(t.clone());
                    if s.op == Op::Forward {
                        lists[s.target].push(t.clone());
                    }
                }
                (None, _) => {}
            }
            lists[s.entity].clone()
        };
        let first = history.invoke(call());
        match (s.outcome, s.op) {
            // A timer's, effect's or ask's token arrives later: its reply is the list before it.
            (0, Op::Schedule | Op::Effect | Op::Ask) => {
                let before = lists[s.entity].clone();
                apply(&mut lists);
                history.complete(first, Type::Ok, Some(before));
            }
            (0, _) => {
                let list = apply(&mut lists);
                history.complete(first, Type::Ok, Some(list));
            }
            (1, _) => {
                apply(&mut lists);
                history.complete(first, Type::Info, None);
            }
            (2, _) => history.complete(first, Type::Info, None),
            (3, _) => history.complete(first, Type::Fail, None),
            (_, op) => {
                // Applied, the answer lost, then retried with the same key: the first reply.
                let before = lists[s.entity].clone();
                let list = apply(&mut lists);
                history.complete(first, Type::Info, None);
                let again = history.invoke(call());
                let later = matches!(op, Op::Schedule | Op::Effect | Op::Ask);
                let reply = if later { before } else { list };
                history.complete(again, Type::Ok, Some(reply));
            }
        }
    }
    let finals = lists
        .into_iter()
        .enumerate()
        .map(|(n, l)| (probe(n), l))
        .collect();
    (history.events(), finals)
}

fn acked_appends(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.kind == Type::Ok && matches!(e.f, Op::Append | Op::Forward))
        .filter_map(|e| Some((e.entity.clone(), e.token.clone()?)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_correct_system_passes(steps in prop::collection::vec(step(), 1..60)) {
        let (events, finals) = run(&steps);
        let report = check(&events, &finals);
        prop_assert!(report.is_valid(), "{report}");
        // And the history survives JSONL.
        let again = from_jsonl(&to_jsonl(&events)).unwrap();
        prop_assert_eq!(&again, &events);
    }

    #[test]
    fn a_lost_acknowledged_append_is_found(steps in prop::collection::vec(step(), 1..60), pick in any::<prop::sample::Index>()) {
        let (events, mut finals) = run(&steps);
        let acked = acked_appends(&events);
        prop_assume!(!acked.is_empty());
        let (entity, token) = pick.get(&acked).clone();
        finals.get_mut(&entity).unwrap().retain(|t| *t != token);
        prop_assert!(check(&events, &finals).lost >= 1);
    }

    #[test]
    fn an_append_applied_twice_is_found(steps in prop::collection::vec(step(), 1..60), pick in any::<prop::sample::Index>()) {
        let (events, mut finals) = run(&steps);
        let acked = acked_appends(&events);
        prop_assume!(!acked.is_empty());
        let (entity, token) = pick.get(&acked).clone();
        finals.get_mut(&entity).unwrap().push(token);
        prop_assert!(check(&events, &finals).duplicated >= 1);
    }

    #[test]
    fn appends_out_of_real_time_order_are_found(steps in prop::collection::vec(step(), 1..60), pick in any::<prop::sample::Index>()) {
        let (events, mut finals) = run(&steps);
        // In the model, each call ends before the next begins: two acknowledged appends to
        // one probe, swapped in its final list, break real-time order.
        let acked = acked_appends(&events);
        let pairs: Vec<(String, String, String)> = acked
            .iter()
            .enumerate()
            .flat_map(|(i, (e, a))| acked[i + 1..].iter().filter(move |(f, _)| f == e).map(move |(_, b)| (e.clone(), a.clone(), b.clone())))
            .collect();
        prop_assume!(!pairs.is_empty());
        let (entity, a, b) = pick.get(&pairs).clone();
        let list = finals.get_mut(&entity).unwrap();
        let (i, j) = (list.iter().position(|t| *t == a).unwrap(), list.iter().position(|t| *t == b).unwrap());
        list.swap(i, j);
        prop_assert!(check(&events, &finals).reordered >= 1);
    }

    #[test]
    fn a_second_timeline_is_found(steps in prop::collection::vec(step(), 1..60), pick in any::<prop::sample::Index>()) {
        let (mut events, finals) = run(&steps);
        let oks: Vec<usize> = (0..events.len())
            .filter(|&i| events[i].kind == Type::Ok && events[i].value.as_ref().is_some_and(|v| !v.is_empty()))
            .collect();
        prop_assume!(!oks.is_empty());
        // A reply from a node that applied the call to a state of its own.
        let i = *pick.get(&oks);
        events[i].value.as_mut().unwrap().insert(0, "from-another-timeline".into());
        prop_assert!(check(&events, &finals).divergent >= 1);
    }

    #[test]
    fn a_stale_read_is_found(steps in prop::collection::vec(step(), 1..60), pick in any::<prop::sample::Index>()) {
        let (mut events, finals) = run(&steps);
        // In the model, each call ends before the next begins: a read that misses the latest
        // append acknowledged on its probe before it (a reply from an old state) is stale.
        let stale: Vec<(usize, usize)> = (0..events.len())
            .filter(|&i| events[i].kind == Type::Ok && events[i].f == Op::Read)
            .filter_map(|i| {
                let entity = &events[i].entity;
                let list = events[i].value.as_ref()?;
                let before = acked_appends(&events[..i]);
                let at = before
                    .iter()
                    .filter(|(e, _)| e == entity)
                    .filter_map(|(_, t)| list.iter().position(|x| x == t))
                    .max()?;
                Some((i, at))
            })
            .collect();
        prop_assume!(!stale.is_empty());
        let (i, at) = *pick.get(&stale);
        events[i].value.as_mut().unwrap().truncate(at);
        let report = check(&events, &finals);
        prop_assert!(report.stale >= 1, "{report}");
        prop_assert!(report.reads >= 1);
    }
}

fn invocation(process: u64, f: Op, entity: &str, token: &str) -> Invocation {
    Invocation {
        process,
        f,
        entity: entity.into(),
        token: Some(token.into()),
        to: None,
        ms: None,
        key: Some(token.into()),
    }
}

fn list(tokens: &[&str]) -> Vec<String> {
    tokens.iter().map(|t| (*t).to_owned()).collect()
}

fn finals(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    entries
        .iter()
        .map(|(e, l)| ((*e).to_owned(), list(l)))
        .collect()
}

#[test]
fn an_ask_applied_or_answered_other_than_once_is_found() {
    let h = Recorder::new();
    let mut ask = invocation(1, Op::Ask, "p", "a");
    ask.to = Some("q".into());
    let a = h.invoke(ask);
    h.complete(a, Type::Ok, Some(list(&[])));
    let events = h.events();
    assert!(check(&events, &finals(&[("p", &["a!"]), ("q", &["a"])])).is_valid());
    for (p, q) in [
        (&[][..], &["a"][..]),
        (&["a!", "a!"][..], &["a"][..]),
        (&["a!"][..], &[][..]),
    ] {
        let report = check(&events, &finals(&[("p", p), ("q", q)]));
        assert!(report.not_exactly_once >= 1, "{p:?} {q:?}: {report}");
    }
}

#[test]
fn real_time_order_is_checked() {
    // a is acknowledged before b is invoked; the probe holds b before a.
    let h = Recorder::new();
    let a = h.invoke(invocation(1, Op::Append, "p", "a"));
    h.complete(a, Type::Ok, Some(list(&["b", "a"])));
    let b = h.invoke(invocation(2, Op::Append, "p", "b"));
    h.complete(b, Type::Info, None);
    let report = check(&h.events(), &finals(&[("p", &["b", "a"])]));
    assert_eq!(report.reordered, 1, "{report}");
    // Concurrent calls may land in either order.
    let h = Recorder::new();
    let a = h.invoke(invocation(1, Op::Append, "p", "a"));
    let b = h.invoke(invocation(2, Op::Append, "p", "b"));
    h.complete(b, Type::Ok, Some(list(&["b"])));
    h.complete(a, Type::Ok, Some(list(&["b", "a"])));
    assert!(check(&h.events(), &finals(&[("p", &["b", "a"])])).is_valid());
}

#[test]
fn refusals_replies_and_exactly_once_are_checked() {
    // A refused token applied anyway.
    let h = Recorder::new();
    let a = h.invoke(invocation(1, Op::Append, "p", "a"));
    h.complete(a, Type::Fail, None);
    let r: Report = check(&h.events(), &finals(&[("p", &["a"])]));
    assert_eq!(r.applied_after_refusal, 1, "{r}");

    // Two acknowledgements under one key with different lists.
    let h = Recorder::new();
    let a = h.invoke(invocation(1, Op::Append, "p", "a"));
    h.complete(a, Type::Ok, Some(list(&["a"])));
    let again = h.invoke(invocation(1, Op::Append, "p", "a"));
    h.complete(again, Type::Ok, Some(list(&["a", "a"])));
    let r = check(&h.events(), &finals(&[("p", &["a"])]));
    assert_eq!(r.inconsistent_replies, 1, "{r}");

    // A reply that does not end with its own token.
    let h = Recorder::new();
    let a = h.invoke(invocation(1, Op::Append, "p", "a"));
    h.complete(a, Type::Ok, Some(list(&[])));
    assert_eq!(check(&h.events(), &finals(&[("p", &["a"])])).misplaced, 1);

    // A forward delivered twice, a timer never fired, an effect's result applied twice.
    let h = Recorder::new();
    let mut forward = invocation(1, Op::Forward, "p", "f");
    forward.to = Some("q".into());
    let f = h.invoke(forward);
    h.complete(f, Type::Ok, Some(list(&["f"])));
    let s = h.invoke(invocation(1, Op::Schedule, "p", "s"));
    h.complete(s, Type::Ok, Some(list(&["f"])));
    let e = h.invoke(invocation(1, Op::Effect, "p", "e"));
    h.complete(e, Type::Ok, Some(list(&["f"])));
    let r = check(
        &h.events(),
        &finals(&[("p", &["f", "e", "e"]), ("q", &["f", "f"])]),
    );
    assert_eq!(r.not_exactly_once, 3, "{r}");
    assert!(!r.is_valid());
    // The first example of the rule, in token order.
    assert!(r.to_string().contains("effect token e"), "{r}");
}

#[test]
fn a_timer_fired_early_is_found() {
    // A timer of 10 s whose token a read shows at once.
    let h = Recorder::new();
    let mut timer = invocation(1, Op::Schedule, "p", "s");
    timer.ms = Some(10_000);
    let s = h.invoke(timer);
    h.complete(s, Type::Ok, Some(list(&[])));
    let mut read = invocation(2, Op::Read, "p", "r");
    read.token = None;
    let r = h.invoke(read);
    h.complete(r, Type::Ok, Some(list(&["s"])));
    let report = check(&h.events(), &finals(&[("p", &["s"])]));
    assert_eq!(report.early, 1, "{report}");
    // On time, it is not.
    let h = Recorder::new();
    let mut timer = invocation(1, Op::Schedule, "p", "s");
    timer.ms = Some(1);
    let s = h.invoke(timer);
    h.complete(s, Type::Ok, Some(list(&[])));
    std::thread::sleep(std::time::Duration::from_millis(5));
    let mut read = invocation(2, Op::Read, "p", "r");
    read.token = None;
    let r = h.invoke(read);
    h.complete(r, Type::Ok, Some(list(&["s"])));
    assert!(check(&h.events(), &finals(&[("p", &["s"])])).is_valid());
}

#[test]
fn a_read_older_than_an_acknowledged_append_is_stale() {
    let read = |h: &Recorder| {
        let mut call = invocation(2, Op::Read, "p", "r");
        call.token = None;
        call.key = None;
        h.invoke(call)
    };
    // a is acknowledged; a read invoked after that returns the list without it.
    let h = Recorder::new();
    let a = h.invoke(invocation(1, Op::Append, "p", "a"));
    h.complete(a, Type::Ok, Some(list(&["a"])));
    let r = read(&h);
    h.complete(r, Type::Ok, Some(list(&[])));
    let report = check(&h.events(), &finals(&[("p", &["a"])]));
    assert_eq!((report.stale, report.reads), (1, 1), "{report}");
    assert!(
        report.to_string().contains("stale 1 (of 1 reads)"),
        "{report}"
    );
    // A read that began before a was acknowledged may miss it.
    let h = Recorder::new();
    let a = h.invoke(invocation(1, Op::Append, "p", "a"));
    let r = read(&h);
    h.complete(a, Type::Ok, Some(list(&["a"])));
    h.complete(r, Type::Ok, Some(list(&[])));
    assert!(check(&h.events(), &finals(&[("p", &["a"])])).is_valid());
    // A read whose outcome is unknown says nothing.
    let h = Recorder::new();
    let a = h.invoke(invocation(1, Op::Append, "p", "a"));
    h.complete(a, Type::Ok, Some(list(&["a"])));
    let r = read(&h);
    h.complete(r, Type::Info, None);
    assert!(check(&h.events(), &finals(&[("p", &["a"])])).is_valid());
}
