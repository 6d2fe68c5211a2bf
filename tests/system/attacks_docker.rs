//! Attacks from inside Docker sandboxes, through the real binary with
//! non-admin keys: reaching the host (the server's data dir, the Docker
//! socket), another owner's workspace, root inside the container, writes
//! outside the workspace; a sleeper that leaves its exec; forging, blocking
//! and flooding the exec agent's channel. Each is refused or contained; the
//! created containers are checked as the engine reports them.
//!
//! Like the other Docker tests, these are skipped without a Docker engine and
//! the base image, except under `CI=true`, where they fail.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use wharf_e2e::{Client, WharfProcess, poll};

use crate::sandboxes::{
    build_no_python_image, build_test_image, create, docker, docker_server_with, exec,
    new_owner_client,
};

/// An image whose `USER` is root: built from the base image with
/// `docker commit` (offline), cached by tag.
const ROOT_USER_IMAGE: &str = "wharf/test-root-user:1";

/// Server RSS (VmRSS) the flood test allows. The server idles at about 40 MiB
/// (debug build); the floods push 256 MiB at it.
const FLOOD_RSS_BOUND_MIB: u64 = 128;

const CONFIG: &str = r#"
[sandbox]
docker_default_memory_mib = 300
docker_default_pids = 100
docker_default_cpus = 0.5

[profiles.rootimage]
driver = "docker"
image = "wharf/test-root-user:1"

[profiles.nopython]
driver = "docker"
image = "wharf/test-no-python:1"

# No limits of its own: the host defaults above apply.
[profiles.nolimits]
driver = "docker"

[profiles.writableroot]
driver = "docker"
read_only_root = false
"#;

/// A server with the attack profiles (their images built), and a non-admin
/// client of owner `owner`.
async fn attack_server(owner: &str) -> Option<(tempfile::TempDir, WharfProcess, Client, Client)> {
    let (root, server, admin) = docker_server_with(CONFIG)?;
    build_test_image(ROOT_USER_IMAGE, &["true"], &["USER root"]);
    build_no_python_image();
    let attacker = new_owner_client(&server, &admin, owner).await;
    Some((root, server, admin, attacker))
}

/// Everything a sandboxed command tries against the host and its neighbours.
/// Prints one line per thing that worked; the expected output of a confined
/// sandbox is exactly [`CONFINED`].
const ESCAPES: &str = r#"
echo "uid $(id -u) gid $(id -g)"
echo "process uids: $(ps -eo uid= | sort -un | tr -s ' \n' ' ' | sed 's/^ //; s/ $//')"
for f in "$DATA/probe.key" "$DATA/wharf.db" "$DATA/instance-id" /etc/shadow \
         "/var/lib/docker/volumes/wharf-$OTHER/_data/secret.txt" "$DATA/sandboxes/secret.txt"; do
  if head -c 1 "$f" >/dev/null 2>&1; then echo "READ $f"; fi
done
for s in /var/run/docker.sock /run/docker.sock "$DATA/../docker.sock"; do
  [ -e "$s" ] && echo "SOCKET $s"
done
grep -q "$OTHER" /proc/self/mountinfo && echo "MOUNTED $OTHER"
grep -rl "secret of $OTHER" / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null | sed 's/^/FOUND /'
for f in /usr/bin/x /x /etc/x /home/x /var/x; do
  if (echo x > "$f") 2>/dev/null; then echo "WROTE $f"; fi
done
touch /tmp/scratch && echo "tmp writable"
touch ./scratch && echo "workspace writable"
"#;

