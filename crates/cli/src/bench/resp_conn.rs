//! The RESP target (ringkv's RESP port or any Redis-protocol server): one
//! TCP connection carrying `--pipeline` slots. Requests go out in the order
//! they are made and replies come back in the same order, so a FIFO of
//! in-flight requests matches each reply to its slot. One task per
//! connection reads, writes and keeps the schedule; nothing is shared.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use ringkv_wire::resp::{array_header, bulk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Settings;
use super::pacer::Pacer;
use super::resp_reply::{Reply, parse_reply};
use super::slot::{Issued, Next, SlotSource};
use super::stats::{Outcome, Stats};
use super::workload::OpKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Get,
    Set,
}

struct InFlight {
    slot: usize,
    command: Command,
    sent: Instant,
}

#[derive(Clone, Copy)]
enum SlotState {
    Ready,
    Waiting(Instant),
    Busy {
        issued: Issued,
        /// For a read-modify-write in its write step: how the read went.
        read_step: Option<Duration>,
        not_found: bool,
    },
    Stopped,
}

enum Event {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Wake,
    Expired,
}

struct Connection<'a> {
    settings: &'a Settings,
    sources: Vec<SlotSource>,
    states: Vec<SlotState>,
    in_flight: VecDeque<InFlight>,
    read_buffer: BytesMut,
    write_buffer: BytesMut,
    key_buffer: String,
    /// Wakes the connection when a waiting slot's start has come.
    pacer: Pacer,
    stats: Stats,
}

async fn connect(
    addr: &str,
    timeout: Duration,
    password: Option<&str>,
) -> Result<TcpStream, &'static str> {
    let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err("timeout"),
        Ok(Err(_)) => return Err("connect"),
        Ok(Ok(stream)) => stream,
    };
    stream.set_nodelay(true).map_err(|_| "connect")?;
    if let Some(password) = password {
        let mut command = BytesMut::new();
        array_header(&mut command, 2);
        bulk(&mut command, b"AUTH");
        bulk(&mut command, password.as_bytes());
        let authenticate = async {
            stream.write_all(&command).await.ok()?;
            // The answer is one line: +OK, or an error.
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while !line.ends_with(b"\r\n") && line.len() < 512 {
                stream.read_exact(&mut byte).await.ok()?;
                line.push(byte[0]);
            }
            Some(line)
        };
        match tokio::time::timeout(timeout, authenticate).await {
            Ok(Some(line)) if line == b"+OK\r\n" => {}
            _ => return Err("auth"),
        }
    }
    Ok(stream)
}

/// Runs `sources` (one per pipeline slot) over one connection to `addr` until all stop.
pub async fn run_resp(addr: &str, sources: Vec<SlotSource>, settings: &Settings) -> Stats {
    let slots = sources.len();
    let mut connection = Connection {
        settings,
        sources,
        states: vec![SlotState::Ready; slots],
        in_flight: VecDeque::with_capacity(slots),
        read_buffer: BytesMut::with_capacity(64 * 1024),
        write_buffer: BytesMut::with_capacity(16 * 1024),
        key_buffer: String::new(),
        pacer: Pacer::new(),
        stats: Stats::new(settings.slow),
    };
    connection.run(addr).await;
    let mut stats = connection.stats;
    stats.late_unsent = connection.sources.iter().map(SlotSource::late_unsent).sum();
    stats
}

