/* Propagation to other hosts with no write into any process: a sockops program on the cgroup
 * v2 root puts the client sockets of traced processes into a sockhash when they connect (to
 * another host, unless loopback is asked for), and an sk_msg program inserts a W3C
 * `traceparent:` line after the request line of the plaintext HTTP/1.1 request that the
 * client span on that connection (conn_ctx) is sending. Anything unexpected means no insert:
 * a request is never altered unless the new line can be written whole. */
#include "conn.h"

const volatile bool inject_loopback = false;

/* Client sockets that may carry a request to inject into. Sockets leave it when they close. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, u32);
} inject_socks SEC(".maps");

/* Socket cookie -> connecting, between TCP_CONNECT (the process's context) and ESTABLISHED. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u64);
	__type(value, u8);
} connecting SEC(".maps");

/* Connection -> the span whose request already got its line (or was judged unsafe). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, u64);
} handled SEC(".maps");

enum inject_stat {
	INJECTED = 0,
	SKIPPED_NOT_HTTP1, /* the message did not start with an HTTP/1.x request line */
	SKIPPED_NO_ROOM, /* the kernel would not make room for the line */
	DROPPED_WRITE_FAILED, /* room was made but could not be written: message dropped */
	INJECT_STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, INJECT_STAT_MAX);
	__type(key, u32);
	__type(value, u64);
} inject_stats SEC(".maps");

static __always_inline void inject_count(u32 which)
{
	u64 *v = bpf_map_lookup_elem(&inject_stats, &which);
	if (v)
		*v += 1;
}

/* Builds the key from a socket's view: the client is local. Ports: local in host order,
 * remote in network order in the upper half of the word. */
static __always_inline void key_from(struct conn_key *k, u32 family, u32 local_ip4,
				     u32 remote_ip4, const u32 *local_ip6, const u32 *remote_ip6,
				     u32 local_port, u32 remote_port)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->family = family;
	if (family == AF_INET) {
		__builtin_memcpy(k->client_addr, &local_ip4, 4);
		__builtin_memcpy(k->server_addr, &remote_ip4, 4);
	} else {
		__builtin_memcpy(k->client_addr, local_ip6, 16);
		__builtin_memcpy(k->server_addr, remote_ip6, 16);
	}
	k->client_port = (u16)local_port;
	k->server_port = (u16)(__builtin_bswap32(remote_port));
}

static __always_inline bool loopback(u32 family, u32 remote_ip4, const u32 *remote_ip6)
{
	if (family == AF_INET)
		return (remote_ip4 & 0xff) == 127; /* 127.0.0.0/8, network order */
	return remote_ip6[0] == 0 && remote_ip6[1] == 0 && remote_ip6[2] == 0 &&
	       remote_ip6[3] == __builtin_bswap32(1);
}

SEC("sockops")
int inject_sockops(struct bpf_sock_ops *skops)
{
	u32 family = skops->family;
	if (family != AF_INET && family != AF_INET6)
		return 1;
	u64 cookie = bpf_get_socket_cookie(skops);
	u8 one = 1;
	if (skops->op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		u32 pid = bpf_get_current_pid_tgid() >> 32;
		if (!bpf_map_lookup_elem(&client_pids, &pid))
			return 1;
		u32 remote6[4] = { skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
				   skops->remote_ip6[3] };
		if (!inject_loopback && loopback(family, skops->remote_ip4, remote6))
			return 1;
		bpf_map_update_elem(&connecting, &cookie, &one, BPF_ANY);
	} else if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		if (!bpf_map_lookup_elem(&connecting, &cookie))
			return 1;
		bpf_map_delete_elem(&connecting, &cookie);
		u32 local6[4] = { skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2],
				  skops->local_ip6[3] };
		u32 remote6[4] = { skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
				   skops->remote_ip6[3] };
		struct conn_key key;
		key_from(&key, family, skops->local_ip4, skops->remote_ip4, local6, remote6,
			 skops->local_port, skops->remote_port);
		bpf_sock_hash_update(skops, &inject_socks, &key, BPF_NOEXIST);
	}
	return 1;
}

