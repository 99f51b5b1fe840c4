//! Relay's daemon as a library: the `relay` binary is a thin command line over these modules,
//! and the integration tests drive the same code.

pub mod clock;
pub mod config;
pub mod dataplane;
pub mod http;
pub mod io;
pub mod liveness;
pub mod metrics;
pub mod policers;
pub mod policy;
pub mod preflight;
pub mod room;
pub mod rtp;
pub mod stun;
pub mod top;
pub mod turn;
