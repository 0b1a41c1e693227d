//! Agents: what a run executes. `kind` picks the executor (`echo`, `openai` or `http`) and
//! `config` is checked against that kind on every write.

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;

use super::{
    Error, Page, Paginated, check_description, check_name, constraint, id_or_new, merge_top_level,
    same_or_absent,
};

/// The executor an agent runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// Deterministic: answers with the rendered message. For tests, demos and benchmarks.
    Echo,
    /// An OpenAI-compatible chat completions endpoint.
    Openai,
    /// The user's own agent service, called over HTTP.
    Http,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Openai => "openai",
            Self::Http => "http",
        }
    }

    fn parse(raw: &str) -> Self {
        match raw {
            "openai" => Self::Openai,
            "http" => Self::Http,
            _ => Self::Echo,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct EchoConfig {
    delay_ms: Option<u64>,
}

/// The `config` of an `openai` agent (checked on write; read by the worker's executor).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenaiConfig {
    pub base_url: String,
    pub model: String,
    pub system_prompt: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub tools: Option<Vec<ToolConfig>>,
    pub max_steps: Option<u32>,
}

/// A function tool backed by an HTTP endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolConfig {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Value>,
    pub url: String,
    pub timeout_ms: Option<u64>,
    pub credential_reference_id: Option<String>,
}

/// The most tools an agent declares, and the most model rounds it may ask for.
const MAX_TOOLS: usize = 32;
const MAX_STEPS: u32 = 32;

fn check_tools(tools: &[ToolConfig]) -> Result<(), Error> {
    if tools.len() > MAX_TOOLS {
        return Err(Error::invalid(format!(
            "`config.tools` holds at most {MAX_TOOLS} tools"
        )));
    }
    let mut names = std::collections::HashSet::new();
    for tool in tools {
        let valid_name = (1..=64).contains(&tool.name.len())
            && tool
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if !valid_name {
            return Err(Error::invalid(
                "a tool's `name` must be 1 to 64 letters, digits, '_' or '-'",
            ));
        }
        if !names.insert(tool.name.as_str()) {
            return Err(Error::invalid(format!(
                "two tools are named `{}`",
                tool.name
            )));
        }
        check_url(&tool.url, "config.tools[].url")?;
        if let Some(parameters) = &tool.parameters {
            if !parameters.is_object() {
                return Err(Error::invalid(format!(
                    "the `parameters` of tool `{}` must be a JSON Schema object",
                    tool.name
                )));
            }
            jsonschema::meta::validate(parameters).map_err(|e| {
                Error::invalid(format!(
                    "the `parameters` of tool `{}` are not valid JSON Schema: {e}",
                    tool.name
                ))
            })?;
        }
        if tool
            .timeout_ms
            .is_some_and(|t| !(100..=600_000).contains(&t))
        {
            return Err(Error::invalid(
                "a tool's `timeoutMs` must be from 100 to 600000",
            ));
        }
        if tool
            .credential_reference_id
            .as_deref()
            .is_some_and(|c| !super::valid_id(c))
        {
            return Err(Error::invalid("a tool's credential does not exist"));
        }
    }
    Ok(())
}

/// Whether any tool in `config` names a credential (`config.tools[].credentialReferenceId`),
/// whatever the agent's kind and whether or not the rest of `config` is valid.
fn names_tool_credential(config: Option<&Value>) -> bool {
    config
        .and_then(|c| c.get("tools"))
        .and_then(Value::as_array)
        .is_some_and(|tools| {
            tools
                .iter()
                .any(|t| t.get("credentialReferenceId").is_some_and(|c| !c.is_null()))
        })
}

/// The `config` of an `http` agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConfig {
    pub url: String,
    pub timeout_ms: Option<u64>,
}

