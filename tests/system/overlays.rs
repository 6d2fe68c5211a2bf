//! Overlays through the real binary: the overlays of `openai-cn-pack` listed and planned over
//! HTTP and following a hot-swapped pack with no restart, a bad overlay quarantining its pack,
//! and `wharf overlay apply` / `--revert` on a local git checkout of the `mini-relay` fixture.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use wharf_e2e::{
    ADMIN_KEY, Client, WharfProcess, build_pack, copy_dir, install_pack, openai_cn_version,
    repo_root, wharf_bin,
};

pub const OVERLAY: &str = "mini-relay-chat-completions";
pub const TARGET: &str = "mini-relay";

/// A git repository of the `mini-relay` fixture at `version` (committed, tagged `v<version>`).
pub fn relay_repo(parent: &Path, version: &str) -> PathBuf {
    let dir = parent.join(format!("mini-relay-{version}"));
    copy_dir(&repo_root().join("tests/fixtures/cases/mini-relay"), &dir);
    std::fs::write(dir.join("VERSION"), format!("{version}\n")).unwrap();
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &["commit", "-q", "-m", "mini-relay"],
        &["tag", &format!("v{version}")],
    ] {
        git(&dir, args);
    }
    dir
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=wharf-test",
            "-c",
            "user.email=test@wharf.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running git");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn plan_body(version: &str) -> Value {
    json!({"target": TARGET, "version": version})
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let o = o.get("overlay").unwrap_or(o);
            format!(
                "{}/{}@{}",
                o["pack"].as_str().unwrap(),
                o["id"].as_str().unwrap(),
                o["pack_version"].as_str().unwrap()
            )
        })
        .collect()
}

/// The built `openai-cn-pack` with a new version and its overlay's range changed.
fn variant(built: &Path, out: &Path, version: &str, versions: &str) {
    copy_dir(built, out);
    let manifest = out.join("pack.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace(
            &format!("version = \"{}\"", openai_cn_version()),
            &format!("version = \"{version}\""),
        ),
    )
    .unwrap();
    let overlay = out.join(format!("overlays/{OVERLAY}/overlay.toml"));
    let text = std::fs::read_to_string(&overlay).unwrap();
    assert!(text.contains(">=0.1.120, <0.1.140"));
    std::fs::write(&overlay, text.replace(">=0.1.120, <0.1.140", versions)).unwrap();
}

