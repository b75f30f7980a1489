//! The upload itself: check what is there, stage the missing blocks in parallel, commit, verify.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use azure_core::http::RequestContent;
use azure_storage_blob::BlobClient;
use azure_storage_blob::models::{
    BlobClientGetPropertiesResultHeaders as _, BlockBlobClientCommitBlockListOptions,
    BlockBlobClientCommitBlockListResultHeaders as _, BlockBlobClientStageBlockOptions, BlockListType, BlockLookupList,
};
use md5::{Digest as _, Md5};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::UploadError;
use super::blocks::{BlockPlan, block_id};
use super::client::{BlobUrl, blob_client, container_client, status};

/// How to upload.
#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// Bytes per block (grown automatically past the service's 50,000-block limit).
    pub block_size: u64,
    /// Blocks in flight at once.
    pub parallel: usize,
    /// Create the container first (an existing one is fine).
    pub create_container: bool,
    /// Replace an existing blob with different content.
    pub force: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            block_size: 8 << 20,
            parallel: 8,
            create_container: false,
            force: false,
        }
    }
}

/// What an upload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadReport {
    /// Blob size in bytes (= the image's).
    pub size: u64,
    /// Blocks committed.
    pub blocks: u64,
    /// Blocks sent in this run.
    pub sent_blocks: u64,
    /// Blocks an earlier, interrupted run had already staged (not sent again).
    pub resumed_blocks: u64,
    /// The committed blob's ETag (what a sidecar pins).
    pub etag: String,
    /// MD5 of the whole blob (also stored as its Content-MD5 property).
    pub md5: [u8; 16],
    /// The blob already held exactly this image: nothing was sent.
    pub unchanged: bool,
}

struct Existing {
    size: u64,
    etag: String,
    md5: Option<Vec<u8>>,
}

/// Uploads `image` to `url`. `progress` is called with the number of bytes done (sent or found staged) as they
/// complete.
pub async fn upload(
    image: &Path,
    url: &BlobUrl,
    opts: &UploadOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<UploadReport, UploadError> {
    let io_err = |source| UploadError::Io {
        path: image.display().to_string(),
        source,
    };
    let file = Arc::new(File::open(image).map_err(io_err)?);
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(UploadError::Invalid(format!(
            "{} is not a regular file",
            image.display()
        )));
    }
    let plan = BlockPlan::new(meta.len(), opts.block_size)?;
    let parallel = opts.parallel.max(1);

    if opts.create_container {
        match container_client(url)?.create(None).await {
            Ok(_) => tracing::info!(container = %url.container_name, "container created"),
            Err(e) if status(&e) == Some(409) => {}
            Err(e) => {
                return Err(UploadError::storage(
                    format!("create container {}", url.container_name),
                    &e,
                ));
            }
        }
    }
    let blob = blob_client(url)?;
    let existing = existing(&blob).await?;
    if let Some(ex) = &existing
        && !opts.force
    {
        let md5 = file_md5(Arc::clone(&file), plan).await.map_err(io_err)?;
        if ex.size == plan.size && ex.md5.as_deref() == Some(&md5[..]) {
            progress(plan.size);
            return Ok(UploadReport {
                size: plan.size,
                blocks: plan.count(),
                sent_blocks: 0,
                resumed_blocks: 0,
                etag: ex.etag.clone(),
                md5,
                unchanged: true,
            });
        }
        return Err(UploadError::Exists {
            size: ex.size,
            etag: ex.etag.clone(),
        });
    }

    let staged = staged_blocks(&blob).await?;
    let (ids, md5, sent, resumed) = stage_all(&blob, &file, plan, parallel, &staged, progress)
        .await
        .map_err(|e| match e {
            StageError::Io(source) => io_err(source),
            StageError::Upload(e) => e,
        })?;

    let bb = blob.block_blob_client();
    let commit = BlockBlobClientCommitBlockListOptions {
        blob_content_md5: Some(md5.to_vec()),
        blob_content_type: Some("application/octet-stream".into()),
        // Never clobber a blob that appeared meanwhile; with --force, replace only the one we looked at.
        if_none_match: existing.is_none().then(|| "*".into()),
        if_match: existing.as_ref().map(|ex| ex.etag.clone().into()),
        ..Default::default()
    };
    let list = BlockLookupList {
        latest: Some(ids.clone()),
        ..Default::default()
    };
    let body = list
        .try_into()
        .map_err(|e: azure_core::Error| UploadError::storage("encode block list", &e))?;
    let committed = bb
        .commit_block_list(body, Some(commit))
        .await
        .map_err(|e| UploadError::storage("commit block list", &e))?;
    let etag = committed
        .etag()
        .ok()
        .flatten()
        .map(|e| e.to_string())
        .unwrap_or_default();

    verify(&blob, plan, &ids, &md5, &etag).await?;
    Ok(UploadReport {
        size: plan.size,
        blocks: plan.count(),
        sent_blocks: sent,
        resumed_blocks: resumed,
        etag,
        md5,
        unchanged: false,
    })
}

