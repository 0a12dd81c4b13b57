//! Snapshot files: the metadata file of an Alces cluster.
//!
//! A snapshot is one file, `metadata-<term>-<index>.alces`, holding every record of the state
//! machine's column families at one applied log id. Layout: the 8 bytes `ALCESNAP`, then
//! frames of `[length u32 BE][crc32c u32 BE][bincode payload]`: one `Header` (format, Raft
//! snapshot meta, column family names), `Records` batches, and one `End` with the record
//! count. A file is valid only if every frame's checksum matches and `End` is present with
//! the right count, so a torn or corrupted file is detected before anything is loaded.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"ALCESNAP";
pub const FORMAT_VERSION: u32 = 1;
/// No frame of a valid file is larger; a larger length field means corruption.
const MAX_FRAME: usize = 64 << 20;
/// Records are grouped into frames of about this many bytes.
const BATCH_BYTES: usize = 1 << 20;

/// One key/value of a column family (`cf` indexes the header's list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub cf: u8,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    Header { format: u32, meta: SnapshotMeta, column_families: Vec<String> },
    Records(Vec<Record>),
    End { records: u64 },
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Storage(format!("snapshot file {}: {what}", path.display()))
}

/// Writes a snapshot file; nothing is visible under the final name until [`SnapshotWriter::finish`].
pub struct SnapshotWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    pending: Vec<Record>,
    pending_bytes: usize,
    records: u64,
}

impl SnapshotWriter {
    pub fn create(tmp: PathBuf, meta: &SnapshotMeta, column_families: &[String]) -> Result<Self> {
        if column_families.len() > u8::MAX as usize {
            return Err(Error::Config("too many column families for a snapshot".into()));
        }
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        out.write_all(MAGIC)?;
        let mut w = SnapshotWriter { out, tmp, pending: Vec::new(), pending_bytes: 0, records: 0 };
        w.frame(&Frame::Header {
            format: FORMAT_VERSION,
            meta: meta.clone(),
            column_families: column_families.to_vec(),
        })?;
        Ok(w)
    }

    fn frame(&mut self, frame: &Frame) -> Result<()> {
        let payload = alces_proto::encode(frame);
        self.out.write_all(&(payload.len() as u32).to_be_bytes())?;
        self.out.write_all(&crc32c::crc32c(&payload).to_be_bytes())?;
        self.out.write_all(&payload)?;
        Ok(())
    }

    pub fn add(&mut self, cf: u8, key: &[u8], value: &[u8]) -> Result<()> {
        self.pending_bytes += key.len() + value.len() + 8;
        self.pending.push(Record { cf, key: key.to_vec(), value: value.to_vec() });
        self.records += 1;
        if self.pending_bytes >= BATCH_BYTES {
            self.flush_records()?;
        }
        Ok(())
    }

    fn flush_records(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.frame(&Frame::Records(batch))?;
            self.pending_bytes = 0;
        }
        Ok(())
    }

    /// Writes the end frame, syncs, and renames the file to `dest` (also synced).
    pub fn finish(mut self, dest: &Path) -> Result<u64> {
        self.flush_records()?;
        let records = self.records;
        self.frame(&Frame::End { records })?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&self.tmp, dest)?;
        sync_dir(dest)?;
        Ok(records)
    }
}

/// Makes a rename or create in `path`'s folder durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Reads a snapshot file frame by frame, checking every checksum.
pub struct SnapshotReader {
    input: BufReader<File>,
    path: PathBuf,
    pub meta: SnapshotMeta,
    pub column_families: Vec<String>,
    records: u64,
    done: bool,
}

impl SnapshotReader {
    pub fn open(path: &Path) -> Result<Self> {
        let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(|e| corrupt(path, format!("no header: {e}")))?;
        if &magic != MAGIC {
            return Err(corrupt(path, "not an Alces metadata file (bad magic)"));
        }
        match read_frame(&mut input, path)? {
            Frame::Header { format, meta, column_families } => {
                if format != FORMAT_VERSION {
                    return Err(corrupt(
                        path,
                        format!("format {format} is not supported (this build reads {FORMAT_VERSION})"),
                    ));
                }
                Ok(SnapshotReader { input, path: path.to_path_buf(), meta, column_families, records: 0, done: false })
            }
            _ => Err(corrupt(path, "first frame is not a header")),
        }
    }

