//! HTTP routes. Handlers parse and validate at the edge, then call the pipeline.

pub mod health;
pub mod runs;
