//! The model as text, in the two formats scrapers read.
//!
//! - Prometheus text 0.0.4: the only one node_exporter's textfile collector
//!   (1.5) and `promtool check metrics` parse; they refuse OpenMetrics'
//!   `info` type, so an info family is a gauge named `*_info`, and a
//!   counter is named `*_total` in its HELP, TYPE and sample lines.
//! - OpenMetrics 1.0.0, for an HTTP scraper that asks for it: a counter's
//!   family drops `_total` (its samples keep it), an info family drops
//!   `_info` and has type `info`, and the exposition ends in `# EOF`.

use std::fmt::Write;

use super::{Family, Histogram, Kind, Value};

pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

pub fn render(families: &[Family], format: Format) -> String {
    let mut out = String::new();
    for family in families {
        let (name, kind) = match format {
            Format::Text => (family.name, text_type(family.kind)),
            Format::OpenMetrics => (openmetrics_family(family), openmetrics_type(family.kind)),
        };
        let help = escape(family.help, format == Format::OpenMetrics);
        match format {
            Format::Text => write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n"),
            Format::OpenMetrics => write!(out, "# TYPE {name} {kind}\n# HELP {name} {help}\n"),
        }
        .expect("writing to a String");
        for sample in &family.samples {
            let labels = &sample.labels;
            match &sample.value {
                Value::Number(n) => line(&mut out, family.name, labels, None, &n.to_string()),
                Value::Histogram(h) => histogram(&mut out, family.name, labels, h),
            }
        }
    }
    if format == Format::OpenMetrics {
        out += "# EOF\n";
    }
    out
}

fn text_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge | Kind::Info => "gauge",
        Kind::Histogram => "histogram",
    }
}

fn openmetrics_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Info => "info",
        Kind::Histogram => "histogram",
    }
}

fn openmetrics_family(family: &Family) -> &'static str {
    match family.kind {
        Kind::Counter => family.name.strip_suffix("_total").unwrap_or(family.name),
        Kind::Info => family.name.strip_suffix("_info").unwrap_or(family.name),
        Kind::Gauge | Kind::Histogram => family.name,
    }
}

/// `name_bucket{…,le="…"}` for each bound and `+Inf`, then `_sum` and `_count`.
fn histogram(out: &mut String, name: &str, labels: &[(&str, String)], h: &Histogram) {
    let bucket = format!("{name}_bucket");
    for (le, n) in &h.buckets {
        line(out, &bucket, labels, Some(&float(*le)), &n.to_string());
    }
    line(out, &bucket, labels, Some("+Inf"), &h.count.to_string());
    line(out, &format!("{name}_sum"), labels, None, &float(h.sum));
    line(out, &format!("{name}_count"), labels, None, &h.count.to_string());
}

fn line(out: &mut String, name: &str, labels: &[(&str, String)], le: Option<&str>, value: &str) {
    out.push_str(name);
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
    pairs.extend(le.map(|le| format!("le=\"{le}\"")));
    if !pairs.is_empty() {
        write!(out, "{{{}}}", pairs.join(",")).expect("writing to a String");
    }
    writeln!(out, " {value}").expect("writing to a String");
}

/// A float both formats read: decimal, never NaN (the model has none).
fn float(v: f64) -> String {
    if v.is_infinite() { "+Inf".into() } else { format!("{v}") }
}

/// A label value: backslash, double quote and line feed escaped (both formats).
fn escape_label(v: &str) -> String {
    escape(v, true)
}

/// HELP text: backslash and line feed escaped; OpenMetrics escapes `"` too.
fn escape(text: &str, quote: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            '"' if quote => out += "\\\"",
            ch => out.push(ch),
        }
    }
    out
}

