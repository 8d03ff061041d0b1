//! Hostile input: every RPC of the contract, found through its descriptors
//! (so a new RPC is covered without a change here), is fed random bytes and
//! random well-formed messages through a raw gRPC client. The server must
//! not panic, must keep serving, and must answer every request with a
//! status other than `INTERNAL`: bytes that do not decode are the client's
//! mistake, `INVALID_ARGUMENT`.
//!
//! The messages are generated from the descriptors by a seeded generator
//! (set `FUZZ_SEED` to replay a failure; the seed is printed when it fails;
//! `FUZZ_DEBUG=1` prints each case's status, to see what the run reached).

use std::collections::HashMap;
use std::time::Duration;

use billing::grpc::pb;
use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{AppOptions, Rng, TestApp, call, spawn_app, spawn_app_with};

/// Random messages per RPC, and random byte strings per RPC.
const MESSAGES_PER_RPC: usize = 60;
const BYTE_STRINGS_PER_RPC: usize = 15;

/// A codec that sends and receives message bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One RPC of the contract.
struct Rpc {
    path: String,
    input: String,
    client_streaming: bool,
    server_streaming: bool,
}

/// The contract's message types by full name, and its RPCs.
struct Contract {
    messages: HashMap<String, DescriptorProto>,
    rpcs: Vec<Rpc>,
}

impl Contract {
    fn load() -> Self {
        let set = FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut messages = HashMap::new();
        let mut rpcs = Vec::new();
        for file in &set.file {
            let package = file.package();
            for message in &file.message_type {
                collect_messages(&format!(".{package}"), message, &mut messages);
            }
            for service in &file.service {
                for method in &service.method {
                    rpcs.push(Rpc {
                        path: format!("/{package}.{}/{}", service.name(), method.name()),
                        input: method.input_type().to_owned(),
                        client_streaming: method.client_streaming(),
                        server_streaming: method.server_streaming(),
                    });
                }
            }
        }
        Contract { messages, rpcs }
    }

    /// A random, well-formed encoding of the message `type_name`.
    fn random_message(&self, type_name: &str, rng: &mut Rng, depth: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(message) = self.messages.get(type_name) else {
            return out;
        };
        for field in &message.field {
            if !rng.chance(70) {
                continue;
            }
            let repeats = if field.label() == Label::Repeated {
                rng.below_u64(4) + usize::from(rng.chance(5)) as u64 * 150
            } else {
                1
            };
            for _ in 0..repeats {
                self.random_field(field, rng, depth, &mut out);
            }
        }
        out
    }

    fn random_field(
        &self,
        field: &FieldDescriptorProto,
        rng: &mut Rng,
        depth: u32,
        out: &mut Vec<u8>,
    ) {
        let number = u64::try_from(field.number()).expect("field number");
        match field.r#type() {
            Type::Int32 | Type::Int64 | Type::Uint32 | Type::Uint64 | Type::Enum | Type::Bool => {
                put_varint(out, number << 3);
                put_varint(out, random_integer(rng) as u64);
            }
            Type::Sint32 | Type::Sint64 => {
                put_varint(out, number << 3);
                let value = random_integer(rng);
                put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
            }
            Type::Fixed64 | Type::Sfixed64 | Type::Double => {
                put_varint(out, (number << 3) | 1);
                out.extend_from_slice(&rng.next().to_le_bytes());
            }
            Type::Fixed32 | Type::Sfixed32 | Type::Float => {
                put_varint(out, (number << 3) | 5);
                out.extend_from_slice(&(rng.next() as u32).to_le_bytes());
            }
            Type::String => put_bytes(out, number, random_text(rng).as_bytes()),
            Type::Bytes => {
                let bytes: Vec<u8> = (0..rng.below_u64(64)).map(|_| rng.next() as u8).collect();
                put_bytes(out, number, &bytes);
            }
            Type::Message if depth < 4 => {
                let nested = self.random_message(field.type_name(), rng, depth + 1);
                put_bytes(out, number, &nested);
            }
            Type::Message | Type::Group => {}
        }
    }
}

fn collect_messages(
    scope: &str,
    message: &DescriptorProto,
    into: &mut HashMap<String, DescriptorProto>,
) {
    let name = format!("{scope}.{}", message.name());
    for nested in &message.nested_type {
        collect_messages(&name, nested, into);
    }
    into.insert(name, message.clone());
}

/// Integers that tend to find edges: ids that exist, zero, negatives,
/// extremes, and anything at all.
fn random_integer(rng: &mut Rng) -> i64 {
    match rng.below_u64(10) {
        0 => 0,
        1..=3 => i64::try_from(rng.below_u64(4)).expect("small"),
        4 => -1 - i64::try_from(rng.below_u64(1000)).expect("small"),
        5 => [
            i64::MAX,
            i64::MIN,
            i64::from(i32::MAX),
            i64::from(i32::MIN),
            86_400,
            86_401,
        ][usize::try_from(rng.below_u64(6)).expect("index")],
        6 => 2026 + i64::try_from(rng.below_u64(3)).expect("small") - 1,
        7 => 1_700_000_000 + i64::try_from(rng.below_u64(100_000_000)).expect("small"),
        _ => rng.next() as i64,
    }
}

