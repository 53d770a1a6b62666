//! JSONL file source: the file is memory-mapped; every worker walks its lines and decodes those of
//! the things it owns (see `pipeline::feed_lines`).

use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

/// Opens a JSONL file for [`crate::pipeline::Input::Lines`].
pub fn open(path: &Path) -> anyhow::Result<Arc<dyn AsRef<[u8]> + Send + Sync>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("{}: cannot stat", path.display()))?
        .len();
    if len == 0 {
        return Ok(Arc::new(Vec::<u8>::new()));
    }
    // Safety: the map is read-only; a file truncated while mapped would fault, which is the same
    // contract as every mmap-based reader (we document that replay input must not change mid-run).
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("{}: cannot map", path.display()))?;
    Ok(Arc::new(map))
}
