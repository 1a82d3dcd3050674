//! CDI specs: how a prepared claim's env reaches its containers. One spec file per claim in the
//! CDI dir, holding one CDI device named by the claim's UID whose `containerEdits.env` is the
//! claim's env; the kubelet hands its ID (`<driver>/claim=<uid>`) to the runtime, which applies
//! the edits. Files are written whole or not at all (a temp file renamed over), so a runtime
//! reading the dir never sees half a spec, and they survive restarts of spookd and the kubelet.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The CDI spec version written: the oldest with everything used here (env edits), so older
/// runtimes read it (podman 4.3 reads up to 0.5.0).
pub const CDI_VERSION: &str = "0.5.0";
/// The class of the CDI kind: `<driver>/claim`.
const CLASS: &str = "claim";
/// Longest claim UID accepted (Kubernetes UIDs are 36-character UUIDs).
const MAX_UID: usize = 64;

/// Why a CDI spec could not be written or removed.
#[derive(Debug)]
pub enum CdiError {
    /// The UID is not one a CDI device name (or our file name) can carry.
    BadUid(String),
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for CdiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CdiError::BadUid(uid) => write!(
                f,
                "claim UID {uid:?} is not 1 to {MAX_UID} letters, digits and '-' (a letter or \
                 digit at each end)"
            ),
            CdiError::Io { path, what, source } => {
                write!(f, "cannot {what} the CDI spec {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for CdiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CdiError::BadUid(_) => None,
            CdiError::Io { source, .. } => Some(source),
        }
    }
}

/// Whether `uid` can name a CDI device and a file: a UUID's characters only, starting and ending
/// with a letter or digit (as CDI device names must).
pub fn valid_uid(uid: &str) -> bool {
    let b = uid.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_UID
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec<'a> {
    cdi_version: &'static str,
    kind: &'a str,
    devices: Vec<SpecDevice<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpecDevice<'a> {
    name: &'a str,
    container_edits: Edits,
}

#[derive(Serialize)]
struct Edits {
    env: Vec<String>,
}

/// The name of a claim's CDI device: the claim's UID for the one device of the whole claim, and
/// `<uid>-r<n>` for the device of its `n`th request (in request-name order) where each request
/// gets its own (a claim the scheduler made for a pod's extended resources: each container must
/// get only its own request's env). A UUID, `-`, `r` and digits: a valid CDI device name.
pub fn device_name(uid: &str, request: Option<usize>) -> String {
    match request {
        None => uid.to_owned(),
        Some(n) => format!("{uid}-r{n}"),
    }
}

/// The CDI dir, as one driver writes it.
#[derive(Clone, Debug)]
pub struct CdiDir {
    dir: PathBuf,
    /// `<driver>/claim`.
    kind: String,
    /// Every spec file's name starts with it: `<driver>-claim_`.
    prefix: String,
}

