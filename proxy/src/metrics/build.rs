//! Registering metrics in the catalog's own registry.

use super::*;

pub(super) fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect(VALID); // invariant: static names, labels and buckets (tested)
    r.register(Box::new(c.clone())).expect(VALID); // invariant: static names, labels and buckets (tested)
    c
}

pub(super) fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect(VALID); // invariant: static names, labels and buckets (tested)
    r.register(Box::new(c.clone())).expect(VALID); // invariant: static names, labels and buckets (tested)
    c
}

pub(super) fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect(VALID); // invariant: static names, labels and buckets (tested)
    r.register(Box::new(g.clone())).expect(VALID); // invariant: static names, labels and buckets (tested)
    g
}

pub(super) fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect(VALID); // invariant: static names, labels and buckets (tested)
    r.register(Box::new(g.clone())).expect(VALID); // invariant: static names, labels and buckets (tested)
    g
}

pub(super) fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect(VALID); // invariant: static names, labels and buckets (tested)
    r.register(Box::new(h.clone())).expect(VALID); // invariant: static names, labels and buckets (tested)
    h
}

pub(super) fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h =
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect(VALID); // invariant: static names, labels and buckets (tested)
    r.register(Box::new(h.clone())).expect(VALID); // invariant: static names, labels and buckets (tested)
    h
}