/// Text that tends to find edges: empty, numbers, keys, long, control
/// characters and other scripts.
fn random_text(rng: &mut Rng) -> String {
    match rng.below_u64(8) {
        0 => String::new(),
        1 => format!("+1415555{:04}", rng.below_u64(10_000)),
        2 => format!("key-{}", rng.below_u64(20)),
        3 => "x".repeat(usize::try_from(rng.below_u64(3000)).expect("small")),
        4 => "\u{0}\u{1b}[31m\n\r\t".repeat(usize::try_from(1 + rng.below_u64(20)).expect("small")),
        5 => "é漢字🙂".repeat(usize::try_from(1 + rng.below_u64(100)).expect("small")),
        6 => ["USD", "eur", "", "12", "+", "+0", "%", "%00"]
            [usize::try_from(rng.below_u64(8)).expect("index")]
        .to_owned(),
        _ => (0..rng.below_u64(40))
            .map(|_| char::from(u8::try_from(32 + rng.below_u64(95)).expect("ascii")))
            .collect(),
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A request of `message`, carrying `authorization` if given.
fn authorized<T>(message: T, authorization: Option<&Authorization>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(authorization) = authorization {
        request
            .metadata_mut()
            .insert("authorization", authorization.clone());
    }
    request
}

/// Sends one request (one message, or a stream of them) and returns the
/// status it ended with, reading a few messages of a server stream.
async fn send(
    channel: &Channel,
    authorization: Option<&Authorization>,
    rpc: &Rpc,
    messages: Vec<Bytes>,
) -> Result<(), Status> {
    let request = |message| authorized(message, authorization);
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|err| Status::unavailable(err.to_string()))?;
    let path: http::uri::PathAndQuery = rpc.path.parse().expect("path");
    if rpc.client_streaming {
        let request = authorized(tokio_stream::iter(messages), authorization);
        if rpc.server_streaming {
            let mut stream = grpc.streaming(request, path, RawCodec).await?.into_inner();
            return drain(&mut stream).await;
        }
        return grpc
            .client_streaming(request, path, RawCodec)
            .await
            .map(|_| ());
    }
    let message = messages.into_iter().next().unwrap_or_default();
    if rpc.server_streaming {
        let mut stream = grpc
            .server_streaming(request(message), path, RawCodec)
            .await?
            .into_inner();
        return drain(&mut stream).await;
    }
    grpc.unary(request(message), path, RawCodec)
        .await
        .map(|_| ())
}

/// Reads a server stream until it ends or has nothing more for a moment
/// (a live feed never ends), returning the status it ended with.
async fn drain(stream: &mut tonic::Streaming<Bytes>) -> Result<(), Status> {
    for _ in 0..200 {
        match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(status))) => return Err(status),
            Ok(None) | Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// A few rows for random ids to find: plans, operators, customers, calls.
async fn seed(app: &TestApp) {
    let postpaid = app.plan(pb::PlanKind::Postpaid, 60_000, 1).await;
    let prepaid = app.plan(pb::PlanKind::Prepaid, 90_000, 60).await;
    let operator = app.operator("Fuzz Telecom").await;
    for (n, plan) in [(1, &postpaid), (2, &prepaid), (3, &postpaid)] {
        let customer = app
            .long_standing_customer(plan.id, n, vec![operator.id])
            .await;
        app.calls
            .clone()
            .add_call(call(customer.id, 95))
            .await
            .expect("seed call");
    }
}

/// The `authorization` metadata value of a caller.
type Authorization = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

fn fuzz_seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0x0062_696c_6c69_6e67_u64)
}

#[tokio::test]
async fn every_rpc_survives_random_bytes_and_random_messages_without_internal() {
    let app = spawn_app().await;
    seed(&app).await;
    fuzz(&app, None, fuzz_seed()).await;
}

