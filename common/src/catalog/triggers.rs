//! Triggers: the front doors of an agent. Every Inkeep field plus ChatHive's `key`, `filters`,
//! `ignoreDuplicates` and `waitForResponse`. Everything is checked on write, so the invocation
//! pipeline can trust what it reads: the schema compiles, the filters parse, the template parses.

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;

use super::agents::check_url;
use super::{
    Error, Page, Paginated, check_description, check_name, constraint, id_or_new, merge_top_level,
    same_or_absent,
};
use crate::filters::Filter;
use crate::template::Template;

/// Longest `messageTemplate`, in bytes.
const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Longest `outputTransform.pointer`, in bytes.
const MAX_POINTER_BYTES: usize = 2048;
/// Largest serialised `inputSchema`, in bytes.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// Inkeep's signature verification DSL: where the signature is, what was signed, and how.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignatureVerification {
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    pub signature: SignatureLocation,
    #[serde(default)]
    pub signed_components: Vec<SignedComponent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component_join: Option<ComponentJoin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<SignatureValidation>,
    /// Switchyard's extension: how the secret becomes the HMAC key. `utf8` (the default: GitHub,
    /// Stripe, Slack) uses its text; `base64` decodes it after an optional `whsec_` prefix
    /// (Standard Webhooks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_encoding: Option<SecretEncoding>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SecretEncoding {
    Utf8,
    Base64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    Sha256,
    Sha512,
    Sha1,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignatureSource {
    Header,
    Query,
    Body,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ComponentSource {
    Header,
    Query,
    Body,
    Literal,
}

/// Where the signature is read from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignatureLocation {
    pub source: SignatureSource,
    /// The header or query parameter name (or a JSON pointer into the body).
    pub key: String,
    /// Stripped from the front of the value, e.g. `sha256=`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Its first capture group is the signature, e.g. `v1=([a-f0-9]+)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// One piece of the signed message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedComponent {
    pub source: ComponentSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The text itself, for a `literal` component.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default = "yes")]
    pub required: bool,
    /// Switchyard's extension: this component is a Unix timestamp (seconds), and a request whose
    /// timestamp is further from now than `validation.toleranceSeconds` is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timestamp: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JoinStrategy {
    Concatenate,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentJoin {
    pub strategy: JoinStrategy,
    pub separator: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignatureValidation {
    /// Whether a webhook with an empty body is checked at all (default true, as in Inkeep); when
    /// false it is refused before its signature is.
    #[serde(default = "yes")]
    pub allow_empty_body: bool,
    #[serde(default)]
    pub header_case_sensitive: bool,
    #[serde(default)]
    pub normalize_unicode: bool,
    /// How far a `timestamp` component may be from now, in seconds (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerance_seconds: Option<u32>,
}

impl Default for SignatureValidation {
    fn default() -> Self {
        Self {
            allow_empty_body: true,
            header_case_sensitive: false,
            normalize_unicode: false,
            tolerance_seconds: None,
        }
    }
}

/// Static header authentication for callers that cannot send an API key: each named header must
/// carry its value. Values are kept only as SHA-256 digests and are never shown again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authentication {
    pub headers: Vec<HeaderCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderCheck {
    pub name: String,
    /// Write-only: the expected value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The stored digest (hex SHA-256) of the value; never returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub value_sha256: Option<String>,
}

/// What `outputTransform` applies to a run's result: pick a JSON pointer, or render a template.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputTransform {
    /// e.g. `/answer`: the result becomes the value at that pointer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// e.g. `Summary: {{answer}}`: the result becomes the rendered text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// A trigger as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    pub id: String,
    pub project_id: String,
    pub agent_id: String,
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    /// The invocation key: `POST /api/v1.0/project/{projectId}/trigger/{key}` (any case).
    pub key: String,
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<Value>,
    pub message_template: Option<String>,
    pub output_transform: Option<OutputTransform>,
    #[schema(value_type = Option<Object>)]
    pub filters: Option<Value>,
    /// Header names only; the values are write-only.
    pub authentication: Option<Authentication>,
    pub signature_verification: Option<SignatureVerification>,
    pub signing_secret_credential_reference_id: Option<String>,
    pub webhook_url: Option<String>,
    pub ignore_duplicates: bool,
    pub wait_for_response: bool,
    pub wait_timeout_seconds: i32,
    /// Invocations per minute across every caller; `null` for none beyond the keys' own limits.
    pub rate_limit_per_minute: Option<i32>,
    /// The priority (0 to 100) of the runs it starts; `null` for its agent's.
    pub priority: Option<i32>,
    /// Calls with the same key within a period become one run.
    pub debounce: Option<Debounce>,
    /// Bumped by every update.
    pub version: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// `authentication` as stored: the header names with the SHA-256 digests of their values,
    /// for checking inbound webhooks. Never shown.
    #[serde(skip)]
    #[schema(ignore)]
    pub stored_authentication: Option<Value>,
    /// The tenant's ceiling on invocations a minute, loaded with the trigger by [`find`] and
    /// [`resolve`] (for inbound webhooks, which carry no key to bring it). Never shown.
    #[serde(skip)]
    #[schema(ignore)]
    pub tenant_rate_limit_per_minute: Option<i32>,
}

