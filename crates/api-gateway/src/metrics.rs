//! Gateway metrics in Prometheus text format: requests by route and status,
//! authentication failures by reason, upstream latency by route, revocation
//! set size and JWKS age.
//!
//! The hot path only touches atomics: each route's counters are created once,
//! when the route table is built, and found by the route's position. They
//! are sharded by serving thread, each shard on its own cache lines, so two
//! threads counting requests never write the same memory; `/metrics` sums.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lock;

const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Statuses counted on their own; anything else is counted by class (`2xx`…).
const STATUSES: [u16; 16] = [200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 409, 429, 500, 502, 503, 504];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Shards per route; serving threads beyond this share shards.
const SHARDS: usize = 8;

/// One thread's share of a route's counters, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    statuses: [AtomicU64; STATUSES.len()],
    classes: [AtomicU64; CLASSES.len()],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// One route's counters, shared by every request on that route.
#[derive(Debug, Default)]
pub struct RouteStats {
    shards: [Shard; SHARDS],
}

impl RouteStats {
    fn shard(&self) -> &Shard {
        &self.shards[(crate::local::thread_number() % SHARDS as u64) as usize]
    }

    pub fn status(&self, status: u16) {
        let shard = self.shard();
        match STATUSES.iter().position(|s| *s == status) {
            Some(i) => shard.statuses[i].fetch_add(1, Ordering::Relaxed),
            None => shard.classes[usize::from((status / 100).clamp(1, 5) - 1)].fetch_add(1, Ordering::Relaxed),
        };
    }

    pub fn upstream_latency(&self, elapsed: Duration) {
        let shard = self.shard();
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            shard.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        shard.count.fetch_add(1, Ordering::Relaxed);
        shard.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// A counter summed over the shards.
    fn total(&self, counter: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| counter(s).load(Ordering::Relaxed)).sum()
    }

    fn render(&self, route: &str, out: &mut String) {
        let statuses = (0..STATUSES.len()).map(|i| self.total(|s| &s.statuses[i]));
        for (status, n) in STATUSES.iter().zip(statuses) {
            if n > 0 {
                let _ = writeln!(out, "gatehouse_gateway_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
        }
        let classes = (0..CLASSES.len()).map(|i| self.total(|s| &s.classes[i]));
        for (class, n) in CLASSES.iter().zip(classes) {
            if n > 0 {
                let _ = writeln!(out, "gatehouse_gateway_requests_total{{route=\"{route}\",status=\"{class}\"}} {n}");
            }
        }
        let count = self.total(|s| &s.count);
        if count == 0 {
            return;
        }
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.total(|s| &s.buckets[i]);
            let _ = writeln!(
                out,
                "gatehouse_gateway_upstream_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "gatehouse_gateway_upstream_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
        );
        let sum = self.total(|s| &s.sum_micros) as f64 / 1e6;
        let _ = writeln!(out, "gatehouse_gateway_upstream_duration_seconds_sum{{route=\"{route}\"}} {sum}");
        let _ = writeln!(out, "gatehouse_gateway_upstream_duration_seconds_count{{route=\"{route}\"}} {count}");
    }
}

#[derive(Debug, Default)]
pub struct GatewayMetrics {
    /// Every route ever served, by prefix, so counts survive a reload.
    routes: Mutex<BTreeMap<String, Arc<RouteStats>>>,
    unrouted: RouteStats,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
}

impl GatewayMetrics {
    /// The counters of the route with `prefix` (made on first use).
    pub fn route(&self, prefix: &str) -> Arc<RouteStats> {
        lock(&self.routes).entry(prefix.to_owned()).or_default().clone()
    }

    pub fn unrouted(&self) -> &RouteStats {
        &self.unrouted
    }

    /// Failures are the slow path; a lock is fine here.
    pub fn auth_failure(&self, reason: &'static str) {
        *lock(&self.auth_failures).entry(reason).or_default() += 1;
    }

    pub fn render(&self, revocations: usize, jwks_age: Option<Duration>) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP gatehouse_gateway_requests_total Requests by route prefix and status.\n");
        out.push_str("# TYPE gatehouse_gateway_requests_total counter\n");
        self.unrouted.render("", &mut out);
        let routes: Vec<(String, Arc<RouteStats>)> =
            lock(&self.routes).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut latencies = String::new();
        for (route, stats) in &routes {
            let mut text = String::new();
            stats.render(route, &mut text);
            for line in text.lines() {
                let target =
                    if line.starts_with("gatehouse_gateway_requests_total") { &mut out } else { &mut latencies };
                target.push_str(line);
                target.push('\n');
            }
        }
        out.push_str("# HELP gatehouse_gateway_auth_failures_total Refused tokens by reason.\n");
        out.push_str("# TYPE gatehouse_gateway_auth_failures_total counter\n");
        for (reason, n) in lock(&self.auth_failures).iter() {
            let _ = writeln!(out, "gatehouse_gateway_auth_failures_total{{reason=\"{reason}\"}} {n}");
        }
        out.push_str("# HELP gatehouse_gateway_upstream_duration_seconds Time to the upstream's response headers.\n");
        out.push_str("# TYPE gatehouse_gateway_upstream_duration_seconds histogram\n");
        out.push_str(&latencies);
        out.push_str("# HELP gatehouse_gateway_revocations Revoked sessions and users held in memory.\n");
        out.push_str("# TYPE gatehouse_gateway_revocations gauge\n");
        let _ = writeln!(out, "gatehouse_gateway_revocations {revocations}");
        out.push_str("# HELP gatehouse_gateway_jwks_age_seconds Time since the last good JWKS fetch (-1: never).\n");
        out.push_str("# TYPE gatehouse_gateway_jwks_age_seconds gauge\n");
        let age = jwks_age.map_or(-1.0, |a| a.as_secs_f64());
        let _ = writeln!(out, "gatehouse_gateway_jwks_age_seconds {age}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_statuses_classes_and_a_cumulative_histogram() {
        let m = GatewayMetrics::default();
        let api = m.route("/api");
        api.status(200);
        api.status(200);
        api.status(418);
        api.upstream_latency(Duration::from_micros(300));
        api.upstream_latency(Duration::from_millis(20));
        m.unrouted().status(404);
        std::thread::scope(|s| {
            s.spawn(|| api.status(200));
        });
        m.auth_failure("expired");
        let text = m.render(3, None);
        for line in [
            "gatehouse_gateway_requests_total{route=\"/api\",status=\"200\"} 3",
            "gatehouse_gateway_requests_total{route=\"/api\",status=\"4xx\"} 1",
            "gatehouse_gateway_requests_total{route=\"\",status=\"404\"} 1",
            "gatehouse_gateway_upstream_duration_seconds_bucket{route=\"/api\",le=\"0.0005\"} 1",
            "gatehouse_gateway_upstream_duration_seconds_bucket{route=\"/api\",le=\"0.025\"} 2",
            "gatehouse_gateway_upstream_duration_seconds_count{route=\"/api\"} 2",
            "gatehouse_gateway_auth_failures_total{reason=\"expired\"} 1",
            "gatehouse_gateway_revocations 3",
            "gatehouse_gateway_jwks_age_seconds -1",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
    }
}
