//! The seccomp filters of a confined exec, compiled once with `seccompiler`.
//!
//! A deny list (the rest is allowed, so ordinary programs, compilers and
//! interpreters work): no new namespaces, mounts, root changes, tracing of
//! other processes, BPF, keyrings, kernel modules, kexec, reboot, swap,
//! accounting, perf events, userfaultfd, file handles, clock changes or kernel
//! log. Namespace creation through `clone` is refused by its flags; `clone3`
//! (whose flags live in memory that seccomp cannot read) answers ENOSYS, which
//! makes libc fall back to `clone`.

use std::collections::BTreeMap;

use nix::errno::Errno;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

const DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_syslog,
    libc::SYS_quotactl,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_fanotify_init,
    libc::SYS_vhangup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

/// The compiled programs, applied in order in the child.
pub(super) struct Filters(Vec<BpfProgram>);

impl Filters {
    pub(super) fn build() -> std::io::Result<Self> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|err| std::io::Error::other(format!("seccomp: {err}")))?;
        let mut denied: BTreeMap<i64, Vec<SeccompRule>> = DENIED
            .iter()
            .map(|&syscall| (syscall, Vec::new()))
            .collect();
        let clone_rules = NAMESPACE_FLAGS
            .iter()
            .map(|&flag| {
                SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )
                .and_then(|condition| SeccompRule::new(vec![condition]))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(compile_error)?;
        denied.insert(libc::SYS_clone, clone_rules);
        let deny = SeccompFilter::new(
            denied,
            SeccompAction::Allow,
            SeccompAction::Errno(Errno::EPERM as u32),
            arch,
        )
        .map_err(compile_error)?;
        let no_clone3 = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(Errno::ENOSYS as u32),
            arch,
        )
        .map_err(compile_error)?;
        let mut programs: Vec<BpfProgram> = Vec::new();
        for filter in [deny, no_clone3] {
            programs.push(filter.try_into().map_err(compile_error)?);
        }
        #[cfg(target_arch = "x86_64")]
        programs.push(no_x32_abi());
        Ok(Self(programs))
    }

    /// Installs every filter on the calling thread (after `no_new_privs`).
    pub(super) fn apply(&self) -> nix::Result<()> {
        for program in &self.0 {
            seccompiler::apply_filter(program).map_err(|_| Errno::EPERM)?;
        }
        Ok(())
    }
}

fn compile_error(err: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("compiling the seccomp filter: {err}"))
}

/// x32 system calls share x86_64's audit arch but carry bit 30 in their
/// number, so the deny list above would not match them: refuse them all.
/// (seccompiler matches exact numbers only, so this one is written as BPF.)
#[cfg(target_arch = "x86_64")]
fn no_x32_abi() -> BpfProgram {
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let statement = |code: u32, k: u32| seccompiler::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    vec![
        // A = seccomp_data.nr
        statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        // if A >= X32_SYSCALL_BIT skip nothing (fall to ERRNO) else jump to ALLOW
        seccompiler::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        statement(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | Errno::ENOSYS as u32,
        ),
        statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}
