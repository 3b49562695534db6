//! Small, careful file writes for the CLI: private modes from creation, write to a temporary
//! sibling, fsync, rename, fsync the directory. A reader sees the old file or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode for private keys and databases.
pub const PRIVATE: u32 = 0o600;
/// Mode for certificates and bundles.
pub const PUBLIC: u32 = 0o644;

/// Creates `dir` (and parents) with mode 0700 if missing; refuses a non-directory.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        Err(e) => Err(e),
    }
}

/// Creates a new file with `mode`, failing if it exists.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

/// Fsyncs a directory so a rename or creation in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Atomically replaces `path` with `data` at `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = create_new(&tmp, mode)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Takes a shared lock (`flock`) on directory `dir`, waiting while an exclusive one is held; it
/// lasts as long as the returned handle. `serve` holds one on its data directory, so that
/// `restore` can tell a running server from an idle one and a server cannot start mid-restore.
pub fn lock_dir_shared(dir: &Path) -> io::Result<File> {
    let f = File::open(dir)?;
    f.lock_shared()?;
    Ok(f)
}

/// Takes an exclusive lock on directory `dir` unless some process holds a lock on it (`None`);
/// it lasts as long as the returned handle.
pub fn try_lock_dir_exclusive(dir: &Path) -> io::Result<Option<File>> {
    let f = File::open(dir)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Checks, without creating anything, that `dir` could receive files: an existing writable
/// directory, or a missing one whose nearest existing ancestor is a writable directory.
pub fn check_output_dir(dir: &Path) -> io::Result<()> {
    let mut probe_in = dir;
    loop {
        match fs::metadata(probe_in) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", probe_in.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                probe_in = match probe_in.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
            }
            Err(e) => return Err(e),
        }
    }
    let meta = fs::metadata(probe_in)?;
    if meta.permissions().readonly() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "directory is read-only",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("key.pem");
        write_atomic(&p, b"one", PRIVATE).expect("write");
        write_atomic(&p, b"two", PRIVATE).expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(
            fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }

    #[test]
    fn a_shared_directory_lock_keeps_the_exclusive_one_out() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = lock_dir_shared(dir.path()).expect("shared");
        let second = lock_dir_shared(dir.path()).expect("shared locks coexist");
        assert!(try_lock_dir_exclusive(dir.path()).expect("try").is_none());
        drop(first);
        assert!(try_lock_dir_exclusive(dir.path()).expect("try").is_none());
        drop(second);
        let held = try_lock_dir_exclusive(dir.path()).expect("try");
        assert!(held.is_some());
        assert!(try_lock_dir_exclusive(dir.path()).expect("try").is_none());
    }

    #[test]
    fn output_dir_check_creates_nothing_and_refuses_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("f");
        fs::write(&f, b"x").expect("write");
        assert!(check_output_dir(&f).is_err());
        assert!(check_output_dir(&f.join("below")).is_err());
        let d = dir.path().join("a/b");
        check_output_dir(&d).expect("acceptable");
        assert!(!dir.path().join("a").exists());
        ensure_private_dir(&d).expect("created");
        assert_eq!(
            fs::metadata(&d).expect("meta").permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_private_file_is_created_new_with_its_mode_never_through_a_planted_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"public").expect("write");
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).expect("chmod");
        let p = dir.path().join("key.pem");
        // Whatever waits at the temporary name (a symlink to a readable file here) is not
        // written through: the file is created anew, with its mode, before any byte is written.
        let planted = dir
            .path()
            .join(format!(".key.pem.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).expect("plant");
        write_atomic(&p, b"secret key", PRIVATE).expect("write");
        assert_eq!(fs::read(&victim).expect("read"), b"public");
        let mode = |p: &Path| fs::symlink_metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&victim), 0o644);
        assert!(fs::symlink_metadata(&p).expect("meta").is_file());
        assert_eq!(mode(&p), 0o600);
        assert!(!planted.exists());
        // And a file that exists already is never opened for a private write.
        assert_eq!(
            create_new(&victim, PRIVATE).expect_err("exists").kind(),
            io::ErrorKind::AlreadyExists
        );
    }
}
