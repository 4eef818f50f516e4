//! One error type for everything that goes wrong with a file: it always names the file.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {reason}", path.display())]
    Io {
        path: PathBuf,
        reason: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(path: &Path, reason: impl Into<String>) -> Error {
        Error::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// An I/O failure, described the way a user thinks of it (truncated file, corrupt gzip).
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        use std::io::ErrorKind;
        let reason = match source.kind() {
            ErrorKind::UnexpectedEof => "truncated file (data ends early)".to_string(),
            ErrorKind::NotFound => "no such file".to_string(),
            ErrorKind::PermissionDenied => "permission denied".to_string(),
            ErrorKind::InvalidInput | ErrorKind::InvalidData => {
                format!("corrupt data ({source})")
            }
            _ => source.to_string(),
        };
        Error::Io {
            path: path.to_path_buf(),
            reason,
            source,
        }
    }
}
