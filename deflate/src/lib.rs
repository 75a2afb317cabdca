//! permessage-deflate (RFC 7692) without IO, for Switchboard's server.
//!
//! - [`negotiate`]: picks the first acceptable offer of the client's
//!   `Sec-WebSocket-Extensions` and writes the response's parameters ([`Agreed`]).
//! - Sending: [`Compressor`] (one per connection) and [`compress`] (the thread's
//!   compressors) make a message's compressed payload, which the server writes as a raw
//!   frame with RSV1 set. Without server context takeover (the default) a message's
//!   compressed form does not depend on the connection, so a broadcast is compressed once.
//! - Receiving: [`Inflate`] reads the client's bytes as they come and replaces every
//!   compressed message (RSV1 on its first frame) by plain frames, passing everything else
//!   through in place, so the WebSocket library beneath sees an ordinary stream. It checks
//!   what RFC 7692 adds to a frame (RSV1 only on a first frame, one mask per message) and
//!   bounds what it inflates ([`DeflateError`]). The server's `DeflateIo` drives it from
//!   a socket; `shared/fuzz`'s `inflate` target feeds it arbitrary bytes.
//!
//! Memory: without context takeover (the default, both directions) a connection holds no
//! compression state between messages: compressors are per thread, and an inflater is
//! taken from a per-thread pool for one message and given back. With takeover a
//! connection keeps its own: about 256 KiB for a compressor at 15 window bits, ~40 KiB
//! for an inflater (always 15 bits: it reads any window; zlib's figures, see
//! docs/protocol.md).

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The bytes every sync-flushed deflate block ends with; RFC 7692 drops them from the
/// payload (sender) and puts them back before inflating (receiver).
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The server's permessage-deflate settings (from [`crate::Config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateOptions {
    /// Negotiate at all.
    pub enabled: bool,
    /// Messages shorter than this (bytes) are sent uncompressed.
    pub threshold: usize,
    /// zlib level, 0–9.
    pub level: u32,
    /// Largest window the server compresses with (9–15).
    pub window_bits: u8,
    /// Keep the compressor between messages (better ratios, ~256 KiB per connection, and
    /// a broadcast is compressed once per connection instead of once).
    pub server_context_takeover: bool,
    /// Let the client keep its compressor between messages (the server then keeps an
    /// inflater per connection: ~40 KiB).
    pub client_context_takeover: bool,
    /// With client context takeover: the window the client is asked to stay within when it
    /// offers `client_max_window_bits` (its own compressor's memory; the server's inflater
    /// is 15 bits whatever it says).
    pub client_window_bits: u8,
}

impl Default for DeflateOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 256,
            level: 6,
            window_bits: 15,
            server_context_takeover: false,
            client_context_takeover: false,
            client_window_bits: 15,
        }
    }
}

/// What was agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The window the server compresses with.
    pub server_window_bits: u8,
    /// The server keeps its compressor between messages.
    pub server_takeover: bool,
    /// The client may keep its compressor between messages (the server's inflater then
    /// lives as long as the connection).
    pub client_takeover: bool,
    /// zlib level.
    pub level: u32,
    /// Messages shorter than this are sent uncompressed.
    pub threshold: usize,
}

impl Agreed {
    /// Whether a message's compressed form can be shared with other connections (and so
    /// cached on the frame): no takeover and the usual window.
    pub fn shared(&self) -> bool {
        !self.server_takeover && self.server_window_bits == 15
    }
}

/// One offer's parameters, or `None` when the offer is malformed (unknown or repeated
/// parameter, bad value): such an offer is skipped.
#[derive(Debug, Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

fn parse_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Offer> {
    let mut offer = Offer::default();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param.trim(), None),
        };
        let bits = |v: Option<&str>| {
            v.filter(|v| v.len() <= 2 && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
        };
        match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover"
                if value.is_none() && !offer.server_no_context_takeover =>
            {
                offer.server_no_context_takeover = true;
            }
            "client_no_context_takeover"
                if value.is_none() && !offer.client_no_context_takeover =>
            {
                offer.client_no_context_takeover = true;
            }
            "server_max_window_bits" if offer.server_max_window_bits.is_none() => {
                offer.server_max_window_bits = Some(bits(value)?);
            }
            "client_max_window_bits" if offer.client_max_window_bits.is_none() => {
                offer.client_max_window_bits = Some(match value {
                    None => None,
                    Some(v) => Some(bits(Some(v))?),
                });
            }
            _ => return None,
        }
    }
    Some(offer)
}

/// The first offer of `permessage-deflate` in the `Sec-WebSocket-Extensions` header
/// values that these options can accept: what was agreed and the response header's value.
/// `None` when compression is off, not offered, or no offer can be accepted (the
/// connection then goes on uncompressed).
pub fn negotiate<'a>(
    headers: impl IntoIterator<Item = &'a str>,
    options: &DeflateOptions,
) -> Option<(Agreed, String)> {
    if !options.enabled {
        return None;
    }
    headers
        .into_iter()
        .flat_map(|h| h.split(','))
        .find_map(|offer| accept(offer, options))
}

