pub mod health;
pub mod invoke;
pub mod manage;
pub mod runs;