impl Connection<'_> {
    async fn run(&mut self, addr: &str) {
        let timeout = self.settings.timeout;
        let mut stream: Option<TcpStream> = None;
        loop {
            if stream.is_none() {
                match connect(addr, timeout, self.settings.password.as_deref()).await {
                    Ok(connected) => stream = Some(connected),
                    Err(kind) => {
                        // Every slot due now fails; then back off (the deadline ends the run).
                        let now = Instant::now();
                        for slot in 0..self.states.len() {
                            if let Some(issued) = self.start_if_due(slot, now) {
                                self.settings.count_completed(&issued);
                                self.stats.finish(&issued, now, Outcome::failed(kind));
                                self.states[slot] = SlotState::Ready;
                            }
                        }
                        if self.all_stopped() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            let now = Instant::now();
            for slot in 0..self.states.len() {
                if let Some(issued) = self.start_if_due(slot, now) {
                    let command = match issued.op.kind {
                        OpKind::Read | OpKind::ReadModifyWrite => Command::Get,
                        OpKind::Update => Command::Set,
                    };
                    self.states[slot] = SlotState::Busy {
                        issued,
                        read_step: None,
                        not_found: false,
                    };
                    self.send(slot, command, issued.op.key, now);
                }
            }
            if self.in_flight.is_empty() && self.all_stopped() {
                return;
            }
            let wake = self
                .states
                .iter()
                .filter_map(|state| match state {
                    SlotState::Waiting(at) => Some(*at),
                    _ => None,
                })
                .min();
            let expires = self.in_flight.front().map(|request| request.sent + timeout);
            let event = {
                let (mut reader, mut writer) = stream.as_mut().expect("connected above").split();
                tokio::select! {
                    result = reader.read_buf(&mut self.read_buffer), if !self.in_flight.is_empty() => Event::Read(result),
                    result = writer.write_buf(&mut self.write_buffer), if !self.write_buffer.is_empty() => Event::Wrote(result),
                    () = self.pacer.sleep_until(wake.unwrap_or(now)), if wake.is_some() => Event::Wake,
                    () = sleep_until(expires), if expires.is_some() => Event::Expired,
                    else => Event::Wake,
                }
            };
            match event {
                Event::Read(Ok(0)) | Event::Read(Err(_)) | Event::Wrote(Err(_)) => {
                    self.fail_all("connection", "connection");
                    stream = None;
                }
                Event::Expired => {
                    self.fail_all("timeout", "aborted");
                    stream = None;
                }
                Event::Read(Ok(_)) => {
                    if let Err(kind) = self.take_replies() {
                        self.fail_all(kind, kind);
                        stream = None;
                    }
                }
                Event::Wrote(Ok(_)) | Event::Wake => {}
            }
        }
    }

    /// An operation for `slot` if it is idle and its start has come.
    fn start_if_due(&mut self, slot: usize, now: Instant) -> Option<Issued> {
        let due = match self.states[slot] {
            SlotState::Ready => true,
            SlotState::Waiting(at) => at <= now,
            SlotState::Busy { .. } | SlotState::Stopped => false,
        };
        if due { self.next(slot, now) } else { None }
    }

    fn all_stopped(&self) -> bool {
        self.states
            .iter()
            .all(|state| matches!(state, SlotState::Stopped))
    }

    /// Asks the slot's source what to do; returns an operation to start, else updates the state.
    fn next(&mut self, slot: usize, now: Instant) -> Option<Issued> {
        match self.sources[slot].next(now) {
            Next::Issue(issued) => Some(issued),
            Next::Wait(at) => {
                self.states[slot] = SlotState::Waiting(at);
                None
            }
            Next::Stop => {
                self.states[slot] = SlotState::Stopped;
                None
            }
        }
    }

    fn send(&mut self, slot: usize, command: Command, key: u64, now: Instant) {
        self.key_buffer.clear();
        write!(self.key_buffer, "user{key}").expect("writing to a String");
        match command {
            Command::Get => {
                array_header(&mut self.write_buffer, 2);
                bulk(&mut self.write_buffer, b"GET");
                bulk(&mut self.write_buffer, self.key_buffer.as_bytes());
            }
            Command::Set => {
                array_header(&mut self.write_buffer, 3);
                bulk(&mut self.write_buffer, b"SET");
                bulk(&mut self.write_buffer, self.key_buffer.as_bytes());
                bulk(&mut self.write_buffer, &self.settings.value);
            }
        }
        self.in_flight.push_back(InFlight {
            slot,
            command,
            sent: now,
        });
    }

    /// Matches every complete reply in the read buffer to its request.
    fn take_replies(&mut self) -> Result<(), &'static str> {
        loop {
            let (reply, used) = match parse_reply(&self.read_buffer) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(()),
                Err(_) => return Err("resp_protocol"),
            };
            self.read_buffer.advance(used);
            let request = self.in_flight.pop_front().ok_or("resp_protocol")?;
            self.complete(request, reply, Instant::now());
        }
    }

    fn complete(&mut self, request: InFlight, reply: Reply, now: Instant) {
        let SlotState::Busy {
            issued,
            read_step,
            not_found,
        } = self.states[request.slot]
        else {
            unreachable!(
                "a reply for slot {} that has nothing in flight",
                request.slot
            );
        };
        let step = now.saturating_duration_since(request.sent);
        let outcome = if let Some(kind) = reply.error_kind() {
            Outcome::failed(format!("resp_{kind}"))
        } else {
            match (issued.op.kind, request.command, reply) {
                (OpKind::Read, Command::Get, Reply::Bulk(value)) => Outcome {
                    not_found: value.is_none(),
                    ..Outcome::default()
                },
                (OpKind::Update, Command::Set, Reply::Simple(_)) => Outcome::default(),
                (OpKind::ReadModifyWrite, Command::Get, Reply::Bulk(value)) => {
                    // Write back what was read over (RESP has no causal context: a plain SET).
                    self.states[request.slot] = SlotState::Busy {
                        issued,
                        read_step: Some(step),
                        not_found: value.is_none(),
                    };
                    self.send(request.slot, Command::Set, issued.op.key, now);
                    return;
                }
                (OpKind::ReadModifyWrite, Command::Set, Reply::Simple(_)) => Outcome {
                    read_step,
                    write_step: Some(step),
                    not_found,
                    error: None,
                },
                _ => Outcome::failed("resp_unexpected_reply"),
            }
        };
        self.settings.count_completed(&issued);
        self.stats.finish(&issued, now, outcome);
        self.states[request.slot] = SlotState::Ready;
    }

    /// The connection is unusable: every request in flight fails (the oldest
    /// with `first`, the rest with `rest`) and buffered bytes are dropped.
    fn fail_all(&mut self, first: &'static str, rest: &'static str) {
        let now = Instant::now();
        let mut kind = first;
        while let Some(request) = self.in_flight.pop_front() {
            if let SlotState::Busy { issued, .. } = self.states[request.slot] {
                self.settings.count_completed(&issued);
                self.stats.finish(&issued, now, Outcome::failed(kind));
                self.states[request.slot] = SlotState::Ready;
            }
            kind = rest;
        }
        self.read_buffer.clear();
        self.write_buffer.clear();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