const CONFINED: &str = "uid 1000 gid 1000\nprocess uids: 1000\ntmp writable\nworkspace writable\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_sandboxes_reach_neither_the_host_nor_other_workspaces_nor_root() {
    let Some((_root, server, admin, mallory)) = attack_server("mallory").await else {
        return;
    };
    for file in ["probe.key", "wharf.db", "instance-id"] {
        assert!(
            server.data_dir.join(file).is_file(),
            "{file} is in the data dir"
        );
    }

    // Alice's workspace holds a secret.
    let alice = new_owner_client(&server, &admin, "alice").await;
    let theirs = create(&alice, "docker").await;
    let secret = format!("secret of {theirs}");
    let out = exec(
        &alice,
        &theirs,
        json!({"command": "printf '%s' \"$SECRET\" > secret.txt", "env": {"SECRET": secret}}),
    )
    .await;
    assert_eq!(out["exit_code"], 0, "{out}");

    let data = server.data_dir.to_str().unwrap();
    for profile in ["docker", "rootimage", "nopython"] {
        let id = create(&mallory, profile).await;
        let out = exec(
            &mallory,
            &id,
            json!({"command": ESCAPES, "env": {"DATA": data, "OTHER": theirs}, "timeout_ms": 60000}),
        )
        .await;
        assert_eq!(
            out["stdout"].as_str(),
            Some(CONFINED),
            "profile {profile}: {out}"
        );
        let (status, _) = mallory.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, 204);
    }
    let (status, _) = alice.delete(&format!("/v1/sandboxes/{theirs}")).await;
    assert_eq!(status, 204);
}

/// `docker inspect` of a sandbox's container, as JSON.
fn inspect(id: &str) -> Value {
    let text = docker(&["inspect", &format!("wharf-{id}")]);
    let mut all: Vec<Value> = serde_json::from_str(&text).unwrap();
    all.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_containers_are_created_confined_and_limited_whatever_the_image() {
    let Some((_root, _server, _admin, mallory)) = attack_server("mallory").await else {
        return;
    };

    // (profile, memory MiB, pids, cpus, read-only root): the host defaults
    // where the profile names no limits; the built-in `docker` profile's own.
    let expected = [
        ("nolimits", 300, 100, 0.5, true),
        ("rootimage", 300, 100, 0.5, true),
        ("nopython", 300, 100, 0.5, true),
        ("docker", 512, 256, 1.0, true),
        ("writableroot", 300, 100, 0.5, false),
    ];
    for (profile, memory_mib, pids, cpus, read_only) in expected {
        let id = create(&mallory, profile).await;
        let info = inspect(&id);
        let host = &info["HostConfig"];
        let memory = memory_mib * 1024 * 1024;
        let seen = json!({
            "User": info["Config"]["User"],
            "Privileged": host["Privileged"],
            "ReadonlyRootfs": host["ReadonlyRootfs"],
            "CapDrop": host["CapDrop"],
            "CapAdd": host["CapAdd"],
            "SecurityOpt": host["SecurityOpt"],
            "Memory": host["Memory"],
            "MemorySwap": host["MemorySwap"],
            "PidsLimit": host["PidsLimit"],
            "NanoCpus": host["NanoCpus"],
            "Binds": host["Binds"],
            "TmpfsTmp": host["Tmpfs"]["/tmp"].is_string(),
            "NetworkMode": host["NetworkMode"],
        });
        assert_eq!(
            seen,
            json!({
                "User": "1000:1000",
                "Privileged": false,
                "ReadonlyRootfs": read_only,
                "CapDrop": ["ALL"],
                "CapAdd": null,
                "SecurityOpt": ["no-new-privileges"],
                "Memory": memory,
                "MemorySwap": memory,
                "PidsLimit": pids,
                "NanoCpus": (cpus * 1e9) as i64,
                "Binds": null,
                "TmpfsTmp": true,
                "NetworkMode": "none",
            }),
            "profile {profile}"
        );
        // The only mount is the sandbox's own named volume: no host path.
        let mounts = info["Mounts"].as_array().unwrap();
        assert_eq!(
            mounts
                .iter()
                .map(|m| (
                    m["Type"].as_str().unwrap(),
                    m["Name"].as_str().unwrap_or(""),
                    m["Destination"].as_str().unwrap()
                ))
                .collect::<Vec<_>>(),
            [("volume", format!("wharf-{id}").as_str(), "/workspace")],
            "profile {profile}: {mounts:?}"
        );
        // And inside: no capability, the profile's uid for every process.
        let out = exec(
            &mallory,
            &id,
            json!({"command": "grep -h '^Cap\\(Eff\\|Prm\\|Bnd\\)' /proc/self/status; ps -eo uid= | tr -d ' ' | sort -un"}),
        )
        .await;
        assert_eq!(
            out["stdout"].as_str(),
            Some(
                "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n1000\n"
            ),
            "profile {profile}: {out}"
        );
        let (status, _) = mallory.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, 204);
    }
}

