//! PostgreSQL: the client tools and their environment (`db`), `pg_dump` (`dump`), the
//! in-process libpq connection restore loads rows over (`libpq`), and the advisory-lock
//! sessions that keep two runs of one database apart (`lock`).

pub mod db;
pub mod dump;
pub mod libpq;
pub mod lock;
