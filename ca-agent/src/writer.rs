//! Publishing certificates on the host so that no reader ever sees a key that does not match its
//! certificate, an empty file or a partial one (the Kubernetes atomic-writer layout):
//!
//! ```text
//! DIR/versions/<time>-<serial>/{key.pem, cert.pem, chain.pem, combined.pem}   written, fsynced
//! DIR/current -> versions/<time>-<serial>                                     one rename flips it
//! DIR/key.pem -> current/key.pem   (and cert.pem, chain.pem, combined.pem)     stable paths
//! DIR/bundle.pem, DIR/crl.pem                                                  replaced by rename
//! ```
//!
//! `combined.pem` (key + chain) is one file, so a reader of it is always consistent; readers of
//! separate files get a consistent pair by resolving `current` once. The previous version is kept
//! (a slow reader may still hold it); older ones are pruned.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Files in every version directory.
pub const FILES: [&str; 4] = ["key.pem", "cert.pem", "chain.pem", "combined.pem"];

/// What to publish.
pub struct Material<'a> {
    /// PEM private key.
    pub key_pem: &'a str,
    /// PEM leaf.
    pub cert_pem: &'a str,
    /// PEM leaf + intermediate.
    pub chain_pem: &'a str,
    /// Serial, hex (names the version directory).
    pub serial: &'a str,
}

impl std::fmt::Debug for Material<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("key_pem", &"<redacted>")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// Ownership and key mode applied to written files.
#[derive(Debug, Clone, Copy)]
pub struct Ownership {
    /// Owner uid, if changing it.
    pub uid: Option<u32>,
    /// Group gid, if changing it.
    pub gid: Option<u32>,
    /// Mode of key.pem and combined.pem.
    pub key_mode: u32,
}

/// One managed output directory.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

/// Creates `path` with `mode` (never wider: it does not exist before) and its final owner, and
/// only then writes `data`: no one outside the intended owner and group ever sees a byte.
fn write_new(path: &Path, data: &[u8], mode: u32, own: &Ownership) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    if own.uid.is_some() || own.gid.is_some() {
        std::os::unix::fs::fchown(&f, own.uid, own.gid)?;
    }
    f.write_all(data)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Points `link` at `target` atomically (a temporary link renamed over it).
fn replace_symlink(target: &Path, link: &Path) -> io::Result<()> {
    let name = link
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "link has no name"))?;
    let tmp = link.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, link)
}

/// Replaces `path` with `data` atomically (temporary sibling, fsync, rename, fsync directory).
pub fn replace_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let own = Ownership {
        uid: None,
        gid: None,
        key_mode: mode,
    };
    let res = write_new(&tmp, data, mode, &own)
        .and_then(|()| fs::rename(&tmp, path))
        .and_then(|()| sync_dir(dir));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

