//! What the server runs on every byte a client with permessage-deflate sends: the
//! `switchboard-deflate` crate's `Inflate`, fed in pieces of fuzzer-chosen sizes.
//!
//! The first byte picks the limits, the split and the mode:
//! - raw: the rest is the client's byte stream as it is;
//! - built: the rest is a list of operations (a compressed or plain message in 1 to 8
//!   fragments, a ping between fragments, a stray byte) that the harness turns into masked
//!   frames, compressing with the crate's own `Compressor` (with or without context
//!   takeover), so the fuzzer reaches deep into inflating.
//!
//! It must never panic, and:
//! - what one call leaves pending stays within the message limit (plus frame headers):
//!   the bomb guard;
//! - a stream without RSV1 anywhere comes out byte for byte as it went in;
//! - once failed, it takes nothing more;
//! - a built stream that breaks no rule and no limit comes out as exactly the messages that
//!   went in, in order, and without an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_deflate::{Agreed, Compressor, Inflate};

/// The client's masking key: anything works, a fixed one keeps the harness simple.
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fuzz_target!(|data: &[u8]| {
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    let max_message = [125, 1024, 16 << 10, 1 << 20][usize::from(config & 3)];
    let max_frame = if config & 4 != 0 {
        max_message
    } else {
        1 << 20
    };
    let takeover = config & 8 != 0;
    let split = [1, 7, 64, 4096][usize::from((config >> 4) & 3)];
    let built = config & 0x40 != 0;
    let (input, expected) = if built {
        build(rest, takeover)
    } else {
        (rest.to_vec(), None)
    };

    let mut inflate = Inflate::new(max_frame, max_message, takeover);
    let mut out = Vec::new();
    for piece in input.chunks(split) {
        if inflate.failed().is_some() {
            assert_eq!(inflate.process(piece), 0, "nothing taken after a failure");
            assert!(inflate.pending().is_empty());
            break;
        }
        let kept = inflate.process(piece);
        assert!(kept <= piece.len());
        out.extend_from_slice(&piece[..kept]);
        // As the server's DeflateIo drives it: the output taken, then held bytes read
        // before the next piece.
        loop {
            let pending = inflate.pending();
            // One message inflated per call, framed in chunks of at least 1 KiB or at the
            // end of a compressed frame; passed-through bytes are at most the call's.
            let bound = 8 * piece.len() + max_message + 14 * (max_message / 1024 + 2);
            assert!(
                pending.len() <= bound,
                "{} bytes pending after a {}-byte piece (limit {max_message})",
                pending.len(),
                piece.len()
            );
            out.extend_from_slice(pending);
            inflate.take(pending.len());
            if inflate.failed().is_some() || !inflate.holding() {
                break;
            }
            assert_eq!(inflate.process(&[]), 0, "held bytes never stay in place");
        }
    }

    if !any_rsv1(&input) {
        assert_eq!(inflate.failed(), None);
        assert_eq!(out, input, "a stream without compression passes unchanged");
    }
    if let Some(expected) = expected {
        let fits = expected
            .iter()
            .all(|m| m.payload.len().max(m.wire) <= max_message && m.largest_frame <= max_frame);
        if fits {
            assert_eq!(inflate.failed(), None, "a valid stream within the limits");
            let got = messages(&out);
            let want: Vec<Vec<u8>> = expected.into_iter().map(|m| m.payload).collect();
            assert_eq!(got, want, "every message as it was sent");
        }
    }
});

/// A message the harness sent: its payload, its bytes on the wire (compressed or not) and
/// its largest frame's payload.
struct Sent {
    payload: Vec<u8>,
    wire: usize,
    largest_frame: usize,
}

