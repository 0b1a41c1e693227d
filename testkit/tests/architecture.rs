//! The invariants ARCHITECTURE.md states as absences, checked by reading the source: no import
//! cycle between modules, doors that never import doors, a verb layer without HTTP, one module
//! that ends runs, and binaries that never reach into one another.

use std::collections::BTreeSet;

use switchyard_testkit::source::{self, Module};

const CRATES: [&str; 5] = ["common", "ingress", "worker", "notifier", "testkit"];

fn module<'a>(modules: &'a [Module], path: &str) -> &'a Module {
    modules
        .iter()
        .find(|m| m.path == path)
        .unwrap_or_else(|| panic!("no module `{path}`"))
}

/// Whether `path` is `of` or inside it.
fn within(path: &str, of: &str) -> bool {
    path == of || path.starts_with(&format!("{of}::"))
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    for krate in CRATES {
        let modules = source::modules(krate);
        assert!(
            modules.len() > 1 || krate == "notifier",
            "{krate} has modules"
        );
        let cycles = source::cycles(&modules);
        assert!(cycles.is_empty(), "import cycles in {krate}: {cycles:?}");
    }
}

#[test]
fn the_cycle_finder_sees_a_cycle_through_crate_and_super_paths() {
    let made = |path: &str, code: &str| Module {
        path: path.into(),
        file: Default::default(),
        code: source::strip_comments(code),
    };
    let modules = vec![
        made("routes", "pub mod a; pub mod b;"),
        made("routes::a", "use super::b::thing;"),
        made(
            "routes::b",
            "use crate::{routes::{a::{self, other}}, render}; // crate::render",
        ),
        made("render", "fn f() { let s = \"crate::routes::b\"; }"),
    ];
    assert_eq!(
        source::references(module(&modules, "routes::b"), &modules),
        BTreeSet::from(["render".to_owned(), "routes::a".to_owned()])
    );
    assert_eq!(
        source::cycles(&modules),
        vec![vec!["routes::a".to_owned(), "routes::b".to_owned()]]
    );
}

/// The ingress's doors: each parses one wire format and renders its answers.
fn doors(modules: &[Module]) -> Vec<String> {
    let mut doors: Vec<String> = modules
        .iter()
        .filter(|m| m.path.matches("::").count() == 1 && m.path.starts_with("routes::"))
        .map(|m| m.path.clone())
        .collect();
    doors.push("console".into());
    doors
}

#[test]
fn doors_never_import_doors() {
    let modules = source::modules("ingress");
    let doors = doors(&modules);
    assert!(doors.len() >= 9, "{doors:?}");
    for door in &doors {
        for m in modules.iter().filter(|m| within(&m.path, door)) {
            for used in source::references(m, &modules) {
                let other = doors.iter().find(|d| *d != door && within(&used, d));
                assert!(
                    other.is_none(),
                    "door module `{}` imports `{used}`, part of another door",
                    m.path
                );
            }
        }
    }
}

#[test]
fn the_verb_layer_names_no_http_type_and_no_door() {
    let modules = source::modules("ingress");
    let verbs: Vec<&Module> = modules
        .iter()
        .filter(|m| within(&m.path, "verbs"))
        .collect();
    assert!(verbs.len() >= 7);
    let http_only = ["routes", "console", "render", "error", "extract", "serve"];
    for m in verbs {
        for word in ["axum", "http::", "StatusCode", "HeaderMap", "IntoResponse"] {
            assert!(!m.code.contains(word), "`{}` names `{word}`", m.path);
        }
        for used in source::references(m, &modules) {
            assert!(
                !http_only.iter().any(|h| within(&used, h)),
                "`{}` imports `{used}`, which is HTTP",
                m.path
            );
        }
    }
}

/// The `runs` statements that move a run out of `queued` or `running`.
const TRANSITIONS: [&str; 9] = [
    "complete",
    "complete_many",
    "fail",
    "end_with_error",
    "cancel_running",
    "release",
    "cancel_queued",
    "expire_overdue",
    "reap_expired",
];

/// The function bodies (roughly: from one `fn ` to the next) of `code` that contain `needle`.
fn functions_with<'a>(code: &'a str, needle: &str) -> Vec<&'a str> {
    let starts: Vec<usize> = code.match_indices("fn ").map(|(i, _)| i).collect();
    let mut out = Vec::new();
    for (n, start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(code.len());
        let body = &code[*start..end];
        if body.contains(needle) {
            out.push(body);
        }
    }
    out
}

#[test]
fn every_run_ending_transition_goes_through_the_lifecycle() {
    let mut checked = 0;
    for krate in ["common", "ingress", "worker", "notifier"] {
        for m in source::modules(krate) {
            if krate == "common" && m.path == "runs" {
                continue;
            }
            for transition in TRANSITIONS {
                for body in functions_with(&m.code, &format!("runs::{transition}(")) {
                    checked += 1;
                    assert!(
                        body.contains("lifecycle::record("),
                        "{krate}::{} calls runs::{transition} without lifecycle::record in the \
                         same function",
                        m.path
                    );
                }
            }
            let lifecycle = krate == "common" && m.path == "lifecycle";
            for made in ["create_for_run(", "create_for_runs("] {
                let named = m.code.contains(&format!("deliveries::{made}"));
                assert!(
                    lifecycle || !named,
                    "{krate}::{} creates a run's deliveries itself; only lifecycle does",
                    m.path
                );
            }
            for next in [
                "next_for_agent(",
                "next_in_session(",
                "next_for_tenants(",
                "next_for_key(",
            ] {
                assert!(
                    lifecycle || !m.code.contains(&format!("runs::{next}")),
                    "{krate}::{} looks for the next run itself; only lifecycle does",
                    m.path
                );
            }
        }
    }
    // The completer, failures, cancels, hand-backs, the reaper, expiry and the ingress's cancel.
    assert!(checked >= 7, "only {checked} transitions found");
}

#[test]
fn binaries_never_reach_into_one_another_and_common_serves_only_ops() {
    for krate in ["common", "ingress", "worker", "notifier"] {
        for m in source::modules(krate) {
            for other in ["ingress", "worker", "notifier"] {
                if other != krate {
                    assert!(
                        !m.code.contains(&format!("switchyard_{other}")),
                        "{krate}::{} names switchyard_{other}",
                        m.path
                    );
                }
            }
        }
    }
    for m in source::modules("common") {
        if m.path != "ops" {
            for word in ["axum::Router", "axum::serve", "TcpListener"] {
                assert!(!m.code.contains(word), "common::{} names `{word}`", m.path);
            }
        }
    }
}
