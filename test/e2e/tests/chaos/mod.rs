//! The chaos suite: one test per fault, injected from outside the project
//! (kill, SIGSTOP, a locked or stopped store, a skewed clock, hostile
//! servers and documents, a low fd limit). Each test asserts the bound
//! that docs/monitoring.md's guarantees table states for its fault.

mod clock_skew;
mod corrupt_state;
mod cut_off;
mod failover;
mod fd_limit;
mod hanging_share;
mod hostile_documents;
mod hostile_servers;
mod metric_lines;
mod postgres;
mod shutdown;
mod sqlite_new_file;
mod store_outage;