/// The committed blob's size, ETag and Content-MD5, or `None` if there is none.
async fn existing(blob: &BlobClient) -> Result<Option<Existing>, UploadError> {
    match blob.get_properties(None).await {
        Ok(r) => Ok(Some(Existing {
            size: r.content_length().ok().flatten().unwrap_or(0),
            etag: r.etag().ok().flatten().map(|e| e.to_string()).unwrap_or_default(),
            md5: r.content_md5().ok().flatten(),
        })),
        Err(e) if status(&e) == Some(404) => Ok(None),
        Err(e) => Err(UploadError::storage("get blob properties", &e)),
    }
}

/// Uncommitted blocks the service holds for this blob (an interrupted upload's), id → size.
async fn staged_blocks(blob: &BlobClient) -> Result<HashMap<Vec<u8>, u64>, UploadError> {
    let list = match blob
        .block_blob_client()
        .get_block_list(BlockListType::Uncommitted, None)
        .await
    {
        Ok(r) => r
            .into_model()
            .map_err(|e| UploadError::storage("read uncommitted block list", &e))?,
        Err(e) if status(&e) == Some(404) => return Ok(HashMap::new()),
        Err(e) => return Err(UploadError::storage("get uncommitted block list", &e)),
    };
    Ok(list
        .uncommitted_blocks
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| Some((b.name?, u64::try_from(b.size?).ok()?)))
        .collect())
}

enum StageError {
    Io(std::io::Error),
    Upload(UploadError),
}

type Staged = (Vec<Vec<u8>>, [u8; 16], u64, u64);

