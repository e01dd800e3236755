/* What gotel's gRPC client and server programs both read of grpc-go: its transport stream, whose
 * layout changed twice, and the *status.Status of a finished RPC. */
#pragma once

#include "gotel.h"
#include "traceparent.h"

/* How a stream pointer reaches transport.Stream's fields: grpc up to 1.68 hands out a *Stream;
 * 1.69-1.76 a *ServerStream / *ClientStream embedding a *Stream; 1.77+ one embedding it by value. */
#define STREAM_DIRECT 0
#define STREAM_EMBEDDED_POINTER 1
#define STREAM_EMBEDDED_VALUE 2
const volatile u8 stream_embedding = STREAM_DIRECT;
const volatile u64 off_embedded_stream = 0; /* ServerStream.Stream / ClientStream.Stream */
const volatile u64 off_stream_id = 0; /* Stream.id (uint32) */

/* *status.Status -> s (*spb.Status) -> Code, Message */
const volatile u64 off_status_s = 0;
const volatile u64 off_spb_code = 0;
const volatile u64 off_spb_message = 0;

#define METHOD_CAP 128
#define MESSAGE_CAP 128

/* A stream of one process: where a call or its status waits to be found. */
struct stream_key {
	u32 pid;
	u32 _pad;
	u64 stream;
};

struct grpc_status {
	s32 code;
	u32 _pad;
	u64 message;
	u64 message_len;
};

/* The address of transport.Stream's fields for a stream pointer. */
static __always_inline u64 stream_fields(u64 stream)
{
	if (stream_embedding == STREAM_EMBEDDED_POINTER)
		return read_u64(stream + off_embedded_stream);
	if (stream_embedding == STREAM_EMBEDDED_VALUE)
		return stream + off_embedded_stream;
	return stream;
}

/* Code and message of the *status.Status at `status`; false when there is none to read. */
static __always_inline bool read_grpc_status(u64 status, struct grpc_status *out)
{
	u64 spb = status ? read_u64(status + off_status_s) : 0;
	if (!spb)
		return false;
	bpf_probe_read_user(&out->code, sizeof(out->code), (void *)(spb + off_spb_code));
	out->message = read_u64(spb + off_spb_message);
	out->message_len = read_u64(spb + off_spb_message + 8);
	return true;
}

#define HEADER_FIELD_SIZE 40 /* hpack.HeaderField: Name, Value strings; Sensitive bool */

/* A search of a []hpack.HeaderField for the field named "traceparent", a field per bpf_loop
 * step: a server's incoming metadata, or the metadata a client call sends. */
struct traceparent_search {
	u64 fields;
	s64 len; /* fields to look at */
	bool named; /* a field of that name is there */
	u64 value; /* its value's text, when that has a traceparent's length */
};

static long search_traceparent_field(u32 i, void *ctx)
{
	struct traceparent_search *s = ctx;
	if (i >= s->len)
		return 1;
	struct {
		u64 name, name_len, value, value_len;
	} field = {};
	if (bpf_probe_read_user(&field, sizeof(field),
				(void *)(s->fields + (u64)i * HEADER_FIELD_SIZE)) ||
	    field.name_len != 11)
		return 0;
	char name[11];
	if (bpf_probe_read_user(name, sizeof(name), (void *)field.name) ||
	    __builtin_memcmp(name, "traceparent", 11) != 0)
		return 0;
	s->named = true;
	if (field.value_len >= TRACEPARENT_LEN)
		s->value = field.value;
	return 1;
}

/* Looks for traceparent among the first `max` of the `len` fields at `fields`. */
static __always_inline struct traceparent_search find_traceparent_field(u64 fields, s64 len,
									 u32 max)
{
	struct traceparent_search s = { .fields = fields, .len = len };
	bpf_loop(max, search_traceparent_field, &s, 0);
	return s;
}
