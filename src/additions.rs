//! What the command line adds to a pipeline (`weir run FILE`, `--tcp`, `--loki`, `--stdout`,
//! `--buffer`): applied to the pipeline's sources and sinks at start and again on every
//! reload. Its own module so that `reload` and `topology` both use it without importing each
//! other.

use std::path::PathBuf;

use crate::sink::{self, SinkConfig as SinkCfg};
use crate::source::{self, SourceConfig};

/// What the command line adds to a pipeline's sources and sinks (`weir run FILE`, `--tcp`,
/// `--loki`, `--stdout`, `--buffer`); a reload adds it again to the new pipeline's.
#[derive(Debug, Clone, Default)]
pub struct CliAdditions {
    pub files: Vec<PathBuf>,
    pub tcp: Vec<String>,
    pub format: Option<source::Format>,
    /// `--multiline`, else the pipeline's top-level `multiline`: for the sources made here.
    pub multiline: Option<source::multiline::MultilineConfig>,
    pub stdout: bool,
    pub sinks: Vec<SinkCfg>,
    pub buffer: Option<sink::BufferKind>,
}

impl CliAdditions {
    /// The sinks to run, named: the pipeline's, then the command line's; by their `name`,
    /// else `loki`, or `loki_2` when there are several of a kind.
    pub fn sinks(&self, pipeline: Vec<SinkCfg>) -> Vec<(String, SinkCfg)> {
        let mut cfgs = pipeline;
        cfgs.extend(self.sinks.iter().cloned());
        if self.stdout {
            cfgs.push(SinkCfg::Stdout(sink::StdoutConfig::default()));
        }
        if let Some(kind) = self.buffer {
            for c in &mut cfgs {
                c.buffer_mut().kind = kind;
            }
        }
        let kinds: Vec<&'static str> = cfgs.iter().map(SinkCfg::kind).collect();
        cfgs.into_iter()
            .enumerate()
            .map(|(i, c)| {
                let same = kinds.iter().filter(|k| **k == c.kind()).count();
                let name = match c.name() {
                    Some(n) => n.to_string(),
                    None if same > 1 => format!("{}_{}", c.kind(), i),
                    None => c.kind().to_string(),
                };
                (name, c)
            })
            .collect()
    }

    /// The sources to run: the pipeline's, the command line's files and TCP addresses; stdin
    /// when there is nothing else.
    pub fn sources(&self, pipeline: Vec<SourceConfig>) -> Vec<SourceConfig> {
        let format = self.format.unwrap_or_default();
        let mut sources = pipeline;
        if !self.files.is_empty() {
            let mut f = source::FileConfig::for_paths(
                self.files.iter().map(|p| p.display().to_string()).collect(),
                format,
            );
            f.multiline = self.multiline.clone();
            sources.push(SourceConfig::File(f));
        }
        for address in &self.tcp {
            sources.push(SourceConfig::Tcp(source::TcpConfig {
                address: address.clone(),
                format,
                multiline: self.multiline.clone(),
                ..source::TcpConfig::default()
            }));
        }
        if sources.is_empty() {
            sources.push(SourceConfig::Stdin(source::StdinConfig {
                format,
                multiline: self.multiline.clone(),
                parser: None,
            }));
        }
        sources
    }
}
