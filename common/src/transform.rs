//! `outputTransform`: the projection a trigger applies to its run's result before returning it.
//! `{"pointer": "/answer"}` picks a value (null when absent); `{"template": "…{{path}}…"}`
//! renders text against the result.

use serde_json::Value;

use crate::catalog::triggers::OutputTransform;
use crate::template::Template;

/// Applies `transform` to `result`. Never fails: the template was checked when it was written.
pub fn apply(transform: &OutputTransform, result: &Value) -> Value {
    match (&transform.pointer, &transform.template) {
        (Some(pointer), _) => result.pointer(pointer).cloned().unwrap_or(Value::Null),
        (None, Some(template)) => match Template::parse(template) {
            Ok(t) => Value::String(t.render(result).text),
            Err(_) => result.clone(),
        },
        (None, None) => result.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_pick_and_templates_render() {
        let result = json!({"output": "fine", "score": 3});
        let pick = OutputTransform {
            pointer: Some("/score".into()),
            template: None,
        };
        assert_eq!(apply(&pick, &result), json!(3));
        let missing = OutputTransform {
            pointer: Some("/nope".into()),
            template: None,
        };
        assert_eq!(apply(&missing, &result), Value::Null);
        let text = OutputTransform {
            pointer: None,
            template: Some("It was {{output}} ({{score}})".into()),
        };
        assert_eq!(apply(&text, &result), json!("It was fine (3)"));
    }
}
