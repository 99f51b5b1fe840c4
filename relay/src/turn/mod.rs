//! The TURN server (RFC 8656): a sans-IO state machine and the pieces it is made of.

mod allocation;
pub mod answers;
pub mod auth;
mod authorize;
pub mod client;
pub mod policy;
pub mod ports;
mod reflection;
mod server;
mod snapshot;
pub mod tenant;
#[cfg(test)]
mod tests;

pub use server::{ChannelFlow, ClientTuple, Config, Output, Server, Stats, Transport};
pub use snapshot::{Snapshot, SnapshotError, write_atomic};
