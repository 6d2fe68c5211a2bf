//! Overlays: patches a pack carries for one target (e.g. a relay host) and one version range,
//! applied to a checked-out tree before it is built.
//!
//! A pack declares the data folder `overlays`; each `overlays/<id>/overlay.toml` names its
//! `target`, a semver requirement `versions`, a description, an ordered list of unified-diff
//! `patches` and `files` to add. They load with their pack (a bad one fails the load, like a
//! bad manifest) and hot-reload with it: what `GET /v1/overlays` and the plan see is always the
//! active generations' overlays.
//!
//! Applying ([`apply`]) is all or nothing: every patch of every selected overlay is first
//! applied in memory, and the tree is written only when all of them apply; a hunk that does not
//! is `overlay_conflict`, naming the overlay, patch, file and hunk. An overlay already applied
//! (its reverse applies cleanly) is reported and not applied twice; reverting undoes it.

pub mod apply;
pub mod load;

use std::sync::Arc;

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};

use crate::error::{WharfError, WharfResult};
use crate::packs::PackSet;

/// One overlay as its pack carries it (validated when the pack loaded).
#[derive(Debug)]
pub struct Overlay {
    /// The folder name under `overlays/`.
    pub id: String,
    /// What it patches, e.g. a relay host's name.
    pub target: String,
    /// The target versions it is for.
    pub versions: VersionReq,
    pub description: String,
    /// Applied in this order.
    pub patches: Vec<PatchFile>,
    /// Added after the patches.
    pub files: Vec<AddedFile>,
}

#[derive(Debug)]
pub struct PatchFile {
    /// Its path in the overlay folder.
    pub name: String,
    pub text: Vec<u8>,
    /// The tree paths it changes.
    pub files: Vec<String>,
}

#[derive(Debug)]
pub struct AddedFile {
    /// Where it goes in the tree.
    pub path: String,
    pub content: Vec<u8>,
}

impl Overlay {
    /// Every tree path the overlay touches, in order, once each.
    pub fn paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = Vec::new();
        for path in self
            .patches
            .iter()
            .flat_map(|p| p.files.iter())
            .chain(self.files.iter().map(|f| &f.path))
        {
            if !paths.contains(path) {
                paths.push(path.clone());
            }
        }
        paths
    }

    /// Why it does not apply to `target` at `version`; `None` when it does.
    pub fn mismatch(&self, target: &str, version: &Version) -> Option<(Mismatch, String)> {
        if self.target != target {
            return Some((
                Mismatch::WrongTarget,
                format!("its target is {:?}, not {target:?}", self.target),
            ));
        }
        // A pre-release such as 0.1.130-rc.1 counts as its release for matching: a relay's
        // build tag must not take it out of a range that names the release.
        let release = Version::new(version.major, version.minor, version.patch);
        if !self.versions.matches(version) && !self.versions.matches(&release) {
            return Some((
                Mismatch::VersionOutOfRange,
                format!("version {version} is outside {}", self.versions),
            ));
        }
        None
    }
}

/// An overlay chosen to apply, with the pack generation that carries it.
#[derive(Debug, Clone)]
pub struct Selected {
    pub pack: String,
    pub pack_version: String,
    pub overlay: Arc<Overlay>,
}

impl Selected {
    /// `<pack>/<overlay>`: how answers and logs name it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.pack, self.overlay.id)
    }
}

/// An overlay of an active pack (`GET /v1/overlays`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OverlayInfo {
    pub pack: String,
    pub pack_version: String,
    /// The pack generation that carries it.
    pub generation: u64,
    pub id: String,
    pub target: String,
    /// A semver requirement, e.g. `>=0.1.120, <0.1.140`.
    pub versions: String,
    pub description: String,
    /// Patch files, in the order they apply.
    pub patches: Vec<String>,
    /// Every tree path it changes or adds.
    pub paths: Vec<String>,
}

/// Why an overlay does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mismatch {
    WrongTarget,
    VersionOutOfRange,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NotMatching {
    pub overlay: OverlayInfo,
    pub mismatch: Mismatch,
    /// In words: `its target is "sub2api", not "mini-relay"`, `version 0.1.129 is outside >=0.1.130`.
    pub reason: String,
}

/// `POST /v1/overlays/plan {target, version}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// What is patched, e.g. a relay host's name.
    #[schema(min_length = 1, max_length = 64)]
    pub target: String,
    /// Its semver version (a leading `v` is allowed).
    #[schema(min_length = 1, max_length = 64)]
    pub version: String,
}

/// Which overlays of the active packs apply to a target version, and why the others don't.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OverlayPlan {
    pub target: String,
    pub version: String,
    /// In the order they would apply.
    pub matching: Vec<OverlayInfo>,
    pub not_matching: Vec<NotMatching>,
}

