//! `outputTransform`: the projection a trigger applies to its run's result before returning it.
//! `{"pointer": "/answer"}` picks a value (null when absent); `{"template": "…{{path}}…"}`
//! renders text against the result, within [`crate::template::limit_for`] the result's size.

use serde_json::Value;

use crate::catalog::triggers::OutputTransform;
use crate::template::{self, Template, TooLarge};

/// An `outputTransform`, parsed once (the ingress keeps it per trigger version).
#[derive(Debug, Clone)]
pub enum Transform {
    /// Pick the value at a JSON pointer.
    Pointer(String),
    /// Render text from the result.
    Template(Template),
    /// Neither member: the result as it is.
    Identity,
}

impl Transform {
    /// Parses `transform`; the template was checked when it was written, so an error here means
    /// a row written by an older version, which is shown untransformed.
    pub fn compile(transform: &OutputTransform) -> Self {
        match (&transform.pointer, &transform.template) {
            (Some(pointer), _) => Self::Pointer(pointer.clone()),
            (None, Some(source)) => Template::parse(source).map_or(Self::Identity, Self::Template),
            (None, None) => Self::Identity,
        }
    }

    /// Applies the transform to `result`. A template that would render more than
    /// [`template::limit_for`] the result's size is refused before anything is built.
    pub fn apply(&self, result: &Value) -> Result<Value, TooLarge> {
        match self {
            Self::Pointer(pointer) => Ok(result.pointer(pointer).cloned().unwrap_or(Value::Null)),
            Self::Template(t) => {
                // The result's own size raises the limit: a template may copy it, not multiply it.
                let own = template::json_len_within(result, usize::MAX).unwrap_or(0);
                Ok(Value::String(
                    t.render(result, template::limit_for(own))?.text,
                ))
            }
            Self::Identity => Ok(result.clone()),
        }
    }
}

/// Parses and applies `transform` to `result` in one go (for callers that apply it once).
pub fn apply(transform: &OutputTransform, result: &Value) -> Result<Value, TooLarge> {
    Transform::compile(transform).apply(result)
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
        assert_eq!(apply(&pick, &result), Ok(json!(3)));
        let missing = OutputTransform {
            pointer: Some("/nope".into()),
            template: None,
        };
        assert_eq!(apply(&missing, &result), Ok(Value::Null));
        let text = OutputTransform {
            pointer: None,
            template: Some("It was {{output}} ({{score}})".into()),
        };
        assert_eq!(apply(&text, &result), Ok(json!("It was fine (3)")));
    }

    #[test]
    fn a_template_may_copy_a_large_result_but_not_multiply_it() {
        let result = json!({"output": "x".repeat(300 * 1024)});
        let copy = OutputTransform {
            pointer: None,
            template: Some("{{output}}".into()),
        };
        assert!(apply(&copy, &result).is_ok());
        let many = OutputTransform {
            pointer: None,
            template: Some("{{output}}".repeat(100)),
        };
        assert!(apply(&many, &result).is_err());
    }
}
