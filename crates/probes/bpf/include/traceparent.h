/* The W3C traceparent of an incoming request, read from its Header map in user memory. Two
 * map layouts exist: buckets (runtime.hmap, Go before 1.24) and swiss tables
 * (internal/runtime/maps.Map, Go 1.24 on). Both are walked with bounded loops; a header map
 * too large for the bounds is searched in part (in buckets: 16 of the array and 2
 * overflow buckets after each; in a swiss table: 224 headers). */
#pragma once

#include "gotel.h"

#define MAP_LAYOUT_NONE 0
#define MAP_LAYOUT_BUCKETS 1
#define MAP_LAYOUT_SWISS 2

const volatile u8 map_layout = MAP_LAYOUT_NONE;
const volatile u64 off_req_header = 0;
/* runtime.hmap */
const volatile u64 off_hmap_b = 0;
const volatile u64 off_hmap_buckets = 0;
/* internal/runtime/maps.Map, table, groupsReference */
const volatile u64 off_swiss_dir_ptr = 0;
const volatile u64 off_swiss_dir_len = 0;
const volatile u64 off_table_groups = 0;
const volatile u64 off_groups_data = 0;
const volatile u64 off_groups_length_mask = 0;

/* map[string][]string: a string is 16 bytes, a slice 24. */
#define BUCKET_KEYS 8
#define BUCKET_ELEMS (8 + 8 * 16)
#define BUCKET_OVERFLOW (BUCKET_ELEMS + 8 * 24)
#define BUCKET_SIZE (BUCKET_OVERFLOW + 8)
#define MIN_TOPHASH 5
#define SWISS_SLOT 40
#define SWISS_GROUP (8 + 8 * SWISS_SLOT)
#define MAX_BUCKETS 16
#define MAX_OVERFLOW 2 /* overflow buckets searched after each bucket of the array */
#define MAX_TABLES 4
#define MAX_GROUPS 32

#define TRACEPARENT_LEN 55

struct incoming {
	struct span_ctx ctx;
	u8 sampled;
	u8 found;
	u64 value; /* address of the header's text, once the search found it */
	u64 state; /* the tracestate header's text, if any */
	u64 state_len;
};