fn accept(offer: &str, options: &DeflateOptions) -> Option<(Agreed, String)> {
    let mut parts = offer.split(';');
    if !parts
        .next()?
        .trim()
        .eq_ignore_ascii_case("permessage-deflate")
    {
        return None;
    }
    let offer = parse_offer(parts)?;
    let mut response = String::from("permessage-deflate");
    // zlib cannot compress raw deflate with an 8-bit window (it uses 9): decline an offer
    // that asks for it, as RFC 7692 allows.
    let server_window_bits = match offer.server_max_window_bits {
        Some(8) => return None,
        Some(asked) => {
            response.push_str(&format!("; server_max_window_bits={asked}"));
            asked.min(options.window_bits)
        }
        None => options.window_bits,
    };
    let server_takeover = options.server_context_takeover && !offer.server_no_context_takeover;
    if !server_takeover {
        response.push_str("; server_no_context_takeover");
    }
    let client_takeover = options.client_context_takeover && !offer.client_no_context_takeover;
    if !client_takeover {
        response.push_str("; client_no_context_takeover");
    } else if let Some(offered) = offer.client_max_window_bits {
        let bits = offered.map_or(options.client_window_bits, |b| {
            b.min(options.client_window_bits)
        });
        response.push_str(&format!("; client_max_window_bits={bits}"));
    }
    let agreed = Agreed {
        server_window_bits,
        server_takeover,
        client_takeover,
        level: options.level,
        threshold: options.threshold,
    };
    Some((agreed, response))
}

thread_local! {
    /// One compressor per window size in use on this thread (index: bits − 9) with its
    /// level, reset before each message.
    static COMPRESSORS: RefCell<[Slot; 7]> =
        const { RefCell::new([const { None }; 7]) };
    /// Inflaters between messages, for connections without client context takeover
    /// (boxed: a connection holds one by pointer while it reads a compressed message).
    #[expect(clippy::vec_box, reason = "moved in and out of connections as they are")]
    static INFLATERS: RefCell<Vec<Box<Decompress>>> = const { RefCell::new(Vec::new()) };
}

/// A thread's compressor for one window size, with its level.
type Slot = Option<(u32, Compress)>;

/// Inflaters kept per thread for reuse.
const POOLED_INFLATERS: usize = 4;

/// `payload` compressed as one message (no context kept), or `None` when that would not
/// make it smaller.
pub fn compress(payload: &[u8], window_bits: u8, level: u32) -> Option<Bytes> {
    let bits = window_bits.clamp(9, 15);
    COMPRESSORS.with(|slots| {
        let mut slots = slots.borrow_mut();
        let slot = &mut slots[usize::from(bits - 9)];
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let compressor = Compress::new_with_window_bits(Compression::new(level), false, bits);
            *slot = Some((level, compressor));
        }
        let (_, compressor) = slot.as_mut()?;
        compressor.reset();
        let out = deflate(compressor, payload)?;
        (out.len() < payload.len()).then(|| Bytes::from(out))
    })
}

/// One message through `compressor` with a sync flush, the trailing `00 00 ff ff` removed.
fn deflate(compressor: &mut Compress, payload: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    let start = compressor.total_in();
    loop {
        let consumed = (compressor.total_in() - start) as usize;
        compressor
            .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        // The flush is complete once all input is taken and the output did not fill up.
        if (compressor.total_in() - start) as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&TRAILER) {
        out.truncate(out.len() - TRAILER.len());
    }
    if out.is_empty() {
        // Nothing new to flush (an empty message with the context kept): RFC 7692 7.2.3.6
        // sends an empty stored block, 0x00, which the trailer completes.
        out.push(0);
    }
    Some(out)
}

/// One connection's sending side: compresses a message when it is at least the agreed
/// threshold and compressing makes it smaller, with the connection's own compressor
/// (server context takeover, made on first use) or this thread's.
#[derive(Debug)]
pub struct Compressor {
    agreed: Agreed,
    own: Option<Box<Compress>>,
}

impl Compressor {
    pub fn new(agreed: Agreed) -> Self {
        Self { agreed, own: None }
    }

    /// What was agreed with the client.
    pub fn agreed(&self) -> &Agreed {
        &self.agreed
    }

    /// `payload` as one compressed message (trailer removed), or `None` when it is sent
    /// as it is: shorter than the threshold, or (without takeover) not made smaller.
    pub fn compress(&mut self, payload: &[u8]) -> Option<Bytes> {
        let agreed = self.agreed;
        if payload.len() < agreed.threshold {
            return None;
        }
        if agreed.server_takeover {
            let own = self.own.get_or_insert_with(|| {
                Box::new(Compress::new_with_window_bits(
                    Compression::new(agreed.level),
                    false,
                    agreed.server_window_bits.clamp(9, 15),
                ))
            });
            deflate(own, payload).map(Bytes::from)
        } else {
            compress(payload, agreed.server_window_bits, agreed.level)
        }
    }
}

