//! Versions as the database orders them: Go toolchains ("go1.26.8", "1.26.8") and module
//! versions ("v1.60.0", "v1.61.0-pre"), compared numerically.

use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub numbers: [u64; 3],
    /// A pre-release sorts before its release ("-rc1", "rc1").
    pub pre: Option<String>,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_start_matches("go").trim_start_matches('v');
        let s = s.split([' ', '+']).next()?;
        let (core, pre) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
            Some(i) => (&s[..i], Some(s[i..].trim_start_matches('-').to_string())),
            None => (s, None),
        };
        let mut numbers = [0u64; 3];
        let mut parts = core.split('.').filter(|p| !p.is_empty());
        for n in &mut numbers {
            match parts.next() {
                Some(p) => *n = p.parse().ok()?,
                None => break,
            }
        }
        (numbers != [0, 0, 0] || core.starts_with('0')).then_some(Version { numbers, pre })
    }

    /// Same major and minor: patch releases keep struct layouts in practice.
    pub fn same_minor(&self, other: &Version) -> bool {
        self.numbers[..2] == other.numbers[..2]
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.numbers.cmp(&other.numbers).then_with(|| match (&self.pre, &other.pre) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(a), Some(b)) => a.cmp(b),
        })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn parses_go_and_module_versions() {
        assert_eq!(v("go1.26.8").numbers, [1, 26, 8]);
        assert_eq!(v("1.22").numbers, [1, 22, 0]);
        assert_eq!(v("v1.60.1").numbers, [1, 60, 1]);
        assert_eq!(v("go1.23rc1").pre.as_deref(), Some("rc1"));
        assert_eq!(v("v1.61.0-pre").pre.as_deref(), Some("pre"));
        assert!(Version::parse("devel").is_none());
        assert!(Version::parse("").is_none());
    }

    #[test]
    fn orders_numerically_with_prereleases_first() {
        assert!(v("go1.9") < v("go1.10"));
        assert!(v("v1.9.9") < v("v1.10.0"));
        assert!(v("go1.23rc1") < v("go1.23.0"));
        assert!(v("v1.2.3") == v("1.2.3"));
        assert!(v("1.26.8").same_minor(&v("1.26.10")));
        assert!(!v("1.26.8").same_minor(&v("1.27.0")));
    }
}