/// Reads the blocks in order on a blocking thread (hashing the whole file on the way) and stages each one not
/// already staged, `parallel` at a time. Returns the ordered block ids, the file's MD5, and how many blocks were
/// sent and found staged.
async fn stage_all(
    blob: &BlobClient,
    file: &Arc<File>,
    plan: BlockPlan,
    parallel: usize,
    staged: &HashMap<Vec<u8>, u64>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Staged, StageError> {
    let (tx, mut rx) = mpsc::channel::<(u64, Vec<u8>)>(2);
    let reader_file = Arc::clone(file);
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<[u8; 16]> {
        let mut whole = Md5::new();
        for index in 0..plan.count() {
            let (offset, len) = plan.block(index);
            let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
            reader_file.read_exact_at(&mut buf, offset)?;
            whole.update(&buf);
            if tx.blocking_send((index, buf)).is_err() {
                break; // the uploader stopped on an error
            }
        }
        Ok(whole.finalize().into())
    });

    let bb = Arc::new(blob.block_blob_client());
    let mut ids = vec![Vec::new(); usize::try_from(plan.count()).unwrap_or(0)];
    let (mut sent, mut resumed) = (0u64, 0u64);
    let mut tasks: JoinSet<Result<(u64, u64, bool), UploadError>> = JoinSet::new();
    let mut first_error = None;
    let mut finish = |r: Result<Result<(u64, u64, bool), UploadError>, tokio::task::JoinError>| match r {
        Ok(Ok((_, len, was_sent))) => {
            if was_sent {
                sent += 1;
            } else {
                resumed += 1;
            }
            progress(len);
            None
        }
        Ok(Err(e)) => Some(e),
        Err(e) => Some(UploadError::Invalid(format!("upload task failed: {e}"))),
    };
    while let Some((index, data)) = rx.recv().await {
        while tasks.len() >= parallel {
            if let Some(r) = tasks.join_next().await
                && let Some(e) = finish(r)
            {
                first_error.get_or_insert(e);
            }
        }
        if first_error.is_some() {
            break;
        }
        let (data, md5) = tokio::task::spawn_blocking(move || {
            let md5: [u8; 16] = Md5::digest(&data).into();
            (data, md5)
        })
        .await
        .map_err(|e| StageError::Upload(UploadError::Invalid(format!("hashing task failed: {e}"))))?;
        let id = block_id(index, &md5);
        ids[usize::try_from(index).unwrap_or(0)] = id.clone();
        let len = data.len() as u64;
        if staged.get(&id) == Some(&len) {
            tasks.spawn(async move { Ok((index, len, false)) });
            continue;
        }
        let bb = Arc::clone(&bb);
        tasks.spawn(async move {
            let opts = BlockBlobClientStageBlockOptions {
                transactional_content_md5: Some(md5.to_vec()),
                ..Default::default()
            };
            bb.stage_block(&id, len, RequestContent::from(data), Some(opts))
                .await
                .map_err(|e| UploadError::storage(format!("stage block {index}"), &e))?;
            Ok((index, len, true))
        });
    }
    drop(rx);
    while let Some(r) = tasks.join_next().await {
        if let Some(e) = finish(r) {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(StageError::Upload(e));
    }
    let md5 = reader
        .await
        .map_err(|e| StageError::Upload(UploadError::Invalid(format!("reader task failed: {e}"))))?
        .map_err(StageError::Io)?;
    Ok((ids, md5, sent, resumed))
}

/// MD5 of the whole file (to compare with an existing blob's Content-MD5).
async fn file_md5(file: Arc<File>, plan: BlockPlan) -> std::io::Result<[u8; 16]> {
    tokio::task::spawn_blocking(move || {
        let mut whole = Md5::new();
        let mut buf = vec![0u8; 4 << 20];
        let mut offset = 0u64;
        while offset < plan.size {
            let n = usize::try_from((plan.size - offset).min(buf.len() as u64)).unwrap_or(buf.len());
            file.read_exact_at(&mut buf[..n], offset)?;
            whole.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(whole.finalize().into())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Checks the committed blob against what was sent: its size and Content-MD5 properties, its ETag, and that the
/// committed block list is exactly our blocks with their sizes (each block's bytes were checked by the service
/// against the MD5 sent with it, and each id names that MD5).
async fn verify(
    blob: &BlobClient,
    plan: BlockPlan,
    ids: &[Vec<u8>],
    md5: &[u8; 16],
    etag: &str,
) -> Result<(), UploadError> {
    let ex = existing(blob)
        .await?
        .ok_or_else(|| UploadError::Verify("the blob is missing after commit".into()))?;
    if ex.size != plan.size {
        return Err(UploadError::Verify(format!(
            "the blob has {} bytes, the image {}",
            ex.size, plan.size
        )));
    }
    if ex.md5.as_deref() != Some(&md5[..]) {
        return Err(UploadError::Verify(format!(
            "the blob's Content-MD5 is {}, the image's {}",
            ex.md5.as_deref().map(hex::encode).unwrap_or_else(|| "missing".into()),
            hex::encode(md5)
        )));
    }
    if !etag.is_empty() && ex.etag != etag {
        return Err(UploadError::Verify(format!(
            "the blob changed after commit (etag {} instead of {etag})",
            ex.etag
        )));
    }
    let list = blob
        .block_blob_client()
        .get_block_list(BlockListType::Committed, None)
        .await
        .map_err(|e| UploadError::storage("get committed block list", &e))?
        .into_model()
        .map_err(|e| UploadError::storage("read committed block list", &e))?;
    let committed = list.committed_blocks.unwrap_or_default();
    if committed.len() != ids.len() {
        return Err(UploadError::Verify(format!(
            "{} blocks committed, {} expected",
            committed.len(),
            ids.len()
        )));
    }
    for (index, (b, id)) in committed.iter().zip(ids).enumerate() {
        let want = plan.block(index as u64).1;
        if b.name.as_deref() != Some(id.as_slice()) || b.size.and_then(|s| u64::try_from(s).ok()) != Some(want) {
            return Err(UploadError::Verify(format!(
                "committed block {index} is not the one sent"
            )));
        }
    }
    Ok(())
}
