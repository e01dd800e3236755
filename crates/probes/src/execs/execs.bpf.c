/* Process starts, for the daemon: the pid of every exec, the moment it happens, so a new
 * process is looked at without waiting for the next scan of /proc. A BTF tracepoint needs
 * neither kprobes nor tracefs. */
#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} execs SEC(".maps");

SEC("tp_btf/sched_process_exec")
int on_exec(void *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	bpf_ringbuf_output(&execs, &pid, sizeof(pid), BPF_RB_FORCE_WAKEUP);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