/// Why a compressed message was refused; the session closes with the matching code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeflateError {
    /// Its frame, its compressed bytes or its inflated bytes exceed the limit (1009).
    #[error("compressed message too big")]
    TooBig,
    /// The compressed data is not valid deflate (1007).
    #[error("invalid compressed data")]
    Corrupt,
    /// RSV1 on a continuation frame, RSV2/RSV3 or a mask that differs from the first
    /// frame's in a compressed message, or a new message inside one (1002).
    #[error("a compressed message's frames break RFC 6455/7692")]
    Protocol,
}

/// A frame header as it is read, byte by byte.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    bytes: [u8; 14],
    len: u8,
    /// The whole header is wanted from the client: compressed frames are consumed.
    compressed: bool,
}

impl Head {
    /// Total header length once the first two bytes are known.
    fn needed(&self) -> usize {
        if self.len < 2 {
            return 2;
        }
        let mask = if self.bytes[1] & 0x80 != 0 { 4 } else { 0 };
        2 + mask
            + match self.bytes[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            }
    }

    fn payload_len(&self) -> u64 {
        match self.bytes[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.bytes[2], self.bytes[3]])),
            127 => u64::from_be_bytes(self.bytes[2..10].try_into().unwrap_or_default()),
            n => u64::from(n),
        }
    }

    fn mask(&self) -> Option<[u8; 4]> {
        (self.bytes[1] & 0x80 != 0).then(|| {
            let at = self.needed() - 4;
            [
                self.bytes[at],
                self.bytes[at + 1],
                self.bytes[at + 2],
                self.bytes[at + 3],
            ]
        })
    }
}

/// The frame whose payload is being read.
#[derive(Debug, Clone, Copy)]
struct Payload {
    remaining: u64,
    compressed: bool,
    fin: bool,
    mask: Option<[u8; 4]>,
    /// Position in the mask of the next payload byte.
    mask_at: usize,
}

/// The receiving half of permessage-deflate, without IO: bytes from the client in, the
/// same stream with every compressed message replaced by plain frames out.
pub struct Inflate {
    max_frame: u64,
    max_message: u64,
    takeover: bool,
    head: Head,
    payload: Option<Payload>,
    /// A compressed message is in progress (its first frame was read, its last was not).
    in_message: bool,
    /// Its opcode (text or binary), until its first plain frame is written.
    opcode: Option<u8>,
    /// Whether its frames were masked (the plain ones keep the mask bit, key 0).
    masked: bool,
    message_in: u64,
    message_out: u64,
    /// The deflate stream ended (BFINAL) before the message did: the rest is ignored.
    ended: bool,
    inflater: Option<Box<Decompress>>,
    /// Inflated bytes not yet framed: the first `chunk_len` of `chunk` (allocated while a
    /// compressed message is read).
    chunk: Vec<u8>,
    chunk_len: usize,
    chunk_max: usize,
    /// Output waiting for the reader, from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
    /// Input after a compressed message that ended in a call: read on the next ones, from
    /// `held_at` on (at most one call's input, copied once).
    held: Vec<u8>,
    held_at: usize,
    /// A compressed message ended in the current call.
    message_done: bool,
    failed: Option<DeflateError>,
}

impl Inflate {
    /// For a connection whose frames may be `max_frame` bytes and messages `max_message`
    /// bytes (after inflating); `takeover`: the client keeps its context between messages.
    pub fn new(max_frame: usize, max_message: usize, takeover: bool) -> Self {
        Self {
            max_frame: max_frame as u64,
            max_message: max_message as u64,
            takeover,
            head: Head::default(),
            payload: None,
            in_message: false,
            opcode: None,
            masked: false,
            message_in: 0,
            message_out: 0,
            ended: false,
            inflater: None,
            chunk: Vec::new(),
            chunk_len: 0,
            chunk_max: max_frame.clamp(125, 16 << 10),
            pending: Vec::new(),
            pending_at: 0,
            held: Vec::new(),
            held_at: 0,
            message_done: false,
            failed: None,
        }
    }

    /// Output bytes not yet taken.
    pub fn pending(&self) -> &[u8] {
        &self.pending[self.pending_at..]
    }

    /// Marks `n` pending bytes taken; frees the buffer once it is empty.
    pub fn take(&mut self, n: usize) {
        self.pending_at += n;
        if self.pending_at >= self.pending.len() {
            self.pending = Vec::new();
            self.pending_at = 0;
        }
    }

    /// The error that stopped the stream, once its output before it was taken.
    pub fn failed(&self) -> Option<DeflateError> {
        self.failed.filter(|_| self.pending().is_empty())
    }