/// The writable members of a trigger: the body of a create, and what a PATCH merges into.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerSpec {
    #[schema(pattern = r"^[a-zA-Z0-9\-_.]+$", min_length = 1, max_length = 255)]
    pub id: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// Default true.
    pub enabled: Option<bool>,
    /// `[a-zA-Z0-9_-]`, unique per project whatever its case. Defaults to the id.
    #[schema(pattern = r"^[a-zA-Z0-9_-]+$", min_length = 1, max_length = 255)]
    pub key: Option<String>,
    /// JSON Schema for input validation (a JSON object or boolean, or a string holding one).
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<Value>,
    /// Message template with `{{placeholder}}` syntax.
    #[schema(min_length = 1)]
    pub message_template: Option<String>,
    pub output_transform: Option<OutputTransform>,
    /// See the README's filter language.
    #[schema(value_type = Option<Object>)]
    pub filters: Option<Value>,
    pub authentication: Option<Authentication>,
    pub signature_verification: Option<SignatureVerification>,
    pub signing_secret_credential_reference_id: Option<String>,
    pub webhook_url: Option<String>,
    pub ignore_duplicates: Option<bool>,
    pub wait_for_response: Option<bool>,
    /// Seconds a `waitForResponse` call waits, 1 to 300 (default 30).
    #[schema(minimum = 1, maximum = 300)]
    pub wait_timeout_seconds: Option<i32>,
    /// Invocations per minute across every caller (1 to 1,000,000).
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_limit_per_minute: Option<i32>,
    /// The priority of the runs it starts (0 to 100; default: its agent's).
    #[schema(minimum = 0, maximum = 100)]
    pub priority: Option<i32>,
    /// Calls with the same key within a period become one run.
    pub debounce: Option<Debounce>,
    #[serde(default, skip_serializing)]
    #[schema(value_type = Option<String>)]
    pub created_at: Option<Value>,
    #[serde(default, skip_serializing)]
    #[schema(value_type = Option<String>)]
    pub updated_at: Option<Value>,
}

/// The body of a trigger PATCH: each member present replaces the stored one; `null` clears it.
/// `tenantId`, `projectId`, `agentId` and `id` may be sent but must match the path.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct TriggerPatch {
    #[schema(pattern = r"^[a-zA-Z0-9\-_.]+$", min_length = 1, max_length = 255)]
    id: Option<String>,
    #[schema(max_length = 256)]
    tenant_id: Option<String>,
    #[schema(max_length = 256)]
    project_id: Option<String>,
    #[schema(max_length = 256)]
    agent_id: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    name: Option<String>,
    #[schema(max_length = 2000)]
    description: Option<String>,
    enabled: Option<bool>,
    #[schema(pattern = r"^[a-zA-Z0-9_-]+$", min_length = 1, max_length = 255)]
    key: Option<String>,
    #[schema(value_type = Option<Object>)]
    input_schema: Option<Value>,
    #[schema(min_length = 1)]
    message_template: Option<String>,
    output_transform: Option<OutputTransform>,
    #[schema(value_type = Option<Object>)]
    filters: Option<Value>,
    authentication: Option<Authentication>,
    signature_verification: Option<SignatureVerification>,
    signing_secret_credential_reference_id: Option<String>,
    webhook_url: Option<String>,
    ignore_duplicates: Option<bool>,
    wait_for_response: Option<bool>,
    #[schema(minimum = 1, maximum = 300)]
    wait_timeout_seconds: Option<i32>,
    #[schema(minimum = 1, maximum = 1000000)]
    rate_limit_per_minute: Option<i32>,
    #[schema(minimum = 0, maximum = 100)]
    priority: Option<i32>,
    debounce: Option<Debounce>,
    #[schema(value_type = Option<String>)]
    created_at: Option<Value>,
    #[schema(value_type = Option<String>)]
    updated_at: Option<Value>,
}

struct Valid {
    id: String,
    name: String,
    description: Option<String>,
    enabled: bool,
    key: String,
    input_schema: Option<Value>,
    message_template: Option<String>,
    output_transform: Option<Value>,
    filters: Option<Value>,
    authentication: Option<Value>,
    signature_verification: Option<Value>,
    signing_secret_credential_id: Option<String>,
    webhook_url: Option<String>,
    ignore_duplicates: bool,
    wait_for_response: bool,
    wait_timeout_seconds: i32,
    rate_limit_per_minute: Option<i32>,
    priority: Option<i32>,
    debounce: Option<Value>,
}

/// `debounce`: calls whose `key` (a JSON pointer into the body; none: every call) has the same
/// value within `periodSeconds` become one run. `leading`: the first call's run starts at once
/// and the later ones are dropped; `trailing`: the run starts when the period (counted from the
/// first call) ends, with the last call's body, and the earlier bodies are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Debounce {
    /// A JSON pointer into the call's body (`/pull_request/number`); absent: one key per trigger.
    #[schema(max_length = 255)]
    pub key: Option<String>,
    /// 1 to 3,600.
    #[schema(minimum = 1, maximum = 3600)]
    pub period_seconds: i32,
    /// Default `trailing`.
    #[serde(default)]
    pub mode: DebounceMode,
}

