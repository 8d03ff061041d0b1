//! `billing import-cdr`: uploads CDR files to a running server through
//! `StreamCalls`, showing progress, writing rejected rows to a file.
//!
//! The files are read on a thread of their own, one line at a time, into
//! the stream; the stream's flow control (the server stops reading while
//! its batches are written) bounds what is in flight, so memory does not
//! grow with the files. Each record sent and not yet acknowledged keeps
//! its file, line and text until its acknowledgement, so a rejection names
//! the line. Every record carries its CDR's unique id as `call_id`: a
//! rerun after an interruption stores nothing twice.

pub mod cdr;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::grpc::pb::{self, call_service_client::CallServiceClient};
use cdr::{CdrFormat, CdrReader, Row};

/// Records read ahead of the stream, at most.
const READ_AHEAD: usize = 4096;
/// How often progress is drawn at a terminal, and written as a line when
/// not at one.
const TERMINAL_PROGRESS: Duration = Duration::from_millis(250);
const LOG_PROGRESS: Duration = Duration::from_secs(5);

/// What to import and where.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub files: Vec<PathBuf>,
    pub format: CdrFormat,
    /// The zone of Asterisk's and FreeSWITCH's local times.
    pub tz: Tz,
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub server: String,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub api_key: Option<String>,
    pub rejects: Option<PathBuf>,
}

/// What became of the files' rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Lines read.
    pub lines: u64,
    /// Records sent to the server.
    pub records: u64,
    pub accepted: u64,
    pub duplicates: u64,
    /// Rows that could not be read, and records the server rejected.
    pub rejected: u64,
    /// Headers, blank lines and calls that were not answered.
    pub skipped: u64,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A record sent and not yet acknowledged.
struct Sent {
    index: i64,
    file: usize,
    line: u64,
    text: String,
}

/// The counters the reader, the acknowledgements and the progress share.
struct Progress {
    started: Instant,
    bytes_read: AtomicU64,
    lines: AtomicU64,
    records: AtomicU64,
    skipped: AtomicU64,
    unreadable: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    refused: AtomicU64,
}

/// Where rejected rows go: `file,line,reason,row` as CSV.
struct Rejects {
    out: Option<std::io::BufWriter<File>>,
    files: Vec<String>,
}

impl Rejects {
    fn write(&mut self, file: usize, line: u64, reason: &str, row: &str) -> std::io::Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        writeln!(
            out,
            "{},{line},{},{}",
            quoted(&self.files[file]),
            quoted(reason),
            quoted(row)
        )
    }
}

fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// Imports the files; `Err` when the server could not be reached or ended
/// the stream early (what it acknowledged before stays stored).
pub async fn import(options: ImportOptions) -> Result<ImportReport, BoxError> {
    let total_bytes: u64 = options
        .files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    let files: Vec<File> = options
        .files
        .iter()
        .map(File::open)
        .collect::<std::io::Result<_>>()?;
    let rejects = Arc::new(Mutex::new(Rejects {
        out: options
            .rejects
            .as_ref()
            .map(File::create)
            .transpose()?
            .map(std::io::BufWriter::new),
        files: options
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect(),
    }));
    let channel = connect(&options).await?;
    let authorization = options
        .api_key
        .as_ref()
        .map(|key| MetadataValue::try_from(format!("Bearer {key}")))
        .transpose()
        .map_err(|_| "the API key holds characters a header cannot")?;
    let mut client =
        CallServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            if let Some(value) = &authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
            }
            request.metadata_mut().insert(
                crate::grpc::SOURCE_HEADER,
                MetadataValue::from_static("file"),
            );
            Ok(request)
        });

    let progress = Arc::new(Progress {
        started: Instant::now(),
        bytes_read: AtomicU64::default(),
        lines: AtomicU64::default(),
        records: AtomicU64::default(),
        skipped: AtomicU64::default(),
        unreadable: AtomicU64::default(),
        accepted: AtomicU64::default(),
        duplicates: AtomicU64::default(),
        refused: AtomicU64::default(),
    });
    let in_flight: Arc<Mutex<VecDeque<Sent>>> = Arc::default();
    let (records, stream) = tokio::sync::mpsc::channel(READ_AHEAD);
    let reader = {
        let progress = Arc::clone(&progress);
        let in_flight = Arc::clone(&in_flight);
        let rejects = Arc::clone(&rejects);
        let (format, tz) = (options.format, options.tz);
        tokio::task::spawn_blocking(move || {
            read_files(files, format, tz, &records, &progress, &in_flight, &rejects)
        })
    };
    let drawing = tokio::spawn(draw_progress(Arc::clone(&progress), total_bytes));
    let outcome = async {
        let mut acks = client
            .stream_calls(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await?
            .into_inner();
        let mut acknowledged = 0;
        while let Some(ack) = acks.next().await {
            let ack = ack?;
            settle(&ack, &progress, &in_flight, &rejects)?;
            acknowledged = ack.next_index;
        }
        Ok::<i64, BoxError>(acknowledged)
    }
    .await;
    drawing.abort();
    let read = reader.await?;
    let acknowledged = outcome?;
    read?;
    if let Ok(mut rejects) = rejects.lock()
        && let Some(out) = rejects.out.as_mut()
    {
        out.flush()?;
    }
    let report = report(&progress);
    if u64::try_from(acknowledged).unwrap_or(0) != report.records {
        return Err(format!(
            "the server acknowledged {acknowledged} of {} records; run the import again \
             (records already stored are duplicates)",
            report.records
        )
        .into());
    }
    draw(&progress, total_bytes, true);
    Ok(report)
}

