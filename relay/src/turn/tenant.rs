//! Tenants: who a user belongs to, for the rate limit the whole tenant shares (a hospital,
//! a school). Static users are named; TURN REST usernames (`EXPIRY:USER`, as coturn and the
//! REST API draft use) are matched by a pattern on their user part.

use relay_common::police::Limit;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    /// Static users (`--user NAME:...`) of this tenant, by name.
    pub users: Vec<String>,
    /// Patterns on the user part of REST usernames: `*` matches any run of characters.
    pub rest_users: Vec<String>,
    pub limit: Limit,
}

/// The index in `tenants` of the tenant `username` belongs to: a static user by name, else
/// a REST username by the first pattern matching its user part. The first tenant listed
/// wins.
pub fn tenant_of(tenants: &[Tenant], username: &str) -> Option<usize> {
    if let Some(i) = tenants
        .iter()
        .position(|t| t.users.iter().any(|u| u == username))
    {
        return Some(i);
    }
    let user = rest_user(username)?;
    tenants.iter().position(|t| {
        t.rest_users
            .iter()
            .any(|p| glob(p.as_bytes(), user.as_bytes()))
    })
}

/// The user part of a TURN REST username (`EXPIRY:USER`, the expiry in digits); `None`
/// for any other username.
pub fn rest_user(username: &str) -> Option<&str> {
    let (expiry, user) = username.split_once(':')?;
    (!expiry.is_empty() && expiry.bytes().all(|b| b.is_ascii_digit())).then_some(user)
}

/// Whether `text` matches `pattern`, where `*` matches any run of bytes (greedy with
/// backtracking to the last star: linear for the patterns operators write).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, users: &[&str], rest: &[&str]) -> Tenant {
        Tenant {
            name: name.to_owned(),
            users: users.iter().map(|s| (*s).to_owned()).collect(),
            rest_users: rest.iter().map(|s| (*s).to_owned()).collect(),
            limit: Limit::default(),
        }
    }

    #[test]
    fn static_users_by_name_rest_users_by_pattern() {
        let tenants = [
            tenant("north", &["alice"], &["ward-*", "*@north"]),
            tenant("school", &["bob"], &["class*room-*"]),
        ];
        assert_eq!(tenant_of(&tenants, "alice"), Some(0));
        assert_eq!(tenant_of(&tenants, "bob"), Some(1));
        assert_eq!(tenant_of(&tenants, "carol"), None);
        assert_eq!(tenant_of(&tenants, "1700000000:ward-7"), Some(0));
        assert_eq!(tenant_of(&tenants, "1700000000:nurse@north"), Some(0));
        assert_eq!(tenant_of(&tenants, "1700000000:classroom-3"), Some(1));
        assert_eq!(tenant_of(&tenants, "1700000000:class-b-room-3"), Some(1));
        assert_eq!(tenant_of(&tenants, "1700000000:ward"), None);
        // Not a REST username: the part before ':' is no timestamp.
        assert_eq!(tenant_of(&tenants, "x:ward-7"), None);
        assert_eq!(tenant_of(&tenants, ":ward-7"), None);
    }

    #[test]
    fn glob_matches_stars_anywhere() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "abc", true),
            ("a*c", "abbbc", true),
            ("a*c", "abcd", false),
            ("*b*", "abc", true),
            ("a**", "a", true),
            ("abc", "abc", true),
            ("abc", "ab", false),
            ("", "a", false),
            ("*a*a*a", "aaaa", true),
            ("*a*a*a", "aab", false),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p:?} {t:?}");
        }
    }
}