/// Which call of a burst runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DebounceMode {
    /// The first, at once.
    Leading,
    /// The last, when the period ends.
    #[default]
    Trailing,
}

impl Debounce {
    /// The value of this call's key: the text at the pointer (a string as it is, anything else
    /// as JSON; missing is empty), or empty when the trigger names no key.
    pub fn key_of(&self, body: &Value) -> String {
        match self.key.as_deref().and_then(|p| body.pointer(p)) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }
    }
}

fn check_debounce(d: &Debounce) -> Result<(), Error> {
    if !(1..=3600).contains(&d.period_seconds) {
        return Err(Error::invalid(
            "`debounce.periodSeconds` must be from 1 to 3600",
        ));
    }
    if let Some(key) = &d.key
        && (!key.starts_with('/') || key.len() > 255)
    {
        return Err(Error::invalid(
            "`debounce.key` must be a JSON pointer (`/member/...`) of at most 255 bytes",
        ));
    }
    Ok(())
}

/// Whether `key` is a valid trigger key: `[a-zA-Z0-9_-]`, 1 to 255.
pub fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Deepest nesting of objects and arrays in an `inputSchema`.
const MAX_SCHEMA_DEPTH: usize = 32;
/// The most memory one compiled `pattern` (or `patternProperties` key) may take, in bytes.
const MAX_PATTERN_BYTES: usize = 1 << 20;

/// How deeply `value` nests objects and arrays (a scalar is 0), counting no further than `stop`.
fn depth(value: &Value, stop: usize) -> usize {
    if stop == 0 {
        return 0;
    }
    match value {
        Value::Object(map) => 1 + map.values().map(|v| depth(v, stop - 1)).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(|v| depth(v, stop - 1)).max().unwrap_or(0),
        _ => 0,
    }
}

/// The most `pattern`s and `patternProperties` keys one `inputSchema` may hold.
const MAX_SCHEMA_PATTERNS: usize = 64;

/// How many regexes `schema` asks to compile: `pattern` strings and `patternProperties` keys.
fn patterns(value: &Value) -> usize {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match (k.as_str(), v) {
                ("pattern", Value::String(_)) => 1,
                ("patternProperties", Value::Object(props)) => {
                    props.len() + props.values().map(patterns).sum::<usize>()
                }
                _ => patterns(v),
            })
            .sum(),
        Value::Array(items) => items.iter().map(patterns).sum(),
        _ => 0,
    }
}

/// Compiles a tenant's `inputSchema` the one way every process does: `pattern` and
/// `patternProperties` on the `regex` crate (linear time, no backtracking, so no pattern can
/// stall a request; look-around and back-references are refused), each regex within
/// [`MAX_PATTERN_BYTES`], and no remote `$ref`.
pub fn compile_input_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .with_pattern_options(
            jsonschema::PatternOptions::regex()
                .size_limit(MAX_PATTERN_BYTES)
                .dfa_size_limit(MAX_PATTERN_BYTES),
        )
        .build(schema)
        .map_err(|e| e.to_string())
}

/// Checks an `inputSchema`: valid JSON Schema, at most [`MAX_SCHEMA_BYTES`], [`MAX_SCHEMA_DEPTH`]
/// deep and [`MAX_SCHEMA_PATTERNS`] regexes, that compiles as [`compile_input_schema`] does.
pub fn check_input_schema(schema: &Value) -> Result<(), Error> {
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(Error::invalid(
            "`inputSchema` must be a JSON Schema object or boolean",
        ));
    }
    if schema.to_string().len() > MAX_SCHEMA_BYTES {
        return Err(Error::invalid(format!(
            "`inputSchema` is larger than {MAX_SCHEMA_BYTES} bytes"
        )));
    }
    if depth(schema, MAX_SCHEMA_DEPTH + 1) > MAX_SCHEMA_DEPTH {
        return Err(Error::invalid(format!(
            "`inputSchema` nests objects and arrays more than {MAX_SCHEMA_DEPTH} deep"
        )));
    }
    if patterns(schema) > MAX_SCHEMA_PATTERNS {
        return Err(Error::invalid(format!(
            "`inputSchema` holds more than {MAX_SCHEMA_PATTERNS} patterns"
        )));
    }
    jsonschema::meta::validate(schema)
        .map_err(|e| Error::invalid(format!("`inputSchema` is not valid JSON Schema: {e}")))?;
    compile_input_schema(schema)
        .map_err(|e| Error::invalid(format!("`inputSchema` does not compile: {e}")))?;
    Ok(())
}

fn check_regex(source: &str, field: &str) -> Result<(), Error> {
    if source.len() > 512 {
        return Err(Error::invalid(format!(
            "`{field}` is longer than 512 characters"
        )));
    }
    regex::RegexBuilder::new(source)
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| Error::invalid(format!("`{field}` is not a valid regex: {e}")))
}