async fn connect(options: &ImportOptions) -> Result<Channel, BoxError> {
    let mut endpoint = Channel::from_shared(options.server.clone())
        .map_err(|_| {
            format!(
                "--server {:?} is not a URL like http://HOST:PORT",
                options.server
            )
        })?
        .connect_timeout(Duration::from_secs(10));
    if options.server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &options.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&options.client_cert, &options.client_key) {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert)?,
                std::fs::read(key)?,
            ));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect().await?)
}

/// Reads every file into `records`, one line at a time.
fn read_files(
    files: Vec<File>,
    format: CdrFormat,
    tz: Tz,
    records: &tokio::sync::mpsc::Sender<pb::AddCallRequest>,
    progress: &Progress,
    in_flight: &Mutex<VecDeque<Sent>>,
    rejects: &Mutex<Rejects>,
) -> Result<(), BoxError> {
    let mut index: i64 = 0;
    let mut text = String::new();
    for (file, handle) in files.into_iter().enumerate() {
        let mut lines = BufReader::with_capacity(256 * 1024, handle);
        let mut reader = CdrReader::new(format, tz);
        let mut line: u64 = 0;
        loop {
            text.clear();
            let read = lines.read_line(&mut text)?;
            if read == 0 {
                break;
            }
            line += 1;
            progress
                .bytes_read
                .fetch_add(read as u64, Ordering::Relaxed);
            progress.lines.fetch_add(1, Ordering::Relaxed);
            match reader.read(&text) {
                Ok(Row::Skipped) => {
                    progress.skipped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Row::Call(record)) => {
                    if let Ok(mut in_flight) = in_flight.lock() {
                        in_flight.push_back(Sent {
                            index,
                            file,
                            line,
                            text: text.trim_end().to_owned(),
                        });
                    }
                    if records.blocking_send(record).is_err() {
                        // The stream ended early: the outcome says why.
                        return Ok(());
                    }
                    index += 1;
                    progress.records.fetch_add(1, Ordering::Relaxed);
                }
                Err(reason) => {
                    progress.unreadable.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut rejects) = rejects.lock() {
                        rejects.write(file, line, &reason, text.trim_end())?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Counts an acknowledgement and writes its rejected records.
fn settle(
    ack: &pb::IngestAck,
    progress: &Progress,
    in_flight: &Mutex<VecDeque<Sent>>,
    rejects: &Mutex<Rejects>,
) -> Result<(), BoxError> {
    progress
        .accepted
        .fetch_add(ack.accepted.max(0) as u64, Ordering::Relaxed);
    progress
        .duplicates
        .fetch_add(ack.duplicates.max(0) as u64, Ordering::Relaxed);
    progress
        .refused
        .fetch_add(ack.rejected.max(0) as u64, Ordering::Relaxed);
    let mut in_flight = in_flight.lock().map_err(|_| "a reader thread panicked")?;
    let mut rejects = rejects.lock().map_err(|_| "a reader thread panicked")?;
    let mut errors = ack.errors.iter().peekable();
    while let Some(sent) = in_flight.front() {
        if sent.index >= ack.next_index {
            break;
        }
        if let Some(error) = errors.next_if(|e| e.index == sent.index) {
            let reason = format!("{} [{:?}]", error.message, tonic::Code::from(error.code));
            rejects.write(sent.file, sent.line, &reason, &sent.text)?;
        }
        in_flight.pop_front();
    }
    Ok(())
}

fn report(progress: &Progress) -> ImportReport {
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    ImportReport {
        lines: get(&progress.lines),
        records: get(&progress.records),
        accepted: get(&progress.accepted),
        duplicates: get(&progress.duplicates),
        rejected: get(&progress.unreadable) + get(&progress.refused),
        skipped: get(&progress.skipped),
    }
}

async fn draw_progress(progress: Arc<Progress>, total_bytes: u64) {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        TERMINAL_PROGRESS
    } else {
        LOG_PROGRESS
    };
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        draw(&progress, total_bytes, false);
    }
}

/// One progress report: a line redrawn in place at a terminal, a plain
/// line otherwise.
fn draw(progress: &Progress, total_bytes: u64, last: bool) {
    let elapsed = progress.started.elapsed().as_secs_f64().max(0.001);
    let report = report(progress);
    let read = progress.bytes_read.load(Ordering::Relaxed);
    let rate = report.records as f64 / elapsed;
    let eta = if read > 0 && read < total_bytes {
        let left = elapsed * (total_bytes - read) as f64 / read as f64;
        format!("ETA {}:{:02}", (left / 60.0) as u64, (left % 60.0) as u64)
    } else {
        String::from("ETA 0:00")
    };
    let percent = if total_bytes == 0 {
        100.0
    } else {
        100.0 * read as f64 / total_bytes as f64
    };
    let text = format!(
        "{percent:5.1}% {} records, {rate:.0}/s, accepted {}, duplicates {}, rejected {}, skipped {}, {eta}",
        report.records, report.accepted, report.duplicates, report.rejected, report.skipped
    );
    let mut err = std::io::stderr().lock();
    if std::io::stderr().is_terminal() {
        let _ = write!(err, "\r\x1b[2K{text}");
        if last {
            let _ = writeln!(err);
        }
    } else if !last {
        let _ = writeln!(err, "import-cdr: {text}");
    }
}