/// Checks `config` against what `kind` reads.
fn check_config(kind: AgentKind, config: &Value) -> Result<(), Error> {
    let bad = |e: serde_json::Error| {
        Error::invalid(format!("`config` of a {} agent: {e}", kind.as_str()))
    };
    match kind {
        AgentKind::Echo => {
            let c: EchoConfig = serde_json::from_value(config.clone()).map_err(bad)?;
            if c.delay_ms.is_some_and(|d| d > 600_000) {
                return Err(Error::invalid("`config.delayMs` must be at most 600000"));
            }
        }
        AgentKind::Openai => {
            let c: OpenaiConfig = serde_json::from_value(config.clone()).map_err(bad)?;
            check_url(&c.base_url, "config.baseUrl")?;
            if c.model.trim().is_empty() || c.model.len() > 255 {
                return Err(Error::invalid("`config.model` must be 1 to 255 characters"));
            }
            if c.system_prompt
                .as_ref()
                .is_some_and(|p| p.len() > 64 * 1024)
            {
                return Err(Error::invalid(
                    "`config.systemPrompt` must be at most 64 KiB",
                ));
            }
            if c.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
                return Err(Error::invalid("`config.temperature` must be from 0 to 2"));
            }
            if c.max_tokens == Some(0) {
                return Err(Error::invalid("`config.maxTokens` must be at least 1"));
            }
            if c.max_steps.is_some_and(|s| !(1..=MAX_STEPS).contains(&s)) {
                return Err(Error::invalid(format!(
                    "`config.maxSteps` must be from 1 to {MAX_STEPS}"
                )));
            }
            check_tools(c.tools.as_deref().unwrap_or_default())?;
        }
        AgentKind::Http => {
            let c: HttpConfig = serde_json::from_value(config.clone()).map_err(bad)?;
            check_url(&c.url, "config.url")?;
            if c.timeout_ms
                .is_some_and(|t| !(100..=3_600_000).contains(&t))
            {
                return Err(Error::invalid(
                    "`config.timeoutMs` must be from 100 to 3600000",
                ));
            }
        }
    }
    if super::contains_nul(config) {
        return Err(Error::invalid("`config` may not contain the NUL character"));
    }
    Ok(())
}

/// An absolute http or https URL of at most 2,048 characters.
pub(crate) fn check_url(raw: &str, field: &str) -> Result<(), Error> {
    let ok = raw.len() <= 2048
        && url::Url::parse(raw)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "`{field}` must be an absolute http or https URL"
        )))
    }
}

/// An agent as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: Option<String>,
    pub kind: AgentKind,
    /// Settings of the executor: `echo` {delayMs}; `openai` {baseUrl, model, systemPrompt,
    /// temperature, maxTokens, tools: [{name, description, parameters, url, timeoutMs,
    /// credentialReferenceId}], maxSteps}; `http` {url, timeoutMs}.
    #[schema(value_type = Object)]
    pub config: Value,
    /// The credential the executor uses (the LLM API key, or the HTTP agent's signing secret).
    pub credential_reference_id: Option<String>,
    /// How many times a run of this agent is tried before it fails.
    pub max_attempts: i32,
    /// How long one execution of a run may take; past it the run ends `timed_out`.
    pub timeout_seconds: i32,
    /// Most runs of this agent running at once, across every worker; `null` for no limit.
    pub max_concurrency: Option<i32>,
    /// What groups this agent's runs for `maxConcurrencyPerKey`: `sessionId`, or a JSON pointer
    /// into a run's inputs (`/inputs/…`; a trigger's body is its run's inputs) or metadata
    /// (`/metadata/…`).
    pub concurrency_key: Option<String>,
    /// Most runs of one concurrency key running at once.
    pub max_concurrency_per_key: Option<i32>,
    /// The priority (0 to 100) of its runs that do not give one.
    pub priority: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The writable members of an agent: the body of a create, and what a PATCH merges into.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSpec {
    #[schema(pattern = r"^[a-zA-Z0-9\-_.]+$", min_length = 1, max_length = 255)]
    pub id: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    pub kind: AgentKind,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    pub credential_reference_id: Option<String>,
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<i32>,
    /// Seconds one execution may take (default 900).
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_seconds: Option<i32>,
    /// Most runs running at once, across every worker (none by default).
    #[schema(minimum = 1, maximum = 1000)]
    pub max_concurrency: Option<i32>,
    /// `sessionId`, `/inputs/<JSON pointer>` or `/metadata/<JSON pointer>`: the value that
    /// groups runs for `maxConcurrencyPerKey` (given together).
    #[schema(max_length = 256)]
    pub concurrency_key: Option<String>,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_concurrency_per_key: Option<i32>,
    /// The priority of its runs that do not give one (0 to 100, default 0).
    #[schema(minimum = 0, maximum = 100)]
    pub priority: Option<i32>,
    /// Read-only; accepted and ignored.
    #[serde(default, skip_serializing)]
    #[schema(value_type = Option<String>)]
    pub created_at: Option<Value>,
    /// Read-only; accepted and ignored.
    #[serde(default, skip_serializing)]
    #[schema(value_type = Option<String>)]
    pub updated_at: Option<Value>,
}