fn check_signature(sv: &SignatureVerification) -> Result<(), Error> {
    if sv.signature.key.is_empty() || sv.signature.key.len() > 255 {
        return Err(Error::invalid(
            "`signatureVerification.signature.key` must be 1 to 255 characters",
        ));
    }
    if let Some(re) = &sv.signature.regex {
        check_regex(re, "signatureVerification.signature.regex")?;
    }
    if sv.signed_components.len() > 16 {
        return Err(Error::invalid(
            "`signatureVerification.signedComponents` holds at most 16 components",
        ));
    }
    for (i, c) in sv.signed_components.iter().enumerate() {
        let at = format!("signatureVerification.signedComponents[{i}]");
        match c.source {
            ComponentSource::Literal if c.value.is_none() => {
                return Err(Error::invalid(format!(
                    "`{at}.value` is required for a literal"
                )));
            }
            ComponentSource::Header | ComponentSource::Query
                if c.key.as_deref().is_none_or(str::is_empty) =>
            {
                return Err(Error::invalid(format!(
                    "`{at}.key` is required for a header or query component"
                )));
            }
            _ => {}
        }
        if let Some(re) = &c.regex {
            check_regex(re, &format!("{at}.regex"))?;
        }
    }
    Ok(())
}

fn check_authentication(auth: Authentication) -> Result<Value, Error> {
    if auth.headers.is_empty() || auth.headers.len() > 8 {
        return Err(Error::invalid(
            "`authentication.headers` must list 1 to 8 headers",
        ));
    }
    let mut stored = Vec::with_capacity(auth.headers.len());
    for h in auth.headers {
        if axum_like_header_name(&h.name).is_none() {
            return Err(Error::invalid(format!(
                "`{}` is not a valid header name",
                h.name
            )));
        }
        let digest = match (h.value, h.value_sha256) {
            (Some(v), _) if !v.is_empty() && v.len() <= 1024 => hex(&Sha256::digest(v.as_bytes())),
            (Some(_), _) => {
                return Err(Error::invalid(
                    "`authentication.headers[].value` must be 1 to 1024 bytes",
                ));
            }
            (None, Some(d)) if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) => d,
            (None, _) => {
                return Err(Error::invalid(
                    "`authentication.headers[].value` is required",
                ));
            }
        };
        stored
            .push(serde_json::json!({"name": h.name.to_ascii_lowercase(), "valueSha256": digest}));
    }
    Ok(serde_json::json!({ "headers": stored }))
}

/// A lowercase token of the header-name grammar, or `None`.
fn axum_like_header_name(name: &str) -> Option<()> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then_some(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a trigger as a whole. `may_use_credentials` is false for a project-limited key.
fn validate(spec: TriggerSpec, may_use_credentials: bool) -> Result<Valid, Error> {
    if spec.signing_secret_credential_reference_id.is_some() && !may_use_credentials {
        return Err(Error::Forbidden(
            "a key limited to some projects cannot give a trigger a credential".into(),
        ));
    }
    let as_json = serde_json::to_value(&spec).map_err(|e| Error::invalid(e.to_string()))?;
    if super::contains_nul(&as_json) {
        return Err(Error::invalid("text may not contain the NUL character"));
    }
    let id = id_or_new(spec.id, "trigger")?;
    check_name(&spec.name, "trigger")?;
    check_description(spec.description.as_deref())?;
    let key = spec.key.unwrap_or_else(|| id.replace('.', "-"));
    if !valid_key(&key) {
        return Err(Error::invalid(
            "`key` must be 1 to 255 characters of letters, digits, '-' or '_'",
        ));
    }
    let input_schema = match spec.input_schema {
        // Inkeep shows the schema as a string: accept one that holds JSON.
        Some(Value::String(s)) => Some(serde_json::from_str::<Value>(&s).map_err(|_| {
            Error::invalid(
                "`inputSchema` must be a JSON Schema (an object, or a string holding one)",
            )
        })?),
        other => other.filter(|v| !v.is_null()),
    };
    if let Some(schema) = &input_schema {
        check_input_schema(schema)?;
    }
    if let Some(t) = &spec.message_template {
        if t.is_empty() || t.len() > MAX_TEMPLATE_BYTES {
            return Err(Error::invalid(format!(
                "`messageTemplate` must be 1 to {MAX_TEMPLATE_BYTES} bytes"
            )));
        }
        super::check_text(t, "messageTemplate")?;
        Template::parse(t).map_err(|e| Error::invalid(format!("`messageTemplate`: {e}")))?;
    }
    let output_transform = match spec.output_transform {
        None => None,
        Some(ot) => {
            match (&ot.pointer, &ot.template) {
                (Some(p), None)
                    if p.len() <= MAX_POINTER_BYTES && (p.is_empty() || p.starts_with('/')) => {}
                (None, Some(t)) => {
                    if t.is_empty() || t.len() > MAX_TEMPLATE_BYTES {
                        return Err(Error::invalid(format!(
                            "`outputTransform.template` must be 1 to {MAX_TEMPLATE_BYTES} bytes"
                        )));
                    }
                    Template::parse(t)
                        .map_err(|e| Error::invalid(format!("`outputTransform.template`: {e}")))?;
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "`outputTransform` takes exactly one of `pointer` (a JSON pointer of at \
                         most {MAX_POINTER_BYTES} bytes) or `template`"
                    )));
                }
            }
            Some(serde_json::to_value(ot).map_err(|e| Error::invalid(e.to_string()))?)
        }
    };
    if let Some(filters) = &spec.filters {
        Filter::parse(filters).map_err(Error::Invalid)?;
    }
    let authentication = spec.authentication.map(check_authentication).transpose()?;
    let signature_verification = match spec.signature_verification {
        Some(sv) => {
            check_signature(&sv)?;
            Some(serde_json::to_value(sv).map_err(|e| Error::invalid(e.to_string()))?)
        }
        None => None,
    };
    if let Some(url) = &spec.webhook_url {
        check_url(url, "webhookUrl")?;
    }
    if let Some(cred) = &spec.signing_secret_credential_reference_id
        && !super::valid_id(cred)
    {
        return Err(Error::invalid("the referenced credential does not exist"));
    }
    if spec.priority.is_some_and(|p| !(0..=100).contains(&p)) {
        return Err(Error::invalid("`priority` must be from 0 to 100"));
    }
    let debounce = match &spec.debounce {
        Some(d) => {
            check_debounce(d)?;
            Some(serde_json::to_value(d).map_err(|e| Error::invalid(e.to_string()))?)
        }
        None => None,
    };
    if spec
        .rate_limit_per_minute
        .is_some_and(|n| !(1..=1_000_000).contains(&n))
    {
        return Err(Error::invalid(
            "`rateLimitPerMinute` must be from 1 to 1000000",
        ));
    }
    let wait_timeout_seconds = spec.wait_timeout_seconds.unwrap_or(30);
    if !(1..=300).contains(&wait_timeout_seconds) {
        return Err(Error::invalid("`waitTimeoutSeconds` must be from 1 to 300"));
    }
    Ok(Valid {
        id,
        name: spec.name,
        description: spec.description,
        enabled: spec.enabled.unwrap_or(true),
        key,
        input_schema,
        message_template: spec.message_template,
        output_transform,
        filters: spec.filters,
        authentication,
        signature_verification,
        signing_secret_credential_id: spec.signing_secret_credential_reference_id,
        webhook_url: spec.webhook_url,
        ignore_duplicates: spec.ignore_duplicates.unwrap_or(false),
        wait_for_response: spec.wait_for_response.unwrap_or(false),
        wait_timeout_seconds,
        rate_limit_per_minute: spec.rate_limit_per_minute,
        priority: spec.priority,
        debounce,
    })
}