    /// Reads `input` (bytes from the client). The first bytes returned of it pass through
    /// unchanged where they are; everything after them was taken in, and what it gives
    /// is appended to [`Inflate::pending`].
    ///
    /// One call inflates at most one compressed message to its end: the bytes after it
    /// are held back ([`Inflate::holding`]) until the pending output was taken, so what is
    /// pending stays within the message limit plus the bytes of the call, however many
    /// small compression bombs one read carries. While holding, call it with no input.
    pub fn process(&mut self, input: &[u8]) -> usize {
        if self.held.is_empty() {
            let (kept, read) = self.run(input, false);
            if read < input.len() && self.failed.is_none() {
                self.held = input[read..].to_vec();
                self.held_at = 0;
            }
            return kept;
        }
        // The held bytes come first; new ones (if a caller passes any) queue behind them.
        // Held bytes are read in place (a read of many small messages is copied once).
        let mut held = std::mem::take(&mut self.held);
        held.extend_from_slice(input);
        let start = self.held_at;
        let (_, read) = self.run(&held[start..], true);
        if start + read < held.len() && self.failed.is_none() {
            self.held = held;
            self.held_at = start + read;
        } else {
            self.held_at = 0;
        }
        0
    }

    /// Input taken in but not read yet: a compressed message ended before it, and its
    /// output waits in [`Inflate::pending`].
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Reads `input` up to the end of the first compressed message that ends in it (or
    /// all of it, or up to a failure): the bytes kept in place, and the bytes read.
    fn run(&mut self, input: &[u8], mut diverted: bool) -> (usize, usize) {
        let mut kept = 0;
        let mut i = 0;
        self.message_done = false;
        while i < input.len() && self.failed.is_none() && !self.message_done {
            match self.payload {
                None => {
                    if self.head.len == 0 {
                        self.head.compressed = self.starts_compressed(input[i]);
                        if self.failed.is_some() {
                            break;
                        }
                    }
                    let take =
                        (self.head.needed() - usize::from(self.head.len)).min(input.len() - i);
                    let at = usize::from(self.head.len);
                    self.head.bytes[at..at + take].copy_from_slice(&input[i..i + take]);
                    self.head.len += take as u8;
                    if !self.head.compressed {
                        self.pass(&input[i..i + take], diverted, &mut kept);
                    } else {
                        diverted = true;
                    }
                    i += take;
                    if usize::from(self.head.len) == self.head.needed() && self.head.len >= 2 {
                        self.start_payload();
                    }
                }
                Some(mut payload) => {
                    let n = payload.remaining.min((input.len() - i) as u64) as usize;
                    if payload.compressed {
                        // Taken in: what follows can no longer stay in place.
                        diverted = true;
                        self.inflate_masked(&input[i..i + n], &mut payload);
                    } else {
                        self.pass(&input[i..i + n], diverted, &mut kept);
                    }
                    i += n;
                    payload.remaining -= n as u64;
                    self.payload = Some(payload);
                    if payload.remaining == 0 {
                        self.end_frame(payload);
                    }
                }
            }
        }
        (kept, i)
    }

    /// Whether a frame starting with byte `b0` is (part of) a compressed message.
    fn starts_compressed(&mut self, b0: u8) -> bool {
        let rsv1 = b0 & 0x40 != 0;
        let opcode = b0 & 0x0f;
        if opcode & 0x08 != 0 {
            // A control frame: never compressed (tungstenite refuses one with RSV1).
            return false;
        }
        match (opcode, rsv1, self.in_message) {
            // RSV1 belongs on a message's first frame only, and a new message cannot
            // start before the compressed one ends.
            (0, true, true) | (1 | 2, _, true) => {
                self.failed = Some(DeflateError::Protocol);
                true
            }
            (0, false, true) => true,
            (1 | 2, true, false) => true,
            // A new message inside a compressed one, and the rest: passed on for
            // tungstenite to judge.
            _ => false,
        }
    }

    /// Bytes that pass through: left in place while nothing was taken in before them.
    fn pass(&mut self, bytes: &[u8], diverted: bool, kept: &mut usize) {
        if diverted {
            self.pending.extend_from_slice(bytes);
        } else {
            *kept += bytes.len();
        }
    }

    fn start_payload(&mut self) {
        let head = self.head;
        self.head = Head::default();
        let len = head.payload_len();
        let fin = head.bytes[0] & 0x80 != 0;
        let payload = Payload {
            remaining: len,
            compressed: head.compressed,
            fin,
            mask: head.mask(),
            mask_at: 0,
        };
        if head.compressed {
            if !self.in_message {
                self.in_message = true;
                self.opcode = Some(head.bytes[0] & 0x0f);
                self.masked = payload.mask.is_some();
                self.message_in = 0;
                self.message_out = 0;
                self.ended = false;
            }
            // tungstenite never sees these headers: check what it would. RSV2/RSV3 mean
            // nothing here, and every frame of a message is masked as its first one is
            // (whose mask tungstenite checks for the socket's role on the frames we emit).
            if head.bytes[0] & 0x30 != 0 || payload.mask.is_some() != self.masked {
                self.failed = Some(DeflateError::Protocol);
                return;
            }
            if len > self.max_frame {
                self.failed = Some(DeflateError::TooBig);
                return;
            }
            self.message_in = self.message_in.saturating_add(len);
            if self.message_in > self.max_message {
                self.failed = Some(DeflateError::TooBig);
                return;
            }
        }
        self.payload = Some(payload);
        if len == 0 {
            self.end_frame(payload);
        }
    }

    fn end_frame(&mut self, payload: Payload) {
        self.payload = None;
        if !payload.compressed || self.failed.is_some() {
            return;
        }
        if payload.fin {
            self.inflate(&TRAILER);
            if self.failed.is_none() {
                self.emit(true);
            }
            self.in_message = false;
            self.chunk = Vec::new();
            self.chunk_len = 0;
            self.finish_message();
            self.message_done = true;
        } else if self.chunk_len > 0 {
            self.emit(false);
        }
    }

    /// After a compressed message: the inflater goes back to the pool unless the client
    /// keeps its context.
    fn finish_message(&mut self) {
        if self.takeover && !self.ended {
            return;
        }
        if let Some(mut inflater) = self.inflater.take() {
            if self.takeover {
                inflater.reset(false);
                self.inflater = Some(inflater);
                return;
            }
            inflater.reset(false);
            INFLATERS.with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < POOLED_INFLATERS {
                    pool.push(inflater);
                }
            });
        }
    }

    fn inflate_masked(&mut self, bytes: &[u8], payload: &mut Payload) {
        let Some(mask) = payload.mask else {
            self.inflate(bytes);
            return;
        };
        let mut scratch = [0u8; 1024];
        for piece in bytes.chunks(scratch.len()) {
            for (j, b) in piece.iter().enumerate() {
                scratch[j] = b ^ mask[(payload.mask_at + j) & 3];
            }
            payload.mask_at = (payload.mask_at + piece.len()) & 3;
            self.inflate(&scratch[..piece.len()]);
            if self.failed.is_some() {
                return;
            }
        }
    }

    fn inflate(&mut self, mut input: &[u8]) {
        if self.ended {
            return;
        }
        let mut inflater = match self.inflater.take() {
            Some(inflater) => inflater,
            None => INFLATERS
                .with(|pool| pool.borrow_mut().pop())
                .unwrap_or_else(|| Box::new(Decompress::new_with_window_bits(false, 15))),
        };
        if self.chunk.is_empty() {
            // Small first: most messages are short (the buffer doubles up to chunk_max).
            self.chunk = vec![0; self.chunk_max.min(1024)];
        }
        loop {
            if self.chunk_len == self.chunk.len() {
                if self.chunk.len() < self.chunk_max {
                    let grown = (self.chunk.len() * 2).min(self.chunk_max);
                    self.chunk.resize(grown, 0);
                } else {
                    self.emit(false);
                }
            }
            let room = self.chunk.len() - self.chunk_len;
            let (in0, out0) = (inflater.total_in(), inflater.total_out());
            let status = inflater.decompress(
                input,
                &mut self.chunk[self.chunk_len..],
                FlushDecompress::None,
            );
            let consumed = (inflater.total_in() - in0) as usize;
            let produced = (inflater.total_out() - out0) as usize;
            input = &input[consumed..];
            self.chunk_len += produced;
            self.message_out += produced as u64;
            if self.message_out > self.max_message {
                self.failed = Some(DeflateError::TooBig);
                break;
            }
            match status {
                Ok(Status::StreamEnd) => {
                    self.ended = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    self.failed = Some(DeflateError::Corrupt);
                    break;
                }
            }
            // Done when the input is taken and the output did not fill the room.
            if input.is_empty() && produced < room {
                break;
            }
            if consumed == 0 && produced == 0 {
                // No progress with input left and room to spare: broken data.
                self.failed = Some(DeflateError::Corrupt);
                break;
            }
        }
        self.inflater = Some(inflater);
    }

    /// Frames the inflated bytes so far (as the message's first frame or a continuation).
    fn emit(&mut self, fin: bool) {
        let opcode = self.opcode.take().unwrap_or(0);
        let len = self.chunk_len;
        let mask = if self.masked { 0x80 } else { 0 };
        self.pending.push(if fin { 0x80 } else { 0 } | opcode);
        if len < 126 {
            self.pending.push(mask | len as u8);
        } else if len <= usize::from(u16::MAX) {
            self.pending.push(mask | 126);
            self.pending.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.pending.push(mask | 127);
            self.pending.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if self.masked {
            // A zero key: the payload reads as it is.
            self.pending.extend_from_slice(&[0; 4]);
        }
        self.pending.extend_from_slice(&self.chunk[..len]);
        self.chunk_len = 0;
    }
}