/// The body of an agent PATCH: each member present replaces the stored one; `null` clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct AgentPatch {
    #[schema(pattern = r"^[a-zA-Z0-9\-_.]+$", min_length = 1, max_length = 255)]
    id: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    name: Option<String>,
    #[schema(max_length = 2000)]
    description: Option<String>,
    kind: Option<AgentKind>,
    #[schema(value_type = Option<Object>)]
    config: Option<Value>,
    credential_reference_id: Option<String>,
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: Option<i32>,
    #[schema(minimum = 1, maximum = 86400)]
    timeout_seconds: Option<i32>,
    #[schema(minimum = 1, maximum = 1000)]
    max_concurrency: Option<i32>,
    #[schema(max_length = 256)]
    concurrency_key: Option<String>,
    #[schema(minimum = 1, maximum = 1000)]
    max_concurrency_per_key: Option<i32>,
    #[schema(minimum = 0, maximum = 100)]
    priority: Option<i32>,
    project_id: Option<String>,
    #[schema(value_type = Option<String>)]
    created_at: Option<Value>,
    #[schema(value_type = Option<String>)]
    updated_at: Option<Value>,
}

struct Valid {
    id: String,
    name: String,
    description: Option<String>,
    kind: AgentKind,
    config: Value,
    credential_id: Option<String>,
    max_attempts: i32,
    timeout_seconds: i32,
    max_concurrency: Option<i32>,
    concurrency_key: Option<String>,
    max_concurrency_per_key: Option<i32>,
    priority: i32,
}

/// Checks an agent as a whole. `may_use_credentials` is false for a project-limited key, which
/// must not point an agent it controls at the tenant's secrets.
fn validate(spec: AgentSpec, may_use_credentials: bool) -> Result<Valid, Error> {
    if spec.credential_reference_id.is_some() && !may_use_credentials {
        return Err(Error::Forbidden(
            "a key limited to some projects cannot give an agent a credential".into(),
        ));
    }
    // A tool's credential signs every call the model makes to the tool's `url`: a key that could
    // name one (or change an agent whose tools name one) would get the tenant's secret as a
    // signing oracle, so a limited key may not touch such an agent at all.
    if !may_use_credentials && names_tool_credential(spec.config.as_ref()) {
        return Err(Error::Forbidden(
            "a key limited to some projects cannot create or change an agent whose tools name a \
             credential"
                .into(),
        ));
    }
    let id = id_or_new(spec.id, "agent")?;
    check_name(&spec.name, "agent")?;
    check_description(spec.description.as_deref())?;
    let config = spec
        .config
        .unwrap_or_else(|| Value::Object(Default::default()));
    if !config.is_object() {
        return Err(Error::invalid("`config` must be a JSON object"));
    }
    check_config(spec.kind, &config)?;
    let max_attempts = spec.max_attempts.unwrap_or(3);
    if !(1..=100).contains(&max_attempts) {
        return Err(Error::invalid("`maxAttempts` must be from 1 to 100"));
    }
    let timeout_seconds = spec.timeout_seconds.unwrap_or(900);
    if !(1..=86_400).contains(&timeout_seconds) {
        return Err(Error::invalid("`timeoutSeconds` must be from 1 to 86400"));
    }
    if spec
        .max_concurrency
        .is_some_and(|m| !(1..=1000).contains(&m))
    {
        return Err(Error::invalid("`maxConcurrency` must be from 1 to 1000"));
    }
    check_concurrency_key(
        spec.concurrency_key.as_deref(),
        spec.max_concurrency_per_key,
    )?;
    let priority = spec.priority.unwrap_or(0);
    if !(0..=100).contains(&priority) {
        return Err(Error::invalid("`priority` must be from 0 to 100"));
    }
    if let Some(cred) = &spec.credential_reference_id
        && !super::valid_id(cred)
    {
        return Err(Error::invalid("the referenced credential does not exist"));
    }
    Ok(Valid {
        id,
        name: spec.name,
        description: spec.description,
        kind: spec.kind,
        config,
        credential_id: spec.credential_reference_id,
        max_attempts,
        timeout_seconds,
        max_concurrency: spec.max_concurrency,
        concurrency_key: spec.concurrency_key,
        max_concurrency_per_key: spec.max_concurrency_per_key,
        priority,
    })
}