const COLUMNS: &str = "id, project_id, agent_id, name, description, enabled, key, input_schema, \
    message_template, output_transform, filters, authentication, signature_verification, \
    signing_secret_credential_id, webhook_url, ignore_duplicates, wait_for_response, \
    wait_timeout_seconds, rate_limit_per_minute, priority, debounce, version, created_at, updated_at";

/// The tenant's ceiling, selected beside [`COLUMNS`] by the lookups inbound calls use.
const TENANT_LIMIT: &str = "(SELECT t.rate_limit_per_minute FROM tenants t \
     WHERE t.id = triggers.tenant_id) AS tenant_rate_limit_per_minute";

/// The stored row, with the authentication digests still in it (for merging a PATCH).
struct Stored {
    trigger: Trigger,
    authentication: Option<Value>,
}

fn from_row(row: &Row) -> Result<Stored, tokio_postgres::Error> {
    let authentication: Option<Value> = row.try_get("authentication")?;
    let shown = authentication.as_ref().and_then(|a| {
        let names = a.get("headers")?.as_array()?.iter().filter_map(|h| {
            Some(HeaderCheck {
                name: h.get("name")?.as_str()?.to_owned(),
                value: None,
                value_sha256: None,
            })
        });
        Some(Authentication {
            headers: names.collect(),
        })
    });
    let parse = |column: &str| -> Result<Option<Value>, tokio_postgres::Error> {
        row.try_get::<_, Option<Value>>(column)
    };
    Ok(Stored {
        trigger: Trigger {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            agent_id: row.try_get("agent_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            enabled: row.try_get("enabled")?,
            key: row.try_get("key")?,
            input_schema: parse("input_schema")?,
            message_template: row.try_get("message_template")?,
            output_transform: parse("output_transform")?
                .and_then(|v| serde_json::from_value(v).ok()),
            filters: parse("filters")?,
            authentication: shown,
            signature_verification: parse("signature_verification")?
                .and_then(|v| serde_json::from_value(v).ok()),
            signing_secret_credential_reference_id: row.try_get("signing_secret_credential_id")?,
            webhook_url: row.try_get("webhook_url")?,
            ignore_duplicates: row.try_get("ignore_duplicates")?,
            wait_for_response: row.try_get("wait_for_response")?,
            wait_timeout_seconds: row.try_get("wait_timeout_seconds")?,
            rate_limit_per_minute: row.try_get("rate_limit_per_minute")?,
            priority: row.try_get("priority")?,
            debounce: parse("debounce")?.and_then(|v| serde_json::from_value(v).ok()),
            version: row.try_get("version")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            stored_authentication: authentication.clone(),
            // Only `find` and `resolve` select it.
            tenant_rate_limit_per_minute: row
                .try_get::<_, Option<i32>>("tenant_rate_limit_per_minute")
                .ok()
                .flatten(),
        },
        authentication,
    })
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("trigger `{id}` was not found"))
}

