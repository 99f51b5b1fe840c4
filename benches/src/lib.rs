//! Relay's benchmark harness: a load generator that speaks TURN as a client and plays the
//! peer, and the scenario runner that drives it against Relay, coturn and the ceiling.
