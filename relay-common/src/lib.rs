//! Types shared by the XDP program (`relay-ebpf`) and the daemon (`relay`).
//!
//! Every map key and value is defined once, here: `#[repr(C)]`, padding explicit, byte order
//! written on each field, size asserted at compile time, so that the kernel and userspace can
//! never disagree about a layout.
#![no_std]

pub mod csum;
pub mod flow;
pub mod parse;
pub mod token_bucket;
pub mod verdict;

pub use token_bucket::TokenBucket;
pub use verdict::{Counters, Verdict};