/// Where a trigger lives: its tenant, project and agent.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub tenant_id: &'a str,
    pub project_id: &'a str,
    pub agent_id: &'a str,
}

pub async fn create(
    client: &impl GenericClient,
    owner: Owner<'_>,
    spec: TriggerSpec,
    may_use_credentials: bool,
) -> Result<Trigger, Error> {
    let v = validate(spec, may_use_credentials)?;
    let row = client
        .query_opt(
            &format!(
                "INSERT INTO triggers (tenant_id, id, project_id, agent_id, name, description, enabled, \
                     key, input_schema, message_template, output_transform, filters, authentication, \
                     signature_verification, signing_secret_credential_id, webhook_url, \
                     ignore_duplicates, wait_for_response, wait_timeout_seconds, rate_limit_per_minute, \
                     priority, debounce) \
                 SELECT a.tenant_id, $4, a.project_id, a.id, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                        $15, $16, $17, $18, $19, $20, $21, $22 \
                 FROM agents a WHERE a.tenant_id = $1 AND a.project_id = $2 AND a.id = $3 \
                 RETURNING {COLUMNS}"
            ),
            &[
                &owner.tenant_id,
                &owner.project_id,
                &owner.agent_id,
                &v.id,
                &v.name,
                &v.description,
                &v.enabled,
                &v.key,
                &v.input_schema,
                &v.message_template,
                &v.output_transform,
                &v.filters,
                &v.authentication,
                &v.signature_verification,
                &v.signing_secret_credential_id,
                &v.webhook_url,
                &v.ignore_duplicates,
                &v.wait_for_response,
                &v.wait_timeout_seconds,
                &v.rate_limit_per_minute,
                &v.priority,
                &v.debounce,
            ],
        )
        .await
        .map_err(|e| constraint(e, "trigger"))?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "agent `{}` was not found in project `{}`",
                owner.agent_id, owner.project_id
            ))
        })?;
    Ok(from_row(&row)?.trigger)
}

pub async fn get(
    client: &impl GenericClient,
    owner: Owner<'_>,
    id: &str,
) -> Result<Trigger, Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM triggers \
                 WHERE tenant_id = $1 AND project_id = $2 AND agent_id = $3 AND id = $4"
            ),
            &[&owner.tenant_id, &owner.project_id, &owner.agent_id, &id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(from_row(&row)?.trigger)
}

/// A trigger of the tenant by id (in any project); its `stored_authentication` holds the header
/// digests, for the inbound-webhook route.
pub async fn find(
    client: &impl GenericClient,
    tenant_id: &str,
    id: &str,
) -> Result<Option<Trigger>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, {TENANT_LIMIT} FROM triggers WHERE tenant_id = $1 AND id = $2"
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&tenant_id, &id]).await?;
    Ok(row.as_ref().map(from_row).transpose()?.map(|s| s.trigger))
}

/// The trigger invoked as `key` (any case) in a project of the tenant, enabled or not.
pub async fn resolve(
    client: &impl GenericClient,
    tenant_id: &str,
    project_id: &str,
    key: &str,
) -> Result<Option<Trigger>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, {TENANT_LIMIT} FROM triggers \
             WHERE tenant_id = $1 AND project_id = $2 AND lower(key) = lower($3)"
        ))
        .await?;
    let row = client
        .query_opt(&stmt, &[&tenant_id, &project_id, &key])
        .await?;
    Ok(row.as_ref().map(from_row).transpose()?.map(|s| s.trigger))
}

pub async fn list(
    client: &impl GenericClient,
    owner: Owner<'_>,
    page: Page,
) -> Result<Paginated<Trigger>, Error> {
    let agent = client
        .query_opt(
            "SELECT 1 FROM agents WHERE tenant_id = $1 AND project_id = $2 AND id = $3",
            &[&owner.tenant_id, &owner.project_id, &owner.agent_id],
        )
        .await?;
    if agent.is_none() {
        return Err(Error::NotFound(format!(
            "agent `{}` was not found in project `{}`",
            owner.agent_id, owner.project_id
        )));
    }
    super::list_page(
        client,
        "triggers",
        COLUMNS,
        "project_id = $2 AND agent_id = $3",
        &[&owner.tenant_id, &owner.project_id, &owner.agent_id],
        page,
        |r| from_row(r).map(|s| s.trigger),
    )
    .await
}

