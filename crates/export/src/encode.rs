//! Spans to the OTLP protobuf model: one ResourceSpans per process, since one agent speaks for
//! many services.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use trace::{AttributeValue, ProcessResource, SpanKind};

fn value(v: AttributeValue) -> AnyValue {
    let value = match v {
        AttributeValue::String(s) => any_value::Value::StringValue(s),
        AttributeValue::Int(i) => any_value::Value::IntValue(i),
        AttributeValue::Bool(b) => any_value::Value::BoolValue(b),
    };
    AnyValue { value: Some(value) }
}

fn key_value(key: &str, v: AttributeValue) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(value(v)) }
}

/// Moves the span into its protobuf form: no string is copied but the attribute keys.
fn span(s: trace::Span) -> Span {
    let kind = match s.kind {
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Internal => span::SpanKind::Internal,
    };
    let status = match &s.status {
        trace::Status::Unset => None,
        trace::Status::Error { message } => {
            Some(Status { code: status::StatusCode::Error as i32, message: message.clone() })
        }
    };
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name,
        kind: kind as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: s.attributes.into_iter().map(|kv| key_value(kv.key, kv.value)).collect(),
        status,
        trace_state: s.trace_state,
        ..Default::default()
    }
}

/// Builds one request from spans in arrival order, grouped by their process resource.
pub fn export_request(
    spans: Vec<(Arc<ProcessResource>, trace::Span)>,
) -> ExportTraceServiceRequest {
    let mut groups: Vec<(Arc<ProcessResource>, Vec<Span>)> = Vec::new();
    for (resource, s) in spans {
        match groups.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &resource) || r.pid == resource.pid) {
            Some((_, list)) => list.push(span(s)),
            None => groups.push((resource, vec![span(s)])),
        }
    }
    let resource_spans = groups
        .into_iter()
        .map(|(resource, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: resource
                    .attributes
                    .iter()
                    .map(|(k, v)| key_value(k, v.clone()))
                    .collect(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "gotel".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace::{KeyValue as Kv, Status as St};

    fn resource(pid: u32, name: &str) -> Arc<ProcessResource> {
        Arc::new(ProcessResource { pid, attributes: vec![("service.name".into(), name.into())] })
    }

    fn a_span(id: u8, status: St) -> trace::Span {
        trace::Span {
            trace_id: [id; 16],
            span_id: [id; 8],
            parent_span_id: None,
            name: "GET /x".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 10,
            end_unix_nanos: 20,
            attributes: vec![Kv::new("http.response.status_code", 500)],
            status,
            trace_state: String::new(),
        }
    }

    #[test]
    fn groups_by_process_and_maps_every_field() {
        let (a, b) = (resource(1, "a"), resource(2, "b"));
        let err = St::Error { message: String::new() };
        let req = export_request(vec![
            (a.clone(), a_span(1, St::Unset)),
            (b.clone(), a_span(2, err)),
            (a.clone(), a_span(3, St::Unset)),
        ]);
        assert_eq!(req.resource_spans.len(), 2);
        let first = &req.resource_spans[0];
        let spans = &first.scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(first.resource.as_ref().unwrap().attributes[0].key, "service.name");
        assert_eq!(spans[0].trace_id, vec![1; 16]);
        assert_eq!(spans[0].parent_span_id, Vec::<u8>::new());
        assert_eq!(spans[0].kind, span::SpanKind::Server as i32);
        assert_eq!((spans[0].start_time_unix_nano, spans[0].end_time_unix_nano), (10, 20));
        assert!(spans[0].status.is_none());
        let b_span = &req.resource_spans[1].scope_spans[0].spans[0];
        assert_eq!(b_span.status.as_ref().unwrap().code, status::StatusCode::Error as i32);
        assert_eq!(
            b_span.attributes[0].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(500))
        );
    }
}