/// `concurrencyKey` and `maxConcurrencyPerKey` come together; the key is `sessionId` or a JSON
/// pointer under `/inputs/` or `/metadata/`.
fn check_concurrency_key(key: Option<&str>, cap: Option<i32>) -> Result<(), Error> {
    match (key, cap) {
        (None, None) => Ok(()),
        (Some(_), None) | (None, Some(_)) => Err(Error::invalid(
            "`concurrencyKey` and `maxConcurrencyPerKey` are given together",
        )),
        (Some(_), Some(cap)) if !(1..=1000).contains(&cap) => Err(Error::invalid(
            "`maxConcurrencyPerKey` must be from 1 to 1000",
        )),
        (Some(key), Some(_)) => {
            let pointer = key
                .strip_prefix("/inputs/")
                .or_else(|| key.strip_prefix("/metadata/"));
            let valid = key == "sessionId"
                || (key.len() <= 256
                    && pointer.is_some_and(|p| !p.is_empty() && !p.contains('\0')));
            if valid {
                Ok(())
            } else {
                Err(Error::invalid(
                    "`concurrencyKey` must be `sessionId`, or a JSON pointer of at most 256 \
                     characters under `/inputs/` or `/metadata/`",
                ))
            }
        }
    }
}

const COLUMNS: &str = "id, project_id, name, description, kind, config, credential_id, \
    max_attempts, timeout_seconds, max_concurrency, concurrency_key, max_concurrency_per_key, \
    priority, created_at, updated_at";

fn from_row(row: &Row) -> Result<Agent, tokio_postgres::Error> {
    Ok(Agent {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        kind: AgentKind::parse(row.try_get("kind")?),
        config: row.try_get("config")?,
        credential_reference_id: row.try_get("credential_id")?,
        max_attempts: row.try_get("max_attempts")?,
        timeout_seconds: row.try_get("timeout_seconds")?,
        max_concurrency: row.try_get("max_concurrency")?,
        concurrency_key: row.try_get("concurrency_key")?,
        max_concurrency_per_key: row.try_get("max_concurrency_per_key")?,
        priority: row.try_get("priority")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("agent `{id}` was not found"))
}

pub async fn create(
    client: &impl GenericClient,
    tenant_id: &str,
    project_id: &str,
    spec: AgentSpec,
    may_use_credentials: bool,
) -> Result<Agent, Error> {
    let v = validate(spec, may_use_credentials)?;
    let row = client
        .query_opt(
            &format!(
                "INSERT INTO agents (tenant_id, id, project_id, name, description, kind, config, \
                                     credential_id, max_attempts, timeout_seconds, max_concurrency, \
                                     concurrency_key, max_concurrency_per_key, priority) \
                 SELECT $1, $2, p.id, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 FROM projects p \
                 WHERE p.tenant_id = $1 AND p.id = $3 \
                 RETURNING {COLUMNS}"
            ),
            &[
                &tenant_id,
                &v.id,
                &project_id,
                &v.name,
                &v.description,
                &v.kind.as_str(),
                &v.config,
                &v.credential_id,
                &v.max_attempts,
                &v.timeout_seconds,
                &v.max_concurrency,
                &v.concurrency_key,
                &v.max_concurrency_per_key,
                &v.priority,
            ],
        )
        .await
        .map_err(|e| constraint(e, "agent"))?
        .ok_or_else(|| Error::NotFound(format!("project `{project_id}` was not found")))?;
    Ok(from_row(&row)?)
}

pub async fn get(
    client: &impl GenericClient,
    tenant_id: &str,
    project_id: &str,
    id: &str,
) -> Result<Agent, Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM agents WHERE tenant_id = $1 AND project_id = $2 AND id = $3"
            ),
            &[&tenant_id, &project_id, &id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(from_row(&row)?)
}

