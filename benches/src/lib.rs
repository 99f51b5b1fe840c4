//! Relay's benchmark harness: a load generator that speaks TURN as a client and plays the
//! peer (or a camera publishing into a room, and its subscribers), and the scenario runner
//! that drives it against Relay, coturn, GStreamer and the ceiling.
#![expect(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "packet counts, rates and times become f64 figures and back: far below 2^52, never negative"
)]

pub mod cpu;
pub mod generator;
pub mod programs;
pub mod receiver;
pub mod report;
pub mod runner;
pub mod systems;
pub mod trial;
pub mod wire;
