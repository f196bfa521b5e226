//! The server survives running out of file descriptors: `accept` fails
//! with EMFILE, the accept loop logs, pauses and goes on, and once
//! descriptors are free again new connections are served. Its own test
//! binary: it lowers the process's descriptor limit, which every test in a
//! binary shares.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use rlimit::Resource;
use tokio::net::TcpStream;
use trustplane::proto;
use trustplane::proto::trust_bundle_service_client::TrustBundleServiceClient;

const MARGIN: Duration = Duration::from_secs(10);

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

async fn served(channel: tonic::transport::Channel) {
    let bundle = tokio::time::timeout(
        MARGIN,
        TrustBundleServiceClient::new(channel).get_bundle(proto::GetBundleRequest::default()),
    )
    .await
    .expect("no answer")
    .unwrap();
    assert!(bundle.into_inner().version >= 1);
}

#[tokio::test]
async fn running_out_of_file_descriptors_does_not_stop_the_server() {
    let server = common::start_server().await;
    let agent = server.enroll("east").await;
    served(agent.clone()).await;

    let (soft, hard) = Resource::NOFILE.get().unwrap();
    Resource::NOFILE.set(open_descriptors() + 40, hard).unwrap();
    // Client sockets take the last descriptors; the server's accept of
    // the connections behind them then fails with EMFILE.
    let mut clients = Vec::new();
    let exhausted = loop {
        match TcpStream::connect(server.running.address).await {
            Ok(stream) => clients.push(stream),
            Err(error) => break error,
        }
        assert!(
            clients.len() < 1_000,
            "the descriptor limit was not reached"
        );
    };
    assert_eq!(exhausted.raw_os_error(), Some(24), "{exhausted}"); // EMFILE
    // Let the accept loop hit the limit a few times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(clients);
    Resource::NOFILE.set(soft, hard).unwrap();

    // The agent's connection was served throughout, and new connections
    // are accepted again.
    served(agent).await;
    let deadline = Instant::now() + MARGIN;
    let west = loop {
        match server
            .enroll_with("west", &server.add_cluster("west").await)
            .await
        {
            Ok(channel) => break channel,
            Err(status) if Instant::now() < deadline => {
                eprintln!("not yet: {status}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("the server accepts no new connection: {status}"),
        }
    };
    served(west).await;
}
