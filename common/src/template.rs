//! `messageTemplate`: text with `{{placeholder}}`s, each a dotted path into the request body
//! (`{{customer.name}}`, `{{items.0.sku}}`). Parsed once on write; rendering never fails.

use serde_json::Value;

/// A parsed template: literal text and paths, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Path(Vec<String>),
}

/// What rendering produced: the text, and the placeholders that found nothing (rendered empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub missing: Vec<String>,
}

impl Template {
    /// Parses `source`; an unclosed `{{` or a malformed path is an error.
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!(
                    "`{{{{` at byte {} is never closed",
                    source.len() - rest.len() + open
                )
            })?;
            let path = after[..close].trim();
            let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
            let valid = !path.is_empty()
                && segments.iter().all(|s| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
                });
            if !valid {
                return Err(format!(
                    "`{{{{{path}}}}}` is not a placeholder; use dotted names such as {{{{customer.name}}}}"
                ));
            }
            parts.push(Part::Path(segments));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Renders against `body`: strings as they are, other values as JSON, missing ones empty.
    pub fn render(&self, body: &Value) -> Rendered {
        self.render_with(|path| lookup(body, path))
    }

    /// Renders against a request body, which is also reachable as `result` (Writer's name for
    /// it: `{{result.inputs.user_id}}` reads `inputs.user_id`) unless the body has a `result`
    /// member of its own.
    pub fn render_request(&self, body: &Value) -> Rendered {
        self.render_with(|path| match path.split_first() {
            Some((first, rest)) if first == "result" && body.get("result").is_none() => {
                lookup(body, rest)
            }
            _ => lookup(body, path),
        })
    }

    fn render_with<'a>(&self, lookup: impl Fn(&[String]) -> Option<&'a Value>) -> Rendered {
        let mut text = String::new();
        let mut missing = Vec::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Path(path) => match lookup(path) {
                    Some(Value::String(s)) => text.push_str(s),
                    Some(Value::Null) | None => missing.push(path.join(".")),
                    Some(other) => text.push_str(&other.to_string()),
                },
            }
        }
        Rendered { text, missing }
    }
}

fn lookup<'a>(body: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(body, |node, segment| match node {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_dotted_paths_and_lists_the_missing() {
        let t = Template::parse(
            "Hi {{customer.name}}, plan {{ context.plan }}; first {{items.0.sku}}{{nope.x}}!",
        )
        .expect("parses");
        let r = t.render(
            &json!({"customer": {"name": "Ada"}, "context": {"plan": 3}, "items": [{"sku": "A1"}]}),
        );
        assert_eq!(r.text, "Hi Ada, plan 3; first A1!");
        assert_eq!(r.missing, vec!["nope.x".to_owned()]);
    }

    #[test]
    fn a_request_body_is_also_result() {
        let t = Template::parse("{{result.inputs.user_id}}/{{inputs.action}}/{{result}}")
            .expect("parses");
        let body = json!({"inputs": {"user_id": "123", "action": "process_order"}});
        let r = t.render_request(&body);
        assert_eq!(
            r.text,
            format!("123/process_order/{body}"),
            "`result` is the body itself"
        );
        assert!(r.missing.is_empty());
        let own = json!({"result": {"inputs": {"user_id": "mine"}}, "inputs": {"action": "a"}});
        assert_eq!(t.render_request(&own).text.split('/').next(), Some("mine"));
        assert_eq!(
            t.render(&body).missing,
            vec!["result.inputs.user_id", "result"]
        );
    }

    #[test]
    fn malformed_placeholders_are_refused() {
        assert!(Template::parse("open {{name").is_err());
        assert!(Template::parse("empty {{}}").is_err());
        assert!(Template::parse("bad {{a..b}}").is_err());
        assert!(Template::parse("bad {{a b}}").is_err());
        assert!(Template::parse("no placeholders } { at all").is_ok());
    }
}
