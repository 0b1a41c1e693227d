//! The OpenAPI 3.1 document, generated from the handlers' annotations by utoipa: the routes are
//! registered through `OpenApiRouter`, so a route cannot exist without its documentation. Served
//! at `/openapi.json`, with Swagger UI at `/docs` from assets compiled into the binary (no CDN).

use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, SecurityRequirement};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;
use crate::routes::manage::{
    agents, api_keys, credentials, deliveries, projects, tenants, triggers, webhook_endpoints,
};
use crate::routes::{apps, events, hooks, invoke, relevance, runs, writer};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard",
        description = "API triggers for AI agents: invoke agents over HTTP, collect results by \
                       waiting, polling or signed webhooks, and manage tenants, projects, agents, \
                       triggers, API keys and credentials.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&Security),
)]
struct ApiDoc;

/// Declares how to authenticate: a bearer API key (or the admin token), or `x-api-key`.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`sy_…`), or the admin token for tenant management.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKeyHeader",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
        doc.security = Some(vec![
            SecurityRequirement::new("bearerAuth", Vec::<String>::new()),
            SecurityRequirement::new("apiKeyHeader", Vec::<String>::new()),
        ]);
    }
}

/// Every documented route.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(runs::create, runs::list))
        .routes(routes!(runs::get))
        .routes(routes!(events::follow))
        .routes(routes!(events::wait))
        .routes(routes!(runs::cancel))
        .routes(routes!(invoke::invoke))
        .routes(routes!(hooks::receive))
        .routes(routes!(relevance::trigger))
        .routes(routes!(apps::create, apps::list))
        .routes(routes!(apps::get))
        .routes(routes!(apps::cancel))
        .routes(routes!(apps::apps))
        .routes(routes!(writer::run))
        .routes(routes!(writer::create_job))
        .routes(routes!(writer::get_job))
        .routes(routes!(tenants::list, tenants::create))
        .routes(routes!(tenants::get, tenants::update, tenants::delete))
        .routes(routes!(projects::list, projects::create))
        .routes(routes!(projects::get, projects::update, projects::delete))
        .routes(routes!(agents::list, agents::create))
        .routes(routes!(agents::get, agents::update, agents::delete))
        .routes(routes!(triggers::list, triggers::create))
        .routes(routes!(triggers::get, triggers::update, triggers::delete))
        .routes(routes!(triggers::list_invocations))
        .routes(routes!(triggers::get_invocation))
        .routes(routes!(triggers::test))
        .routes(routes!(api_keys::list, api_keys::create))
        .routes(routes!(api_keys::get, api_keys::revoke))
        .routes(routes!(deliveries::list))
        .routes(routes!(deliveries::get))
        .routes(routes!(deliveries::redeliver))
        .routes(routes!(deliveries::recover))
        .routes(routes!(webhook_endpoints::list, webhook_endpoints::create))
        .routes(routes!(
            webhook_endpoints::get,
            webhook_endpoints::update,
            webhook_endpoints::delete
        ))
        .routes(routes!(webhook_endpoints::secret))
        .routes(routes!(webhook_endpoints::rotate))
        .routes(routes!(webhook_endpoints::events))
        .routes(routes!(webhook_endpoints::recover))
        .routes(routes!(webhook_endpoints::tenant_secret))
        .routes(routes!(webhook_endpoints::rotate_tenant_secret))
        .routes(routes!(credentials::list, credentials::create))
        .routes(routes!(
            credentials::get,
            credentials::update,
            credentials::delete
        ))
}

/// `/openapi.json` and the Swagger UI at `/docs`.
pub fn docs(doc: Document) -> Router<AppState> {
    SwaggerUi::new("/docs").url("/openapi.json", doc).into()
}

/// The document alone (for `switchyard-ingress openapi` and tests).
pub fn document() -> Document {
    routes().into_openapi()
}