/// The format an HTTP client's `Accept` header asks for: OpenMetrics if it
/// lists `application/openmetrics-text` with a quality above zero, else text.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else { return Format::Text };
    let wants = accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f64>().unwrap_or(0.0));
        media.eq_ignore_ascii_case("application/openmetrics-text") && q > 0.0
    });
    if wants { Format::OpenMetrics } else { Format::Text }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Sample;

    fn family(name: &'static str, kind: Kind, samples: Vec<Sample>) -> Family {
        Family { name, help: "Say \"hi\"\\now\nplease.", kind, samples }
    }

    fn number(labels: Vec<(&'static str, String)>, n: u64) -> Sample {
        Sample { labels, value: Value::Number(n) }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let f = family("unrm_x_info", Kind::Info, vec![number(vec![("why", "a \"b\"\\c\nd".into())], 1)]);
        let text = render(std::slice::from_ref(&f), Format::Text);
        assert!(text.contains("# HELP unrm_x_info Say \"hi\"\\\\now\\nplease.\n"), "{text}");
        assert!(text.contains("# TYPE unrm_x_info gauge\n"), "{text}");
        assert!(text.contains("unrm_x_info{why=\"a \\\"b\\\"\\\\c\\nd\"} 1\n"), "{text}");
        let om = render(&[f], Format::OpenMetrics);
        assert!(om.contains("# HELP unrm_x Say \\\"hi\\\"\\\\now\\nplease.\n"), "{om}");
        assert!(om.contains("# TYPE unrm_x info\n"), "{om}");
        assert!(om.contains("unrm_x_info{why=\"a \\\"b\\\"\\\\c\\nd\"} 1\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn counters_are_named_as_each_format_wants() {
        let f = family("unrm_pins_total", Kind::Counter, vec![number(vec![], 3)]);
        let text = render(std::slice::from_ref(&f), Format::Text);
        assert!(text.contains("# TYPE unrm_pins_total counter\nunrm_pins_total 3\n"), "{text}");
        let om = render(&[f], Format::OpenMetrics);
        assert!(om.contains("# TYPE unrm_pins counter\n# HELP unrm_pins "), "{om}");
        assert!(om.contains("\nunrm_pins_total 3\n"), "{om}");
    }

    #[test]
    fn histograms_are_cumulative_and_end_in_inf() {
        let h = Histogram { buckets: vec![(0.00001, 1), (0.5, 3), (10.0, 3)], sum: 0.75, count: 5 };
        let f = family(
            "unrm_lat_seconds",
            Kind::Histogram,
            vec![Sample { labels: vec![], value: Value::Histogram(h) }],
        );
        for format in [Format::Text, Format::OpenMetrics] {
            let text = render(std::slice::from_ref(&f), format);
            let want = "unrm_lat_seconds_bucket{le=\"0.00001\"} 1\n\
                        unrm_lat_seconds_bucket{le=\"0.5\"} 3\n\
                        unrm_lat_seconds_bucket{le=\"10\"} 3\n\
                        unrm_lat_seconds_bucket{le=\"+Inf\"} 5\n\
                        unrm_lat_seconds_sum 0.75\n\
                        unrm_lat_seconds_count 5\n";
            assert!(text.contains(want), "{text}");
            assert!(text.contains("# TYPE unrm_lat_seconds histogram\n"), "{text}");
        }
    }

    #[test]
    fn the_daemon_model_renders_in_both_formats() {
        let status = crate::api::proto::DaemonStatus::default();
        let families = crate::metrics::families(&status);
        let text = render(&families, Format::Text);
        assert!(
            !text.contains("# EOF") && text.contains("unrm_probe_info{tier=\"\",hooks=\"\"} 1\n"),
            "{text}"
        );
        let om = render(&families, Format::OpenMetrics);
        assert_eq!(om.matches("# EOF").count(), 1);
        assert!(om.contains("unrm_records_total{outcome=\"captured\"} 0\n"), "{om}");
    }

    #[test]
    fn accept_headers_choose_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(negotiate(Some("Application/OpenMetrics-Text")), Format::OpenMetrics);
        assert_eq!(negotiate(Some("application/openmetrics-text; q=0")), Format::Text);
        assert_eq!(negotiate(Some("text/plain;version=0.0.4")), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(None), Format::Text);
    }
}