impl CdiDir {
    pub fn new(dir: PathBuf, driver: &str) -> CdiDir {
        CdiDir {
            dir,
            kind: format!("{driver}/{CLASS}"),
            prefix: format!("{driver}-{CLASS}_"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fully qualified CDI ID of a claim's device `name` ([`device_name`]):
    /// `<driver>/claim=<name>`.
    pub fn device_id(&self, name: &str) -> String {
        format!("{}={name}", self.kind)
    }

    /// Where a claim's spec lives.
    pub fn spec_path(&self, uid: &str) -> PathBuf {
        self.dir.join(format!("{}{uid}.yaml", self.prefix))
    }

    fn tmp_path(&self, uid: &str) -> PathBuf {
        self.dir.join(format!(".{}{uid}.tmp", self.prefix))
    }

    /// Removes the temp files of writes that never finished (spookd killed, a full disk).
    pub fn sweep(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!(".{}", self.prefix);
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Whether a spec for `uid` is there (as a regular file: anything else is not ours).
    pub fn has(&self, uid: &str) -> bool {
        valid_uid(uid)
            && fs::symlink_metadata(self.spec_path(uid)).is_ok_and(|m| m.file_type().is_file())
    }

    /// The spec text of a claim's CDI devices: (name, env) each.
    pub fn render(&self, devices: &[(String, BTreeMap<String, String>)]) -> String {
        let spec = Spec {
            cdi_version: CDI_VERSION,
            kind: &self.kind,
            devices: (devices.iter())
                .map(|(name, env)| SpecDevice {
                    name,
                    container_edits: Edits {
                        env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    },
                })
                .collect(),
        };
        // Serialising plain strings and lists cannot fail.
        serde_yaml::to_string(&spec).unwrap_or_default()
    }

    /// Writes the spec of `uid` atomically: a temp file in the same dir (not named `*.yaml`, so
    /// no runtime reads it), synced, then renamed over.
    pub fn write(
        &self,
        uid: &str,
        devices: &[(String, BTreeMap<String, String>)],
    ) -> Result<(), CdiError> {
        if !valid_uid(uid) {
            return Err(CdiError::BadUid(uid.to_owned()));
        }
        let path = self.spec_path(uid);
        let tmp = self.tmp_path(uid);
        let io = |what| {
            let path = path.clone();
            move |source| CdiError::Io { path, what, source }
        };
        fs::create_dir_all(&self.dir).map_err(io("create the directory of"))?;
        // A temp file left by a spookd killed mid-write goes first; then it is created new
        // (O_EXCL: a symlink planted there is not followed).
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io("create"))?;
        file.write_all(self.render(devices).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io("write"))?;
        fs::rename(&tmp, &path).map_err(io("rename into place"))?;
        Ok(())
    }

    /// Removes the spec of `uid`; one that is not there is already removed.
    pub fn remove(&self, uid: &str) -> Result<(), CdiError> {
        if !valid_uid(uid) {
            return Err(CdiError::BadUid(uid.to_owned()));
        }
        let _ = fs::remove_file(self.tmp_path(uid));
        let path = self.spec_path(uid);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CdiError::Io {
                path,
                what: "remove",
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// The UIDs of every claim with a spec here.
    pub fn claims(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let uid = name.strip_prefix(&self.prefix)?.strip_suffix(".yaml")?;
                valid_uid(uid).then(|| uid.to_owned())
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "spookd-cdi-{}-{}",
            std::process::id(),
            crate::random::random_u64()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_spec_holds_the_claims_env_as_one_device() {
        let dir = tmp();
        let cdi = CdiDir::new(dir.clone(), "spookd.dev");
        let env = BTreeMap::from([
            ("A_ID".to_owned(), "1".to_owned()),
            ("A_NOTE".to_owned(), "x=y: \"z\"\n".to_owned()),
        ]);
        let uid = "0b7c4e36-5a1f-4c9e-9d0e-1f2a3b4c5d6e";
        let one = [(device_name(uid, None), env.clone())];
        cdi.write(uid, &one).unwrap();
        assert_eq!(cdi.device_id(uid), format!("spookd.dev/claim={uid}"));
        let path = dir.join(format!("spookd.dev-claim_{uid}.yaml"));
        let text = fs::read_to_string(&path).unwrap();
        let back: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back["cdiVersion"], "0.5.0");
        assert_eq!(back["kind"], "spookd.dev/claim");
        assert_eq!(back["devices"][0]["name"], uid);
        let edits: Vec<&str> = back["devices"][0]["containerEdits"]["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(edits, ["A_ID=1", "A_NOTE=x=y: \"z\"\n"]);
        assert!(cdi.has(uid));
        assert_eq!(cdi.claims(), [uid]);
        // Only the spec is left: the temp file was renamed.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        cdi.remove(uid).unwrap();
        cdi.remove(uid).unwrap();
        assert!(!cdi.has(uid));
        // A write killed halfway leaves a temp file: the next write replaces it, a sweep removes
        // it, and a symlink planted there is not followed.
        let tmp = dir.join(format!(".spookd.dev-claim_{uid}.tmp"));
        std::os::unix::fs::symlink("/nonexistent/target", &tmp).unwrap();
        cdi.write(uid, &one).unwrap();
        assert!(!tmp.exists() && fs::symlink_metadata(&tmp).is_err());
        fs::write(&tmp, "half").unwrap();
        cdi.sweep();
        assert!(fs::symlink_metadata(&tmp).is_err());
        cdi.remove(uid).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    /// A claim the scheduler made for a pod's extended resources: a device per request, each with
    /// its own env, in one spec.
    #[test]
    fn a_spec_holds_a_device_per_request_where_asked() {
        let dir = tmp();
        let cdi = CdiDir::new(dir.clone(), "spookd.dev");
        let uid = "0b7c4e36-5a1f-4c9e-9d0e-1f2a3b4c5d6e";
        let env = |v: &str| BTreeMap::from([("A_ID".to_owned(), v.to_owned())]);
        let devices = [
            (device_name(uid, Some(0)), env("1")),
            (device_name(uid, Some(1)), env("2")),
        ];
        cdi.write(uid, &devices).unwrap();
        let text = fs::read_to_string(cdi.spec_path(uid)).unwrap();
        let back: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let want: serde_yaml::Value = serde_yaml::from_str(&format!(
            "[{{name: {uid}-r0, containerEdits: {{env: [A_ID=1]}}}}, \
             {{name: {uid}-r1, containerEdits: {{env: [A_ID=2]}}}}]"
        ))
        .unwrap();
        assert_eq!(back["devices"], want);
        assert_eq!(
            cdi.device_id(&device_name(uid, Some(1))),
            format!("spookd.dev/claim={uid}-r1")
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn uids_that_could_leave_the_dir_are_refused() {
        let cdi = CdiDir::new(PathBuf::from("/nonexistent"), "d.io");
        for bad in [
            "",
            "../x",
            "a/b",
            "a.b",
            &"a".repeat(65),
            "a b",
            "é",
            "-a",
            "a-",
        ] {
            assert!(
                matches!(cdi.write(bad, &[]), Err(CdiError::BadUid(_))),
                "{bad:?}"
            );
            assert!(
                matches!(cdi.remove(bad), Err(CdiError::BadUid(_))),
                "{bad:?}"
            );
            assert!(!cdi.has(bad));
        }
    }
}
