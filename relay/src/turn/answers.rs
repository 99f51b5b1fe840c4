//! What the server answered, for metrics: responses by method and outcome (a bounded
//! table: STUN/TURN methods times the error codes RFC 8656 and RFC 8489 define), and how
//! long allocations took to set up, from the authenticated Allocate to its success (the
//! relayed sockets bound) in fixed buckets.

use std::{collections::HashMap, time::Duration};

use crate::stun::{Class, Message, Method, attr};

/// Upper bounds of the setup-time buckets, seconds.
pub const SETUP_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Allocation setup times: per bucket (the last is everything above), their sum, count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SetupTimes {
    pub buckets: [u64; SETUP_BUCKETS.len() + 1],
    pub sum_secs: f64,
    pub count: u64,
}

impl SetupTimes {
    pub fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = SETUP_BUCKETS
            .iter()
            .position(|upper| secs <= *upper)
            .unwrap_or(SETUP_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum_secs += secs;
        self.count += 1;
    }
}

/// Responses sent, by method and code (200 for a success).
#[derive(Clone, Debug, Default)]
pub struct Answers(HashMap<(Method, u16), u64>);

impl Answers {
    /// Counts the response `data` (a STUN message the server built; anything else, or an
    /// indication, is not an answer).
    pub fn count(&mut self, data: &[u8]) {
        let Ok(m) = Message::decode(data) else { return };
        let code = match m.class() {
            Class::Success => 200,
            Class::Error => m
                .get(attr::ERROR_CODE)
                .and_then(|v| attr::decode_error_code(v).ok())
                .map_or(0, |(code, _)| code),
            Class::Request | Class::Indication => return,
        };
        *self.0.entry((m.method(), code)).or_default() += 1;
    }

    /// `(method, code, responses)`, the method by its RFC name.
    pub fn iter(&self) -> impl Iterator<Item = (String, u16, u64)> + '_ {
        self.0
            .iter()
            .map(|((method, code), n)| (method.to_string(), *code, *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{MessageBuilder, TransactionId};

    #[test]
    fn answers_are_counted_by_method_and_code() {
        let mut a = Answers::default();
        let tid: TransactionId = [7; 12];
        let ok = MessageBuilder::new(Class::Success, Method::ALLOCATE, tid).build();
        let mut refused = MessageBuilder::new(Class::Error, Method::ALLOCATE, tid);
        refused.add_error_code(401, "Unauthorized");
        let refused = refused.build();
        let indication = MessageBuilder::new(Class::Indication, Method::DATA, tid).build();
        for data in [&ok, &refused, &refused, &indication] {
            a.count(data);
        }
        a.count(b"not stun");
        let mut got: Vec<_> = a.iter().collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("Allocate".to_owned(), 200, 1),
                ("Allocate".to_owned(), 401, 2)
            ]
        );
    }

    #[test]
    fn setup_times_fall_in_their_buckets() {
        let mut s = SetupTimes::default();
        s.observe(Duration::from_micros(300));
        s.observe(Duration::from_millis(3));
        s.observe(Duration::from_secs(2));
        assert_eq!(s.buckets[0], 1, "under 0.5 ms");
        assert_eq!(s.buckets[3], 1, "2.5 to 5 ms");
        assert_eq!(s.buckets[SETUP_BUCKETS.len()], 1, "above 1 s");
        assert_eq!(s.count, 3);
        assert!((s.sum_secs - 2.0033).abs() < 1e-9);
    }
}
