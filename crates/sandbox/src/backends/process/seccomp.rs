//! The seccomp filters of the `process` backend, compiled with `seccompiler` into raw BPF
//! that bubblewrap loads (`--add-seccomp-fd`) right before it executes the command.
//!
//! Two filters, because a seccompiler filter has one action for every matched rule:
//! - the deny list answers `EPERM` for syscalls a coding agent never needs and that widen
//!   the kernel's attack surface or escape the sandbox (ptrace, mount, new namespaces,
//!   kexec, bpf, keyrings, perf, modules, terminal injection, ...);
//! - `clone3` answers `ENOSYS`: its flags live in memory a filter cannot inspect, and
//!   `ENOSYS` makes glibc fall back to `clone`, whose flags the deny list checks.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Namespace-creating clone/unshare flags (CLONE_NEWTIME shares its bit with CSIGNAL in
/// `clone`, so it is only checked for `unshare`).
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u64;

/// Syscalls refused outright with `EPERM`.
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_vhangup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
];

/// Why a filter could not be built (only on an unsupported architecture or a bug).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the seccomp filter: {0}")]
pub struct SeccompBuildError(String);

fn target_arch() -> Result<TargetArch, SeccompBuildError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompBuildError(format!(
            "the {} architecture is not supported",
            std::env::consts::ARCH
        )))
    }
}

fn masked(arg: u8, mask: u64, value: u64) -> Result<SeccompRule, SeccompBuildError> {
    let condition = SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
    .map_err(|e| SeccompBuildError(e.to_string()))?;
    SeccompRule::new(vec![condition]).map_err(|e| SeccompBuildError(e.to_string()))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    errno: i32,
) -> Result<BpfProgram, SeccompBuildError> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        target_arch()?,
    )
    .map_err(|e| SeccompBuildError(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompBuildError(e.to_string()))
}

/// The deny-list filter (`EPERM`) of the bubblewrap path: there no host socket is
/// mounted, so Unix sockets (the sandbox's own) stay allowed.
pub fn deny_filter() -> Result<BpfProgram, SeccompBuildError> {
    deny_filter_with(false)
}

/// The deny-list filter of the in-process mechanism, which also refuses creating
/// `AF_UNIX` sockets. There the host's file system is visible (read-only), and Landlock
/// does not cover `connect`: any pathname socket (a tmux server, Docker's, D-Bus, an SSH
/// or GPG agent) would be a way out. A socket's address lives in memory a filter cannot
/// read, so the filter refuses `socket(AF_UNIX, ...)` itself; `socketpair` (pipes
/// between the command's own processes) still works.
pub fn deny_filter_without_unix_sockets() -> Result<BpfProgram, SeccompBuildError> {
    deny_filter_with(true)
}

fn deny_filter_with(deny_unix_sockets: bool) -> Result<BpfProgram, SeccompBuildError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    if deny_unix_sockets {
        rules.insert(
            libc::SYS_socket,
            vec![masked(0, 0xffff_ffff, libc::AF_UNIX as u64)?],
        );
    }
    for &nr in DENIED {
        rules.insert(nr, Vec::new());
    }
    // New namespaces inside the sandbox: any namespace flag refuses the call.
    let mut ns_rules = Vec::new();
    for bit in 0..64u32 {
        let flag = 1u64 << bit;
        if NAMESPACE_FLAGS & flag != 0 {
            ns_rules.push(flag);
        }
    }
    let clone_rules = ns_rules
        .iter()
        .map(|&f| masked(0, f, f))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let mut unshare_rules = ns_rules
        .iter()
        .map(|&f| masked(0, f, f))
        .collect::<Result<Vec<_>, _>>()?;
    let newtime = libc::CLONE_NEWTIME as u64;
    unshare_rules.push(masked(0, newtime, newtime)?);
    rules.insert(libc::SYS_unshare, unshare_rules);
    // Terminal input injection (TIOCSTI) and console ioctls (TIOCLINUX). The request
    // type differs between libcs, hence the casts.
    #[allow(clippy::unnecessary_cast)]
    rules.insert(
        libc::SYS_ioctl,
        vec![
            masked(1, 0xffff_ffff, libc::TIOCSTI as u64)?,
            masked(1, 0xffff_ffff, libc::TIOCLINUX as u64)?,
        ],
    );
    let mut program = compile(rules, libc::EPERM)?;
    if cfg!(target_arch = "x86_64") {
        program = reject_x32(program);
    }
    Ok(program)
}

/// The `clone3` filter (`ENOSYS`, so libc falls back to `clone`).
pub fn clone3_filter() -> Result<BpfProgram, SeccompBuildError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(libc::SYS_clone3, Vec::new());
    compile(rules, libc::ENOSYS)
}

/// Prepends a check that refuses x32-ABI syscall numbers (bit 30 set), which would
/// otherwise reach the kernel under different numbers than the deny list names.
fn reject_x32(program: BpfProgram) -> BpfProgram {
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
    const BPF_RET_K: u16 = 0x06;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let mut out = Vec::with_capacity(program.len() + 3);
    out.push(sock_filter {
        code: BPF_LD_W_ABS,
        jt: 0,
        jf: 0,
        k: 0, // seccomp_data.nr
    });
    out.push(sock_filter {
        code: BPF_JMP_JGE_K,
        jt: 0,
        jf: 1,
        k: X32_SYSCALL_BIT,
    });
    out.push(sock_filter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k: SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
    });
    out.extend(program);
    out
}

/// The raw bytes of a program as the kernel (and bubblewrap) expect them: an array of
/// `struct sock_filter` in native byte order.
pub fn program_bytes(program: &[sock_filter]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for insn in program {
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_to_bpf() {
        let deny = deny_filter().expect("deny filter");
        assert!(deny.len() > 20 && deny.len() < 4096);
        let stricter = deny_filter_without_unix_sockets().expect("in-process deny filter");
        assert!(stricter.len() > deny.len());
        let clone3 = clone3_filter().expect("clone3 filter");
        assert!(!clone3.is_empty());
        assert_eq!(program_bytes(&deny).len(), deny.len() * 8);
    }
}