/// Every overlay of the active packs, by pack id then overlay id (the order they apply in).
pub fn catalog(set: &PackSet) -> Vec<(OverlayInfo, Selected)> {
    let mut out = Vec::new();
    for pack in set.active.values() {
        for overlay in &pack.overlays {
            out.push((
                info(
                    &pack.id,
                    &pack.version.to_string(),
                    pack.generation,
                    overlay,
                ),
                Selected {
                    pack: pack.id.clone(),
                    pack_version: pack.version.to_string(),
                    overlay: overlay.clone(),
                },
            ));
        }
    }
    out
}

pub fn info(pack: &str, pack_version: &str, generation: u64, overlay: &Overlay) -> OverlayInfo {
    OverlayInfo {
        pack: pack.to_string(),
        pack_version: pack_version.to_string(),
        generation,
        id: overlay.id.clone(),
        target: overlay.target.clone(),
        versions: overlay.versions.to_string(),
        description: overlay.description.clone(),
        patches: overlay.patches.iter().map(|p| p.name.clone()).collect(),
        paths: overlay.paths(),
    }
}

/// A target version as callers write it: semver, with or without a leading `v`.
pub fn parse_version(version: &str) -> WharfResult<Version> {
    let trimmed = version.trim();
    let bare = trimmed.strip_prefix(['v', 'V']).unwrap_or(trimmed);
    Version::parse(bare).map_err(|err| {
        WharfError::validation(format!(
            "`version` {:?} is not a semver version: {err}",
            version.chars().take(64).collect::<String>()
        ))
    })
}

fn check_target(target: &str) -> WharfResult<()> {
    if target.is_empty() || target.len() > 64 || target.chars().any(char::is_control) {
        return Err(WharfError::validation(
            "`target` must be 1-64 characters without control characters",
        ));
    }
    Ok(())
}

/// Splits `overlays` into those that apply to `target` at `version` and the others, with why.
pub fn plan(
    overlays: Vec<(OverlayInfo, Selected)>,
    target: &str,
    version: &str,
) -> WharfResult<(OverlayPlan, Vec<Selected>)> {
    check_target(target)?;
    let parsed = parse_version(version)?;
    let mut plan = OverlayPlan {
        target: target.to_string(),
        version: parsed.to_string(),
        matching: Vec::new(),
        not_matching: Vec::new(),
    };
    let mut selected = Vec::new();
    for (info, chosen) in overlays {
        match chosen.overlay.mismatch(target, &parsed) {
            None => {
                plan.matching.push(info);
                selected.push(chosen);
            }
            Some((mismatch, reason)) => plan.not_matching.push(NotMatching {
                overlay: info,
                mismatch,
                reason,
            }),
        }
    }
    Ok((plan, selected))
}

