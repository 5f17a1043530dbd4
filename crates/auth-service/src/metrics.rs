//! Prometheus metrics in text format: requests and latencies by route and
//! status, login outcomes, password hashes in flight. A small registry of our
//! own, per application instance, so tests can run many apps in one process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    login_success: AtomicU64,
    login_failure: AtomicU64,
    login_throttled_client: AtomicU64,
    login_throttled_account: AtomicU64,
}

impl Metrics {
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let key = (route.to_owned(), method.to_owned(), status);
        *lock(&self.requests).entry(key.clone()).or_default() += 1;
        lock(&self.latency).entry(key).or_default().observe(elapsed.as_secs_f64());
    }

    pub fn login(&self, success: bool) {
        let counter = if success { &self.login_success } else { &self.login_failure };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A login refused before any password was checked: its client was over
    /// its bucket, or the address over its failures.
    pub fn login_throttled(&self, by_account: bool) {
        let counter = if by_account { &self.login_throttled_account } else { &self.login_throttled_client };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, hasher: &dyn auth_core::PasswordHasher) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP gatehouse_http_requests_total HTTP requests by route, method and status.\n");
        out.push_str("# TYPE gatehouse_http_requests_total counter\n");
        for ((route, method, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "gatehouse_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP gatehouse_http_request_duration_seconds HTTP request latency by route, method and status.\n",
        );
        out.push_str("# TYPE gatehouse_http_request_duration_seconds histogram\n");
        for ((route, method, status), h) in lock(&self.latency).iter() {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ =
                    writeln!(out, "gatehouse_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "gatehouse_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "gatehouse_http_request_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "gatehouse_http_request_duration_seconds_count{{{labels}}} {}", h.count);
        }
        out.push_str("# HELP gatehouse_logins_total Login attempts by result.\n");
        out.push_str("# TYPE gatehouse_logins_total counter\n");
        let _ = writeln!(
            out,
            "gatehouse_logins_total{{result=\"success\"}} {}",
            self.login_success.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "gatehouse_logins_total{{result=\"failure\"}} {}",
            self.login_failure.load(Ordering::Relaxed)
        );
        for (result, counter) in
            [("throttled_client", &self.login_throttled_client), ("throttled_account", &self.login_throttled_account)]
        {
            let _ = writeln!(out, "gatehouse_logins_total{{result=\"{result}\"}} {}", counter.load(Ordering::Relaxed));
        }
        out.push_str("# HELP gatehouse_password_hashes_in_flight Password hashes running or waiting for a thread.\n");
        out.push_str("# TYPE gatehouse_password_hashes_in_flight gauge\n");
        let _ = writeln!(out, "gatehouse_password_hashes_in_flight {}", hasher.in_flight());
        out.push_str(
            "# HELP gatehouse_password_hash_operations_total Password hashes and verifications started, dummy ones \
             included.\n",
        );
        out.push_str("# TYPE gatehouse_password_hash_operations_total counter\n");
        let _ = writeln!(out, "gatehouse_password_hash_operations_total {}", hasher.operations());
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Route-layer middleware: times each matched request.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    state.metrics().observe_request(&route, &method, response.status().as_u16(), started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.observe_request("/auth/me", "GET", 200, Duration::from_millis(3));
        m.observe_request("/auth/me", "GET", 401, Duration::from_millis(30));
        m.login(true);
        m.login(false);
        m.login(false);
        m.login_throttled(true);
        let text = m.render(&Busy);
        assert!(text.contains("gatehouse_http_requests_total{route=\"/auth/me\",method=\"GET\",status=\"200\"} 1"));
        let me_ok = "route=\"/auth/me\",method=\"GET\",status=\"200\"";
        let me_401 = "route=\"/auth/me\",method=\"GET\",status=\"401\"";
        assert!(text.contains(&format!("gatehouse_http_request_duration_seconds_bucket{{{me_ok},le=\"0.005\"}} 1")));
        assert!(text.contains(&format!("gatehouse_http_request_duration_seconds_bucket{{{me_401},le=\"0.025\"}} 0")));
        assert!(text.contains(&format!("gatehouse_http_request_duration_seconds_count{{{me_401}}} 1")));
        assert!(text.contains("gatehouse_logins_total{result=\"failure\"} 2"));
        assert!(text.contains("gatehouse_logins_total{result=\"throttled_account\"} 1"));
        assert!(text.contains("gatehouse_logins_total{result=\"throttled_client\"} 0"));
        assert!(text.contains("gatehouse_password_hashes_in_flight 2"));
        assert!(text.contains("gatehouse_password_hash_operations_total 7"));
    }

    /// A hasher that reports two hashes in flight and seven done.
    struct Busy;

    #[async_trait::async_trait]
    impl auth_core::PasswordHasher for Busy {
        async fn hash(&self, _: &auth_core::Password) -> Result<String, auth_core::HashError> {
            Ok(String::new())
        }
        async fn verify(
            &self,
            _: &auth_core::Password,
            _: &str,
        ) -> Result<auth_core::hashing::Verification, auth_core::HashError> {
            Ok(auth_core::hashing::Verification::Mismatch)
        }
        async fn verify_dummy(&self, _: &auth_core::Password) -> Result<(), auth_core::HashError> {
            Ok(())
        }
        fn in_flight(&self) -> usize {
            2
        }
        fn operations(&self) -> u64 {
            7
        }
    }
}