    /// The next batch of records, or `None` after a verified end frame.
    pub fn next_batch(&mut self) -> Result<Option<Vec<Record>>> {
        if self.done {
            return Ok(None);
        }
        match read_frame(&mut self.input, &self.path)? {
            Frame::Records(batch) => {
                if let Some(r) = batch.iter().find(|r| r.cf as usize >= self.column_families.len()) {
                    return Err(corrupt(&self.path, format!("record names column family #{}", r.cf)));
                }
                self.records += batch.len() as u64;
                Ok(Some(batch))
            }
            Frame::End { records } if records == self.records => {
                let mut rest = [0u8; 1];
                if self.input.read(&mut rest)? != 0 {
                    return Err(corrupt(&self.path, "bytes after the end frame"));
                }
                self.done = true;
                Ok(None)
            }
            Frame::End { records } => {
                Err(corrupt(&self.path, format!("end frame counts {records} records, file has {}", self.records)))
            }
            Frame::Header { .. } => Err(corrupt(&self.path, "second header")),
        }
    }

    /// Reads the whole file; returns its meta and record count if it is intact.
    pub fn verify(path: &Path) -> Result<(SnapshotMeta, u64)> {
        let mut r = SnapshotReader::open(path)?;
        while r.next_batch()?.is_some() {}
        Ok((r.meta, r.records))
    }
}

fn read_frame(input: &mut impl Read, path: &Path) -> Result<Frame> {
    let mut head = [0u8; 8];
    input.read_exact(&mut head).map_err(|e| corrupt(path, format!("truncated (frame header): {e}")))?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
    if len > MAX_FRAME {
        return Err(corrupt(path, format!("frame of {len} bytes is over the limit")));
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload).map_err(|e| corrupt(path, format!("truncated (frame body): {e}")))?;
    if crc32c::crc32c(&payload) != crc {
        return Err(corrupt(path, "checksum mismatch"));
    }
    alces_proto::decode(&payload).map_err(|e| corrupt(path, e))
}

/// Prints a snapshot file as text: its header, then one line per record as `machine`
/// describes it. Verifies every checksum on the way; returns the number of records.
pub fn dump(path: &Path, machine: &impl crate::StateMachine, out: &mut impl Write) -> Result<u64> {
    let mut r = SnapshotReader::open(path)?;
    let meta = &r.meta;
    writeln!(out, "# Alces metadata snapshot {}", path.display())?;
    writeln!(out, "# format {FORMAT_VERSION}, snapshot id {}", meta.snapshot_id)?;
    match meta.last_log_id {
        Some(l) => writeln!(out, "# last applied: term {} index {}", l.leader_id.term, l.index)?,
        None => writeln!(out, "# last applied: none")?,
    }
    let members = meta.last_membership.membership();
    for (id, m) in members.nodes() {
        let role = if members.voter_ids().any(|v| v == *id) { "voter" } else { "learner" };
        writeln!(
            out,
            "# member {id} ({role}): raft {} client {} chunkservers {} admin {}",
            m.raft_addr, m.client_addr, m.cs_addr, m.admin_addr
        )?;
    }
    let cfs = r.column_families.clone();
    let mut n = 0;
    while let Some(batch) = r.next_batch()? {
        for rec in batch {
            writeln!(out, "{}", machine.describe(&cfs[rec.cf as usize], &rec.key, &rec.value))?;
            n += 1;
        }
    }
    writeln!(out, "# {n} records, all checksums verified")?;
    Ok(n)
}

/// The folder where a node keeps its snapshot files.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    path: PathBuf,
}