/// Overlays named explicitly, as `<overlay>` or `<pack>/<overlay>`, in the order given. An
/// unknown name is `not_found`; a bare name two packs carry is ambiguous (`validation_error`).
pub fn by_name(
    overlays: &[(OverlayInfo, Selected)],
    names: &[String],
) -> WharfResult<Vec<Selected>> {
    let mut out: Vec<Selected> = Vec::new();
    for name in names {
        let (pack, id) = match name.split_once('/') {
            Some((pack, id)) => (Some(pack), id),
            None => (None, name.as_str()),
        };
        let found: Vec<&Selected> = overlays
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.overlay.id == id && pack.is_none_or(|p| p == s.pack))
            .collect();
        let shown: String = name.chars().take(130).collect();
        match found.as_slice() {
            [] => {
                return Err(WharfError::not_found(format!(
                    "overlay {shown:?} in an active pack"
                )));
            }
            [one] => {
                if !out.iter().any(|s| s.name() == one.name()) {
                    out.push((*one).clone());
                }
            }
            several => {
                let names: Vec<String> = several.iter().map(|s| s.name()).collect();
                return Err(WharfError::validation(format!(
                    "overlay {shown:?} is carried by several packs ({}); name it as <pack>/<overlay>",
                    names.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

/// At most this many overlays may be named in one request.
pub const MAX_NAMED: usize = 32;

/// What a case asks of overlays: `target` and `version` to match, or `overlays` by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub target: Option<String>,
    pub version: Option<String>,
    /// When given, exactly these apply (target and version are then only recorded).
    pub overlays: Vec<String>,
}

impl Request {
    /// Checks the shape of the request (not yet which overlays it selects: packs may change
    /// before the patch phase runs). `target` and `version` come together.
    pub fn check(&self) -> WharfResult<()> {
        match (&self.target, &self.version) {
            (Some(target), Some(version)) => {
                check_target(target)?;
                parse_version(version)?;
            }
            (None, None) => {}
            _ => {
                return Err(WharfError::validation(
                    "`target` and `version` go together: give both to apply the overlays that match, or neither",
                ));
            }
        }
        if self.overlays.len() > MAX_NAMED {
            return Err(WharfError::validation(format!(
                "`overlays` names at most {MAX_NAMED} overlays"
            )));
        }
        for name in &self.overlays {
            let valid = (1..=130).contains(&name.len())
                && name.split('/').count() <= 2
                && name.split('/').all(crate::packs::manifest::valid_id);
            if !valid {
                return Err(WharfError::validation(
                    "`overlays` entries are overlay ids or <pack id>/<overlay id> ([a-z0-9-], 2-64 chars each)",
                ));
            }
        }
        Ok(())
    }

    /// Whether anything is asked at all.
    pub fn is_empty(&self) -> bool {
        self.target.is_none() && self.overlays.is_empty()
    }

    /// The overlays of the active packs this request selects, with log lines that say what
    /// was chosen and why the others were not.
    pub fn select(&self, set: &PackSet) -> WharfResult<(Vec<Selected>, Vec<String>)> {
        let all = catalog(set);
        let mut lines = Vec::new();
        if !self.overlays.is_empty() {
            let chosen = by_name(&all, &self.overlays)?;
            lines.push(format!(
                "overlays named: {}",
                chosen
                    .iter()
                    .map(|s| format!("{} ({})", s.name(), s.pack_version))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            return Ok((chosen, lines));
        }
        let (Some(target), Some(version)) = (&self.target, &self.version) else {
            return Ok((Vec::new(), vec!["no overlays requested".into()]));
        };
        let (plan, chosen) = plan(all, target, version)?;
        for other in &plan.not_matching {
            lines.push(format!(
                "skipped {}/{} ({}): {}",
                other.overlay.pack, other.overlay.id, other.overlay.pack_version, other.reason
            ));
        }
        lines.push(if chosen.is_empty() {
            format!("no overlay matches {} {}", plan.target, plan.version)
        } else {
            format!(
                "matching {} {}: {}",
                plan.target,
                plan.version,
                chosen
                    .iter()
                    .map(|s| format!("{} ({})", s.name(), s.pack_version))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        Ok((chosen, lines))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(id: &str, target: &str, versions: &str) -> Arc<Overlay> {
        Arc::new(Overlay {
            id: id.into(),
            target: target.into(),
            versions: versions.parse().unwrap(),
            description: String::new(),
            patches: Vec::new(),
            files: vec![AddedFile {
                path: "NOTE".into(),
                content: b"x".to_vec(),
            }],
        })
    }

    fn entry(pack: &str, o: Arc<Overlay>) -> (OverlayInfo, Selected) {
        (
            info(pack, "1.0.0", 1, &o),
            Selected {
                pack: pack.into(),
                pack_version: "1.0.0".into(),
                overlay: o,
            },
        )
    }

    #[test]
    fn plan_says_why_the_others_do_not_match() {
        let all = vec![
            entry("p", overlay("fix", "mini-relay", ">=0.1.120, <0.1.140")),
            entry("p", overlay("later", "mini-relay", ">=0.1.140")),
            entry("p", overlay("other", "sub2api", "*")),
        ];
        let (plan, selected) = plan(all, "mini-relay", "v0.1.129").unwrap();
        assert_eq!(plan.version, "0.1.129");
        assert_eq!(selected.len(), 1);
        assert_eq!(plan.matching[0].id, "fix");
        let reasons: Vec<_> = plan
            .not_matching
            .iter()
            .map(|n| (n.overlay.id.as_str(), n.mismatch, n.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    "later",
                    Mismatch::VersionOutOfRange,
                    "version 0.1.129 is outside >=0.1.140"
                ),
                (
                    "other",
                    Mismatch::WrongTarget,
                    "its target is \"sub2api\", not \"mini-relay\""
                ),
            ]
        );
        // A pre-release counts as its release.
        let (plan, _) = plan_one("0.1.130-rc.1");
        assert_eq!(plan.matching.len(), 1);
        assert!(super::plan(Vec::new(), "mini-relay", "latest").is_err());
        assert!(super::plan(Vec::new(), "", "1.0.0").is_err());
    }

    fn plan_one(version: &str) -> (OverlayPlan, Vec<Selected>) {
        plan(
            vec![entry(
                "p",
                overlay("fix", "mini-relay", ">=0.1.120, <0.1.140"),
            )],
            "mini-relay",
            version,
        )
        .unwrap()
    }

    #[test]
    fn names_resolve_and_ambiguity_is_refused() {
        let all = vec![
            entry("a", overlay("fix", "t", "*")),
            entry("b", overlay("fix", "t", "*")),
            entry("b", overlay("only", "t", "*")),
        ];
        assert_eq!(by_name(&all, &["only".into()]).unwrap()[0].name(), "b/only");
        assert_eq!(by_name(&all, &["a/fix".into()]).unwrap()[0].name(), "a/fix");
        assert!(
            by_name(&all, &["fix".into()])
                .unwrap_err()
                .message
                .contains("several packs")
        );
        assert_eq!(
            by_name(&all, &["nope".into()]).unwrap_err().code,
            crate::error::ErrorCode::NotFound
        );
    }
}
