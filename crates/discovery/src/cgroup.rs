//! Which container, and which Kubernetes pod, a process runs in: read from its cgroup path
//! (/proc/PID/cgroup), where every runtime writes the container id and the kubelet the pod uid.

/// What a process's cgroup says about where it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The runtime's 64-hex container id (Docker, containerd, CRI-O, Podman).
    pub container_id: Option<String>,
    /// The pod's uid, dashed as the API server writes it.
    pub pod_uid: Option<String>,
}

/// Parses the contents of /proc/PID/cgroup (v2 `0::/path` or v1 `N:controllers:/path` lines).
pub fn parse(cgroup_file: &str) -> Placement {
    // cgroup v2's unified line first; on v1 hosts any controller's path names the container.
    let mut paths: Vec<&str> = Vec::new();
    for line in cgroup_file.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" {
            paths.insert(0, path);
        } else {
            paths.push(path);
        }
    }
    paths.iter().map(|p| parse_path(p)).find(|p| *p != Placement::default()).unwrap_or_default()
}

fn parse_path(path: &str) -> Placement {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let container_id = components.iter().rev().find_map(|c| container_id(c));
    let pod_uid = components.iter().rev().find_map(|c| pod_uid(c));
    Placement { container_id, pod_uid }
}

/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`,
/// or a bare `<id>` (cgroupfs drivers). CRI-O's monitor (`crio-conmon-<id>`) is not the
/// container.
fn container_id(component: &str) -> Option<String> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    if name.contains("conmon") {
        return None;
    }
    let id = name.rsplit(['-', ':']).next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// `kubepods-burstable-pod<uid with _>.slice` (systemd driver) or `pod<uid>` (cgroupfs).
fn pod_uid(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let at = name.rfind("pod")?;
    let uid = name[at + 3..].replace('_', "-");
    let looks_like_uid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    looks_like_uid.then_some(uid)
}

/// A container id from /proc/PID/mountinfo, for runtimes whose cgroup namespace hides the
/// path (Docker on cgroup v2 shows `0::/`): the container's own hostname and resolv.conf are
/// bind-mounted from a directory named by its id.
pub fn container_id_from_mountinfo(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let root = line.split(' ').nth(3)?;
        let mut parts = root.split('/');
        while let Some(part) = parts.next() {
            if part == "containers" || part == "sandboxes" {
                let id = parts.next()?;
                if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Some(id.to_string());
                }
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "2a1b6c0e4f8d9a7b3c5e1f0d2b4a6c8e0f1a3b5c7d9e2f4a6b8c0d1e3f5a7b9c";
    const UID: &str = "0c7c8f3a-1b2c-4d5e-8f90-123456789abc";

    fn placement(container: Option<&str>, pod: Option<&str>) -> Placement {
        Placement { container_id: container.map(Into::into), pod_uid: pod.map(Into::into) }
    }

    // The inputs below are shaped as found on real nodes of each runtime and cgroup driver.

    #[test]
    fn containerd_with_the_systemd_driver() {
        let file = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod0c7c8f3a_1b2c_4d5e_8f90_123456789abc.slice/\
             cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse(&file), placement(Some(ID), Some(UID)));
    }

    #[test]
    fn containerd_with_the_cgroupfs_driver_k3s() {
        let file = format!("0::/kubepods/besteffort/pod{UID}/{ID}\n");
        assert_eq!(parse(&file), placement(Some(ID), Some(UID)));
    }

    #[test]
    fn cri_o_and_its_monitor() {
        let file = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod0c7c8f3a_1b2c_4d5e_8f90_123456789abc.slice/crio-{ID}.scope\n"
        );
        assert_eq!(parse(&file), placement(Some(ID), Some(UID)));
        let conmon = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod0c7c8f3a_1b2c_4d5e_8f90_123456789abc.slice/\
             crio-conmon-{ID}.scope\n"
        );
        assert_eq!(parse(&conmon), placement(None, Some(UID)));
    }

    #[test]
    fn kind_nodes_nest_kubelet_slices() {
        let file = format!(
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
             kubelet-kubepods-besteffort-pod0c7c8f3a_1b2c_4d5e_8f90_123456789abc.slice/\
             cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse(&file), placement(Some(ID), Some(UID)));
    }

    #[test]
    fn docker_systemd_and_cgroup_v1() {
        assert_eq!(
            parse(&format!("0::/system.slice/docker-{ID}.scope\n")),
            placement(Some(ID), None)
        );
        let v1 = format!(
            "12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n"
        );
        assert_eq!(parse(&v1), placement(Some(ID), None));
    }

    #[test]
    fn podman() {
        let file = format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n");
        assert_eq!(parse(&file), placement(Some(ID), None));
    }

    #[test]
    fn a_host_process_is_in_no_container() {
        assert_eq!(parse("0::/user.slice/user-0.slice/session-3.scope\n"), Placement::default());
        assert_eq!(parse("0::/system.slice/sshd.service\n"), Placement::default());
        assert_eq!(parse("0::/\n"), Placement::default());
        assert_eq!(parse(""), Placement::default());
    }

    #[test]
    fn docker_behind_a_cgroup_namespace_is_found_in_mountinfo() {
        let mountinfo = format!(
            "612 590 0:52 / / rw,relatime master:300 - overlay overlay rw\n\
             640 612 259:1 /var/lib/docker/containers/{ID}/resolv.conf /etc/resolv.conf rw - ext4 /dev/root rw\n"
        );
        assert_eq!(container_id_from_mountinfo(&mountinfo).as_deref(), Some(ID));
        assert_eq!(container_id_from_mountinfo("22 1 259:1 / / rw - ext4 /dev/root rw\n"), None);
    }
}