impl Inflate {
    /// Nothing in progress: between frames, outside a compressed message, nothing
    /// pending, no inflater kept (the caller may drop it and make a new one with
    /// [`Inflate::limits`] when bytes come).
    pub fn at_rest(&self) -> bool {
        self.head.len == 0
            && self.payload.is_none()
            && !self.in_message
            && self.pending().is_empty()
            && self.held.is_empty()
            && self.failed.is_none()
            && self.inflater.is_none()
    }

    /// The arguments it was made with: `(max_frame, max_message, takeover)`.
    pub fn limits(&self) -> (u64, u64, bool) {
        (self.max_frame, self.max_message, self.takeover)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;
    use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
    use tungstenite::{Error as WsError, Message};

    use super::*;

    fn options() -> DeflateOptions {
        DeflateOptions::default()
    }

    fn agree(header: &str, options: &DeflateOptions) -> Option<String> {
        negotiate([header], options).map(|(_, response)| response)
    }

    #[test]
    fn negotiation_takes_the_first_acceptable_offer_and_answers_per_rfc_7692() {
        let o = options();
        let plain = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        // What Chromium and Firefox offer.
        assert_eq!(
            agree("permessage-deflate; client_max_window_bits", &o).as_deref(),
            Some(plain)
        );
        assert_eq!(agree("permessage-deflate", &o).as_deref(), Some(plain));
        assert_eq!(
            agree("permessage-deflate; server_max_window_bits=10", &o).as_deref(),
            Some(
                "permessage-deflate; server_max_window_bits=10; server_no_context_takeover; client_no_context_takeover"
            )
        );
        // An 8-bit server window cannot be honoured (zlib): that offer is skipped for the next.
        assert_eq!(
            agree(
                "permessage-deflate; server_max_window_bits=8, permessage-deflate",
                &o
            )
            .as_deref(),
            Some(plain)
        );
        assert_eq!(
            agree("permessage-deflate; server_max_window_bits=8", &o),
            None
        );
        // Malformed offers are skipped: unknown or repeated parameters, bad values.
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_no_context_takeover=1",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(agree(bad, &o), None, "{bad}");
        }
        assert_eq!(
            agree("permessage-deflate; server_max_window_bits=\"12\"", &o).as_deref(),
            Some(
                "permessage-deflate; server_max_window_bits=12; server_no_context_takeover; client_no_context_takeover"
            )
        );
        // Several header lines: the first acceptable offer wins.
        let (agreed, _) =
            negotiate(["foo", "permessage-deflate; server_max_window_bits=9"], &o).unwrap();
        assert_eq!(agreed.server_window_bits, 9);
        assert!(
            !agreed.shared(),
            "a 9-bit window is compressed per connection"
        );
        // Off: nothing is agreed.
        let off = DeflateOptions {
            enabled: false,
            ..o
        };
        assert_eq!(agree("permessage-deflate", &off), None);
    }

