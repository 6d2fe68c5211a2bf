//! What runs between fork and exec. The forked child becomes the exec's
//! supervisor: it drops privileges, enters a new user namespace (mapping only
//! the sandbox uid/gid) and new mount/PID/IPC/UTS(/network) namespaces, then
//! forks the init process of the new PID namespace and waits for it. The init
//! process builds the root filesystem, applies rlimits, Landlock and seccomp,
//! and returns so that std execs the command.
//!
//! Each failing step writes its name to the report pipe before the error goes
//! back to the server through std's own exec-error channel.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Pid, Uid};

use super::{Confinement, FsStep};

type Step<T> = Result<T, (&'static str, Errno)>;

fn at<T>(step: &'static str, result: nix::Result<T>) -> Step<T> {
    result.map_err(|errno| (step, errno))
}

pub(super) fn enter(confinement: &mut Confinement) -> std::io::Result<()> {
    match enter_steps(confinement) {
        Ok(()) => Ok(()),
        Err((step, errno)) => {
            let _ = nix::unistd::write(&confinement.report, step.as_bytes());
            Err(std::io::Error::from_raw_os_error(errno as i32))
        }
    }
}

fn enter_steps(c: &mut Confinement) -> Step<()> {
    let isolator = c.isolator.clone();
    for procs in &c.cgroup_procs {
        write_file(procs, b"0", "joining the sandbox's cgroup")?;
    }
    if isolator.drop_privileges {
        stage_as_root(c)?;
        let uid = Uid::from_raw(isolator.host_uid);
        let gid = Gid::from_raw(isolator.host_gid);
        at("dropping supplementary groups", nix::unistd::setgroups(&[]))?;
        at(
            "setting the sandbox gid",
            nix::unistd::setresgid(gid, gid, gid),
        )?;
        at(
            "setting the sandbox uid",
            nix::unistd::setresuid(uid, uid, uid),
        )?;
        // Changing uid made the process non-dumpable, which hands its /proc
        // files to root: it could not write its own uid_map.
        at(
            "making the process dumpable",
            nix::sys::prctl::set_dumpable(true),
        )?;
    }
    at(
        "creating a user namespace",
        unshare(CloneFlags::CLONE_NEWUSER),
    )?;
    write_file(c"/proc/self/setgroups", b"deny", "writing setgroups")?;
    write_file(c"/proc/self/uid_map", &isolator.uid_map, "writing uid_map")?;
    write_file(c"/proc/self/gid_map", &isolator.gid_map, "writing gid_map")?;
    let mut namespaces = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if c.isolate_network {
        namespaces |= CloneFlags::CLONE_NEWNET;
    }
    at(
        "creating mount, PID, IPC, UTS and network namespaces",
        unshare(namespaces),
    )?;
    // Lets the init process see whether its supervisor died before it armed
    // its parent-death signal.
    let (alive_read, alive_write) = at(
        "creating a pipe",
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC),
    )?;
    // SAFETY: the child only makes system calls until it execs.
    match at("forking the sandbox init", unsafe { nix::unistd::fork() })? {
        nix::unistd::ForkResult::Parent { child } => {
            supervise(child, isolator.lifeline_fd(), alive_write.as_raw_fd())
        }
        nix::unistd::ForkResult::Child => {}
    }
    at(
        "arming the parent-death signal",
        nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGKILL)),
    )?;
    drop(alive_write);
    let mut poll = [nix::poll::PollFd::new(
        alive_read.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    if at(
        "checking the supervisor",
        nix::poll::poll(&mut poll, nix::poll::PollTimeout::ZERO),
    )? > 0
    {
        // The supervisor is gone already: nobody would ever stop this exec.
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(137) };
    }
    drop(alive_read);
    build_root(c, &isolator)?;
    at("setting the hostname", nix::unistd::sethostname("sandbox"))?;
    if c.isolate_network {
        at("bringing up loopback", loopback_up())?;
    }
    for (resource, limit) in &c.rlimits {
        at(
            "setting rlimits",
            nix::sys::resource::setrlimit(*resource, *limit, *limit),
        )?;
    }
    at("applying Landlock", restrict_with_landlock(&c.workdir))?;
    at("applying seccomp", isolator.seccomp.apply())?;
    Ok(())
}