/// Host processes whose command line is exactly `args`.
fn host_processes(args: &str) -> usize {
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|line| line.trim() == args)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeper_that_leaves_its_exec_is_gone_after_the_sandbox_is_deleted() {
    let Some((_root, _server, _admin, mallory)) = attack_server("mallory").await else {
        return;
    };
    let id = create(&mallory, "docker").await;
    let out = exec(
        &mallory,
        &id,
        json!({"command": "setsid sleep 4242 >/dev/null 2>&1 </dev/null & nohup sleep 4243 >/dev/null 2>&1 </dev/null & sleep 1; echo started"}),
    )
    .await;
    assert_eq!(out["stdout"], "started\n", "{out}");
    // The `setsid` one left the exec's process group and outlives the exec;
    // the `nohup` one stayed in it and went with it.
    poll("the setsid sleeper alone to run on the host", || async {
        match (host_processes("sleep 4242"), host_processes("sleep 4243")) {
            (1, 0) => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    })
    .await;
    // Orphans that end are reaped by PID 1 (the agent, or the no-agent
    // loop), whichever way the exec went.
    let orphans =
        "sh -c 'setsid sleep 0.2 & setsid sleep 0.3 &'; sleep 2; ps -eo stat= | grep -c '^Z'";
    let other = create(&mallory, "nopython").await;
    for sandbox in [&id, &other] {
        let out = exec(&mallory, sandbox, json!({"command": orphans})).await;
        assert_eq!(out["stdout"], "0\n", "no zombie is left: {out}");
    }
    // Neither outlives the sandbox.
    for sandbox in [other, id] {
        let (status, _) = mallory.delete(&format!("/v1/sandboxes/{sandbox}")).await;
        assert_eq!(status, 204);
    }
    poll("the sleepers to be gone", || async {
        match (host_processes("sleep 4242"), host_processes("sleep 4243")) {
            (0, 0) => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    })
    .await;
}

/// The server's resident memory, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// Each way a command could reach the agent's stdio: its PID 1 and any
/// process of the container that `ps` shows running the agent, fds 1, 2, 0.
/// `$ACTION` runs with `$target` set for each one that opens; all are listed.
const AGENT_FDS: &str = r#"
agents() { ps -eo pid=,args= | awk '$2 == "python3" && $3 == "-u" && $4 == "-c" {print $1}'; }
for p in 1 $(agents); do
  for fd in 1 2 0; do
    target="/proc/$p/fd/$fd"
    if ( : > "$target" ) 2>/dev/null; then
      echo "OPENED $target"
      eval "$ACTION"
    fi
  done
done
ls /proc/1/fd >/dev/null 2>&1 && echo "LISTED /proc/1/fd"
head -c 1 /proc/1/environ >/dev/null 2>&1 && echo "READ /proc/1/environ"
echo done
"#;

/// Writes reply lines for the ids a forger would guess: the old counter's
/// first thousands, and hex ones.
const FORGE_REPLIES: &str = r#"python3 -c '
import json, sys
with open(sys.argv[1], "w") as out:
    for n in range(1, 3000):
        for rid in (n, "%032x" % n):
            out.write(json.dumps({"id": rid, "stream": "out", "data": "Rk9SR0VECg=="}) + "\n")
            out.write(json.dumps({"id": rid, "exit": 0, "timed_out": False}) + "\n")
' "$target""#;

/// 256 MiB without a newline.
const FLOOD_NO_NEWLINE: &str = r#"head -c 268435456 /dev/zero > "$target""#;

/// Signals PID 1 (the agent) with everything that could stop or kill it.
const KILL_AGENT: &str = r#"
agents() { ps -eo pid=,args= | awk '$2 == "python3" && $3 == "-u" && $4 == "-c" {print $1}'; }
for p in 1 $(agents); do
  for sig in KILL STOP TERM INT HUP QUIT USR1 PIPE; do kill -s "$sig" "$p" 2>/dev/null; done
done
sleep 0.5
ps -o stat=,args= -p 1
"#;

/// Execs of another caller in the same sandbox, in flight while an attack
/// runs: each must get its own true output and exit code.
fn victims(client: &Client, id: &str, round: &str) -> Vec<tokio::task::JoinHandle<String>> {
    (0..4)
        .map(|i| {
            let (client, path) = (client.clone(), format!("/v1/sandboxes/{id}/exec"));
            let expected = format!("{round}-{i}\n");
            let body = json!({"command": format!("sleep 3; echo {round}-{i}; exit {i}"), "timeout_ms": 20000});
            tokio::spawn(async move {
                let (status, out) = client.post(&path, body).await;
                let own = status == 200
                    && out["exit_code"] == i
                    && out["stdout"].as_str() == Some(expected.as_str());
                if own {
                    String::new()
                } else {
                    format!("victim {expected:?} did not get its own output: {status} {out}")
                }
            })
        })
        .collect()
}

/// Runs `command` in the sandbox (without waiting); the answer comes as (status, body).
fn attack(
    client: &Client,
    id: &str,
    command: &str,
    env: Value,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let (client, path) = (client.clone(), format!("/v1/sandboxes/{id}/exec"));
    let body = json!({"command": command, "env": env, "timeout_ms": 120000});
    tokio::spawn(async move { client.post(&path, body).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exec_agent_channel_cannot_be_forged_blocked_or_flooded() {
    let Some((_root, server, _admin, mallory)) = attack_server("mallory").await else {
        return;
    };
    let rss_before = rss_mib(server.pid());
    let first = create(&mallory, "docker").await;
    let id = first.clone();
    // Every failed check, so one run shows all that an old build lets through.
    let mut failures: Vec<String> = Vec::new();
    let done = |(status, out): &(u16, Value)| {
        *status == 200 && out["exit_code"] == 0 && out["stdout"] == "done\n"
    };

    // 1. Forged replies, and an exec flooding its own stdout without a newline.
    let round = victims(&mallory, &id, "forge");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let forge = attack(&mallory, &id, AGENT_FDS, json!({"ACTION": FORGE_REPLIES}));
    let flood = attack(
        &mallory,
        &id,
        "head -c 268435456 /dev/zero; echo flooded >&2",
        json!({}),
    );
    for victim in round {
        failures.push(victim.await.unwrap());
    }
    let forged = forge.await.unwrap();
    if !done(&forged) {
        failures.push(format!("the forger reached the agent's stdio: {forged:?}"));
    }
    let (status, flooded) = flood.await.unwrap();
    let own_flood = status == 200
        && flooded["exit_code"] == 0
        && flooded["stdout_truncated"] == true
        && flooded["stderr"] == "flooded\n"
        && flooded["stdout"]
            .as_str()
            .is_some_and(|out| out.bytes().all(|b| b == 0));
    if !own_flood {
        failures.push(format!(
            "the flood did not come back as its own capped output: {status} {}",
            flooded["error"]
        ));
    }

    // 2. 256 MiB with no newline written on the agent's stdio, with the
    // server's memory watched (in a fresh sandbox: each attack on its own).
    let id = create(&mallory, "docker").await;
    let round = victims(&mallory, &id, "flood");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let channel_flood = attack(
        &mallory,
        &id,
        AGENT_FDS,
        json!({"ACTION": FLOOD_NO_NEWLINE}),
    );
    let mut rss_peak = rss_before;
    while !(channel_flood.is_finished() && round.iter().all(|v| v.is_finished())) {
        rss_peak = rss_peak.max(rss_mib(server.pid()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rss_peak = rss_peak.max(rss_mib(server.pid()));
    eprintln!("server RSS: {rss_before} MiB before the floods, {rss_peak} MiB at most during them");
    for victim in round {
        failures.push(victim.await.unwrap());
    }
    let flooded = channel_flood.await.unwrap();
    if !done(&flooded) {
        failures.push(format!(
            "the flooder reached the agent's stdio: {flooded:?}"
        ));
    }
    if rss_peak >= FLOOD_RSS_BOUND_MIB {
        failures.push(format!(
            "server RSS peaked at {rss_peak} MiB (from {rss_before} MiB); bound {FLOOD_RSS_BOUND_MIB} MiB"
        ));
    }

    // 3. Every signal a command can send the agent.
    let second = id;
    let id = create(&mallory, "docker").await;
    let (status, killed) = attack(&mallory, &id, KILL_AGENT, json!({})).await.unwrap();
    let pid1 = killed["stdout"].as_str().unwrap_or_default();
    if !(status == 200 && pid1.contains("python3 -u -c import os;") && !pid1.starts_with('T')) {
        failures.push(format!(
            "the agent is not PID 1 or did not survive every signal: {status} {killed}"
        ));
    }
    // And the sandbox still serves.
    let (status, out) = mallory
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"argv": ["echo", "after"]}),
        )
        .await;
    if !(status == 200 && out["stdout"] == "after\n") {
        failures.push(format!("the sandbox no longer serves: {status} {out}"));
    }
    // 4. A caller's program name so long that the agent's error echoing it
    // would pass the server's reply-line cap and drop every exec in flight.
    let round = victims(&mallory, &id, "echo");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, out) = mallory
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"argv": ["x".repeat(300 * 1024)]}),
        )
        .await;
    if status == 200 || out["error"]["code"] == "session_not_ready" {
        failures.push(format!(
            "a long missing program did not get its own error: {status} {}",
            out.to_string().chars().take(300).collect::<String>()
        ));
    }
    for victim in round {
        failures.push(victim.await.unwrap());
    }
    failures.retain(|failure| !failure.is_empty());
    assert!(failures.is_empty(), "{failures:#?}");
    for id in [first, second, id] {
        let (status, _) = mallory.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, 204);
    }
}

