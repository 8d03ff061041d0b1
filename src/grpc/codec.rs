//! The contract's codec: prost's, except that a request whose bytes do not
//! decode (invalid UTF-8 in a string, a truncated varint, a wire type the
//! field cannot have) is the client's mistake, `INVALID_ARGUMENT` naming
//! the message and field prost names, rather than tonic's `INTERNAL`,
//! which a caller could otherwise trigger at will.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Encodes `T` and decodes `U` with prost; generated for every service of
/// the contract (see `build.rs`).
#[derive(Debug, Clone)]
pub struct ContractCodec<T, U> {
    types: PhantomData<(T, U)>,
}

impl<T, U> Default for ContractCodec<T, U> {
    fn default() -> Self {
        Self { types: PhantomData }
    }
}

impl<T, U> Codec for ContractCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ContractDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ContractDecoder { types: PhantomData }
    }
}

/// Decodes `U`; bytes that are not a `U` are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ContractDecoder<U> {
    types: PhantomData<U>,
}

impl<U: Message + Default> Decoder for ContractDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|err| {
            let name = std::any::type_name::<U>();
            let name = name.rsplit("::").next().unwrap_or(name);
            Status::invalid_argument(format!("the message is not a valid {name}: {err}"))
        })
    }
}