impl Layout {
    /// The layout rooted at `dir`.
    pub fn new(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stable path of one of the [`FILES`].
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The version directory `current` points at, if any.
    pub fn current(&self) -> Option<PathBuf> {
        let target = fs::read_link(self.dir.join("current")).ok()?;
        let resolved = self.dir.join(target);
        resolved.is_dir().then_some(resolved)
    }

    /// Key (zeroized on drop), leaf and chain of the current version (read through one
    /// resolution of `current`).
    pub fn read_current(&self) -> Option<(zeroize::Zeroizing<String>, String, String)> {
        let v = self.current()?;
        let read = |f: &str| fs::read_to_string(v.join(f)).ok();
        let key = zeroize::Zeroizing::new(read("key.pem")?);
        Some((key, read("cert.pem")?, read("chain.pem")?))
    }

    /// Writes a new version and flips `current` to it. The caller has validated the material.
    pub fn publish(&self, m: &Material<'_>, own: &Ownership) -> io::Result<PathBuf> {
        let versions = self.dir.join("versions");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&versions)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let serial: String = m
            .serial
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .take(40)
            .collect();
        let name = format!("{stamp:024}-{serial}");
        let vdir = versions.join(&name);
        fs::DirBuilder::new().mode(0o755).create(&vdir)?;
        // Holds the key: zeroized, and sized up front so growing it leaves no copy behind.
        let mut combined =
            zeroize::Zeroizing::new(String::with_capacity(m.key_pem.len() + m.chain_pem.len()));
        combined.push_str(m.key_pem);
        combined.push_str(m.chain_pem);
        let written = (|| {
            write_new(
                &vdir.join("key.pem"),
                m.key_pem.as_bytes(),
                own.key_mode,
                own,
            )?;
            write_new(&vdir.join("cert.pem"), m.cert_pem.as_bytes(), 0o644, own)?;
            write_new(&vdir.join("chain.pem"), m.chain_pem.as_bytes(), 0o644, own)?;
            write_new(
                &vdir.join("combined.pem"),
                combined.as_bytes(),
                own.key_mode,
                own,
            )?;
            if own.uid.is_some() || own.gid.is_some() {
                std::os::unix::fs::chown(&vdir, own.uid, own.gid)?;
            }
            sync_dir(&vdir)?;
            sync_dir(&versions)
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&vdir);
            return Err(e);
        }
        replace_symlink(
            Path::new("versions").join(&name).as_path(),
            &self.dir.join("current"),
        )?;
        self.link_stable_paths()?;
        sync_dir(&self.dir)?;
        self.prune(&name);
        Ok(vdir)
    }

    /// Makes every stable path a link through `current` (where one is missing or points
    /// elsewhere).
    fn link_stable_paths(&self) -> io::Result<()> {
        for f in FILES {
            let link = self.dir.join(f);
            let want = Path::new("current").join(f);
            if fs::read_link(&link).ok().as_deref() != Some(want.as_path()) {
                replace_symlink(&want, &link)?;
            }
        }
        Ok(())
    }

