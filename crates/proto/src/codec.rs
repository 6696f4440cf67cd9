//! The codec of every shop service and client: prost, with a smaller
//! initial buffer than tonic's default.
//!
//! tonic allocates each call's encode buffer up front (8 KiB by default)
//! and keeps it for the life of the call. Shop messages are a few hundred
//! bytes, and a server holding ten thousand idle WatchOrder streams would
//! keep ~80 MiB of empty buffers. The buffer still grows on demand, so
//! large messages (up to MAX_MESSAGE_BYTES) are unaffected.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a call's encode and decode buffers.
pub const INITIAL_BUFFER_BYTES: usize = 1024;
/// Bytes encoded before a stream yields to the runtime (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `ProstCodec` with [`INITIAL_BUFFER_BYTES`] buffers (the generated code
/// uses it through `codec_path`).
#[derive(Debug, Clone, Copy)]
pub struct ShopCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for ShopCodec<T, U> {
    fn default() -> Self {
        ShopCodec(std::marker::PhantomData)
    }
}

fn buffers() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for ShopCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffers())
    }
}