/// Where a root server stages the workspace and the new root: a tmpfs over
/// `/tmp` in a mount namespace of its own, reachable by the sandbox uid
/// whatever the permissions of the directories above the host workspace.
const STAGE: &CStr = c"/tmp";
const STAGED_WORKSPACE: &CStr = c"/tmp/workspace";
const STAGED_ROOT: &CStr = c"/tmp/root";
const STAGED_ETC: &CStr = c"/tmp/etc";

/// Run as root, before dropping privileges: a private mount namespace with
/// the workspace bound at [`STAGED_WORKSPACE`] and an empty [`STAGED_ROOT`].
/// The user namespace created next gets a copy of it.
fn stage_as_root(c: &Confinement) -> Step<()> {
    let none: Option<&CStr> = None;
    at(
        "creating a staging mount namespace",
        unshare(CloneFlags::CLONE_NEWNS),
    )?;
    make_mounts_private()?;
    // Opened in this namespace, so that they can be the sources of bind
    // mounts after the tmpfs may have covered their host paths.
    let workspace = open_path(&c.workspace, "opening the workspace")?;
    let etc = open_path(&c.isolator.etc_view, "opening the /etc view")?;
    mount_tmpfs(
        STAGE,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        c"mode=0755,size=64k",
        "mounting the staging tmpfs",
    )?;
    for (fd, staged) in [(&workspace, STAGED_WORKSPACE), (&etc, STAGED_ETC)] {
        mkdir(staged, 0o755, "creating a staging directory")?;
        let source = proc_fd_path(fd.as_raw_fd());
        at(
            "staging the workspace and /etc",
            mount(
                Some(source.as_c_str()),
                staged,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            ),
        )?;
    }
    mkdir(STAGED_ROOT, 0o755, "creating the staged root")
}

fn open_path(path: &CStr, step: &'static str) -> Step<std::os::fd::OwnedFd> {
    at(
        step,
        nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
    )
}

