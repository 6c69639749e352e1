//! The inspector's metrics document: named gauges, counters and latency histograms, as JSON.
//!
//! Why it exists: an actor reports its startup timings, its KV round trips and its query
//! latency to the inspector (`GET /actors/{id}/inspector/metrics`), to `kvsqlite run
//! --metrics-json` and to tests, all in one format, the seed's:
//! `{name: {"type": "gauge"|"counter"|"histogram", "help": "…", "value": …}}`. [`MetricsDoc`]
//! builds that document; [`LatencyHistogram`] is the HDR histogram of query latency whose
//! [`HistogramSummary`] a histogram metric shows.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// What a metric measures over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A value at one moment (a duration, a size); JSON `"gauge"`.
    Gauge,
    /// A count that only grows; JSON `"counter"`.
    Counter,
    /// A distribution, shown as its summary; JSON `"histogram"`.
    Histogram,
}

impl MetricKind {
    /// The name the JSON document uses: `gauge`, `counter` or `histogram`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// A histogram's summary: how many values, three quantiles and the largest. The quantiles and
/// the maximum are HDR-histogram values: exact up to 2,047 and within 0.1% above that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistogramSummary {
    /// How many values were recorded.
    pub count: u64,
    /// The median.
    pub p50: u64,
    /// The 90th percentile.
    pub p90: u64,
    /// The 99th percentile.
    pub p99: u64,
    /// The largest value.
    pub max: u64,
}

/// A metric's value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// An integer: a JSON integer.
    Int(i64),
    /// A float: a JSON number, or `null` when it is not finite (JSON has no NaN or infinity).
    Float(f64),
    /// A histogram: the JSON object `{"count", "p50", "p90", "p99", "max"}` of integers.
    Histogram(HistogramSummary),
}

impl MetricValue {
    /// The JSON form described on each variant.
    pub fn to_json(&self) -> Value {
        match self {
            MetricValue::Int(v) => json!(v),
            MetricValue::Float(v) => json!(v),
            MetricValue::Histogram(h) => json!({
                "count": h.count,
                "p50": h.p50,
                "p90": h.p90,
                "p99": h.p99,
                "max": h.max,
            }),
        }
    }
}

/// One metric of a [`MetricsDoc`].
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Gauge, counter or histogram.
    pub kind: MetricKind,
    /// One sentence saying what it measures (and its unit).
    pub help: String,
    /// The value.
    pub value: MetricValue,
}

/// A metrics document: metrics by name, kept (and serialized) in name order. Setting a name
/// again replaces its metric.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsDoc {
    metrics: BTreeMap<String, Metric>,
}

impl MetricsDoc {
    /// An empty document.
    pub fn new() -> Self {
        Self::default()
    }

    fn set(&mut self, name: &str, kind: MetricKind, help: &str, value: MetricValue) -> &mut Self {
        let metric = Metric {
            kind,
            help: help.to_owned(),
            value,
        };
        self.metrics.insert(name.to_owned(), metric);
        self
    }

    /// Sets an integer gauge.
    pub fn gauge_int(&mut self, name: &str, help: &str, v: i64) -> &mut Self {
        self.set(name, MetricKind::Gauge, help, MetricValue::Int(v))
    }

    /// Sets a float gauge (serialized as `null` when not finite).
    pub fn gauge_f64(&mut self, name: &str, help: &str, v: f64) -> &mut Self {
        self.set(name, MetricKind::Gauge, help, MetricValue::Float(v))
    }

    /// Sets a counter. Its value is stored as [`MetricValue::Int`], saturating at `i64::MAX`.
    pub fn counter(&mut self, name: &str, help: &str, v: u64) -> &mut Self {
        let v = i64::try_from(v).unwrap_or(i64::MAX);
        self.set(name, MetricKind::Counter, help, MetricValue::Int(v))
    }

