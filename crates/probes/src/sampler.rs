//! OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, as the BPF programs apply them where each
//! span starts (the decision travels with the span context to children and, through
//! traceparent flags, to other services).

/// A sampler from the OpenTelemetry SDK configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    pub root: RootSampler,
    /// parentbased_*: a span with a parent follows the parent's decision.
    pub parent_based: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    /// Keeps this fraction of traces, decided by the trace id alone so every service agrees.
    TraceIdRatio(f64),
}

impl Default for Sampler {
    /// The SDK default: parentbased_always_on.
    fn default() -> Self {
        Sampler { root: RootSampler::AlwaysOn, parent_based: true }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    #[error(
        "OTEL_TRACES_SAMPLER={0}: not supported (use always_on, always_off, traceidratio, \
         parentbased_always_on, parentbased_always_off or parentbased_traceidratio)"
    )]
    Unknown(String),
    #[error("OTEL_TRACES_SAMPLER_ARG={0}: not a ratio between 0 and 1")]
    Ratio(String),
}

impl Sampler {
    /// From the two variables' values; a missing ratio argument means 1.0, as the spec says.
    pub fn from_env(name: Option<&str>, arg: Option<&str>) -> Result<Self, SamplerError> {
        let ratio = || -> Result<f64, SamplerError> {
            match arg.map(str::trim).filter(|a| !a.is_empty()) {
                None => Ok(1.0),
                Some(a) => match a.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(SamplerError::Ratio(a.to_string())),
                },
            }
        };
        let name = name.map(str::trim).filter(|n| !n.is_empty());
        let (root, parent_based) = match name.unwrap_or("parentbased_always_on") {
            "always_on" => (RootSampler::AlwaysOn, false),
            "always_off" => (RootSampler::AlwaysOff, false),
            "traceidratio" => (RootSampler::TraceIdRatio(ratio()?), false),
            "parentbased_always_on" => (RootSampler::AlwaysOn, true),
            "parentbased_always_off" => (RootSampler::AlwaysOff, true),
            "parentbased_traceidratio" => (RootSampler::TraceIdRatio(ratio()?), true),
            other => return Err(SamplerError::Unknown(other.to_string())),
        };
        Ok(Sampler { root, parent_based })
    }

    /// (kind, threshold) as the programs' rodata holds them: a trace is kept by the ratio
    /// sampler when the low 56 bits of its id are below the threshold.
    pub(crate) fn rodata(&self) -> (u8, u64) {
        match self.root {
            RootSampler::AlwaysOn => (0, 0),
            RootSampler::AlwaysOff => (1, 0),
            RootSampler::TraceIdRatio(r) => (2, (r * (1u64 << 56) as f64) as u64),
        }
    }
}

impl std::fmt::Display for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.parent_based {
            f.write_str("parentbased_")?;
        }
        match self.root {
            RootSampler::AlwaysOn => f.write_str("always_on"),
            RootSampler::AlwaysOff => f.write_str("always_off"),
            RootSampler::TraceIdRatio(r) => write!(f, "traceidratio {r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_parent_based_always_on() {
        assert_eq!(Sampler::from_env(None, None), Ok(Sampler::default()));
        assert_eq!(Sampler::default().to_string(), "parentbased_always_on");
    }

    #[test]
    fn every_sdk_sampler_name() {
        let s = Sampler::from_env(Some("traceidratio"), Some("0.25")).unwrap();
        assert_eq!((s.root, s.parent_based), (RootSampler::TraceIdRatio(0.25), false));
        assert_eq!(s.rodata(), (2, 1 << 54));
        let s = Sampler::from_env(Some("parentbased_traceidratio"), None).unwrap();
        assert_eq!(s.root, RootSampler::TraceIdRatio(1.0), "no argument: 1.0");
        assert!(!Sampler::from_env(Some("always_off"), None).unwrap().parent_based);
        assert_eq!(Sampler::from_env(Some("parentbased_always_off"), None).unwrap().rodata().0, 1);
    }

    #[test]
    fn bad_settings_are_named() {
        assert_eq!(
            Sampler::from_env(Some("jaeger_remote"), None),
            Err(SamplerError::Unknown("jaeger_remote".into()))
        );
        assert_eq!(
            Sampler::from_env(Some("traceidratio"), Some("1.5")),
            Err(SamplerError::Ratio("1.5".into()))
        );
    }
}
