//! The capabilities gotel runs with, checked before anything privileged: without CAP_BPF and
//! CAP_PERFMON nothing can be traced, so gotel says so and exits; without one of the others
//! it says what that turns off and traces on.

use anyhow::bail;

/// A capability gotel uses, and what is lost without it.
struct Needed {
    bit: u32,
    name: &'static str,
    without: Option<&'static str>,
}

/// None in `without`: nothing runs without it.
const NEEDED: &[Needed] = &[
    Needed { bit: 39, name: "CAP_BPF", without: None },
    Needed { bit: 38, name: "CAP_PERFMON", without: None },
    Needed {
        bit: 19,
        name: "CAP_SYS_PTRACE",
        without: Some(
            "processes of other users: their /proc/PID/exe and environment (OTEL_SERVICE_NAME) \
             cannot be read",
        ),
    },
    Needed {
        bit: 2,
        name: "CAP_DAC_READ_SEARCH",
        without: Some("executables this user may not read cannot be analysed"),
    },
    Needed {
        bit: 12,
        name: "CAP_NET_ADMIN",
        without: Some(
            "propagation at the socket layer (traceparent injection, TCP options, the \
             connection map across hosts): traces do not continue on other hosts",
        ),
    },
];

const CAP_SYS_ADMIN: u32 = 21;

/// The effective capability set of `status` (/proc/self/status).
fn effective(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// What to say about `caps`: an error when nothing can run, else a warning per capability
/// missing.
fn judge(caps: u64) -> Result<Vec<String>, String> {
    let has = |bit: u32| caps & (1 << bit) != 0;
    if has(CAP_SYS_ADMIN) {
        return Ok(Vec::new());
    }
    let fatal: Vec<&str> =
        NEEDED.iter().filter(|n| n.without.is_none() && !has(n.bit)).map(|n| n.name).collect();
    if !fatal.is_empty() {
        return Err(format!(
            "gotel needs CAP_BPF and CAP_PERFMON to load and attach its probes (missing: {}); \
             run as root or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH \
             and CAP_NET_ADMIN",
            fatal.join(", ")
        ));
    }
    Ok(NEEDED
        .iter()
        .filter(|n| !has(n.bit))
        .filter_map(|n| n.without.map(|w| format!("without {}: {w}", n.name)))
        .collect())
}

/// Checks this process's capabilities, saying what any missing one turns off.
pub fn check() -> anyhow::Result<()> {
    let Some(caps) = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| effective(&s))
    else {
        tracing::warn!("cannot read this process's capabilities; trying anyway");
        return Ok(());
    };
    match judge(caps) {
        Ok(warnings) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            Ok(())
        }
        Err(e) => bail!(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_FIVE: u64 = 0x0000_00c0_0008_1004;

    #[test]
    fn root_and_the_five_capabilities_need_no_word() {
        assert_eq!(judge(u64::MAX), Ok(vec![]));
        assert_eq!(judge(ALL_FIVE), Ok(vec![]));
        assert_eq!(effective("Name:\tgotel\nCapEff:\t000000c000081004\n"), Some(ALL_FIVE));
    }

    #[test]
    fn a_missing_capability_is_named_with_what_it_turns_off() {
        let e = judge(ALL_FIVE & !(1 << 38)).unwrap_err();
        assert!(e.contains("missing: CAP_PERFMON"), "{e}");
        let w = judge(ALL_FIVE & !(1 << 12)).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("without CAP_NET_ADMIN: propagation"), "{}", w[0]);
    }
}