/// `GET /v1/sandboxes/{id}/files/{path}`: status and body bytes.
async fn download(client: &Client, id: &str, path: &str) -> (u16, Vec<u8>) {
    let response = client
        .request(
            reqwest::Method::GET,
            &format!("/v1/sandboxes/{id}/files/{path}"),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

/// `PUT /v1/sandboxes/{id}/files/{path}`: status and answer.
async fn upload(client: &Client, id: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    client
        .send(
            client
                .request(
                    reqwest::Method::PUT,
                    &format!("/v1/sandboxes/{id}/files/{path}"),
                )
                .body(body),
        )
        .await
}

/// The error code of an answer, or `ok` for a 2xx.
fn outcome(status: u16, body: &Value) -> String {
    if (200..300).contains(&status) {
        "ok".to_string()
    } else {
        body["error"]["code"].as_str().unwrap_or("?").to_string()
    }
}

/// The file operations the exec agent serves (it is PID 1: a path leading it
/// out of the workspace could reach its own stdio, memory or environment)
/// refuse symlinks out of the workspace and `..` above it, whatever they
/// point at, through the files API and through a plugin; a FIFO is refused
/// instead of hanging the agent; a file holding reply-like JSON lines is
/// only data; and the agent still serves execs afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_file_operations_stay_inside_the_workspace() {
    let Some((_root, server, admin, mallory)) = attack_server("mallory").await else {
        return;
    };
    crate::adapters::install_core(&server, &admin).await;
    let id = create(&mallory, "docker").await;
    let out = exec(
        &mallory,
        &id,
        json!({"command": "set -e
ln -s /proc/1/fd/1 agent-stdout
ln -s /proc/1/fd/0 agent-stdin
ln -s /proc/self/environ environ
ln -s /proc/1/mem agent-mem
ln -s /etc etc
ln -s / root
ln -s .. up
ln -s ../workspace/../etc via-dotdot
mkdir -p sub && ln -s ../../etc/passwd sub/passwd
mkfifo fifo
printf 'inside\\n' > real.txt && ln -s real.txt alias"}),
    )
    .await;
    assert_eq!(out["exit_code"], 0, "{out}");

    let mut seen = Vec::new();
    for path in [
        "agent-stdout",
        "agent-stdin",
        "environ",
        "agent-mem",
        "etc/passwd",
        "root/etc/passwd",
        "up/etc/passwd",
        "via-dotdot/passwd",
        "sub/passwd",
    ] {
        let (status, body) = download(&mallory, &id, path).await;
        let code = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
        seen.push(format!("GET {path}: {}", outcome(status, &code)));
        let (status, body) =
            upload(&mallory, &id, path, b"{\"id\":\"x\",\"exit\":0}\n".to_vec()).await;
        seen.push(format!("PUT {path}: {}", outcome(status, &body)));
        let (status, body) =
            crate::adapters::call(&mallory, &id, "filesystem", "read", json!({"path": path})).await;
        seen.push(format!(
            "filesystem.read {path}: {}",
            outcome(status, &body)
        ));
    }
    for dir in ["etc", "root", "up", "root/proc/1/fd"] {
        let (status, body) = mallory.get(&format!("/v1/sandboxes/{id}/dirs/{dir}")).await;
        seen.push(format!("LIST {dir}: {}", outcome(status, &body)));
    }
    for path in ["etc/hostname", "up/x", "root/tmp"] {
        let (status, body) = mallory
            .delete(&format!("/v1/sandboxes/{id}/files/{path}?recursive=true"))
            .await;
        seen.push(format!("DELETE {path}: {}", outcome(status, &body)));
    }
    let (status, body) = mallory
        .send(mallory.request(
            reqwest::Method::PUT,
            &format!("/v1/sandboxes/{id}/dirs/etc/new"),
        ))
        .await;
    seen.push(format!("MKDIR etc/new: {}", outcome(status, &body)));
    let expected: Vec<String> = [
        "agent-stdout",
        "agent-stdin",
        "environ",
        "agent-mem",
        "etc/passwd",
        "root/etc/passwd",
        "up/etc/passwd",
        "via-dotdot/passwd",
        "sub/passwd",
    ]
    .iter()
    .flat_map(|path| {
        [
            format!("GET {path}: invalid_path"),
            format!("PUT {path}: invalid_path"),
            format!("filesystem.read {path}: invalid_path"),
        ]
    })
    .chain(
        ["etc", "root", "up", "root/proc/1/fd"]
            .iter()
            .map(|d| format!("LIST {d}: invalid_path")),
    )
    .chain(
        ["etc/hostname", "up/x", "root/tmp"]
            .iter()
            .map(|p| format!("DELETE {p}: invalid_path")),
    )
    .chain(["MKDIR etc/new: invalid_path".to_string()])
    .collect();
    assert_eq!(seen, expected);

    // A FIFO is refused at once (a blocking open would hang the agent's thread).
    let (status, body) = download(&mallory, &id, "fifo").await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // Symlinks inside the workspace are followed; the link itself is what a delete removes.
    assert_eq!(
        download(&mallory, &id, "alias").await,
        (200, b"inside\n".to_vec())
    );
    let (status, _) = mallory
        .delete(&format!("/v1/sandboxes/{id}/files/etc"))
        .await;
    assert_eq!(status, 204, "deleting the link `etc` removes the link");
    // Reply-like lines in a file are only its bytes, both ways.
    let forged = format!(
        "{{\"id\":\"{}\",\"exit\":0,\"done\":true}}\n",
        "0".repeat(32)
    )
    .repeat(100);
    let (status, _) = upload(&mallory, &id, "forged.jsonl", forged.clone().into_bytes()).await;
    assert_eq!(status, 201);
    assert_eq!(
        download(&mallory, &id, "forged.jsonl").await,
        (200, forged.into_bytes())
    );
    // The agent still serves, and nothing outside the workspace changed.
    let out = exec(
        &mallory,
        &id,
        json!({"command": "cat /etc/hostname >/dev/null && ls /etc/new 2>&1; head -c 20 /etc/passwd"}),
    )
    .await;
    assert_eq!(out["exit_code"], 0, "{out}");
    assert!(
        out["stdout"].as_str().unwrap().contains("No such file"),
        "{out}"
    );
    assert!(
        out["stdout"]
            .as_str()
            .unwrap()
            .ends_with("root:x:0:0:root:/roo"),
        "{out}"
    );
}

/// A sandbox swaps a directory of the workspace for a symlink to `/` and back
/// as fast as it can while a client reads `d/etc/os-release` through the
/// files API: every answer is the decoy inside the workspace or a refusal,
/// never the container's own file. (A check-then-open, as the `realpath`
/// script of `docker exec` did, reads the real file when the swap lands
/// between the two.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_in_while_a_path_is_resolved_is_not_followed() {
    let Some((_root, _server, _admin, mallory)) = attack_server("mallory").await else {
        return;
    };
    let id = create(&mallory, "docker").await;
    let out = exec(
        &mallory,
        &id,
        json!({"command": "mkdir -p real/etc && echo decoy > real/etc/os-release && ln -s / link && mv real d
setsid sh -c 'while :; do mv -T d real; mv -T link d; mv -T d link; mv -T real d; done' </dev/null >/dev/null 2>&1 &
echo started"}),
    )
    .await;
    assert_eq!(out["stdout"], "started\n", "{out}");
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..300 {
        let (status, body) = download(&mallory, &id, "d/etc/os-release").await;
        let answer = match status {
            200 if body == b"decoy\n" => "decoy".to_string(),
            200 => format!(
                "ESCAPED: {}",
                String::from_utf8_lossy(&body[..body.len().min(40)])
            ),
            status => format!("{status}"),
        };
        *answers.entry(answer).or_default() += 1;
    }
    assert!(
        answers.keys().all(|answer| !answer.starts_with("ESCAPED")),
        "{answers:?}"
    );
    assert!(
        answers.contains_key("decoy"),
        "the swap loop ran: {answers:?}"
    );
}

/// Files larger than the agent's reply cap travel in chunks both ways and
/// arrive whole; a plugin reading a file far larger than its memory gets a
/// bounded, truncated read instead of trapping (the host read such files
/// whole into the plugin before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_files_pass_in_chunks_and_never_reach_a_plugin_whole() {
    let Some((_root, server, admin, mallory)) = attack_server("mallory").await else {
        return;
    };
    crate::adapters::install_core(&server, &admin).await;
    let id = create(&mallory, "docker").await;
    let out = exec(
        &mallory,
        &id,
        json!({"command": "head -c 3000000 /dev/urandom > big.bin && sha256sum big.bin | cut -c1-64 && truncate -s 200M sparse.bin"}),
    )
    .await;
    use sha2::Digest;
    let sum = out["stdout"].as_str().unwrap().trim().to_string();
    let (status, body) = download(&mallory, &id, "big.bin").await;
    assert_eq!((status, body.len()), (200, 3_000_000));
    assert_eq!(hex::encode(sha2::Sha256::digest(&body)), sum);
    let (status, answer) = upload(&mallory, &id, "copy.bin", body.clone()).await;
    assert_eq!(status, 201, "{answer}");
    let out = exec(
        &mallory,
        &id,
        json!({"command": "sha256sum copy.bin | cut -c1-64"}),
    )
    .await;
    assert_eq!(out["stdout"].as_str().unwrap().trim(), sum);

    let (status, answer) = crate::adapters::call(
        &mallory,
        &id,
        "filesystem",
        "read",
        json!({"path": "sparse.bin", "offset": 1000, "encoding": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let output = &answer["output"];
    assert_eq!(
        (
            output["size"].as_u64(),
            output["bytes"].as_u64(),
            output["truncated"].as_bool()
        ),
        (Some(200 * 1024 * 1024), Some(1024 * 1024), Some(true)),
        "{output}"
    );
    let out = exec(&mallory, &id, json!({"argv": ["true"]})).await;
    assert_eq!(out["exit_code"], 0, "the agent still serves: {out}");
}
