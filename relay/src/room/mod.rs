//! Media rooms: publishers and subscribers of RTP/SRTP whose encryption Relay does not
//! terminate (cameras, encoders, SIP phones, GStreamer), as a sans-IO core like the TURN
//! server's.

pub mod api;
mod authorize;
mod core;
mod snapshot;
#[cfg(test)]
mod tests;

pub use core::{Config, Destination, Output, Rooms, Route, RouteCounters, Source, Stats};
pub use snapshot::RoomsSnapshot;
