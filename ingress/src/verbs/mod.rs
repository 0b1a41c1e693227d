//! The verb layer: what the ingress does, as typed verbs with no HTTP in them. A door (the
//! native API, ChatHive, Relevance, the agent-app API, Writer, inbound webhooks, the Inkeep
//! management API, the console) parses its wire format into these types, calls a verb, and
//! renders the answer (or the [`error::VerbError`]) in its own shape. Doors never call each
//! other; what several of them render alike is in `crate::render`.

pub mod accept;
pub mod cancel;
pub mod error;
pub mod follow;
pub mod inbound;
pub mod trigger;
pub mod view;
