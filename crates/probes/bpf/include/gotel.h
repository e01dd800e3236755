/* Shared definitions for gotel's BPF programs: Go's amd64 register ABI, bounded reads of Go
 * values from user memory, the event header every span event starts with, and the maps shared
 * by all instrumentations (ring buffer, traced pids, counters). */
#pragma once

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;

/* The kernel's x86_64 pt_regs, as a uprobe sees it. Declared here so no vmlinux.h is needed. */
struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

/* Go's register ABI (ABIInternal, Go 1.17+): integer arguments in this order; g in R14. */
#define GO_ARG1(r) ((r)->ax)
#define GO_ARG2(r) ((r)->bx)
#define GO_ARG3(r) ((r)->cx)
#define GO_ARG4(r) ((r)->di)
#define GO_ARG5(r) ((r)->si)
#define GO_ARG6(r) ((r)->r8)
#define GO_ARG7(r) ((r)->r9)
#define GO_ARG8(r) ((r)->r10)
#define GO_ARG9(r) ((r)->r11)
#define GO_G(r) ((r)->r14)
/* An itab (inter, _type, hash, ...): its type hash, by which an interface's dynamic type is
 * told apart (the agent reads the hashes from the binary's type descriptors). */
#define ITAB_HASH 16

/* Span events written to the ring buffer start with this header. Its kind tells the agent
 * which instrumentation wrote it: the number that instrumentation declares, set at load time,
 * so no list of kinds is kept here. */
const volatile u32 event_kind = 0;

struct span_header {
	u32 kind;
	u32 pid;
	u64 start_ns; /* CLOCK_MONOTONIC */
	u64 end_ns;
	u8 trace_id[16];
	u8 span_id[8];
	u8 parent_span_id[8];
};

/* In-flight work is keyed by goroutine: a goroutine can move between threads mid-call. */
struct goroutine_key {
	u32 pid;
	u32 _pad;
	u64 g;
};

/* The span a goroutine works for: what a client call it makes is a child of. */
struct span_ctx {
	u8 trace_id[16];
	u8 span_id[8];
	u8 sampled;
	u8 flags; /* SPAN_* */
	u8 _pad[6];
};

/* A client span's request carries a traceparent of its own (an SDK in the process put it
 * there, or its caller did): outgoing injection adds none. */
#define SPAN_HAS_TRACEPARENT 1
/* A gRPC client span whose stream goes over TLS: its span id starts with the stream id's low
 * 16 bits (conn.h), and it goes to another host in a TCP option. */
#define SPAN_OVER_TLS 2

/* Indices of the counters in `stats`. */
enum stat {
	STAT_RINGBUF_FULL = 0,
	STAT_NO_ENTRY, /* a return without a recorded entry (attached mid-call) */
	STAT_TLS_STREAMS_FULL, /* TLS streams whose socket had TLS_STREAM_SLOTS waiting already */
	STAT_NOT_ENROLLED, /* HTTP requests to another host on a connection injection never saw open */
	STAT_REQUEST_REUSED, /* HTTP/2 requests whose Request the GC reused before they ended */
	STAT_ENTRY_REPEATED, /* HTTP server entries run again by morestack (the request kept its span) */
	STAT_MAX,
};

/* Shared by every loaded instrumentation (userspace passes the same map to each object, and
 * sizes the ring buffer: --ring-buffer-mib). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 23);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, u8);
} traced_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, u32);
	__type(value, u64);
} stats SEC(".maps");

/* Goroutine -> the span it works for. Set by gRPC server spans, inherited by the goroutines a
 * goroutine working for a span starts (goroutines.bpf.c); HTTP server spans are in
 * server_calls. LRU: goroutines that die without a probe seeing it age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct goroutine_key);
	__type(value, struct span_ctx);
} goroutine_ctx SEC(".maps");

/* An HTTP request a goroutine is serving (http_server.bpf.c), with the span it works for. The
 * server writes only this map, not goroutine_ctx too: one map write per request, not two. */
struct server_call {
	struct span_ctx ctx;
	u64 start_ns;
	u64 req;
	u64 rw_data;
	u8 parent_span_id[8];
	u64 tracestate; /* the incoming tracestate header's text, if any */
	u64 tracestate_len;
};

/* LRU: a goroutine that panics out of the handler never returns; its entry ages out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct goroutine_key);
	__type(value, struct server_call);
} server_calls SEC(".maps");

/* The span the goroutine `key` works for: what it inherited or a gRPC call it serves (set on
 * it after any HTTP request it serves, as when gRPC is mounted in net/http), else the HTTP
 * request it serves. */
static __always_inline struct span_ctx *goroutine_span(const struct goroutine_key *key)
{
	struct span_ctx *span = bpf_map_lookup_elem(&goroutine_ctx, key);
	if (span)
		return span;
	struct server_call *call = bpf_map_lookup_elem(&server_calls, key);
	return call ? &call->ctx : 0;
}