    #[test]
    fn context_takeover_is_kept_only_when_configured_and_not_refused() {
        let o = DeflateOptions {
            server_context_takeover: true,
            client_context_takeover: true,
            client_window_bits: 10,
            ..options()
        };
        let (agreed, response) =
            negotiate(["permessage-deflate; client_max_window_bits"], &o).unwrap();
        assert_eq!(response, "permessage-deflate; client_max_window_bits=10");
        assert!(agreed.server_takeover && agreed.client_takeover && !agreed.shared());
        let (agreed, response) = negotiate(
            ["permessage-deflate; server_no_context_takeover; client_no_context_takeover"],
            &o,
        )
        .unwrap();
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(!agreed.server_takeover && !agreed.client_takeover);
        // Without client_max_window_bits in the offer the server may not send it.
        assert_eq!(
            agree("permessage-deflate", &o).as_deref(),
            Some("permessage-deflate")
        );
    }

    #[test]
    fn compress_shrinks_what_it_can_and_inflates_back() {
        let text = "{\"type\":\"message\",\"data\":\"".to_string() + &"hello ".repeat(100) + "\"}";
        let packed = compress(text.as_bytes(), 15, 6).unwrap();
        assert!(packed.len() < text.len() / 5, "{} bytes", packed.len());
        assert!(!packed.ends_with(&TRAILER));
        let mut raw = packed.to_vec();
        raw.extend_from_slice(&TRAILER);
        let mut out = Vec::with_capacity(text.len() + 16);
        Decompress::new_with_window_bits(false, 15)
            .decompress_vec(&raw, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, text.as_bytes());
        // Random bytes do not shrink: sent as they are.
        assert_eq!(compress(&noise(600), 15, 6), None);
    }

