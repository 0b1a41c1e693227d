//! Trigger filters: a small declarative language over the request body. A filter is a condition
//! (`{"pointer": "/customer/plan", "op": "equals", "value": "pro"}`) or a combination of filters
//! (`{"all": [..]}`, `{"any": [..]}`, `{"not": ..}`). Parsed and checked once, on write.

use regex::Regex;
use serde_json::Value;

/// Deepest nesting of `all`/`any`/`not`.
const MAX_DEPTH: usize = 8;
/// Most conditions in one filter.
const MAX_CONDITIONS: usize = 64;
/// Longest regex source.
const MAX_REGEX_LEN: usize = 512;

/// A compiled filter.
#[derive(Debug, Clone)]
pub enum Filter {
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Condition { pointer: String, test: Test },
}

/// What a condition checks at its pointer.
#[derive(Debug, Clone)]
pub enum Test {
    Equals(Value),
    NotEquals(Value),
    In(Vec<Value>),
    /// `true`: the pointer resolves; `false`: it does not.
    Exists(bool),
    Matches(Regex),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
}

impl Filter {
    /// Parses and checks a filter; the error says where it is wrong.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let mut count = 0;
        parse_at(value, "filters", 0, &mut count)
    }

    /// Whether `body` passes the filter.
    pub fn matches(&self, body: &Value) -> bool {
        match self {
            Self::All(items) => items.iter().all(|f| f.matches(body)),
            Self::Any(items) => items.iter().any(|f| f.matches(body)),
            Self::Not(inner) => !inner.matches(body),
            Self::Condition { pointer, test } => test.check(body.pointer(pointer)),
        }
    }
}

impl Test {
    fn check(&self, found: Option<&Value>) -> bool {
        match (self, found) {
            (Self::Exists(want), found) => found.is_some() == *want,
            (Self::NotEquals(v), found) => found != Some(v),
            (_, None) => false,
            (Self::Equals(v), Some(found)) => found == v,
            (Self::In(options), Some(found)) => options.contains(found),
            (Self::Matches(re), Some(Value::String(s))) => re.is_match(s),
            (Self::Matches(_), Some(_)) => false,
            (Self::Gt(n), Some(found)) => found.as_f64().is_some_and(|f| f > *n),
            (Self::Gte(n), Some(found)) => found.as_f64().is_some_and(|f| f >= *n),
            (Self::Lt(n), Some(found)) => found.as_f64().is_some_and(|f| f < *n),
            (Self::Lte(n), Some(found)) => found.as_f64().is_some_and(|f| f <= *n),
        }
    }
}

