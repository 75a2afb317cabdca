//! permessage-deflate on the server's sockets. The protocol logic (negotiation,
//! compressing, the sans-IO [`Inflate`]) is the `switchboard-deflate` crate, re-exported
//! here; this module adds the IO:
//!
//! - [`message`]: a compressed payload as the raw RSV1 frame the session writes.
//! - [`DeflateIo`] sits between the socket and tungstenite and runs an [`Inflate`] on what
//!   it reads, so tungstenite sees an ordinary stream with compressed messages inflated.
//!   Between messages it keeps only the limits, so an idle connection with compression
//!   negotiated costs what a plain one does.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use switchboard_deflate::*;

/// A data message whose payload is already compressed: a raw frame with RSV1 set, which
/// tungstenite writes as it is (masked when the socket is a client's).
pub fn message(
    payload: Bytes,
    data: tungstenite::protocol::frame::coding::Data,
) -> tungstenite::Message {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::OpCode;
    let mut frame = Frame::message(payload, OpCode::Data(data), true);
    frame.header_mut().rsv1 = true;
    tungstenite::Message::Frame(frame)
}

/// The socket as tungstenite reads it: compressed messages arrive inflated. Writes pass
/// through (compressed frames are made before they are written).
pub struct DeflateIo<T> {
    inner: T,
    inflate: Side,
}

/// The receiving side's state. Between frames, outside a compressed message and with
/// nothing pending, an [`Inflate`] holds nothing worth keeping, so a resting connection
/// keeps only its limits (no allocation: an idle connection with compression negotiated
/// costs what a plain one does).
enum Side {
    Plain,
    Rest {
        max_frame: u32,
        max_message: u32,
        takeover: bool,
    },
    Busy(Box<Inflate>),
}

impl<T> DeflateIo<T> {
    /// `inner` as it is (nothing negotiated) or with inflating.
    pub fn new(inner: T, inflate: Option<Box<Inflate>>) -> Self {
        let inflate = match inflate {
            None => Side::Plain,
            Some(inflate) => Side::Busy(inflate),
        };
        let mut io = Self { inner, inflate };
        // Nothing read yet: keep only the limits.
        io.rest();
        io
    }

    /// The stream beneath.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeflateIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let inflate = match &mut this.inflate {
            Side::Plain => return Pin::new(&mut this.inner).poll_read(cx, buf),
            Side::Busy(inflate) => inflate,
            Side::Rest { .. } => {
                // Nothing kept: read straight into the buffer, and set up only if the
                // bytes need it.
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                if buf.filled().len() == before {
                    return Poll::Ready(Ok(()));
                }
                let Side::Rest {
                    max_frame,
                    max_message,
                    takeover,
                } = this.inflate
                else {
                    unreachable!()
                };
                let mut inflate = Box::new(Inflate::new(
                    max_frame as usize,
                    max_message as usize,
                    takeover,
                ));
                let kept = inflate.process(&buf.filled()[before..]);
                buf.set_filled(before + kept);
                this.inflate = Side::Busy(inflate);
                if kept > 0 {
                    this.rest();
                    return Poll::Ready(Ok(()));
                }
                match &mut this.inflate {
                    Side::Busy(inflate) => inflate,
                    _ => unreachable!(),
                }
            }
        };
        loop {
            let pending = inflate.pending();
            if !pending.is_empty() {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                inflate.take(n);
                this.rest();
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = inflate.failed() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            if inflate.holding() {
                // Bytes after a compressed message, read before the socket again.
                inflate.process(&[]);
                continue;
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let read = buf.filled().len() - before;
            if read == 0 {
                return Poll::Ready(Ok(()));
            }
            let kept = inflate.process(&buf.filled()[before..]);
            buf.set_filled(before + kept);
            if kept > 0 {
                this.rest();
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<T> DeflateIo<T> {
    /// Frees the receiving state once it holds nothing.
    fn rest(&mut self) {
        if let Side::Busy(inflate) = &self.inflate
            && inflate.at_rest()
        {
            let (max_frame, max_message, takeover) = inflate.limits();
            self.inflate = Side::Rest {
                max_frame: u32::try_from(max_frame).unwrap_or(u32::MAX),
                max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
                takeover,
            };
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeflateIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's compressed text message, split in two masked frames with a ping between.
    fn client_stream(text: &[u8]) -> Vec<u8> {
        let body = compress(text, 15, 6).expect("it compresses");
        let (a, b) = body.split_at(body.len() / 2);
        let mut out = Vec::new();
        for (b0, piece) in [(0x40 | 1, a), (0x89, &b"ping"[..]), (0x80, b)] {
            out.extend_from_slice(&[b0, 0x80 | piece.len() as u8, 0, 0, 0, 0]);
            out.extend_from_slice(piece);
        }
        out
    }

    #[tokio::test]
    async fn a_connection_between_messages_keeps_no_receiving_state() {
        use tokio::io::AsyncReadExt;
        let whole = client_stream(b"hello hello hello hello hello hello");
        let mut io = DeflateIo::new(
            &whole[..],
            Some(Box::new(Inflate::new(1 << 20, 1 << 20, false))),
        );
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        assert!(!out.is_empty());
        assert!(
            matches!(io.inflate, Side::Rest { .. }),
            "nothing kept after the message"
        );
        // Stopped inside a compressed message, the state stays.
        let half = &whole[..whole.len() - 3];
        let mut io = DeflateIo::new(half, Some(Box::new(Inflate::new(1 << 20, 1 << 20, false))));
        io.read_to_end(&mut Vec::new()).await.unwrap();
        assert!(matches!(io.inflate, Side::Busy(_)));
    }
}