    /// A client's frames for `messages`: each compressed (independently, or with context
    /// takeover) unless `plain`, split into `fragments` frames, masked, with a ping between
    /// fragments when `pings`.
    fn client_stream(
        messages: &[(Vec<u8>, bool)],
        fragments: usize,
        takeover: bool,
        pings: bool,
    ) -> Vec<u8> {
        let mut compressor = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let mut out = Vec::new();
        for (i, (payload, plain)) in messages.iter().enumerate() {
            let body = if *plain {
                payload.clone()
            } else {
                if !takeover {
                    compressor.reset();
                }
                deflate(&mut compressor, payload).unwrap()
            };
            let n = fragments.max(1);
            let size = body.len().div_ceil(n).max(1);
            let pieces: Vec<&[u8]> = if body.is_empty() {
                vec![&[][..]]
            } else {
                body.chunks(size).collect()
            };
            for (j, piece) in pieces.iter().enumerate() {
                let first = j == 0;
                let last = j + 1 == pieces.len();
                let opcode = if first { 1 + (i % 2) as u8 } else { 0 };
                let rsv1 = if first && !plain { 0x40 } else { 0 };
                frame(
                    &mut out,
                    if last { 0x80 } else { 0 } | rsv1 | opcode,
                    piece,
                    [7, 1, 200, 33],
                );
                if pings && !last {
                    frame(&mut out, 0x89, b"ping", [1, 2, 3, 4]);
                }
            }
        }
        out
    }

    /// Bytes that do not compress (xorshift).
    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn frame(out: &mut Vec<u8>, b0: u8, payload: &[u8], mask: [u8; 4]) {
        out.push(b0);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    }

