//! Types shared by the XDP program (`relay-ebpf`) and the daemon (`relay`).
//!
//! Every map key and value is defined once, here: `#[repr(C)]`, padding explicit, byte order
//! written on each field, size asserted at compile time, so that the kernel and userspace can
//! never disagree about a layout.
#![no_std]
// The eBPF build needs the atomic intrinsics (see `atomic`).
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    expect(internal_features)
)]

mod atomic;

pub mod csum;
pub mod flow;
pub mod parse;
pub mod permission;
pub mod police;
pub mod room;
pub mod verdict;

pub use verdict::{Counters, Verdict};