    /// Removes versions other than `current` and the newest complete one before it, and any
    /// incomplete directory left by an interrupted write.
    fn prune(&self, current: &str) {
        let versions = self.dir.join("versions");
        let Ok(rd) = fs::read_dir(&versions) else {
            return;
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let complete = |n: &str| FILES.iter().all(|f| versions.join(n).join(f).is_file());
        let previous = names
            .iter()
            .rev()
            .find(|n| n.as_str() < current && complete(n))
            .cloned();
        for n in names {
            if n != current && Some(&n) != previous.as_ref() {
                let _ = fs::remove_dir_all(versions.join(&n));
            }
        }
    }

    /// Cleans up after an interrupted run: stray temporary links and incomplete versions, and
    /// stable paths missing because the first publication stopped right after `current` flipped
    /// (the certificate in place is valid, so no renewal would come soon to create them).
    pub fn recover(&self) {
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.filter_map(|e| e.ok()) {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with('.') && n.contains(".tmp-") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        if let Some(cur) = self.current()
            && let Some(name) = cur.file_name()
        {
            if let Err(e) = self.link_stable_paths().and_then(|()| sync_dir(&self.dir)) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot link the stable paths");
            }
            self.prune(&name.to_string_lossy());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn own() -> Ownership {
        Ownership {
            uid: None,
            gid: None,
            key_mode: 0o600,
        }
    }

    fn m<'a>(serial: &'a str, key: &'a str, cert: &'a str) -> Material<'a> {
        Material {
            key_pem: key,
            cert_pem: cert,
            chain_pem: cert,
            serial,
        }
    }

    #[test]
    fn publish_flips_current_keeps_one_previous_and_sets_modes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let l = Layout::new(&tmp.path().join("out"));
        assert!(l.read_current().is_none());
        for i in 0..4 {
            let key = format!("KEY{i}");
            let cert = format!("CERT{i}");
            l.publish(&m(&format!("0{i}"), &key, &cert), &own())
                .expect("publish");
            let (k, c, _) = l.read_current().expect("current");
            assert_eq!((k.as_str(), c), (key.as_str(), cert.clone()));
            assert_eq!(
                fs::read_to_string(l.path("key.pem")).expect("stable link"),
                key
            );
            assert_eq!(
                fs::read_to_string(l.path("combined.pem")).expect("combined"),
                format!("{key}{cert}")
            );
        }
        let versions: Vec<_> = fs::read_dir(tmp.path().join("out/versions"))
            .expect("ls")
            .collect();
        assert_eq!(versions.len(), 2, "current and one previous");
        let cur = l.current().expect("current");
        let mode = |f: &str| {
            fs::metadata(cur.join(f))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(
            (mode("key.pem"), mode("combined.pem"), mode("cert.pem")),
            (0o600, 0o600, 0o644)
        );
    }

    #[test]
    fn recover_removes_incomplete_versions_and_temporary_links() {
        let tmp = tempfile::tempdir().expect("tmp");
        let l = Layout::new(tmp.path());
        l.publish(&m("01", "K", "C"), &own()).expect("publish");
        let broken = tmp.path().join("versions/99999999999999999999999-02");
        fs::create_dir_all(&broken).expect("mkdir");
        fs::write(broken.join("key.pem"), "half").expect("write");
        std::os::unix::fs::symlink("nowhere", tmp.path().join(".current.tmp-123")).expect("link");
        l.recover();
        assert!(!broken.exists());
        assert!(!tmp.path().join(".current.tmp-123").exists());
        assert_eq!(
            l.read_current().map(|t| t.0.to_string()),
            Some("K".to_string())
        );
    }

    #[test]
    fn recover_links_stable_paths_a_first_publication_did_not_get_to() {
        let tmp = tempfile::tempdir().expect("tmp");
        let l = Layout::new(tmp.path());
        l.publish(&m("01", "K", "C"), &own()).expect("publish");
        for f in FILES {
            fs::remove_file(l.path(f)).expect("unlink");
        }
        l.recover();
        for f in FILES {
            assert_eq!(
                fs::read_link(l.path(f)).expect("link"),
                Path::new("current").join(f)
            );
        }
        assert_eq!(fs::read_to_string(l.path("key.pem")).expect("key"), "K");
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).expect("meta").permissions().mode() & 0o777
    }

    #[test]
    fn a_private_file_is_created_new_with_its_mode_never_through_a_planted_one() {
        let tmp = tempfile::tempdir().expect("tmp");
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"public").expect("write");
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).expect("chmod");
        let p = tmp.path().join("account.json");
        // Whatever waits at the temporary name (a symlink to a readable file here) is not
        // written through: the file is created anew, with its mode, before any byte is written.
        let planted = tmp
            .path()
            .join(format!(".account.json.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).expect("plant");
        replace_file(&p, b"secret account key", 0o600).expect("write");
        assert_eq!(fs::read(&victim).expect("read"), b"public");
        assert_eq!(mode_of(&victim), 0o644);
        assert!(fs::symlink_metadata(&p).expect("meta").is_file());
        assert_eq!(mode_of(&p), 0o600);
        assert_eq!(fs::read(&p).expect("read"), b"secret account key");
        assert!(!planted.exists());
    }

    #[test]
    fn published_keys_get_their_owner_and_mode() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let l = Layout::new(tmp.path());
        let nobody = Ownership {
            uid: Some(65534),
            gid: Some(65534),
            key_mode: 0o640,
        };
        let v = l
            .publish(&m("01", "KEY", "CERT"), &nobody)
            .expect("publish");
        for (f, mode) in [
            ("key.pem", 0o640),
            ("combined.pem", 0o640),
            ("cert.pem", 0o644),
        ] {
            let meta = fs::metadata(v.join(f)).expect("meta");
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{f}");
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{f}");
        }
    }

    #[test]
    fn replace_file_is_atomic_and_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("bundle.pem");
        replace_file(&p, b"one", 0o644).expect("write");
        replace_file(&p, b"two", 0o644).expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(fs::read_dir(tmp.path()).expect("ls").count(), 1);
    }
}