fn parse_at(value: &Value, at: &str, depth: usize, count: &mut usize) -> Result<Filter, String> {
    if depth > MAX_DEPTH {
        return Err(format!("`{at}` nests deeper than {MAX_DEPTH} levels"));
    }
    let Value::Object(map) = value else {
        return Err(format!("`{at}` must be an object"));
    };
    if map.len() == 1 && map.contains_key("all") {
        return parse_list(map, at, "all", depth, count).map(Filter::All);
    }
    if map.len() == 1 && map.contains_key("any") {
        return parse_list(map, at, "any", depth, count).map(Filter::Any);
    }
    if map.len() == 1
        && let Some(inner) = map.get("not")
    {
        return parse_at(inner, &format!("{at}.not"), depth + 1, count)
            .map(|f| Filter::Not(Box::new(f)));
    }
    *count += 1;
    if *count > MAX_CONDITIONS {
        return Err(format!(
            "a filter may hold at most {MAX_CONDITIONS} conditions"
        ));
    }
    for key in map.keys() {
        if !matches!(key.as_str(), "pointer" | "op" | "value") {
            return Err(format!(
                "`{at}` has an unknown member `{key}`; a filter is {{all|any|not}} or {{pointer, op, value}}"
            ));
        }
    }
    let pointer = match map.get("pointer") {
        Some(Value::String(p)) if p.is_empty() || p.starts_with('/') => p.clone(),
        _ => {
            return Err(format!(
                "`{at}.pointer` must be a JSON pointer such as \"/customer/plan\""
            ));
        }
    };
    let op = map
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{at}.op` must be a string"))?;
    let value = map.get("value");
    let need = || {
        value
            .cloned()
            .ok_or_else(|| format!("`{at}.value` is required for `{op}`"))
    };
    let number = || {
        value
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("`{at}.value` must be a number for `{op}`"))
    };
    let test = match op {
        "equals" => Test::Equals(need()?),
        "not_equals" => Test::NotEquals(need()?),
        "in" => match need()? {
            Value::Array(options) => Test::In(options),
            _ => return Err(format!("`{at}.value` must be an array for `in`")),
        },
        "exists" => match value {
            None => Test::Exists(true),
            Some(Value::Bool(b)) => Test::Exists(*b),
            Some(_) => return Err(format!("`{at}.value` must be true or false for `exists`")),
        },
        "matches" => {
            let source = value
                .and_then(Value::as_str)
                .ok_or_else(|| format!("`{at}.value` must be a regex string for `matches`"))?;
            if source.len() > MAX_REGEX_LEN {
                return Err(format!(
                    "`{at}.value` is longer than {MAX_REGEX_LEN} characters"
                ));
            }
            let re = regex::RegexBuilder::new(source)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("`{at}.value` is not a valid regex: {e}"))?;
            Test::Matches(re)
        }
        "gt" => Test::Gt(number()?),
        "gte" => Test::Gte(number()?),
        "lt" => Test::Lt(number()?),
        "lte" => Test::Lte(number()?),
        other => {
            return Err(format!(
                "`{at}.op` `{other}` is not one of equals, not_equals, in, exists, matches, gt, gte, lt, lte"
            ));
        }
    };
    Ok(Filter::Condition { pointer, test })
}

fn parse_list(
    map: &serde_json::Map<String, Value>,
    at: &str,
    key: &str,
    depth: usize,
    count: &mut usize,
) -> Result<Vec<Filter>, String> {
    let Some(Value::Array(items)) = map.get(key) else {
        return Err(format!("`{at}.{key}` must be an array of filters"));
    };
    if items.is_empty() {
        return Err(format!("`{at}.{key}` must not be empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_at(item, &format!("{at}.{key}[{i}]"), depth + 1, count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(filter: Value, body: Value) -> bool {
        Filter::parse(&filter).expect("valid filter").matches(&body)
    }

    #[test]
    fn conditions_test_the_value_at_their_pointer() {
        let body =
            json!({"customer": {"plan": "pro", "seats": 12}, "tags": ["a"], "event": "push"});
        assert!(check(
            json!({"pointer": "/customer/plan", "op": "equals", "value": "pro"}),
            body.clone()
        ));
        assert!(!check(
            json!({"pointer": "/customer/plan", "op": "equals", "value": "free"}),
            body.clone()
        ));
        assert!(check(
            json!({"pointer": "/customer/plan", "op": "not_equals", "value": "free"}),
            body.clone()
        ));
        assert!(check(
            json!({"pointer": "/missing", "op": "not_equals", "value": "free"}),
            body.clone()
        ));
        assert!(check(
            json!({"pointer": "/event", "op": "in", "value": ["push", "pr"]}),
            body.clone()
        ));
        assert!(check(
            json!({"pointer": "/tags/0", "op": "exists"}),
            body.clone()
        ));
        assert!(check(
            json!({"pointer": "/nope", "op": "exists", "value": false}),
            body.clone()
        ));
        assert!(check(
            json!({"pointer": "/event", "op": "matches", "value": "^pu"}),
            body.clone()
        ));
        assert!(!check(
            json!({"pointer": "/customer/seats", "op": "matches", "value": "1"}),
            body.clone()
        ));
        assert!(check(
            json!({"pointer": "/customer/seats", "op": "gt", "value": 10}),
            body.clone()
        ));
        assert!(check(
            json!({"pointer": "/customer/seats", "op": "lte", "value": 12}),
            body.clone()
        ));
        assert!(!check(
            json!({"pointer": "/customer/plan", "op": "lt", "value": 5}),
            body
        ));
    }

    #[test]
    fn combinators_nest() {
        let filter = json!({"all": [
            {"pointer": "/a", "op": "equals", "value": 1},
            {"any": [{"pointer": "/b", "op": "exists"}, {"not": {"pointer": "/c", "op": "equals", "value": true}}]}
        ]});
        assert!(check(filter.clone(), json!({"a": 1, "b": 0})));
        assert!(check(filter.clone(), json!({"a": 1, "c": false})));
        assert!(!check(filter.clone(), json!({"a": 1, "c": true})));
        assert!(!check(filter, json!({"a": 2, "b": 0})));
    }

    #[test]
    fn bad_filters_say_where_they_are_wrong() {
        for (bad, says) in [
            (json!([]), "`filters` must be an object"),
            (json!({"all": []}), "must not be empty"),
            (
                json!({"pointer": "a", "op": "equals", "value": 1}),
                "JSON pointer",
            ),
            (
                json!({"pointer": "/a", "op": "like", "value": 1}),
                "is not one of",
            ),
            (
                json!({"pointer": "/a", "op": "gt", "value": "x"}),
                "must be a number",
            ),
            (
                json!({"pointer": "/a", "op": "matches", "value": "("}),
                "not a valid regex",
            ),
            (
                json!({"all": [{"pointer": "/a", "op": "in", "value": 1}]}),
                "filters.all[0].value",
            ),
            (json!({"pointer": "/a", "op": "equals"}), "is required"),
            (
                json!({"pointer": "/a", "op": "equals", "value": 1, "extra": 2}),
                "unknown member",
            ),
        ] {
            let err = Filter::parse(&bad).expect_err("invalid");
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let mut deep = json!({"pointer": "/a", "op": "exists"});
        for _ in 0..12 {
            deep = json!({"not": deep});
        }
        assert!(Filter::parse(&deep).is_err());
        let many: Vec<Value> = (0..100)
            .map(|_| json!({"pointer": "/a", "op": "exists"}))
            .collect();
        assert!(Filter::parse(&json!({"any": many})).is_err());
    }
}
