//! Ring-buffer samples -> spans with wall-clock times and their process's resource. The kind in
//! each event's header names the instrumentation that wrote it, and that instrumentation turns
//! it into a span with its semantic conventions.

use std::sync::Arc;

use trace::{DurationMetric, MonotonicClock, ProcessResource, ResourceCache, Span};

use crate::event::{self, DecodeError};
use crate::{instrumentations, Events, SpanOptions};

/// Why a sample gave no span.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error(transparent)]
    Unreadable(#[from] DecodeError),
    /// Values that cannot be what the fields hold: the sign of wrong offsets (an unknown
    /// version guessed from the database, say).
    #[error("pid {pid}: {why}")]
    Implausible { pid: u32, why: String },
}

/// One event's span, with its process's resource.
#[derive(Debug, PartialEq)]
pub struct Assembled {
    pub resource: Arc<ProcessResource>,
    pub span: Span,
    /// The sampler kept it: it is exported. Else it only counts in metrics.
    pub sampled: bool,
    /// The histogram its duration counts in.
    pub metric: Option<&'static DurationMetric>,
}

pub struct Assembler {
    clock: MonotonicClock,
    resources: ResourceCache,
    /// Every instrumentation's events, at the index of their kind.
    by_kind: Vec<Option<Events>>,
    options: SpanOptions,
}

impl Assembler {
    pub fn new(resources: ResourceCache, options: SpanOptions) -> Self {
        let mut by_kind = Vec::new();
        for events in instrumentations::ALL.iter().filter_map(|i| i.events()) {
            let at = events.kind as usize;
            if by_kind.len() <= at {
                by_kind.resize(at + 1, None);
            }
            by_kind[at] = Some(events);
        }
        Assembler { clock: MonotonicClock::new(), resources, by_kind, options }
    }

    pub fn assemble(&mut self, bytes: &[u8]) -> Result<Assembled, EventError> {
        let (kind, sampled) = event::kind(bytes)?;
        let events = self
            .by_kind
            .get(kind as usize)
            .copied()
            .flatten()
            .ok_or(DecodeError::UnknownKind(kind))?;
        let need = events.size.max(event::HEADER_SIZE);
        if bytes.len() < need {
            return Err(DecodeError::TooShort { kind, len: bytes.len(), need }.into());
        }
        event::prefetch(&bytes[..need]);
        let pid = event::Fields(bytes).u32(4); // span_header.pid
        self.clock.refresh_if_stale();
        let span = (events.span)(bytes, &self.clock, &self.options)
            .map_err(|why| EventError::Implausible { pid, why })?;
        Ok(Assembled { resource: self.resources.get(pid), span, sampled, metric: events.metric })
    }

    pub fn resources(&mut self) -> &mut ResourceCache {
        &mut self.resources
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instrumentations::net_http::server::event::{encode, tests::sample};

    fn assembler() -> Assembler {
        let resources = ResourceCache::new(trace::AgentIdentity::from_env(None));
        Assembler::new(resources, SpanOptions::default())
    }

    #[test]
    fn an_event_becomes_its_instrumentations_span() {
        let a = assembler().assemble(&encode(&sample())).unwrap();
        assert_eq!(a.span.name, "GET /users/{id}");
        assert_eq!(a.span.trace_id, [7; 16]);
        assert_eq!(a.resource.pid, 42);
        assert!(a.sampled);
        assert_eq!(a.metric.unwrap().name, "http.server.request.duration");
    }

    #[test]
    fn an_unsampled_event_is_its_span_marked_so() {
        let mut bytes = encode(&sample());
        let kind = event::Fields(&bytes).u32(0) | event::UNSAMPLED;
        bytes[..4].copy_from_slice(&kind.to_le_bytes());
        let a = assembler().assemble(&bytes).unwrap();
        assert_eq!((a.span.name.as_ref(), a.sampled), ("GET /users/{id}", false));
    }

    #[test]
    fn short_unknown_and_implausible_events_are_refused() {
        let mut a = assembler();
        let bytes = encode(&sample());
        assert!(matches!(
            a.assemble(&bytes[..100]),
            Err(EventError::Unreadable(DecodeError::TooShort { kind: 1, .. }))
        ));
        let mut unknown = bytes.clone();
        unknown[0] = 99;
        assert_eq!(a.assemble(&unknown), Err(DecodeError::UnknownKind(99).into()));
        assert!(a.assemble(&[]).is_err());
        let mut garbage = sample();
        garbage.method = "\u{1}\u{7f}x".into();
        let err = a.assemble(&encode(&garbage)).unwrap_err();
        assert!(
            matches!(err, EventError::Implausible { pid: 42, ref why } if why.contains("not a method"))
        );
    }
}
