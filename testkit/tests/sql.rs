//! Every SQL statement the services send (`common`'s, and the few of the ingress, worker and
//! notifier), prepared against the migrated database: a typo, a renamed
//! column or a construct PostgreSQL refuses fails here, in CI, even on a path no other test
//! takes (the delivery sweeper's statement once failed every time it ran, unnoticed).
//!
//! The statements are read from the source: each string literal that opens with a statement
//! keyword, with the `{NAME}` of a `format!` template filled from the module's string constants
//! and `let` bindings. What only the running code fills in is listed in [`FILLED_AT_RUN_TIME`],
//! with every value the code gives it.

use std::collections::{BTreeMap, BTreeSet};

use switchyard_testkit::{TestDb, source};

/// Values of placeholders, taken together: (placeholder, value).
type ValueSet = &'static [(&'static str, &'static str)];

/// The placeholders that the code fills at run time, per module, as sets of values taken
/// together: a statement with open placeholders is prepared once per set that fills them all.
/// `@NAME` is the module's constant `NAME`.
const FILLED_AT_RUN_TIME: &[(&str, &[ValueSet])] = &[
    (
        "common::runs",
        &[
            // `claim_statement`: picked runs whose limited agents' slots are taken, or runs of
            // agents without a limit.
            &[("only", ""), ("holds", "@HOLDS_IF_LIMITED")],
            &[("only", "@ONLY_UNLIMITED"), ("holds", "false")],
        ],
    ),
    // `catalog::list_page`: filled from its callers' arguments by `list_page_callers` below.
    ("common::catalog", &[]),
];

/// Whether `sql` opens with a statement keyword (not a word that merely starts like one, such
/// as `updated_at`).
fn is_statement(sql: &str) -> bool {
    let sql = sql.trim_start();
    ["SELECT", "INSERT", "UPDATE", "DELETE", "WITH"]
        .iter()
        .any(|keyword| {
            sql.len() > keyword.len()
                && sql[..keyword.len()].eq_ignore_ascii_case(keyword)
                && sql[keyword.len()..].starts_with(|c: char| c.is_whitespace() || c == '(')
        })
}