#define LINE_MAX 256
#define HEADER_LEN 70 /* "traceparent: 00-" 32 "-" 16 "-" 2 "\r\n" */

static __always_inline char hex_digit(u8 v)
{
	return v < 10 ? '0' + v : 'a' + v - 10;
}

SEC("sk_msg")
int inject_sk_msg(struct sk_msg_md *msg)
{
	u32 family = msg->family;
	u32 local6[4] = { msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2],
			  msg->local_ip6[3] };
	u32 remote6[4] = { msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2],
			   msg->remote_ip6[3] };
	struct conn_key key;
	key_from(&key, family, msg->local_ip4, msg->remote_ip4, local6, remote6, msg->local_port,
		 msg->remote_port);
	struct span_ctx *span = bpf_map_lookup_elem(&conn_ctx, &key);
	if (!span)
		return SK_PASS;
	u64 span_id;
	__builtin_memcpy(&span_id, span->span_id, 8);
	u64 *done = bpf_map_lookup_elem(&handled, &key);
	if (done && *done == span_id)
		return SK_PASS; /* the rest of a request already handled: its body */
	/* Decided once per request: whatever happens below, later messages are its body. */
	bpf_map_update_elem(&handled, &key, &span_id, BPF_ANY);

	u32 len = msg->size < LINE_MAX ? msg->size : LINE_MAX;
	if (len < 16 || bpf_msg_pull_data(msg, 0, len, 0)) {
		inject_count(SKIPPED_NOT_HTTP1);
		return SK_PASS;
	}
	u8 *data = msg->data, *end = msg->data_end;
	/* "METHOD /target HTTP/1.x\r\n": a token, a space, a target, " HTTP/1.", CRLF. */
	u32 eol = 0;
	for (u32 i = 1; i < LINE_MAX - 1; i++) {
		if (data + i + 2 > end)
			break;
		if (data[i] == '\r' && data[i + 1] == '\n') {
			eol = i;
			break;
		}
	}
	if (eol < 14 || data + eol > end || data + 1 > end || data[0] < 'A' || data[0] > 'Z') {
		inject_count(SKIPPED_NOT_HTTP1);
		return SK_PASS;
	}
	u8 *v = data + eol - 8;
	if (v < data || v + 8 > end || v[0] != 'H' || v[1] != 'T' || v[2] != 'T' || v[3] != 'P' ||
	    v[4] != '/' || v[5] != '1' || v[6] != '.' || v[-1] != ' ') {
		inject_count(SKIPPED_NOT_HTTP1);
		return SK_PASS;
	}

	char line[HEADER_LEN] = "traceparent: 00-";
	for (int i = 0; i < 16; i++) {
		line[16 + 2 * i] = hex_digit(span->trace_id[i] >> 4);
		line[17 + 2 * i] = hex_digit(span->trace_id[i] & 0xf);
	}
	line[48] = '-';
	for (int i = 0; i < 8; i++) {
		line[49 + 2 * i] = hex_digit(span->span_id[i] >> 4);
		line[50 + 2 * i] = hex_digit(span->span_id[i] & 0xf);
	}
	line[65] = '-';
	line[66] = '0';
	line[67] = span->sampled ? '1' : '0';
	line[68] = '\r';
	line[69] = '\n';

	u32 at = eol + 2;
	if (bpf_msg_push_data(msg, at, HEADER_LEN, 0)) {
		inject_count(SKIPPED_NO_ROOM);
		return SK_PASS;
	}
	/* From here the message has a gap: write it whole or drop the message. */
	if (bpf_msg_pull_data(msg, at, at + HEADER_LEN, 0)) {
		inject_count(DROPPED_WRITE_FAILED);
		return SK_DROP;
	}
	data = msg->data;
	end = msg->data_end;
	if (data + HEADER_LEN > end) {
		inject_count(DROPPED_WRITE_FAILED);
		return SK_DROP;
	}
	__builtin_memcpy(data, line, HEADER_LEN);
	inject_count(INJECTED);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