/// The same with authentication on, as an admin (through an API key, so
/// that a random `Logout` does not end the session): what the policy lets
/// through is validated and answered like any other request.
#[tokio::test]
async fn every_rpc_survives_random_messages_from_an_authenticated_admin_without_internal() {
    let open = spawn_app().await;
    seed(&open).await;
    let app = spawn_app_with(AppOptions {
        clock: open.clock.clone(),
        database: Some(open.database.clone()),
        auth: true,
        ..AppOptions::default()
    })
    .await;
    crate::access::bootstrap_admin(&app).await;
    let session = pb::account_service_client::AccountServiceClient::new(app.channel.clone())
        .login(pb::LoginRequest {
            username: "root".into(),
            password: crate::access::PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Random ids are often small: the first keys are decoys for a random
    // RevokeApiKey, so the fuzzing key (the fifth) stays valid.
    let mut key = pb::CreateApiKeyResponse::default();
    for n in 0..5 {
        let mut request = tonic::Request::new(pb::CreateApiKeyRequest {
            name: format!("fuzz {n}"),
            account_id: 0,
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", session.access_token).parse().unwrap(),
        );
        key = pb::account_service_client::AccountServiceClient::new(app.channel.clone())
            .create_api_key(request)
            .await
            .unwrap()
            .into_inner();
    }
    let authorization: Authorization = format!("Bearer {}", key.secret).parse().unwrap();
    fuzz(&app, Some(authorization), fuzz_seed() ^ 0x5eed).await;
}

/// Feeds every RPC of the contract random messages and random bytes as
/// `authorization` (none: an unauthenticated caller) and fails on any
/// `INTERNAL` or `UNKNOWN`, an answer that never comes, or a server that
/// stops serving.
async fn fuzz(app: &TestApp, authorization: Option<Authorization>, seed_value: u64) {
    let contract = Contract::load();
    assert!(
        contract.rpcs.len() >= 19,
        "every billing.v1 RPC is found: {}",
        contract.rpcs.len()
    );
    let mut rng = Rng(seed_value);
    let mut failures = Vec::new();
    for rpc in &contract.rpcs {
        for case in 0..MESSAGES_PER_RPC + BYTE_STRINGS_PER_RPC {
            let well_formed = case < MESSAGES_PER_RPC;
            let count = if rpc.client_streaming {
                1 + rng.below_u64(5)
            } else {
                1
            };
            let messages: Vec<Bytes> = (0..count)
                .map(|_| {
                    if well_formed {
                        Bytes::from(contract.random_message(&rpc.input, &mut rng, 0))
                    } else {
                        let length = rng.below_u64(80);
                        Bytes::from((0..length).map(|_| rng.next() as u8).collect::<Vec<u8>>())
                    }
                })
                .collect();
            let description = format!("{} case {case} ({messages:02x?})", rpc.path);
            let result = tokio::time::timeout(
                Duration::from_secs(30),
                send(&app.channel, authorization.as_ref(), rpc, messages),
            )
            .await;
            if std::env::var_os("FUZZ_DEBUG").is_some() {
                let code = match &result {
                    Ok(Ok(())) => Code::Ok,
                    Ok(Err(s)) => s.code(),
                    Err(_) => Code::DeadlineExceeded,
                };
                eprintln!("FUZZ {} {:?}", rpc.path, code);
            }
            let status = match result {
                Err(_) => {
                    failures.push(format!("{description}: no answer within 30 s"));
                    continue;
                }
                Ok(Ok(())) => continue,
                Ok(Err(status)) => status,
            };
            if matches!(status.code(), Code::Internal | Code::Unknown) {
                failures.push(format!("{description}: {status:?}"));
            }
        }
    }
    let mut health = HealthClient::new(app.channel.clone());
    let serving = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("the server still serves")
        .into_inner();
    assert_eq!(serving.status, 1, "SERVING");
    assert!(
        failures.is_empty(),
        "seed {seed_value}: {} failures, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// Bytes that are no message of the contract: invalid UTF-8 in a string, a
/// truncated varint, a group wire type. Each is the caller's mistake,
/// `INVALID_ARGUMENT` naming the message, for an unauthenticated `Login` as
/// for a switch's `AddCall`.
#[tokio::test]
async fn bytes_that_do_not_decode_are_invalid_argument_naming_the_message() {
    let app = spawn_app().await;
    let rpc = |path: &str| Rpc {
        path: path.into(),
        input: String::new(),
        client_streaming: false,
        server_streaming: false,
    };
    let login = rpc("/billing.v1.AccountService/Login");
    let add_call = rpc("/billing.v1.CallService/AddCall");
    let mut invalid_utf8 = Vec::new();
    put_bytes(&mut invalid_utf8, 1, &[0x66, 0xff, 0xfe]);
    let mut call_id_utf8 = Vec::new();
    put_bytes(&mut call_id_utf8, 5, &[0xc3, 0x28]);
    // Field 1 as a varint whose last byte never comes.
    let truncated = vec![0x08, 0xff, 0xff];
    // Field 1 as a start-group (wire type 3).
    let group = vec![0x0b, 0x0c];
    for (rpc, bytes, message) in [
        (&login, invalid_utf8, "LoginRequest"),
        (&login, truncated.clone(), "LoginRequest"),
        (&login, group.clone(), "LoginRequest"),
        (&add_call, call_id_utf8, "AddCallRequest"),
        (&add_call, truncated, "AddCallRequest"),
        (&add_call, group, "AddCallRequest"),
    ] {
        let status = send(&app.channel, None, rpc, vec![Bytes::from(bytes.clone())])
            .await
            .expect_err("not a message");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{bytes:x?}: {status:?}"
        );
        assert!(status.message().contains(message), "{status:?}");
    }
}