    /// Sets a histogram metric to a summary (see [`LatencyHistogram::summary`]).
    pub fn histogram(&mut self, name: &str, help: &str, summary: HistogramSummary) -> &mut Self {
        self.set(
            name,
            MetricKind::Histogram,
            help,
            MetricValue::Histogram(summary),
        )
    }

    /// The metric called `name`, if set.
    pub fn get(&self, name: &str) -> Option<&Metric> {
        self.metrics.get(name)
    }

    /// The metrics in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Metric)> {
        self.metrics.iter().map(|(name, m)| (name.as_str(), m))
    }

    /// How many metrics are set.
    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    /// Whether no metric is set.
    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    /// The document: `{name: {"type": "gauge"|"counter"|"histogram", "help": "…", "value": …}}`,
    /// keys in name order, values as [`MetricValue::to_json`].
    pub fn to_json(&self) -> Value {
        let mut doc = Map::new();
        for (name, m) in &self.metrics {
            let entry = json!({
                "type": m.kind.as_str(),
                "help": m.help,
                "value": m.value.to_json(),
            });
            doc.insert(name.clone(), entry);
        }
        Value::Object(doc)
    }

    /// [`MetricsDoc::to_json`] as compact JSON text.
    pub fn to_json_string(&self) -> String {
        self.to_json().to_string()
    }
}

/// The highest latency a [`LatencyHistogram`] tells apart: one hour, in microseconds.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

