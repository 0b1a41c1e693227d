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
    /// The size is counted before anything is allocated: a text longer than `limit` bytes is
    /// refused, and counting stops as soon as it passes the limit (so a template of many
    /// placeholders over a large value costs no more than `limit` to refuse).
    pub fn render(&self, body: &Value, limit: usize) -> Result<Rendered, TooLarge> {
        self.render_with(|path| lookup(body, path), limit)
    }

    /// Renders against a request body, which is also reachable as `result` (Writer's name for
    /// it: `{{result.inputs.user_id}}` reads `inputs.user_id`) unless the body has a `result`
    /// member of its own. Bounded as [`Template::render`].
    pub fn render_request(&self, body: &Value, limit: usize) -> Result<Rendered, TooLarge> {
        self.render_with(
            |path| match path.split_first() {
                Some((first, rest)) if first == "result" && body.get("result").is_none() => {
                    lookup(body, rest)
                }
                _ => lookup(body, path),
            },
            limit,
        )
    }

    fn render_with<'a>(
        &self,
        lookup: impl Fn(&[String]) -> Option<&'a Value>,
        limit: usize,
    ) -> Result<Rendered, TooLarge> {
        // First pass: the size, without building anything.
        let mut size = 0usize;
        for part in &self.parts {
            let room = limit.saturating_sub(size);
            size += match part {
                Part::Text(t) => t.len(),
                Part::Path(path) => match lookup(path) {
                    Some(Value::String(s)) => s.len(),
                    Some(Value::Null) | None => 0,
                    Some(other) => json_len_within(other, room).unwrap_or(room + 1),
                },
            };
            if size > limit {
                return Err(TooLarge { limit });
            }
        }
        let mut text = String::with_capacity(size);
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
        Ok(Rendered { text, missing })
    }
}

/// A render that would pass its limit; nothing was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the rendered text would be larger than {limit} bytes")]
pub struct TooLarge {
    /// The limit it would pass, in bytes.
    pub limit: usize,
}

/// The most a render may produce: 256 KiB, or the size of what it renders from when that is
/// larger (a template may copy its input, never multiply it).
pub const MAX_RENDERED_BYTES: usize = 256 * 1024;

/// The limit of a render from a source of `source_len` bytes; see [`MAX_RENDERED_BYTES`].
pub fn limit_for(source_len: usize) -> usize {
    MAX_RENDERED_BYTES.max(source_len)
}

/// The length of `value` as compact JSON, or `None` once it passes `limit` (counting stops
/// there, so a huge value costs no more than `limit` to measure).
pub fn json_len_within(value: &Value, limit: usize) -> Option<usize> {
    struct Counter {
        count: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.count += buf.len();
            if self.count > self.limit {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { count: 0, limit };
    serde_json::to_writer(&mut counter, value).ok()?;
    Some(counter.count)
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
        let r = t
            .render(
                &json!({"customer": {"name": "Ada"}, "context": {"plan": 3}, "items": [{"sku": "A1"}]}),
                MAX_RENDERED_BYTES,
            )
            .expect("small");
        assert_eq!(r.text, "Hi Ada, plan 3; first A1!");
        assert_eq!(r.missing, vec!["nope.x".to_owned()]);
    }

    #[test]
    fn a_request_body_is_also_result() {
        let t = Template::parse("{{result.inputs.user_id}}/{{inputs.action}}/{{result}}")
            .expect("parses");
        let body = json!({"inputs": {"user_id": "123", "action": "process_order"}});
        let r = t.render_request(&body, MAX_RENDERED_BYTES).expect("small");
        assert_eq!(
            r.text,
            format!("123/process_order/{body}"),
            "`result` is the body itself"
        );
        assert!(r.missing.is_empty());
        let own = json!({"result": {"inputs": {"user_id": "mine"}}, "inputs": {"action": "a"}});
        let mine = t.render_request(&own, MAX_RENDERED_BYTES).expect("small");
        assert_eq!(mine.text.split('/').next(), Some("mine"));
        assert_eq!(
            t.render(&body, MAX_RENDERED_BYTES).expect("small").missing,
            vec!["result.inputs.user_id", "result"]
        );
    }

    #[test]
    fn a_render_past_its_limit_is_refused_before_it_is_built() {
        let many = "{{a}}".repeat(2_000);
        let t = Template::parse(&many).expect("parses");
        let big = json!({"a": "x".repeat(5_000)});
        assert_eq!(
            t.render(&big, MAX_RENDERED_BYTES),
            Err(TooLarge {
                limit: MAX_RENDERED_BYTES
            })
        );
        // Objects are measured without being written out in full.
        let object = json!({"a": {"k": "y".repeat(1 << 20)}});
        assert!(t.render(&object, MAX_RENDERED_BYTES).is_err());
        assert_eq!(json_len_within(&object, 10), None);
        assert_eq!(json_len_within(&json!({"k": 1}), 100), Some(7));
        // Exactly at the limit is fine.
        let one = Template::parse("{{a}}").expect("parses");
        let r = one.render(&json!({"a": "z".repeat(10)}), 10).expect("fits");
        assert_eq!(r.text.len(), 10);
        assert_eq!(limit_for(10), MAX_RENDERED_BYTES);
        assert_eq!(limit_for(1 << 20), 1 << 20);
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
