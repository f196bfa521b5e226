//! Agent (stub until the agent branch merges).
#![allow(missing_docs, dead_code)]
use std::path::PathBuf;
use std::sync::Arc;
pub struct CacertsMaterial { pub ca_cert_pem: String, pub ca_key_pem: zeroize::Zeroizing<String>, pub cert_chain_pem: String, pub root_cert_pem: String }
#[derive(Debug, thiserror::Error)] pub enum SinkError { #[error("x")] X }
#[async_trait::async_trait]
pub trait ClusterSink: Send + Sync {
    fn describe(&self) -> String;
    async fn read(&self) -> Result<Option<crate::ca::CacertsFiles>, SinkError>;
    async fn write(&self, material: &CacertsMaterial) -> Result<(), SinkError>;
}
pub struct DirectorySink;
impl DirectorySink { pub fn new(_dir: PathBuf) -> Self { DirectorySink } }
#[async_trait::async_trait]
impl ClusterSink for DirectorySink {
    fn describe(&self) -> String { todo!() }
    async fn read(&self) -> Result<Option<crate::ca::CacertsFiles>, SinkError> { todo!() }
    async fn write(&self, _material: &CacertsMaterial) -> Result<(), SinkError> { todo!() }
}
pub struct AgentConfig {
    pub server: String,
    pub server_ca_pem: Option<String>,
    pub join_token: Option<zeroize::Zeroizing<String>>,
    pub identity_dir: PathBuf,
    pub key_algorithm: crate::ca::KeyAlgorithm,
    pub renew_fraction: f64,
    pub max_backoff: std::time::Duration,
}
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentStatus { pub cluster: String, pub applied_bundle_version: u64, pub intermediate_serial: String, pub intermediate_not_after_unix: i64, pub last_error: Option<String> }
#[derive(Debug, thiserror::Error)] pub enum AgentError { #[error("x")] X }
pub struct AgentHandle { pub status: tokio::sync::watch::Receiver<AgentStatus>, pub task: tokio::task::JoinHandle<Result<(), AgentError>> }
impl AgentHandle { pub fn stop(&self) {} }
pub fn spawn(_config: AgentConfig, _sink: Arc<dyn ClusterSink>) -> AgentHandle { todo!() }