/// Merges `patch` into the stored trigger, validates the result as a whole, saves it and bumps
/// its version.
pub async fn update(
    client: &mut deadpool_postgres::Client,
    owner: Owner<'_>,
    id: &str,
    patch: Value,
    may_use_credentials: bool,
) -> Result<Trigger, Error> {
    serde_json::from_value::<TriggerPatch>(patch.clone())
        .map_err(|e| Error::BadRequest(format!("the body is not valid: {e}")))?;
    same_or_absent(&patch, "id", id)?;
    same_or_absent(&patch, "tenantId", owner.tenant_id)?;
    same_or_absent(&patch, "projectId", owner.project_id)?;
    same_or_absent(&patch, "agentId", owner.agent_id)?;
    let mut patch = patch;
    if let Value::Object(map) = &mut patch {
        for k in ["tenantId", "projectId", "agentId"] {
            map.remove(k);
        }
    }
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM triggers \
                 WHERE tenant_id = $1 AND project_id = $2 AND agent_id = $3 AND id = $4 FOR UPDATE"
            ),
            &[&owner.tenant_id, &owner.project_id, &owner.agent_id, &id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    let Stored {
        trigger: t,
        authentication,
    } = from_row(&row)?;
    let mut merged = serde_json::json!({
        "id": t.id,
        "name": t.name,
        "description": t.description,
        "enabled": t.enabled,
        "key": t.key,
        "inputSchema": t.input_schema,
        "messageTemplate": t.message_template,
        "outputTransform": t.output_transform,
        "filters": t.filters,
        "authentication": authentication,
        "signatureVerification": t.signature_verification,
        "signingSecretCredentialReferenceId": t.signing_secret_credential_reference_id,
        "webhookUrl": t.webhook_url,
        "ignoreDuplicates": t.ignore_duplicates,
        "waitForResponse": t.wait_for_response,
        "waitTimeoutSeconds": t.wait_timeout_seconds,
        "rateLimitPerMinute": t.rate_limit_per_minute,
        "priority": t.priority,
        "debounce": t.debounce,
    });
    merge_top_level(
        &mut merged,
        patch,
        &[
            "name",
            "enabled",
            "key",
            "ignoreDuplicates",
            "waitForResponse",
            "waitTimeoutSeconds",
        ],
    )?;
    let spec: TriggerSpec = serde_json::from_value(merged)
        .map_err(|e| Error::BadRequest(format!("the body is not valid: {e}")))?;
    // A key that may not name credentials may still change a trigger that already names one,
    // as long as it leaves that reference as it is.
    let keeps_credential =
        spec.signing_secret_credential_reference_id == t.signing_secret_credential_reference_id;
    let v = validate(spec, may_use_credentials || keeps_credential)?;
    let row = tx
        .query_one(
            &format!(
                "UPDATE triggers SET name = $5, description = $6, enabled = $7, key = $8, \
                     input_schema = $9, message_template = $10, output_transform = $11, filters = $12, \
                     authentication = $13, signature_verification = $14, \
                     signing_secret_credential_id = $15, webhook_url = $16, ignore_duplicates = $17, \
                     wait_for_response = $18, wait_timeout_seconds = $19, rate_limit_per_minute = $20, \
                     priority = $21, debounce = $22, version = version + 1, \
                     updated_at = now() \
                 WHERE tenant_id = $1 AND project_id = $2 AND agent_id = $3 AND id = $4 \
                 RETURNING {COLUMNS}"
            ),
            &[
                &owner.tenant_id,
                &owner.project_id,
                &owner.agent_id,
                &id,
                &v.name,
                &v.description,
                &v.enabled,
                &v.key,
                &v.input_schema,
                &v.message_template,
                &v.output_transform,
                &v.filters,
                &v.authentication,
                &v.signature_verification,
                &v.signing_secret_credential_id,
                &v.webhook_url,
                &v.ignore_duplicates,
                &v.wait_for_response,
                &v.wait_timeout_seconds,
                &v.rate_limit_per_minute,
                &v.priority,
                &v.debounce,
            ],
        )
        .await
        .map_err(|e| constraint(e, "trigger"))?;
    tx.commit().await?;
    Ok(from_row(&row)?.trigger)
}