pub async fn list(
    client: &impl GenericClient,
    tenant_id: &str,
    project_id: &str,
    page: Page,
) -> Result<Paginated<Agent>, Error> {
    super::project_must_exist(client, tenant_id, project_id).await?;
    super::list_page(
        client,
        "agents",
        COLUMNS,
        "project_id = $2",
        &[&tenant_id, &project_id],
        page,
        from_row,
    )
    .await
}

/// Merges `patch` into the stored agent, validates the result as a whole, and saves it.
pub async fn update(
    client: &mut deadpool_postgres::Client,
    tenant_id: &str,
    project_id: &str,
    id: &str,
    patch: Value,
    may_use_credentials: bool,
) -> Result<Agent, Error> {
    serde_json::from_value::<AgentPatch>(patch.clone())
        .map_err(|e| Error::BadRequest(format!("the body is not valid: {e}")))?;
    same_or_absent(&patch, "id", id)?;
    same_or_absent(&patch, "projectId", project_id)?;
    let mut patch = patch;
    if let Value::Object(map) = &mut patch {
        map.remove("projectId");
    }
    let tx = client.transaction().await?;
    let current = tx
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM agents WHERE tenant_id = $1 AND project_id = $2 AND id = $3 \
                 FOR UPDATE"
            ),
            &[&tenant_id, &project_id, &id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    let current = from_row(&current)?;
    let mut merged = serde_json::to_value(AgentSpec {
        id: Some(current.id),
        name: current.name,
        description: current.description,
        kind: current.kind,
        config: Some(current.config),
        credential_reference_id: current.credential_reference_id,
        max_attempts: Some(current.max_attempts),
        timeout_seconds: Some(current.timeout_seconds),
        max_concurrency: current.max_concurrency,
        concurrency_key: current.concurrency_key,
        max_concurrency_per_key: current.max_concurrency_per_key,
        priority: Some(current.priority),
        created_at: None,
        updated_at: None,
    })
    .map_err(|e| Error::BadRequest(e.to_string()))?;
    merge_top_level(&mut merged, patch, &["name", "kind"])?;
    let spec: AgentSpec = serde_json::from_value(merged)
        .map_err(|e| Error::BadRequest(format!("the body is not valid: {e}")))?;
    // Unlike a trigger's signing secret, an agent's credential goes out with its calls: a
    // project-limited key that could change such an agent's `config` could send the credential
    // wherever it liked, so it may not change the agent at all.
    let v = validate(spec, may_use_credentials)?;
    let row = tx
        .query_one(
            &format!(
                "UPDATE agents SET name = $4, description = $5, kind = $6, config = $7, \
                     credential_id = $8, max_attempts = $9, timeout_seconds = $10, \
                     max_concurrency = $11, concurrency_key = $12, max_concurrency_per_key = $13, \
                     priority = $14, \
                     updated_at = now() \
                 WHERE tenant_id = $1 AND project_id = $2 AND id = $3 RETURNING {COLUMNS}"
            ),
            &[
                &tenant_id,
                &project_id,
                &id,
                &v.name,
                &v.description,
                &v.kind.as_str(),
                &v.config,
                &v.credential_id,
                &v.max_attempts,
                &v.timeout_seconds,
                &v.max_concurrency,
                &v.concurrency_key,
                &v.max_concurrency_per_key,
                &v.priority,
            ],
        )
        .await
        .map_err(|e| constraint(e, "agent"))?;
    tx.commit().await?;
    Ok(from_row(&row)?)
}

