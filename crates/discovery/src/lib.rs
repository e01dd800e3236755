//! Which processes on a host gotel instruments, and what they are: /proc scanning, selection
//! rules, container ids from cgroups, and Kubernetes pod metadata. Needs no BPF; reading other
//! users' processes needs CAP_SYS_PTRACE.

pub mod cgroup;
pub mod config;
pub mod k8s;
pub mod procfs;
pub mod rules;