/* When set, only processes in traced_pids are traced; otherwise every process running the
 * executable is (attach --exe). */
const volatile bool filter_pids = false;

/* Sampling (OTEL_TRACES_SAMPLER), decided where a span starts, so unsampled spans cost no
 * event (unless metrics count them: events_for_unsampled) and their children follow them. */
#define SAMPLER_ALWAYS_ON 0
#define SAMPLER_ALWAYS_OFF 1
#define SAMPLER_RATIO 2
const volatile u8 sampler = SAMPLER_ALWAYS_ON;
const volatile bool sampler_parent_based = true;
/* traceidratio: sampled when the trace id's low 56 bits are below this. */
const volatile u64 sampler_threshold = 0;

static __always_inline bool sample(const u8 *trace_id, bool has_parent, bool parent_sampled)
{
	if (has_parent && sampler_parent_based)
		return parent_sampled;
	if (sampler == SAMPLER_ALWAYS_OFF)
		return false;
	if (sampler == SAMPLER_RATIO) {
		u64 r = 0;
		for (int i = 9; i < 16; i++)
			r = r << 8 | trace_id[i];
		return r < sampler_threshold;
	}
	return true;
}

/* Metrics count every request, sampled or not: when set (OTEL_METRICS_EXPORTER), a span the
 * sampler dropped still writes its event, with EVENT_UNSAMPLED in its kind, for the agent to
 * count and not export. */
const volatile bool events_for_unsampled = false;
#define EVENT_UNSAMPLED 0x80000000u

/* Whether a span with this sampling decision writes its event. */
static __always_inline bool recorded(u8 sampled)
{
	return sampled || events_for_unsampled;
}

/* The agent is woken once per this many bytes of events (and polls every 50 ms anyway): a
 * wakeup per event costs more than the event, and at 64 KiB (some 50 events) the wakeups were
 * a sixth of the agent's CPU. A quarter of the smallest ring (1 MiB) leaves room to wake up. */
#define WAKEUP_BYTES (256 * 1024)

static __always_inline void count(u32 which)
{
	u64 *v = bpf_map_lookup_elem(&stats, &which);
	if (v)
		*v += 1;
}

static __always_inline bool pid_traced(u32 pid)
{
	return !filter_pids || bpf_map_lookup_elem(&traced_pids, &pid);
}

/* Submit flags for an event of `size` bytes: wake the agent when the waiting data crosses a
 * multiple of WAKEUP_BYTES. Waking on every event past a threshold instead would raise an
 * interrupt per event until the agent gets to run, each a trap to the hypervisor on a VM. */
