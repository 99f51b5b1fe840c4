//! Shared by the `cargo xtask` commands and Relay's integration tests.

pub mod command;
pub mod coturn;
pub mod edge;
pub mod gstreamer;
pub mod image;
pub mod lab;