/// Builds the new root on a tmpfs (private to this mount namespace), pivots
/// into it and makes it read-only.
fn build_root(c: &Confinement, isolator: &super::Isolator) -> Step<()> {
    let none: Option<&CStr> = None;
    let (base, workspace, etc) = if isolator.drop_privileges {
        (STAGED_ROOT, STAGED_WORKSPACE, STAGED_ETC)
    } else {
        (
            isolator.newroot.as_c_str(),
            c.workspace.as_c_str(),
            isolator.etc_view.as_c_str(),
        )
    };
    make_mounts_private()?;
    mount_tmpfs(
        base,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        c"mode=0755,size=4m",
        "mounting the root tmpfs",
    )?;
    at("entering the new root", nix::unistd::chdir(base))?;
    for step in &isolator.filesystem {
        apply_step(step)?;
    }
    bind_read_only(etc, c"etc", isolator.etc_locked)?;
    for dir in &c.workdir_parents {
        mkdir(dir, 0o755, "creating the workdir")?;
    }
    at(
        "mounting the workspace",
        mount(
            Some(workspace),
            c.workdir.as_c_str(),
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        ),
    )?;
    mkdir(c"tmp", 0o1777, "creating /tmp")?;
    let tmp_options = tmpfs_options(1777, isolator.tmp_size_mib);
    mount_tmpfs(
        c"tmp",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        tmp_options.as_c_str(),
        "mounting /tmp",
    )?;
    build_dev()?;
    mkdir(c"proc", 0o555, "creating /proc")?;
    at(
        "mounting /proc",
        mount(
            Some(c"proc"),
            c"proc",
            Some(c"proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            none,
        ),
    )?;
    // pivot_root(".", "."): the old root ends up on top of the new one, and
    // detaching it leaves only the new root.
    at("pivoting the root", nix::unistd::pivot_root(c".", c"."))?;
    at(
        "detaching the host root",
        umount2(c".", MntFlags::MNT_DETACH),
    )?;
    at("entering /", nix::unistd::chdir(c"/"))?;
    at(
        "making the root read-only",
        mount(
            none,
            c"/",
            none,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            none,
        ),
    )?;
    at(
        "entering the working directory",
        nix::unistd::chdir(c.cwd.as_c_str()),
    )
}

fn apply_step(step: &FsStep) -> Step<()> {
    match step {
        FsStep::Mkdir(path) => mkdir(path, 0o755, "creating a system directory"),
        FsStep::Symlink { target, link } => at(
            "creating a system symlink",
            nix::unistd::symlinkat(target.as_c_str(), nix::fcntl::AT_FDCWD, link.as_c_str()),
        ),
        FsStep::BindRo {
            source,
            target,
            locked,
        } => bind_read_only(source, target, *locked),
    }
}

/// A read-only bind mount; `locked` repeats the source's locked flags.
fn bind_read_only(source: &CStr, target: &CStr, locked: MsFlags) -> Step<()> {
    let none: Option<&CStr> = None;
    at(
        "bind-mounting a system path",
        mount(
            Some(source),
            target,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        ),
    )?;
    at(
        "making a system path read-only",
        mount(
            none,
            target,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked,
            none,
        ),
    )
}

/// A `/dev` with only harmless devices, bound from the host (creating device
/// nodes is not allowed in a user namespace).
fn build_dev() -> Step<()> {
    let none: Option<&CStr> = None;
    mkdir(c"dev", 0o755, "creating /dev")?;
    mount_tmpfs(
        c"dev",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        c"mode=0755,size=64k",
        "mounting /dev",
    )?;
    for (host, inside) in [
        (c"/dev/null", c"dev/null"),
        (c"/dev/zero", c"dev/zero"),
        (c"/dev/full", c"dev/full"),
        (c"/dev/random", c"dev/random"),
        (c"/dev/urandom", c"dev/urandom"),
    ] {
        create_file(inside, "creating a device mount point")?;
        at(
            "binding a device",
            mount(Some(host), inside, none, MsFlags::MS_BIND, none),
        )?;
    }
    for (target, link) in [
        (c"/proc/self/fd", c"dev/fd"),
        (c"/proc/self/fd/0", c"dev/stdin"),
        (c"/proc/self/fd/1", c"dev/stdout"),
        (c"/proc/self/fd/2", c"dev/stderr"),
    ] {
        at(
            "creating a /dev link",
            nix::unistd::symlinkat(target, nix::fcntl::AT_FDCWD, link),
        )?;
    }
    mkdir(c"dev/shm", 0o1777, "creating /dev/shm")?;
    mount_tmpfs(
        c"dev/shm",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        c"mode=1777,size=64m",
        "mounting /dev/shm",
    )
}

fn mkdir(path: &CStr, mode: u32, step: &'static str) -> Step<()> {
    match nix::unistd::mkdir(path, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => return Err((step, errno)),
    }
    // mkdir applies the umask; sticky and world-writable bits must be exact.
    at(
        step,
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            path,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        ),
    )
}

fn create_file(path: &CStr, step: &'static str) -> Step<()> {
    at(
        step,
        nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        ),
    )
    .map(drop)
}

fn write_file(path: &CStr, contents: &[u8], step: &'static str) -> Step<()> {
    let fd = at(
        step,
        nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
    )?;
    at(step, nix::unistd::write(&fd, contents)).map(drop)
}

/// `/proc/self/fd/<fd>`, built without allocating.
fn proc_fd_path(fd: RawFd) -> ShortCString {
    let mut path = ShortCString::default();
    path.push(b"/proc/self/fd/");
    path.push_number(fd as u64);
    path
}

/// `mode=<mode>,size=<mib>m` for a tmpfs, without allocating.
fn tmpfs_options(mode: u32, size_mib: u64) -> ShortCString {
    let mut text = ShortCString::default();
    text.push(b"mode=");
    text.push_number(u64::from(mode));
    text.push(b",size=");
    text.push_number(size_mib.min(1 << 20));
    text.push(b"m");
    text
}

/// A short NUL-terminated string built on the stack (the child must not
/// allocate for it).
#[derive(Default)]
struct ShortCString {
    bytes: [u8; 32],
    len: usize,
}

impl ShortCString {
    fn push(&mut self, bytes: &[u8]) {
        // Always leave the final NUL.
        let room = self.bytes.len() - 1 - self.len;
        let take = bytes.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&bytes[..take]);
        self.len += take;
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        digits[..len].reverse();
        self.push(&digits[..len]);
    }

    fn as_c_str(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.bytes).expect("NUL-terminated")
    }
}

