//! One writer per folder: every stage takes an advisory lock (`flock`) on what it writes before
//! writing it, so that two trainings of one run, or two pipelines on one `work_dir`, cannot
//! overwrite each other. The lock file sits beside the folder (`.<name>.lock`), so the folder
//! itself may be built aside and swapped in; it holds the holder's pid for the message. The kernel
//! drops the lock when its holder dies, so a lock left by a killed process never blocks.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Held while a process writes a folder; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct FolderLock {
    folder: PathBuf,
    _file: File,
}

impl FolderLock {
    pub fn folder(&self) -> &Path {
        &self.folder
    }
}

/// The lock file of `folder`.
pub fn lock_path(folder: &Path) -> PathBuf {
    let folder = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    folder.with_file_name(format!(".{name}.lock"))
}

/// Takes the lock on `folder` (which need not exist yet), or says who holds it.
pub fn lock_folder(folder: &Path) -> Result<FolderLock> {
    lock_folder_with(folder, &lock_path(folder))
}

/// [`lock_folder`] through the lock file `file` (inside the folder, say, for a folder that is
/// never swapped whole).
pub fn lock_folder_with(folder: &Path, file: &Path) -> Result<FolderLock> {
    let file = take(file, folder, true)?;
    Ok(FolderLock {
        folder: folder.to_path_buf(),
        _file: file,
    })
}

/// Held by one of N processes that write disjoint shares of one folder.
#[derive(Debug)]
pub struct ShardLock {
    _folder: File,
    _shard: File,
}

/// Takes shard `index` of `count` of `folder`: shared with the other shards, refused while a
/// process writes the whole folder ([`lock_folder`]) or the same shard.
pub fn lock_shard(folder: &Path, index: usize, count: usize) -> Result<ShardLock> {
    let whole = take(&lock_path(folder), folder, false)?;
    let shard = lock_path(folder).with_extension(format!("shard-{index}-of-{count}.lock"));
    let shard = take(&shard, folder, true)?;
    Ok(ShardLock {
        _folder: whole,
        _shard: shard,
    })
}

/// Locks `path` (exclusively, or shared with other shared holders) for writing `folder`.
fn take(path: &Path, folder: &Path, exclusive: bool) -> Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let taken = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match taken {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!("process {pid}"),
                Err(_) => "another process".to_string(),
            };
            return Err(Error::invalid(
                folder,
                format!(
                    "in use: {holder} is writing here (one writer per folder); wait for it or \
                     stop it"
                ),
            ));
        }
        Err(TryLockError::Error(e)) => return Err(Error::io(path, e)),
    }
    if exclusive {
        let pid = std::process::id().to_string();
        (|| {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(pid.as_bytes())?;
            file.flush()
        })()
        .map_err(|e| Error::io(path, e))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("runs").join("demo");
        let first = lock_folder(&folder).unwrap();
        assert_eq!(first.folder(), folder);
        // flock locks belong to an open file: a second open in this process conflicts too.
        let refused = lock_folder(&folder).unwrap_err().to_string();
        assert!(refused.contains(&folder.display().to_string()), "{refused}");
        assert!(
            refused.contains(&format!("process {}", std::process::id())),
            "{refused}"
        );
        drop(first);
        let again = lock_folder(&dir.path().join("runs").join("other"));
        assert!(again.is_ok(), "another folder is free");
        let whole = lock_folder(&folder).unwrap();
        assert!(
            lock_shard(&folder, 1, 2).is_err(),
            "the whole folder is taken"
        );
        drop(whole);
        // Shards share the folder with each other, not with a whole-folder writer or a twin.
        let shard_one = lock_shard(&folder, 1, 2).expect("nobody writes the whole folder");
        let shard_two = lock_shard(&folder, 2, 2).expect("shards coexist");
        assert!(lock_shard(&folder, 1, 2).is_err(), "the same shard twice");
        drop(again);
        drop(shard_two);
        assert!(lock_folder(&folder).is_err(), "a shard still writes");
        drop(shard_one);
        assert!(lock_folder(&folder).is_ok());
    }
}