/// The names of the tenant's agents among `ids`, by id (agents that are gone are left out).
pub async fn names(
    client: &impl GenericClient,
    tenant_id: &str,
    ids: &[String],
) -> Result<std::collections::HashMap<String, String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, name FROM agents WHERE tenant_id = $1 AND id = ANY($2)",
            &[&tenant_id, &ids],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// The tenant's agents within `projects` (all when `None`) as `(id, name, project id)`, oldest
/// first: what a key may run.
pub async fn runnable(
    client: &impl GenericClient,
    tenant_id: &str,
    projects: Option<&[String]>,
) -> Result<Vec<(String, String, String)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, name, project_id FROM agents WHERE tenant_id = $1 \
               AND ($2::text[] IS NULL OR project_id = ANY($2)) ORDER BY created_at, id",
            &[&tenant_id, &projects],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Deletes the agent and its triggers. Its runs stay, as history.
pub async fn delete(
    client: &impl GenericClient,
    tenant_id: &str,
    project_id: &str,
    id: &str,
) -> Result<(), Error> {
    let n = client
        .execute(
            "DELETE FROM agents WHERE tenant_id = $1 AND project_id = $2 AND id = $3",
            &[&tenant_id, &project_id, &id],
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

    fn spec(v: Value) -> AgentSpec {
        serde_json::from_value(v).expect("deserialises")
    }

    #[test]
    fn a_limited_key_cannot_name_a_credential_anywhere() {
        let top = spec(
            json!({"name": "a", "kind": "http", "credentialReferenceId": "c",
            "config": {"url": "https://agent.example/run"}}),
        );
        assert!(matches!(validate(top, false), Err(Error::Forbidden(_))));
        let tool = json!({"name": "a", "kind": "openai", "config": {
            "baseUrl": "https://llm.example/v1", "model": "m",
            "tools": [{"name": "t", "url": "https://tool.example/", "credentialReferenceId": "c"}]}});
        assert!(matches!(
            validate(spec(tool.clone()), false),
            Err(Error::Forbidden(_))
        ));
        assert!(validate(spec(tool), true).is_ok());
    }

    #[test]
    fn config_is_checked_against_the_kind() {
        assert!(check_config(AgentKind::Echo, &json!({"delayMs": 5})).is_ok());
        assert!(check_config(AgentKind::Echo, &json!({"model": "x"})).is_err());
        assert!(
            check_config(
                AgentKind::Openai,
                &json!({"baseUrl": "https://api.openai.com/v1", "model": "gpt-4o-mini", "temperature": 0.2})
            )
            .is_ok()
        );
        assert!(check_config(AgentKind::Openai, &json!({"model": "m"})).is_err());
        assert!(
            check_config(
                AgentKind::Openai,
                &json!({"baseUrl": "ftp://x", "model": "m"})
            )
            .is_err()
        );
        assert!(
            check_config(
                AgentKind::Openai,
                &json!({"baseUrl": "http://x", "model": "m", "temperature": 3})
            )
            .is_err()
        );
        assert!(
            check_config(
                AgentKind::Http,
                &json!({"url": "https://agent.example/run"})
            )
            .is_ok()
        );
        assert!(
            check_config(
                AgentKind::Http,
                &json!({"url": "https://a", "timeoutMs": 1})
            )
            .is_err()
        );
    }
}