/// A new network namespace has `lo` down; programs expect 127.0.0.1.
fn loopback_up() -> nix::Result<()> {
    // SAFETY: plain socket and ioctl calls on a zeroed, NUL-terminated ifreq.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return Err(Errno::last());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        request.ifr_name[0] = b'l' as libc::c_char;
        request.ifr_name[1] = b'o' as libc::c_char;
        let mut result = libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request);
        if result == 0 {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(socket, libc::SIOCSIFFLAGS, &mut request);
        }
        let errno = Errno::last();
        libc::close(socket);
        if result < 0 { Err(errno) } else { Ok(()) }
    }
}

/// Landlock as a second layer: reads everywhere in the new root, writes
/// only in the workspace, `/tmp`, `/dev/shm` and to the devices.
fn restrict_with_landlock(workdir: &CStr) -> nix::Result<()> {
    use landlock::{
        ABI, Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    };
    use std::os::unix::ffi::OsStrExt;
    let abi = ABI::V5;
    // `workdir` is relative to the new root.
    let workdir = std::path::Path::new("/").join(std::ffi::OsStr::from_bytes(workdir.to_bytes()));
    let read = AccessFs::from_read(abi);
    let rules = [
        (std::path::Path::new("/"), read),
        (workdir.as_path(), AccessFs::from_all(abi)),
        (std::path::Path::new("/tmp"), AccessFs::from_all(abi)),
        (std::path::Path::new("/dev/shm"), AccessFs::from_all(abi)),
        (std::path::Path::new("/dev"), read | AccessFs::WriteFile),
    ];
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))?
            .create()?;
        for (path, access) in rules {
            let fd = PathFd::new(path)?;
            ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
        }
        ruleset.restrict_self()?;
        Ok(())
    })();
    result.map_err(|_| Errno::EPERM)
}

/// The supervisor: waits for the sandbox's init process and exits as it did.
/// It kills the init process (and so the whole PID namespace) when the
/// server's lifeline hangs up.
fn supervise(init: Pid, lifeline: RawFd, alive: RawFd) -> ! {
    // Only the sandbox's own processes may hold its stdio open, so that the
    // server sees end-of-output when they are gone.
    // SAFETY: closing descriptors this process no longer uses; no Rust object
    // owns them past this point (the process never returns).
    unsafe {
        for fd in 0..3 {
            libc::close(fd);
        }
        let (low, high) = if lifeline < alive {
            (lifeline, alive)
        } else {
            (alive, lifeline)
        };
        close_range(3, low - 1);
        close_range(low + 1, high - 1);
        close_range(high + 1, u32::MAX as i32);
    }
    // SAFETY: plain system call.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, init.as_raw(), 0) } as RawFd;
    if pidfd >= 0 {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: pidfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: lifeline,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: valid array of pollfd.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if ready < 0 {
                continue;
            }
            if fds[1].revents != 0 {
                let _ = nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGKILL);
            }
            if fds[0].revents != 0 {
                break;
            }
        }
    }
    let code = loop {
        match nix::sys::wait::waitpid(init, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => break code,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => {
                // Die the same way, so the server sees the signal.
                // SAFETY: resetting a disposition and signalling ourselves.
                unsafe {
                    libc::signal(signal as i32, libc::SIG_DFL);
                    libc::kill(libc::getpid(), signal as i32);
                }
                break 128 + signal as i32;
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => break 125,
        }
    };
    // SAFETY: ends the supervisor without running the parent's destructors.
    unsafe { libc::_exit(code) }
}

/// Closes `first..=last` (nothing when the range is empty).
unsafe fn close_range(first: RawFd, last: RawFd) {
    if first <= last {
        // SAFETY: the caller owns nothing in the range.
        unsafe {
            libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32);
        }
    }
}

fn make_mounts_private() -> Step<()> {
    let none: Option<&CStr> = None;
    at(
        "making mounts private",
        mount(
            none,
            c"/",
            none,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            none,
        ),
    )
}

fn mount_tmpfs(target: &CStr, flags: MsFlags, options: &CStr, step: &'static str) -> Step<()> {
    at(
        step,
        mount(Some(c"tmpfs"), target, Some(c"tmpfs"), flags, Some(options)),
    )
}