static __always_inline u64 ringbuf_wakeup_flags(u64 size)
{
	u64 waiting = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	u64 record = (size + BPF_RINGBUF_HDR_SZ + 7) & ~7ULL;
	bool crossed = waiting >= record && waiting / WAKEUP_BYTES != (waiting - record) / WAKEUP_BYTES;
	return crossed ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* The context a span hands its children: its trace, itself, its sampling decision. */
static __always_inline struct span_ctx span_ctx_of(const u8 *trace_id, const u8 *span_id,
						   u8 sampled)
{
	struct span_ctx c = { .sampled = sampled };
	__builtin_memcpy(c.trace_id, trace_id, sizeof(c.trace_id));
	__builtin_memcpy(c.span_id, span_id, sizeof(c.span_id));
	return c;
}

static __always_inline void random_id(u8 *id, int len)
{
	u32 any = 0;
	for (int i = 0; i < len; i += 4) {
		u32 r = bpf_get_prandom_u32();
		any |= r;
		__builtin_memcpy(id + i, &r, 4);
	}
	if (!any) /* all-zero ids are invalid in W3C trace context */
		id[len - 1] = 1;
}

/* The context of a span starting now: a child of `parent` (whose id goes to
 * `parent_span_id`), else, with none, the root of a new trace; sampled as the sampler decides
 * for it. */
static __always_inline void child_span_ctx(const struct span_ctx *parent, struct span_ctx *ctx,
					   u8 *parent_span_id)
{
	if (parent) {
		__builtin_memcpy(ctx->trace_id, parent->trace_id, sizeof(ctx->trace_id));
		__builtin_memcpy(parent_span_id, parent->span_id, sizeof(parent->span_id));
	} else {
		random_id(ctx->trace_id, sizeof(ctx->trace_id));
	}
	random_id(ctx->span_id, sizeof(ctx->span_id));
	ctx->sampled = sample(ctx->trace_id, parent != 0, parent && parent->sampled);
}

/* The context of a span starting now on goroutine `key`: a child of the span the goroutine
 * works for, else the root of a new trace. */
static __always_inline void start_span_ctx(const struct goroutine_key *key, struct span_ctx *ctx,
					   u8 *parent_span_id)
{
	child_span_ctx(goroutine_span(key), ctx, parent_span_id);
}

/* The load bias of a position-independent executable, from the run-time address of a probe
 * whose link-time address is `link_address`: ip is the probed address, or just past its
 * breakpoint, and the bias is page-aligned. */
static __always_inline u64 load_bias(const struct pt_regs *ctx, u64 link_address)
{
	return (ctx->ip - link_address) & ~0xfffULL;
}

static __always_inline u64 read_u64(u64 addr)
{
	u64 v = 0;
	bpf_probe_read_user(&v, sizeof(v), (void *)addr);
	return v;
}

/* The head of a Go struct, copied from user memory in one read: each read costs far more than
 * picking fields out of a copy. Go fields the programs read are 8-byte aligned. */
#define WINDOW_WORDS 40 /* 320 bytes; userspace checks every offset used fits */
struct window {
	u64 w[WINDOW_WORDS];
};

static __always_inline u64 window_u64(const struct window *win, u64 off)
{
	u64 i = off >> 3;
	return i < WINDOW_WORDS ? win->w[i] : 0;
}

/* A window and the room a read split at a page boundary needs past it (read_window): the
 * verifier checks the second part's largest offset plus its largest size against this. */
struct window_buffer {
	u64 w[2 * WINDOW_WORDS];
};

#define PAGE_SIZE 4096

/* Copies `bytes` (at most a window) at user address `addr` to the start of `buf`; what cannot
 * be read is zero. A read fails as a whole when any page it touches is not present, and the end
 * of a Go object can lie on a page nothing has written yet (zero fields, or the empty slots of
 * a map group, in memory fresh from the OS) which a BPF program cannot fault in; such a read is
 * split at the page boundary. A function of its own: inlined, its paths multiplied the
 * verifier's work in the loops that call it. Unused by programs that read no window. */
static __noinline __attribute__((unused)) void read_window(struct window_buffer *buf, u32 bytes,
							      u64 addr)
{
	const u32 size = sizeof(struct window);
	if (bytes > size)
		bytes = size;
	/* On failure the helper zero-fills what it was to copy. */
	if (!bpf_probe_read_user(buf->w, bytes, (void *)addr))
		return;
	u32 head = PAGE_SIZE - (addr & (PAGE_SIZE - 1));
	if (head >= bytes || head > size - 8 || head & 7)
		return;
	if (bpf_probe_read_user(buf->w, head, (void *)addr))
		return;
	u32 rest = bytes - head;
	if (rest <= size)
		bpf_probe_read_user((u8 *)buf->w + head, rest, (void *)(addr + head));
}

/* Copies at most `cap` (a power of two) bytes of the `len` bytes at user address `ptr` into
 * `dst`; returns the number copied (0 on failure). */
static __always_inline u16 copy_user_bytes(char *dst, u32 cap, u64 ptr, s64 len)
{
	if (!ptr || len <= 0)
		return 0;
	u32 n = len > cap ? cap : (u32)len;
	n &= (cap << 1) - 1; /* keeps the verifier's bound at cap */
	if (n > cap)
		return 0;
	if (bpf_probe_read_user(dst, n, (void *)ptr))
		return 0;
	return n;
}

/* The Go string whose header is at `off` in `win`. */
static __always_inline u16 window_go_string(char *dst, u32 cap, const struct window *win, u64 off)
{
	return copy_user_bytes(dst, cap, window_u64(win, off), (s64)window_u64(win, off + 8));
}

/* The Go string whose header is at user address `addr`. */
static __always_inline u16 read_go_string(char *dst, u32 cap, u64 addr)
{
	struct {
		u64 ptr;
		s64 len;
	} s = {};
	if (bpf_probe_read_user(&s, sizeof(s), (void *)addr))
		return 0;
	return copy_user_bytes(dst, cap, s.ptr, s.len);
}

/* Fills the header every span event starts with; the span ends now. */
static __always_inline void fill_span_header(struct span_header *h, u32 pid, u64 start_ns,
					     const u8 *trace_id, const u8 *span_id,
					     const u8 *parent_span_id, u8 sampled)
{
	h->kind = sampled ? event_kind : event_kind | EVENT_UNSAMPLED;
	h->pid = pid;
	h->start_ns = start_ns;
	h->end_ns = bpf_ktime_get_ns();
	__builtin_memcpy(h->trace_id, trace_id, sizeof(h->trace_id));
	__builtin_memcpy(h->span_id, span_id, sizeof(h->span_id));
	__builtin_memcpy(h->parent_span_id, parent_span_id, sizeof(h->parent_span_id));
}
