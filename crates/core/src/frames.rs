//! Reading the gRPC length prefixes of a byte stream as it arrives.
//!
//! A gRPC body is a sequence of frames: 1 flag byte, a 4-byte big-endian
//! length, then that many payload bytes. HTTP/2 cuts it into chunks
//! anywhere, so a header may arrive split over several chunks.
//! [`FrameHeaders`] follows the stream across chunks and reports each
//! frame's declared length as soon as its header is complete, before the
//! payload arrives: enough to count messages, or to refuse one that is too
//! large before it is buffered.

/// Follows the frame boundaries of a gRPC byte stream; see the module docs.
#[derive(Debug, Default)]
pub struct FrameHeaders {
    /// Header bytes of the current frame seen so far (0..5).
    header: [u8; 5],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    remaining: u64,
}

impl FrameHeaders {
    /// Feeds the next chunk, calling `on_header` with the declared payload
    /// length of every frame whose header the chunk completes. Stops at
    /// (and returns) the first error `on_header` returns.
    pub fn feed<E>(
        &mut self,
        mut chunk: &[u8],
        mut on_header: impl FnMut(u32) -> Result<(), E>,
    ) -> Result<(), E> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                self.remaining -= skip as u64;
                chunk = &chunk[skip..];
                continue;
            }
            let take = (5 - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&chunk[..take]);
            self.header_len += take;
            chunk = &chunk[take..];
            if self.header_len == 5 {
                let [_, a, b, c, d] = self.header;
                let len = u32::from_be_bytes([a, b, c, d]);
                self.remaining = u64::from(len);
                self.header_len = 0;
                on_header(len)?;
            }
        }
        Ok(())
    }

    /// Feeds a chunk and returns how many frame headers it completed.
    pub fn count(&mut self, chunk: &[u8]) -> u64 {
        let mut n = 0;
        let _ = self.feed::<()>(chunk, |_| {
            n += 1;
            Ok(())
        });
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len as usize));
        f
    }

    #[test]
    fn lengths_are_read_across_chunk_boundaries() {
        let mut bytes = frame(3);
        bytes.extend(frame(0));
        bytes.extend(frame(300));
        for split in 0..bytes.len() {
            let mut frames = FrameHeaders::default();
            let mut seen = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                frames
                    .feed::<()>(part, |len| {
                        seen.push(len);
                        Ok(())
                    })
                    .unwrap();
            }
            assert_eq!(seen, [3, 0, 300], "split at {split}");
        }
        let mut frames = FrameHeaders::default();
        assert_eq!(bytes.chunks(1).map(|c| frames.count(c)).sum::<u64>(), 3);
    }

    #[test]
    fn a_header_is_reported_before_its_payload_arrives() {
        let mut frames = FrameHeaders::default();
        let header = &frame(1_000_000)[..5];
        let refused = frames.feed(header, |len| if len > 1000 { Err(len) } else { Ok(()) });
        assert_eq!(refused, Err(1_000_000));
    }
}