pub async fn delete(client: &impl GenericClient, owner: Owner<'_>, id: &str) -> Result<(), Error> {
    let n = client
        .execute(
            "DELETE FROM triggers WHERE tenant_id = $1 AND project_id = $2 AND agent_id = $3 AND id = $4",
            &[&owner.tenant_id, &owner.project_id, &owner.agent_id, &id],
        )
        .await?;
    if n == 0 {
        return Err(not_found(id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn validate_all(spec: TriggerSpec) -> Result<Valid, Error> {
        validate(spec, true)
    }

    fn spec(v: Value) -> TriggerSpec {
        serde_json::from_value(v).expect("deserialises")
    }

    #[test]
    fn a_minimal_trigger_gets_defaults() {
        let v = validate_all(spec(json!({"id": "gh.push", "name": "GitHub push"}))).expect("valid");
        assert_eq!(v.key, "gh-push");
        assert!(v.enabled);
        assert_eq!(v.wait_timeout_seconds, 30);
        assert!(!v.ignore_duplicates);
    }

    #[test]
    fn invalid_json_schema_is_refused() {
        let bad = validate_all(spec(json!({"name": "t", "inputSchema": {"type": "strin"}})));
        assert!(matches!(bad, Err(Error::Invalid(m)) if m.contains("inputSchema")));
        let bad = validate_all(spec(json!({"name": "t", "inputSchema": {"minLength": -1}})));
        assert!(matches!(bad, Err(Error::Invalid(_))));
        let remote = validate_all(spec(
            json!({"name": "t", "inputSchema": {"$ref": "https://example.com/s.json"}}),
        ));
        assert!(
            matches!(remote, Err(Error::Invalid(_))),
            "remote $ref stays disabled"
        );
        let ok = validate_all(spec(
            json!({"name": "t", "inputSchema": "{\"type\":\"object\"}"}),
        ))
        .expect("valid");
        assert_eq!(ok.input_schema, Some(json!({"type": "object"})));
    }

    #[test]
    fn schemas_are_bounded_and_patterns_never_backtrack() {
        let mut deep = json!({"type": "string"});
        for _ in 0..40 {
            deep = json!({"type": "object", "properties": {"a": deep}});
        }
        assert!(matches!(
            validate_all(spec(json!({"name": "t", "inputSchema": deep}))),
            Err(Error::Invalid(m)) if m.contains("deep")
        ));
        // Look-around needs a backtracking engine: refused on write.
        let lookahead =
            json!({"name": "t", "inputSchema": {"type": "string", "pattern": "^(?=a)a+$"}});
        assert!(matches!(
            validate_all(spec(lookahead)),
            Err(Error::Invalid(_))
        ));
        let many: serde_json::Map<String, Value> = (0..65)
            .map(|n| (format!("p{n}"), json!({"type": "string", "pattern": "^a"})))
            .collect();
        assert!(matches!(
            validate_all(spec(json!({"name": "t", "inputSchema": {"properties": many}}))),
            Err(Error::Invalid(m)) if m.contains("patterns")
        ));
        // The classic catastrophic pattern runs in linear time.
        let schema = json!({"type": "string", "pattern": "^(a+)+$"});
        let validator = compile_input_schema(&schema).expect("compiles");
        let hostile = Value::String(format!("{}b", "a".repeat(200_000)));
        let started = std::time::Instant::now();
        assert!(!validator.is_valid(&hostile));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn every_member_is_checked() {
        for bad in [
            json!({"name": "t", "key": "has space"}),
            json!({"name": "t", "id": "bad/id"}),
            json!({"name": " "}),
            json!({"name": "t", "messageTemplate": "Hi {{name"}),
            json!({"name": "t", "messageTemplate": ""}),
            json!({"name": "t", "filters": {"pointer": "/a", "op": "nope"}}),
            json!({"name": "t", "outputTransform": {"pointer": "/a", "template": "x"}}),
            json!({"name": "t", "outputTransform": {"pointer": "a"}}),
            json!({"name": "t", "webhookUrl": "not a url"}),
            json!({"name": "t", "waitTimeoutSeconds": 0}),
            json!({"name": "t", "authentication": {"headers": []}}),
            json!({"name": "t", "authentication": {"headers": [{"name": "bad header", "value": "x"}]}}),
            json!({"name": "t", "signatureVerification": {"algorithm": "sha256", "encoding": "hex",
                "signature": {"source": "header", "key": "X-Sig", "regex": "("}}}),
            json!({"name": "t", "signatureVerification": {"algorithm": "sha256", "encoding": "hex",
                "signature": {"source": "header", "key": "X-Sig"},
                "signedComponents": [{"source": "literal"}]}}),
            json!({"name": "t", "outputTransform": {"template": "nul \0"}}),
            json!({"name": "t", "outputTransform": {"template": "x".repeat(MAX_TEMPLATE_BYTES + 1)}}),
            json!({"name": "t", "outputTransform": {"template": ""}}),
            json!({"name": "t", "outputTransform": {"pointer": format!("/{}", "a".repeat(MAX_POINTER_BYTES))}}),
            json!({"name": "t", "webhookUrl": "https://x.example/\0"}),
        ] {
            assert!(
                matches!(validate_all(spec(bad.clone())), Err(Error::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn authentication_values_are_kept_only_as_digests() {
        let v = validate_all(spec(json!({"name": "t", "authentication": {"headers": [{"name": "X-Token", "value": "s3cret"}]}})))
            .expect("valid");
        let stored = v.authentication.expect("stored").to_string();
        assert!(!stored.contains("s3cret"));
        assert!(stored.contains(&hex(&Sha256::digest(b"s3cret"))));
    }

    #[test]
    fn a_limited_key_cannot_name_a_credential() {
        let s = spec(json!({"name": "t", "signingSecretCredentialReferenceId": "c"}));
        assert!(matches!(validate(s, false), Err(Error::Forbidden(_))));
    }

    #[test]
    fn github_style_signature_verification_parses() {
        let v = validate_all(spec(json!({"name": "gh", "signatureVerification": {
            "algorithm": "sha256", "encoding": "hex",
            "signature": {"source": "header", "key": "X-Hub-Signature-256", "prefix": "sha256="},
            "signedComponents": [{"source": "body", "required": true}],
            "componentJoin": {"strategy": "concatenate", "separator": ""},
            "validation": {"allowEmptyBody": false, "headerCaseSensitive": false, "normalizeUnicode": false}
        }})));
        assert!(v.is_ok());
    }
}
