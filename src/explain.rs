//! `weir validate --explain`: the compiled pipeline in words — what a reviewer needs to approve a
//! change: inputs, where event fields come from, each metric with its labels and buckets,
//! outputs, each alert with what it groups by and where it goes.

use std::fmt::Write as _;

use crate::alert::engine::RuleKind;
use crate::alert::expr::{format_duration, RuleExpr};
use crate::alert::notify::NotifierConfig;
use crate::config::{CompiledPipeline, PipelineConfig};
use crate::redact;
use crate::sink::SinkConfig;
use crate::source::SourceConfig;

fn secs(s: i64) -> String {
    format_duration(std::time::Duration::from_secs(s.max(0) as u64))
}

/// The explanation of `cfg`, compiled as `p`.
pub fn explain(cfg: &PipelineConfig, p: &CompiledPipeline) -> String {
    let mut o = String::new();
    o.push_str("sources\n");
    if p.sources.is_empty() {
        o.push_str("  stdin (none configured: stdin, or the files named on the command line)\n");
    }
    for s in &p.sources {
        let _ = match s {
            SourceConfig::Stdin(c) => writeln!(o, "  stdin, format {:?}", c.format),
            SourceConfig::File(c) => {
                let mut line = format!("  files {}", c.paths.join(" "));
                if !c.exclude.is_empty() {
                    let _ = write!(line, " (excluding {})", c.exclude.join(" "));
                }
                writeln!(o, "{line}, format {:?}", c.format)
            }
            SourceConfig::Tcp(c) => writeln!(o, "  tcp {}, format {:?}", c.address, c.format),
        };
    }
    o.push_str("parser\n");
    let _ = writeln!(o, "  {}", cfg.parser.describe());
    for s in &p.sources {
        let (name, own) = match s {
            SourceConfig::Stdin(c) => ("stdin".to_string(), &c.parser),
            SourceConfig::File(c) => (format!("files {}", c.paths.join(" ")), &c.parser),
            SourceConfig::Tcp(c) => (format!("tcp {}", c.address), &c.parser),
        };
        if let Some(own) = own {
            let _ = writeln!(o, "  {name}: {}", own.placed(0..0).describe());
        }
    }
    let e = &cfg.event;
    o.push_str("event fields (first present path wins)\n");
    for (name, paths) in [
        ("timestamp", &e.timestamp),
        ("level", &e.level),
        ("component", &e.component),
        ("message", &e.message),
        ("trace_id", &e.trace_id),
    ] {
        let _ = writeln!(o, "  {name:<10} {}", paths.join(", "));
    }
    let _ = writeln!(
        o,
        "  trace_id missing: {}; lines longer than {} bytes are cut (counted)",
        if e.generate_trace_id {
            "a new UUID v4"
        } else {
            "left empty"
        },
        e.max_line_bytes
    );
    o.push_str("metrics\n");
    if cfg.metrics.is_empty() {
        o.push_str("  (none)\n");
    }
    for (mc, m) in cfg.metrics.iter().zip(p.deriver.metrics()) {
        let kind = format!("{:?}", m.kind).to_lowercase();
        let labels = if m.label_names.is_empty() {
            "no labels".to_string()
        } else {
            format!("labels {}", m.label_names.join(", "))
        };
        let _ = writeln!(o, "  {} ({kind}, {labels})", m.name);
        if let Some(w) = &mc.when {
            let _ = writeln!(o, "      when    {}", w.get_ref());
        }
        match (&mc.value, &mc.pair) {
            (Some(v), _) => {
                let _ = writeln!(o, "      value   {}", v.get_ref());
            }
            (None, Some(pair)) => {
                let _ = writeln!(
                    o,
                    "      value   seconds from a start matching `{}` to this event, paired on {} (open starts: at most {}, for {} s)",
                    pair.start.get_ref(),
                    pair.key,
                    pair.max_open,
                    pair.timeout_secs
                );
            }
            (None, None) => {
                let _ = writeln!(o, "      value   1 per matching event");
            }
        }
        if !m.buckets.is_empty() {
            let b: Vec<String> = m.buckets.iter().map(|b| format!("{b}")).collect();
            let _ = writeln!(o, "      buckets {}", b.join(" "));
        }
        let expire = match m.expire_after_secs {
            0 => "kept forever".to_string(),
            s => format!("removed after {s} s idle"),
        };
        let _ = writeln!(
            o,
            "      series  at most {} (more go to one overflow series), {expire}",
            mc.max_series
        );
    }
    o.push_str("sinks\n");
    if p.sinks.is_empty() {
        o.push_str("  (none: metrics only; --loki, --elasticsearch, --stdout add some)\n");
    }
    let named = crate::additions::CliAdditions::default().sinks(p.sinks.clone());
    for (name, s) in &named {
        let what = match s {
            SinkConfig::Loki(c) => format!("loki {}", redact::urls(&c.endpoint)),
            SinkConfig::Elasticsearch(c) => {
                format!("elasticsearch {}", redact::urls(&c.endpoint))
            }
            SinkConfig::Otlp(c) => format!("otlp {}", c.describe()),
            SinkConfig::Stdout(_) => "stdout".to_string(),
            SinkConfig::File(c) => format!("file {}", c.path.display()),
        };
        let buffer = match s.buffer().kind {
            crate::sink::BufferKind::Disk => ", disk buffer",
            crate::sink::BufferKind::Memory => "",
        };
        let _ = if name == s.kind() {
            writeln!(o, "  {what}{buffer}")
        } else {
            writeln!(o, "  {what} (sink {name}{buffer})")
        };
    }
    o.push_str("alerts\n");
    if p.rules.is_empty() {
        o.push_str("  (none)\n");
    }
    for r in &p.rules {
        let _ = writeln!(o, "  {} ({}): {}", r.name, r.severity, r.expr_text);
        let groups = if r.group_labels.is_empty() {
            "one alert".to_string()
        } else {
            format!("one alert per {}", r.group_labels.join(", "))
        };
        let when = match (&r.kind, &r.expr) {
            (RuleKind::Absent { for_secs, .. }, _) => {
                format!("fires after {} without a matching event", secs(*for_secs))
            }
            (RuleKind::Value { for_secs: 0, .. }, _) => "fires as soon as it holds".to_string(),
            (RuleKind::Value { for_secs, .. }, RuleExpr::Value { .. }) => {
                format!("fires once it has held for {}", secs(*for_secs))
            }
            _ => String::new(),
        };
        let notify = if r.notify.is_empty() {
            "notifies nobody (no notifier declared)".to_string()
        } else {
            format!("notifies {}", r.notify.join(", "))
        };
        let _ = writeln!(
            o,
            "      {groups}; {when}; {notify}; repeats every {}",
            secs(r.repeat)
        );
    }
    o.push_str("notifiers\n");
    if cfg.notifiers.is_empty() {
        o.push_str("  (none)\n");
    }
    for (name, n) in &cfg.notifiers {
        let target = match n {
            NotifierConfig::Alertmanager(c) => format!(" {}", redact::urls(&c.url)),
            _ => String::new(),
        };
        let _ = writeln!(o, "  {name}: {}{target}", n.kind());
    }
    let _ = writeln!(
        o,
        "state (checkpoints, disk buffers, alert state): {}",
        p.data_dir
            .as_ref()
            .map_or("none (--data-dir sets it)".to_string(), |d| d
                .display()
                .to_string())
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pipeline_explained() {
        let selfm = crate::telemetry::SelfMetrics::new();
        let text = crate::config::DEFAULT_PIPELINE;
        let cfg = PipelineConfig::parse("agents.toml", text).unwrap();
        let p = cfg.compile("agents.toml", text, &selfm).unwrap();
        let e = explain(&cfg, &p);
        for want in [
            "  agent_task_duration_seconds (histogram, labels agent_id, status)\n",
            "      buckets 0.1 0.5 1 2.5 5 10 30 60\n",
            "  agent_queue_depth (gauge, labels queue_name)\n",
            "  AgentTaskFailures (critical): count(agent_task_failure_total) by (agent_id) over 5m > 5\n",
            "      one alert per agent_id; fires as soon as it holds; notifies nobody (no notifier declared); repeats every 4h\n",
            "      one alert; fires once it has held for 10m;",
            "      one alert per component; fires after 5m without a matching event;",
            "  (none: metrics only;",
        ] {
            assert!(e.contains(want), "{want:?} not in\n{e}");
        }
    }
}