/// The client's frames for the operations in `ops`, and the messages they carry (`None`
/// when a stray byte made the stream invalid).
fn build(mut ops: &[u8], takeover: bool) -> (Vec<u8>, Option<Vec<Sent>>) {
    let mut compressor = Compressor::new(Agreed {
        server_window_bits: 15,
        server_takeover: takeover,
        client_takeover: takeover,
        level: 6,
        threshold: 0,
    });
    let mut out = Vec::new();
    let mut sent = Some(Vec::new());
    while let [op, len, tail @ ..] = ops {
        let len = usize::from(*len) * (1 + usize::from(op >> 5)) * 4;
        let (payload, tail) = tail.split_at(len.min(tail.len()));
        ops = tail;
        let fragments = 1 + usize::from((op >> 2) & 7);
        let text = op & 0x10 != 0;
        let pings = op & 0x80 != 0;
        let (body, compressed) = match op & 3 {
            0 => match compressor.compress(payload) {
                Some(body) => (body.to_vec(), true),
                None => (payload.to_vec(), false),
            },
            1 => (payload.to_vec(), false),
            2 => {
                frame(&mut out, 0x89, &payload[..payload.len().min(125)]);
                continue;
            }
            _ => {
                out.push(*op);
                sent = None;
                continue;
            }
        };
        // A plain text message must be UTF-8 for the comparison; binary carries anything.
        let opcode = if text && std::str::from_utf8(payload).is_ok() {
            1
        } else {
            2
        };
        let size = body.len().div_ceil(fragments).max(1);
        let pieces: Vec<&[u8]> = if body.is_empty() {
            vec![&[]]
        } else {
            body.chunks(size).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            let first = i == 0;
            let last = i + 1 == pieces.len();
            let b0 = u8::from(last) << 7
                | if first && compressed { 0x40 } else { 0 }
                | if first { opcode } else { 0 };
            frame(&mut out, b0, piece);
            if pings && !last {
                frame(&mut out, 0x89, b"ping");
            }
        }
        if let Some(sent) = &mut sent {
            sent.push(Sent {
                payload: payload.to_vec(),
                wire: body.len(),
                largest_frame: pieces.iter().map(|p| p.len()).max().unwrap_or(0),
            });
        }
    }
    (out, sent)
}

/// One masked frame.
fn frame(out: &mut Vec<u8>, b0: u8, payload: &[u8]) {
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
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i & 3]));
}

/// The frames of `stream` as far as they parse, `(first byte, unmasked payload)`, and the
/// bytes of the frame left unfinished.
fn frames(mut stream: &[u8]) -> (Vec<(u8, Vec<u8>)>, &[u8]) {
    let mut got = Vec::new();
    loop {
        let Some(((b0, payload), rest)) = one_frame(stream) else {
            return (got, stream);
        };
        got.push((b0, payload));
        stream = rest;
    }
}

/// The first frame of `stream`, if it is all there, and what follows it.
fn one_frame(stream: &[u8]) -> Option<((u8, Vec<u8>), &[u8])> {
    let [b0, b1, rest @ ..] = stream else {
        return None;
    };
    let (len, rest) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            &rest[2..],
        ),
        127 => (
            u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
            &rest[8..],
        ),
        n => (u64::from(n), rest),
    };
    let (key, rest) = if b1 & 0x80 != 0 {
        let key: [u8; 4] = rest.get(..4)?.try_into().ok()?;
        (Some(key), &rest[4..])
    } else {
        (None, rest)
    };
    let len = usize::try_from(len).ok()?;
    let payload = rest
        .get(..len)?
        .iter()
        .enumerate()
        .map(|(i, b)| key.map_or(*b, |k| b ^ k[i & 3]))
        .collect();
    Some(((*b0, payload), &rest[len..]))
}

/// Whether any frame of `stream`, or the unfinished one at its end, has RSV1 set.
fn any_rsv1(stream: &[u8]) -> bool {
    let (frames, unfinished) = frames(stream);
    frames.iter().any(|(b0, _)| b0 & 0x40 != 0) || unfinished.first().is_some_and(|b| b & 0x40 != 0)
}

/// The data messages in `stream` (control frames skipped), reassembled from fragments.
fn messages(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for (b0, payload) in frames(stream).0 {
        if b0 & 0x08 != 0 {
            continue;
        }
        current
            .get_or_insert_with(Vec::new)
            .extend_from_slice(&payload);
        if b0 & 0x80 != 0 {
            got.extend(current.take());
        }
    }
    got
}