/// An HDR histogram of latencies in microseconds, from 1 µs to one hour with 3 significant
/// figures (a value is off by at most 0.1%). Recording never panics: a value above one hour
/// counts as one hour, and 0 counts as 0.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
            .expect("constant bounds 1..=1h with 3 significant figures are valid");
        LatencyHistogram { hist }
    }

    /// Records one latency of `us` microseconds, saturating at [`LATENCY_MAX_US`].
    pub fn record(&mut self, us: u64) {
        self.hist.saturating_record(us);
    }

    /// How many latencies were recorded.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// Whether no latency was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The mean latency in microseconds (0.0 when empty), from the histogram's buckets.
    pub fn mean_us(&self) -> f64 {
        if self.hist.is_empty() {
            0.0
        } else {
            self.hist.mean()
        }
    }

    /// Adds every value of `other` to this histogram (both have the same bounds, so nothing
    /// is lost beyond the histogram's own precision).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Both histograms have the same bounds (`new`), so adding cannot fail; were it to, the
        // values would be added one bucket at a time, saturating.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// The count, p50, p90, p99 and max (all 0 when empty). Quantiles are the histogram's
    /// `value_at_quantile`: the highest value equivalent to the recorded one at or above it.
    pub fn summary(&self) -> HistogramSummary {
        if self.hist.is_empty() {
            return HistogramSummary::default();
        }
        HistogramSummary {
            count: self.hist.len(),
            p50: self.hist.value_at_quantile(0.50),
            p90: self.hist.value_at_quantile(0.90),
            p99: self.hist.value_at_quantile(0.99),
            max: self.hist.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_json_is_exact() {
        let mut doc = MetricsDoc::new();
        doc.gauge_int("startup_total_ms", "Wall time of the whole start, ms.", 12)
            .gauge_f64(
                "startup_internal_preload_kv_ms",
                "Building the preload, ms.",
                0.25,
            )
            .counter("sql_statements", "Statements run.", 7)
            .histogram(
                "query_latency_us",
                "Query latency, µs.",
                HistogramSummary {
                    count: 3,
                    p50: 10,
                    p90: 20,
                    p99: 30,
                    max: 31,
                },
            );
        let want = r#"{"query_latency_us":{"help":"Query latency, µs.","type":"histogram","value":{"count":3,"max":31,"p50":10,"p90":20,"p99":30}},"sql_statements":{"help":"Statements run.","type":"counter","value":7},"startup_internal_preload_kv_ms":{"help":"Building the preload, ms.","type":"gauge","value":0.25},"startup_total_ms":{"help":"Wall time of the whole start, ms.","type":"gauge","value":12}}"#;
        assert_eq!(doc.to_json_string(), want);
        assert_eq!(doc.to_json(), serde_json::from_str::<Value>(want).unwrap());
        assert_eq!(doc.len(), 4);
        assert_eq!(
            doc.get("sql_statements"),
            Some(&Metric {
                kind: MetricKind::Counter,
                help: "Statements run.".into(),
                value: MetricValue::Int(7)
            })
        );
        assert_eq!(doc.get("nope"), None);
        let names: Vec<&str> = doc.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "query_latency_us",
                "sql_statements",
                "startup_internal_preload_kv_ms",
                "startup_total_ms"
            ]
        );
    }

    #[test]
    fn edge_values() {
        let mut doc = MetricsDoc::new();
        assert!(doc.is_empty());
        assert_eq!(doc.to_json_string(), "{}");
        doc.counter("c", "h", u64::MAX)
            .gauge_int("g", "h", -3)
            .gauge_f64("nan", "h", f64::NAN)
            .gauge_f64("whole", "h", 2.0);
        doc.gauge_int("g", "again", i64::MIN);
        assert_eq!(
            doc.to_json_string(),
            r#"{"c":{"help":"h","type":"counter","value":9223372036854775807},"g":{"help":"again","type":"gauge","value":-9223372036854775808},"nan":{"help":"h","type":"gauge","value":null},"whole":{"help":"h","type":"gauge","value":2.0}}"#
        );
    }

    #[test]
    fn latency_histogram_summary() {
        let mut h = LatencyHistogram::new();
        assert!(h.is_empty());
        assert_eq!(h.summary(), HistogramSummary::default());
        for us in 1..=1000 {
            h.record(us);
        }
        assert_eq!(h.len(), 1000);
        assert_eq!(
            h.summary(),
            HistogramSummary {
                count: 1000,
                p50: 500,
                p90: 900,
                p99: 990,
                max: 1000
            }
        );
        let mut doc = MetricsDoc::new();
        doc.histogram("q", "h", h.summary());
        assert_eq!(
            doc.to_json_string(),
            r#"{"q":{"help":"h","type":"histogram","value":{"count":1000,"max":1000,"p50":500,"p90":900,"p99":990}}}"#
        );
    }

    #[test]
    fn latency_histogram_saturates_instead_of_panicking() {
        let mut over = LatencyHistogram::new();
        over.record(u64::MAX);
        over.record(LATENCY_MAX_US + 1);
        over.record(0);
        let mut at_max = LatencyHistogram::new();
        at_max.record(LATENCY_MAX_US);
        at_max.record(LATENCY_MAX_US);
        at_max.record(0);
        assert_eq!(over.summary(), at_max.summary());
        let s = over.summary();
        assert_eq!((s.count, s.p50), (3, s.max));
        // Within the histogram's 0.1% of one hour.
        assert!(s.max >= LATENCY_MAX_US && s.max <= LATENCY_MAX_US + LATENCY_MAX_US / 1000);
        let mut zero = LatencyHistogram::new();
        zero.record(0);
        assert_eq!(
            zero.summary(),
            HistogramSummary {
                count: 1,
                ..HistogramSummary::default()
            }
        );
    }

    #[test]
    fn latency_histogram_merge_and_mean() {
        let (mut a, mut b) = (LatencyHistogram::new(), LatencyHistogram::new());
        assert_eq!(a.mean_us(), 0.0);
        for us in 1..=500 {
            a.record(us);
        }
        for us in 501..=1000 {
            b.record(us);
        }
        a.merge(&b);
        let mut whole = LatencyHistogram::new();
        for us in 1..=1000 {
            whole.record(us);
        }
        assert_eq!(a.summary(), whole.summary());
        assert_eq!(a.mean_us(), 500.5);
        a.merge(&LatencyHistogram::new());
        assert_eq!(a.len(), 1000);
    }
}
