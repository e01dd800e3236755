/* The BPF programs' own traceparent check (bpf/include/traceparent.h), compiled for the host so
 * the fuzz target runs the very code the kernel runs on incoming headers. */
#include "traceparent.h"

/* Whether a value of `len` bytes starting with the 56 at `text` is accepted: 1 with the trace
 * id, span id and sampled flag in `out` (16 + 8 + 1 bytes), else 0. */
int gotel_fuzz_accept_traceparent(const u8 *text, u64 len, u8 *out)
{
	struct incoming in = {};
	if (!accept_traceparent(text, len, &in))
		return 0;
	__builtin_memcpy(out, in.ctx.trace_id, 16);
	__builtin_memcpy(out + 16, in.ctx.span_id, 8);
	out[24] = in.sampled;
	return 1;
}