static __always_inline int hex_value(u8 c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Parses "vv-<32 hex trace id>-<16 hex parent id>-<2 hex flags>". */
static __always_inline bool parse_traceparent(const u8 *t, struct incoming *out)
{
	if (t[2] != '-' || t[35] != '-' || t[52] != '-' || (t[0] == 'f' && t[1] == 'f'))
		return false;
	if (hex_value(t[0]) < 0 || hex_value(t[1]) < 0) /* the version: two hex digits too */
		return false;
	u8 any_trace = 0, any_span = 0;
	for (int i = 0; i < 16; i++) {
		int hi = hex_value(t[3 + 2 * i]), lo = hex_value(t[4 + 2 * i]);
		if (hi < 0 || lo < 0)
			return false;
		out->ctx.trace_id[i] = (u8)(hi << 4 | lo);
		any_trace |= out->ctx.trace_id[i];
	}
	for (int i = 0; i < 8; i++) {
		int hi = hex_value(t[36 + 2 * i]), lo = hex_value(t[37 + 2 * i]);
		if (hi < 0 || lo < 0)
			return false;
		out->ctx.span_id[i] = (u8)(hi << 4 | lo);
		any_span |= out->ctx.span_id[i];
	}
	int f_hi = hex_value(t[53]), f_lo = hex_value(t[54]);
	if (f_hi < 0 || f_lo < 0 || !any_trace || !any_span)
		return false;
	out->sampled = (u8)(f_hi << 4 | f_lo) & 1;
	return true;
}

/* Whether an incoming traceparent value of `len` bytes, whose first 56 (as many as it has) are
 * in `text`, is one to continue, parsed into `out`. Version 00 is exactly 55 characters; a
 * later version may add fields after a '-'. No helper calls: the fuzz target in fuzz/ runs it
 * on the host. */
static __always_inline bool accept_traceparent(const u8 *text, u64 len, struct incoming *out)
{
	if (len < TRACEPARENT_LEN)
		return false;
	if (len > TRACEPARENT_LEN &&
	    (text[TRACEPARENT_LEN] != '-' || (text[0] == '0' && text[1] == '0')))
		return false;
	return parse_traceparent(text, out);
}

/* A span context a request already carried, for the client span sending it to link to (the
 * server at the other end continues that one). */
struct span_link {
	u8 trace_id[16];
	u8 span_id[8];
	u8 present;
	u8 sampled;
	u8 _pad[6];
};

/* The link to a traceparent parsed already. */
static __always_inline void link_to(const struct incoming *parsed, struct span_link *out)
{
	__builtin_memcpy(out->trace_id, parsed->ctx.trace_id, sizeof(out->trace_id));
	__builtin_memcpy(out->span_id, parsed->ctx.span_id, sizeof(out->span_id));
	out->sampled = parsed->sampled;
	out->present = 1;
}

/* Parses the 55-character traceparent at `value` (user memory) into `out`. */
static __always_inline void link_traceparent(u64 value, struct span_link *out)
{
	u8 text[TRACEPARENT_LEN];
	struct incoming parsed = {};
	if (!value || bpf_probe_read_user(text, sizeof(text), (void *)value) ||
	    !parse_traceparent(text, &parsed))
		return;
	link_to(&parsed, out);
}

/* One search of a Header map: where to look, and what was found. bpf_loop runs each bucket or
 * group through a callback the verifier checks once, instead of once per unrolled copy: the
 * unrolled walk took half a second to load, which every new executable waited for. */
struct header_search {
	u64 base;  /* the buckets array, or the swiss directory */
	s64 count; /* buckets to visit, or tables in the directory */
	u64 overflow; /* the overflow bucket to visit next, if any */
	u64 value; /* traceparent's text, once found */
	u64 value_len;
	u64 state; /* tracestate's text, if any */
	u64 state_len;
};

static __always_inline bool search_done(struct header_search *s)
{
	return s->value && s->state;
}

/* A bucket or a swiss group, copied in one read (a read costs far more than its bytes, and
 * most requests carry a few headers in one group) into a window (gotel.h): its 320 bytes hold
 * every key and value header of either. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct window_buffer);
} map_chunk_copy SEC(".maps");
_Static_assert(BUCKET_ELEMS + 7 * 24 + 8 <= sizeof(struct window), "a bucket's last value");
_Static_assert(8 + 7 * SWISS_SLOT + 16 + 8 <= sizeof(struct window), "a group's last value");

/* If the key whose string header is at `key` in the copy is "Traceparent" (or "Tracestate"),
 * remembers where the first value of the []string header at `elem` is; it is parsed once,
 * after the search. */
static __always_inline void check_header(const struct window *c, u32 key, u32 elem,
					 struct header_search *out)
{
	u64 ptr = window_u64(c, key), len = window_u64(c, key + 8);
	if (len != 11 && len != 10)
		return;
	char name[11] = {};
	bool parent = len == 11;
	if (bpf_probe_read_user(name, parent ? 11 : 10, (void *)ptr))
		return;
	if (parent ? __builtin_memcmp(name, "Traceparent", 11) != 0
		   : __builtin_memcmp(name, "Tracestate", 10) != 0)
		return;
	u64 values = window_u64(c, elem); /* slice data: first string header */
	struct {
		u64 ptr;
		s64 len;
	} v = {};
	if (!values || bpf_probe_read_user(&v, sizeof(v), (void *)values) || v.len <= 0)
		return;
	if (!parent) {
		out->state = v.ptr;
		out->state_len = v.len;
	} else if (v.len >= TRACEPARENT_LEN) {
		out->value = v.ptr;
		out->value_len = v.len;
	}
}

static __always_inline const struct window *read_chunk(u64 addr)
{
	u32 zero = 0;
	struct window_buffer *buf = bpf_map_lookup_elem(&map_chunk_copy, &zero);
	if (!buf)
		return 0;
	read_window(buf, sizeof(struct window), addr);
	return (const struct window *)buf->w;
}

static __always_inline void search_swiss_group(u64 group, struct header_search *out)
{
	const struct window *c = read_chunk(group);
	if (!c)
		return;
	u64 ctrl = window_u64(c, 0);
	for (int i = 0; i < 8 && !search_done(out); i++) {
		if ((ctrl >> (8 * i)) & 0x80) /* empty or deleted */
			continue;
		check_header(c, 8 + i * SWISS_SLOT, 8 + i * SWISS_SLOT + 16, out);
	}
}

/* Visit `i`: bucket i / (1 + MAX_OVERFLOW) of the array, or the next bucket of its overflow
 * chain. A bucket holds 8 entries and further keys hashed to it go to its overflow chain,
 * which even a map sized for its headers often needs (a third of 26-header requests). One
 * visit per call keeps what the verifier tracks across calls imprecise, so it checks this once
 * (a loop over the chain inside tripled the program's load time). */
static long search_bucket(u32 i, void *ctx)
{
	struct header_search *s = ctx;
	u32 b = i / (1 + MAX_OVERFLOW);
	if (b >= s->count || search_done(s))
		return 1;
	u64 bucket = i % (1 + MAX_OVERFLOW) ? s->overflow : s->base + b * BUCKET_SIZE;
	if (!bucket)
		return 0;
	const struct window *c = read_chunk(bucket);
	if (!c)
		return 1;
	u64 tophash = window_u64(c, 0);
	for (int j = 0; j < 8 && !search_done(s); j++) {
		if (((tophash >> (8 * j)) & 0xff) < MIN_TOPHASH)
			continue;
		check_header(c, BUCKET_KEYS + j * 16, BUCKET_ELEMS + j * 24, s);
	}
	/* A last slot marked emptyRest (0) says no overflow bucket follows: no read for it. */
	s->overflow = tophash >> 56 ? read_u64(bucket + BUCKET_OVERFLOW) : 0;
	return 0;
}

static __always_inline void search_buckets(u64 hmap, struct header_search *s)
{
	u8 b = 0;
	bpf_probe_read_user(&b, 1, (void *)(hmap + off_hmap_b));
	s->base = read_u64(hmap + off_hmap_buckets);
	s->count = b < 4 ? 1 << b : MAX_BUCKETS;
	bpf_loop(MAX_BUCKETS * (1 + MAX_OVERFLOW), search_bucket, s, 0);
}

/* Group `i % MAX_GROUPS` of table `i / MAX_GROUPS`. */
static long search_swiss_table_group(u32 i, void *ctx)
{
	struct header_search *s = ctx;
	u32 t = i / MAX_GROUPS, g = i % MAX_GROUPS;
	if (t >= s->count || search_done(s))
		return 1;
	u64 table = read_u64(s->base + t * 8);
	u64 mask = read_u64(table + off_table_groups + off_groups_length_mask);
	if (g > mask)
		return 0;
	u64 groups = read_u64(table + off_table_groups + off_groups_data);
	search_swiss_group(groups + g * SWISS_GROUP, s);
	return 0;
}

static __always_inline void search_swiss(u64 m, struct header_search *s)
{
	/* dirPtr and dirLen are adjacent words in every Go with swiss tables: one read. */
	u64 dir[2] = {};
	if (off_swiss_dir_len == off_swiss_dir_ptr + 8) {
		bpf_probe_read_user(dir, sizeof(dir), (void *)(m + off_swiss_dir_ptr));
	} else {
		dir[0] = read_u64(m + off_swiss_dir_ptr);
		dir[1] = read_u64(m + off_swiss_dir_len);
	}
	s->base = dir[0];
	s->count = (s64)dir[1];
	if (!s->base)
		return;
	if (s->count == 0) { /* a small map: one group, no table */
		search_swiss_group(s->base, s);
		return;
	}
	bpf_loop(MAX_TABLES * MAX_GROUPS, search_swiss_table_group, s, 0);
}

/* Looks for a traceparent header on the *http.Request at `req`. */
static __always_inline void incoming_traceparent(u64 req, struct incoming *out)
{
	out->found = 0;
	out->value = 0;
	out->state = 0;
	u64 header = read_u64(req + off_req_header);
	if (!header)
		return;
	struct header_search s = {};
	if (map_layout == MAP_LAYOUT_SWISS)
		search_swiss(header, &s);
	else if (map_layout == MAP_LAYOUT_BUCKETS)
		search_buckets(header, &s);
	out->value = s.value;
	out->state = s.state;
	out->state_len = s.state_len;
	u8 text[TRACEPARENT_LEN + 1];
	bool longer = s.value_len > TRACEPARENT_LEN;
	if (!out->value)
		return;
	if (longer ? bpf_probe_read_user(text, TRACEPARENT_LEN + 1, (void *)out->value) :
		     bpf_probe_read_user(text, TRACEPARENT_LEN, (void *)out->value))
		return;
	out->found = accept_traceparent(text, s.value_len, out);
}