#[tokio::test]
async fn overlays_are_listed_planned_and_follow_a_new_pack_version_without_restart() {
    let root = tempfile::tempdir().unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let pid = server.pid();
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let (_, key) = admin.post("/v1/keys", json!({"owner": "alice"})).await;
    let alice = Client::new(&server, key["key"].as_str());
    let built = root.path().join("built/openai-cn-pack");
    build_pack("packs/openai-cn-pack", &built);
    install_pack(&built, &server.packs_dir, "openai-cn-pack");
    admin.wait_for_provider("kimi-a7m").await;

    // Any key sees the active packs' overlays.
    let (status, list) = alice.get("/v1/overlays").await;
    assert_eq!(status, 200, "{list}");
    let ours = list
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == OVERLAY)
        .unwrap_or_else(|| panic!("{OVERLAY} in {list}"));
    assert_eq!(ours["pack"], "openai-cn-pack");
    assert_eq!(ours["pack_version"], openai_cn_version());
    assert_eq!(ours["target"], TARGET);
    assert_eq!(ours["versions"], ">=0.1.120, <0.1.140");
    assert_eq!(
        ours["patches"],
        json!(["0001-custom-upstreams-use-chat-completions.patch"])
    );
    assert_eq!(
        ours["paths"],
        json!([
            "relay.py",
            "patches.d/openai-cn-pack-mini-relay-chat-completions"
        ])
    );
    let (_, detail) = alice.get("/v1/packs/openai-cn-pack").await;
    assert_eq!(detail["overlays"], json!([OVERLAY]));

    let (status, plan) = alice.post("/v1/overlays/plan", plan_body("0.1.129")).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(
        ids(&plan["matching"]),
        [format!("openai-cn-pack/{OVERLAY}@{}", openai_cn_version())]
    );
    assert_eq!(plan["not_matching"], json!([]));
    let (_, plan) = alice.post("/v1/overlays/plan", plan_body("v0.1.140")).await;
    assert_eq!(plan["version"], "0.1.140");
    assert_eq!(plan["matching"], json!([]));
    assert_eq!(plan["not_matching"][0]["mismatch"], "version_out_of_range");
    assert_eq!(
        plan["not_matching"][0]["reason"],
        "version 0.1.140 is outside >=0.1.120, <0.1.140"
    );
    let (_, plan) = alice
        .post(
            "/v1/overlays/plan",
            json!({"target": "sub2api", "version": "0.1.129"}),
        )
        .await;
    assert_eq!(plan["not_matching"][0]["mismatch"], "wrong_target");
    assert_eq!(
        plan["not_matching"][0]["reason"],
        "its target is \"mini-relay\", not \"sub2api\""
    );
    for bad in [
        json!({"target": TARGET, "version": "latest"}),
        json!({"target": "", "version": "0.1.129"}),
        json!({"target": TARGET}),
        json!({"target": TARGET, "version": "0.1.129", "extra": 1}),
    ] {
        let (status, body) = alice.post("/v1/overlays/plan", bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert_eq!(body["error"]["code"], "validation_error", "{bad} -> {body}");
    }

    // A new version whose overlay no longer covers 0.1.129: the plan changes, same process.
    let next = root.path().join("built/openai-cn-pack-1.2.0");
    variant(&built, &next, "1.2.0", ">=0.1.130, <0.1.140");
    install_pack(&next, &server.packs_dir, "openai-cn-pack-1.2.0");
    let plan = admin
        .wait_for_post(
            "/v1/overlays/plan",
            plan_body("0.1.129"),
            "the 1.2.0 plan",
            |plan| plan["matching"] == json!([]),
        )
        .await;
    assert_eq!(
        ids(&plan["not_matching"]),
        [format!("openai-cn-pack/{OVERLAY}@1.2.0")]
    );
    assert_eq!(
        plan["not_matching"][0]["reason"],
        "version 0.1.129 is outside >=0.1.130, <0.1.140"
    );
    let (_, plan) = alice.post("/v1/overlays/plan", plan_body("0.1.131")).await;
    assert_eq!(
        ids(&plan["matching"]),
        [format!("openai-cn-pack/{OVERLAY}@1.2.0")]
    );
    assert_eq!(server.pid(), pid, "no restart");

    // A bad overlay quarantines its pack with the reason; 1.2.0 keeps serving.
    let bad = root.path().join("built/openai-cn-pack-1.3.0");
    variant(&built, &bad, "1.3.0", ">=0.1.120");
    let patch = bad.join(format!(
        "overlays/{OVERLAY}/0001-custom-upstreams-use-chat-completions.patch"
    ));
    let text = std::fs::read_to_string(&patch).unwrap();
    std::fs::write(
        &patch,
        text.replace("a/relay.py", "a/../../etc/cron.d/relay")
            .replace("b/relay.py", "b/../../etc/cron.d/relay"),
    )
    .unwrap();
    install_pack(&bad, &server.packs_dir, "openai-cn-pack-1.3.0");
    let rows = admin
        .wait_for("/v1/packs", "1.3.0 quarantined", |rows| {
            rows.as_array()
                .unwrap()
                .iter()
                .any(|r| r["version"] == "1.3.0" && r["state"] == "quarantined")
        })
        .await;
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "1.3.0")
        .unwrap();
    let reason = row["error"].as_str().unwrap();
    assert!(
        reason.contains(&format!("overlays/{OVERLAY}/overlay.toml: patches[0]"))
            && reason.contains("must not contain `..`"),
        "{reason}"
    );
    let (_, plan) = alice.post("/v1/overlays/plan", plan_body("0.1.131")).await;
    assert_eq!(
        ids(&plan["matching"]),
        [format!("openai-cn-pack/{OVERLAY}@1.2.0")]
    );
}

