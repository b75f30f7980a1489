//! Reading an image file's header and index (synchronously; the daemon has its own asynchronous sources).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use encfs::format::{FormatError, HEADER_LEN, Header, ImageKeys, ModelKey, OpenedImage};

/// Why an image file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageFileError {
    /// An I/O error on the image.
    #[error("reading {path}")]
    Io {
        /// The image.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The image was refused by the format.
    #[error("image {path} refused")]
    Format {
        /// The image.
        path: PathBuf,
        /// What the format refused.
        #[source]
        source: FormatError,
    },
}

/// An image file with its header read.
#[derive(Debug)]
pub struct ImageFile {
    /// The open file.
    pub file: File,
    /// Its path.
    pub path: PathBuf,
    /// Its length.
    pub len: u64,
    /// The raw header region.
    pub header_bytes: [u8; HEADER_LEN],
    /// The parsed header.
    pub header: Header,
}

impl ImageFile {
    /// Opens an image and parses its header (no key needed).
    pub fn open(path: &Path) -> Result<Self, ImageFileError> {
        let io = |source| ImageFileError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < HEADER_LEN as u64 {
            return Err(ImageFileError::Format {
                path: path.to_owned(),
                source: FormatError::Truncated {
                    what: "header",
                    expected: HEADER_LEN as u64,
                    actual: len,
                },
            });
        }
        let mut header_bytes = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header_bytes, 0).map_err(io)?;
        let header = Header::decode(&header_bytes).map_err(|source| ImageFileError::Format {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            file,
            path: path.to_owned(),
            len,
            header_bytes,
            header,
        })
    }

    /// Reads the sealed index (bounded by the file length, so a corrupt header cannot make us allocate wildly).
    pub fn sealed_index(&self) -> Result<Vec<u8>, ImageFileError> {
        let h = &self.header;
        if h.image_len() > self.len {
            return Err(self.format_err(FormatError::LengthMismatch {
                expected: h.image_len(),
                actual: self.len,
            }));
        }
        let mut buf = vec![0u8; h.index_len as usize];
        self.file
            .read_exact_at(&mut buf, h.index_offset)
            .map_err(|source| ImageFileError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    /// The root digest (no key needed).
    pub fn root(&self) -> Result<[u8; 32], ImageFileError> {
        Ok(encfs::format::root_digest(&self.header_bytes, &self.sealed_index()?))
    }

    /// Authenticates the index with `key` and checks the image length.
    pub fn open_with_key(&self, key: &ModelKey) -> Result<(OpenedImage, ImageKeys), ImageFileError> {
        OpenedImage::open(&self.header_bytes, &self.sealed_index()?, key, None, Some(self.len))
            .map_err(|e| self.format_err(e))
    }

    fn format_err(&self, source: FormatError) -> ImageFileError {
        ImageFileError::Format {
            path: self.path.clone(),
            source,
        }
    }
}
