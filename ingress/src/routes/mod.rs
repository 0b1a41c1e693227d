pub mod health;
pub mod manage;
pub mod runs;