impl SnapshotDir {
    pub fn open(path: PathBuf) -> Result<Self> {
        fs::create_dir_all(&path)?;
        // Leftovers of builds or transfers that a crash interrupted.
        for entry in fs::read_dir(&path)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(&p);
            }
        }
        Ok(SnapshotDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `metadata-<term>-<index>.alces`.
    pub fn file_for(&self, meta: &SnapshotMeta) -> PathBuf {
        let (term, index) = meta.last_log_id.map(|l| (l.leader_id.term, l.index)).unwrap_or((0, 0));
        self.path.join(format!("metadata-{term}-{index}.alces"))
    }

    /// A fresh temporary file name (removed at the next start if left behind).
    pub fn temp_file(&self, what: &str) -> PathBuf {
        self.path.join(format!("{what}-{:016x}.tmp", rand::random::<u64>()))
    }

    fn snapshot_files(&self) -> Result<Vec<(u64, u64, PathBuf)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let p = entry?.path();
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else { continue };
            let Some(rest) = name.strip_prefix("metadata-").and_then(|r| r.strip_suffix(".alces")) else { continue };
            let mut parts = rest.splitn(2, '-');
            if let (Some(Ok(term)), Some(Ok(index))) = (parts.next().map(str::parse), parts.next().map(str::parse)) {
                out.push((index, term, p));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The newest intact snapshot, if any (damaged files are skipped with a warning).
    pub fn latest(&self) -> Result<Option<(SnapshotMeta, PathBuf)>> {
        for (_, _, path) in self.snapshot_files()?.into_iter().rev() {
            match SnapshotReader::open(&path) {
                Ok(r) => return Ok(Some((r.meta, path))),
                Err(e) => tracing::warn!(error = %e, "skipping unreadable snapshot file"),
            }
        }
        Ok(None)
    }

    /// Removes every snapshot file but `keep`.
    pub fn remove_others(&self, keep: &Path) -> Result<()> {
        for (_, _, path) in self.snapshot_files()? {
            if path != keep {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    fn meta(term: u64, index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(term, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("{term}-{index}"),
        }
    }

    fn write_sample(dir: &SnapshotDir, n: usize) -> PathBuf {
        let m = meta(3, 77);
        let mut w = SnapshotWriter::create(dir.temp_file("build"), &m, &["a".into(), "b".into()]).unwrap();
        for i in 0..n {
            w.add((i % 2) as u8, format!("key{i}").as_bytes(), &vec![i as u8; 300]).unwrap();
        }
        let dest = dir.file_for(&m);
        assert_eq!(w.finish(&dest).unwrap(), n as u64);
        dest
    }

    #[test]
    fn round_trip_and_latest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path().join("snap")).unwrap();
        let path = write_sample(&dir, 10_000);
        assert!(path.ends_with("metadata-3-77.alces"));
        let mut r = SnapshotReader::open(&path).unwrap();
        assert_eq!(r.column_families, vec!["a".to_string(), "b".to_string()]);
        let mut all = Vec::new();
        while let Some(b) = r.next_batch().unwrap() {
            all.extend(b);
        }
        assert_eq!(all.len(), 10_000);
        assert_eq!(all[9].key, b"key9");
        assert_eq!(dir.latest().unwrap().unwrap().1, path);
    }

    #[test]
    fn any_flipped_byte_or_truncation_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path().to_path_buf()).unwrap();
        let path = write_sample(&dir, 50);
        let good = fs::read(&path).unwrap();
        for pos in (0..good.len()).step_by(97) {
            let mut bad = good.clone();
            bad[pos] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            assert!(SnapshotReader::verify(&path).is_err(), "flip at {pos} not detected");
        }
        for cut in [1, 9, good.len() / 2, good.len() - 1] {
            fs::write(&path, &good[..cut]).unwrap();
            assert!(SnapshotReader::verify(&path).is_err(), "cut at {cut} not detected");
        }
        fs::write(&path, &good).unwrap();
        assert!(SnapshotReader::verify(&path).is_ok());
    }
}
