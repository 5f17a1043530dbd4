//! Gateway metrics in Prometheus text format: requests by route and status,
//! authentication failures by reason, upstream latency by route, revocation
//! set size and JWKS age.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
pub struct GatewayMetrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    upstream: Mutex<BTreeMap<String, Histogram>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GatewayMetrics {
    pub fn request(&self, route: &str, status: u16) {
        *lock(&self.requests).entry((route.to_owned(), status)).or_default() += 1;
    }

    pub fn auth_failure(&self, reason: &'static str) {
        *lock(&self.auth_failures).entry(reason).or_default() += 1;
    }

    pub fn upstream_latency(&self, route: &str, elapsed: Duration) {
        let mut all = lock(&self.upstream);
        let h = all.entry(route.to_owned()).or_default();
        let seconds = elapsed.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(h.counts.iter_mut()) {
            *count += u64::from(seconds <= *bound);
        }
        h.sum += seconds;
        h.count += 1;
    }

    pub fn render(&self, revocations: usize, jwks_age: Option<Duration>) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str("# TYPE gatehouse_gateway_requests_total counter\n");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(out, "gatehouse_gateway_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        out.push_str("# TYPE gatehouse_gateway_auth_failures_total counter\n");
        for (reason, n) in lock(&self.auth_failures).iter() {
            let _ = writeln!(out, "gatehouse_gateway_auth_failures_total{{reason=\"{reason}\"}} {n}");
        }
        out.push_str("# TYPE gatehouse_gateway_upstream_duration_seconds histogram\n");
        for (route, h) in lock(&self.upstream).iter() {
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "gatehouse_gateway_upstream_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "gatehouse_gateway_upstream_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "gatehouse_gateway_upstream_duration_seconds_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "gatehouse_gateway_upstream_duration_seconds_count{{route=\"{route}\"}} {}", h.count);
        }
        out.push_str("# TYPE gatehouse_gateway_revocations gauge\n");
        let _ = writeln!(out, "gatehouse_gateway_revocations {revocations}");
        out.push_str("# TYPE gatehouse_gateway_jwks_age_seconds gauge\n");
        let age = jwks_age.map_or(-1.0, |a| a.as_secs_f64());
        let _ = writeln!(out, "gatehouse_gateway_jwks_age_seconds {age}");
        out
    }
}