fn wharf_overlay(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(wharf_bin())
        .arg("overlay")
        .arg("apply")
        .args(args)
        .output()
        .expect("running wharf overlay apply");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn wharf_overlay_apply_and_revert_on_a_local_checkout() {
    let root = tempfile::tempdir().unwrap();
    let pack = repo_root().join("packs/openai-cn-pack");
    let pack = pack.to_str().unwrap();
    let repo = relay_repo(root.path(), "0.1.129");
    let dir = repo.to_str().unwrap();
    let matching = [
        "--pack",
        pack,
        "--target",
        TARGET,
        "--version",
        "0.1.129",
        dir,
    ];

    let (ok, out, err) = wharf_overlay(&[&["--dry-run"][..], &matching[..]].concat());
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "would apply openai-cn-pack/{OVERLAY} ({})",
            openai_cn_version()
        )),
        "{out}"
    );
    assert_eq!(
        git(&repo, &["status", "--porcelain"]),
        "",
        "a dry run writes nothing"
    );

    let (ok, out, err) = wharf_overlay(&matching);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "applied openai-cn-pack/{OVERLAY} ({}): relay.py, patches.d/openai-cn-pack-{OVERLAY}",
            openai_cn_version()
        )),
        "{out}"
    );
    assert_eq!(
        git(&repo, &["status", "--porcelain"]),
        " M relay.py\n?? patches.d/\n"
    );
    let relay = std::fs::read_to_string(repo.join("relay.py")).unwrap();
    assert!(relay.contains("UPSTREAM_RESPONSES"), "the patch is in");
    let diff = git(&repo, &["diff"]);

    // Again: detected, not duplicated.
    let (ok, out, _) = wharf_overlay(&matching);
    assert!(
        ok && out.contains(&format!("already applied openai-cn-pack/{OVERLAY}")),
        "{out}"
    );
    assert_eq!(git(&repo, &["diff"]), diff);

    // Another version: nothing matches, nothing changes, and the answer says why.
    let (ok, out, _) = wharf_overlay(&[
        "--pack",
        pack,
        "--target",
        TARGET,
        "--version",
        "0.1.140",
        dir,
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("version 0.1.140 is outside >=0.1.120, <0.1.140"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "no overlay of openai-cn-pack {} matches mini-relay 0.1.140",
            openai_cn_version()
        )),
        "{out}"
    );
    assert_eq!(git(&repo, &["diff"]), diff);

    let (ok, out, err) = wharf_overlay(&[&matching[..], &["--revert"][..]].concat());
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("reverted openai-cn-pack/{OVERLAY}")),
        "{out}"
    );
    assert_eq!(
        git(&repo, &["status", "--porcelain", "--ignored"]),
        "",
        "revert leaves a clean tree"
    );

    // A tree where the hunk's lines changed: overlay_conflict naming file and hunk, and the
    // tree is exactly as it was (not even the added file is written).
    let relay = std::fs::read_to_string(repo.join("relay.py")).unwrap();
    std::fs::write(
        repo.join("relay.py"),
        relay.replace(
            "    return \"responses\"\n",
            "    return \"responses\"  # local change\n",
        ),
    )
    .unwrap();
    let local = git(&repo, &["diff"]);
    let (ok, out, err) = wharf_overlay(&matching);
    assert!(!ok, "a conflict fails: {out}");
    assert!(err.contains("(overlay_conflict)"), "{err}");
    assert!(
        err.contains(&format!(
            "overlay openai-cn-pack/{OVERLAY}: patch 0001-custom-upstreams-use-chat-completions.patch: relay.py: hunk 1 of 1 (@@ -44,7 +44,12 @@) does not apply"
        )),
        "{err}"
    );
    assert_eq!(git(&repo, &["diff"]), local);
    assert_eq!(git(&repo, &["status", "--porcelain"]), " M relay.py\n");

    // By name instead of matching; an unknown name is refused.
    git(&repo, &["checkout", "-q", "relay.py"]);
    let (ok, out, _) = wharf_overlay(&["--pack", pack, "--overlay", OVERLAY, dir]);
    assert!(
        ok && out.contains(&format!("applied openai-cn-pack/{OVERLAY}")),
        "{out}"
    );
    let (ok, _, err) = wharf_overlay(&["--pack", pack, "--overlay", "nope", dir]);
    assert!(!ok && err.contains("(not_found)"), "{err}");
}
