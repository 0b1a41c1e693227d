pub mod apps;
pub mod events;
pub mod health;
pub mod hooks;
pub mod invoke;
pub mod manage;
pub mod relevance;
pub mod runs;