/// The template with `{{`/`}}` unescaped and every `{NAME}` of `bindings` filled; `{}` are
/// numbered `{0}`, `{1}`, … in order. Returns the text and the placeholders still open.
fn fill(template: &str, bindings: &BTreeMap<String, String>) -> (String, BTreeSet<String>) {
    let mut out = String::new();
    let mut open = BTreeSet::new();
    let mut positional = 0;
    let mut rest = template;
    while let Some(at) = rest.find(['{', '}']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if let Some(after) = tail.strip_prefix('}') {
            out.push('}');
            rest = after;
            continue;
        }
        let end = tail.find('}').expect("a closed placeholder");
        let mut name = tail[1..end].to_owned();
        if name.is_empty() {
            name = positional.to_string();
            positional += 1;
        }
        match bindings.get(&name) {
            Some(value) => out.push_str(value),
            None => {
                out.push('{');
                out.push_str(&name);
                out.push('}');
                open.insert(name);
            }
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    (out, open)
}

/// The value sets of `catalog::list_page`, one per caller: the table, its module's columns, the
/// scope, and the numbers of the limit and offset parameters (after the scope's).
fn list_page_callers() -> Vec<BTreeMap<String, String>> {
    let mut sets = Vec::new();
    for m in source::modules("common") {
        let bindings = source::string_bindings(&m.code);
        for args in source::call_arguments(&m.code, "list_page") {
            let value = |n: usize| {
                source::string_value(&args[n], &bindings).unwrap_or_else(|| {
                    panic!("{}: list_page's argument {n} is not a string", m.path)
                })
            };
            let scope = value(3);
            let last = (1..=20)
                .rev()
                .find(|n| scope.contains(&format!("${n}")))
                .unwrap_or(1)
                .max(1);
            sets.push(BTreeMap::from([
                ("table".to_owned(), value(1)),
                ("columns".to_owned(), value(2)),
                ("scope".to_owned(), scope),
                ("0".to_owned(), (last + 1).to_string()),
                ("1".to_owned(), (last + 2).to_string()),
            ]));
        }
    }
    sets
}

/// Every statement of the services, filled in: (crate::module, SQL).
fn statements() -> Vec<(String, String)> {
    let catalog_sets = list_page_callers();
    assert!(
        catalog_sets.len() >= 6,
        "the catalog lists: {catalog_sets:?}"
    );
    let mut used: BTreeSet<(String, usize)> = BTreeSet::new();
    let mut out = Vec::new();
    for krate in ["common", "ingress", "worker", "notifier"] {
        for mut m in source::modules(krate) {
            m.path = format!("{krate}::{}", m.path)
                .trim_end_matches("::")
                .to_owned();
            let bindings = source::string_bindings(&m.code);
            let templates = source::format_templates(&m.code);
            // A constant filled into a template is part of a statement, not one of its own.
            let parts: BTreeSet<&String> = bindings
                .iter()
                .filter(|(name, _)| templates.iter().any(|t| t.contains(&format!("{{{name}}}"))))
                .map(|(_, value)| value)
                .collect();
            let run_time: Vec<BTreeMap<String, String>> = if m.path == "common::catalog" {
                catalog_sets.clone()
            } else {
                FILLED_AT_RUN_TIME
                    .iter()
                    .filter(|(module, _)| *module == m.path)
                    .flat_map(|(_, sets)| sets.iter())
                    .map(|set| {
                        set.iter()
                            .map(|(name, value)| {
                                let value = match value.strip_prefix('@') {
                                    Some(constant) => bindings
                                        .get(constant)
                                        .unwrap_or_else(|| {
                                            panic!("{}: no constant {constant}", m.path)
                                        })
                                        .clone(),
                                    None => (*value).to_owned(),
                                };
                                ((*name).to_owned(), value)
                            })
                            .collect()
                    })
                    .collect()
            };
            for literal in source::string_literals(&m.code) {
                if !is_statement(&literal) || parts.contains(&literal) {
                    continue;
                }
                if !templates.contains(&literal) {
                    out.push((m.path.clone(), literal));
                    continue;
                }
                let (sql, open) = fill(&literal, &bindings);
                if open.is_empty() {
                    out.push((m.path.clone(), sql));
                    continue;
                }
                let mut filled = false;
                for (n, set) in run_time.iter().enumerate() {
                    if open.iter().all(|name| set.contains_key(name)) {
                        let (sql, still) = fill(&sql, set);
                        assert!(still.is_empty(), "{}: {still:?} open in {sql}", m.path);
                        out.push((m.path.clone(), sql));
                        used.insert((m.path.clone(), n));
                        filled = true;
                    }
                }
                assert!(
                    filled,
                    "{}: a statement with placeholders {open:?} that nothing fills; add the values \
                 the code gives them to FILLED_AT_RUN_TIME:\n{literal}",
                    m.path
                );
            }
        }
    }
    for (module, sets) in FILLED_AT_RUN_TIME {
        for n in 0..sets.len() {
            assert!(
                used.contains(&((*module).to_owned(), n)),
                "FILLED_AT_RUN_TIME's set {n} of `{module}` fills no statement any more"
            );
        }
    }
    out
}

#[tokio::test]
async fn every_statement_prepares_against_the_migrated_database() {
    let db = TestDb::create().await.expect("test db");
    let client = db.client().await.expect("client");
    let statements = statements();
    // Sanity: the reader finds the statements (about 130 when this was written).
    assert!(
        statements.len() >= 120,
        "only {} statements found",
        statements.len()
    );
    let mut refused = Vec::new();
    for (module, sql) in &statements {
        if let Err(err) = client.prepare(sql).await {
            let reason = err
                .as_db_error()
                .map_or(err.to_string(), |e| e.message().to_owned());
            refused.push(format!("{module}: {reason}\n    {sql}"));
        }
    }
    assert!(
        refused.is_empty(),
        "{} of {} statements refused:\n{}",
        refused.len(),
        statements.len(),
        refused.join("\n")
    );
}

#[test]
fn statements_are_told_from_words_that_start_like_them() {
    assert!(is_statement("  SELECT 1"));
    assert!(is_statement("WITH(x)"));
    assert!(!is_statement("updated_at = now()"));
    assert!(!is_statement("deleted"));
    let bindings = BTreeMap::from([("T".to_owned(), "runs".to_owned())]);
    let (sql, open) = fill("SELECT '{{}}' FROM {T} LIMIT ${} OFFSET ${} {x}", &bindings);
    assert_eq!(sql, "SELECT '{}' FROM runs LIMIT ${0} OFFSET ${1} {x}");
    assert_eq!(
        open,
        BTreeSet::from(["0".to_owned(), "1".to_owned(), "x".to_owned()])
    );
}
