//! The shim on real sockets: what the server side reads, and what h2 (in
//! tonic's server) makes of it.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::service::Routes;
use tonic::transport::server::Connected;

use super::block::{self, Field};
use super::frame::{FrameHeader, END_HEADERS, END_STREAM, HEADERS, HEADER_LEN};
use super::testing::*;
use super::AuthorityShim;

/// Writes `client_bytes` into a socket pair and reads everything the
/// shim passes on to the server side.
async fn through_shim(client_bytes: Vec<u8>) -> (Vec<u8>, bool) {
    let (mut client, server) = UnixStream::pair().unwrap();
    let mut shim = AuthorityShim::new(server);
    let writer = tokio::spawn(async move {
        client.write_all(&client_bytes).await.unwrap();
        client.shutdown().await.unwrap();
        client
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 777];
    let mut rewriting = false;
    loop {
        let n = shim.read(&mut buf).await.unwrap();
        rewriting |= shim.rewriting();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    // The other direction is untouched.
    shim.write_all(b"server bytes").await.unwrap();
    let mut client = writer.await.unwrap();
    let mut back = [0u8; 12];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"server bytes");
    (seen, rewriting)
}

#[tokio::test]
async fn ccore_authority_reaches_the_server_as_localhost_on_both_requests() {
    let input = ccore_connection("%2Ftmp%2Fx.sock");
    // The client's own stream: the second request names :authority by
    // its dynamic table index.
    let original = read_client_stream(&input);
    assert_eq!(original.requests[1].1, ccore_fields("%2Ftmp%2Fx.sock"));
    let (seen, rewriting) = through_shim(input).await;
    assert!(rewriting);
    let seen = read_client_stream(&seen);
    assert_eq!(
        seen.requests,
        vec![(1, ccore_fields("localhost")), (3, ccore_fields("localhost"))]
    );
}

#[tokio::test]
async fn a_go_style_connection_passes_unchanged() {
    let input = ccore_connection("localhost");
    let (seen, rewriting) = through_shim(input.clone()).await;
    assert!(!rewriting);
    assert_eq!(seen, input);
}

#[tokio::test]
async fn connect_info_is_the_sockets() {
    let (_client, server) = UnixStream::pair().unwrap();
    let info = AuthorityShim::new(server).connect_info();
    assert_eq!(
        info.peer_cred.map(|c| c.uid()),
        Some(rustix::process::getuid().as_raw())
    );
}

/// How the server ended one stream.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A gRPC answer: its grpc-status.
    Status(String),
    /// RST_STREAM with this error code.
    Reset(u32),
}

/// Serves tonic with no services (so every call is UNIMPLEMENTED) on one
/// connection, sends `client_bytes` and collects how streams 1 and 3 end.
async fn serve_one<IO>(server_io: IO, mut client: UnixStream, client_bytes: &[u8]) -> Vec<(u32, Answer)>
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let incoming = tokio_stream::StreamExt::chain(
        tokio_stream::iter([Ok::<_, std::io::Error>(server_io)]),
        tokio_stream::pending(),
    );
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .max_frame_size(super::MAX_FRAME_SIZE)
            .add_routes(Routes::default())
            .serve_with_incoming(incoming),
    );
    client.write_all(client_bytes).await.unwrap();
    let answers = tokio::time::timeout(Duration::from_secs(10), read_answers(&mut client, 2))
        .await
        .expect("the server answered both streams");
    server.abort();
    answers
}

async fn read_answers(client: &mut UnixStream, want: usize) -> Vec<(u32, Answer)> {
    let mut decoder = block::new_decoder();
    let mut answers = Vec::new();
    while answers.len() < want {
        let mut head = [0u8; HEADER_LEN];
        client.read_exact(&mut head).await.unwrap();
        let head = FrameHeader::parse(&head);
        let mut payload = vec![0; head.len as usize];
        client.read_exact(&mut payload).await.unwrap();
        match head.kind {
            HEADERS => {
                // h2 sends small, unpadded header blocks in one frame.
                assert_ne!(head.flags & END_HEADERS, 0);
                let fields: Vec<Field> = block::decode(&mut decoder, &payload, 1 << 20).unwrap();
                if head.flags & END_STREAM != 0 {
                    let status = fields.iter().find(|(n, _)| n == b"grpc-status").expect("grpc-status");
                    let status = String::from_utf8(status.1.clone()).unwrap();
                    answers.push((head.stream, Answer::Status(status)));
                }
            }
            0x3 => {
                let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                answers.push((head.stream, Answer::Reset(code)));
            }
            0x7 => panic!("GOAWAY: {payload:?}"),
            _ => {}
        }
    }
    answers.sort_by_key(|(s, _)| *s);
    answers
}

const UNIMPLEMENTED: &str = "12";
const PROTOCOL_ERROR: u32 = 1;

#[tokio::test]
async fn h2_answers_ccore_requests_through_the_shim() {
    let (client, server) = UnixStream::pair().unwrap();
    let answers = serve_one(AuthorityShim::new(server), client, &ccore_connection("%2Ftmp%2Fx.sock")).await;
    assert_eq!(
        answers,
        [
            (1, Answer::Status(UNIMPLEMENTED.into())),
            (3, Answer::Status(UNIMPLEMENTED.into()))
        ]
    );
}

#[tokio::test]
async fn h2_answers_go_style_requests_through_the_shim() {
    let (client, server) = UnixStream::pair().unwrap();
    let answers = serve_one(AuthorityShim::new(server), client, &ccore_connection("localhost")).await;
    assert_eq!(
        answers,
        [
            (1, Answer::Status(UNIMPLEMENTED.into())),
            (3, Answer::Status(UNIMPLEMENTED.into()))
        ]
    );
}

/// Why the shim exists. If this fails, h2 has learned to take such an
/// authority and the shim can go.
#[tokio::test]
async fn without_the_shim_h2_resets_ccore_requests() {
    let (client, server) = UnixStream::pair().unwrap();
    let answers = serve_one(server, client, &ccore_connection("%2Ftmp%2Fx.sock")).await;
    assert_eq!(
        answers,
        [(1, Answer::Reset(PROTOCOL_ERROR)), (3, Answer::Reset(PROTOCOL_ERROR))]
    );
}

#[tokio::test]
async fn a_garbage_connection_ends_with_an_error_once_rewriting() {
    let mut input = ccore_connection("%2Fx");
    input.extend(frame(0x9, END_HEADERS, 9, &[0x82]));
    let (mut client, server) = UnixStream::pair().unwrap();
    let mut shim = AuthorityShim::new(server);
    client.write_all(&input).await.unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let err = loop {
        match shim.read(&mut buf).await {
            Ok(0) => panic!("EOF before the error"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("CONTINUATION"), "{err}");
    // Then the stream reads as ended.
    assert_eq!(shim.read(&mut buf).await.unwrap(), 0);
}
