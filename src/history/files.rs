//! CSV and Parquet history files.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv::reader::Format;
use datafusion::arrow::csv::ReaderBuilder;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;

use super::{err, HistoryError};

/// Reads a CSV file with a header row; column types are inferred from the data.
pub fn read_csv(path: &Path) -> Result<Vec<RecordBatch>, HistoryError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| err(&name, e))?;
    let format = Format::default().with_header(true);
    let (schema, _) = format
        .infer_schema(&mut file, None)
        .map_err(|e| err(&name, e))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| err(&name, e))?;
    let reader = ReaderBuilder::new(Arc::new(schema))
        .with_format(format)
        .build(file)
        .map_err(|e| err(&name, e))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&name, e))
}

/// Reads a Parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>, HistoryError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| err(&name, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| err(&name, e))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&name, e))
}

/// Writes one batch as a Parquet file (written to a temporary name, then renamed, so a reader never
/// sees half a file).
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), HistoryError> {
    let name = path.display().to_string();
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(|e| err(&name, e))?;
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).map_err(|e| err(&name, e))?;
    w.write(batch).map_err(|e| err(&name, e))?;
    w.close().map_err(|e| err(&name, e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(&name, e))
}