    /// Runs `input` through an [`Inflate`] in reads of `split` bytes, and reads the result
    /// with tungstenite as the server would: the messages, then the error that ended it.
    fn through(
        input: &[u8],
        split: usize,
        inflate: &mut Inflate,
    ) -> (Vec<Message>, Option<DeflateError>) {
        let mut stream = Vec::new();
        'reads: for piece in input.chunks(split.max(1)) {
            let mut buf = piece.to_vec();
            let kept = inflate.process(&buf);
            buf.truncate(kept);
            stream.extend_from_slice(&buf);
            loop {
                let pending = inflate.pending().to_vec();
                inflate.take(pending.len());
                stream.extend_from_slice(&pending);
                if inflate.failed().is_some() {
                    break 'reads;
                }
                if !inflate.holding() {
                    break;
                }
                assert_eq!(
                    inflate.process(&[]),
                    0,
                    "held bytes are never left in place"
                );
            }
        }
        let config = WebSocketConfig::default().max_message_size(Some(1 << 20));
        let mut ws = WebSocket::from_raw_socket(Cursor::new(stream), Role::Server, Some(config));
        let mut got = Vec::new();
        loop {
            match ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(msg) => got.push(msg),
                // The end of the bytes.
                Err(WsError::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => break,
                Err(e) => panic!("tungstenite refused the stream: {e}"),
            }
        }
        (got, inflate.failed())
    }

    fn payloads(got: &[Message]) -> Vec<Vec<u8>> {
        got.iter().map(|m| m.clone().into_data().to_vec()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_message_arrives_as_sent_however_it_is_split(
            messages in prop::collection::vec(
                // Empty and tiny messages as often as long ones: an empty compressed
                // message (with context takeover) is a path a fuzz target once broke.
                (prop_oneof![
                    1 => Just(Vec::new()),
                    1 => prop::collection::vec(prop::sample::select(b"ab{}\":,0123 xyz".to_vec()), 1..8),
                    4 => prop::collection::vec(prop::sample::select(b"ab{}\":,0123 xyz".to_vec()), 0..3000),
                ], any::<bool>()),
                1..6,
            ),
            fragments in 1usize..5,
            split in 1usize..700,
            takeover in any::<bool>(),
            pings in any::<bool>(),
        ) {
            let input = client_stream(&messages, fragments, takeover, pings);
            let mut inflate = Inflate::new(1 << 20, 1 << 20, takeover);
            let (got, failed) = through(&input, split, &mut inflate);
            prop_assert_eq!(failed, None);
            let sent: Vec<Vec<u8>> = messages.iter().map(|(p, _)| p.clone()).collect();
            prop_assert_eq!(payloads(&got), sent);
            // Nothing is held between messages.
            prop_assert!(inflate.pending().is_empty() && inflate.chunk.is_empty());
            // The inflater stays only with context takeover.
            let compressed = messages.iter().any(|(_, plain)| !plain);
            prop_assert_eq!(inflate.inflater.is_some(), takeover && compressed);
        }
    }

    #[test]
    fn an_empty_message_with_context_takeover_keeps_the_stream_readable() {
        // Found by the `inflate` fuzz target: zlib flushes nothing for an empty message
        // after a flush, and an empty payload leaves the client's inflater inside a block.
        let mut compressor = Compressor::new(Agreed {
            server_window_bits: 15,
            server_takeover: true,
            client_takeover: true,
            level: 6,
            threshold: 0,
        });
        let mut inflater = Decompress::new_with_window_bits(false, 15);
        for text in [&b"abcabcabc"[..], b"", b"", b"abcabcabc", b""] {
            let mut body = compressor.compress(text).unwrap().to_vec();
            assert!(!body.is_empty(), "an empty message is one 0x00 byte");
            body.extend_from_slice(&TRAILER);
            let mut out = Vec::with_capacity(64);
            inflater
                .decompress_vec(&body, &mut out, FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out, text);
        }
    }

    #[test]
    fn many_small_bombs_in_one_read_hold_at_most_one_message_inflated() {
        // Each message inflates to the limit from ~100 bytes: one 64 KiB read holds
        // hundreds of them.
        let limit = 64 << 10;
        let one = client_stream(&[(vec![0; limit], false)], 1, false, false);
        assert!(one.len() < 200, "{} bytes on the wire", one.len());
        let input = one.repeat((64 << 10) / one.len());
        let messages = input.len() / one.len();
        let mut inflate = Inflate::new(limit, limit, false);
        let bound = limit + 14 * (limit / 125 + 2);
        let mut reads = 0;
        let mut stream = Vec::new();
        let mut rest = &input[..];
        // As DeflateIo drives it: a read, then what is pending taken before the next.
        loop {
            let kept = inflate.process(rest);
            stream.extend_from_slice(&rest[..kept]);
            rest = &[];
            assert!(
                inflate.pending().len() <= bound,
                "{} bytes pending from one read (limit {limit})",
                inflate.pending().len()
            );
            let pending = inflate.pending().to_vec();
            inflate.take(pending.len());
            stream.extend_from_slice(&pending);
            reads += 1;
            if pending.is_empty() || reads > messages + 2 {
                break;
            }
        }
        let config = WebSocketConfig::default().max_message_size(Some(1 << 20));
        let mut ws = WebSocket::from_raw_socket(Cursor::new(stream), Role::Server, Some(config));
        let mut got = 0;
        while let Ok(msg) = ws.read() {
            assert_eq!(msg.len(), limit);
            got += 1;
        }
        assert_eq!(got, messages, "every message, one at a time");
    }

    #[test]
    fn a_compression_bomb_stops_at_the_limit() {
        let bomb = vec![b'a'; 10 << 20];
        let input = client_stream(&[(bomb, false)], 1, false, false);
        assert!(input.len() < 20_000, "{} bytes on the wire", input.len());
        let mut inflate = Inflate::new(64 << 10, 64 << 10, false);
        let (got, failed) = through(&input, 4096, &mut inflate);
        assert!(got.is_empty());
        assert_eq!(failed, Some(DeflateError::TooBig));
        // A compressed frame longer than a frame may be is refused before inflating.
        let input = client_stream(&[(noise(200_000), false)], 1, false, false);
        let mut inflate = Inflate::new(64 << 10, 1 << 20, false);
        assert_eq!(
            through(&input, 4096, &mut inflate).1,
            Some(DeflateError::TooBig)
        );
    }

    #[test]
    fn broken_data_and_misplaced_rsv1_are_refused() {
        let mut input = Vec::new();
        frame(&mut input, 0x80 | 0x40 | 1, &[0xff; 40], [1, 2, 3, 4]);
        let mut inflate = Inflate::new(1 << 20, 1 << 20, false);
        assert_eq!(
            through(&input, 100, &mut inflate).1,
            Some(DeflateError::Corrupt)
        );

        let ok = client_stream(&[(b"hello hello hello".to_vec(), false)], 2, false, false);
        // The same message with RSV1 on its continuation too.
        let mut bad = ok.clone();
        let first_len = 2 + 4 + usize::from(bad[1] & 0x7f);
        bad[first_len] |= 0x40;
        let mut inflate = Inflate::new(1 << 20, 1 << 20, false);
        assert_eq!(
            through(&bad, 100, &mut inflate).1,
            Some(DeflateError::Protocol)
        );
        // RSV2 on a compressed frame (tungstenite never sees its header).
        let mut rsv2 = ok.clone();
        rsv2[0] |= 0x20;
        let mut inflate = Inflate::new(1 << 20, 1 << 20, false);
        assert_eq!(
            through(&rsv2, 100, &mut inflate).1,
            Some(DeflateError::Protocol)
        );
        // An unmasked continuation of a masked message.
        let mut unmasked = ok[..first_len].to_vec();
        unmasked.extend_from_slice(&[0x80, 0x01, 0x00]);
        let mut inflate = Inflate::new(1 << 20, 1 << 20, false);
        assert_eq!(
            through(&unmasked, 100, &mut inflate).1,
            Some(DeflateError::Protocol)
        );
        // A continuation claiming 2^64 - 1 bytes: refused, no overflow.
        let mut huge = ok[..first_len].to_vec();
        huge.extend_from_slice(&[0x80, 0x80 | 127]);
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        let mut inflate = Inflate::new(1 << 20, 1 << 20, false);
        assert_eq!(
            through(&huge, 100, &mut inflate).1,
            Some(DeflateError::TooBig)
        );
        // A new message before the compressed one ended.
        let mut interleaved = ok[..first_len].to_vec();
        frame(&mut interleaved, 0x81, b"plain", [1, 2, 3, 4]);
        let mut inflate = Inflate::new(1 << 20, 1 << 20, false);
        assert_eq!(
            through(&interleaved, 100, &mut inflate).1,
            Some(DeflateError::Protocol)
        );
    }
}
